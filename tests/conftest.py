"""Shared helpers for the test-suite: build, convert and run small models."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    """||out - ref|| / ||ref||, computed in float64."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(out - ref) / (denom if denom > 0 else 1.0))


def assert_same_non_finite(out: np.ndarray, ref: np.ndarray, tol: float = 1e-4, what=None):
    """NaN and Inf exactly where stock LiteRT has them, the rest within tol
    (relative, plus tol absolute)."""
    assert np.array_equal(np.isnan(out), np.isnan(ref)), what
    assert np.array_equal(np.isinf(out), np.isinf(ref)), what
    fin = np.isfinite(ref)
    assert np.all(out[np.isinf(ref)] == ref[np.isinf(ref)]), what
    assert np.all(np.abs(out[fin] - ref[fin]) <= tol * (1 + np.abs(ref[fin]))), what


def convert(model) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def run_tflite(interpreter, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Resizes inputs if needed, runs once, returns every output."""
    details = interpreter.get_input_details()
    for d, x in zip(details, inputs):
        if list(d["shape"]) != list(x.shape):
            interpreter.resize_tensor_input(d["index"], list(x.shape))
    interpreter.allocate_tensors()
    for d, x in zip(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(d["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def reference_outputs(model_content: bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Stock LiteRT (its default XNNPACK path), no cocopie delegate."""
    from ai_edge_litert.interpreter import Interpreter

    return run_tflite(Interpreter(model_content=model_content), inputs)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
