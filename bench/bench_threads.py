"""Two threads after a pause: the engine with its workers pinned and not,
and XNNPACK, on the pruned 56x56x128 layer, with different waits between
calls (docs/engine.md section 37).

    python bench/bench_threads.py [--processes 5] [--rounds 6] [--json out.json]

Each variant (pin_threads on, off) runs in a process of its own, the
processes alternating; in each, the engine at 1 and 2 threads and XNNPACK at
1 and 2 threads (one interpreter each) take turns, 10 timed calls each per
round and condition. Between calls: nothing (`warm`), a 4 ms busy wait
(`busy`, as in the peer table), a 32 MB write (`junk`), a 4 ms sleep
(`sleep`), a 30 ms sleep (`frame`, a camera app between frames). Printed:
per variant and condition, the medians over processes of the per-round
medians (ms), and the 1 -> 2 thread scaling per process (min-max).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = pathlib.Path(__file__).resolve().parent
CONDITIONS = ("warm", "busy", "junk", "sleep", "frame")
RUNS = ("cocopie_1", "cocopie_2", "xnnpack_1", "xnnpack_2")


def child(model_path: str, pin: bool, rounds: int, tune_cache: str) -> dict:
    """One process: per (runtime, condition), the per-round medians in ms."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from cocopie_tf import lite

    tfl = pathlib.Path(model_path).read_bytes()
    interps = {}
    for name in RUNS:
        kind, threads = name.rsplit("_", 1)
        if kind == "cocopie":
            it = lite.Interpreter(model_content=tfl, num_threads=int(threads), tune="on",
                                  tune_cache=tune_cache, pin_threads=pin)
        else:
            it = Interpreter(model_content=tfl, num_threads=int(threads))
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"],
                      np.random.default_rng(0).standard_normal(d["shape"]).astype(np.float32))
        it.invoke()
        interps[name] = it
    junk = np.zeros(8 << 20, np.float32)

    def between(cond):
        if cond == "busy":
            end = time.perf_counter() + 0.004
            while time.perf_counter() < end:
                pass
        elif cond == "junk":
            np.add(junk, 1.0, out=junk)
        elif cond == "sleep":
            time.sleep(0.004)
        elif cond == "frame":
            time.sleep(0.030)

    out = {f"{r} {c}": [] for r in RUNS for c in CONDITIONS}
    for _ in range(rounds):
        for cond in CONDITIONS:
            for name, it in interps.items():
                times = []
                for _ in range(10):
                    between(cond)
                    t0 = time.perf_counter()
                    it.invoke()
                    times.append(time.perf_counter() - t0)
                out[f"{name} {cond}"].append(float(np.median(times)) * 1e3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=5, help="processes per variant")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", help="write the per-process medians here")
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "PIN", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.processes < 1 or args.rounds < 1:
        ap.error("--processes and --rounds must be at least 1")
    if args.child:
        model, pin, cache = args.child
        print(json.dumps(child(model, pin == "1", args.rounds, cache)))
        return 0

    sys.path.insert(0, str(HERE))
    from bench_peers import convert, layer_56

    with tempfile.TemporaryDirectory(prefix="cocopie_threads_") as tmp:
        model = pathlib.Path(tmp) / "layer.tflite"
        model.write_bytes(convert(layer_56()))
        cache = str(pathlib.Path(tmp) / "tuning.tsv")
        results = {"pinned": [], "unpinned": []}
        for _ in range(args.processes):
            for variant in results:
                pin = "1" if variant == "pinned" else "0"
                proc = subprocess.run(
                    [sys.executable, __file__, "--rounds", str(args.rounds),
                     "--child", str(model), pin, cache],
                    capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    print(proc.stderr[-2000:], file=sys.stderr)
                    return 1
                results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    from cocopie_tf.benchmark import machine

    print(f"machine: {machine()}")
    print("| variant | between calls | engine 1t ms | engine 2t ms | engine scaling "
          "| XNNPACK 1t ms | XNNPACK 2t ms | XNNPACK scaling |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, procs in results.items():
        for cond in CONDITIONS:
            def med(run):
                return statistics.median(statistics.median(p[f"{run} {cond}"]) for p in procs)

            def scaling(kind):
                s = [statistics.median(p[f"{kind}_1 {cond}"]) /
                     statistics.median(p[f"{kind}_2 {cond}"]) for p in procs]
                return f"{min(s):.2f}-{max(s):.2f}"

            print(f"| {variant} | {cond} | {med('cocopie_1'):.2f} | {med('cocopie_2'):.2f} | "
                  f"{scaling('cocopie')} | {med('xnnpack_1'):.2f} | {med('xnnpack_2'):.2f} | "
                  f"{scaling('xnnpack')} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
