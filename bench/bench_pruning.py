"""Accuracy of pattern pruning on real data: scikit-learn's handwritten digits
(1797 8x8 images, shipped with the package), upsampled to 16x16, a small
VGG-style CNN, fixed stratified train/test split, 3 seeds. Every fit trains
on randomly shifted images (up to 2 pixels each way, new shifts every epoch):
without it the dense model over-fits the 1,437 training images (training
loss ~0.01, test ~96.8%) and the comparison measures regularisation luck
more than pruning (``--legacy``: the earlier protocol, 32x32, no shifts,
20 dense epochs, 10 ADMM + 8 retraining).

Rows: dense; one-shot projection + masked retraining; ADMM (8 patterns + 3.6x
connectivity on the 3x3 convs but the first); ADMM with 4-filter shared
masks; tensorflow-model-optimization magnitude pruning at the same sparsity
(legacy Keras, so in its own process).

    python bench/bench_pruning.py [--seeds 0 1 2] [--out docs/pruning.md]

Learning-rate policy, the same for every row: Adam at a constant 1e-3. With
``--cosine`` every fit instead ends in a cosine decay to 0 over its final
training phase (dense: all its epochs; one-shot and ADMM: the masked
retraining, ``ADMMPruning(retrain_lr_decay="cosine")``; tfmot: all its
epochs, at the target sparsity). One-shot, ADMM and tfmot get the same number of
epochs after the dense training.

Seeds can run in separate processes and be merged afterwards:

    python bench/bench_pruning.py --seeds 0 --json /tmp/s0.json   # (and 1, 2)
    python bench/bench_pruning.py --merge /tmp/s0.json /tmp/s1.json /tmp/s2.json --out docs/pruning.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

DENSE_EPOCHS, ADMM_EPOCHS, RETRAIN_EPOCHS = 40, 18, 12
SIDE = 16  # the 8x8 digits upsampled (pixel repeat) to SIDE x SIDE
AUGMENT, SHIFT = True, 2  # random shifts of up to SHIFT pixels while training
OTHER_SPLITS: list = []  # --other-splits: extra ADMM rows, ADMM epochs of the same budget
LEGACY = dict(SIDE=32, AUGMENT=False, DENSE_EPOCHS=20, ADMM_EPOCHS=10, RETRAIN_EPOCHS=8)
COSINE = False  # --cosine: the alternative learning-rate policy (see the module docstring)
CONNECTIVITY = 3.6


def data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images[..., None].astype("float32") / 16.0
    x = np.repeat(np.repeat(x, SIDE // 8, 1), SIDE // 8, 2)
    return train_test_split(x, d.target.astype("int32"), test_size=0.2, random_state=0,
                            stratify=d.target)


def train_data(x, y, seed, batch_size=64):
    """The training set for ``fit``: plain arrays, or with AUGMENT a tf.data
    pipeline that shifts every image by up to SHIFT pixels each epoch (zero
    fill; reshuffled every epoch, seeded)."""
    if not AUGMENT:
        return dict(x=x, y=y, batch_size=batch_size)
    import tensorflow as tf

    side = x.shape[1]

    def shift(img, label):
        padded = tf.pad(img, [[SHIFT, SHIFT], [SHIFT, SHIFT], [0, 0]])
        return tf.image.random_crop(padded, (side, side, img.shape[-1])), label

    ds = (tf.data.Dataset.from_tensor_slices((x, y))
          .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
          .map(shift).batch(batch_size))
    return dict(x=ds, shuffle=False)


def build(keras):
    inp = keras.Input((SIDE, SIDE, 1))
    h = inp
    for filters in (32, 32, None, 64, 64, None, 128, 128):
        if filters is None:
            h = keras.layers.MaxPooling2D()(h)
        else:
            h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10)(h))


def cosine_decay(keras, epochs, steps_per_epoch, base=1e-3):
    """A callback: the learning rate follows base * (1 + cos(pi * t)) / 2 over
    the fit, t = step / (epochs * steps_per_epoch): the schedule ADMMPruning
    applies to its masked retraining, for the dense and tfmot runs."""

    class CosineDecay(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_ = epoch

        def on_train_batch_begin(self, batch, logs=None):
            t = (self.epoch_ * steps_per_epoch + batch) / (epochs * steps_per_epoch)
            self.model.optimizer.learning_rate.assign(base * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))

    return CosineDecay()


def steps(x, batch_size=64):
    return math.ceil(len(x) / batch_size)


def compile_(keras, model):
    """Adam at 1e-3 for every run alike (dense, one-shot, ADMM, tfmot); the
    cosine decay at the end of each fit is a callback (see cosine_decay)."""
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def conv_sparsity(keras, model):
    """(weight reduction over the pruned 3x3 convs, over all weights, MAC reduction)."""
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    pruned = convs[1:]
    total = sum(l.get_weights()[0].size for l in pruned)
    kept = sum(np.count_nonzero(l.get_weights()[0]) for l in pruned)
    all_w = sum(w.size for w in model.get_weights())
    all_kept = all_w - (total - kept)
    # MACs per conv layer = kernel weights kept x output pixels.
    def macs(layer, nonzero):
        h, w = layer.output.shape[1:3]
        return h * w * nonzero
    dense_macs = sum(macs(l, l.get_weights()[0].size) for l in convs)
    kept_macs = sum(macs(l, np.count_nonzero(l.get_weights()[0])) for l in convs)
    return total / kept, all_w / all_kept, dense_macs / kept_macs


def run_keras3(seed):
    import keras

    import cocopie_tf

    xtr, xte, ytr, yte = data()
    keras.utils.set_random_seed(seed)
    rows = {}
    t0 = time.perf_counter()
    dense = compile_(keras, build(keras))
    dense.fit(**train_data(xtr, ytr, seed), epochs=DENSE_EPOCHS, verbose=0,
              callbacks=[cosine_decay(keras, DENSE_EPOCHS, steps(xtr))] if COSINE else [])
    rows["dense"] = dict(acc=dense.evaluate(xte, yte, verbose=0)[1], time=time.perf_counter() - t0,
                         red=(1.0, 1.0, 1.0))
    post = ADMM_EPOCHS + RETRAIN_EPOCHS
    variants = {
        "one-shot projection + masked retrain": dict(cb=dict(admm_epochs=0, retrain_epochs=post)),
        "ADMM 8 patterns + 3.6x connectivity": dict(cb=dict(admm_epochs=ADMM_EPOCHS,
                                                           retrain_epochs=RETRAIN_EPOCHS)),
        "ADMM, 4-filter shared masks": dict(group=4, cb=dict(admm_epochs=ADMM_EPOCHS,
                                                            retrain_epochs=RETRAIN_EPOCHS)),
    }
    for a in OTHER_SPLITS:  # the same budget split differently between the phases
        variants[f"ADMM, {a} ADMM + {post - a} retraining epochs"] = dict(
            cb=dict(admm_epochs=a, retrain_epochs=post - a))
    for name, v in variants.items():
        keras.utils.set_random_seed(seed)
        t0 = time.perf_counter()
        model = compile_(keras, cocopie_tf.prune_patterns(dense, connectivity=CONNECTIVITY,
                                                          group=v.get("group", 1)))
        model.fit(**train_data(xtr, ytr, seed), epochs=post, verbose=0,
                  callbacks=[cocopie_tf.ADMMPruning(
                      **v["cb"], retrain_lr_decay="cosine" if COSINE else None)])
        stripped = compile_(keras, cocopie_tf.strip_pruning(model))
        rows[name] = dict(acc=stripped.evaluate(xte, yte, verbose=0)[1],
                          time=time.perf_counter() - t0, red=conv_sparsity(keras, stripped))
    return rows


TFMOT = r"""
import os, sys, json, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
sys.path.insert(0, sys.argv[1])
import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras
import bench_pruning as B
seed = int(sys.argv[2]); sparsity = float(sys.argv[3])
for k, v in json.loads(sys.argv[4]).items():  # this run's protocol (module globals)
    setattr(B, k, v)
cosine = B.COSINE
xtr, xte, ytr, yte = B.data()
keras.utils.set_random_seed(seed)
dense = B.compile_(keras, B.build(keras))
dense.fit(**B.train_data(xtr, ytr, seed), epochs=B.DENSE_EPOCHS, verbose=0,
          callbacks=[B.cosine_decay(keras, B.DENSE_EPOCHS, B.steps(xtr))] if cosine else [])
t0 = time.perf_counter()
convs = [l.name for l in dense.layers if isinstance(l, keras.layers.Conv2D)][1:]
schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=10)
def clone(layer):
    if layer.name in convs:
        return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
    return layer
pruned = keras.models.clone_model(dense, clone_function=clone)
pruned = B.compile_(keras, pruned)
pruned.fit(**B.train_data(xtr, ytr, seed), epochs=B.ADMM_EPOCHS + B.RETRAIN_EPOCHS, verbose=0,
           callbacks=[tfmot.sparsity.keras.UpdatePruningStep()] + (
               [B.cosine_decay(keras, B.ADMM_EPOCHS + B.RETRAIN_EPOCHS, B.steps(xtr))] if cosine else []))
stripped = B.compile_(keras, tfmot.sparsity.keras.strip_pruning(pruned))
acc = stripped.evaluate(xte, yte, verbose=0)[1]
print("RESULT " + json.dumps(dict(acc=acc, time=time.perf_counter() - t0,
                                  red=B.conv_sparsity(keras, stripped))))
"""


def protocol():
    """The module globals that define a run (passed on to the tfmot process)."""
    return dict(SIDE=SIDE, AUGMENT=AUGMENT, SHIFT=SHIFT, DENSE_EPOCHS=DENSE_EPOCHS,
                ADMM_EPOCHS=ADMM_EPOCHS, RETRAIN_EPOCHS=RETRAIN_EPOCHS, COSINE=COSINE)


def run_tfmot(seed, sparsity):
    proc = subprocess.run([sys.executable, "-c", TFMOT, str(pathlib.Path(__file__).parent),
                           str(seed), str(sparsity), json.dumps(protocol())],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError("tfmot run failed:\n" + proc.stderr[-3000:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-tfmot", action="store_true")
    ap.add_argument("--cosine", action="store_true",
                    help="cosine learning-rate decay at the end of every fit (see docstring)")
    ap.add_argument("--other-splits", type=int, nargs="*", default=[],
                    help="also run ADMM with these many ADMM epochs (same total budget)")
    ap.add_argument("--legacy", action="store_true",
                    help="the earlier protocol: 32x32, no shifts, 20 + 10 + 8 epochs")
    ap.add_argument("--json", default=None, help="also write the per-seed rows here")
    ap.add_argument("--merge", nargs="+", default=None,
                    help="build the table from --json files of earlier runs instead")
    args = ap.parse_args()
    global COSINE, OTHER_SPLITS
    COSINE = args.cosine
    OTHER_SPLITS = args.other_splits
    if args.legacy:
        globals().update(LEGACY)
    results: dict[str, list] = {}
    if args.merge:
        args.seeds = []
        for path in args.merge:
            saved = json.loads(pathlib.Path(path).read_text())
            args.seeds += saved["seeds"]
            globals().update(saved.get("protocol", {}))
            for k, vs in saved["results"].items():
                results.setdefault(k, []).extend(vs)
    for seed in [] if args.merge else args.seeds:
        rows = run_keras3(seed)
        admm = rows["ADMM 8 patterns + 3.6x connectivity"]
        if not args.no_tfmot:
            rows["tfmot magnitude pruning, same sparsity"] = run_tfmot(seed, 1 - 1 / admm["red"][0])
        for k, v in rows.items():
            results.setdefault(k, []).append(v)
            print(seed, k, json.dumps(v), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"seeds": args.seeds,
                                                     "protocol": protocol(),
                                                     "results": results}))
    shifts = f"random shifts of up to {SHIFT} px in every fit" if AUGMENT else "no augmentation"
    lines = [
        f"Digits {SIDE}x{SIDE} ({shifts}), {DENSE_EPOCHS} dense epochs, then {ADMM_EPOCHS} ADMM + {RETRAIN_EPOCHS} "
        f"masked-retraining epochs (one-shot and tfmot: {ADMM_EPOCHS + RETRAIN_EPOCHS} epochs of "
        f"retraining); seeds {args.seeds}; test set 360 images. "
        + ("Adam 1e-3; every fit ends in a cosine decay to 0 (dense: its "
           f"{DENSE_EPOCHS} epochs; one-shot, ADMM: the masked retraining; tfmot: its "
           f"{ADMM_EPOCHS + RETRAIN_EPOCHS} epochs)." if COSINE else "Constant Adam 1e-3."),
        "",
        "| method | test accuracy % (mean ± std) | per seed | weight red. (pruned convs) "
        "| weight red. (model) | MAC red. (convs) | pruning time s (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, vs in results.items():
        acc = np.array([v["acc"] for v in vs]) * 100
        red = np.array([v["red"] for v in vs]).mean(0)
        t = np.mean([v["time"] for v in vs])
        lines.append(f"| {k} | {acc.mean():.2f} ± {acc.std():.2f} "
                     f"| {' / '.join(f'{a:.2f}' for a in acc)} | {red[0]:.2f}x | {red[1]:.2f}x "
                     f"| {red[2]:.2f}x | {t:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
