"""CoCo-Tune vs the baseline pruning search on the digits data.

A small CNN (4 conv-pair modules; each module's first conv is filter-pruned
by L1 norm) trained on scikit-learn's handwritten digits at 32x32. Every
combination of per-module rates {0.3, 0.5, 0.7} is a candidate (81). Both
searches use the same code path (``cocopie_tf.tune.search``), the same
objective (smallest model with validation accuracy >= target), the same
order (smallest first), the same per-candidate budget (at most
FINETUNE_STEPS steps, evaluated every EVAL_EVERY steps and before training,
stopping as soon as the target is met) and stop at the first candidate that
meets it:

* baseline: every candidate starts from the dense model's L1-pruned weights;
* CoCo-Tune: tuning blocks chosen by Sequitur are pre-trained teacher-student
  first (counted in its wall time) and each candidate is assembled from them.

    python bench/bench_tune.py [--target-drop 0.01] [--out results.json] [--plot tune.png]

Prints both wall times, the speedup, the number of candidates each trained,
and both chosen models (parameters, validation and test accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

DENSE_EPOCHS = 20
FINETUNE_STEPS, EVAL_EVERY = 60, 20
PRETRAIN_EPOCHS = 4
RATES = (0.3, 0.5, 0.7)


def data():
    """Train / validation / test: the package's fixed digits split, with 20% of
    its training part held out for the objective."""
    from sklearn.model_selection import train_test_split

    from cocopie_tf.demo import load_digits_32

    xtr, xte, ytr, yte = load_digits_32()
    xtr, xva, ytr, yva = train_test_split(xtr, ytr, test_size=0.2, random_state=0, stratify=ytr)
    return xtr, ytr, xva, yva, xte, yte


def build(keras):
    inp = keras.Input((32, 32, 1))
    h = inp
    for filters in (16, 16, None, 32, 32, None, 48, 48, None, 64, 64):
        if filters is None:
            h = keras.layers.MaxPooling2D()(h)
        else:
            h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10)(h))


def accuracy(keras, model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=256, verbose=0), -1) == y))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-drop", type=float, default=0.01,
                    help="objective: validation accuracy >= dense accuracy - this (0.01)")
    ap.add_argument("--out", type=pathlib.Path, help="also write the figures as JSON here")
    ap.add_argument("--plot", type=pathlib.Path, help="accuracy-vs-size plot of both searches")
    ap.add_argument("--force", action="store_true", help="replace existing --out / --plot files")
    args = ap.parse_args(argv)
    for p in (args.out, args.plot):
        if p is not None and p.exists() and not args.force:
            sys.exit(f"{p} exists; pass --force to replace it")

    import keras

    from cocopie_tf import tune

    xtr, ytr, xva, yva, xte, yte = data()
    keras.utils.set_random_seed(0)
    dense = build(keras)
    dense.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.perf_counter()
    dense.fit(xtr, ytr, epochs=DENSE_EPOCHS, batch_size=64, verbose=0)
    dense_time = time.perf_counter() - t0
    dense_val, dense_test = accuracy(keras, dense, xva, yva), accuracy(keras, dense, xte, yte)
    target = round(dense_val - args.target_drop, 4)
    modules = tune.find_modules(dense)
    cands = tune.sample_candidates(len(modules), RATES)
    sel = tune.select_blocks(cands)
    print(f"dense: {dense.count_params():,} parameters, val {dense_val:.2%}, test {dense_test:.2%} "
          f"({dense_time:.0f} s); objective: smallest with val accuracy >= {target:.2%}")
    print(f"{len(modules)} modules: {[m.name for m in modules]}; {len(cands)} candidates; "
          f"{len(sel.blocks)} tuning blocks "
          f"({sum(len(b.rates) > 1 for b in sel.blocks)} multi-module)")

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, use_blocks in (("CoCo-Tune", True), ("baseline", False)):
            t0 = time.perf_counter()
            res = tune.search(dense, xtr, ytr, xva, yva, candidates=cands, target=target,
                              directory=pathlib.Path(tmp) / name, finetune_steps=FINETUNE_STEPS,
                              eval_every=EVAL_EVERY, pretrain_epochs=PRETRAIN_EPOCHS,
                              use_blocks=use_blocks, progress=False)
            wall = time.perf_counter() - t0
            chosen = res.model()
            runs[name] = dict(
                wall_s=wall, pretrain_s=res.pretrain_seconds, finetune_s=res.finetune_seconds,
                trained=res.trained, met=res.met, message=res.message,
                chosen=res.chosen["candidate"], size=res.chosen["size"],
                val=res.chosen["accuracy"], test=accuracy(keras, chosen, xte, yte),
                steps=sum(r["steps"] for r in res.results),
                points=[(r["size"], r["accuracy"], r["met"]) for r in res.results])
            print(f"\n{name}: {res.message}")
            print(res.table())
    c, b = runs["CoCo-Tune"], runs["baseline"]
    speed = b["wall_s"] / c["wall_s"]
    print(f"\n{'':<10} {'wall s':>7} {'pretrain s':>10} {'trained':>7} {'steps':>6} "
          f"{'chosen':<28} {'params':>8} {'val':>7} {'test':>7}")
    for name, r in runs.items():
        print(f"{name:<10} {r['wall_s']:>7.1f} {r['pretrain_s']:>10.1f} {r['trained']:>7} "
              f"{r['steps']:>6} {r['chosen']:<28} {r['size']:>8,} {r['val']:>7.2%} "
              f"{r['test']:>7.2%}")
    same = c["met"] and c["size"] <= b["size"]
    print(f"speedup (baseline wall / CoCo-Tune wall): {speed:.2f}x; CoCo-Tune's answer is "
          f"{'at least as small and meets the objective' if same else 'NOT as good'}")
    if args.out:
        from cocopie_tf.tune.search import _write_json

        _write_json(args.out, dict(dense=dict(params=dense.count_params(), val=dense_val,
                                              test=dense_test), target=target,
                                   candidates=len(cands), blocks=len(sel.blocks),
                                   speedup=speed, runs=runs))
    if args.plot:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from cocopie_tf.tune.search import _write_atomic

        fig, ax = plt.subplots(figsize=(6, 4))
        for (name, r), col in zip(runs.items(), ("tab:blue", "tab:gray")):
            pts = np.array([(s, a) for s, a, _ in r["points"]])
            ax.scatter(pts[:, 0], pts[:, 1], s=14, c=col, label=f"{name} ({r['trained']} trained)")
            ax.scatter([r["size"]], [r["val"]], s=140, facecolors="none", edgecolors=col,
                       linewidths=2)
        ax.axhline(target, color="tab:red", ls=":", lw=1, label="target")
        ax.set_xlabel("parameters")
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        _write_atomic(args.plot, buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
