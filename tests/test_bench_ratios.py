"""bench/ratios.py: confidence intervals of speed ratios and issue 11's verdicts."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

import ratios  # noqa: E402


@pytest.mark.parametrize("n", [6, 9, 15, 21])
def test_median_interval_covers_the_true_median_at_its_level(n):
    """Independent check by simulation: samples of a skewed distribution with
    a known median (exponential: ln 2); the interval must hold it in at least
    95% of draws (order-statistic intervals are conservative, so not far
    above 99% either)."""
    rng = np.random.default_rng(n)
    hits = 0
    draws = 4000
    for _ in range(draws):
        med, lo, hi = ratios.median_ci(rng.exponential(1.0, n))
        assert lo <= med <= hi
        hits += lo <= np.log(2) <= hi
    assert 0.95 <= hits / draws <= 0.995, hits / draws


def test_median_interval_uses_the_binomial_order_statistics():
    # n = 15: P(Bin(15, 1/2) <= 3) = 576 / 32768 = 1.8% per side: x(4) and
    # x(12); n = 5 is too small for 95% (even [min, max] covers 93.75%).
    x = np.arange(15.0)[::-1]
    assert ratios.median_ci(x) == (7.0, 3.0, 11.0)
    assert ratios.median_ci([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, None, None)
    r = dict(rounds={"a": [2.0] * 5, "b": [1.0] * 5}, ms={})
    assert ratios.paired(r, "a", "b") == (2.0, None, None)
    with pytest.raises(ValueError, match="at least one"):
        ratios.median_ci([])
    with pytest.raises(ValueError, match="finite"):
        ratios.median_ci([1.0, float("nan")])


def _row(model, threads, rounds, **extra):
    ms = {k: dict(median=float(np.median(v))) for k, v in rounds.items()}
    return dict(model=model, threads=threads, ms=ms, rounds=rounds, **extra)


def test_paired_ratio_is_exact_under_a_drift_both_runtimes_saw():
    """The host slows down 1.5x halfway through the block; cocopie ran 2x
    faster than the peer in every round: the per-round ratio is 2.0 with a
    zero-width interval, though each column alone spreads by 1.5x."""
    host = np.r_[np.ones(8), 1.5 * np.ones(7)]
    peer = 4.0 * host
    ours = 2.0 * host
    r = _row("m", 1, {"xnnpack": list(peer), "cocopie": list(ours)})
    assert ratios.paired(r, "xnnpack", "cocopie") == (2.0, 2.0, 2.0)
    # Drop rounds of one runtime: no pairing, no interval.
    r["rounds"]["cocopie"] = r["rounds"]["cocopie"][:-1]
    assert ratios.paired(r, "xnnpack", "cocopie") is None


def test_targets_judge_met_missed_and_within_noise():
    rng = np.random.default_rng(0)
    n = 15
    host = 1 + 0.2 * rng.random(n)  # the drift every runtime in a round shares
    noise = lambda: 1 + 0.02 * rng.standard_normal(n)  # noqa: E731
    layer = "conv 56x56x128->128, 8 pat + 2x conn"
    rows = [
        # Layer: DeepSparse 1.8x slower (met: goal 1.5), ORT 2.5x (within noise: goal 2.5).
        _row(layer, 1, {"cocopie": list(2.0 * host * noise()), "deepsparse": list(3.6 * host * noise()),
                        "onnxruntime": list(5.0 * host * noise()), "xnnpack": list(6.0 * host * noise())},
             executed_macs=100, dense_macs=400),
        _row(layer, 2, {"cocopie": list(1.0 * host * noise()), "deepsparse": list(1.2 * host * noise()),
                        "onnxruntime": list(3.0 * host * noise()), "xnnpack": list(3.0 * host * noise())},
             executed_macs=100, dense_macs=400),
        # VGG: the fastest peer (MNN, not XNNPACK) only 1.5x slower: missed.
        _row("VGG-16 CIFAR, 8 pat + 3.6x conn", 2,
             {"cocopie": list(1.0 * host * noise()), "mnn": list(1.5 * host * noise()),
              "xnnpack": list(4.0 * host * noise())}),
    ]
    got = {(t["model"][:6], t["threads"], t["vs"]): t for t in ratios.targets(rows)}
    ds1 = got[("conv 5", 1, "deepsparse")]
    assert ds1["verdict"] == "met" and 1.7 < ds1["ratio"] < 1.9 and ds1["lo"] >= 1.5
    assert got[("conv 5", 1, "onnxruntime")]["verdict"] == "within noise"
    assert got[("conv 5", 2, "deepsparse")]["verdict"] == "missed"
    # Per executed MAC: 2.5x faster on a quarter of the MACs = 62.5% of ORT.
    mac = got[("conv 5", 1, "ONNX Runtime, per executed MAC")]
    assert 0.58 < mac["ratio"] < 0.67
    vgg = got[("VGG-16", 2, "mnn (fastest peer)")]
    assert vgg["verdict"] == "missed" and vgg["hi"] < 2.0
    # The layer's 1 -> 2 thread scaling: 2.0x, unpaired (bootstrap interval).
    sc = got[("conv 5", "1 -> 2", "cocopie at 1 thread (another block)")]
    assert 1.9 < sc["ratio"] < 2.1 and sc["lo"] < sc["ratio"] < sc["hi"]
    assert sc["verdict"] == "met (blocks unpaired)"
    table = ratios.targets_table(rows).splitlines()
    assert table[0].startswith("| target row |") and len(table) == 2 + len(got)


def test_resnet_rows_are_judged_apart():
    """The 3x3-only ResNet-50 row's name is a prefix of the 1x1-pruned one's:
    each target must find its own row."""
    ones = [1.0] * 6
    rows = [_row("ResNet-50 224, 8 pat + 3.6x conn", 1, {"cocopie": ones, "xnnpack": [1.2] * 6}),
            _row("ResNet-50 224, 8 pat + 3.6x conn, 1x1 convs 3.6x conn", 1,
                 {"cocopie": ones, "xnnpack": [2.0] * 6})]
    got = sorted((t["model"], t["ratio"]) for t in ratios.targets(rows))
    assert got == [("ResNet-50 224, 8 pat + 3.6x conn", 1.2),
                   ("ResNet-50 224, 8 pat + 3.6x conn, 1x1 convs 3.6x conn", 2.0)]


def test_rows_without_rounds_are_judged_on_their_medians():
    r = dict(model="MobileNetV2 224, unpruned", threads=1,
             ms={"cocopie": dict(median=1.0), "xnnpack": dict(median=0.96)})
    (t,) = ratios.targets([r])
    assert t["lo"] is None and t["verdict"] == "missed (no interval)" and t["ratio"] == 0.96


def test_scaling_is_paired_when_the_two_thread_block_ran_one_thread_too():
    """The 1-thread block ran on a host 1.3x slower than the 2-thread block:
    comparing the blocks reads 1.8 x 1.3 = 2.34x.  The 2-thread block's own
    1-thread runs (cocopie_1t) saw its host: each round's ratio is 1.8x."""
    layer = "conv 56x56x128->128, 8 pat + 2x conn"
    host = np.r_[np.ones(8), 1.4 * np.ones(7)]  # drift inside the 2-thread block
    rows = [_row(layer, 1, {"cocopie": list(1.3 * 1.8 * np.ones(15)), "xnnpack": [9.0] * 15}),
            _row(layer, 2, {"cocopie": list(host), "cocopie_1t": list(1.8 * host),
                            "xnnpack": list(4.5 * host)})]
    got = [t for t in ratios.targets(rows) if t["threads"] == "1 -> 2"]
    assert len(got) == 1
    (sc,) = got
    assert sc["vs"] == "cocopie at 1 thread (same rounds)"
    assert (sc["ratio"], sc["lo"], sc["hi"]) == pytest.approx((1.8, 1.8, 1.8))
    assert sc["verdict"] == "met"
    # cocopie_1t is not a peer: the 2-thread row's fastest peer stays XNNPACK.
    assert ratios.fastest_peer(rows[1]) == "xnnpack"
    # Without the paired runs the blocks are compared, and the drift shows.
    del rows[1]["rounds"]["cocopie_1t"], rows[1]["ms"]["cocopie_1t"]
    (sc,) = [t for t in ratios.targets(rows) if t["threads"] == "1 -> 2"]
    assert sc["vs"] == "cocopie at 1 thread (another block)" and sc["ratio"] > 2.0
