"""Speed ratios with confidence intervals, and issue 11's targets judged by them.

The peer benchmark runs every runtime once per round, in a new order each
round.  On a shared VM the host's speed drifts by 20% within minutes, which
moves a ratio of two medians taken over the whole block by 0.2-0.4 between
runs.  A runtime's time and cocopie's time from the same round saw the same
host, so the per-round ratio cancels most of that drift; the median of the
per-round ratios, with a distribution-free confidence interval, says whether
a target is met, missed, or within what this machine can tell apart.
"""

from __future__ import annotations

from math import comb

import numpy as np

LEVEL = 0.95  # confidence of the intervals


def median_ci(values, level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """(median, lo, hi): the sample median and an interval that holds the
    population median with probability >= `level` whatever the distribution
    of independent values (order statistics x(k) and x(n+1-k), k the
    largest with 2 * P(Binomial(n, 1/2) <= k - 1) <= 1 - level).  Samples
    too small for that level (n < 6 at 95%) get no interval (None, None).
    Rounds are not quite independent on a drifting host (what a round's
    ratio does not cancel carries over to its neighbours), so read the
    interval as a floor on the uncertainty."""
    x = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    n = len(x)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("median_ci needs finite values")
    k, tail = 0, 0.0  # tail = P(Bin(n, 1/2) <= k - 1)
    while k + 1 <= n // 2:
        nxt = tail + comb(n, k) / 2.0**n
        if 2 * nxt > 1 - level:
            break
        tail, k = nxt, k + 1
    if k == 0:
        return float(np.median(x)), None, None
    return float(np.median(x)), float(x[k - 1]), float(x[n - k])


def paired(row: dict, num: str, den: str) -> tuple[float, float | None, float | None] | None:
    """Per-round num/den time ratios of one benchmark row (how many times
    faster `den` ran than `num`) as median_ci; None when the row has no
    per-round times for both (JSON from before they were kept)."""
    rounds = row.get("rounds") or {}
    a, b = rounds.get(num), rounds.get(den)
    if not a or not b or len(a) != len(b):
        return None
    return median_ci(np.asarray(a, np.float64) / np.asarray(b, np.float64))


def unpaired(a, b, level: float = LEVEL, resamples: int = 4000, seed: int = 0):
    """median(a) / median(b) with a bootstrap interval (the two samples
    come from different blocks, so no round pairs them)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("unpaired needs two non-empty samples")
    rng = np.random.default_rng(seed)
    ma = np.median(rng.choice(a, (resamples, len(a))), axis=1)
    mb = np.median(rng.choice(b, (resamples, len(b))), axis=1)
    lo, hi = np.percentile(ma / mb, [50 * (1 - level), 50 * (1 + level)])
    return float(np.median(a) / np.median(b)), float(lo), float(hi)


def fastest_peer(row: dict) -> str:
    """The runtime other than cocopie with the lowest median time."""
    peers = {k: v["median"] for k, v in row["ms"].items() if not k.startswith("cocopie")}
    return min(peers, key=peers.get)


def verdict(est: float, lo: float | None, hi: float | None, goal: float) -> str:
    if lo is None or hi is None:
        return "met (no interval)" if est >= goal else "missed (no interval)"
    if lo >= goal:
        return "met"
    if hi < goal:
        return "missed"
    return "within noise"


# Issue 11's targets: (row model prefix, what, goal).  "peer" is the fastest
# peer of the row; "mac" is the throughput per executed MAC against ONNX
# Runtime's per dense MAC.
TARGETS = [
    ("conv 56x56", "deepsparse", 1.5),
    ("conv 56x56", "onnxruntime", 2.5),
    ("conv 56x56", "mac", 0.6),
    ("VGG-16 CIFAR, 8 pat", "peer", 2.0),
    ("ResNet-50 224, 8 pat + 3.6x conn, 1x1", "peer", 1.5),
    ("ResNet-50 224, 8 pat + 3.6x conn", "peer", 1.5),
    ("MobileNetV2 224, 1x1", "peer", 1.3),
    ("VGG-16 CIFAR, unpruned", "xnnpack", 0.97),
    ("MobileNetV2 224, unpruned", "xnnpack", 0.97),
]
SCALING = ("conv 56x56", 1.8)  # cocopie's 1 -> 2 thread speed-up on the layer
# (its 2-thread block also times "cocopie_1t", cocopie at 1 thread, every round)


def _row_for(rows, prefix, threads):
    # The longest prefix wins elsewhere: "ResNet-50 ..., 1x1" must not match
    # the 3x3-only row, whose name is its prefix.
    for r in rows:
        if r["threads"] != threads:
            continue
        name = r["model"]
        if not name.startswith(prefix):
            continue
        longer = [p for p, _, _ in TARGETS if p != prefix and p.startswith(prefix)]
        if any(name.startswith(p) for p in longer):
            continue
        return r
    return None


def targets(rows) -> list[dict]:
    """Every issue 11 target the rows can judge: the ratio (median of the
    per-round ratios where the rows kept them, else of the medians), its
    95% interval and the verdict."""
    out = []
    for prefix, what, goal in TARGETS:
        for threads in (1, 2):
            r = _row_for(rows, prefix, threads)
            if r is None or "cocopie" not in r["ms"]:
                continue
            if what == "mac":
                if "onnxruntime" not in r["ms"] or not r.get("dense_macs"):
                    continue
                scale = r["executed_macs"] / r["dense_macs"]
                p = paired(r, "onnxruntime", "cocopie")
                est = r["ms"]["onnxruntime"]["median"] / r["ms"]["cocopie"]["median"]
                vs = "ONNX Runtime, per executed MAC"
                ci = None if p is None else tuple(None if v is None else v * scale for v in p)
                est *= scale
            else:
                peer = fastest_peer(r) if what == "peer" else what
                if peer not in r["ms"]:
                    continue
                ci = paired(r, peer, "cocopie")
                est = r["ms"][peer]["median"] / r["ms"]["cocopie"]["median"]
                vs = f"{peer} (fastest peer)" if what == "peer" else peer
            if ci is not None:
                est = ci[0]
            lo, hi = (None, None) if ci is None else ci[1:]
            out.append(dict(model=r["model"], threads=threads, vs=vs, goal=goal, ratio=est,
                            lo=lo, hi=hi, verdict=verdict(est, lo, hi, goal)))
    prefix, goal = SCALING
    one, two = _row_for(rows, prefix, 1), _row_for(rows, prefix, 2)
    same = None if two is None else paired(two, "cocopie_1t", "cocopie")
    if same is not None:
        # The 2-thread block also ran cocopie at 1 thread in its rounds: each
        # round's ratio saw one host speed, like the peers' ratios.
        est, lo, hi = same
        out.append(dict(model=two["model"], threads="1 -> 2",
                        vs="cocopie at 1 thread (same rounds)", goal=goal,
                        ratio=est, lo=lo, hi=hi, verdict=verdict(est, lo, hi, goal)))
    elif one is not None and two is not None:
        a = (one.get("rounds") or {}).get("cocopie")
        b = (two.get("rounds") or {}).get("cocopie")
        if a and b:
            est, lo, hi = unpaired(a, b)
        else:
            est, lo, hi = one["ms"]["cocopie"]["median"] / two["ms"]["cocopie"]["median"], None, None
        # The two blocks ran minutes apart: the interval covers each block's
        # spread, not the host's drift between them.
        v = verdict(est, lo, hi, goal)
        if lo is not None and v != "within noise":
            v += " (blocks unpaired)"
        out.append(dict(model=one["model"], threads="1 -> 2",
                        vs="cocopie at 1 thread (another block)", goal=goal,
                        ratio=est, lo=lo, hi=hi, verdict=v))
    return out


def targets_table(rows) -> str:
    """Markdown table of targets(rows)."""
    lines = ["| target row | threads | against | goal | ratio | 95% interval | verdict |",
             "|---|---|---|---|---|---|---|"]
    for t in targets(rows):
        ci = "-" if t["lo"] is None else f"{t['lo']:.2f}-{t['hi']:.2f}"
        lines.append(f"| {t['model']} | {t['threads']} | {t['vs']} | >= {t['goal']:g} | "
                     f"{t['ratio']:.2f} | {ci} | {t['verdict']} |")
    return "\n".join(lines)
