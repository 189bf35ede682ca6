"""The pattern engine: FKW plan, pattern kernels vs numpy float64, and the
delegate's choice of kernel (claim=auto takes pattern-pruned convs only)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_same_non_finite, convert, reference_outputs, rel_error, run_tflite
from cocopie_tf import _cc, lite
from cocopie_tf import patterns as P
from test_kernels import USABLE, float32_error, np_conv2d


def _pruned_filter(rng, oc, k, ic, connectivity=2.0, group=1, num_patterns=8):
    hwio = rng.standard_normal((k, k, ic, oc)).astype(np.float32)
    cands = P.candidate_patterns((k, k), entries=min(4, k * k), keep_center=k % 2 == 1)
    lib = cands[rng.choice(len(cands), min(num_patterns, len(cands)), replace=False)]
    pruned = P.prune_kernel(hwio, library=lib, connectivity=connectivity, group=group)
    return np.ascontiguousarray(pruned.transpose(3, 0, 1, 2))  # OHWI


def _assert_float32_close(out, ref, x, filt, b, dil, padding):
    """out equals the float64 reference within float32 summation error
    (test_kernels.float32_error; hypothesis found a 3-position map whose one
    output was 0.00165 from terms of order 1)."""
    scale = np_conv2d(np.abs(x), np.abs(filt), np.abs(b), (1, 1), (dil, dil), padding)
    assert out.shape == ref.shape
    assert float32_error(out, ref, scale) <= 1e-5


@settings(max_examples=120, deadline=None)
@given(batch=st.integers(1, 2), h=st.integers(1, 20), w=st.integers(1, 37),
       ic=st.integers(1, 20), oc_groups=st.integers(1, 12), group=st.integers(1, 4),
       k=st.sampled_from([1, 3, 5]), dil=st.integers(1, 2),
       padding=st.sampled_from(["same", "valid"]), act=st.sampled_from(["none", "relu", "relu6"]),
       conn=st.sampled_from([1.0, 2.0, 3.6]), threads=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1), chunk=st.sampled_from([0, 0, 1, 3, 64]),
       tile=st.sampled_from([0, 0, 1, 2, 3, 4, 6, 8]), reorder=st.booleans(),
       kernel=st.sampled_from(["auto"] + [k for k in USABLE if k != "reference"]))
def test_pattern_conv_matches_numpy(batch, h, w, ic, oc_groups, group, k, dil, padding, act,
                                    conn, threads, seed, chunk, tile, reorder, kernel):
    if padding == "valid" and (k - 1) * dil + 1 > min(h, w):
        return
    rng = np.random.default_rng(seed)
    oc = oc_groups * group
    filt = _pruned_filter(rng, oc, k, ic, connectivity=conn, group=group)
    x = rng.standard_normal((batch, h, w, ic)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    ref = np_conv2d(x, filt, b, (1, 1), (dil, dil), padding, act=act)
    if chunk == tile == 0 and reorder and kernel == "auto":
        outs = [_cc.pattern_conv2d(x, filt, b, dilations=(dil, dil), padding=padding,
                                   activation=act, num_threads=threads, group=4)]
    else:  # the engine's knobs (channel chunk, register tile, filter reorder)
        layer = _cc.PatternConvLayer(filt, b, dilations=(dil, dil), padding=padding,
                                     activation=act, num_threads=threads, group=4,
                                     reorder=reorder, chunk_channels=chunk, tile_vectors=tile,
                                     kernel=kernel)
        outs = [layer(x), layer(x)]  # the second call reuses the scratch and its halo
    for out in outs:
        _assert_float32_close(out, ref, x, filt, b, dil, padding)


JIT_ISAS = [i for i in ("avx2_fma", "avx512", "neon") if i in _cc.jit_choices()]
# Largest M per V, as the generator's register budget allows.
JIT_MAX_M = {"avx512": {1: 31, 2: 14, 3: 9, 4: 6}, "avx2_fma": {1: 14, 2: 6, 3: 4, 4: 2}}


@pytest.mark.skipif(not JIT_ISAS, reason="no code generator in this build or CPU")
@settings(max_examples=150, deadline=None)
@given(batch=st.integers(1, 2), h=st.integers(1, 20), w=st.integers(1, 37),
       ic=st.integers(1, 20), oc=st.integers(1, 70), group=st.integers(1, 4),
       k=st.sampled_from([1, 3, 5]), dil=st.integers(1, 2),
       padding=st.sampled_from(["same", "valid"]), act=st.sampled_from(["none", "relu", "relu6"]),
       conn=st.sampled_from([1.0, 2.0, 3.6]), threads=st.integers(1, 3),
       seed=st.integers(0, 2**31 - 1), isa=st.sampled_from(JIT_ISAS or ["none"]),
       vectors=st.integers(1, 4), m_frac=st.floats(0, 1), jit_reorder=st.booleans(),
       reorder=st.booleans())
def test_generated_pattern_conv_matches_numpy(batch, h, w, ic, oc, group, k, dil, padding, act,
                                              conn, threads, seed, isa, vectors, m_frac,
                                              jit_reorder, reorder):
    """Code generated per layer (every ISA the CPU has, every register tile
    M x V the generator allows, filter blocking on/off) equals float64."""
    if padding == "valid" and (k - 1) * dil + 1 > min(h, w):
        return
    rng = np.random.default_rng(seed)
    oc = max(group, oc // group * group)
    filt = _pruned_filter(rng, oc, k, ic, connectivity=conn, group=group)
    x = rng.standard_normal((batch, h, w, ic)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    ref = np_conv2d(x, filt, b, (1, 1), (dil, dil), padding, act=act)
    m = 1 + int(m_frac * (JIT_MAX_M[isa][vectors] - 1))
    layer = _cc.PatternConvLayer(filt, b, dilations=(dil, dil), padding=padding, activation=act,
                                 num_threads=threads, reorder=reorder, jit=isa, jit_filters=m,
                                 jit_vectors=vectors, jit_reorder=jit_reorder)
    for _ in range(2):  # the second call reuses the scratch and its halo
        _assert_float32_close(layer(x), ref, x, filt, b, dil, padding)
    e = layer.engine
    assert e["engine"] == "jit_" + isa and e["jit_filters"] == m and e["jit_vectors"] == vectors
    assert e["uses"] == np.count_nonzero(filt)  # one FMA per kept weight and vector


@pytest.mark.skipif(not JIT_ISAS, reason="no code generator in this build or CPU")
@pytest.mark.parametrize("isa", JIT_ISAS)
def test_code_heavy_layers_split_their_filter_blocks_between_threads(isa):
    """A layer whose code outweighs its input (MobileNetV2's 7x7 960 -> 160
    1x1 convs: about 300 KB of code, 188 KB of input) gives each thread a
    share of the filter blocks over every position instead of a share of the
    positions through all of the code (docs/engine.md section 34); with one
    thread, or one range of positions, the order is the usual one.  Outputs
    equal float64 either way, Inf and NaN included."""
    rng = np.random.default_rng(34)
    filt = _pruned_filter(rng, 160, 1, 960, connectivity=3.6)
    b = rng.standard_normal(160).astype(np.float32)
    # (One thread takes filter blocks too where the code overflows L2 and
    # the positions make several ranges: AVX2's 586 KB here, not asserted.)
    for threads, want in ((1, None), (2, True), (3, True)):
        layer = _cc.PatternConvLayer(filt, b, padding="same", activation="relu6",
                                     num_threads=threads, jit=isa)
        for poison in (False, True):
            x = rng.standard_normal((1, 7, 7, 960)).astype(np.float32)
            if poison:
                x[0, 0, 0, 5], x[0, 6, 6, 900] = np.inf, np.nan
            with np.errstate(invalid="ignore"):  # Inf times a pruned zero: NaN, as on stock
                ref = np_conv2d(x, filt, b, (1, 1), (1, 1), "same", act="relu6")
            out = layer(x)
            if poison:
                assert_same_non_finite(out, ref, 1e-4, threads)
            else:
                assert rel_error(out, ref) <= 1e-5, threads
        e = layer.engine
        assert e["engine"] == "jit_" + isa
        assert e["code_bytes"] > x.nbytes, e  # the premise
        assert want is None or e["filter_major"] == want, (threads, e)
    # Code lighter than its input: the positions are split.
    small = _pruned_filter(rng, 32, 1, 64, connectivity=3.6)
    layer = _cc.PatternConvLayer(small, None, padding="same", num_threads=2, jit=isa)
    x = rng.standard_normal((1, 56, 56, 64)).astype(np.float32)
    ref = np_conv2d(x, small, np.zeros(32, np.float32), (1, 1), (1, 1), "same")
    assert rel_error(layer(x), ref) <= 1e-5
    assert layer.engine["filter_major"] is False


@pytest.mark.skipif(not JIT_ISAS, reason="no code generator in this build or CPU")
@pytest.mark.parametrize("isa", JIT_ISAS)
@pytest.mark.parametrize("k,parts", [(1, 2), (1, 3), (3, 2)])
def test_channel_parts_keep_each_block_in_one_range(isa, k, parts):
    """jit_channel_parts=T (the delegate's choice for a 1x1 conv before a
    depthwise conv at T threads): no filter block mixes output channels of
    two of T equal ranges, and the blocks come in range order, so a thread's
    share of them writes one range (docs/engine.md section 40).  A filter's
    sum does not depend on its block mates: the output is the same, bit for
    bit, as with one range, and equals float64, at 1-3 threads."""
    rng = np.random.default_rng(40 + k + parts)
    oc = 97 if parts == 3 else 96  # 97: ranges of 32, 32 and 33 channels
    filt = _pruned_filter(rng, oc, k, 40, connectivity=3.6 if k == 1 else 2.0)
    b = rng.standard_normal(oc).astype(np.float32)
    x = rng.standard_normal((1, 14, 14, 40)).astype(np.float32)
    ref = np_conv2d(x, filt, b, (1, 1), (1, 1), "same", act="relu6")
    whole = _cc.PatternConvLayer(filt, b, activation="relu6", jit=isa)(x)
    for threads in (1, 2, 3):
        layer = _cc.PatternConvLayer(filt, b, activation="relu6", num_threads=threads, jit=isa,
                                     jit_channel_parts=parts)
        out = layer(x)
        assert rel_error(out, ref) <= 1e-5
        np.testing.assert_array_equal(out, whole)
        e = layer.engine
        assert e["engine"] == "jit_" + isa and e["channel_parts"] == parts
        ranges = [[c * parts // oc for c in block] for block in e["block_channels"]]
        assert all(len(set(r)) == 1 for r in ranges), ranges
        order = [r[0] for r in ranges]
        assert order == sorted(order) and set(order) == set(range(parts))
        assert sorted(c for block in e["block_channels"] for c in block) == list(range(oc))
    with pytest.raises(ValueError, match="jit_channel_parts"):
        _cc.PatternConvLayer(filt, b, jit=isa, jit_channel_parts=-1)
    # Ranges of fewer than half a block's filters: one range.
    few = _cc.PatternConvLayer(filt[:12], b[:12], jit=isa, jit_filters=12, jit_channel_parts=3)
    few(x)
    assert few.engine["channel_parts"] == 1 and len(few.engine["block_channels"]) == 1


def test_generated_kernel_isas_on_this_machine():
    """Says which generator ISAs this machine tested (see -ra output), and
    that auto picks the widest one."""
    import re

    flags = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else ""
    has512 = re.search(r"\bavx512f\b", flags) is not None
    has2 = re.search(r"\bavx2\b", flags) is not None and re.search(r"\bfma\b", flags) is not None
    if not _cc.jit_compiled():
        if __import__("os").environ.get("COCOPIE_REQUIRE_JIT"):
            pytest.fail("COCOPIE_REQUIRE_JIT is set but the build has no code generator "
                        "(apt-get install libxbyak-dev, then reinstall)")
        pytest.skip("built without the code generator (libxbyak-dev missing)")
    assert ("avx512" in JIT_ISAS) == has512 and ("avx2_fma" in JIT_ISAS) == has2
    filt = _pruned_filter(np.random.default_rng(0), 16, 3, 8)
    layer = _cc.PatternConvLayer(filt)
    layer(np.ones((1, 20, 20, 8), np.float32))
    want = "jit_avx512" if has512 else "jit_avx2_fma" if has2 else _cc.default_kernel_set()
    assert layer.engine["engine"] == want
    # A 2x2 map is one tile: auto leaves it to the static kernels and says why;
    # an explicit ISA still generates.
    layer(np.ones((1, 2, 2, 8), np.float32))
    assert layer.engine["engine"] == _cc.default_kernel_set()
    assert "map too small for generated code" in layer.engine["jit_error"]
    small = _cc.PatternConvLayer(filt, jit=JIT_ISAS[0])
    small(np.ones((1, 2, 2, 8), np.float32))
    assert small.engine["engine"] == "jit_" + JIT_ISAS[0]
    print("generator ISAs tested here:", JIT_ISAS)


@pytest.mark.parametrize("kwargs,match", [
    (dict(jit="sse9"), "jit must be one of"),
    (dict(jit_vectors=5), "jit_vectors"),
    (dict(jit_filters=-1), "jit_filters"),
])
def test_bad_generator_knobs_are_refused(kwargs, match):
    filt = _pruned_filter(np.random.default_rng(0), 8, 3, 4)
    with pytest.raises(ValueError, match=match):
        _cc.PatternConvLayer(filt, **kwargs)


@pytest.mark.skipif(not JIT_ISAS, reason="no code generator in this build or CPU")
def test_generator_tile_too_large_is_a_clear_error():
    filt = _pruned_filter(np.random.default_rng(0), 8, 3, 4)
    layer = _cc.PatternConvLayer(filt, jit=JIT_ISAS[0], jit_filters=32, jit_vectors=1)
    with pytest.raises(ValueError, match="jit_filters must be 1.."):
        layer(np.ones((1, 5, 5, 4), np.float32))


def test_fkw_arrays_rebuild_the_filter():
    """Decoding the five FKW arrays by the documented rules gives back the
    filter exactly: the format is complete and means what docs say."""
    rng = np.random.default_rng(0)
    filt = _pruned_filter(rng, 24, 3, 10, connectivity=2.5, group=2)
    info = _cc.pattern_info(filt)
    pats = info["patterns"]
    n_p = len(pats)
    taps = [[t for t in range(9) if m >> t & 1] for m in pats]
    rebuilt = np.zeros_like(filt)
    wi = 0
    for f, orig in enumerate(info["reorder"]):
        kernels = range(info["offset"][f], info["offset"][f + 1])
        runs = info["stride"][f * (n_p + 1):(f + 1) * (n_p + 1)]
        for q in range(n_p):
            for kk in range(runs[q], runs[q + 1]):
                ic = info["index"][info["offset"][f] + kk]
                for t in taps[q]:
                    rebuilt[orig, t // 3, t % 3, ic] = info["weights"][wi]
                    wi += 1
        assert len(kernels) == runs[-1]
    assert wi == len(info["weights"])
    np.testing.assert_array_equal(rebuilt, filt)
    assert sorted(info["reorder"]) == list(range(24))


def test_fkw_is_smaller_than_csr():
    rng = np.random.default_rng(1)
    filt = _pruned_filter(rng, 128, 3, 128, connectivity=3.6)
    info = _cc.pattern_info(filt)
    assert info["fkw_bytes"] < info["csr_bytes"] < info["dense_bytes"]
    assert info["distinct_patterns"] <= 8


def _one_conv(rng_seed=0, group=1, connectivity=3.6, prune=True, hw=20, c=32):
    import keras

    keras.utils.set_random_seed(rng_seed)
    inp = keras.Input((hw, hw, c))
    layer = keras.layers.Conv2D(c, 3, padding="same", activation="relu",
                                bias_initializer="random_normal")
    model = keras.Model(inp, layer(inp))
    if prune:
        w = layer.get_weights()
        w[0] = P.prune_kernel(w[0], connectivity=connectivity, group=group)
        layer.set_weights(w)
    return model


@pytest.mark.parametrize("group", [1, 4])
def test_delegate_claims_pattern_pruned_conv(group):
    model = _one_conv(group=group)
    tfl = convert(model)
    x = np.random.default_rng(0).standard_normal((2, 20, 20, 32)).astype(np.float32)
    interp = lite.Interpreter(model_content=tfl, num_threads=2)  # claim=auto
    out = run_tflite(interp, [x])[0]
    assert rel_error(out, reference_outputs(tfl, [x])[0]) <= 1e-5
    assert rel_error(out, np.asarray(model(x))) <= 1e-5
    (entry,) = interp.delegate_report()
    assert entry["kernel"].startswith("f32_conv2d_pattern__")
    kept = np.count_nonzero(model.layers[1].get_weights()[0])
    assert entry["executed_macs"] == 2 * 20 * 20 * kept
    assert entry["executed_macs"] * 3 < entry["dense_macs"]
    assert entry["patterns"] <= 8


def test_dense_conv_is_left_to_xnnpack_by_default():
    model = _one_conv(prune=False)
    tfl = convert(model)
    x = np.random.default_rng(1).standard_normal((1, 20, 20, 32)).astype(np.float32)
    interp = lite.Interpreter(model_content=tfl)
    out = run_tflite(interp, [x])[0]
    assert interp.delegate_report() == []
    assert rel_error(out, reference_outputs(tfl, [x])[0]) <= 1e-5


def test_pattern_kernels_off_uses_the_dense_kernel():
    model = _one_conv()
    tfl = convert(model)
    x = np.random.default_rng(2).standard_normal((1, 20, 20, 32)).astype(np.float32)
    interp = lite.Interpreter(model_content=tfl, claim="all", pattern_kernels="off")
    out = run_tflite(interp, [x])[0]
    (entry,) = interp.delegate_report()
    assert entry["kernel"].startswith("f32_conv2d_direct__")
    assert entry["executed_macs"] == entry["dense_macs"]
    assert rel_error(out, reference_outputs(tfl, [x])[0]) <= 1e-5


@pytest.mark.slow
def test_pruned_vgg16_through_the_delegate():
    import keras

    keras.utils.set_random_seed(3)
    model = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10,
                                     classifier_activation=None)
    import sys, pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
    from pruned_models import prune_model

    assert prune_model(model, connectivity=3.6) == 12
    tfl = convert(model)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    interp = lite.Interpreter(model_content=tfl, num_threads=2)
    out = run_tflite(interp, [x])[0]
    assert rel_error(out, reference_outputs(tfl, [x])[0]) <= 1e-5
    report = interp.delegate_report()
    kernels = [e["kernel"] for e in report if e["op"] == "CONV_2D"]
    # With AVX-512 code generation the first conv (dense, 3 channels) joins
    # (kJitDenseMaxDepth); AVX2's generated code is predicted slower there.
    first = 1 if "avx512" in _cc.jit_choices() else 0
    assert len(kernels) == 12 + first and all("pattern" in k for k in kernels)
    # The pools between claimed convs are claimed too (one partition per
    # stage no more): the four inside keep planes, the last writes NHWC.
    pools = [e["layout"] for e in report if e["op"] == "MAX_POOL_2D"]
    assert pools == ["planar"] * 4 + ["nhwc"], pools


def test_pattern_layer_tune_keeps_results_and_rejects_bad_knobs():
    rng = np.random.default_rng(9)
    filt = _pruned_filter(rng, 16, 3, 12, connectivity=2.0)
    x = rng.standard_normal((1, 15, 17, 12)).astype(np.float32)
    ref = np_conv2d(x, filt, None, (1, 1), (1, 1), "same")
    layer = _cc.PatternConvLayer(filt)
    picked = layer.tune(x, budget_ms=5)
    assert picked["candidates"] > 1 and picked["best_ms"] <= picked["default_ms"]
    assert np.linalg.norm(layer(x) - ref) <= 1e-5 * np.linalg.norm(ref)
    with pytest.raises(ValueError, match="tile_vectors"):
        _cc.PatternConvLayer(filt, tile_vectors=5)
    with pytest.raises(ValueError, match="chunk_channels"):
        _cc.PatternConvLayer(filt, chunk_channels=-1)
    with pytest.raises(ValueError, match="budget_ms"):
        layer.tune(x, budget_ms=0)


def _pruned_chain_model():
    import keras

    keras.utils.set_random_seed(11)
    inp = keras.Input((18, 18, 16))
    a = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="a")(inp)
    b = keras.layers.Conv2D(32, 3, padding="same", activation="relu6", name="b")(a)
    c = keras.layers.Conv2D(32, 3, padding="valid", name="c")(b)   # b -> c: chained
    d = keras.layers.Conv2D(32, 3, padding="same", name="d")(c)     # c also feeds the Add
    out = keras.layers.Add()([c, d])
    model = keras.Model(inp, out)
    for name in "abcd":
        layer = model.get_layer(name)
        w = layer.get_weights()
        w[0] = P.prune_kernel(w[0], connectivity=3.6, group=4)
        layer.set_weights(w)
    return convert(model)


@pytest.mark.parametrize("batch", [1, 2])
def test_consecutive_pattern_convs_keep_the_layout(batch):
    tfl = _pruned_chain_model()
    x = np.random.default_rng(3).uniform(-1, 1, (batch, 18, 18, 16)).astype(np.float32)
    ref = reference_outputs(tfl, [x])[0]
    it = lite.Interpreter(model_content=tfl, tune="off")
    for _ in range(2):  # the second run reuses every scratch buffer
        out = run_tflite(it, [x])[0]
        assert rel_error(out, ref) <= 1e-5
    report = sorted(it.delegate_report(), key=lambda e: e["node_index"])
    convs = [e for e in report if e["op"] == "CONV_2D"]
    assert len(convs) == 4 and all("pattern" in e["kernel"] for e in convs)
    assert [e["op"] for e in report].count("ADD") == 1  # claimed next to c and d
    # a -> b -> c are chained; c's output is also read by the Add, so c and
    # d write plain CHW planes (test_residual.py); the Add's output is the
    # model's.
    layouts = [e["layout"] for e in report]
    if batch == 1:
        assert layouts == ["chained", "chained", "planar", "planar", "nhwc"]
    else:
        assert layouts == ["nhwc"] * 5
    assert [e["keeps_layout"] for e in convs] == [batch == 1] * 4


def _pruned_conv_chain(input_shape, convs, seed):
    """A chain of Conv2D layers (keyword arguments each), every kernel
    pattern-pruned (8 patterns, 2x connectivity), as a .tflite model."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    layers = [keras.layers.Conv2D(**c) for c in convs]
    x = inp
    for layer in layers:
        x = layer(x)
    model = keras.Model(inp, x)
    for layer in layers:
        w = layer.get_weights()
        w[0] = P.prune_kernel(w[0], connectivity=2.0)
        layer.set_weights(w)
    return convert(model)


@pytest.mark.skipif(not JIT_ISAS, reason="row bands are a generated-code feature")
@pytest.mark.parametrize("threads", [1, 2])
def test_large_layers_run_in_row_bands(threads):
    """Layers too large for L2 run in row bands (docs/engine.md section 16):
    the report says so, a banded conv is not chained (its input becomes a
    planar tensor), and the result equals stock LiteRT, also with an Inf and
    a NaN in the input."""
    tfl = _pruned_conv_chain((64, 64, 48), [dict(filters=48, kernel_size=3, padding="same",
                                                 activation="relu"),
                                            dict(filters=40, kernel_size=3, padding="same")], seed=12)
    x = np.random.default_rng(4).uniform(-1, 1, (1, 64, 64, 48)).astype(np.float32)
    it = lite.Interpreter(model_content=tfl, num_threads=threads, tune="off")
    for poison in (False, True):
        if poison:
            x[0, 5, 7, 3], x[0, 40, 0, 11] = np.inf, np.nan
        ref = reference_outputs(tfl, [x])[0]
        out = run_tflite(it, [x])[0]
        assert np.array_equal(np.isnan(out), np.isnan(ref))
        keep = ~np.isnan(ref)
        assert rel_error(out[keep], ref[keep]) <= 1e-5
    report = sorted(it.delegate_report(), key=lambda e: e["node_index"])
    assert [e["op"] for e in report] == ["CONV_2D", "CONV_2D"]
    assert all(e["band_rows"] >= 2 and 64 // e["band_rows"] >= 4 for e in report)
    assert [e["layout"] for e in report] == ["planar", "nhwc"]
    # The static kernels have no bands: the same pair is chained.
    it = lite.Interpreter(model_content=tfl, num_threads=threads, tune="off", jit="static")
    assert rel_error(run_tflite(it, [x])[0][keep], ref[keep]) <= 1e-5
    report = sorted(it.delegate_report(), key=lambda e: e["node_index"])
    assert [e["layout"] for e in report] == ["chained", "nhwc"]
    assert [e["band_rows"] for e in report] == [0, 0]


@pytest.mark.skipif(not JIT_ISAS, reason="streamed outputs are written after generated code")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_large_partition_outputs_are_streamed(threads, batch):
    """A pattern conv whose NHWC output leaves the partition and holds at
    least 1 MiB per image is written with streaming stores (docs/engine.md
    section 42); a planar or small output is not.  72 channels: rows of the
    output are not whole lines, so the 8 x 8 blocks' 32-byte stores stream.
    The results equal stock LiteRT, with an Inf and a NaN in the input too."""
    big = _pruned_conv_chain((64, 64, 48), [dict(filters=48, kernel_size=3, padding="same",
                                                 activation="relu"),
                                            dict(filters=72, kernel_size=3, padding="same")],
                             seed=13)
    small = _pruned_conv_chain((64, 64, 48), [dict(filters=48, kernel_size=3, padding="same")],
                               seed=14)
    for tfl, streamed in ((big, [False, True]), (small, [False])):
        x = np.random.default_rng(5).uniform(-1, 1, (batch, 64, 64, 48)).astype(np.float32)
        it = lite.Interpreter(model_content=tfl, num_threads=threads, tune="off")
        for poison in (False, True):
            if poison:
                x[-1, 9, 63, 3], x[0, 33, 1, 40] = np.inf, np.nan
            ref = reference_outputs(tfl, [x])[0]
            out = run_tflite(it, [x])[0]
            assert_same_non_finite(out, ref, 1e-5)
            assert poison or rel_error(out, ref) <= 1e-5
        report = sorted(it.delegate_report(), key=lambda e: e["node_index"])
        assert [e["streamed_output"] for e in report] == streamed
    # The static kernels' bias pass reads the output again: not streamed.
    it = lite.Interpreter(model_content=big, num_threads=threads, tune="off", jit="static")
    assert_same_non_finite(run_tflite(it, [x])[0], reference_outputs(big, [x])[0], 1e-5)
    assert not any(e["streamed_output"] for e in it.delegate_report())


@pytest.mark.parametrize("threads", [1, 2])
def test_small_maps_run_as_one_vector(threads):
    """Small maps (VGG-16 CIFAR's 8x8, 4x4 and 2x2 stages) run the small-map
    kernels where the kernel set has them (docs/engine.md section 17): one
    vector per channel, each tap a permutation of it (AVX-512 up to 16
    positions, AVX2 2x2), and 8x8 maps as row pairs (AVX-512).  The report
    says so, such a conv is not chained into (its input becomes a planar
    tensor), and the result equals stock LiteRT, also with an Inf and a NaN
    in the input, on every kernel set.  (jit=static: under jit=auto the 8x8
    map, 5 register tiles, is generated code since docs/engine.md section
    21; checked at the end.)"""
    tfl = _pruned_conv_chain((8, 8, 24), [
        dict(filters=40, kernel_size=3, padding="same", activation="relu"),  # p: 8x8
        # a: 8x8 -> 4x4, neither (64 input positions; a 5x5 window spans 3 row pairs)
        dict(filters=40, kernel_size=5, padding="valid", activation="relu"),
        dict(filters=24, kernel_size=3, padding="valid", activation="relu"),  # b: 4x4 -> 2x2
        dict(filters=16, kernel_size=3, padding="same"),  # c: 2x2 -> 2x2
    ], seed=13)
    x = np.random.default_rng(5).uniform(-1, 1, (1, 8, 8, 24)).astype(np.float32)
    # Which of p, a, b, c take the small-map kernel (one vector) or the row
    # pairs (8x8 maps) on each set.
    small = {"avx512": [False, False, True, True], "avx2_fma": [False, False, False, True]}
    pairs = {"avx512": [True, False, False, False]}
    for kernel in [k for k in USABLE if k != "reference"] + ["auto"]:
        it = lite.Interpreter(model_content=tfl, num_threads=threads, tune="off", kernel=kernel,
                              jit="static")
        for poison in (False, True):
            xp = x.copy()
            if poison:
                xp[0, 1, 2, 3], xp[0, 3, 0, 11] = np.inf, np.nan
            ref = reference_outputs(tfl, [xp])[0]
            out = run_tflite(it, [xp])[0]
            assert np.array_equal(np.isnan(out), np.isnan(ref)), kernel
            keep = ~np.isnan(ref)
            assert rel_error(out[keep], ref[keep]) <= 1e-5, kernel
        report = sorted(it.delegate_report(), key=lambda e: e["node_index"])
        name = _cc.default_kernel_set() if kernel == "auto" else kernel
        want, want_pairs = small.get(name, [False] * 4), pairs.get(name, [False] * 4)
        assert [e["small_map"] for e in report] == want, kernel
        assert [e["pair_map"] for e in report] == want_pairs, kernel
        # A conv whose reader runs either kernel writes a planar tensor.
        packs = [s or q for s, q in zip(want, want_pairs)]
        assert [e["layout"] for e in report] == [
            "planar" if r else "chained" for r in packs[1:]] + ["nhwc"], kernel
    if JIT_ISAS:
        it = lite.Interpreter(model_content=tfl, num_threads=threads, tune="off")
        assert rel_error(run_tflite(it, [x])[0], reference_outputs(tfl, [x])[0]) <= 1e-5
        engines = [e["engine"] for e in sorted(it.delegate_report(), key=lambda e: e["node_index"])]
        assert engines[0].startswith("jit_") and not engines[2].startswith("jit_"), engines


def test_delegate_reports_the_generated_engine():
    """delegate_report() names the engine per node and, for generated code,
    its size and generation time; jit=static runs the static kernels; both
    equal stock LiteRT."""
    tfl = convert(_one_conv())
    x = np.random.default_rng(5).standard_normal((2, 20, 20, 32)).astype(np.float32)
    ref = reference_outputs(tfl, [x])[0]
    for jit in ["auto", "static"] + JIT_ISAS:
        it = lite.Interpreter(model_content=tfl, num_threads=2, jit=jit, tune="off")
        assert rel_error(run_tflite(it, [x])[0], ref) <= 1e-5, jit
        (e,) = it.delegate_report()
        if jit == "static" or not JIT_ISAS:
            assert e["engine"] == _cc.default_kernel_set() and e["code_bytes"] == 0
        else:
            want = "jit_" + (JIT_ISAS[-1] if jit == "auto" else jit)
            assert e["engine"] == want and e["kernel"] == "f32_conv2d_pattern__" + want
            assert e["code_bytes"] > 1000 and e["generate_ms"] > 0 and e["jit_error"] == ""
            assert e["jit_filters"] >= 1 and e["jit_vectors"] >= 1


@pytest.mark.parametrize("value,match", [("sse9", "expected 'auto', 'static'"),
                                         ("avx1024", "expected 'auto', 'static'")])
def test_bad_jit_option_is_refused(value, match):
    with pytest.raises(ValueError, match=match):
        lite.load_delegate(jit=value)


def test_jit_isa_the_cpu_lacks_is_refused():
    missing = [i for i in ("avx2_fma", "avx512", "neon") if i not in _cc.jit_choices()]
    if not missing:
        pytest.skip("this CPU and build run every generator ISA")
    with pytest.raises(ValueError, match="jit"):
        lite.load_delegate(jit=missing[0])


def test_cost_model_counts_layout_changes_and_demands_more_of_1x1(capfd):
    """A connectivity-pruned 1x1 conv on a 14x14 map is predicted below 2x
    once the layout change at its edges is counted, so claim=auto leaves it
    to XNNPACK and says why; a pruned 3x3 conv of the same size is claimed."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((14, 14, 96), batch_size=1)
    c1 = keras.layers.Conv2D(576, 1)
    model = keras.Model(inp, c1(inp))
    w = c1.get_weights()
    k = w[0]
    thresh = np.quantile(np.abs(k), 1 - 1 / 3.6)
    w[0] = np.where(np.abs(k) >= thresh, k, 0).astype(np.float32)
    c1.set_weights(w)
    it = lite.Interpreter(model_content=convert(model), verbose=True)
    it.allocate_tensors()
    assert it.delegate_report() == []
    assert "not worth claiming" in capfd.readouterr().err
    it2 = lite.Interpreter(model_content=convert(_one_conv(hw=14, c=96)))
    it2.allocate_tensors()
    assert len(it2.delegate_report()) == 1


# Strided pattern convs run as stride-1 convs over the phase-split input
# (cc/kernels/phase_split.h): every stride the split takes, odd and even
# sizes, both paddings, batch 1 (split straight into the engine's planes)
# and batch 2 (split into a buffer), against numpy float64.
STRIDED = [  # (k, strides, padding, h, w, batch, act, threads)
    (3, (2, 2), "same", 16, 16, 1, "relu", 1),
    (3, (2, 2), "same", 17, 15, 1, "none", 2),
    (3, (2, 2), "valid", 15, 16, 2, "relu6", 2),
    (3, (2, 1), "same", 12, 9, 1, "none", 1),
    (3, (1, 2), "valid", 9, 12, 2, "relu", 1),
    (5, (2, 2), "same", 13, 14, 1, "none", 2),
    (3, (3, 3), "same", 19, 20, 1, "relu", 2),
    (5, (4, 4), "valid", 21, 22, 2, "none", 1),
    (1, (2, 2), "same", 10, 11, 1, "none", 1),
    (3, (2, 2), "same", 2, 3, 1, "none", 1),
]


def _strided_model(filt, bias, strides, padding, act, h, w):
    import keras

    oc, k, _, ic = filt.shape
    inp = keras.Input((h, w, ic), batch_size=None)
    layer = keras.layers.Conv2D(oc, k, strides=strides, padding=padding,
                                activation={"none": None, "relu": "relu",
                                            "relu6": keras.activations.relu6}[act])
    model = keras.Model(inp, layer(inp))
    layer.set_weights([filt.transpose(1, 2, 3, 0), bias])
    return model


@pytest.mark.parametrize("k,strides,padding,h,w,batch,act,threads", STRIDED)
def test_strided_pattern_conv_runs_phase_split(k, strides, padding, h, w, batch, act, threads):
    rng = np.random.default_rng(k * 100 + h)
    ic, oc = 12, 20
    filt = _pruned_filter(rng, oc, k, ic, connectivity=3.0)
    bias = rng.standard_normal(oc).astype(np.float32)
    import cocopie_tf

    # With the converter's metadata: the record describes the unsplit masks.
    tfl = cocopie_tf.convert(_strided_model(filt, bias, strides, padding, act, h, w))
    x = rng.standard_normal((batch, h, w, ic)).astype(np.float32)
    ref = np_conv2d(x, filt, bias, strides, (1, 1), padding, act=act)
    it = lite.Interpreter(model_content=tfl, claim="all", num_threads=threads)
    for _ in range(2):  # the second invoke reuses the split buffers
        out = run_tflite(it, [x])[0]
        assert out.shape == ref.shape
        assert np.linalg.norm(out - ref) <= 1e-5 * max(np.linalg.norm(ref), 1e-30)
    (entry,) = it.delegate_report()
    assert "conv2d_pattern" in entry["kernel"]
    # A strided 1x1 conv runs stride-1 over its input's subsample, with the
    # record's masks as they are; larger kernels run phase-split.
    assert entry["metadata"] == ("used" if k == 1 else
                                 "not used: the strided conv runs phase-split")
    # Dense MACs are the strided layer's; executed ones its kept weights'.
    out_positions = batch * ref.shape[1] * ref.shape[2]
    assert entry["dense_macs"] == out_positions * oc * k * k * ic
    assert entry["executed_macs"] == out_positions * np.count_nonzero(filt)


@pytest.mark.parametrize("h,w,padding,threads", [(32, 32, "same", 1), (33, 30, "same", 2),
                                                   (31, 33, "valid", 2)])
def test_rgb_stem_phase_split_reads_pixel_pairs(h, w, padding, threads):
    """A 3-channel stride-2 stem (MobileNet's): both phase columns of an
    image row are split in one pass over pixel pairs where they cover the
    same columns (the odd-width and VALID cases where they do not take the
    per-column path); outputs against numpy float64, an Inf or NaN in the
    image against stock LiteRT."""
    rng = np.random.default_rng(h * 10 + w)
    filt = _pruned_filter(rng, 16, 3, 3, connectivity=1.0)
    bias = rng.standard_normal(16).astype(np.float32)
    tfl = convert(_strided_model(filt, bias, (2, 2), padding, "relu6", h, w))
    it = lite.Interpreter(model_content=tfl, claim="all", num_threads=threads)
    x = rng.standard_normal((1, h, w, 3)).astype(np.float32)
    ref = np_conv2d(x, filt, bias, (2, 2), (1, 1), padding, act="relu6")
    assert rel_error(run_tflite(it, [x])[0], ref) <= 1e-5
    (entry,) = it.delegate_report()
    assert "conv2d_pattern" in entry["kernel"]
    with np.errstate(invalid="ignore", over="ignore"):
        for value in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[0, int(rng.integers(h)), int(rng.integers(w)), int(rng.integers(3))] = value
            assert_same_non_finite(run_tflite(it, [y])[0], reference_outputs(tfl, [y])[0], what=value)


def test_strided_pattern_conv_is_claimed_where_it_pays():
    """claim=auto takes a pruned stride-2 layer big enough to beat XNNPACK's
    dense kernel after the split and the layout changes, and leaves unpruned
    strided convs to TFLite."""
    rng = np.random.default_rng(3)
    filt = _pruned_filter(rng, 64, 3, 64, connectivity=3.6)
    bias = np.zeros(64, np.float32)
    tfl = convert(_strided_model(filt, bias, (2, 2), "same", "relu", 64, 64))
    it = lite.Interpreter(model_content=tfl)
    it.allocate_tensors()
    assert len(it.delegate_report()) == 1
    # Unpruned strided convs stay with TFLite, although their split filters
    # look sparse (a 1x1 stride-2 filter split is 75% zeros).
    for k in (1, 3):
        dense = rng.standard_normal((64, k, k, 64)).astype(np.float32)
        tfl = convert(_strided_model(dense, bias, (2, 2), "same", "none", 64, 64))
        it = lite.Interpreter(model_content=tfl)
        it.allocate_tensors()
        assert it.delegate_report() == [], k


# Dense convs of short filters (a network's first conv over 3 channels) run
# as generated code where a generator exists (kJitDenseMaxDepth): strided
# ones phase-split, every weight kept, against numpy float64; with the
# static kernels only they stay on the dense kernel, and longer dense
# filters are never taken as pattern-pruned.
@pytest.mark.parametrize("isa", JIT_ISAS)
@pytest.mark.parametrize("strides,padding,h,w,ic", [
    ((2, 2), "same", 37, 30, 3), ((1, 1), "same", 20, 21, 3), ((2, 2), "valid", 24, 25, 4),
    ((1, 1), "valid", 17, 18, 7)])
def test_short_dense_filters_run_as_generated_code(isa, strides, padding, h, w, ic):
    rng = np.random.default_rng(h * 10 + ic)
    oc = 32
    filt = rng.standard_normal((oc, 3, 3, ic)).astype(np.float32)
    bias = rng.standard_normal(oc).astype(np.float32)
    tfl = convert(_strided_model(filt, bias, strides, padding, "relu6", h, w))
    x = rng.standard_normal((1, h, w, ic)).astype(np.float32)
    ref = np_conv2d(x, filt, bias, strides, (1, 1), padding, act="relu6")
    assert _cc.pattern_limits()["jit_dense_max_depth"] >= 9 * ic
    it = lite.Interpreter(model_content=tfl, claim="all", jit=isa, num_threads=2)
    out = run_tflite(it, [x])[0]
    assert np.linalg.norm(out - ref) <= 1e-5 * max(np.linalg.norm(ref), 1e-30)
    (entry,) = it.delegate_report()
    assert entry["kernel"] == f"f32_conv2d_pattern__jit_{isa}", entry
    assert entry["executed_macs"] == entry["dense_macs"]
    static = lite.Interpreter(model_content=tfl, claim="all", jit="static")
    out = run_tflite(static, [x])[0]
    assert np.linalg.norm(out - ref) <= 1e-5 * max(np.linalg.norm(ref), 1e-30)
    assert "conv2d_direct" in static.delegate_report()[0]["kernel"]


@pytest.mark.parametrize("isa", JIT_ISAS)
def test_long_dense_filters_stay_dense(isa):
    """Dense filters beyond the generator's depth (kJitDenseMaxDepth = 64;
    kJitDenseMaxDepthAvx512 = 576 on AVX-512) run on the dense kernel; on
    AVX-512 a 72-weight filter runs as generated code, every weight."""
    rng = np.random.default_rng(5)
    limit = _cc.pattern_limits()["jit_dense_max_depth_avx512" if isa == "avx512"
                                 else "jit_dense_max_depth"]
    for in_c in (8, 72):  # 72 and 648 weights per filter
        filt = rng.standard_normal((16, 3, 3, in_c)).astype(np.float32)
        tfl = convert(_strided_model(filt, np.zeros(16, np.float32), (1, 1), "same", "none", 12, 12))
        it = lite.Interpreter(model_content=tfl, claim="all", jit=isa)
        x = rng.standard_normal((1, 12, 12, in_c)).astype(np.float32)
        assert rel_error(run_tflite(it, [x])[0], reference_outputs(tfl, [x])[0]) <= 1e-5
        entry = it.delegate_report()[0]
        if 9 * in_c <= limit:
            assert entry["kernel"] == f"f32_conv2d_pattern__jit_{isa}", entry["kernel"]
            assert entry["executed_macs"] == entry["dense_macs"]
        else:
            assert "conv2d_direct" in entry["kernel"], (in_c, entry["kernel"])
