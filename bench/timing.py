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
