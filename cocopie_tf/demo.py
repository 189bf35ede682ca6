"""``cocopie-tf demo``: train on the digits -> ADMM pattern pruning inside
fit -> strip -> report -> convert -> run with and without the delegate."""

from __future__ import annotations

import pathlib
import statistics

import numpy as np

from cocopie_tf._timing import alternate, summary

TOLERANCE = 1e-5


def load_digits_32():
    """scikit-learn's handwritten digits (real data shipped with the package),
    upsampled 4x to 32x32, with a fixed stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images[..., None].astype("float32") / 16.0
    x = np.repeat(np.repeat(x, 4, 1), 4, 2)
    return train_test_split(x, d.target.astype("int32"), test_size=0.2, random_state=0,
                            stratify=d.target)


def build_model():
    """A small VGG-style CNN for 32x32 digits."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 1), name="image")
    x = inp
    for filters in (32, None, 64, 64, None, 128):
        if filters is None:
            x = keras.layers.MaxPooling2D(2)(x)
        else:
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name="digits_cnn")


def _compile(model):
    import keras

    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def run(threads: int = 1, runs: int = 20, output: str | None = None, dense_epochs: int = 5,
        prune_epochs: int = 6) -> int:
    from ai_edge_litert.interpreter import Interpreter as LiteRTInterpreter

    from cocopie_tf import lite

    import cocopie_tf

    xtr, xte, ytr, yte = load_digits_32()
    model = _compile(build_model())
    print(f"1. train a dense {model.name} ({model.count_params():,} parameters) on "
          f"{len(xtr)} digits")
    model.fit(xtr, ytr, epochs=dense_epochs, batch_size=64, verbose=0)
    dense_acc = model.evaluate(xte, yte, verbose=0)[1]
    print(f"   test accuracy {dense_acc:.2%}")

    print("2. ADMM pattern pruning inside fit: 8 patterns, 3.6x connectivity, "
          "masks shared by 4 filters")
    pruned = _compile(cocopie_tf.prune_patterns(model, connectivity=3.6, group=4))
    pruned.fit(xtr, ytr, epochs=prune_epochs, batch_size=64, verbose=2,
               callbacks=[cocopie_tf.ADMMPruning()])
    model = _compile(cocopie_tf.strip_pruning(pruned))
    pruned_acc = model.evaluate(xte, yte, verbose=0)[1]
    print(f"   test accuracy after pruning {pruned_acc:.2%} (dense {dense_acc:.2%})")
    print(cocopie_tf.pruning_report(model))

    print("3. convert to a stock .tflite file with the pattern metadata, and inspect it")
    tflite_bytes = cocopie_tf.convert(model)
    from cocopie_tf.cli import inspect_text

    print(inspect_text(tflite_bytes, "digits_cnn.tflite"))
    if output:
        from cocopie_tf._files import write_file

        try:
            path = write_file(output, tflite_bytes, replace=False)
        except OSError as e:
            print(f"error: {e}")
            return 2
        print(f"wrote {path}")

    print("\n4. run on stock LiteRT (XNNPACK) and with the cocopie delegate")
    x = xte[:1]
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
          f"{'executed MACs':>14}  metadata")
    for e in report:
        print(f"  {e['node_index']:>4}  {e['op']:<8} {e['kernel']:<30} {e['patterns']:>8} "
              f"{e['dense_macs']:>12,} {e['executed_macs']:>14,}  {e['metadata']}")
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
