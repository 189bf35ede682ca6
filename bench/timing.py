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


def cross_core_ratio(rounds: int = 60) -> float | None:
    """How much slower one CPU reads 256 KB that another CPU just wrote than
    256 KB it wrote itself (median over `rounds`; cocopie_tf._cc measures it
    with two pinned threads); None with fewer than two CPUs.

    About 1.1 where the two CPUs share an L3; about 3 where they do not (on
    the 2-vCPU AMD EPYC VM the host sometimes puts the vCPUs on different
    CCDs for seconds at a time, and 2-thread runs that pass data between
    their threads slow down: docs/engine.md section 30).  The peer benchmark
    records it with every block of rows."""
    from cocopie_tf import _cc

    ratio = _cc.cross_core_read_ratio(rounds)
    return float(ratio) if ratio > 0 else None


def cpu_speed_ratio(rounds: int = 3) -> float | None:
    """How much slower the slower of two CPUs runs a fixed multiply-add
    chain than the faster, each pinned and alone (cocopie_tf._cc; about 7 ms
    per CPU and round); None with fewer than two CPUs.

    1.0 on an idle machine.  On the 2-vCPU AMD EPYC VM it read 1.0-1.6 within
    a minute, either vCPU the slow one (another guest on the host core or
    its SMT sibling): a 2-thread run is then only as fast as the balance of
    its work between a fast and a slow thread allows (docs/engine.md section
    38).  The peer benchmark records it with every block of rows."""
    from cocopie_tf import _cc

    ratio = _cc.cpu_speed_ratio(rounds)
    return float(ratio) if ratio > 0 else None
