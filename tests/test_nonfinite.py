"""Inf and NaN reach the outputs they reach in stock LiteRT (issue 12, item 1).

Stock kernels multiply every weight, the pruned zeros too, so one Inf or NaN
input poisons every output whose window covers it (0 x Inf = NaN), and an Inf
weight poisons its whole output channel.  The pattern kernels skip the zeros;
these tests check that the delegate still gives the same non-finite
positions, and the same finite values elsewhere, against a float64 numpy
reference (layer level, every engine this machine has) and against stock
LiteRT (whole models with ReLU, ReLU6 and chained pattern convs)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import reference_outputs, run_tflite
from cocopie_tf import _cc, lite
from test_kernels import np_conv2d
from test_pattern_engine import JIT_ISAS, _pruned_filter

# "generic": the portable static kernels (scalar transposes), "static": this
# CPU's static kernel set, then every generator ISA this machine runs.
ENGINES = ["generic", "static"] + JIT_ISAS


def _layer(filt, bias=None, engine="static", **kw):
    if engine == "generic":
        return _cc.PatternConvLayer(filt, bias, kernel="generic", jit="static", **kw)
    return _cc.PatternConvLayer(filt, bias, jit=engine, **kw)


@pytest.fixture(autouse=True)
def _quiet_numpy():
    with np.errstate(invalid="ignore", over="ignore"):  # 0 x Inf is the point here
        yield


def _same_non_finite(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape
    assert np.array_equal(np.isnan(out), np.isnan(ref)), \
        f"NaN at {np.argwhere(np.isnan(out) != np.isnan(ref))[:5].tolist()}"
    assert np.array_equal(np.isposinf(out), np.isposinf(ref))
    assert np.array_equal(np.isneginf(out), np.isneginf(ref))
    fin = np.isfinite(ref)
    assert np.all(np.abs(out[fin] - ref[fin]) <= 1e-4 * (1 + np.abs(ref[fin])))


def _poison(x, rng, value, count):
    x = x.copy()
    for _ in range(count):
        idx = tuple(int(rng.integers(d)) for d in x.shape)
        x[idx] = value
    return x


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_input_reaches_the_outputs_stock_arithmetic_reaches(engine, act, value):
    rng = np.random.default_rng(7)
    filt = _pruned_filter(rng, 24, 3, 16, connectivity=2.0)
    bias = rng.standard_normal(24).astype(np.float32)
    layer = _layer(filt, bias, engine, padding="same", activation=act, num_threads=2)
    for count in (1, 3):
        x = _poison(rng.standard_normal((1, 14, 14, 16)).astype(np.float32), rng, value, count)
        ref = np_conv2d(x, filt, bias, (1, 1), (1, 1), "same", act=act)
        assert not np.all(np.isfinite(ref))
        _same_non_finite(layer(x), ref)
        # The next call on clean data is clean again (no NaN left in scratch).
        clean = rng.standard_normal((1, 14, 14, 16)).astype(np.float32)
        _same_non_finite(layer(clean), np_conv2d(clean, filt, bias, (1, 1), (1, 1), "same",
                                                 act=act))
    want = {"generic": "generic", "static": _cc.default_kernel_set()}
    assert layer.engine["engine"] == want.get(engine, "jit_" + engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_kept_weight_poisons_its_channel(engine, value):
    rng = np.random.default_rng(8)
    filt = _pruned_filter(rng, 16, 3, 8, connectivity=2.0)
    o, ky, kx, c = (int(v) for v in np.argwhere(filt != 0)[5])
    filt[o, ky, kx, c] = value
    layer = _layer(filt, None, engine, padding="same", activation="relu")
    x = rng.standard_normal((1, 12, 12, 8)).astype(np.float32)
    ref = np_conv2d(x, filt, None, (1, 1), (1, 1), "same", act="relu")
    _same_non_finite(layer(x), ref)


def _chain_model():
    import keras

    from cocopie_tf import convert
    from cocopie_tf.patterns import prune_kernel

    keras.utils.set_random_seed(5)
    inp = keras.Input((12, 12, 16), batch_size=1)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="a")(inp)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu6", name="b")(h)  # chained
    h = keras.layers.Conv2D(16, 3, padding="valid", name="c")(h)
    model = keras.Model(inp, h)
    kept = []
    for name in "abc":
        layer = model.get_layer(name)
        w = layer.get_weights()
        w[0] = prune_kernel(w[0], connectivity=2.0)
        layer.set_weights(w)
        kept.append(w[0][w[0] != 0])
    return convert(model), kept


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_input_through_a_phase_split_conv(value):
    """A pruned stride-2 conv runs phase-split; when its input holds Inf or
    NaN it runs the dense kernel for that invoke (stock's 0 x Inf products,
    window by window), and the conv chained after it packs its own input."""
    import keras

    from cocopie_tf import convert
    from cocopie_tf.patterns import prune_kernel

    keras.utils.set_random_seed(6)
    inp = keras.Input((13, 14, 16), batch_size=1)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="s2")(inp)
    h = keras.layers.Conv2D(32, 3, padding="same", name="s1")(h)
    model = keras.Model(inp, h)
    for name in ("s2", "s1"):
        w = model.get_layer(name).get_weights()
        w[0] = prune_kernel(w[0], connectivity=2.0)
        model.get_layer(name).set_weights(w)
    tfl = convert(model)
    it = lite.Interpreter(model_content=tfl, claim="all")
    rng = np.random.default_rng(11)
    for count in (0, 1, 3, 0):  # finite, poisoned, poisoned, finite again
        x = _poison(rng.standard_normal((1, 13, 14, 16)).astype(np.float32), rng, value, count)
        ref = reference_outputs(tfl, [x])[0]
        assert np.all(np.isfinite(ref)) == (count == 0)
        _same_non_finite(run_tflite(it, [x])[0], ref)
    report = it.delegate_report()
    assert [e["metadata"] for e in report] == ["not used: the strided conv runs phase-split",
                                               "used"]
    assert report[0]["keeps_layout"]  # chained into s1


def _poison_weight(tfl, weights, value):
    """The file with one kept weight replaced by `value` (the TFLite converter
    saturates Inf weights to FLT_MAX, so this edits the bytes)."""
    for w in weights:
        raw = np.float32(w).tobytes()
        if tfl.count(raw) == 1:
            i = tfl.index(raw)
            return tfl[:i] + np.float32(value).tobytes() + tfl[i + 4:]
    raise AssertionError("no unique weight to poison")


@pytest.mark.parametrize("jit", ["static", "auto"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_match_stock_litert_through_a_model(jit, value):
    tfl, _ = _chain_model()
    it = lite.Interpreter(model_content=tfl, claim="all", jit=jit)
    rng = np.random.default_rng(9)
    for count in (1, 2, 5):
        x = _poison(rng.standard_normal((1, 12, 12, 16)).astype(np.float32), rng, value, count)
        ref = reference_outputs(tfl, [x])[0]
        assert not np.all(np.isfinite(ref))
        _same_non_finite(run_tflite(it, [x])[0], ref)
    report = it.delegate_report()
    assert len(report) == 3 and any(e["keeps_layout"] for e in report)  # chained case ran


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_weight_matches_stock_litert_through_a_model(layer, value):
    tfl, kept = _chain_model()
    tfl = _poison_weight(tfl, kept[layer], value)
    x = np.random.default_rng(10).standard_normal((1, 12, 12, 16)).astype(np.float32)
    ref = reference_outputs(tfl, [x])[0]
    assert not np.all(np.isfinite(ref))
    it = lite.Interpreter(model_content=tfl, claim="all")
    _same_non_finite(run_tflite(it, [x])[0], ref)
    assert len(it.delegate_report()) == 3


@pytest.mark.parametrize("layer", ["conv", "conv_stride2", "depthwise", "dense"])
@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_non_finite_weight_of_a_dense_layer_matches_stock(layer, value):
    """Found by tests/fuzz_delegate.py: stock's XNNPACK multiplies the padding
    as zeros, so an Inf weight makes the border outputs NaN (0 x Inf); the
    direct kernels skipped those taps."""
    import keras

    from cocopie_tf import convert

    keras.utils.set_random_seed(1)
    inp = keras.Input((7, 7, 4), batch_size=1)
    op = {"conv": keras.layers.Conv2D(5, 3, padding="same"),
          "conv_stride2": keras.layers.Conv2D(5, 3, strides=2, padding="same"),
          "depthwise": keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6"),
          "dense": keras.layers.Dense(5, activation="relu")}[layer]
    model = keras.Model(inp, op(inp))
    tfl = _poison_weight(convert(model), op.get_weights()[0].ravel()[[0, 4, 7]], value)
    x = np.random.default_rng(2).standard_normal((1, 7, 7, 4)).astype(np.float32)
    ref = reference_outputs(tfl, [x])[0]
    assert not np.all(np.isfinite(ref))
    for kernel in ("auto", "reference"):
        it = lite.Interpreter(model_content=tfl, claim="all", kernel=kernel)
        _same_non_finite(run_tflite(it, [x])[0], ref)
        assert len(it.delegate_report()) == 1
