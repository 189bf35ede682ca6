"""Latency of the cocopie delegate vs stock LiteRT (XNNPACK) on the same
.tflite file: alternating runs in one process, medians and quartiles.

    python bench/bench_delegate.py [--runs 15] [--out docs/benchmarks.md] [--resnet50]

Models: one 3x3 conv 56x56x128->128 (8 patterns + 2x connectivity, with and
without 4-filter shared masks), VGG-16 CIFAR 32x32 (8 patterns + 3.6x
connectivity on every 3x3 conv but the first), and the unpruned models, which
the delegate must not slow down (claim=auto leaves them to XNNPACK).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from pruned_models import prune_model  # noqa: E402
from timing import alternate, feed, machine_info, make_interpreters, summary  # noqa: E402


def one_conv(group, connectivity=2.0):
    import keras

    keras.utils.set_random_seed(0)
    i = keras.Input((56, 56, 128), batch_size=1)
    m = keras.Model(i, keras.layers.Conv2D(128, 3, padding="same")(i))
    prune_model(m, skip_first=False, connectivity=connectivity, group=group)
    return m


def vgg16(prune, group=1):
    import keras

    keras.utils.set_random_seed(0)
    m = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10,
                                 classifier_activation=None)
    if prune:
        prune_model(m, connectivity=3.6, group=group)
    return m


def app(name, size):
    import keras

    keras.utils.set_random_seed(0)
    return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))


def convert(model):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def measure(tfl, threads, runs, options, keras_model=None):
    """Alternates XNNPACK, cocopie (and ONNX Runtime on the same weights when
    `keras_model` is given); returns summaries, error, claim facts."""
    stock, ours = make_interpreters(tfl, threads, **options)
    feed(stock)
    feed(ours)
    stock.invoke()
    ours.invoke()
    a = stock.get_tensor(stock.get_output_details()[0]["index"]).astype(np.float64)
    b = ours.get_tensor(ours.get_output_details()[0]["index"]).astype(np.float64)
    err = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    runners = [stock, ours]
    if keras_model is not None:
        from onnx_export import keras_to_onnx
        from runners import OrtRunner

        x = stock.get_tensor(stock.get_input_details()[0]["index"])
        ort = OrtRunner(keras_to_onnx(keras_model), threads, x)
        ort.invoke()
        ort_err = float(np.linalg.norm(ort.output - a) / np.linalg.norm(a))
        assert ort_err < 1e-4, f"ONNX export disagrees with TFLite: {ort_err}"
        runners.append(ort)
    times = alternate(runners, runs=runs)
    rep = ours.delegate_report()
    dense = sum(e["dense_macs"] for e in rep)
    executed = sum(e["executed_macs"] for e in rep)
    ort_ms = summary(times[2]) if keras_model is not None else None
    return summary(times[0]), summary(times[1]), ort_ms, err, len(rep), dense, executed


def pruned_app(name, size):
    m = app(name, size)
    prune_model(m, connectivity=3.6)
    return m


def chart(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * len(names)))
    y = np.arange(len(names))
    for k, threads in enumerate((1, 2)):
        vals = [next((r["ratio"] for r in rows if r["model"] == n and r["threads"] == threads), 0)
                for n in names]
        ax.barh(y + (k - 0.5) * 0.38, vals, height=0.38, label=f"{threads} thread(s)")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over LiteRT + XNNPACK (same .tflite, median of alternating runs)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", default=None, help="write a markdown table here")
    ap.add_argument("--json", default=None, help="write the measurements here")
    ap.add_argument("--chart", default=None, help="write a PNG bar chart here")
    ap.add_argument("--resnet50", action="store_true", help="also ResNet-50 224 (slow)")
    ap.add_argument("--no-tune", action="store_true",
                    help="default kernel knobs (tune=off) instead of tuning each layer first")
    args = ap.parse_args()

    import tempfile

    tune_dir = tempfile.TemporaryDirectory(prefix="cocopie_bench_tune_")  # removed at exit
    cache = pathlib.Path(tune_dir.name) / "tuning.tsv"
    options = {"tune": "off"} if args.no_tune else {"tune": "on", "tune_cache": str(cache)}
    cases = [
        ("conv 56x56x128->128, 8 pat + 2x conn", lambda: one_conv(1), False),
        ("conv 56x56x128->128, 8 pat + 2x conn, 4-filter shared", lambda: one_conv(4), False),
        ("VGG-16 CIFAR, 8 pat + 3.6x conn", lambda: vgg16(True), True),
        ("VGG-16 CIFAR, 8 pat + 3.6x conn, 4-filter shared", lambda: vgg16(True, group=4), True),
        ("VGG-16 CIFAR, unpruned", lambda: vgg16(False), True),
        ("MobileNetV2 224, unpruned", lambda: app("MobileNetV2", 224), False),
    ]
    if args.resnet50:
        cases += [("ResNet-50 224, 8 pat + 3.6x conn", lambda: pruned_app("ResNet50", 224), False),
                  ("ResNet-50 224, unpruned", lambda: app("ResNet50", 224), False)]
    rows = []
    models = []
    for name, build, with_ort in cases:
        m = build()
        models.append((name, convert(m), m if with_ort else None))
    for threads in (1, 2):  # all 1-thread runs first, then all 2-thread runs
        for name, tfl, km in models:
            s, o, ort, err, claimed, dense, executed = measure(tfl, threads, args.runs, options, km)
            row = dict(model=name, threads=threads, xnnpack=s, cocopie=o, ort=ort,
                       ratio=s["median"] / o["median"], rel_error=err, claimed=claimed,
                       mac_reduction=(dense / executed) if executed else None)
            rows.append(row)
            print(json.dumps(row), flush=True)

    info = machine_info()
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    cmd = "python bench/bench_delegate.py --runs %d%s%s" % (
        args.runs, " --resnet50" if args.resnet50 else "", " --no-tune" if args.no_tune else "")
    lines = [
        f"Measured {datetime.date.today()} with `{cmd}`"
        + (" (kernel knobs tuned per layer first, `tune=on`)." if not args.no_tune else "."),
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "| model | threads | XNNPACK ms (q1-q3) | cocopie ms (q1-q3) | speed-up | ONNX Runtime ms | vs ORT | claimed nodes | MAC reduction (claimed) | rel. error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, o, t = r["xnnpack"], r["cocopie"], r["ort"]
        red = f"{r['mac_reduction']:.1f}x" if r["mac_reduction"] else "-"
        ort = f"{t['median']:.2f} ({t['q1']:.2f}-{t['q3']:.2f})" if t else "-"
        vs = f"{t['median'] / o['median']:.2f}x" if t else "-"
        lines.append(
            f"| {r['model']} | {r['threads']} | {s['median']:.2f} ({s['q1']:.2f}-{s['q3']:.2f}) "
            f"| {o['median']:.2f} ({o['q1']:.2f}-{o['q3']:.2f}) | {r['ratio']:.2f}x | {ort} | {vs} "
            f"| {r['claimed']} | {red} | {r['rel_error']:.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(dict(machine=info, rows=rows), indent=1))
    if args.chart:
        chart(rows, args.chart)


if __name__ == "__main__":
    main()
