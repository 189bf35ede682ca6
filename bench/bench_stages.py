"""Where a whole model gains or loses against XNNPACK, stage by stage.

    python bench/bench_stages.py [--model mobilenetv2|resnet50] [--threads 1 2] \\
        [--rounds 40] [--settle-ms 3] [--json out.json] [--out table.md]

The peer benchmark times whole models; `profile=True` times the delegate's
own nodes but not XNNPACK's.  This script cuts the model (the peer
benchmark's pruned weights) after each stage (a block of layers ending at a
block's output), converts every prefix (input -> that stage's output) to a
.tflite, and times stock LiteRT + XNNPACK and the cocopie delegate on every
prefix, each once per round in alternating order, with the peer benchmark's
untimed busy wait before every run.  A stage's time is its prefix's time
minus the previous prefix's, taken within one round (both saw the same host
speed), and the table gives the median of those per-round differences, their
ratio, and each prefix's paired ratio (median of the per-round XNNPACK /
cocopie ratios, 95% interval, bench/ratios.py).  Every prefix's outputs are
checked against stock LiteRT before timing.

What a stage's figure includes: a prefix ends at a graph output, so the
delegate pays one layout change back to NHWC there (planar -> NHWC of the
stage's output); consecutive prefixes' changes mostly cancel in the
difference, not exactly (a stage whose output is smaller than its input's
gains a little).  Prefixes are run cold: the other prefixes and the other
runtime ran between two runs of one, as in the peer benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from ratios import median_ci  # noqa: E402

# (label, name of the Keras layer whose output ends the stage); None: the
# whole model.  Layer names are Keras 3's for keras.applications.
STAGES = {
    "mobilenetv2": [
        ("112x112: stem, block 0", "expanded_conv_project_BN"),
        ("112->56: block 1", "block_1_project_BN"),
        ("56x56: block 2", "block_2_add"),
        ("56->28: block 3", "block_3_project_BN"),
        ("28x28: blocks 4-5", "block_5_add"),
        ("28->14: block 6", "block_6_project_BN"),
        ("14x14: blocks 7-9", "block_9_add"),
        ("14x14: blocks 10-12", "block_12_add"),
        ("14->7: block 13", "block_13_project_BN"),
        ("7x7: blocks 14-16", "block_16_project_BN"),
        ("7x7: 1x1 conv 320->1280", "out_relu"),
        ("head: mean, classifier", None),
    ],
    "resnet50": [
        ("stem: conv 7x7, pool", "pool1_pool"),
        ("56x56: conv2", "conv2_block3_out"),
        ("28x28: conv3", "conv3_block4_out"),
        ("14x14: conv4", "conv4_block6_out"),
        ("7x7: conv5", "conv5_block3_out"),
        ("head: mean, classifier", None),
    ],
}


def peer_model(name: str):
    """The peer benchmark's pruned model of that name."""
    import bench_peers as bp

    if name == "mobilenetv2":
        return bp.app("MobileNetV2", 224, False, prune_1x1_convs=True, prune_dw=True)
    if name == "resnet50":
        return bp.app("ResNet50", 224, True, prune_1x1_convs=True)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(STAGES)}")


def prefix_models(model, cuts):
    """One Keras model per cut: the model's input -> the output of the layer
    named by the cut (None: the whole model).  `model` may wrap one nested
    functional model (keras.applications under a fixed-batch input), whose
    layers the names then refer to."""
    import keras

    inner = model
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) == 1:
        inner = nested[0]
    out = []
    for cut in cuts:
        if cut is None:
            out.append(model)
            continue
        try:
            layer = inner.get_layer(cut)
        except ValueError:
            raise ValueError(f"the model has no layer named {cut!r}") from None
        sub = keras.Model(inner.inputs, layer.output)
        if inner is model:
            out.append(sub)
        else:
            x = keras.Input(model.inputs[0].shape[1:], batch_size=model.inputs[0].shape[0])
            out.append(keras.Model(x, sub(x)))
    return out


def stage_rows(labels, times):
    """times[round, prefix, runtime] (runtime 0: XNNPACK, 1: cocopie), in ms
    -> one dict per stage: the medians of the per-round stage times (prefix
    minus the previous prefix, the same round), their ratio, and the prefix's
    paired ratio with its interval."""
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 3 or t.shape[1] != len(labels) or t.shape[2] != 2:
        raise ValueError(f"times must be [rounds, {len(labels)} prefixes, 2 runtimes], not {t.shape}")
    stage = np.diff(np.concatenate([np.zeros_like(t[:, :1]), t], axis=1), axis=1)
    rows = []
    for i, label in enumerate(labels):
        sx, sc = float(np.median(stage[:, i, 0])), float(np.median(stage[:, i, 1]))
        est, lo, hi = median_ci(t[:, i, 0] / t[:, i, 1])
        rows.append(dict(stage=label, xnnpack_ms=sx, cocopie_ms=sc,
                         stage_ratio=sx / sc if sx > 0 and sc > 0 else None,  # noise can make a difference <= 0
                         prefix_xnnpack_ms=float(np.median(t[:, i, 0])),
                         prefix_cocopie_ms=float(np.median(t[:, i, 1])),
                         prefix_ratio=est, prefix_ratio_ci=[lo, hi]))
    return rows


def table(rows, threads) -> str:
    def ci(r):
        lo, hi = r["prefix_ratio_ci"]
        return "" if lo is None else f" ({lo:.2f}-{hi:.2f})"

    lines = [f"{threads} thread(s): stage times (median of per-round differences) and the prefix up to it",
             "",
             "| stage | XNNPACK ms | cocopie ms | stage ratio | prefix XNNPACK | prefix cocopie | prefix ratio (95%) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        sr = "n/a" if r["stage_ratio"] is None else f"{r['stage_ratio']:.2f}"
        lines.append(f"| {r['stage']} | {r['xnnpack_ms']:.3f} | {r['cocopie_ms']:.3f} | {sr} | "
                     f"{r['prefix_xnnpack_ms']:.3f} | {r['prefix_cocopie_ms']:.3f} | "
                     f"{r['prefix_ratio']:.2f}{ci(r)} |")
    return "\n".join(lines)


def measure(tfls, threads, rounds, settle_ms, tune_cache=None):
    """times[round, prefix, runtime] for the .tflite bytes of each prefix."""
    from ai_edge_litert.interpreter import Interpreter

    from cocopie_tf import lite

    pairs = []
    for i, tfl in enumerate(tfls):
        x = None
        pair = []
        for make in (lambda: Interpreter(model_content=tfl, num_threads=threads),
                     lambda: lite.Interpreter(model_content=tfl, num_threads=threads, tune="on",
                                              tune_cache=tune_cache)):
            it = make()
            it.allocate_tensors()
            d = it.get_input_details()[0]
            if x is None:
                x = np.random.default_rng(0).uniform(-1, 1, d["shape"]).astype(np.float32)
            it.set_tensor(d["index"], x)
            it.invoke()
            pair.append(it)
        ref, got = (it.get_tensor(it.get_output_details()[0]["index"]).astype(np.float64) for it in pair)
        err = np.linalg.norm(ref - got) / max(np.linalg.norm(ref), 1e-30)
        if not err <= 1e-4:
            raise AssertionError(f"prefix {i}: the delegate's output differs from LiteRT's by {err:.2e}")
        pairs.append(pair)
    for pair in pairs:  # warm-up (code generated, pages touched)
        for it in pair:
            for _ in range(3):
                it.invoke()
    times = np.zeros((rounds, len(pairs), 2))
    for r in range(rounds):
        for i, pair in enumerate(pairs):
            order = (0, 1) if (r + i) % 2 == 0 else (1, 0)
            for k in order:
                end = time.perf_counter() + settle_ms / 1e3
                while time.perf_counter() < end:
                    pass
                t0 = time.perf_counter()
                pair[k].invoke()
                times[r, i, k] = (time.perf_counter() - t0) * 1e3
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mobilenetv2", choices=sorted(STAGES))
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--settle-ms", type=float, default=3.0)
    ap.add_argument("--tune-cache", default=None, help="the delegate's tuning cache (default: its own)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.rounds < 1 or any(t < 1 for t in args.threads):
        ap.error("--rounds and --threads must be positive")
    from bench_peers import convert
    from timing import machine_info

    labels = [label for label, _ in STAGES[args.model]]
    models = prefix_models(peer_model(args.model), [cut for _, cut in STAGES[args.model]])
    tfls = [convert(m) for m in models]
    result = dict(model=args.model, machine=machine_info(), rounds=args.rounds, blocks=[])
    text = []
    for threads in args.threads:
        times = measure(tfls, threads, args.rounds, args.settle_ms, args.tune_cache)
        rows = stage_rows(labels, times)
        result["blocks"].append(dict(threads=threads, rows=rows, times=np.round(times, 4).tolist()))
        text.append(table(rows, threads))
        print(text[-1] + "\n", flush=True)
    from cocopie_tf._files import write_file

    if args.json:  # atomic: a file given twice is replaced whole or not at all
        write_file(args.json, json.dumps(result, indent=1).encode(), replace=True)
    if args.out:
        write_file(args.out, ("\n\n".join(text) + "\n").encode(), replace=True)


if __name__ == "__main__":
    main()
