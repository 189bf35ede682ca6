"""Side-by-side latency measurement: alternate A B A B, report medians and spread."""

from __future__ import annotations

import platform

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
