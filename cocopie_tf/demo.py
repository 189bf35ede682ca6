"""``cocopie-tf demo``: build -> pattern-prune -> convert -> run with and
without the delegate.

Until the ADMM training issue lands, the demo prunes by one-shot projection
(the projection ADMM converges to): random weights, so only speed and
agreement are shown, not accuracy."""

from __future__ import annotations

import contextlib
import io
import pathlib
import statistics

import numpy as np

from cocopie_tf._timing import alternate, summary

TOLERANCE = 1e-5


def build_model():
    """A small VGG-style CNN on 64x64 RGB input (random, seeded weights)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 3), batch_size=1, name="image")
    x = inp
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name="demo_cnn")


def prune(model, group: int = 4, connectivity: float = 3.6) -> int:
    """Pattern + connectivity pruning of every 3x3 Conv2D but the first."""
    import keras

    from cocopie_tf.patterns import prune_kernel

    convs = [l for l in model.layers if type(l) is keras.layers.Conv2D and l.kernel_size == (3, 3)]
    for layer in convs[1:]:
        weights = layer.get_weights()
        weights[0] = prune_kernel(weights[0], connectivity=connectivity, group=group)
        layer.set_weights(weights)
    return len(convs) - 1


def sample_image() -> np.ndarray:
    """A deterministic synthetic picture: smooth shapes plus a little noise."""
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    r = np.sin(6 * xx) * np.cos(4 * yy)
    g = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1).astype(np.float64)
    b = xx * yy
    noise = np.random.default_rng(0).normal(0, 0.05, (64, 64, 3))
    return (np.stack([r, g, b], -1) + noise)[None].astype(np.float32)


def run(threads: int = 1, runs: int = 20, output: str | None = None) -> int:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter as LiteRTInterpreter

    from cocopie_tf import lite

    model = build_model()
    print(f"model: {model.name}, {model.count_params():,} parameters")
    n = prune(model)
    print(f"pruned {n} 3x3 convolutions: 8 patterns (4 of 9 weights), 3.6x connectivity, "
          "masks shared by groups of 4 filters")
    with contextlib.redirect_stdout(io.StringIO()):  # the converter's chatter
        tflite_bytes = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    print(f"converted: {len(tflite_bytes):,} bytes of .tflite")
    if output:
        path = pathlib.Path(output)
        if path.exists():
            print(f"error: {path} exists; not overwriting it")
            return 2
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(tflite_bytes)
        tmp.replace(path)
        print(f"wrote {path}")

    x = sample_image()
    stock = LiteRTInterpreter(model_content=tflite_bytes, num_threads=threads)
    stock.allocate_tensors()
    ours = lite.Interpreter(model_content=tflite_bytes, num_threads=threads)
    ours.allocate_tensors()
    outs = []
    for it in (stock, ours):
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]).astype(np.float64))
    err = float(np.linalg.norm(outs[1] - outs[0]) / np.linalg.norm(outs[0]))

    report = ours.delegate_report()
    print(f"\ndelegate claimed {len(report)} nodes:")
    print(f"  {'node':>4}  {'op':<8} {'kernel':<30} {'patterns':>8} {'dense MACs':>12} "
          f"{'executed MACs':>14}")
    for e in report:
        print(f"  {e['node_index']:>4}  {e['op']:<8} {e['kernel']:<30} {e['patterns']:>8} "
              f"{e['dense_macs']:>12,} {e['executed_macs']:>14,}")
    print("  (nodes not listed run on TFLite's own kernels, XNNPACK)")

    stock_ms, ours_ms = alternate([stock, ours], runs=runs, warmup=3)
    print(f"\nlatency, {threads} thread(s), {runs} alternating runs (median [q1, q3]):")
    for name, ms in (("LiteRT (XNNPACK)", stock_ms), ("LiteRT + cocopie", ours_ms)):
        st = summary(ms)
        med, q1, q3 = st["median"], st["q1"], st["q3"]
        print(f"  {name:<18} {med:8.2f} ms  [{q1:.2f}, {q3:.2f}]")
    print(f"  speed-up: {statistics.median(stock_ms) / statistics.median(ours_ms):.2f}x")

    ok = err <= TOLERANCE
    print(f"\noutputs agree: relative error {err:.2e} ({'<=' if ok else '>'} {TOLERANCE:g})")
    return 0 if ok else 1
