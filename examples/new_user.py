"""What a new user sees on the models they deploy: prune a Keras application
model one-shot, convert it, run it with the cocopie delegate next to stock
LiteRT (XNNPACK), and print what was pruned, what the delegate claimed and
the measured speed-up, or that nothing was claimed.

    python examples/new_user.py                       # MobileNetV2 96 and ResNet-50 64
    python examples/new_user.py --model ResNet50 --size 224 --threads 1 2

Weights are random (``weights=None``: no download) and pruned without
training, so this shows the workflow and the speed, not accuracy; for a
trained model call ``cocopie_tf.prune_patterns`` and fit with
``cocopie_tf.ADMMPruning`` instead of ``prune_oneshot``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

# The recipe per model family: MobileNet-class models put most MACs in their
# 1x1 convs, so those get connectivity pruning; the depthwise 3x3 convs get
# patterns (docs/pruning.md).
RECIPES = {
    "MobileNetV2": dict(prune_1x1=True, prune_depthwise=True),
    "ResNet50": dict(prune_1x1=False),
}


def run(name: str, size: int, threads: list[int], runs: int, workdir: pathlib.Path,
        replace: bool = False) -> dict:
    from cocopie_tf.cli import import_tensorflow_quietly

    import_tensorflow_quietly()  # TF's C++ start-up lines stay out of the output
    import keras

    import cocopie_tf
    from cocopie_tf.benchmark import bench, format_bench

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    wrapped = cocopie_tf.prune_oneshot(model, **RECIPES.get(name, {}))
    print(f"== {name} {size}x{size}: what was pruned ==")
    print(wrapped.pruning_selection)
    stripped = cocopie_tf.strip_pruning(wrapped)
    print(cocopie_tf.pruning_report(stripped))
    path = workdir / _file_name(name, size)
    cocopie_tf.convert(stripped, output_path=str(path), force=replace)
    print(f"\n== {name}: stock LiteRT vs the cocopie delegate ==")
    result = bench(str(path), threads, runs=runs, warmup=3)
    print(format_bench(result))
    return result


def _file_name(name: str, size: int) -> str:
    return f"{name.lower()}_{size}.tflite"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["MobileNetV2", "ResNet50"],
                   help="keras.applications names (default: MobileNetV2 ResNet50)")
    p.add_argument("--size", type=int, nargs="+", default=None,
                   help="input size per model (default: 96 for MobileNetV2, 64 otherwise)")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="default: 1")
    p.add_argument("--runs", type=int, default=5, help="timed runs each (default: 5)")
    p.add_argument("--out", default=None,
                   help="folder for the .tflite files (default: a temporary one); "
                        "existing files there are kept unless --force")
    p.add_argument("--force", action="store_true", help="replace existing files in --out")
    a = p.parse_args(argv)
    sizes = a.size or [96 if m == "MobileNetV2" else 64 for m in a.model]
    if len(sizes) != len(a.model):
        p.error("--size needs one value per --model")
    if a.out and not a.force:  # before the slow part, and never over a user's file
        taken = [str(pathlib.Path(a.out) / _file_name(m, z)) for m, z in zip(a.model, sizes)
                 if (pathlib.Path(a.out) / _file_name(m, z)).exists()]
        if taken:
            p.error(f"{', '.join(taken)} exists; pass --force to replace")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(a.out or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name, size in zip(a.model, sizes):
            run(name, size, a.threads, a.runs, workdir, replace=a.force or a.out is None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
