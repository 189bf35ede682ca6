"""The C++ kernels (cocopie_tf._cc) against numpy float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cocopie_tf import _cc

KERNELS = _cc.kernel_choices()[1:]  # reference + every compiled ISA set
# The sets this CPU runs (all of them are tested, not only the default one).
_NEEDS = {"avx512": {"avx512f", "avx2", "fma"}, "avx2_fma": {"avx2", "fma"}, "neon": {"neon"}}
USABLE = [k for k in KERNELS if _NEEDS.get(k, set()) <= set(_cc.cpu_features().split(","))]


def _pads(n, k, stride, dil, padding):
    eff = (k - 1) * dil + 1
    if padding == "same":
        out = -(-n // stride)
        total = max((out - 1) * stride + eff - n, 0)
        return out, total // 2, total - total // 2
    return (n - eff) // stride + 1, 0, 0


def np_conv2d(x, w_ohwi, bias, strides, dilations, padding, depthwise=False, act="none"):
    """Direct float64 convolution in numpy (independent of the C++ code)."""
    x = x.astype(np.float64)
    n, h, wd, c = x.shape
    if depthwise:
        _, kh, kw, oc = w_ohwi.shape
    else:
        oc, kh, kw, _ = w_ohwi.shape
    oh, pt, pb = _pads(h, kh, strides[0], dilations[0], padding)
    ow, pl, pr = _pads(wd, kw, strides[1], dilations[1], padding)
    xp = np.pad(x, ((0, 0), (pt, pb + kh * dilations[0]), (pl, pr + kw * dilations[1]), (0, 0)))
    out = np.zeros((n, oh, ow, oc))
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dilations[0], kx * dilations[1]
            patch = xp[:, y0 : y0 + oh * strides[0] : strides[0], x0 : x0 + ow * strides[1] : strides[1], :]
            patch = patch[:, :oh, :ow, :]
            if depthwise:
                m = oc // c
                out += np.repeat(patch, m, axis=3) * w_ohwi[0, ky, kx, :].astype(np.float64)
            else:
                out += patch @ w_ohwi[:, ky, kx, :].astype(np.float64).T
    if bias is not None:
        out += bias
    return _activate(out, act)


def _activate(out, act):
    lo, hi = {"none": (-np.inf, np.inf), "relu": (0, np.inf), "relu6": (0, 6),
              "relu_n1_to_1": (-1, 1)}[act]
    return np.clip(out, lo, hi)


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def float32_error(out, ref, scale):
    """The error of `out` against the float64 `ref`, relative to `scale`,
    the same sums taken over the products' magnitudes: float32 summation
    error scales with those, so a sum that cancels to nearly zero is not held
    to a tighter bound than its terms allow (hypothesis found FC outputs of
    0.029 from 162 terms of order 1, 4e-5 off relative to themselves).  A
    product dropped or doubled is still hundreds of times the bound."""
    return np.linalg.norm(out - ref) / max(np.linalg.norm(scale), 1e-30)


conv_cases = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 2),
        "h": st.integers(1, 12),
        "w": st.integers(1, 14),
        "c": st.integers(1, 19),
        "oc": st.integers(1, 70),
        "k": st.sampled_from([1, 2, 3, 5]),
        "stride": st.integers(1, 3),
        "dil": st.integers(1, 2),
        "padding": st.sampled_from(["same", "valid"]),
        "act": st.sampled_from(["none", "relu", "relu6", "relu_n1_to_1"]),
        "bias": st.booleans(),
        "threads": st.integers(1, 3),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def _valid(p):
    return p["padding"] == "same" or (p["k"] - 1) * p["dil"] + 1 <= min(p["h"], p["w"])


@pytest.mark.parametrize("kernel", USABLE)
@settings(max_examples=40, deadline=None)
@given(p=conv_cases)
def test_conv2d_matches_numpy(kernel, p):
    if not _valid(p):
        return
    r = np.random.default_rng(p["seed"])
    x = r.standard_normal((p["batch"], p["h"], p["w"], p["c"])).astype(np.float32)
    w = r.standard_normal((p["oc"], p["k"], p["k"], p["c"])).astype(np.float32)
    b = r.standard_normal(p["oc"]).astype(np.float32) if p["bias"] else None
    s, d = (p["stride"],) * 2, (p["dil"],) * 2
    out = _cc.conv2d(x, w, b, strides=s, dilations=d, padding=p["padding"],
                     activation=p["act"], kernel=kernel, num_threads=p["threads"])
    ref = np_conv2d(x, w, b, s, d, p["padding"], act=p["act"])
    scale = np_conv2d(np.abs(x), np.abs(w), None if b is None else np.abs(b), s, d, p["padding"])
    assert out.shape == ref.shape
    assert float32_error(out, ref, scale) <= 1e-5


@pytest.mark.parametrize("kernel", USABLE)
@settings(max_examples=40, deadline=None)
@given(p=conv_cases, mult=st.integers(1, 3))
def test_depthwise_matches_numpy(kernel, p, mult):
    if not _valid(p):
        return
    r = np.random.default_rng(p["seed"])
    x = r.standard_normal((p["batch"], p["h"], p["w"], p["c"])).astype(np.float32)
    w = r.standard_normal((1, p["k"], p["k"], p["c"] * mult)).astype(np.float32)
    b = r.standard_normal(p["c"] * mult).astype(np.float32) if p["bias"] else None
    s, d = (p["stride"],) * 2, (p["dil"],) * 2
    out = _cc.depthwise_conv2d(x, w, b, strides=s, dilations=d, padding=p["padding"],
                               activation=p["act"], kernel=kernel, num_threads=p["threads"])
    ref = np_conv2d(x, w, b, s, d, p["padding"], depthwise=True, act=p["act"])
    scale = np_conv2d(np.abs(x), np.abs(w), None if b is None else np.abs(b), s, d, p["padding"],
                      depthwise=True)
    assert float32_error(out, ref, scale) <= 1e-5


@pytest.mark.parametrize("kernel", USABLE)
@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 4), n_in=st.integers(1, 600), n_out=st.integers(1, 200),
       act=st.sampled_from(["none", "relu", "relu6"]), threads=st.integers(1, 3),
       zeros=st.sampled_from([0.0, 0.5, 0.95, 1.0]), by_input=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_fully_connected_matches_numpy(kernel, batch, n_in, n_out, act, threads, zeros, by_input,
                                       seed):
    """Both weight layouts (by input: zero inputs' rows skipped, from 64
    units; n_in above 256 crosses the kernel's steps of inputs)."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((batch, n_in)).astype(np.float32)
    x[r.random(x.shape) < zeros] = 0.0
    w = r.standard_normal((n_out, n_in)).astype(np.float32)
    b = r.standard_normal(n_out).astype(np.float32)
    out = _cc.fully_connected(x, w, b, activation=act, kernel=kernel, num_threads=threads,
                              by_input=by_input)
    ref = _activate(x.astype(np.float64) @ w.astype(np.float64).T + b, act)
    scale = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T + np.abs(b)
    assert float32_error(out, ref, scale) <= 1e-5


@pytest.mark.parametrize("kernel", USABLE)
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_fully_connected_by_input_keeps_zero_times_inf(kernel, value):
    """Skipping a zero input's row is exact only for finite weights: with an
    Inf or NaN weight, stock TFLite (and float64) give NaN for 0 x Inf, so
    the by-input kernel must not skip."""
    r = np.random.default_rng(3)
    x = np.maximum(r.standard_normal((2, 300)), 0).astype(np.float32)  # about half zeros
    x[:, 7] = 0.0
    w = r.standard_normal((96, 300)).astype(np.float32)
    w[5, 7] = value
    with np.errstate(invalid="ignore"):
        ref = x.astype(np.float64) @ w.astype(np.float64).T
    assert np.isnan(ref[:, 5]).all() and np.isfinite(np.delete(ref, 5, axis=1)).all()
    for threads in (1, 2):
        out = _cc.fully_connected(x, w, None, kernel=kernel, num_threads=threads, by_input=True)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
        ok = ~np.isnan(ref)
        assert np.allclose(out[ok], ref[ok], rtol=1e-5, atol=1e-4)


def test_reference_is_exact_on_integers():
    # Small integers: every product and sum is exact in float32, so the
    # reference kernel must reproduce numpy bit for bit.
    r = np.random.default_rng(0)
    x = r.integers(-3, 4, (1, 6, 5, 4)).astype(np.float32)
    w = r.integers(-3, 4, (3, 3, 3, 4)).astype(np.float32)
    out = _cc.conv2d(x, w, None, padding="same", kernel="reference")
    np.testing.assert_array_equal(out, np_conv2d(x, w, None, (1, 1), (1, 1), "same"))


def test_bad_arguments_raise_value_error():
    x = np.zeros((1, 4, 4, 3), np.float32)
    w = np.zeros((2, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="padding"):
        _cc.conv2d(x, w, padding="full")
    with pytest.raises(ValueError, match="activation"):
        _cc.conv2d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="kernel"):
        _cc.conv2d(x, w, kernel="avx9000")
    with pytest.raises(ValueError, match="filter depth"):
        _cc.conv2d(x, np.zeros((2, 3, 3, 5), np.float32))
    with pytest.raises(ValueError, match="geometry"):
        _cc.conv2d(x, np.zeros((2, 5, 5, 3), np.float32), padding="valid")
    with pytest.raises(ValueError, match="num_threads"):
        _cc.conv2d(x, w, num_threads=0)


def test_cpu_dispatch_reports_a_usable_kernel_set():
    assert _cc.default_kernel_set() in _cc.kernel_choices()
    assert isinstance(_cc.cpu_features(), str)


def _cpu_identity():
    """(vendor, family, flags) from /proc/cpuinfo's first processor."""
    vendor, family, flags = "", -1, set()
    try:
        text = open("/proc/cpuinfo", encoding="ascii", errors="replace").read()
    except OSError:
        return vendor, family, flags
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id":
            vendor = value
        elif key == "cpu family":
            family = int(value)
        elif key == "flags":
            flags = set(value.split())
    return vendor, family, flags


def test_fma512_rate_probe_knows_amd_zen4(tmp_path):
    """The FMA-rate probe (CpuFeatures::Fma512FullRate) on a CPU whose
    answer is known: AMD family 25 with AVX-512 is Zen 4, which runs a
    512-bit FMA on two 256-bit pipes (half rate).  Measured in five fresh
    processes, each after an idle pause (a core just woken ran its first
    ~0.2 ms slowly, which once read as 1.4x), with COCOPIE_FMA512_RATE unset;
    `COCOPIE_FMA512_RATE` overrides are checked in test_residual.py."""
    import os
    import subprocess
    import sys
    import time

    vendor, family, flags = _cpu_identity()
    if not (vendor == "AuthenticAMD" and family == 25 and "avx512f" in flags):
        pytest.skip(f"no known answer for this CPU ({vendor} family {family})")
    env = {k: v for k, v in os.environ.items() if k != "COCOPIE_FMA512_RATE"}
    for _ in range(5):
        time.sleep(0.3)
        run = subprocess.run([sys.executable, "-c",
                              "from cocopie_tf import _cc; print(_cc.cpu_features())"],
                             env=env, capture_output=True, text=True, timeout=120, check=True,
                             cwd=tmp_path)
        features = run.stdout.strip().split(",")
        assert "avx512f" in features and "fma512_full_rate" not in features, features
