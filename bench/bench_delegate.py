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


def measure(tfl, threads, runs):
    stock, ours = make_interpreters(tfl, threads)
    feed(stock)
    feed(ours)
    stock.invoke()
    ours.invoke()
    a = stock.get_tensor(stock.get_output_details()[0]["index"]).astype(np.float64)
    b = ours.get_tensor(ours.get_output_details()[0]["index"]).astype(np.float64)
    err = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    t_stock, t_ours = alternate([stock, ours], runs=runs)
    rep = ours.delegate_report()
    dense = sum(e["dense_macs"] for e in rep)
    executed = sum(e["executed_macs"] for e in rep)
    return summary(t_stock), summary(t_ours), err, len(rep), dense, executed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", default=None, help="write a markdown table here")
    ap.add_argument("--resnet50", action="store_true", help="also ResNet-50 224 (slow)")
    args = ap.parse_args()

    cases = [
        ("conv 56x56x128->128, 8 pat + 2x conn", lambda: one_conv(1)),
        ("conv 56x56x128->128, 8 pat + 2x conn, 4-filter shared", lambda: one_conv(4)),
        ("VGG-16 CIFAR, 8 pat + 3.6x conn", lambda: vgg16(True)),
        ("VGG-16 CIFAR, 8 pat + 3.6x conn, 4-filter shared", lambda: vgg16(True, group=4)),
        ("VGG-16 CIFAR, unpruned", lambda: vgg16(False)),
        ("MobileNetV2 224, unpruned", lambda: app("MobileNetV2", 224)),
    ]
    if args.resnet50:
        cases.append(("ResNet-50 224, unpruned", lambda: app("ResNet50", 224)))
    rows = []
    models = [(name, convert(build())) for name, build in cases]
    for threads in (1, 2):  # all 1-thread runs first, then all 2-thread runs
        for name, tfl in models:
            s, o, err, claimed, dense, executed = measure(tfl, threads, args.runs)
            row = dict(model=name, threads=threads, xnnpack=s, cocopie=o,
                       ratio=s["median"] / o["median"], rel_error=err, claimed=claimed,
                       mac_reduction=(dense / executed) if executed else None)
            rows.append(row)
            print(json.dumps(row), flush=True)

    info = machine_info()
    lines = [
        f"Measured {datetime.date.today()} with `python bench/bench_delegate.py --runs {args.runs}`.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "| model | threads | XNNPACK ms (q1-q3) | cocopie ms (q1-q3) | speed-up | claimed nodes | MAC reduction (claimed) | rel. error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, o = r["xnnpack"], r["cocopie"]
        red = f"{r['mac_reduction']:.1f}x" if r["mac_reduction"] else "-"
        lines.append(
            f"| {r['model']} | {r['threads']} | {s['median']:.2f} ({s['q1']:.2f}-{s['q3']:.2f}) "
            f"| {o['median']:.2f} ({o['q1']:.2f}-{o['q3']:.2f}) | {r['ratio']:.2f}x | {r['claimed']} "
            f"| {red} | {r['rel_error']:.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
