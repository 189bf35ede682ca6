"""``cocopie-tf tune``: the CoCo-Tune search from the command line."""

from __future__ import annotations

import os
import pathlib
import sys


def add_parser(subparsers):
    p = subparsers.add_parser(
        "tune",
        help="CoCo-Tune: find the smallest pruned model that meets an accuracy (or PSNR) target",
        description="Composability-based pruning search (Wootz): candidates are per-module "
        "prune rates; Sequitur finds the module sequences they share, those tuning blocks are "
        "pre-trained once (teacher-student against the dense model), every candidate is "
        "assembled from them, fine-tuned briefly and evaluated, smallest first, until one "
        "reaches the target. Results go to --dir; rerunning the same command resumes; several "
        "processes with --worker i --workers n share the work. Exit status: 0 objective met, "
        "1 objective unreachable (the best found is reported), 2 bad input.")
    p.add_argument("model", help="a trained .keras model (single input; logits output for "
                   "--metric accuracy)")
    p.add_argument("--target", type=float, required=True,
                   help="objective: validation metric >= this (accuracy: in (0, 1]; psnr: dB)")
    p.add_argument("--metric", choices=["accuracy", "psnr"], default="accuracy",
                   help="accuracy of logits vs integer labels (default; cross-entropy loss) or "
                   "PSNR in dB of images in [0, 1] (mean squared error loss)")
    p.add_argument("--dir", required=True, help="search directory (new, empty, or to resume)")
    p.add_argument("--data", default="digits",
                   help="'digits' (scikit-learn digits at 32x32, the training split; 20%% of it "
                   "validates) or an .npz with x_train, y_train, x_val, y_val")
    p.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                   help="prune rates per module to combine (default 0.3 0.5 0.7)")
    p.add_argument("--candidates", type=int, default=None,
                   help="sample this many combinations (default: all)")
    p.add_argument("--method", choices=["filter", "pattern", "both"], default="filter",
                   help="filter pruning by L1 norm (default) or pattern + connectivity pruning")
    p.add_argument("--modules", default=None,
                   help="modules as layer names: 'a,b;c,d' (default: found automatically)")
    p.add_argument("--finetune-steps", type=int, default=100, help="per-candidate budget")
    p.add_argument("--eval-every", type=int, default=20, help="evaluate every N steps")
    p.add_argument("--pretrain-epochs", type=int, default=3, help="block pre-training epochs")
    p.add_argument("--pretrain", choices=["all", "on_demand"], default="all",
                   help="pre-train every block first (all, as in Wootz) or each block when "
                   "the first candidate using it is reached (on_demand)")
    p.add_argument("--explore", choices=["first", "all"], default="first",
                   help="stop at the first candidate meeting the target (first) or evaluate "
                        "every candidate (all: the same answer plus the whole curve)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--baseline", action="store_true",
                   help="no tuning blocks: fine-tune every candidate from the dense weights")
    p.add_argument("--worker", type=int, default=0, help="this process's index (0)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing --dir (1)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N candidates now")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="save the chosen model to this .keras file")
    p.add_argument("--force", action="store_true", help="replace an existing --output file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _data(spec):
    import numpy as np

    if spec == "digits":
        from sklearn.model_selection import train_test_split

        from cocopie_tf.demo import load_digits_32

        xtr, _, ytr, _ = load_digits_32()
        xtr, xva, ytr, yva = train_test_split(xtr, ytr, test_size=0.2, random_state=0,
                                              stratify=ytr)
        return xtr, ytr, xva, yva
    path = pathlib.Path(spec)
    if not path.is_file():
        raise ValueError(f"--data: {path}: no such file (give 'digits' or an .npz)")
    with np.load(path) as z:
        missing = [k for k in ("x_train", "y_train", "x_val", "y_val") if k not in z.files]
        if missing:
            raise ValueError(f"--data: {path} lacks {missing}")
        return tuple(z[k] for k in ("x_train", "y_train", "x_val", "y_val"))


def _err(msg):
    print(f"cocopie-tf tune: {msg}", file=sys.stderr)
    return 2


def main(args) -> int:
    src = pathlib.Path(args.model)
    if not src.is_file():
        return _err(f"{src}: no such file")
    out = pathlib.Path(args.output) if args.output else None
    if out is not None:
        from cocopie_tf._files import check_destination

        try:
            check_destination(out, replace=args.force)
        except OSError as e:
            return _err(str(e))
    if out is not None and out.suffix != ".keras":
        return _err(f"--output must end in .keras, got {out}")
    from cocopie_tf.cli import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    import cocopie_tf.pruning  # noqa: F401 - registers the wrapper layer for loading
    from cocopie_tf import tune
    from cocopie_tf.tune.explore import _write_atomic

    try:
        model = keras.models.load_model(src)
    except Exception as e:  # keras raises many kinds on a bad file
        return _err(f"cannot load {src}: {e}")
    try:
        modules = None
        if args.modules:
            modules = [[n.strip() for n in grp.split(",") if n.strip()]
                       for grp in args.modules.split(";")]
        found = tune.find_modules(model, modules)
        methods = ["filter", "pattern"] if args.method == "both" else args.method
        cands = tune.sample_candidates(len(found), args.rates, n=args.candidates,
                                       method=methods, seed=args.seed)
        xtr, ytr, xva, yva = _data(args.data)
        print(f"{len(found)} modules: {', '.join(m.name for m in found)}; "
              f"{len(cands)} candidates", flush=True)
        res = tune.search(model, xtr, ytr, xva, yva, candidates=cands, target=args.target,
                          directory=args.dir, modules=modules,
                          finetune_steps=args.finetune_steps, eval_every=args.eval_every,
                          pretrain_epochs=args.pretrain_epochs, batch_size=args.batch_size,
                          use_blocks=not args.baseline, pretrain=args.pretrain,
                          explore=args.explore, metric=args.metric,
                          worker=args.worker,
                          num_workers=args.workers, limit=args.limit, seed=args.seed,
                          progress=not args.no_progress)
    except ValueError as e:
        return _err(str(e))
    table = res.table()
    print(table)
    print(res.message)
    if not res.complete:
        print("(other workers or a later run still have candidates to evaluate)")
    d = pathlib.Path(args.dir)
    _write_atomic(d / "report.txt", (table + "\n" + res.message + "\n").encode())
    try:
        res.plot(d / "tune.png")
        print(f"wrote {d / 'report.txt'} and {d / 'tune.png'}")
    except ImportError:
        print(f"wrote {d / 'report.txt'} (install matplotlib for the plot)")
    if out is not None and res.chosen is not None:
        chosen = res.model()
        tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.keras")
        try:
            chosen.save(tmp)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
        print(f"wrote {out} ({chosen.count_params():,} parameters)")
    return 0 if res.met else 1
