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
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Activation("tanh")(x)  # stays with TFLite, splits the partitions
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
    assert ops[:3] == ["CONV_2D", "CONV_2D", "AVERAGE_POOL_2D"] and "FULLY_CONNECTED" in ops
    for e in interp.delegate_report():
        # (a pool has no multiply-accumulates)
        assert (e["dense_macs"] > 0) == (e["op"] != "AVERAGE_POOL_2D")
        assert e["executed_macs"] == e["dense_macs"]
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


@pytest.mark.parametrize("threads", [1, 2])
def test_a_classifier_after_a_claimed_mean_is_claimed(threads):
    """claim=auto takes the FULLY_CONNECTED layers after a MEAN it claimed
    (ResNet-50's and MobileNetV2's heads): their input has no spatial axes,
    so there is no layout change, and the partition runs to the end instead
    of handing the cores to XNNPACK's pool for one layer.  Against numpy
    float64 (batch 1 and 3); the same FCs after a MEAN that is not claimed
    stay with TFLite."""
    import keras

    base = _mean_model(12, 12, 16, False, conv=True)
    x = keras.layers.Dense(24, activation="relu", name="fc1")(base.output)
    out = keras.layers.Dense(10, name="fc2")(x)
    model = keras.Model(base.input, out)
    tfl = convert(model)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 12, 12, 16)).astype(np.float32)
        it = lite.Interpreter(model_content=tfl, claim="auto", num_threads=threads)
        got = run_tflite(it, [x])[0]
        feats = model.get_layer("conv")(x).numpy().astype(np.float64).mean(axis=(1, 2))
        w1, b1 = model.get_layer("fc1").get_weights()
        w2, b2 = model.get_layer("fc2").get_weights()
        want = np.maximum(feats @ w1 + b1, 0) @ w2 + b2
        assert rel_error(got, want) <= 1e-5
        ops = [e["op"] for e in it.delegate_report()]
        assert ops == ["CONV_2D", "MEAN", "FULLY_CONNECTED", "FULLY_CONNECTED"], ops
    # No conv: nothing claims the MEAN under auto, so nor the FCs.
    inp = keras.Input((6, 6, 8), batch_size=1)
    alone = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(inp))
    it = lite.Interpreter(model_content=convert(keras.Model(inp, alone)), claim="auto")
    run_tflite(it, [np.ones((1, 6, 6, 8), np.float32)])
    assert it.delegate_report() == []


@pytest.mark.parametrize("threads", [1, 2])
def test_a_relu_fed_classifier_after_a_pool_to_one_position(threads):
    """VGG-16 CIFAR's head: a claimed conv, a max pool down to 1x1, then
    dense layers.  claim=auto takes the FCs too (their input has no spatial
    axes); those whose input a ReLU wrote (through the max pool, or the
    previous FC's fused ReLU) run by input, skipping the zero inputs' rows;
    the last (10 units) and a layer fed by a linear FC keep the rows.
    Against numpy float64 at batch 1 and, resized, 2 (converted at batch 1:
    a Dense on a 4-D input of unknown batch converts with RESHAPEs around
    it); an Inf weight of a zero input's row gives NaN, as 0 x Inf does."""
    import keras

    from cocopie_tf import patterns as P

    keras.utils.set_random_seed(4)
    inp = keras.Input((4, 4, 16), batch_size=1)
    conv = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv")
    x = keras.layers.MaxPooling2D(4)(conv(inp))
    fc1 = keras.layers.Dense(96, activation="relu", name="fc1")
    fc2 = keras.layers.Dense(80, name="fc2")
    fc3 = keras.layers.Dense(72, name="fc3")
    fc4 = keras.layers.Dense(10, name="fc4")
    model = keras.Model(inp, fc4(fc3(fc2(fc1(x)))))
    wts = conv.get_weights()
    wts[0] = P.prune_kernel(wts[0], connectivity=2.0)
    conv.set_weights(wts)
    tfl = convert(model)
    def forward(x):
        h = conv(x).numpy().astype(np.float64).max(axis=(1, 2))
        for layer, relu in ((fc1, True), (fc2, False), (fc3, False), (fc4, False)):
            w, b = layer.get_weights()
            with np.errstate(invalid="ignore"):
                h = h @ w.astype(np.float64) + b
            h = np.maximum(h, 0) if relu else h
        return h

    for batch in (1, 2):
        x = np.random.default_rng(batch).standard_normal((batch, 4, 4, 16)).astype(np.float32)
        it = lite.Interpreter(model_content=tfl, claim="auto", num_threads=threads)
        got = run_tflite(it, [x])[0].reshape(batch, -1)
        assert rel_error(got, forward(x)) <= 1e-5
        kernels = {e["node_index"]: (e["op"], e["kernel"].split("__")[0])
                   for e in it.delegate_report()}
        report = [kernels[n] for n in sorted(kernels)]
        assert [op for op, _ in report] == ["CONV_2D", "MAX_POOL_2D"] + ["FULLY_CONNECTED"] * 4
        assert [k for _, k in report[2:]] == ["f32_fc_by_input", "f32_fc_by_input",
                                             "f32_fc_direct", "f32_fc_direct"], report
    # An Inf in fc2's row of an input that fc1's ReLU zeroed: no skipping.
    # (The converter saturates an Inf weight to FLT_MAX: the file's bytes
    # are edited instead.)
    x = np.random.default_rng(1).standard_normal((1, 4, 4, 16)).astype(np.float32)
    w1, b1 = fc1.get_weights()
    j = int(np.flatnonzero(np.maximum(conv(x).numpy().max(axis=(1, 2)) @ w1 + b1, 0)[0] == 0)[0])
    w2, b2 = fc2.get_weights()
    raw = w2[j, 3].tobytes()
    assert tfl.count(raw) == 1
    poisoned = tfl.replace(raw, np.float32(np.inf).tobytes())
    w2[j, 3] = np.inf
    fc2.set_weights([w2, b2])
    want = forward(x)
    assert np.isnan(want).all()  # fc2's unit 3 is NaN, and fc3 mixes it into every unit
    it = lite.Interpreter(model_content=poisoned, claim="auto", num_threads=threads)
    got = run_tflite(it, [x])[0].reshape(1, -1)
    assert np.isnan(got).all() and np.isnan(reference_outputs(poisoned, [x])[0]).all(), got
    assert it.delegate_report()[3]["kernel"].startswith("f32_fc_by_input")  # fc2


def test_a_dense_layer_after_a_flatten_of_relu_outputs_runs_by_input():
    """claim=all: a Flatten (RESHAPE, left to TFLite) of a conv's ReLU
    output keeps its zeros, so the Dense after it runs by input, as does the
    Dense after that one's fused ReLU; a Dense fed by a linear one keeps the
    rows.  Against numpy float64, 1 and 2 threads."""
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((6, 6, 8), batch_size=1)
    conv = keras.layers.Conv2D(12, 3, padding="same", activation="relu")
    fc1 = keras.layers.Dense(80, activation="relu")
    fc2 = keras.layers.Dense(72)
    fc3 = keras.layers.Dense(64)
    model = keras.Model(inp, fc3(fc2(fc1(keras.layers.Flatten()(conv(inp))))))
    tfl = convert(model)
    x = np.random.default_rng(5).standard_normal((1, 6, 6, 8)).astype(np.float32)
    want = conv(x).numpy().astype(np.float64).reshape(1, -1)
    for layer, relu in ((fc1, True), (fc2, False), (fc3, False)):
        w, b = layer.get_weights()
        want = want @ w + b
        want = np.maximum(want, 0) if relu else want
    for threads in (1, 2):
        it = lite.Interpreter(model_content=tfl, claim="all", num_threads=threads)
        assert rel_error(run_tflite(it, [x])[0], want) <= 1e-5
        fcs = [e["kernel"].split("__")[0] for e in sorted(it.delegate_report(),
                                                          key=lambda e: e["node_index"])
               if e["op"] == "FULLY_CONNECTED"]
        assert fcs == ["f32_fc_by_input", "f32_fc_by_input", "f32_fc_direct"], fcs


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


# MAX_POOL_2D and AVERAGE_POOL_2D on the CPU backend: between claimed convs
# (claim=auto) a pool reads and writes planes, so a VGG stage stays in one
# partition; alone (claim=all) it runs NHWC at any batch.  Against stock
# LiteRT for finite inputs, and a float64 numpy pool (_np_pool) where a
# window holds NaN or Inf (cc/kernels/pool.h: stock's two kernel paths
# disagree there).
def _pool_model(kind, pool, h, w, c, act, seed=0, tail_conv=True):
    import keras

    from cocopie_tf import patterns as P

    keras.utils.set_random_seed(seed)
    inp = keras.Input((h, w, c), batch_size=None)
    convs = [keras.layers.Conv2D(c, 3, padding="same", activation=act, name=f"conv{i}")
             for i in range(2 if tail_conv else 1)]
    layer = keras.layers.MaxPooling2D if kind == "max" else keras.layers.AveragePooling2D
    x = layer(**pool, name="pool")(convs[0](inp))
    if tail_conv:
        x = convs[1](x)
    model = keras.Model(inp, x)
    for i, conv in enumerate(convs):
        wts = conv.get_weights()
        wts[0] = P.prune_kernel(wts[0], connectivity=2.0)
        wts[1] = np.random.default_rng(seed + i).uniform(-0.5, 0.5, c).astype(np.float32)
        conv.set_weights(wts)
    return model


_POOLS = [dict(pool_size=2), dict(pool_size=3, strides=2, padding="valid"),
          dict(pool_size=3, strides=2, padding="same"), dict(pool_size=(2, 3), strides=1, padding="same"),
          dict(pool_size=3, strides=(1, 2), padding="same")]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("pool", _POOLS, ids=lambda p: "-".join(f"{k}{v}" for k, v in p.items()))
def test_pool_between_claimed_convs_keeps_planes(kind, pool):
    tfl = convert(_pool_model(kind, pool, 19, 23, 16, "relu"))
    x = np.random.default_rng(3).standard_normal((1, 19, 23, 16)).astype(np.float32)
    ref = reference_outputs(tfl, [x])[0]
    for threads in (1, 2):
        it = lite.Interpreter(model_content=tfl, claim="auto", num_threads=threads)
        assert rel_error(run_tflite(it, [x])[0], ref) <= 1e-5
        report = {e["op"]: e for e in it.delegate_report()}
        op = "MAX_POOL_2D" if kind == "max" else "AVERAGE_POOL_2D"
        assert op in report, report.keys()
        assert report[op]["kernel"] == f"f32_{kind}pool2d__portable"
        assert report[op]["layout"] == "planar"  # the pool's output stays planes
        assert [e["layout"] for e in it.delegate_report() if e["op"] == "CONV_2D"][0] == "planar"
    # NaN and Inf in the input: the conv carries them to the pool (Inf -
    # Inf makes NaN, so some windows hold only NaN), which skips NaN among
    # numbers and, as the partition's last node, writes NHWC from the planes.  Reference: stock LiteRT's conv output,
    # pooled by _np_pool.  (Not through a second conv: the lowest float an
    # all-NaN window gives makes that conv's sums overflow in an
    # order-dependent way.)
    model = _pool_model(kind, pool, 19, 23, 16, None, tail_conv=False)
    tfl = convert(model)
    x[0, 2, 3, :] = np.nan
    x[0, 10:14, 10:14, 1] = -np.inf
    x[0, 15, 20, 2] = np.inf
    import keras

    conv_only = convert(keras.Model(model.input, model.get_layer("conv0").output))
    ref = _np_pool(reference_outputs(conv_only, [x])[0], kind, **pool)
    it = lite.Interpreter(model_content=tfl, claim="auto")
    out = run_tflite(it, [x])[0]
    assert [e["op"] for e in it.delegate_report()][-1].endswith("POOL_2D")
    assert np.isnan(ref).any() and np.isinf(ref).any()
    assert_same_non_finite(out, ref, tol=1e-5)


def _np_pool(x, kind, pool_size, strides=None, padding="valid"):
    """Pooling in float64 numpy: in-bounds positions only; max skips NaN
    unless the window holds nothing else (nanmax); average = sum / count."""
    ph, pw = (pool_size, pool_size) if np.isscalar(pool_size) else pool_size
    strides = strides or (ph, pw)
    sh, sw = (strides, strides) if np.isscalar(strides) else strides
    n, h, w, c = x.shape
    if padding == "same":
        oh, ow = -(-h // sh), -(-w // sw)
        top = max((oh - 1) * sh + ph - h, 0) // 2
        left = max((ow - 1) * sw + pw - w, 0) // 2
    else:
        oh, ow, top, left = (h - ph) // sh + 1, (w - pw) // sw + 1, 0, 0
    out = np.empty((n, oh, ow, c))
    with np.errstate(invalid="ignore"):
        for oy in range(oh):
            for ox in range(ow):
                y0, x0 = oy * sh - top, ox * sw - left
                win = x[:, max(y0, 0):y0 + ph, max(x0, 0):x0 + pw, :].astype(np.float64)
                if kind == "max":
                    all_nan = np.isnan(win).all(axis=(1, 2))
                    m = np.where(np.isnan(win), -np.inf, win).max(axis=(1, 2))
                    out[:, oy, ox] = np.where(all_nan, np.nan, m)
                else:
                    out[:, oy, ox] = win.mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("batch", [1, 3])
def test_pool_alone_runs_nhwc(kind, batch):
    """claim=all: a pool between TFLite's nodes (or the graph's input)
    reads and writes NHWC at any batch, with its fused activation."""
    import keras

    inp = keras.Input((9, 11, 5), batch_size=None)
    layer = keras.layers.MaxPooling2D if kind == "max" else keras.layers.AveragePooling2D
    x = keras.layers.ReLU(max_value=6.0)(layer(pool_size=3, strides=2, padding="same")(inp))
    tfl = convert(keras.Model(inp, x))
    r = np.random.default_rng(batch)
    x = (4 * r.standard_normal((batch, 9, 11, 5))).astype(np.float32)
    it = lite.Interpreter(model_content=tfl, claim="all", num_threads=2)
    out = run_tflite(it, [x])[0]
    ref = _np_pool(x, kind, 3, 2, "same")
    assert rel_error(out, np.clip(ref, 0, 6)) <= 1e-6
    report = it.delegate_report()
    assert [e["op"] for e in report] == ["MAX_POOL_2D" if kind == "max" else "AVERAGE_POOL_2D"]
    # claim=auto leaves a pool with no claimed producer to TFLite.
    assert lite.Interpreter(model_content=tfl, claim="auto").delegate_report() == []
    # A window of -Inf alone gives -Inf (then the clamp: 0), of NaN alone
    # NaN; a NaN among numbers is skipped.
    x[:, :3, :3, 0] = -np.inf
    x[:, :3, :3, 3] = np.nan
    x[:, 4, 4, 1] = np.nan
    x[:, 6, 7, 2] = np.inf
    out = run_tflite(it, [x])[0]
    with np.errstate(invalid="ignore"):
        want = np.clip(_np_pool(x, kind, 3, 2, "same"), 0, 6)
    assert np.isnan(want).any()
    assert_same_non_finite(out, want, tol=1e-6)


# PAD (zeros around height and width, Keras' ZeroPadding2D) on the CPU
# backend: between claimed convs it pads the planes; under claim=all it runs
# NHWC at any batch; a PAD before a VALID pool is folded into the pool,
# whose windows then count the zeros (NaN still skipped).
def _pad_model(pad, then, seed=0):
    import keras

    from cocopie_tf import patterns as P

    keras.utils.set_random_seed(seed)
    inp = keras.Input((13, 17, 8), batch_size=None)
    conv = keras.layers.Conv2D(8, 3, padding="same", name="conv0")
    x = keras.layers.ZeroPadding2D(pad, name="pad")(conv(inp))
    if then == "conv":
        tail = keras.layers.Conv2D(8, 3, padding="valid", name="conv1")
        x = tail(x)
    else:
        layer = keras.layers.MaxPooling2D if then == "max" else keras.layers.AveragePooling2D
        x = layer(3, strides=2, padding="valid", name="pool")(x)
    model = keras.Model(inp, x)
    for name in ("conv0", "conv1") if then == "conv" else ("conv0",):
        layer = model.get_layer(name)
        wts = layer.get_weights()
        wts[0] = P.prune_kernel(wts[0], connectivity=2.0)
        layer.set_weights(wts)
    return model


@pytest.mark.parametrize("then", ["conv", "max", "avg"])
@pytest.mark.parametrize("pad", [2, ((2, 0), (1, 3))], ids=["2", "2013"])
def test_pad_between_claimed_nodes(pad, then):
    import keras

    model = _pad_model(pad, then)
    tfl = convert(model)
    x = np.random.default_rng(5).standard_normal((1, 13, 17, 8)).astype(np.float32)
    for threads in (1, 2):
        it = lite.Interpreter(model_content=tfl, claim="auto", num_threads=threads)
        assert rel_error(run_tflite(it, [x])[0], reference_outputs(tfl, [x])[0]) <= 1e-5
        entries = {e["op"]: e for e in it.delegate_report()}
        assert entries["PAD"]["kernel"] == "f32_pad2d__portable"
        if then == "conv":
            assert entries["PAD"]["layout"] == "planar"
        else:
            assert entries["PAD"]["layout"] == "folded into the next pool"
    # NaN and Inf: the PAD copies them; a folded pool skips NaN and counts
    # the border's zeros.  Reference: stock's conv output, padded and pooled
    # in numpy.
    x[0, 0, 0, :] = np.nan
    x[0, 5, 6, 1] = np.inf
    x[0, 12, 16, 2] = -np.inf
    it = lite.Interpreter(model_content=tfl, claim="auto")
    out = run_tflite(it, [x])[0]
    conv0 = reference_outputs(convert(keras.Model(model.input, model.get_layer("conv0").output)),
                              [x])[0]
    (t, b), (l, r) = ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad
    padded = np.pad(conv0, ((0, 0), (t, b), (l, r), (0, 0)))
    if then == "conv":
        ref = run_tflite(lite.Interpreter(model_content=tfl, claim="auto"), [x])[0]
        stock = reference_outputs(tfl, [x])[0]
        assert_same_non_finite(out, stock, tol=1e-5)
        del ref
    else:
        assert_same_non_finite(out, _np_pool(padded, then, 3, 2, "valid"), tol=1e-5)


@pytest.mark.parametrize("batch", [1, 2])
def test_pad_alone_and_pads_it_does_not_take(batch):
    import keras
    import tensorflow as tf

    inp = keras.Input((5, 6, 3), batch_size=None)
    x = keras.layers.ZeroPadding2D(((1, 2), (0, 3)))(inp)
    tfl = convert(keras.Model(inp, x))
    xs = np.random.default_rng(batch).standard_normal((batch, 5, 6, 3)).astype(np.float32)
    xs[0, 0, 0, 0] = np.nan
    it = lite.Interpreter(model_content=tfl, claim="all", num_threads=2)
    out = run_tflite(it, [xs])[0]
    want = np.pad(xs, ((0, 0), (1, 2), (0, 3), (0, 0)))
    assert out.shape == want.shape and np.array_equal(np.isnan(out), np.isnan(want))
    assert np.array_equal(np.nan_to_num(out), np.nan_to_num(want))
    assert [e["op"] for e in it.delegate_report()] == ["PAD"]
    # claim=auto: no claimed neighbour, so TFLite keeps it.
    assert lite.Interpreter(model_content=tfl, claim="auto").delegate_report() == []
    # Padding the channel axis, or with a non-zero constant (PADV2): TFLite's.
    for fn in (lambda t: tf.pad(t, [[0, 0], [1, 1], [0, 0], [0, 2]]),
               lambda t: tf.pad(t, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=1.5)):
        m = tf.function(fn, input_signature=[tf.TensorSpec((1, 5, 6, 3), tf.float32)])
        conv = tf.lite.TFLiteConverter.from_concrete_functions([m.get_concrete_function()], m)
        t2 = conv.convert()
        it = lite.Interpreter(model_content=t2, claim="all")
        out = run_tflite(it, [xs[:1]])[0]
        assert np.array_equal(np.nan_to_num(out), np.nan_to_num(reference_outputs(t2, [xs[:1]])[0]))
        assert it.delegate_report() == []
