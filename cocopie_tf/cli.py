"""The ``cocopie-tf`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocopie-tf",
        description="Pattern pruning for Keras and a fast TFLite delegate (CoCoPIE for TensorFlow).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train, prune, convert and run a CNN on the digits data",
        description="Trains a small CNN on scikit-learn's digits, prunes it with ADMM "
        "(8 patterns, 3.6x connectivity) inside fit, strips and reports it, converts it to "
        ".tflite, runs it on stock LiteRT (XNNPACK) and with the cocopie delegate, checks the "
        "outputs agree, and prints the claim report and both latencies.",
    )
    demo.add_argument("--app", choices=("sr", "style", "color"), default=None,
                      help="instead of the digits CNN, run one of the seed's applications end to "
                      "end on the photos shipped with scikit-image / scikit-learn: "
                      "super-resolution x2, style transfer or coloring; writes before/after "
                      "pictures (see --pictures)")
    demo.add_argument("--preset", choices=("ci", "demo", "full"), default="demo",
                      help="--app only: how much to train: ci (seconds, 64x64 output), demo "
                      "(minutes; default), full (the run behind docs/apps.md)")
    demo.add_argument("--pictures", default=None, metavar="DIR",
                      help="--app only: folder for the before/after PNGs (default "
                      "./cocopie-demo-APP; existing files are not replaced)")
    demo.add_argument("--threads", default=None,
                      help="interpreter threads: one number for the digits demo (default 1), a "
                      "comma-separated list for --app (default 1,2)")
    demo.add_argument("--runs", type=int, default=None,
                      help="timed runs per interpreter (default 20; 10 with --app)")
    demo.add_argument("--output", type=str, default=None,
                      help="digits demo: also write the converted model to this .tflite path "
                      "(must not exist)")
    conv = sub.add_parser("convert", help="convert a .keras model to .tflite with pattern metadata")
    conv.add_argument("model", help="a .keras file (pruned with cocopie_tf, wrapped or stripped)")
    conv.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    conv.add_argument("--force", action="store_true", help="replace an existing output file")
    insp = sub.add_parser("inspect", help="per-layer pattern facts of a .tflite file")
    insp.add_argument("model", help="a .tflite file")
    bench = sub.add_parser(
        "bench", help="latency: stock LiteRT (XNNPACK) vs the cocopie delegate on one model",
        description="Runs MODEL.tflite on stock LiteRT (XNNPACK) and with the cocopie delegate in "
        "one process, alternating runs; prints medians, quartiles, the speed-up, the relative "
        "error of the outputs and per-node times of the claimed nodes.")
    bench.add_argument("model", help="a float32 .tflite file")
    bench.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    bench.add_argument("--runs", type=int, default=15,
                       help="timed runs per interpreter (>= 3; default %(default)s)")
    bench.add_argument("--warmup", type=int, default=8,
                       help="warm-up runs per interpreter (default %(default)s)")
    bench.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="a delegate option, e.g. --option claim=all (repeatable)")
    bench.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    bench.add_argument("--backend", choices=("cpu", "gpu"), default="cpu",
                       help="the delegate's backend (default %(default)s); with gpu the per-node "
                       "times are device times from OpenCL profiling events")
    tune = sub.add_parser(
        "tune-kernels", help="auto-tune the pattern kernels of a model and cache the result",
        description="Times the pattern kernel's knobs (channel chunk, register tile) for every "
        "pattern convolution the delegate claims in MODEL.tflite, per thread count, and stores "
        "the fastest in the tuning cache, which the delegate reads by default (tune=cached).")
    tune.add_argument("model", help="a .tflite file")
    tune.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    tune.add_argument("--cache", default=None,
                      help="cache file (default $COCOPIE_TUNING_CACHE or ~/.cache/cocopie_tf/tuning.tsv)")
    tune.add_argument("--budget-ms", type=float, default=400.0,
                      help="time budget per layer (default %(default)s)")
    from cocopie_tf.tune import cli as tune_cli

    tune_cli.add_parser(sub)
    return parser


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and Keras with the CLI's log level.  TensorFlow's
    C++ start-up lines (absl, printed before it reads TF_CPP_MIN_LOG_LEVEL,
    twice) go straight to file descriptor 2, so the CLI points that at
    /dev/null for the import unless TF_CPP_MIN_LOG_LEVEL=0 asks for them.
    The CLI only: the library never touches the environment or stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        import keras  # noqa: F401
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _convert(args) -> int:
    import pathlib

    src, dst = pathlib.Path(args.model), pathlib.Path(args.output)
    if not src.is_file():
        print(f"cocopie-tf convert: {src}: no such file", file=sys.stderr)
        return 2
    from cocopie_tf._files import check_destination

    try:  # before loading and converting, which take a while
        check_destination(dst, replace=args.force)
    except OSError as e:
        print(f"cocopie-tf convert: {e}", file=sys.stderr)
        return 2
    import_tensorflow_quietly()
    import keras

    import cocopie_tf.pruning  # noqa: F401 - registers the wrapper layer for loading
    from cocopie_tf.converter import convert, read_metadata

    t0 = time.perf_counter()
    print(f"loading {src} ...", flush=True)
    try:
        model = keras.models.load_model(src)
    except Exception as e:  # keras raises many kinds on a bad file
        print(f"cocopie-tf convert: cannot load {src}: {e}", file=sys.stderr)
        return 2
    print(f"converting {len(model.layers)} layers with the TFLite converter "
          "(ResNet-50 takes about half a minute) ...", flush=True)
    try:
        data = convert(model, output_path=dst, force=args.force)
    except (ValueError, OSError) as e:  # ConverterError is a ValueError
        print(f"cocopie-tf convert: {e}", file=sys.stderr)
        return 2
    meta = read_metadata(data)
    n = len(meta["records"]) if meta else 0
    print(f"wrote {dst} ({len(data):,} bytes), pattern metadata for {n} convolution(s), "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def _grid(mask: int, k_h: int, k_w: int) -> list[str]:
    return ["".join("#" if mask >> (y * k_w + x) & 1 else "." for x in range(k_w))
            for y in range(k_h)]


def _inspect(args) -> int:
    import pathlib

    path = pathlib.Path(args.model)
    if not path.is_file():
        print(f"cocopie-tf inspect: {path}: no such file", file=sys.stderr)
        return 2
    try:
        print(inspect_text(path.read_bytes(), str(path)))
    except ValueError as e:
        print(f"cocopie-tf inspect: {path}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a corrupt file must not end in a traceback
        # The flatbuffer reader raises struct.error, TypeError, IndexError...
        # on damaged files; all mean the same to the user.
        print(f"cocopie-tf inspect: {path}: malformed .tflite file "
              f"({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    return 0


def inspect_text(raw: bytes, label: str = "model") -> str:
    """Every operator of a .tflite; per pattern-pruned convolution (3x3, 1x1,
    depthwise) its patterns drawn as grids, kernels kept, MAC reduction,
    FKW/CSR/dense bytes and whether its metadata record matches the weights;
    per other convolution why it is not pattern-pruned."""
    import collections

    from cocopie_tf.converter import core as C
    from cocopie_tf.converter import metadata as M
    from cocopie_tf.lite._model_check import verify_model_bytes

    verify_model_bytes(raw)
    try:
        meta, problem = C.read_metadata(raw), None
    except M.MetadataError as e:
        meta, problem = None, str(e)
    found, skipped = C.pattern_scan(raw)
    records = (meta or {}).get("records", [])
    meta_bytes = len(M.encode(records)) if records else 0
    status = ("invalid: " + problem) if problem else (
        f"present, v{meta['version']}, {len(records)} records, {meta_bytes:,} bytes "
        f"({meta_bytes / len(raw):.2%} of the file)" if meta else "absent")
    ops = C.operators(raw)
    lines = [f"{label}: {len(raw):,} bytes, {len(ops)} operators; cocopie metadata {status}"]
    by_op = {(r["subgraph"], r["op_index"]): r for r in records}
    pruned = {(r["subgraph"], r["op_index"]): r for r in found}
    why_not = {(k["subgraph"], k["op_index"]): k["reason"] for k in skipped}
    others = collections.Counter()
    for sg, op_index, name in ops:
        r = pruned.get((sg, op_index))
        if r is None:
            if (sg, op_index) in why_not:
                where = f"subgraph {sg} " if sg else ""
                lines.append(f"{name} {where}op {op_index}: {why_not[(sg, op_index)]}")
            else:
                others[name] += 1
            continue
        lines.append(_pattern_op_text(raw, r, by_op.get((sg, op_index))))
    if others:
        lines.append("other operators (no pattern metadata for these kinds): " +
                     ", ".join(f"{n} {k}" for k, n in sorted(others.items())))
    if found:
        lines.append("\nFKW: the delegate's compact weights (kept kernels grouped by pattern, "
                     "one input-channel index per kernel); CSR: the same weights with a column "
                     "index per weight, as a generic sparse format stores them.")
    return "\n".join(lines)


def _pattern_op_text(raw: bytes, r: dict, rec: dict | None) -> str:
    """The inspect lines of one pattern-pruned op ``r`` (from the weights) and
    its metadata record ``rec`` (None if absent)."""
    import numpy as np

    from cocopie_tf import _cc
    from cocopie_tf.converter import core as C
    from cocopie_tf.converter import metadata as M

    filt = C.filter_array(raw, r["subgraph"], r["filter_tensor"])
    masks = M.kernel_masks(filt, r["op_kind"])
    if rec is None:
        verdict = "missing"
    else:
        # Valid as the delegate checks it: same weights and op, and every
        # kernel's non-zeros inside the pattern the record gives it
        # (read_metadata derived the codes a v2 record leaves to the weights).
        codes = rec["codes"]
        valid = rec["filter_crc32"] == r["filter_crc32"] and rec["op_kind"] == r["op_kind"] and \
            codes is not None and codes.shape == masks.shape
        if valid:
            stated = np.asarray([0] + list(rec["patterns"]), np.int64)[codes]
            valid = bool(np.all((masks & ~stated) == 0))
        verdict = "valid" if valid else "does not match the weights"
    depthwise = r["op_kind"] == M.OP_DEPTHWISE_CONV_2D
    ohwi = filt[0].transpose(2, 0, 1)[..., None] if depthwise else filt
    info = _cc.pattern_info(np.ascontiguousarray(ohwi))
    kept, total = int((masks > 0).sum()), r["out_c"] * r["in_c"]
    red = filt.size / max(1, np.count_nonzero(filt))
    shape = "x".join(str(d) for d in filt.shape)
    out = [f"\n{M.OP_KINDS[r['op_kind']]} op {r['op_index']}: filter {shape}, "
           f"{len(r['patterns'])} patterns, kernels kept {kept}/{total}, "
           f"MAC reduction {red:.2f}x, group {r['group']}",
           f"  bytes: FKW {info['fkw_bytes']:,}  CSR {info['csr_bytes']:,}  "
           f"dense {info['dense_bytes']:,};  metadata record: {verdict}"]
    if r["k_h"] * r["k_w"] > 1:  # a 1x1 kernel's one pattern is "kept"
        grids = [_grid(m, r["k_h"], r["k_w"]) for m in r["patterns"]]
        for row in range(r["k_h"]):
            out.append("  " + "  ".join(g[row] for g in grids))
    return "\n".join(out)


def _bench_or_tune(args) -> int:
    from cocopie_tf import benchmark as B

    try:
        threads = B.parse_threads(args.threads)
        if args.command == "bench":
            if args.json and os.path.exists(args.json):
                raise FileExistsError(f"{args.json} exists; choose another --json path")
            result = B.bench(args.model, threads, runs=args.runs, warmup=args.warmup,
                             options=B.parse_options(args.option), backend=args.backend)
            print(B.format_bench(result))
            if args.json:
                B.write_json(result, args.json)
        else:
            if not args.budget_ms >= 1:
                raise ValueError("--budget-ms must be >= 1")
            cache = args.cache or B.default_cache_path()
            print(B.format_tune(B.tune_kernels(args.model, threads, cache, args.budget_ms), cache))
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"cocopie-tf {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


def _demo(args) -> int:
    from cocopie_tf.benchmark import parse_threads

    try:
        threads = parse_threads(args.threads or ("1,2" if args.app else "1"))
    except ValueError as e:
        print(f"cocopie-tf demo: {e}", file=sys.stderr)
        return 2
    runs = args.runs if args.runs is not None else (10 if args.app else 20)
    if runs < 1:
        print("cocopie-tf demo: --runs must be >= 1", file=sys.stderr)
        return 2
    if args.app is None:
        if len(threads) != 1:
            print("cocopie-tf demo: the digits demo takes one --threads value", file=sys.stderr)
            return 2
        if args.pictures is not None:
            print("cocopie-tf demo: --pictures needs --app", file=sys.stderr)
            return 2
        import_tensorflow_quietly()
        from cocopie_tf import demo

        return demo.run(threads=threads[0], runs=runs, output=args.output)
    if args.output is not None:
        print("cocopie-tf demo: --output is for the digits demo; --app writes --pictures",
              file=sys.stderr)
        return 2
    import pathlib

    from cocopie_tf._files import check_destination

    pictures = pathlib.Path(args.pictures or f"cocopie-demo-{args.app}")
    if pictures.exists() and not pictures.is_dir():
        print(f"cocopie-tf demo: --pictures {pictures}: exists and is not a folder", file=sys.stderr)
        return 2
    try:  # fail now, not after minutes of training
        from cocopie_tf.apps.photos import EVAL_PHOTOS

        for photo in EVAL_PHOTOS:
            if pictures.is_dir():
                check_destination(pictures / f"{args.app}_{photo}.png", replace=False)
    except OSError as e:
        print(f"cocopie-tf demo: {e}", file=sys.stderr)
        return 2
    import_tensorflow_quietly()
    from cocopie_tf.apps import demo_app

    return demo_app.main(args.app, args.preset, threads, runs, pictures)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "convert":
        return _convert(args)
    if args.command == "inspect":
        return _inspect(args)
    if args.command in ("bench", "tune-kernels"):
        return _bench_or_tune(args)
    if args.command == "tune":
        from cocopie_tf.tune import cli as tune_cli

        return tune_cli.main(args)
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
