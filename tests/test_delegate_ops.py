"""One-op Keras models through the converter: the delegate must claim the op
and match stock LiteRT (XNNPACK) to 1e-5 relative error."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import assert_same_non_finite, convert, reference_outputs, rel_error, run_tflite
from cocopie_tf import lite

ACTS = [None, "relu", "relu6"]


def _geometries():
    for k, stride, padding, dil in itertools.product([1, 3, 5], [1, 2], ["same", "valid"], [1, 2]):
        if stride > 1 and dil > 1:  # Keras refuses the combination
            continue
        if k == 1 and dil > 1:  # dilation of a 1x1 kernel is a no-op
            continue
        if padding == "valid" and (k - 1) * dil + 1 > 7:  # larger than the input
            continue
        yield k, stride, padding, dil


CASES = []
for i, (geom, op) in enumerate(itertools.product(list(_geometries()), ["conv", "dw1", "dw2"])):
    # Activation and batch cycle through the sweep rather than multiplying it.
    CASES.append((op, *geom, ACTS[i % 3], 1 + (i // 3) % 2))


def _one_op_model(op, k, stride, padding, dil, act, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    act_fn = {"relu6": keras.activations.relu6}.get(act, act)
    inp = keras.Input((7, 13, 5))  # odd sizes, channels not a multiple of 8
    if op == "conv":
        layer = keras.layers.Conv2D(11, k, strides=stride, padding=padding,
                                    dilation_rate=dil, activation=act_fn,
                                    bias_initializer="random_normal")
    else:
        layer = keras.layers.DepthwiseConv2D(k, strides=stride, padding=padding,
                                             dilation_rate=dil, depth_multiplier=int(op[-1]),
                                             activation=act_fn, bias_initializer="random_normal")
    return keras.Model(inp, layer(inp))


@pytest.mark.parametrize("op,k,stride,padding,dil,act,batch", CASES)
def test_one_op_model(op, k, stride, padding, dil, act, batch):
    model = _one_op_model(op, k, stride, padding, dil, act)
    tfl = convert(model)
    x = np.random.default_rng(k * 7 + stride).standard_normal((batch, 7, 13, 5)).astype(np.float32)
    ref = reference_outputs(tfl, [x])[0]
    interp = lite.Interpreter(model_content=tfl, num_threads=2, claim="all")
    out = run_tflite(interp, [x])[0]
    assert out.shape == ref.shape
    assert rel_error(out, ref) <= 1e-5
    report = interp.delegate_report()
    assert [e["op"] for e in report] == ["CONV_2D" if op == "conv" else "DEPTHWISE_CONV_2D"]
    # Keras' own numbers are the independent check of the whole pipeline.
    keras_out = np.asarray(model(x))
    assert rel_error(out, keras_out) <= 1e-5


@pytest.mark.parametrize("keep_dims", [False, True])
def test_dense_layers_and_partitions(keep_dims):
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 9, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(6, 1)(x)  # internal to the partition: delegate scratch memory
    x = keras.layers.AveragePooling2D(2)(x)  # stays with TFLite, splits the partitions
    if keep_dims:
        x = keras.layers.Dense(5)(x)  # on a 4-D tensor: FULLY_CONNECTED keep_num_dims
    else:
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(7, activation="relu")(x)
        x = keras.layers.Dense(3)(x)
    model = keras.Model(inp, x)
    tfl = convert(model)
    xs = np.random.default_rng(0).standard_normal((2, 6, 9, 4)).astype(np.float32)
    interp = lite.Interpreter(model_content=tfl, claim="all")
    out = run_tflite(interp, [xs])[0]
    ref = reference_outputs(tfl, [xs])[0]
    assert rel_error(out, ref) <= 1e-5
    assert rel_error(out, np.asarray(model(xs))) <= 1e-5
    ops = [e["op"] for e in interp.delegate_report()]
    assert ops[:2] == ["CONV_2D", "CONV_2D"] and "FULLY_CONNECTED" in ops
    for e in interp.delegate_report():
        assert e["dense_macs"] > 0 and e["executed_macs"] == e["dense_macs"]
        assert e["kernel"].startswith("f32_")


@pytest.mark.parametrize("kernel", ["reference", "generic", "auto"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_kernel_choice_and_threads(kernel, threads):
    model = _one_op_model("conv", 3, 1, "same", 1, "relu", seed=5)
    tfl = convert(model)
    x = np.random.default_rng(1).standard_normal((1, 7, 13, 5)).astype(np.float32)
    interp = lite.Interpreter(model_content=tfl, num_threads=threads, kernel=kernel, claim="all")
    out = run_tflite(interp, [x])[0]
    assert rel_error(out, reference_outputs(tfl, [x])[0]) <= 1e-5
    (entry,) = interp.delegate_report()
    if kernel == "reference":
        assert entry["kernel"] == "f32_conv2d__reference"
    elif kernel == "generic":
        assert entry["kernel"] == "f32_conv2d_direct__generic"


def test_delegate_loads_in_tf_lite_interpreter():
    import tensorflow as tf

    model = _one_op_model("dw2", 3, 2, "same", 1, "relu")
    tfl = convert(model)
    x = np.random.default_rng(2).standard_normal((1, 7, 13, 5)).astype(np.float32)
    interp = tf.lite.Interpreter(model_content=tfl, experimental_delegates=[lite.load_delegate(claim="all")])
    out = run_tflite(interp, [x])[0]
    ops = [d["op_name"] for d in interp._get_ops_details()]  # noqa: SLF001 - no public API
    assert "DELEGATE" in ops
    assert rel_error(out, reference_outputs(tfl, [x])[0]) <= 1e-5


def test_same_input_twice_and_resize_between_runs():
    model = _one_op_model("conv", 3, 2, "same", 1, None)
    tfl = convert(model)
    interp = lite.Interpreter(model_content=tfl, claim="all")
    r = np.random.default_rng(4)
    for batch in (1, 3, 2):
        x = r.standard_normal((batch, 7, 13, 5)).astype(np.float32)
        out = run_tflite(interp, [x])[0]
        assert out.shape[0] == batch
        assert rel_error(out, np.asarray(model(x))) <= 1e-5


# MEAN over height and width (Keras' GlobalAveragePooling2D) on the CPU
# backend: after a claimed pattern conv it reads the conv's planes as they
# are (claim=auto takes it with the conv); alone it reads NHWC, batch > 1
# too.  Against numpy float64, and stock LiteRT for Inf/NaN.
def _mean_model(h, w, c, keepdims, conv, seed=0):
    import keras

    from cocopie_tf import patterns as P

    keras.utils.set_random_seed(seed)
    inp = keras.Input((h, w, c), batch_size=None)
    x = inp
    if conv:
        layer = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv")
        x = layer(x)
    x = keras.layers.GlobalAveragePooling2D(keepdims=keepdims)(x)
    model = keras.Model(inp, x)
    if conv:
        wts = layer.get_weights()
        wts[0] = P.prune_kernel(wts[0], connectivity=2.0)
        wts[1] = np.random.default_rng(seed).uniform(-0.5, 0.5, 32).astype(np.float32)
        layer.set_weights(wts)
    return model


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("h,w,batch,conv,claim", [
    (24, 24, 1, True, "auto"), (7, 9, 1, True, "all"), (5, 6, 2, False, "all"),
    (1, 3, 1, False, "all")])
def test_mean_over_height_and_width(keepdims, h, w, batch, conv, claim):
    model = _mean_model(h, w, 16, keepdims, conv)
    tfl = convert(model)
    x = np.random.default_rng(h).standard_normal((batch, h, w, 16)).astype(np.float32)
    it = lite.Interpreter(model_content=tfl, claim=claim, num_threads=2)
    out = run_tflite(it, [x])[0]
    feats = model.get_layer("conv")(x).numpy() if conv else x
    ref = feats.astype(np.float64).mean(axis=(1, 2), keepdims=keepdims)
    assert out.shape == ref.shape
    assert rel_error(out, ref) <= 1e-5
    mean = [e for e in it.delegate_report() if e["op"] == "MEAN"]
    assert len(mean) == 1 and mean[0]["kernel"].startswith("f32_mean__")
    if conv:  # the conv's planes went straight in
        conv_entry = [e for e in it.delegate_report() if e["op"] == "CONV_2D"][0]
        assert conv_entry["layout"] == "planar"
    # An Inf or NaN reaches its channel's mean, as on stock LiteRT.
    x[0, 0, 0, 3] = np.nan
    x[0, h - 1, w - 1, 5] = np.inf
    assert_same_non_finite(run_tflite(it, [x])[0], reference_outputs(tfl, [x])[0], tol=1e-5)


def test_mean_over_other_axes_stays_with_tflite():
    import keras

    inp = keras.Input((6, 6, 8), batch_size=1)
    for axis in ([1], [3], [1, 3]):
        out = keras.layers.Lambda(lambda t, a=axis: keras.ops.mean(t, axis=a))(inp)
        tfl = convert(keras.Model(inp, out))
        x = np.random.default_rng(0).standard_normal((1, 6, 6, 8)).astype(np.float32)
        it = lite.Interpreter(model_content=tfl, claim="all")
        assert rel_error(run_tflite(it, [x])[0], reference_outputs(tfl, [x])[0]) <= 1e-6
        assert it.delegate_report() == [], axis
