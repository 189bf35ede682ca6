"""The ``cocopie-tf`` command line."""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocopie-tf",
        description="Pattern pruning for Keras and a fast TFLite delegate (CoCoPIE for TensorFlow).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="build a small CNN, convert it, run it with and without the delegate",
        description="Builds a small Keras CNN, converts it to .tflite, runs it on stock "
        "LiteRT (XNNPACK) and with the cocopie delegate, checks the outputs agree, and "
        "prints the delegate's claim report and both latencies.",
    )
    demo.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    demo.add_argument("--runs", type=int, default=20, help="timed runs per interpreter")
    demo.add_argument("--output", type=str, default=None,
                      help="also write the converted model to this .tflite path (must not exist)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        if args.threads < 1 or args.runs < 1:
            print("cocopie-tf demo: --threads and --runs must be >= 1", file=sys.stderr)
            return 2
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from cocopie_tf import demo

        return demo.run(threads=args.threads, runs=args.runs, output=args.output)
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
