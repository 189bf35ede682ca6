"""Auto-tuning of the pattern kernel: tune=on times the knobs per layer in
Prepare and writes the on-disk cache atomically; tune=cached reuses it; the
knobs never change the result; a damaged cache is ignored, never trusted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import convert, reference_outputs, rel_error, run_tflite
from cocopie_tf import lite
from cocopie_tf.patterns import prune_kernel


@pytest.fixture(scope="module")
def pruned_tflite():
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((20, 20, 32), batch_size=1)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
    out = keras.layers.Conv2D(48, 3, padding="same")(h)
    model = keras.Model(inp, out)
    for layer in model.layers[1:]:
        w = layer.get_weights()
        w[0] = prune_kernel(w[0], connectivity=3.6, group=4)
        layer.set_weights(w)
    return convert(model)


def _run(tfl, x, **options):
    it = lite.Interpreter(model_content=tfl, **options)
    out = run_tflite(it, [x])[0]
    return out, [e for e in it.delegate_report() if "pattern" in e["kernel"]]


def test_tune_on_writes_cache_then_cached_reuses_it(pruned_tflite, tmp_path):
    cache = tmp_path / "sub" / "tuning.tsv"
    x = np.random.default_rng(0).uniform(-1, 1, (1, 20, 20, 32)).astype(np.float32)
    ref = reference_outputs(pruned_tflite, [x])[0]

    out, entries = _run(pruned_tflite, x, tune="on", tune_cache=str(cache), tune_budget_ms=20)
    assert len(entries) == 2 and all(e["tuning"] == "tuned" for e in entries)
    assert rel_error(out, ref) <= 1e-5
    lines = cache.read_text().splitlines()
    assert len(lines) == 2 and all(l.startswith("v4\t") and l.count("\t") == 9 for l in lines)
    assert not list(cache.parent.glob("*.tmp.*"))  # written via rename, nothing left over

    out2, entries2 = _run(pruned_tflite, x, tune="cached", tune_cache=str(cache))
    assert [e["tuning"] for e in entries2] == ["cached", "cached"]
    knobs = ("chunk_channels", "tile_vectors", "engine", "jit_filters", "jit_vectors",
             "jit_segments")
    assert [[e[k] for k in knobs] for e in entries2] == [[e[k] for k in knobs] for e in entries]
    assert rel_error(out2, ref) <= 1e-5

    _, entries3 = _run(pruned_tflite, x, tune="off", tune_cache=str(cache))
    assert [e["tuning"] for e in entries3] == ["default", "default"]


def test_every_cached_knob_gives_the_same_result(pruned_tflite, tmp_path):
    # Write cache entries by hand for every knob value the tuner may pick
    # (and out-of-range ones): the output never changes.
    cache = tmp_path / "tuning.tsv"
    x = np.random.default_rng(1).uniform(-1, 1, (1, 20, 20, 32)).astype(np.float32)
    ref = reference_outputs(pruned_tflite, [x])[0]
    _, entries = _run(pruned_tflite, x, tune="on", tune_cache=str(cache), tune_budget_ms=5)
    keys = [l.split("\t")[1] for l in cache.read_text().splitlines()]
    for chunk in (1, 3, 16, 32, 1000):
        for tile in (1, 2, 3, 4, 6, 8):
            cache.write_text("".join(f"v1\t{k}\t{chunk}\t{tile}\t1.0\n" for k in keys))
            out, entries = _run(pruned_tflite, x, tune="cached", tune_cache=str(cache))
            assert [e["tuning"] for e in entries] == ["cached", "cached"]
            assert [e["tile_vectors"] for e in entries] == [tile, tile]
            assert rel_error(out, ref) <= 1e-5, (chunk, tile)


def test_every_cached_generator_knob_gives_the_same_result(pruned_tflite, tmp_path):
    # v2 entries with the generated kernel's register tile (M filters x V
    # vectors), for every ISA this CPU runs, and the static kernels (jit=1).
    from cocopie_tf import _cc

    isas = [i for i in ("avx2_fma", "avx512", "neon") if i in _cc.jit_choices()]
    if not isas:
        pytest.skip("no code generator in this build or CPU: " + str(_cc.jit_choices()))
    cache = tmp_path / "tuning.tsv"
    x = np.random.default_rng(2).uniform(-1, 1, (1, 20, 20, 32)).astype(np.float32)
    ref = reference_outputs(pruned_tflite, [x])[0]
    _run(pruned_tflite, x, tune="on", tune_cache=str(cache), tune_budget_ms=5)
    keys = [l.split("\t")[1] for l in cache.read_text().splitlines()]
    code = {"avx2_fma": 2, "avx512": 3}
    for isa in isas:
        for m, v in [(1, 1), (5, 1), (14, 1), (6, 2), (4, 3), (2, 4)] + \
                    ([(31, 1), (28, 1), (14, 2), (9, 3), (6, 4)] if isa == "avx512" else []):
            cache.write_text("".join(f"v2\t{k}\t0\t0\t{code[isa]}\t{m}\t{v}\t1.0\n" for k in keys))
            out, entries = _run(pruned_tflite, x, tune="cached", tune_cache=str(cache))
            assert [(e["engine"], e["jit_filters"], e["jit_vectors"]) for e in entries] == \
                [("jit_" + isa, m, v)] * 2
            assert all(e["code_bytes"] > 0 for e in entries)
            assert rel_error(out, ref) <= 1e-5, (isa, m, v)
    cache.write_text("".join(f"v2\t{k}\t3\t2\t1\t0\t0\t1.0\n" for k in keys))
    out, entries = _run(pruned_tflite, x, tune="cached", tune_cache=str(cache))
    assert [e["engine"] for e in entries] == [_cc.default_kernel_set()] * 2
    assert rel_error(out, ref) <= 1e-5
    # v3 entries add the code segment length (uses; -1 = whole filter blocks):
    # one use per segment cuts the code finest, and the output is the same
    # to the bit.
    segments, outs = {}, {}
    for seg in (-1, 1, 7, 768):
        cache.write_text("".join(f"v3\t{k}\t0\t0\t{code[isas[-1]]}\t0\t1\t{seg}\t1.0\n"
                                 for k in keys))
        outs[seg], entries = _run(pruned_tflite, x, tune="cached", tune_cache=str(cache))
        assert [e["tuning"] for e in entries] == ["cached", "cached"]
        segments[seg] = [e["jit_segments"] for e in entries]
        assert rel_error(outs[seg], ref) <= 1e-5, seg
        np.testing.assert_array_equal(outs[seg], outs[-1])
    assert all(a < b for a, b in zip(segments[-1], segments[1])), segments
    assert all(a <= b for a, b in zip(segments[768], segments[7])), segments
    # v4 entries add the row-band height (-1 = whole image): bands of 3 or
    # 7 rows on this 20-row map, and none, give the same output to the bit.
    bands = {}
    for rows in (-1, 3, 7):
        cache.write_text("".join(f"v4\t{k}\t0\t0\t{code[isas[-1]]}\t0\t1\t0\t{rows}\t1.0\n"
                                 for k in keys))
        out, entries = _run(pruned_tflite, x, tune="cached", tune_cache=str(cache))
        assert [e["tuning"] for e in entries] == ["cached", "cached"]
        bands[rows] = [e["band_rows"] for e in entries]
        np.testing.assert_array_equal(out, outs[-1])
    assert bands == {-1: [0, 0], 3: [3, 3], 7: [7, 7]}, bands


@pytest.mark.parametrize("junk", [
    b"v1\tkey\n", b"v2\tk\t1\t2\t3\n", b"v1\tk\tx\t2\t3\n", b"v1\tk\t-4\t2\t3\n",
    b"v1\tk\t4\t9\t3\n", b"v1\tk\t4\t5\t3\n", b"\xff\xfe\x00garbage\n", b"v1\t\t4\t2\t1\n" * 3,
    b"v2\tk\t0\t0\t7\t4\t1\t1\n", b"v2\tk\t0\t0\t3\t40\t1\t1\n", b"v2\tk\t0\t0\t3\t4\t5\t1\n",
    b"v2\tk\t0\t0\t-1\t4\t1\t1\n", b"v2\tk\t0\t0\t3\t4\t1\tfast\n",
    b"v3\tk\t0\t0\t3\t4\t1\t-2\t1\n", b"v3\tk\t0\t0\t3\t4\t1\tx\t1\n",
    b"v3\tk\t0\t0\t3\t4\t1\t99999999999\t1\n", b"v3\tk\t0\t0\t3\t4\t1\t1\n",
    b"v4\tk\t0\t0\t3\t4\t1\t0\t-2\t1\n", b"v4\tk\t0\t0\t3\t4\t1\t0\t99999999\t1\n",
    b"v4\tk\t0\t0\t3\t4\t1\t0\t1\n",
])
def test_damaged_cache_is_ignored(pruned_tflite, tmp_path, junk):
    cache = tmp_path / "tuning.tsv"
    cache.write_bytes(junk)
    x = np.ones((1, 20, 20, 32), np.float32)
    out, entries = _run(pruned_tflite, x, tune="cached", tune_cache=str(cache))
    assert [e["tuning"] for e in entries] == ["default", "default"]
    assert rel_error(out, reference_outputs(pruned_tflite, [x])[0]) <= 1e-5


@pytest.mark.parametrize("key,value", [("tune", "always"), ("tune_budget_ms", "0"),
                                       ("tune_budget_ms", "fast"), ("tune_cache", "")])
def test_bad_tuning_options_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        lite.load_delegate(**{key: value})


def test_profile_reports_per_node_times(pruned_tflite):
    x = np.ones((1, 20, 20, 32), np.float32)
    it = lite.Interpreter(model_content=pruned_tflite, profile=True, tune="off")
    run_tflite(it, [x])
    it.invoke()
    entries = it.delegate_report()
    assert entries and all(e["invokes"] == 2 and e["mean_ms"] > 0 for e in entries)
    json.dumps(entries)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/urandom", "directory"])
def test_tune_cache_that_is_not_a_regular_file_is_ignored(pruned_tflite, tmp_path, kind):
    """A FIFO (no writer: open would block), /dev/zero (endless), /dev/urandom
    or a directory as tune_cache: Prepare returns promptly with the default
    knobs.  Run in a child process with a timeout so a regression fails
    instead of hanging the suite."""
    import os
    import subprocess
    import sys

    if kind == "fifo":
        path = str(tmp_path / "cache.fifo")
        os.mkfifo(path)
    elif kind == "directory":
        path = str(tmp_path)
    else:
        path = kind
    model = tmp_path / "m.tflite"
    model.write_bytes(pruned_tflite)
    code = (
        "import sys, numpy as np\n"
        "from cocopie_tf import lite\n"
        f"it = lite.Interpreter(model_path={str(model)!r}, tune='cached', tune_cache={path!r})\n"
        "it.allocate_tensors()\n"
        "print([e['tuning'] for e in it.delegate_report() if 'pattern' in e['kernel']])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path if kind != "directory" else "/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "['default', 'default']" in proc.stdout


def test_option_with_nul_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        lite.load_delegate(tune_cache="zz\0/etc/passwd")


def test_report_while_another_thread_invokes(pruned_tflite):
    """delegate_report() with profile=true while invoke() runs on another
    thread: the JSON grows between the size query and the copy; every report
    must still parse."""
    import threading

    it = lite.Interpreter(model_content=pruned_tflite, profile=True, tune="off")
    it.allocate_tensors()
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            it.invoke()

    t = threading.Thread(target=spin)
    t.start()
    try:
        for _ in range(300):
            entries = it.delegate_report()
            assert len(entries) == 2
    finally:
        stop.set()
        t.join()


def test_option_none_means_its_default(pruned_tflite, tmp_path, monkeypatch):
    """`tune_cache=None` is the default cache (COCOPIE_TUNING_CACHE here),
    not a file named "None" in the working directory."""
    default = tmp_path / "default.tsv"
    monkeypatch.setenv("COCOPIE_TUNING_CACHE", str(default))
    monkeypatch.chdir(tmp_path)
    it = lite.Interpreter(model_content=pruned_tflite, tune="on", tune_cache=None)
    it.allocate_tensors()
    it.invoke()
    del it
    assert default.exists()
    assert not (tmp_path / "None").exists()
