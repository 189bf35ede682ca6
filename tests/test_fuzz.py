"""Bounded fuzzing of the metadata path: >= 10,000 mutated metadata payloads
and a few hundred truncated or weight-flipped model files, through
read_metadata and the delegate, in a subprocess (a crash fails the test with
the iteration that caused it). Every run either loads and gives the stock
output, or fails with a clear Python error."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent(r"""
    import os, struct, sys, zlib
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import keras
    from ai_edge_litert.interpreter import Interpreter
    import cocopie_tf
    from cocopie_tf import lite
    from cocopie_tf.converter import read_metadata
    from cocopie_tf.patterns import prune_kernel

    n_meta, n_files = int(sys.argv[1]), int(sys.argv[2])
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 8), batch_size=1)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(8, 3, padding="same")(h)
    model = keras.Model(inp, h)
    for layer in model.layers[1:]:
        w = layer.get_weights(); w[0] = prune_kernel(w[0], connectivity=2.0); layer.set_weights(w)
    base = cocopie_tf.convert(model)
    x = np.random.default_rng(0).standard_normal((1, 6, 6, 8)).astype(np.float32)

    def run(interp):
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        return interp.get_tensor(interp.get_output_details()[0]["index"]).copy()

    ref = run(Interpreter(model_content=base))
    start = base.index(b"CCPM")
    (length,) = struct.unpack_from("<I", base, start - 4)
    rng = np.random.default_rng(1234)
    loaded = rejected = 0

    def check(data, reference, i, kind):
        global loaded, rejected
        try:
            out = run(lite.Interpreter(model_content=bytes(data), claim="all"))
        except (ValueError, RuntimeError) as e:
            assert str(e), (kind, i)
            rejected += 1
            return
        loaded += 1
        err = np.linalg.norm(out - reference) / np.linalg.norm(reference)
        assert err <= 1e-5, (kind, i, err)

    for i in range(n_meta):
        data = bytearray(base)
        kind = i % 4
        if kind in (0, 1):
            for _ in range(1 + rng.integers(8)):
                data[start + rng.integers(length)] = rng.integers(256)
        elif kind == 2:
            struct.pack_into("<I", data, start - 4, int(rng.integers(length)))
        else:
            field = 16 + int(rng.choice([0, 4, 16, 20, 24, 26, 28]))
            struct.pack_into("<I", data, start + field, int(rng.integers(2**32)))
        if kind in (1, 3):  # fix the checksum so the deeper checks run
            body = bytes(data[start + 16:start + length])
            struct.pack_into("<I", data, start + 12, zlib.crc32(body) & 0xFFFFFFFF)
        try:
            read_metadata(bytes(data))
        except ValueError as e:
            assert str(e)
        check(data, ref, i, "metadata")
        if i % 1000 == 0:
            print("meta", i, flush=True)

    # Whole files: truncations are refused; flipped filter weights change the
    # model, so the reference is stock LiteRT on the same bytes, and the
    # delegate must notice the checksum and fall back.
    filt = np.frombuffer(base, np.uint8)
    for i in range(n_files):
        data = bytearray(base)
        if i % 2 == 0:
            cut = int(rng.integers(len(base)))
            try:
                lite.Interpreter(model_content=bytes(data[:cut]))
                raise AssertionError(("truncated file loaded", cut))
            except ValueError:
                pass
            continue
        pos = int(rng.integers(start))  # anywhere before the metadata: weights and structure
        data[pos] ^= 1 << int(rng.integers(8))
        try:
            reference = run(Interpreter(model_content=bytes(data)))
        except Exception:
            continue  # stock LiteRT refuses the file too
        if not np.all(np.isfinite(reference)):
            continue
        check(data, reference, i, "file")
    print("DONE", loaded, rejected, flush=True)
""")


@pytest.mark.slow
def test_fuzz_metadata_and_model_files(tmp_path):
    proc = subprocess.run([sys.executable, "-c", WORKER, "10000", "400"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=1500)
    last = [l for l in proc.stdout.splitlines() if l.strip()][-1:] or [""]
    assert proc.returncode == 0, f"crashed or failed after {last}: {proc.stderr[-3000:]}"
    assert last[0].startswith("DONE")


def _fuzzer():
    import importlib
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    return importlib.import_module("fuzz_delegate")


def test_fuzz_comparison_notices_differences():
    import numpy as np

    compare = _fuzzer().compare
    a = np.array([[1.0, np.nan, np.inf, -2.0]], np.float32)
    assert compare([a], [a.copy()]) == ""
    for changed in ([[1.0, 0.0, np.inf, -2.0]], [[1.0, np.nan, np.inf, -2.1]],
                    [[1.0, np.nan, 5.0, -2.0]], [[np.inf, np.nan, np.inf, -2.0]]):
        assert compare([np.array(changed, np.float32)], [a]) != ""
    assert compare([a[:, :3]], [a]) != ""
    # Both overflowed: the sign (or a huge finite value) is the summation order's.
    big = np.array([[np.inf, 3e38, np.nan, 1.0]], np.float32)
    assert compare([np.array([[-np.inf, np.inf, np.inf, 1.0]], np.float32)], [big]) == ""
    assert compare([np.array([[-np.inf, 1.0, np.inf, 1.0]], np.float32)], [big]) != ""
    # Order sensitivity needs values near FLT_MAX: a padding-type NaN
    # disagreement on normal-sized outputs is still a wrong output.
    near = _fuzzer().near_overflow
    assert near([np.array([1.0, 3e37, np.nan], np.float32)])
    assert not near([np.array([1.0, -2.0, np.nan, np.inf], np.float32)])
    assert compare([a], [a, a]) != ""


@pytest.mark.slow
def test_fuzz_whole_files_and_metadata_against_stock(tmp_path):
    """Bounded CI run of tests/fuzz_delegate.py (docs/reliability.md has the
    long run): every case in its own child, both claim modes, 1 and 2 threads."""
    import json
    import pathlib

    script = pathlib.Path(__file__).parent / "fuzz_delegate.py"
    p = subprocess.run([sys.executable, str(script), "--cases", "3000", "--workers", "2",
                        "--corpus", str(tmp_path / "corpus"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert p.returncode == 0, (summary, p.stderr[-3000:])
    assert summary["crash"] == summary["hang"] == summary["wrong"] == 0
    counts = summary["counts"]
    assert counts.get("match", 0) > 1000  # most damaged files still run, and agree
    assert sum(v for k, v in counts.items() if k.startswith("kind:")) == 3000


CLI_CORPUS = textwrap.dedent(r"""
    import contextlib, io, os, sys
    import numpy as np, keras
    from cocopie_tf import cli

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    keras.Model(inp, keras.layers.Conv2D(4, 3)(inp)).save("good.keras")
    good = open("good.keras", "rb").read()
    rng = np.random.default_rng(5)
    codes = {}
    for i in range(int(sys.argv[1])):
        data = bytearray(good)
        if i % 3 == 0:
            data = data[: int(rng.integers(len(data)))]
        else:
            for _ in range(1 + int(rng.integers(16))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
        open("bad.keras", "wb").write(bytes(data))
        if os.path.exists("out.tflite"):
            os.unlink("out.tflite")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main(["convert", "bad.keras", "-o", "out.tflite"])
        lines = [l for l in err.getvalue().splitlines() if l.startswith("cocopie-tf")]
        assert rc in (0, 2), (i, rc)
        assert rc == 0 or len(lines) == 1, (i, err.getvalue()[-500:])
        codes[rc] = codes.get(rc, 0) + 1
    print("CODES", codes)
""")


@pytest.mark.slow
def test_cli_convert_on_corrupt_keras_files(tmp_path):
    p = subprocess.run([sys.executable, "-c", CLI_CORPUS, "60"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "CODES" in p.stdout and "2:" in p.stdout.split("CODES")[1]
