"""Whole keras.applications models (random weights, reduced input sizes):
the delegate claims their convolutions and matches stock LiteRT."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import convert, reference_outputs, rel_error, run_tflite
from cocopie_tf import lite

MODELS = {
    "VGG16": dict(input_shape=(32, 32, 3)),
    "ResNet50": dict(input_shape=(64, 64, 3)),
    "MobileNetV2": dict(input_shape=(96, 96, 3)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_application_model(name):
    import keras

    keras.utils.set_random_seed(7)
    ctor = getattr(keras.applications, name)
    # Logits, not softmax: a saturated softmax would hide errors.
    model = ctor(weights=None, classes=10, classifier_activation=None, **MODELS[name])
    tfl = convert(model)
    x = np.random.default_rng(0).uniform(-1, 1, (1, *MODELS[name]["input_shape"]))
    x = x.astype(np.float32)
    ref = reference_outputs(tfl, [x])[0]
    interp = lite.Interpreter(model_content=tfl, num_threads=2, claim="all")
    out = run_tflite(interp, [x])[0]
    assert rel_error(out, ref) <= 1e-5, name

    report = interp.delegate_report()
    ops = {}
    for e in report:
        ops[e["op"]] = ops.get(e["op"], 0) + 1
    # Every convolution of the model is claimed.
    n_conv = sum(isinstance(l, keras.layers.Conv2D) and not isinstance(l, keras.layers.DepthwiseConv2D)
                 for l in model.layers)
    n_dw = sum(isinstance(l, keras.layers.DepthwiseConv2D) for l in model.layers)
    assert ops.get("CONV_2D", 0) == n_conv
    assert ops.get("DEPTHWISE_CONV_2D", 0) == n_dw
    assert sum(e["dense_macs"] for e in report) > 0
