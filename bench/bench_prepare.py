"""Prepare cost of the generated engine: wall time of allocate_tensors()
(plan, layout, code generation; tune=off) and the code size per model, with
the static kernels' Prepare next to it.

    python bench/bench_prepare.py [--resnet50]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_peers import app, convert, vgg16  # noqa: E402
from timing import machine_info  # noqa: E402


def prepare(tfl, jit, threads=1):
    from cocopie_tf import lite

    times, rep = [], None
    for _ in range(3):
        it = lite.Interpreter(model_content=tfl, num_threads=threads, jit=jit, tune="off")
        t = time.perf_counter()
        it.allocate_tensors()
        times.append((time.perf_counter() - t) * 1e3)
        rep = it.delegate_report()
    return statistics.median(times), rep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--resnet50", action="store_true")
    args = ap.parse_args()
    cases = [("VGG-16 CIFAR, 8 pat + 3.6x conn", lambda: vgg16(True))]
    if args.resnet50:
        cases.append(("ResNet-50 224, 8 pat + 3.6x conn", lambda: app("ResNet50", 224, True)))
        cases.append(("ResNet-50 224, 8 pat + 3.6x conn, 1x1 convs 3.6x conn",
                      lambda: app("ResNet50", 224, True, prune_1x1_convs=True)))
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()) + "\n")
    print("| model | claimed | generated layers | code bytes | generation ms (sum) | "
          "Prepare ms, generated | Prepare ms, static |")
    print("|---|---|---|---|---|---|---|")
    for name, build in cases:
        tfl = convert(build())
        ms_jit, rep = prepare(tfl, "auto")
        ms_static, _ = prepare(tfl, "static")
        gen = [e for e in rep if e.get("code_bytes")]
        print(f"| {name} | {len(rep)} | {len(gen)} | {sum(e['code_bytes'] for e in gen):,} | "
              f"{sum(e['generate_ms'] for e in gen):.1f} | {ms_jit:.0f} | {ms_static:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
