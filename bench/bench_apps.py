"""The seed's applications (super-resolution x2, style transfer, coloring)
trained on the built-in photos, pattern-pruned, and timed per frame at
256x256 output: dense on LiteRT + XNNPACK and on ONNX Runtime, pruned on
both and with the cocopie delegate, at 1 and 2 threads.

    python bench/bench_apps.py [--apps sr,style,color] [--preset demo]
        [--threads 1,2] [--runs 20] [--size 256] [--models DIR] [--pictures DIR]
        [--json out.json] [--out table.md]

``--models DIR`` keeps the trained models (APP_dense.keras,
APP_pruned.keras) and reuses them on the next run, so timing can be redone
without training again.  Every runtime's output is checked against stock
LiteRT on the same weights before timing; all five runtimes alternate round
by round (ONNX Runtime with intra-op spinning off), 1-thread rounds before
2-thread rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from bench_peers import rel  # noqa: E402
from runners import LiteRunner, OrtRunner  # noqa: E402
from tflite_to_onnx import tflite_to_onnx  # noqa: E402
from timing import alternate, machine_info, summary  # noqa: E402

RUNTIMES = ("dense_xnnpack", "dense_onnxruntime", "pruned_xnnpack", "pruned_onnxruntime",
            "pruned_cocopie")


def models(app, settings, model_dir):
    """(dense, pruned) Keras models: loaded from model_dir, or trained (and
    saved there)."""
    import keras

    from cocopie_tf.apps import pipeline

    paths = None
    if model_dir is not None:
        model_dir.mkdir(parents=True, exist_ok=True)
        paths = [model_dir / f"{app}_{k}.keras" for k in ("dense", "pruned")]
        if all(p.is_file() for p in paths):
            print(f"{app}: loading {paths[0]} and {paths[1]}")
            return [keras.models.load_model(p, compile=False) for p in paths], None
    dense, pruned, record = pipeline.train(app, settings)
    if paths is not None:
        for m, p in zip((dense, pruned), paths):
            m.save(p)
    return (dense, pruned), record


def latency(app, dense, pruned, settings, threads, runs):
    from ai_edge_litert.interpreter import Interpreter

    from cocopie_tf import lite
    from cocopie_tf.apps import pipeline

    pairs = pipeline.app_module(app).eval_pairs(settings.eval_size)
    x = next(iter(pairs.values()))[0][None].astype(np.float32)
    tfl = {k: pipeline.deploy(app, m, x.shape[1:]) for k, m in (("dense", dense),
                                                               ("pruned", pruned))}
    onnx = {k: tflite_to_onnx(v) for k, v in tfl.items()}
    out = {}
    for t in threads:
        runners = {
            "dense_xnnpack": LiteRunner(Interpreter(model_content=tfl["dense"], num_threads=t), x),
            "dense_onnxruntime": OrtRunner(onnx["dense"], t, x),
            "pruned_xnnpack": LiteRunner(Interpreter(model_content=tfl["pruned"], num_threads=t),
                                         x),
            "pruned_onnxruntime": OrtRunner(onnx["pruned"], t, x),
            "pruned_cocopie": LiteRunner(lite.Interpreter(model_content=tfl["pruned"],
                                                          num_threads=t), x),
        }
        for r in runners.values():
            r.invoke()
        errors = {
            "dense_onnxruntime": rel(runners["dense_onnxruntime"].output,
                                     runners["dense_xnnpack"].output),
            "pruned_onnxruntime": rel(runners["pruned_onnxruntime"].output,
                                      runners["pruned_xnnpack"].output),
            "pruned_cocopie": rel(runners["pruned_cocopie"].output,
                                  runners["pruned_xnnpack"].output),
        }
        bad = {k: e for k, e in errors.items() if not e <= 1e-4}
        if bad:
            raise AssertionError(f"{app}: outputs disagree with stock LiteRT: {bad}")
        ms = alternate([runners[k] for k in RUNTIMES], runs=runs, warmup=5)
        out[t] = {"ms": {k: summary(m) for k, m in zip(RUNTIMES, ms)}, "rel_error": errors}
        med = {k: v["median"] for k, v in out[t]["ms"].items()}
        print(f"{app} {t} thread(s): " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items()))
    rep = runners["pruned_cocopie"].it.delegate_report()
    facts = {"input_shape": list(x.shape), "claimed_nodes": len(rep),
             "claimed_dense_macs": int(sum(e["dense_macs"] for e in rep)),
             "claimed_executed_macs": int(sum(e["executed_macs"] for e in rep)),
             "engines": sorted({e.get("engine", "?") for e in rep}),
             "tflite_bytes": {k: len(v) for k, v in tfl.items()}}
    return out, facts


def table(results, threads) -> str:
    lines = ["| app | threads | dense XNNPACK | dense ONNX Runtime | pruned XNNPACK | "
             "pruned ONNX Runtime | pruned cocopie | speed-up vs dense XNNPACK | "
             "vs dense ONNX Runtime |", "|---|---|---|---|---|---|---|---|---|"]
    for app, r in results.items():
        for t in threads:
            m = {k: v["median"] for k, v in r["latency"][t]["ms"].items()}
            c = m["pruned_cocopie"]
            lines.append(f"| {app} | {t} | " + " | ".join(f"{m[k]:.1f} ms" for k in RUNTIMES)
                         + f" | {m['dense_xnnpack'] / c:.2f}x | {m['dense_onnxruntime'] / c:.2f}x |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--apps", default="sr,style,color")
    ap.add_argument("--preset", default="demo", choices=("ci", "demo", "full"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--size", type=int, default=256,
                    help="output side of the frame evaluated and timed (default 256)")
    ap.add_argument("--models", type=pathlib.Path, default=None)
    ap.add_argument("--pictures", type=pathlib.Path, default=None)
    ap.add_argument("--json", type=pathlib.Path, default=None)
    ap.add_argument("--out", type=pathlib.Path, default=None)
    args = ap.parse_args()

    import onnxruntime

    from cocopie_tf.apps import pipeline
    from cocopie_tf.apps.demo_app import format_quality
    from cocopie_tf.benchmark import parse_threads

    threads = parse_threads(args.threads)
    results = {}
    for app in args.apps.split(","):
        settings = pipeline.settings_for(app, args.preset, eval_size=args.size)
        (dense, pruned), record = models(app, settings, args.models)
        # Quality, the delegate-vs-stock check and the pictures (no timing).
        ev = pipeline.evaluate(app, dense, pruned, settings, threads=(), out_dir=args.pictures)
        print(format_quality(ev))
        lat, facts = latency(app, dense, pruned, settings, threads, args.runs)
        results[app] = {"settings": ev["settings"], "training": record, "quality": ev["quality"],
                        "delegate_vs_stock_rel_error": ev["delegate_vs_stock_rel_error"],
                        "pictures": ev.get("pictures", []), "latency": lat, **facts}
    info = machine_info()
    info["onnxruntime"] = onnxruntime.__version__
    info["date"] = datetime.date.today().isoformat()
    text = table(results, threads)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "preset": args.preset, "runs": args.runs,
                                         "results": results}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
