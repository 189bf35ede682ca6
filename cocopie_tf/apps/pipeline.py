"""One application end to end: train dense -> ADMM pattern pruning inside
fit -> strip -> convert both models at the deployment resolution -> run on
stock LiteRT (XNNPACK) and with the cocopie delegate -> quality, latency and
before/after pictures.

Every application module (``sr``, ``style``, ``color``) provides ``build``,
``training_data``, ``compile_model``, ``eval_pairs``, ``quality``,
``pictures`` (one image per title in ``PANELS``) and ``PRESETS``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import time

import numpy as np

APPS = {"sr": "super-resolution x2", "style": "style transfer", "color": "coloring"}
# The delegate must reproduce stock LiteRT on the same pruned weights.
AGREEMENT = 1e-4


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much to train. ``patch``/``patches``: training crops (input side,
    count); epochs per phase; ``eval_size``: the side of the output image the
    models are converted, evaluated and timed at."""

    patch: int
    patches: int
    batch: int
    dense_epochs: int
    admm_epochs: int
    retrain_epochs: int
    learning_rate: float = 1e-3
    eval_size: int = 256
    num_patterns: int = 8
    connectivity: float = 3.6
    seed: int = 0
    # style transfer only: the VGG-16 loss network's weights ("auto",
    # "imagenet", "random"; see cocopie_tf.apps.style).
    loss_weights: str = "auto"


def app_module(name: str):
    if name not in APPS:
        raise ValueError(f"unknown app {name!r}; choose one of {', '.join(APPS)}")
    return importlib.import_module(f"cocopie_tf.apps.{name}")


def settings_for(name: str, preset: str = "demo", **overrides) -> Settings:
    presets = app_module(name).PRESETS
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
    fields = {f.name for f in dataclasses.fields(Settings)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown setting(s) {', '.join(bad)}; known: {', '.join(sorted(fields))}")
    return Settings(**{**presets[preset], **overrides})


def _rel_error(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def train(name: str, settings: Settings, log=print):
    """Returns ``(dense, pruned)`` Keras models (``pruned`` stripped: stock
    layers, pruned weights exactly zero) and the training record."""
    import keras

    import cocopie_tf

    app = app_module(name)
    keras.utils.set_random_seed(settings.seed)
    x, y = app.training_data(settings)
    record = {"train_examples": int(len(x))}
    dense = app.compile_model(app.build(), settings)
    log(f"train dense {dense.name} ({dense.count_params():,} parameters) on {len(x)} crops, "
        f"{settings.dense_epochs} epochs")
    t0 = time.perf_counter()
    h = dense.fit(x, y, batch_size=settings.batch, epochs=settings.dense_epochs, verbose=0)
    record["dense_loss"] = float(h.history["loss"][-1])
    record["dense_train_s"] = time.perf_counter() - t0

    pruned = cocopie_tf.prune_patterns(dense, num_patterns=settings.num_patterns,
                                       connectivity=settings.connectivity)
    app.compile_model(pruned, settings)
    epochs = settings.admm_epochs + settings.retrain_epochs
    log(f"ADMM pattern pruning inside fit: {settings.num_patterns} patterns, "
        f"{settings.connectivity}x connectivity, {settings.admm_epochs} ADMM + "
        f"{settings.retrain_epochs} masked retraining epochs")
    t0 = time.perf_counter()
    h = pruned.fit(x, y, batch_size=settings.batch, epochs=epochs, verbose=0,
                   callbacks=[cocopie_tf.ADMMPruning(admm_epochs=settings.admm_epochs,
                                                     retrain_epochs=settings.retrain_epochs)])
    record["pruned_loss"] = float(h.history["loss"][-1])
    record["prune_train_s"] = time.perf_counter() - t0
    stripped = cocopie_tf.strip_pruning(pruned)
    # Reported at the deployment size, where MACs per frame are defined.
    x_eval = next(iter(app.eval_pairs(settings.eval_size).values()))[0]
    fixed = app.build(input_shape=x_eval.shape)
    fixed.set_weights(stripped.get_weights())
    report = cocopie_tf.pruning_report(fixed)
    record["pruning"] = report.totals
    log(str(report))
    return dense, stripped, record


def deploy(name: str, model, input_shape) -> bytes:
    """``model``'s weights in a model built for one fixed input shape (the
    apps are fully convolutional, the deployment size is fixed), converted
    to .tflite with the pattern metadata."""
    import cocopie_tf

    fixed = app_module(name).build(input_shape=tuple(input_shape))
    fixed.set_weights(model.get_weights())
    return cocopie_tf.convert(fixed)


class _Runner:
    """One .tflite model in one interpreter (stock or with the delegate)."""

    def __init__(self, tflite: bytes, threads: int, delegate: bool):
        from ai_edge_litert.interpreter import Interpreter as Stock

        from cocopie_tf import lite

        cls = lite.Interpreter if delegate else Stock
        self.interpreter = cls(model_content=tflite, num_threads=threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        self._out = self.interpreter.get_output_details()[0]["index"]

    def __call__(self, x):
        self.interpreter.set_tensor(self._in, np.ascontiguousarray(x[None], np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out)[0].copy()

    def invoke(self):  # for cocopie_tf._timing.alternate
        self.interpreter.invoke()


def evaluate(name: str, dense, pruned, settings: Settings, threads=(1, 2), runs: int = 10,
             out_dir=None, log=print) -> dict:
    """Converts, checks, measures quality and latency, and writes pictures."""
    from cocopie_tf._timing import alternate, summary

    app = app_module(name)
    pairs = app.eval_pairs(settings.eval_size)
    in_shape = next(iter(pairs.values()))[0].shape
    tfl = {"dense": deploy(name, dense, in_shape), "pruned": deploy(name, pruned, in_shape)}
    result = {"app": name, "settings": dataclasses.asdict(settings),
              "tflite_bytes": {k: len(v) for k, v in tfl.items()}}

    one = {"dense": _Runner(tfl["dense"], 1, False), "pruned_stock": _Runner(tfl["pruned"], 1, False),
           "pruned_cocopie": _Runner(tfl["pruned"], 1, True)}
    claimed = one["pruned_cocopie"].interpreter.delegate_report()
    result["claimed_nodes"] = len(claimed)
    result["claimed_macs"] = int(sum(e["dense_macs"] for e in claimed))
    result["executed_macs"] = int(sum(e["executed_macs"] for e in claimed))
    outputs = {k: {} for k in one}
    worst = 0.0
    for photo, (x, _) in pairs.items():
        for k, run in one.items():
            outputs[k][photo] = run(x)
        worst = max(worst, _rel_error(outputs["pruned_cocopie"][photo], outputs["pruned_stock"][photo]))
    result["delegate_vs_stock_rel_error"] = worst
    if not worst <= AGREEMENT:
        raise AssertionError(f"the delegate's output differs from stock LiteRT on the same "
                             f"pruned weights: relative error {worst:.2e} > {AGREEMENT:g}")
    result["quality"] = {"dense": app.quality(outputs["dense"], pairs, settings),
                         "pruned": app.quality(outputs["pruned_cocopie"], pairs, settings)}
    log(f"delegate claimed {len(claimed)} nodes; its outputs match stock LiteRT on the pruned "
        f"weights (relative error {worst:.1e})")

    latency = {}
    for t in threads:
        runners = [_Runner(tfl["dense"], t, False), _Runner(tfl["pruned"], t, False),
                   _Runner(tfl["pruned"], t, True)]
        x = next(iter(pairs.values()))[0]
        for r in runners:
            r(x)
        ms = alternate(runners, runs=runs, warmup=2)
        latency[t] = {k: summary(m) for k, m in
                      zip(("dense_xnnpack", "pruned_xnnpack", "pruned_cocopie"), ms)}
        d, c = latency[t]["dense_xnnpack"]["median"], latency[t]["pruned_cocopie"]["median"]
        log(f"{t} thread(s): dense on XNNPACK {d:.1f} ms, pruned with cocopie {c:.1f} ms "
            f"({d / c:.2f}x)")
    result["latency_ms"] = latency

    if out_dir is not None:
        result["pictures"] = write_pictures(name, pairs, outputs, out_dir)
        for p in result["pictures"]:
            log(f"wrote {p}")
    return result


def write_pictures(name: str, pairs, outputs, out_dir) -> list[str]:
    """One PNG per evaluation photo: the app's before/after panels side by
    side, dense and pruned outputs both shown. Existing files are not
    replaced."""
    import imageio.v3 as imageio  # a dependency of scikit-image

    from cocopie_tf._files import write_file

    app = app_module(name)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for photo, pair in pairs.items():
        panels = [img for title, img in app.pictures(photo, pair, outputs["dense"][photo])]
        pruned_panels = app.pictures(photo, pair, outputs["pruned_cocopie"][photo])
        model_index = [t for t, _ in pruned_panels].index("model")
        panels.insert(model_index + 1, pruned_panels[model_index][1])
        h = max(p.shape[0] for p in panels)
        gap = np.ones((h, 4, 3), np.float32)
        row = []
        for p in panels:
            p = np.clip(p, 0, 1)
            if p.ndim == 2:
                p = np.repeat(p[..., None], 3, 2)
            p = np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=1)
            row += [p, gap]
        img = (np.concatenate(row[:-1], axis=1) * 255 + 0.5).astype(np.uint8)
        path = out_dir / f"{name}_{photo}.png"
        write_file(path, imageio.imwrite("<bytes>", img, extension=".png"), replace=False)
        paths.append(str(path))
    return paths


def panel_titles(name: str) -> list[str]:
    """Titles of the panels of :func:`write_pictures`, left to right."""
    titles = list(app_module(name).PANELS)
    i = titles.index("model")
    return titles[:i] + ["dense model", "pruned model (cocopie)"] + titles[i + 1:]


def run(name: str, preset: str = "demo", threads=(1, 2), runs: int = 10, out_dir=None,
        log=print, **overrides) -> dict:
    settings = settings_for(name, preset, **overrides)
    dense, pruned, record = train(name, settings, log=log)
    result = evaluate(name, dense, pruned, settings, threads=threads, runs=runs, out_dir=out_dir,
                      log=log)
    result["training"] = record
    return result
