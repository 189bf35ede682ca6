"""backend="gpu": the OpenCL backend in the delegate, on whatever OpenCL the
machine has (PoCL's CPU device in CI: correctness, not speed).  Every claimed
op equals stock LiteRT; the failure paths (no OpenCL library, no platform,
a bad device, a corrupt program cache) give a clear error or the announced
fallback.  Without OpenCL these tests skip, unless COCOPIE_REQUIRE_OPENCL is
set (CI installs PoCL and sets it)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import convert, reference_outputs, rel_error, run_tflite
from cocopie_tf import lite
from cocopie_tf.patterns import prune_kernel

TESTS = pathlib.Path(__file__).resolve().parent
GPU_TOL = 1e-4  # fp32 on the device; summation order differs from stock


def _opencl_available() -> str:
    """'' if backend=gpu can be created here, else why not."""
    try:
        lite.load_delegate(backend="gpu", gpu_cache="off")
        return ""
    except ValueError as e:
        return str(e)


_WHY_NOT = _opencl_available()
if _WHY_NOT and os.environ.get("COCOPIE_REQUIRE_OPENCL"):
    raise RuntimeError(f"COCOPIE_REQUIRE_OPENCL is set but backend=gpu is unavailable: {_WHY_NOT}")
needs_opencl = pytest.mark.skipif(bool(_WHY_NOT), reason=f"no OpenCL device: {_WHY_NOT}")


def _pruned(model, skip_first=True):
    import keras

    convs = [l for l in model.layers if type(l) is keras.layers.Conv2D and l.kernel_size == (3, 3)]
    for i, layer in enumerate(convs):
        if skip_first and i == 0:
            continue
        w = layer.get_weights()
        w[0] = prune_kernel(w[0], num_patterns=8, connectivity=3.6)
        layer.set_weights(w)
    return model


def _check(tfl, inputs, cache, **options):
    interp = lite.Interpreter(model_content=tfl, backend="gpu", gpu_cache=str(cache), **options)
    out = run_tflite(interp, inputs)
    ref = reference_outputs(tfl, inputs)
    for o, r in zip(out, ref):
        assert rel_error(o, r) <= GPU_TOL, rel_error(o, r)
    return interp.delegate_report()


@needs_opencl
@pytest.mark.parametrize(
    "layer",
    [
        dict(kind="conv", filters=12, kernel_size=3, strides=1, padding="same"),
        dict(kind="conv", filters=8, kernel_size=3, strides=2, padding="same"),
        dict(kind="conv", filters=8, kernel_size=3, strides=(1, 2), padding="valid"),
        dict(kind="conv", filters=6, kernel_size=3, dilation_rate=2, padding="same"),
        dict(kind="conv", filters=10, kernel_size=1, padding="valid"),
        dict(kind="conv", filters=5, kernel_size=(1, 3), padding="same"),
        dict(kind="conv", filters=7, kernel_size=5, strides=2, padding="same"),
        dict(kind="dw", kernel_size=3, padding="same"),
        dict(kind="dw", kernel_size=3, strides=2, depth_multiplier=2, padding="valid"),
        dict(kind="dw", kernel_size=3, dilation_rate=2, padding="same"),
    ],
    ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()),
)
@pytest.mark.parametrize("batch", [1, 2])
def test_ops_match_stock(layer, batch, tmp_path, rng):
    import keras

    keras.utils.set_random_seed(3)
    layer = dict(layer)
    kind = layer.pop("kind")
    inp = keras.Input((11, 13, 6), batch_size=batch)
    make = keras.layers.Conv2D if kind == "conv" else keras.layers.DepthwiseConv2D
    x = make(activation="relu", **layer)(inp)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(9, activation="relu6")(x))
    if kind == "conv":  # half the filters pattern-pruned: both kernels run
        _pruned(model, skip_first=False)
    tfl = convert(model)
    xin = rng.uniform(-1, 1, (batch, 11, 13, 6)).astype(np.float32)
    report = _check(tfl, [xin], tmp_path)
    assert {e["device"] for e in report} == {"gpu"}
    assert {e["op"] for e in report} == {"CONV_2D" if kind == "conv" else "DEPTHWISE_CONV_2D",
                                         "FULLY_CONNECTED"}


@needs_opencl
@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("VGG16", (32, 32, 3)), ("ResNet50", (64, 64, 3))])
def test_pruned_application_models(name, shape, tmp_path):
    import keras

    keras.utils.set_random_seed(7)
    model = getattr(keras.applications, name)(weights=None, classes=10,
                                              classifier_activation=None, input_shape=shape)
    _pruned(model)
    tfl = convert(model)
    x = np.random.default_rng(0).uniform(-1, 1, (1, *shape)).astype(np.float32)
    report = _check(tfl, [x], tmp_path, profile=True)
    kernels = [e["kernel"] for e in report]
    assert all(e["device"] == "gpu" for e in report)
    assert "f32_conv2d_pattern__opencl" in kernels and "f32_conv2d_direct__opencl" in kernels
    if name == "ResNet50":  # residual adds and the stem's max pool stay on the device
        assert "f32_add__opencl" in kernels and "f32_maxpool2d__opencl" in kernels
    # Layers with the same source (same geometry; dense, or the same
    # patterns) share one program: the second of them is already a hit.
    states = [e["program_cache"] for e in report]
    assert set(states) <= {"stored", "hit"} and "stored" in states, set(states)
    assert all(e["invokes"] == 1 and e["mean_ms"] >= 0 for e in report)
    pattern = [e for e in report if e["kernel"] == "f32_conv2d_pattern__opencl"]
    assert all(e["executed_macs"] < 0.5 * e["dense_macs"] for e in pattern)
    # A second interpreter loads every program from the cache.
    report = _check(tfl, [x], tmp_path)
    assert {e["program_cache"] for e in report} == {"hit"}


@needs_opencl
def test_dense_model_claim_all_and_batch_resize(tmp_path, rng):
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2D(4, 1)(x)
    tfl = convert(keras.Model(inp, x))
    interp = lite.Interpreter(model_content=tfl, backend="gpu", claim="all", gpu_cache="off")
    for batch in (1, 3):
        interp.resize_tensor_input(interp.get_input_details()[0]["index"], (batch, 12, 12, 3))
        interp.allocate_tensors()
        xin = rng.uniform(-2, 2, (batch, 12, 12, 3)).astype(np.float32)
        out = run_tflite(interp, [xin])[0]
        ref_i = lite.Interpreter(model_content=tfl, pattern_kernels="off")  # stock-equal CPU run
        ref = reference_outputs(tfl, [xin])[0] if batch == 1 else None
        if ref is None:
            from ai_edge_litert.interpreter import Interpreter

            stock = Interpreter(model_content=tfl)
            stock.resize_tensor_input(stock.get_input_details()[0]["index"], (batch, 12, 12, 3))
            stock.allocate_tensors()
            ref = run_tflite(stock, [xin])[0]
        del ref_i
        assert rel_error(out, ref) <= GPU_TOL
    report = interp.delegate_report()
    assert len(report) == 3 and {e["program_cache"] for e in report} == {"off"}


@needs_opencl
def test_inf_and_nan_inputs_match_stock(tmp_path, rng):
    """A pruned conv skips zero weights, but stock TFLite multiplies them:
    0 x Inf is NaN.  The device runs the dense filter for such images."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((9, 9, 8))
    model = keras.Model(inp, keras.layers.Conv2D(8, 3, padding="same")(inp))
    _pruned(model, skip_first=False)
    tfl = convert(model)
    xin = rng.uniform(-1, 1, (1, 9, 9, 8)).astype(np.float32)
    xin[0, 4, 4, 2] = np.inf
    xin[0, 1, 7, 5] = np.nan
    interp = lite.Interpreter(model_content=tfl, backend="gpu", gpu_cache=str(tmp_path))
    out = run_tflite(interp, [xin])[0]
    ref = reference_outputs(tfl, [xin])[0]
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.array_equal(np.isinf(out), np.isinf(ref))
    fin = np.isfinite(ref)
    assert rel_error(out[fin], ref[fin]) <= GPU_TOL
    assert interp.delegate_report()[0]["kernel"] == "f32_conv2d_pattern__opencl"
    # The next, finite image runs the pattern kernel again.
    xin = rng.uniform(-1, 1, (1, 9, 9, 8)).astype(np.float32)
    assert rel_error(run_tflite(interp, [xin])[0], reference_outputs(tfl, [xin])[0]) <= GPU_TOL


@needs_opencl
def test_corrupt_program_cache_is_rebuilt(tmp_path, rng):
    import keras

    keras.utils.set_random_seed(2)
    inp = keras.Input((10, 10, 4))
    model = keras.Model(inp, keras.layers.Conv2D(6, 3, padding="same")(inp))
    _pruned(model, skip_first=False)
    tfl = convert(model)
    xin = rng.uniform(-1, 1, (1, 10, 10, 4)).astype(np.float32)
    assert _check(tfl, [xin], tmp_path)[0]["program_cache"] == "stored"
    entries = list(tmp_path.glob("*.clbin"))
    assert len(entries) == 1
    for damage in (b"garbage", entries[0].read_bytes()[:-7]):
        entries[0].write_bytes(damage)
        report = _check(tfl, [xin], tmp_path)
        assert report[0]["program_cache"].startswith("rebuilt ("), report[0]["program_cache"]
        assert _check(tfl, [xin], tmp_path)[0]["program_cache"] == "hit"


@needs_opencl
def test_options_are_checked():
    with pytest.raises(ValueError, match="gpu_device.*does not exist"):
        lite.load_delegate(backend="gpu", gpu_device=250)
    with pytest.raises(ValueError, match="'gpu_device': expected 'auto' or a device number"):
        lite.load_delegate(backend="gpu", gpu_device="first")
    with pytest.raises(ValueError, match="'gpu_fallback': expected 'none' or 'cpu'"):
        lite.load_delegate(backend="gpu", gpu_fallback="maybe")


def test_gpu_options_need_backend_gpu():
    with pytest.raises(ValueError, match="'gpu_cache' applies to backend=gpu only"):
        lite.load_delegate(gpu_cache="off")


# The library is loaded once per process, so hiding it takes a fresh one.
_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from conftest import reference_outputs, rel_error, run_tflite
from cocopie_tf import lite
tfl = open(sys.argv[2], "rb").read()
x = np.random.default_rng(0).uniform(-1, 1, (1, 10, 10, 4)).astype(np.float32)
result = {}
try:
    lite.load_delegate(backend="gpu")
    result["error"] = ""
except ValueError as e:
    result["error"] = str(e)
it = lite.Interpreter(model_content=tfl, backend="gpu", gpu_fallback="cpu", claim="all")
result["fallback_err"] = rel_error(run_tflite(it, [x])[0], reference_outputs(tfl, [x])[0])
result["report"] = it.delegate_report()
it = lite.Interpreter(model_content=tfl, claim="all")
result["cpu_err"] = rel_error(run_tflite(it, [x])[0], reference_outputs(tfl, [x])[0])
print(json.dumps(result))
"""


@pytest.mark.parametrize("hide", ["library", "platform"])
def test_missing_opencl_errors_or_falls_back(hide, tmp_path):
    import keras

    keras.utils.set_random_seed(2)
    inp = keras.Input((10, 10, 4))
    model = keras.Model(inp, keras.layers.Conv2D(6, 3, padding="same")(inp))
    _pruned(model, skip_first=False)
    path = tmp_path / "m.tflite"
    path.write_bytes(convert(model))
    env = dict(os.environ)
    if hide == "library":
        env["COCOPIE_OPENCL_LIBRARY"] = str(tmp_path / "no-libOpenCL.so.1")
    else:
        env["OCL_ICD_VENDORS"] = str(tmp_path / "no-vendors")
    # cwd=tmp_path: from the checkout's root, `-c` would import the source tree's
    # cocopie_tf (no compiled library there) instead of the installed package.
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(TESTS), str(path)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    if hide == "library":
        assert "no OpenCL library" in r["error"] and "gpu_fallback=cpu" in r["error"]
    elif _WHY_NOT and "no OpenCL library" in _WHY_NOT:
        assert "no OpenCL library" in r["error"]  # no loader here: the platform step is moot
    else:
        assert "no OpenCL platform" in r["error"], r["error"]
    assert r["fallback_err"] <= 1e-5 and r["cpu_err"] <= 1e-5
    assert [e["device"] for e in r["report"]] == ["cpu"]
    assert r["report"][0]["gpu_device"].startswith("unavailable: no OpenCL")


@needs_opencl
def test_bench_backend_gpu(tmp_path):
    import keras

    from cocopie_tf import benchmark

    keras.utils.set_random_seed(4)
    inp = keras.Input((12, 12, 8))
    model = keras.Model(inp, keras.layers.Conv2D(8, 3, padding="same")(inp))
    _pruned(model, skip_first=False)
    path = tmp_path / "m.tflite"
    path.write_bytes(convert(model))
    result = benchmark.bench(str(path), [1], runs=3, warmup=1, backend="gpu",
                             options={"gpu_cache": str(tmp_path / "cache")})
    text = benchmark.format_bench(result)
    row = result["rows"][0]
    assert row["rel_error"] <= GPU_TOL and row["claimed"] == 1
    assert row["nodes"][0]["device"] == "gpu" and row["nodes"][0]["mean_ms"] > 0
    assert "cocopie backend: gpu on" in text and "device ms" in text


@needs_opencl
@pytest.mark.parametrize("pool", [
    dict(kind="max", pool_size=3, strides=2, padding="same"),
    dict(kind="max", pool_size=2, strides=2, padding="valid"),
    dict(kind="avg", pool_size=3, strides=1, padding="same"),
    dict(kind="avg", pool_size=(2, 3), strides=(2, 1), padding="valid"),
])
def test_pool_and_add_keep_the_partition_on_the_device(pool, tmp_path, rng):
    """A residual block (conv, conv, ADD + ReLU) and pooling: one partition,
    every node on the device, equal to stock."""
    import keras

    keras.utils.set_random_seed(6)
    pool = dict(pool)
    kind = pool.pop("kind")
    inp = keras.Input((13, 11, 8))
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    y = keras.layers.Conv2D(8, 3, padding="same")(y)
    x = keras.layers.ReLU()(keras.layers.Add()([inp, y]))
    x = (keras.layers.MaxPooling2D if kind == "max" else keras.layers.AveragePooling2D)(**pool)(x)
    model = keras.Model(inp, keras.layers.Conv2D(4, 1)(x))
    _pruned(model, skip_first=False)
    tfl = convert(model)
    xin = rng.uniform(-1, 1, (2, 13, 11, 8)).astype(np.float32)
    interp = lite.Interpreter(model_content=tfl, backend="gpu", gpu_cache=str(tmp_path))
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], xin.shape)
    interp.allocate_tensors()
    out = run_tflite(interp, [xin])[0]
    from ai_edge_litert.interpreter import Interpreter

    stock = Interpreter(model_content=tfl)
    stock.resize_tensor_input(stock.get_input_details()[0]["index"], xin.shape)
    stock.allocate_tensors()
    assert rel_error(out, run_tflite(stock, [xin])[0]) <= GPU_TOL
    report = interp.delegate_report()
    ops = sorted(e["op"] for e in report)
    assert ops == sorted(["CONV_2D"] * 3 + ["ADD", "MAX_POOL_2D" if kind == "max"
                                             else "AVERAGE_POOL_2D"]), ops
    assert {e["device"] for e in report} == {"gpu"}
    # One delegate node: the whole graph is one partition.
    assert [d["op_name"] for d in interp._get_ops_details()].count("DELEGATE") == 1


@needs_opencl
def test_fp16_weights_stay_within_the_rounding_bound(tmp_path, rng):
    """precision=fp16 stores the weights as half (arithmetic stays fp32): each
    output may move by at most 2^-11 * sum |w x| from the fp32 result."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(4)
    inp = keras.Input((12, 12, 8))
    conv = keras.layers.Conv2D(16, 3, padding="same")
    model = keras.Model(inp, conv(inp))
    _pruned(model, skip_first=False)
    tfl = convert(model)
    x = rng.uniform(-1, 1, (1, 12, 12, 8)).astype(np.float32)
    ref = reference_outputs(tfl, [x])[0].astype(np.float64)
    it = lite.Interpreter(model_content=tfl, backend="gpu", gpu_cache=str(tmp_path),
                          precision="fp16")
    out = run_tflite(it, [x])[0].astype(np.float64)
    report = it.delegate_report()
    assert report[0]["engine"] == "opencl_fp16_weights" and report[0]["device"] == "gpu"
    # sum |w| |x| per output, in float64 (the bias is exact in both).
    w = np.abs(conv.get_weights()[0]).astype(np.float64)
    bound = tf.nn.conv2d(np.abs(x).astype(np.float64), w, 1, "SAME").numpy()
    bound = 2.0**-11 * bound + 1e-5 * np.abs(ref).max()
    assert np.all(np.abs(out - ref) <= bound), float(np.max(np.abs(out - ref) - bound))
    assert np.max(np.abs(out - ref)) > 1e-6  # the weights really were rounded to half


@needs_opencl
def test_fp16_refuses_weights_beyond_the_half_range(tmp_path):
    import keras

    inp = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(3, 3, padding="same")
    model = keras.Model(inp, conv(inp))
    w = conv.get_weights()
    w[0][0, 0, 0, 0] = 1e5
    conv.set_weights(w)
    tfl = convert(model)
    with pytest.raises((RuntimeError, ValueError), match="outside the half range"):
        it = lite.Interpreter(model_content=tfl, backend="gpu", gpu_cache="off",
                              precision="fp16", claim="all")
        it.allocate_tensors()


def test_precision_needs_backend_gpu():
    with pytest.raises(ValueError, match="'precision' applies to backend=gpu only"):
        lite.load_delegate(precision="fp16")
    with pytest.raises(ValueError, match="'precision': expected 'fp32' or 'fp16'"):
        lite.load_delegate(backend="gpu", precision="bf16", gpu_fallback="cpu")
