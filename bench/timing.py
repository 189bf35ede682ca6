"""Side-by-side latency measurement: alternate A B A B, report medians and spread."""

from __future__ import annotations

import platform
import statistics
import time

import numpy as np


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


def alternate(interps, runs=15, warmup=8):
    """Returns per-interpreter lists of ms, measured alternately."""
    for it in interps:
        for _ in range(warmup):
            it.invoke()
    times = [[] for _ in interps]
    for _ in range(runs):
        for i, it in enumerate(interps):
            t0 = time.perf_counter()
            it.invoke()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return times


def summary(ms):
    q = statistics.quantiles(ms, n=4)
    return {"median": statistics.median(ms), "q1": q[0], "q3": q[2]}


def machine_info() -> dict:
    import ai_edge_litert
    import tensorflow as tf

    from cocopie_tf import _cc

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "features": _cc.cpu_features(),
        "kernel_set": _cc.default_kernel_set(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "ai_edge_litert": getattr(ai_edge_litert, "__version__", "2.3.x"),
    }
