"""bench/timing.py's steal-time reading (the peer benchmark's steal column)."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

import timing  # noqa: E402


def _stat(tmp_path, first_line):
    p = tmp_path / "stat"
    p.write_text(first_line + "\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    return str(p)


def test_cpu_ticks_reads_steal_and_the_total_without_guest_time(tmp_path):
    # user nice system idle iowait irq softirq steal guest guest_nice
    path = _stat(tmp_path, "cpu  100 5 50 800 10 0 5 30 40 0")
    assert timing.cpu_ticks(path) == (30, 1000)


def test_cpu_ticks_refuses_what_it_cannot_read(tmp_path):
    assert timing.cpu_ticks(str(tmp_path / "missing")) is None
    assert timing.cpu_ticks(_stat(tmp_path, "cpu  1 2 3 4")) is None  # no steal field
    assert timing.cpu_ticks(_stat(tmp_path, "intr 1 2 3 4 5 6 7 8 9")) is None
    assert timing.cpu_ticks(_stat(tmp_path, "cpu  1 2 3 x 5 6 7 8 9")) is None


def test_steal_pct_is_the_stolen_share_of_the_interval():
    assert timing.steal_pct((30, 1000), (80, 2000)) == 5.0
    assert timing.steal_pct(None, (80, 2000)) is None
    assert timing.steal_pct((30, 1000), (30, 1000)) is None  # no time passed


def test_this_machine_has_a_readable_cpu_line_or_none():
    ticks = timing.cpu_ticks()
    if pathlib.Path("/proc/stat").exists():
        steal, total = ticks
        assert 0 <= steal <= total


def test_peer_table_shows_steal_per_row():
    import bench_peers

    ms = {k: dict(median=m, q1=m, q3=m) for k, m in
          [("xnnpack", 2.0), ("onnxruntime", 3.0), ("cocopie_static", 1.5), ("cocopie", 1.0)]}
    rows = [dict(model="m", threads=2, ms=ms, claimed=3, engines=["jit_avx512"], steal_pct=4.25,
                 cross_core=[1.08, 3.1], cpu_speed=[1.0, 1.61]),
            dict(model="m", threads=1, ms=ms, claimed=3, engines=[], steal_pct=None)]
    lines = bench_peers.table(rows, ["xnnpack", "onnxruntime", "cocopie_static", "cocopie"]).splitlines()
    assert lines[0].endswith("| steal | cross-core | cpu speed |") and lines[1].count("---") == 4 + 8
    assert lines[2].endswith("| 2.00x | 3 | jit_avx512 | 4.2% | 1.1/3.1 | 1.00/1.61 |")
    assert lines[3].endswith("| 2.00x | 3 | - | - | - | - |")


def _probe_leaves_affinity_and_needs_two_cpus(probe):
    """Runs `probe` (a two-CPU machine probe of bench/timing.py): the
    caller's affinity is as before, and with one CPU allowed the probe has
    nothing to compare (None).  Returns its reading (None on one CPU)."""
    import os

    before = os.sched_getaffinity(0)
    ratio = probe()
    assert os.sched_getaffinity(0) == before
    if len(before) < 2:
        assert ratio is None
        return None
    try:
        os.sched_setaffinity(0, {min(before)})
    except OSError:  # the probes pin threads too: they cannot run here
        pytest.skip("this sandbox refuses CPU pinning")
    try:
        assert probe() is None
    finally:
        os.sched_setaffinity(0, before)
    assert ratio is not None  # pinning works here, so the probe must read
    return ratio


def test_cross_core_ratio_measures_and_leaves_the_affinity_as_it_was():
    ratio = _probe_leaves_affinity_and_needs_two_cpus(lambda: timing.cross_core_ratio(rounds=10))
    # Reading another CPU's writes is never many times faster than one's own.
    assert ratio is None or 0.2 < ratio < 100


def test_cpu_speed_ratio_measures_and_leaves_the_affinity_as_it_was():
    """Two pinned threads each run the same multiply-add chain alone: no
    machine runs one core ten times slower than another."""
    ratio = _probe_leaves_affinity_and_needs_two_cpus(lambda: timing.cpu_speed_ratio(rounds=1))
    assert ratio is None or ratio < 10


def _small_pruned_conv(size: int, channels: int) -> bytes:
    """A .tflite of one pattern-pruned 3x3 conv (8 patterns, 2x connectivity)."""
    import keras

    import bench_peers

    keras.utils.set_random_seed(0)
    i = keras.Input((size, size, channels), batch_size=1)
    m = keras.Model(i, keras.layers.Conv2D(channels, 3, padding="same")(i))
    bench_peers.prune_model(m, skip_first=False, connectivity=2.0)
    return bench_peers.convert(m)


def test_measure_times_every_runtime_on_checked_outputs_and_consecutive_runs(tmp_path):
    """bench_peers.measure() on a small pruned conv: every runtime's output is
    checked against stock LiteRT before timing, the delegate claims the conv,
    and with consecutive=3 each round times runs 2 and 3 of each runtime.
    (ONNX Runtime is a bench extra, not a test dependency: left out here.)"""
    import bench_peers

    tfl = _small_pruned_conv(12, 16)
    row = bench_peers.measure("small", tfl, 1, runs=2, ds_python=None,
                              tune_cache=str(tmp_path / "tune.tsv"), settle_ms=0, consecutive=3,
                              runtimes=("xnnpack", "cocopie", "cocopie_static"))
    assert set(row["ms"]) == {"xnnpack", "cocopie", "cocopie_static"}
    assert all(e <= 1e-4 for e in row["rel_error"].values()), row["rel_error"]
    assert row["claimed"] == 1 and row["consecutive"] == 3
    assert all(v["n"] == 2 * 2 for v in row["ms"].values()), row["ms"]
    # One time per round and runtime (the median of its timed runs), for
    # the paired ratios of bench/ratios.py.
    assert set(row["rounds"]) == set(row["ms"]) and all(len(v) == 2 for v in row["rounds"].values())
    assert all(min(v) > 0 for v in row["rounds"].values())


def test_measure_times_copies_of_every_runtime_in_turn(tmp_path, monkeypatch):
    """Each runtime is built `instances` times and round r times copy
    r % instances: with 4 rounds and 2 copies every copy runs its output
    check, 8 warm-up runs and 2 timed rounds; copies never exceed rounds."""
    import bench_peers

    made = []
    real = bench_peers.make_runner

    def counting_runner(kind, *a, **k):
        r = real(kind, *a, **k)
        inner, r.calls = r.invoke, [0]

        def invoke():
            r.calls[0] += 1
            inner()

        r.invoke = invoke
        made.append((kind, r))
        return r

    monkeypatch.setattr(bench_peers, "make_runner", counting_runner)
    tfl = _small_pruned_conv(8, 8)
    row = bench_peers.measure("small", tfl, 1, runs=4, ds_python=None,
                              tune_cache=str(tmp_path / "tune.tsv"), settle_ms=0, instances=2,
                              runtimes=("xnnpack", "cocopie"))
    assert row["instances"] == 2
    assert [k for k, _ in made] == ["xnnpack", "cocopie"] * 2  # built copy by copy
    assert [r.calls[0] for _, r in made] == [1 + 8 + 2] * 4
    assert all(len(v) == 4 for v in row["rounds"].values())
    assert all(e <= 1e-4 for e in row["rel_error"].values()), row["rel_error"]
    made.clear()
    row = bench_peers.measure("small", tfl, 1, runs=1, ds_python=None,
                              tune_cache=str(tmp_path / "tune.tsv"), settle_ms=0, instances=3,
                              runtimes=("xnnpack", "cocopie"))
    assert row["instances"] == 1 and len(made) == 2


@pytest.mark.parametrize("worker, module", [("mnn_worker.py", "_tools"), ("tvm_worker.py", "tvm")])
def test_peer_worker_without_its_runtime_gives_a_clear_error(tmp_path, worker, module):
    """--mnn / --tvm pointing at a Python without that runtime: the worker
    answers with the import error and WorkerRunner raises it, naming the
    worker, instead of hanging or failing on an unparsable reply; the worker
    process does not outlive the failure."""
    import importlib.util

    import runners

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is importable here")
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "x.npy", np.zeros((1, 4, 4, 3), np.float32))
    (tmp_path / "m.onnx").write_bytes(b"")
    first = {"onnx": str(tmp_path / "m.onnx"), "input": str(tmp_path / "x.npy"), "threads": 1,
             "cache": str(tmp_path / "cache")}
    procs = []
    real_popen = runners.subprocess.Popen

    def popen(*a, **k):
        procs.append(real_popen(*a, **k))
        return procs[-1]

    runners.subprocess.Popen = popen
    try:
        with pytest.raises(RuntimeError, match=rf"{worker.replace('.', '[.]')} failed: ModuleNotFoundError"):
            runners.WorkerRunner(sys.executable, runners.HERE / worker, first)
    finally:
        runners.subprocess.Popen = real_popen
    assert procs and procs[0].poll() is not None


def test_a_peer_that_cannot_run_is_left_out_of_the_row_with_its_reason(tmp_path):
    """measure() with --mnn pointing at a Python without MNN: the block still
    times every other runtime, and the row says why MNN is missing."""
    import importlib.util

    import bench_peers

    if importlib.util.find_spec("_tools") is not None:
        pytest.skip("MNN's converter is importable here")
    tfl = _small_pruned_conv(8, 8)
    row = bench_peers.measure("small", tfl, 1, runs=1, ds_python=None,
                              tune_cache=str(tmp_path / "tune.tsv"), settle_ms=0,
                              runtimes=("xnnpack", "cocopie"), mnn_python=sys.executable)
    assert set(row["ms"]) == {"xnnpack", "cocopie"}
    assert "ModuleNotFoundError" in row["skipped"]["mnn"]
    cells = bench_peers.table([row], ["xnnpack", "mnn", "cocopie"]).splitlines()[2].split("|")
    assert cells[4].strip() == "-"  # the mnn column of the row


def test_bench_threads_times_every_runtime_and_wait_between_calls(tmp_path):
    # One process of bench/bench_threads.py: the engine (pinned here) and
    # XNNPACK at 1 and 2 threads, per wait between calls, on a real model.
    import bench_threads

    model = tmp_path / "m.tflite"
    model.write_bytes(_small_pruned_conv(12, 16))
    out = bench_threads.child(str(model), True, 1, str(tmp_path / "tune.tsv"))
    assert set(out) == {f"{r} {c}" for r in bench_threads.RUNS for c in bench_threads.CONDITIONS}
    assert all(len(v) == 1 and 0 < v[0] < 1e3 for v in out.values())


def test_bench_threads_refuses_bad_counts(capsys):
    import bench_threads

    sys_argv = sys.argv
    try:
        sys.argv = ["bench_threads.py", "--processes", "0"]
        with pytest.raises(SystemExit) as e:
            bench_threads.main()
        assert e.value.code == 2
    finally:
        sys.argv = sys_argv
    assert "--processes and --rounds must be at least 1" in capsys.readouterr().err
