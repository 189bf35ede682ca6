"""Stress (issue 12): many two-thread invokes against stock LiteRT, reports
read meanwhile, and create/destroy cycles that must not leak."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import reference_outputs, run_tflite
from cocopie_tf import lite
from test_nonfinite import _chain_model


@pytest.mark.slow
def test_two_thread_invokes_match_stock_every_time():
    tfl, _ = _chain_model()
    it = lite.Interpreter(model_content=tfl, num_threads=2, claim="all", profile=True)
    rng = np.random.default_rng(21)
    xs = [rng.standard_normal((1, 12, 12, 16)).astype(np.float32) for _ in range(8)]
    refs = [reference_outputs(tfl, [x])[0] for x in xs]
    for i in range(400):
        k = int(rng.integers(len(xs)))
        out = run_tflite(it, [xs[k]])[0]
        # Thread count does not change the summation order within an output.
        assert np.allclose(out, refs[k], rtol=1e-5, atol=1e-5), i
        if i % 7 == 0:
            assert len(it.delegate_report()) == 3


LEAK_CHILD = textwrap.dedent(r"""
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from cocopie_tf import lite
    from test_nonfinite import _chain_model

    tfl, _ = _chain_model()
    x = np.ones((1, 12, 12, 16), np.float32)

    def rss_kb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4

    def cycle(n):
        for _ in range(n):
            it = lite.Interpreter(model_content=tfl, num_threads=2, claim="all")
            it.allocate_tensors()
            it.set_tensor(it.get_input_details()[0]["index"], x)
            it.invoke()
            it.delegate_report()
            del it

    cycle(60)  # warm-up: allocator pools, lazily loaded code
    before = rss_kb()
    cycle(600)
    print("RSS_GROWTH_KB", rss_kb() - before)
""")


@pytest.mark.slow
def test_create_destroy_does_not_leak(tmp_path):
    import pathlib

    tests = str(pathlib.Path(__file__).parent)
    p = subprocess.run([sys.executable, "-c", LEAK_CHILD, tests], capture_output=True, text=True,
                       cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    growth = int(p.stdout.split("RSS_GROWTH_KB")[1])
    # 600 interpreters each holding ~100 KB of plans, scratch and generated
    # code: a leak of any of them would show as tens of MB.
    assert growth < 8 * 1024, f"RSS grew {growth} KB over 600 create/destroy cycles"
