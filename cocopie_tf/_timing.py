"""Side-by-side latency measurement shared by the demo and bench/: alternate
A B A B so drift and noise hit every interpreter alike; medians and quartiles."""

from __future__ import annotations

import statistics
import time


def alternate(interps, runs: int = 15, warmup: int = 8) -> list[list[float]]:
    """Invokes each (already fed) interpreter in turn; returns ms per interpreter."""
    for it in interps:
        for _ in range(warmup):
            it.invoke()
    times = [[] for _ in interps]
    for _ in range(runs):
        for i, it in enumerate(interps):
            t0 = time.perf_counter()
            it.invoke()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return times


def summary(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {"median": statistics.median(ms), "q1": q[0], "q3": q[2]}
