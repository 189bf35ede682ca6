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
