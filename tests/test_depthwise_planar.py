"""Depthwise convs between planar tensors: an inverted-residual block
(1x1 expand -> depthwise 3x3 -> 1x1 project -> ADD) with its 1x1 convs
connectivity-pruned keeps every tensor in CHW planes, the depthwise conv
running the planar kernel (only its non-zero taps). claim=all, since the
cost model leaves depthwise convs to TFLite (docs/engine.md section 22).
Outputs checked against a float64 numpy forward pass and stock LiteRT."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import (assert_same_non_finite, convert, reference_outputs, rel_error,
                      run_tflite)
from cocopie_tf import _cc, lite
from cocopie_tf import patterns as P
from test_kernels import np_conv2d
from test_residual import _prune_1x1


def _inverted_residual_model(h, w, c, stride, dw_patterns, seed=0):
    """Two MobileNetV2 blocks: the first with the given depthwise stride, the
    second (stride 1) adding its input back. 1x1 convs keep 1/3.6 of their
    weights; depthwise filters are pattern-pruned (4 of 9 taps, some
    channels emptied) or dense."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inp = keras.Input((h, w, c), batch_size=None)
    x = inp
    names = []
    for b, s in enumerate([stride, 1]):
        t = keras.layers.Conv2D(c * 3, 1, activation="relu6", name=f"b{b}_expand")(x)
        t = keras.layers.DepthwiseConv2D(3, strides=s, padding="same", activation="relu6",
                                         name=f"b{b}_dw")(t)
        t = keras.layers.Conv2D(c, 1, name=f"b{b}_project")(t)
        x = keras.layers.Add()([x, t]) if s == 1 else t
        names += [f"b{b}_expand", f"b{b}_dw", f"b{b}_project"]
    model = keras.Model(inp, keras.layers.Conv2D(8, 1, name="head")(x))
    for name in names:
        layer = model.get_layer(name)
        wts = layer.get_weights()
        wts[1] = rng.uniform(-0.5, 0.5, wts[1].shape).astype(np.float32)
        if name.endswith("_dw"):
            if dw_patterns:
                k = wts[0]  # [3, 3, C, 1]: every channel's kernel is a filter of one input
                hwio = k.reshape(3, 3, 1, -1)
                wts[0] = P.prune_kernel(hwio, connectivity=1.25).reshape(k.shape)
        else:
            wts[0] = _prune_1x1(wts[0], 3.6, rng)
        layer.set_weights(wts)
    return model, names


def _numpy_forward(model, names, x):
    def layer_out(name, v):
        layer = model.get_layer(name)
        k, b = layer.get_weights()
        act = "relu6" if name.endswith(("_expand", "_dw")) else "none"
        if name.endswith("_dw"):
            s = layer.strides
            return np_conv2d(v, np.transpose(k, (3, 0, 1, 2)), b, s, (1, 1), "same",
                             depthwise=True, act=act)
        return np_conv2d(v, np.transpose(k, (3, 0, 1, 2)), b, (1, 1), (1, 1), "valid", act=act)

    v = x.astype(np.float64)
    for blk in range(2):
        t = v
        for part in ("expand", "dw", "project"):
            t = layer_out(f"b{blk}_{part}", t)
        v = v + t if model.get_layer(f"b{blk}_dw").strides == (1, 1) else t
    return layer_out("head", v)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dw_patterns", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [(14, 14), (9, 23), (12, 41)])
def test_depthwise_between_planar_tensors_matches(stride, dw_patterns, threads, size):
    h, w = size
    model, names = _inverted_residual_model(h, w, 16, stride, dw_patterns)
    tfl = convert(model)
    x = np.random.default_rng(5).uniform(-1, 1, (1, h, w, 16)).astype(np.float32)
    oracle = _numpy_forward(model, names, x)
    assert rel_error(reference_outputs(tfl, [x])[0], oracle) <= 1e-5
    it = lite.Interpreter(model_content=tfl, num_threads=threads, claim="all", tune="off")
    for _ in range(2):
        assert rel_error(run_tflite(it, [x])[0], oracle) <= 1e-5
    report = {e["node_index"]: e for e in it.delegate_report()}
    dws = [e for e in report.values() if e["op"] == "DEPTHWISE_CONV_2D"]
    assert len(dws) == 2
    # Both read a planar expand output; both write planar for the project conv.
    assert all("dwconv2d_planar" in e["kernel"] and e["layout"] == "planar" for e in dws), dws
    # Executed MACs count only the non-zero taps: per channel, or, where the
    # AVX-512 channel-block kernel runs a small strided map, per block of
    # channels the union of their taps.
    limits = _cc.kernel_limits()
    blocks_kernel = ("avx512" in _cc.default_kernel_set() and stride == 2 and
                     h * w <= limits["depthwise_blocks_max_positions"])
    lanes = limits["depthwise_block_channels"]
    for blk, e in enumerate(sorted(dws, key=lambda e: e["node_index"])):
        k = model.get_layer(f"b{blk}_dw").get_weights()[0]  # [3, 3, C, 1]
        positions = e["dense_macs"] // k.size
        blocks = blocks_kernel and blk == 0
        assert ("channel_blocks" in e["kernel"]) == blocks, e["kernel"]
        if blocks:
            taps = k.reshape(9, -1) != 0
            kept = sum(int(taps[:, c:c + lanes].any(axis=1).sum()) * taps[:, c:c + lanes].shape[1]
                       for c in range(0, taps.shape[1], lanes))
        else:
            kept = np.count_nonzero(k)
        assert e["executed_macs"] == positions * kept
        assert (e["executed_macs"] < e["dense_macs"]) == (dw_patterns and kept < k.size)
    # The expand convs, which a depthwise conv reads, keep one range of
    # channels per thread in their filter blocks (jit_channel_parts); the
    # others one range.
    for e in report.values():
        if e["op"] == "CONV_2D" and e.get("engine", "").startswith("jit_"):
            expand = "_expand" in e["output_name"]
            assert e["jit_channel_parts"] == (threads if expand else 1), (e["output_name"], e)


@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("threads", [1, 2])
def test_large_tensors_are_asked_for_ahead(stride, threads):
    """Tensors of 1 MiB and more lie beyond L2 when the next op reads them: a
    depthwise conv on one asks for the next channel's planes while it
    computes one, and generated code writing one asks for its output lines
    ahead (cc/kernels/dispatch.cc, kFarTensorBytes; docs/engine.md section
    47).  The report says which nodes do; smaller tensors ask for nothing;
    the results equal float64 numpy, and stock LiteRT with a NaN and an Inf
    in the input."""
    h = w = 64
    model, names = _inverted_residual_model(h, w, 24, stride, True, seed=4)
    tfl = convert(model)
    x = np.random.default_rng(9).uniform(-1, 1, (1, h, w, 24)).astype(np.float32)
    it = lite.Interpreter(model_content=tfl, num_threads=threads, claim="all", tune="off")
    assert rel_error(run_tflite(it, [x])[0], _numpy_forward(model, names, x)) <= 1e-5
    # The expand convs' outputs (64x64x72, 1.2 MB) pass 1 MiB, the 24- and
    # 8-channel tensors (0.4 MB and less) not; block 1 runs at 32x32 after a
    # stride of 2.
    generated = False
    for e in it.delegate_report():
        name = e["output_name"]
        if e["op"] == "DEPTHWISE_CONV_2D":
            # input 64x64x72 (1.2 MB) for block 0, and for block 1 at stride 1
            large = "b0_dw" in name or stride == 1
            assert e["prefetch"] == large, (name, e)
        elif e["op"] == "CONV_2D":
            large = "_expand" in name and ("b0_" in name or stride == 1)
            jit = e.get("engine", "") in ("jit_avx512", "jit_avx2_fma")
            assert e["prefetch"] == (large and jit), (name, e)
            generated |= jit and large
        else:
            assert not e["prefetch"], e
    assert generated or not any(i in _cc.jit_choices() for i in ("avx512", "avx2_fma"))
    x[0, 5, 60, 3], x[0, 40, 2, 20] = np.nan, np.inf
    assert_same_non_finite(run_tflite(it, [x])[0], reference_outputs(tfl, [x])[0], 1e-5)


def test_depthwise_batch_two_stays_nhwc():
    """Planar tensors are batch-1 only: at batch 2 the NHWC kernel runs."""
    model, names = _inverted_residual_model(8, 8, 16, 1, True)
    tfl = convert(model)
    x = np.random.default_rng(6).uniform(-1, 1, (2, 8, 8, 16)).astype(np.float32)
    it = lite.Interpreter(model_content=tfl, claim="all", tune="off")
    assert rel_error(run_tflite(it, [x])[0], _numpy_forward(model, names, x)) <= 1e-5
    dws = [e for e in it.delegate_report() if e["op"] == "DEPTHWISE_CONV_2D"]
    assert dws and all("dwconv2d_direct" in e["kernel"] for e in dws)


def _expand_then_depthwise(stride):
    """A pruned 1x1 conv, then a pattern-pruned depthwise conv as the model's
    output: the depthwise conv reads planar and writes NHWC, and nothing
    after it mixes channels (which would hide a wrong per-channel NaN)."""
    import keras

    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    inp = keras.Input((10, 10, 16), batch_size=1)
    t = keras.layers.Conv2D(32, 1, name="expand")(inp)
    out = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", name="dw")(t)
    model = keras.Model(inp, out)
    e = model.get_layer("expand")
    e.set_weights([_prune_1x1(e.get_weights()[0], 3.6, rng), e.get_weights()[1]])
    d = model.get_layer("dw")
    k = d.get_weights()[0]
    d.set_weights([P.prune_kernel(k.reshape(3, 3, 1, -1), connectivity=1.25).reshape(k.shape),
                   rng.uniform(-0.5, 0.5, 32).astype(np.float32)])
    return model


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("last", [False, True])
def test_non_finite_input_meets_the_pruned_depthwise_taps(stride, last):
    """An Inf or NaN under a pruned (zero) depthwise tap still poisons the
    output, as stock LiteRT's dense product 0 x Inf does (the pruned 1x1
    conv before it spreads the value to every channel of its pixel)."""
    model = _expand_then_depthwise(stride) if last else \
        _inverted_residual_model(10, 10, 16, stride, True, seed=2)[0]
    tfl = convert(model)
    it = lite.Interpreter(model_content=tfl, num_threads=2, claim="all", tune="off")
    rng = np.random.default_rng(12)
    with np.errstate(invalid="ignore", over="ignore"):
        for value in (np.nan, np.inf, -np.inf):
            x = rng.uniform(-1, 1, (1, 10, 10, 16)).astype(np.float32)
            x[0, int(rng.integers(10)), int(rng.integers(10)), int(rng.integers(16))] = value
            ref = reference_outputs(tfl, [x])[0]
            assert_same_non_finite(run_tflite(it, [x])[0], ref, what=value)
    assert any("dwconv2d_planar" in e["kernel"] for e in it.delegate_report())


@pytest.mark.parametrize("threads", [1, 2])
def test_internal_tensors_share_buffers(threads):
    """Tensors inside a partition whose lifetimes do not overlap share one
    buffer (a shortcut stays alive across its block; no op writes the buffer
    it reads): the outputs still match float64 numpy on changing inputs, and
    the partition holds fewer buffers than tensors."""
    model, names = _inverted_residual_model(14, 14, 16, 1, True, seed=3)
    tfl = convert(model)
    it = lite.Interpreter(model_content=tfl, num_threads=threads, claim="all", tune="off")
    rng = np.random.default_rng(21)
    for _ in range(3):
        x = rng.uniform(-1, 1, (1, 14, 14, 16)).astype(np.float32)
        assert rel_error(run_tflite(it, [x])[0], _numpy_forward(model, names, x)) <= 1e-5
    report = it.delegate_report()
    internal = [e for e in report if e["buffer_slot"] >= 0]
    # 2 blocks x (expand, depthwise, project, ADD); the head writes the
    # runtime's output tensor.
    assert len(internal) == 8, report
    slots = {e["buffer_slot"]: e["buffer_bytes"] for e in internal}
    assert len(slots) <= 4, report
    # A buffer holds the largest tensor given to it: 14 x 14 x 48 floats.
    assert max(slots.values()) == 14 * 14 * 48 * 4
    assert [e["buffer_slot"] for e in report if e["op"] == "CONV_2D" and
            e["node_index"] == max(r["node_index"] for r in report)] == [-1]


def _mobilenet_blocks(h, c, seed=0, dw_patterns=True):
    """Two MobileNetV2 stride-1 blocks at expansion 6 (1x1 convs kept at
    1/3.6, depthwise filters pattern-pruned or dense): large enough that
    claim=auto takes the 1x1 convs."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inp = keras.Input((h, h, c), batch_size=1)
    x = inp
    for b in range(2):
        t = keras.layers.Conv2D(c * 6, 1, activation="relu6", name=f"b{b}_expand")(x)
        t = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6",
                                         name=f"b{b}_dw")(t)
        t = keras.layers.Conv2D(c, 1, name=f"b{b}_project")(t)
        x = keras.layers.Add()([x, t])
    model = keras.Model(inp, x)
    for layer in model.layers:
        if not layer.name.startswith("b"):
            continue
        k, bias = layer.get_weights()
        if layer.name.endswith("_dw"):
            if dw_patterns:
                k = P.prune_kernel(k.reshape(3, 3, 1, -1), connectivity=1.25).reshape(k.shape)
        else:
            k = _prune_1x1(k, 3.6, rng)
        layer.set_weights([k, rng.uniform(-0.5, 0.5, bias.shape).astype(np.float32)])
    return model


@pytest.mark.parametrize("threads,kernel", [(1, None), (2, None), (1, "avx2_fma")])
def test_claim_auto_bridges_pattern_pruned_depthwise(threads, kernel, capfd):
    """claim=auto takes a pattern-pruned depthwise conv whose producer and
    readers are claimed 1x1 convs (so the block stays planar), on CPUs with
    the AVX-512 set; dense depthwise filters, and other CPUs, stay with
    TFLite and the verbose log says why. Outputs match stock LiteRT."""
    if kernel is not None and kernel not in _cc.kernel_choices():
        pytest.skip(f"no {kernel} kernels on this build and CPU")
    fast = kernel is None and _cc.default_kernel_set() == "avx512"
    extra = {} if kernel is None else {"kernel": kernel}
    for dw_patterns in (True, False):
        model = _mobilenet_blocks(28, 32, dw_patterns=dw_patterns)
        tfl = convert(model)
        x = np.random.default_rng(9).uniform(-1, 1, (1, 28, 28, 32)).astype(np.float32)
        it = lite.Interpreter(model_content=tfl, num_threads=threads, tune="off", verbose=True,
                              **extra)
        assert rel_error(run_tflite(it, [x])[0], reference_outputs(tfl, [x])[0]) <= 1e-5
        ops = [e["op"] for e in it.delegate_report()]
        err = capfd.readouterr().err
        claimed_dw = ops.count("DEPTHWISE_CONV_2D")
        if dw_patterns and fast:
            assert claimed_dw == 2, (ops, err)
            assert ops.count("CONV_2D") == 4 and ops.count("ADD") == 2, ops
        else:
            assert claimed_dw == 0, (ops, err)
            want = "not pattern-pruned" if fast else "AVX-512 only"
            assert want in err, err


def test_claim_auto_leaves_a_depthwise_conv_whose_input_has_other_readers(capfd):
    """A depthwise conv between claimed convs whose input TFLite also reads
    (a MEAN, a second model output) stays with TFLite: that tensor stays
    NHWC, so the conv would run the engine's slower NHWC kernel. The
    pattern-pruned 3x3 conv before it is claimed either way; the outputs
    match stock LiteRT."""
    import keras

    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    inp = keras.Input((28, 28, 32), batch_size=1)
    conv = keras.layers.Conv2D(192, 3, padding="same", activation="relu6", name="conv")
    dw = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6", name="dw")
    project = keras.layers.Conv2D(32, 1, name="project")
    t = conv(inp)
    model = keras.Model(inp, [project(dw(t)), keras.layers.GlobalAveragePooling2D()(t)])
    k, b = conv.get_weights()
    conv.set_weights([P.prune_kernel(k, connectivity=3.6), b])
    k, b = dw.get_weights()
    dw.set_weights([P.prune_kernel(k.reshape(3, 3, 1, -1), connectivity=1.25).reshape(k.shape), b])
    k, b = project.get_weights()
    project.set_weights([_prune_1x1(k, 3.6, rng), b])
    tfl = convert(model)
    x = np.random.default_rng(10).uniform(-1, 1, (1, 28, 28, 32)).astype(np.float32)
    it = lite.Interpreter(model_content=tfl, num_threads=1, tune="off", verbose=True)
    got, want = run_tflite(it, [x]), reference_outputs(tfl, [x])
    assert all(rel_error(g, w) <= 1e-5 for g, w in zip(got, want))
    ops = [e["op"] for e in it.delegate_report()]
    err = capfd.readouterr().err
    assert "CONV_2D" in ops, (ops, err)  # the 3x3 conv
    assert "DEPTHWISE_CONV_2D" not in ops, (ops, err)
    if _cc.default_kernel_set() == "avx512":
        assert "read by it alone" in err, err


def _stem_model(h, seed=0):
    """MobileNetV2's head in small: a dense 3x3 stride-2 conv over 3 channels,
    a pattern-pruned depthwise conv, a pruned 1x1 projection, then the two
    blocks of _inverted_residual_model's kind."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inp = keras.Input((h, h, 3), batch_size=None)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu6", name="stem")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6", name="stem_dw")(x)
    x = keras.layers.Conv2D(16, 1, name="stem_project")(x)
    for b in range(2):
        t = keras.layers.Conv2D(96, 1, activation="relu6", name=f"b{b}_expand")(x)
        t = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6", name=f"b{b}_dw")(t)
        t = keras.layers.Conv2D(16, 1, name=f"b{b}_project")(t)
        x = keras.layers.Add()([x, t])
    model = keras.Model(inp, keras.layers.Conv2D(8, 1, name="head")(x))
    for layer in model.layers:
        wts = layer.get_weights()
        if not wts or layer.name == "stem":
            continue
        if layer.name.endswith("_dw"):
            k = wts[0]
            wts[0] = P.prune_kernel(k.reshape(3, 3, 1, -1), connectivity=None).reshape(k.shape)
        else:
            wts[0] = _prune_1x1(wts[0], 3.6, rng)
        layer.set_weights(wts)
    return model


@pytest.mark.skipif(_cc.default_kernel_set() != "avx512" or "avx512" not in _cc.jit_choices(),
                    reason="depthwise convs join claims on AVX-512 with its code generator")
def test_auto_claims_a_head_that_pays_only_as_a_group():
    """The stem alone is predicted slower than XNNPACK's (a dense conv with
    its input's layout change), so the node-by-node rule drops it and with it
    the block after it; judged as a whole set, the head is claimed (docs/
    engine.md section 28).  Without a code generator the stem stays dense
    and with TFLite."""
    model = _stem_model(96)
    tfl = convert(model)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)
    ref = reference_outputs(tfl, [x])[0]
    it = lite.Interpreter(model_content=tfl, tune="off", verbose=True)
    assert rel_error(run_tflite(it, [x])[0], ref) <= 1e-5
    report = {e["node_index"]: e for e in it.delegate_report()}
    assert report[0]["kernel"] == "f32_conv2d_pattern__jit_avx512"
    # Every node but the last 1x1 conv, which writes the graph's output.
    assert sorted(report) == list(range(11))
    static = lite.Interpreter(model_content=tfl, tune="off", jit="static")
    assert rel_error(run_tflite(static, [x])[0], ref) <= 1e-5
    assert 0 not in [e["node_index"] for e in static.delegate_report()]
