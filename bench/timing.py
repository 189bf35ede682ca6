"""Side-by-side latency measurement: alternate A B A B, report medians and spread."""

from __future__ import annotations

import numpy as np

from cocopie_tf._timing import alternate, summary  # noqa: F401 - re-exported for bench scripts


def make_interpreters(tflite_bytes: bytes, threads: int, **delegate_options):
    from ai_edge_litert.interpreter import Interpreter

    from cocopie_tf import lite

    stock = Interpreter(model_content=tflite_bytes, num_threads=threads)
    ours = lite.Interpreter(model_content=tflite_bytes, num_threads=threads, **delegate_options)
    return stock, ours


def feed(interp, seed=0):
    interp.allocate_tensors()
    rng = np.random.default_rng(seed)
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], rng.uniform(-1, 1, d["shape"]).astype(np.float32))


def machine_info() -> dict:
    """cocopie_tf.benchmark.machine() plus the TensorFlow version."""
    import tensorflow as tf

    from cocopie_tf.benchmark import machine

    info = machine()
    info["tensorflow"] = tf.__version__
    return info


def cpu_ticks(path: str = "/proc/stat") -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat, or None where the
    file or its steal field is missing (not Linux, or a very old kernel).

    Steal is time the hypervisor ran something else while this VM's vCPU
    wanted to run: on a shared VM it is what makes 2-thread figures bimodal,
    so the peer benchmark reports it per row (steal_pct)."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    try:
        ticks = [int(v) for v in fields[1:]]
    except ValueError:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]: the
    # guest fields are already counted in user and nice.
    return ticks[7], sum(ticks[:8])


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Percent of the CPU time between two cpu_ticks() readings that was stolen."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def cross_core_ratio(rounds: int = 60, floats: int = 1 << 16) -> float | None:
    """How much slower one CPU reads 256 KB that another CPU just wrote than
    256 KB it wrote itself (median over `rounds`); None with fewer than two
    CPUs or no affinity control.

    About 1.1 where the two CPUs share an L3; about 3 where they do not (on
    the 2-vCPU AMD EPYC VM the host sometimes puts the vCPUs on different
    CCDs for seconds at a time, and 2-thread runs that pass data between
    their threads slow down: docs/engine.md section 30).  The peer benchmark
    records it with every block of rows."""
    import os
    import threading
    import time

    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    before = os.sched_getaffinity(0)
    remote = np.zeros(floats, np.float32)
    local = np.zeros(floats, np.float32)
    go, done = threading.Event(), threading.Event()
    stop = False

    def writer():
        os.sched_setaffinity(0, {cpus[1]})
        while True:
            go.wait()
            go.clear()
            if stop:
                return
            remote[:] += 1.0
            done.set()

    t = threading.Thread(target=writer, daemon=True)
    ratios = []
    try:
        os.sched_setaffinity(0, {cpus[0]})
        t.start()
        for _ in range(rounds):
            go.set()
            done.wait()
            done.clear()
            local[:] += 1.0
            t0 = time.perf_counter()
            remote.sum()
            t1 = time.perf_counter()
            local.sum()
            t2 = time.perf_counter()
            ratios.append((t1 - t0) / max(t2 - t1, 1e-9))
    finally:
        stop = True
        go.set()
        t.join(timeout=1.0)
        os.sched_setaffinity(0, before)
    return float(np.median(ratios))
