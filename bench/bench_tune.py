"""CoCo-Tune vs the baseline pruning search on the digits data.

A small CNN (4 conv-pair modules; each module's first conv is filter-pruned
by L1 norm) trained on scikit-learn's handwritten digits (8x8 images, the
package's 32x32 split averaged down to 16x16: the same information at a
quarter of the compute). Every combination of per-module rates
{0.3, 0.5, 0.7} is a candidate (81). Both searches use the same code path
(``cocopie_tf.tune.search``), the same objective (the smallest model with
validation accuracy >= target), the same order (smallest first) and the
same per-candidate budget (at most FINETUNE_STEPS steps of batch 64,
evaluated before training and every EVAL_EVERY steps, stopping as soon as
the target is met), and both explore EVERY candidate (``explore="all"``):
the answer is the same as stopping at the first candidate that meets the
objective, and the whole accuracy-vs-size curve is measured.

* baseline: every candidate starts from the dense model's L1-pruned weights;
* CoCo-Tune: tuning blocks chosen by Sequitur are pre-trained teacher-student
  first (counted in its wall time) and each candidate is assembled from them.

    python bench/bench_tune.py [--target-drop 0.005] [--out results.json] [--plot tune.png]

target = dense validation accuracy - drop. Prints both wall times, the
speedup, the number of candidates each explored and trained, the
fine-tuning steps, and both chosen models (parameters, validation and test
accuracy). Also reports, from the same runs, what a search stopping at the
first candidate that meets the objective would have cost (pre-training plus
the candidates ranked up to its answer).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

DENSE_EPOCHS = 30
FINETUNE_STEPS, EVAL_EVERY = 40, 10
PRETRAIN_EPOCHS = 2
RATES = (0.3, 0.5, 0.7)
SIDE = 16


def data():
    """Train / validation / test: the package's fixed digits split at 16x16,
    with 20% of its training part held out for the objective."""
    from sklearn.model_selection import train_test_split

    from cocopie_tf.demo import load_digits_32

    xtr, xte, ytr, yte = load_digits_32()
    f = xtr.shape[1] // SIDE

    def down(x):
        return x.reshape(len(x), SIDE, f, SIDE, f, -1).mean(axis=(2, 4)).astype(np.float32)

    xtr, xte = down(xtr), down(xte)
    xtr, xva, ytr, yva = train_test_split(xtr, ytr, test_size=0.2, random_state=0, stratify=ytr)
    return xtr, ytr, xva, yva, xte, yte


def build(keras):
    inp = keras.Input((SIDE, SIDE, 1))
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
    ap.add_argument("--target-drop", type=float, nargs="+", default=[0.005],
                    help="objectives: validation accuracy >= dense accuracy - this (0.005)")
    ap.add_argument("--candidates", type=int, default=None,
                    help="explore this many sampled candidates instead of all 81 (smoke tests)")
    ap.add_argument("--finetune-steps", type=int, default=FINETUNE_STEPS)
    ap.add_argument("--dense-epochs", type=int, default=DENSE_EPOCHS)
    ap.add_argument("--out", type=pathlib.Path, help="also write the figures as JSON here")
    ap.add_argument("--plot", type=pathlib.Path, help="accuracy-vs-size plot of both searches")
    ap.add_argument("--force", action="store_true", help="replace existing --out / --plot files")
    args = ap.parse_args(argv)
    for p in (args.out, args.plot):
        if p is not None and p.exists() and not args.force:
            sys.exit(f"{p} exists; pass --force to replace it")

    import keras

    from cocopie_tf import tune

    t_all = time.perf_counter()
    xtr, ytr, xva, yva, xte, yte = data()
    keras.utils.set_random_seed(0)
    dense = build(keras)
    dense.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t0 = time.perf_counter()
    dense.fit(xtr, ytr, epochs=args.dense_epochs, batch_size=64, verbose=0)
    dense_time = time.perf_counter() - t0
    dense_val, dense_test = accuracy(keras, dense, xva, yva), accuracy(keras, dense, xte, yte)
    modules = tune.find_modules(dense)
    cands = tune.sample_candidates(len(modules), RATES, n=args.candidates)
    sel = tune.select_blocks(cands)
    steps_max = args.finetune_steps
    print(f"dense: {dense.count_params():,} parameters, val {dense_val:.2%}, test {dense_test:.2%} "
          f"({dense_time:.0f} s); data {SIDE}x{SIDE}: train {len(xtr)}, val {len(xva)}, "
          f"test {len(xte)}")
    print(f"{len(modules)} modules: {[m.name for m in modules]}; {len(cands)} candidates; "
          f"{len(sel.blocks)} tuning blocks "
          f"({sum(len(b.rates) > 1 for b in sel.blocks)} multi-module); per-candidate budget "
          f"{steps_max} steps (batch 64), evaluated every {EVAL_EVERY}", flush=True)
    report = dict(dense=dict(params=dense.count_params(), val=dense_val, test=dense_test,
                             train_s=dense_time),
                  candidates=len(cands), blocks=len(sel.blocks), finetune_steps=steps_max,
                  eval_every=EVAL_EVERY, pretrain_epochs=PRETRAIN_EPOCHS, objectives=[])
    summary = []
    for drop in args.target_drop:
        target = round(dense_val - drop, 4)
        print(f"\n=== objective: smallest with val accuracy >= {target:.2%} "
              f"(dense - {drop:g}); every candidate explored ===", flush=True)
        runs = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, use_blocks in (("CoCo-Tune", True), ("baseline", False)):
                t0 = time.perf_counter()
                res = tune.search(dense, xtr, ytr, xva, yva, candidates=cands, target=target,
                                  directory=pathlib.Path(tmp) / name,
                                  finetune_steps=steps_max, eval_every=EVAL_EVERY,
                                  pretrain_epochs=PRETRAIN_EPOCHS, use_blocks=use_blocks,
                                  explore="all", progress=False)
                wall = time.perf_counter() - t0
                chosen = res.model() if res.met else None
                rs = sorted(res.results, key=lambda r: r["rank"])
                # What stopping at the first candidate that meets the objective
                # would have cost: everything up to and including the answer.
                upto = [r for r in rs if r["rank"] <= res.chosen["rank"]] if res.met else rs
                first_s = (wall - sum(r["seconds"] for r in rs)) + sum(r["seconds"] for r in upto)
                runs[name] = dict(
                    wall_s=wall, pretrain_s=res.pretrain_seconds,
                    finetune_s=res.finetune_seconds, explored=len(rs),
                    trained=sum(r["steps"] > 0 for r in rs),
                    met_count=sum(r["met"] for r in rs), met=res.met,
                    never_met=sum(not r["met"] for r in rs),
                    message=res.message, chosen=res.chosen["candidate"],
                    rank=res.chosen["rank"], size=res.chosen["size"], val=res.chosen["score"],
                    test=accuracy(keras, chosen, xte, yte) if chosen is not None else None,
                    steps=sum(r["steps"] for r in rs),
                    acc0=[r["trace"][0][1] for r in rs],
                    per_cand_s=[r["seconds"] for r in rs],
                    first_explored=len(upto), first_steps=sum(r["steps"] for r in upto),
                    first_s=first_s,
                    points=[(r["size"], r["score"], r["met"]) for r in rs])
                r = runs[name]
                print(f"\n{name}: {res.message}")
                print(res.table(), flush=True)
                print(f"{name}: wall {wall:.1f} s (pre-training {r['pretrain_s']:.1f} s), "
                      f"{r['explored']} explored, {r['trained']} fine-tuned, {r['steps']} steps, "
                      f"{r['met_count']} meet the target; accuracy before fine-tuning: median "
                      f"{np.median(r['acc0']):.2%}, min {min(r['acc0']):.2%}; per candidate "
                      f"median {np.median(r['per_cand_s']):.2f} s", flush=True)
        b, c = runs["baseline"], runs["CoCo-Tune"]
        speed = b["wall_s"] / c["wall_s"]
        speed_first = b["first_s"] / c["first_s"]
        good = c["met"] and (not b["met"] or c["size"] <= b["size"])
        summary.append((target, drop, runs, speed, good))
        report["objectives"].append(dict(target=target, drop=drop, speedup=speed,
                                         speedup_first=speed_first, equally_good=good, runs=runs))
    print(f"\n{'objective':<10} {'search':<10} {'wall s':>7} {'pretrain s':>10} "
          f"{'explored':>8} {'trained':>7} {'met':>4} {'steps':>6} {'chosen':<28} {'params':>8} "
          f"{'val':>7} {'test':>7}")
    for target, drop, runs, speed, good in summary:
        for name, r in runs.items():
            test = f"{r['test']:.2%}" if r["test"] is not None else "-"
            print(f"{target:<10.2%} {name:<10} {r['wall_s']:>7.1f} "
                  f"{r['pretrain_s'] if name == 'CoCo-Tune' else 0:>10.1f} "
                  f"{r['explored']:>8} {r['trained']:>7} {r['met_count']:>4} {r['steps']:>6} "
                  f"{r['chosen']:<28} {r['size']:>8,} {r['val']:>7.2%} {test:>7}")
        verdict = "is at least as small and meets the objective" if good else "is worse"
        print(f"{'':<10} speedup (baseline wall / CoCo-Tune wall, every candidate explored) "
              f"{speed:.2f}x; CoCo-Tune's answer {verdict}")
        b, c = runs["baseline"], runs["CoCo-Tune"]
        print(f"{'':<10} stopping at the first candidate that meets it: baseline "
              f"{b['first_explored']} candidates {b['first_s']:.1f} s, CoCo-Tune "
              f"{c['first_explored']} candidates {c['first_s']:.1f} s "
              f"({b['first_s'] / c['first_s']:.2f}x)")
    print(f"total bench time {time.perf_counter() - t_all:.0f} s")
    if args.out:
        from cocopie_tf.tune.explore import _write_json

        _write_json(args.out, report)
    if args.plot:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from cocopie_tf.tune.explore import _write_atomic

        fig, axes = plt.subplots(1, len(summary), figsize=(6.5 * len(summary), 4.5),
                                 squeeze=False)
        for ax, (target, drop, runs, speed, good) in zip(axes[0], summary):
            for (name, r), col in zip(runs.items(), ("tab:blue", "tab:gray")):
                pts = np.array([(s, a) for s, a, _ in r["points"]])
                ax.scatter(pts[:, 0], pts[:, 1], s=14, c=col,
                           label=f"{name}: {r['explored']} explored, {r['wall_s']:.0f} s")
                ax.scatter([r["size"]], [r["val"]], s=140, facecolors="none", edgecolors=col,
                           linewidths=2)
            ax.axhline(target, color="tab:red", ls=":", lw=1, label=f"target {target:.2%}")
            ax.set_title(f"objective: smallest with val acc >= dense - {drop:g}; "
                         f"speedup {speed:.2f}x", fontsize=9)
            ax.set_xlabel("parameters")
            ax.set_ylabel(f"validation accuracy after <= {steps_max} steps")
            ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        _write_atomic(args.plot, buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
