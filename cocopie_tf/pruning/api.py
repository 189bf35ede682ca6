"""prune_patterns / strip_pruning / pruning_report."""

from __future__ import annotations

import keras
import numpy as np

from cocopie_tf import patterns as P
from cocopie_tf.pruning.wrapper import PHASE_MASKED, PatternPruning, as_hwio, prunable_kernel


class PrunableLayer:
    """Mixin for custom layers that opt in to pattern pruning: implement
    ``get_prunable_kernel()`` returning a 4-D kernel variable laid out like a
    Conv2D kernel (kh, kw, in, out)."""

    def get_prunable_kernel(self):  # pragma: no cover - interface
        raise NotImplementedError


def _why_not_prunable(layer, prune_1x1: bool, prune_depthwise: bool) -> str | None:
    if isinstance(layer, PrunableLayer):
        return None
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return None if prune_depthwise else "depthwise pruning is off (prune_depthwise=False)"
    if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.Conv2DTranspose):
        if getattr(layer, "groups", 1) != 1:
            return "grouped convolutions are not supported"
        if tuple(layer.kernel_size) == (1, 1) and not prune_1x1:
            return "1x1 convolution (pass prune_1x1=True to prune its connectivity)"
        return None
    return f"{type(layer).__name__} is not a prunable layer type (Conv2D, DepthwiseConv2D, PrunableLayer)"


def _walk(model):
    """Layers in order, nested models flattened."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk(layer)
        else:
            yield layer


def _clone(model, make):
    """clone_model that copies weights and recurses into nested models;
    ``make(layer)`` returns (new_layer, setter) or None for a plain copy."""
    setters = []

    def clone_fn(layer):
        if isinstance(layer, keras.Model):
            return _clone(layer, make)
        made = make(layer)
        if made is None:
            new = layer.__class__.from_config(layer.get_config())
            weights = layer.get_weights()
            setters.append(lambda: new.set_weights(weights))
            return new
        new, setter = made
        setters.append(setter)
        return new

    cloned = keras.models.clone_model(model, clone_function=clone_fn)
    for setter in setters:
        setter()
    return cloned


def prune_patterns(model, *, num_patterns: int = 8, entries: int = 4, keep_center: bool = True,
                   connectivity: float | None = 3.6, group: int = 1, layers=None,
                   prune_first: bool = False, prune_1x1: bool = False,
                   prune_depthwise: bool = True, library=None):
    """Returns a copy of ``model`` whose prunable layers are wrapped for ADMM
    pattern + connectivity pruning (train it with the :class:`ADMMPruning`
    callback).

    Args:
      model: a built Sequential or functional model (nested models too), or a
        single layer (returned wrapped).
      num_patterns: pattern library size K (8).
      entries: weights kept per kernel (4 of 9 for 3x3).
      keep_center: always keep the centre of odd kernels (56 candidates for 3x3).
      connectivity: keep 1 kernel in ``connectivity`` per layer (3.6); None: off.
      group: filters sharing one mask per input channel (4 lets the kernels
        reuse every input load 4 times).
      layers: names of the layers to prune (default: every Conv2D and
        DepthwiseConv2D but the first conv and 1x1 convs).
      prune_first, prune_1x1, prune_depthwise: widen or narrow the default set.
      library: a fixed pattern library ``[K, kh, kw]`` instead of choosing one
        from the weights.
    """
    if connectivity is not None and (not np.isfinite(connectivity) or connectivity < 1):
        raise ValueError(f"connectivity rate must be >= 1 (or None), got {connectivity!r}")
    if not isinstance(group, int) or group < 1:
        raise ValueError(f"group must be a positive integer, got {group!r}")
    if not isinstance(num_patterns, int) or num_patterns < 1:
        raise ValueError(f"num_patterns must be a positive integer, got {num_patterns!r}")
    opts = dict(num_patterns=num_patterns, entries=entries, keep_center=keep_center,
                connectivity=connectivity, group=group)

    def check_kernel(layer):
        kh, kw = tuple(prunable_kernel(layer).shape[:2]) if layer.built else tuple(layer.kernel_size)
        if kh * kw > 1:
            if entries > kh * kw:
                raise ValueError(f"entries={entries} is larger than the {kh}x{kw} kernel of "
                                 f"layer {layer.name!r}")
            n = len(P.candidate_patterns((kh, kw), entries, keep_center and kh % 2 == 1 and kw % 2 == 1))
            if num_patterns > n:
                raise ValueError(f"num_patterns={num_patterns} is more than the {n} candidate "
                                 f"patterns of layer {layer.name!r} ({kh}x{kw}, {entries} entries)")
        if library is not None and np.asarray(library).shape[1:] != (kh, kw):
            raise ValueError(f"library shape {np.asarray(library).shape} does not fit the "
                             f"{kh}x{kw} kernel of layer {layer.name!r}")

    if not isinstance(model, keras.Model):  # a single layer
        why = _why_not_prunable(model, True, True)
        if why:
            raise ValueError(f"layer {model.name!r} cannot be pruned: {why}")
        check_kernel(model)
        return PatternPruning(model, **opts)
    if not model.built:
        raise ValueError("model must be built (give it an input shape) before prune_patterns")

    all_layers = list(_walk(model))
    if layers is not None:
        names = [layers] if isinstance(layers, str) else list(layers)
        by_name = {l.name: l for l in all_layers}
        chosen = []
        for name in names:
            if name not in by_name:
                raise ValueError(f"layers: no layer named {name!r} in the model")
            why = _why_not_prunable(by_name[name], True, True)
            if why:
                raise ValueError(f"layers: layer {name!r} cannot be pruned: {why}")
            chosen.append(by_name[name])
    else:
        candidates = [l for l in all_layers
                      if _why_not_prunable(l, prune_1x1, prune_depthwise) is None]
        first_conv = next((l for l in all_layers if isinstance(l, keras.layers.Conv2D)), None)
        chosen = [l for l in candidates if prune_first or l is not first_conv]
    if not chosen:
        raise ValueError("the model has nothing to prune: no Conv2D/DepthwiseConv2D layer "
                         "qualifies (the first conv and 1x1 convs are skipped by default; see "
                         "prune_first, prune_1x1, layers)")
    for layer in chosen:
        check_kernel(layer)
    chosen_ids = {id(l) for l in chosen}

    def make(layer):
        if id(layer) not in chosen_ids:
            return None
        new = PatternPruning(layer.__class__.from_config(layer.get_config()), **opts)
        weights = layer.get_weights()

        def setter():
            new.layer.set_weights(weights)
            if library is not None:
                new.library.assign(np.asarray(library, "float32"))

        return new, setter

    return _clone(model, make)


def strip_pruning(model):
    """A plain Keras model (no wrappers) with the pruned weights as exact zeros.

    Layers still in the ADMM phase are hard-pruned on the way out (their
    current projection), so the result always satisfies the constraints."""

    def make(layer):
        if not isinstance(layer, PatternPruning):
            return None
        inner = layer.layer
        new = inner.__class__.from_config(inner.get_config())
        weights = inner.get_weights()
        kernel = layer.kernel_value()
        if int(np.asarray(keras.ops.convert_to_numpy(layer.phase))) == PHASE_MASKED:
            mask = np.asarray(keras.ops.convert_to_numpy(layer.mask)).astype(bool)
        else:
            pat, conn = layer.masks_for(kernel)
            mask = pat & conn
        kernel_var = prunable_kernel(inner)
        idx = next(i for i, v in enumerate(inner.weights) if v is kernel_var)
        weights[idx] = np.where(mask, kernel, 0).astype(kernel.dtype)
        return new, lambda: new.set_weights(weights)

    if isinstance(model, PatternPruning):
        raise ValueError("strip_pruning takes a model; for a single wrapper use wrapper.layer")
    return _clone(model, make)


class PruningReport(list):
    """Per-layer facts (a list of dicts) that prints as a table."""

    def __str__(self):
        head = (f"{'layer':<24} {'kernel':<14} {'patterns':>8} {'kernels kept':>14} "
                f"{'weight red.':>11} {'MAC red.':>9}")
        rows = [head, "-" * len(head)]
        for r in self:
            rows.append(f"{r['layer']:<24.24} {str(r['kernel_shape']):<14} {r['patterns']:>8} "
                        f"{r['kernels_kept']:>7}/{r['kernels_total']:<6} "
                        f"{r['weight_reduction']:>10.2f}x {r['mac_reduction']:>8.2f}x")
        return "\n".join(rows)

    def plot_library(self, path=None):
        """Draws every layer's patterns (matplotlib); saves to ``path`` if given."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = max(len(r["library"]) for r in self) if self else 1
        fig, axes = plt.subplots(len(self), n, figsize=(n * 0.8, len(self) * 0.9), squeeze=False)
        for i, r in enumerate(self):
            for j in range(n):
                ax = axes[i][j]
                ax.axis("off")
                if j < len(r["library"]):
                    ax.imshow(np.asarray(r["library"][j]), cmap="Greys", vmin=0, vmax=1)
            axes[i][0].set_title(r["layer"], fontsize=6, loc="left")
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
        return fig


def pruning_report(model) -> PruningReport:
    """Per pruned layer (wrapped, or stripped: any conv with zero kernels):
    kernel shape, the distinct patterns of its kept kernels with counts,
    kernels kept, weight and MAC reduction. For convolutions every kept weight
    is used once per output pixel, so the MAC reduction equals the weight
    reduction of the layer."""
    report = PruningReport()
    for layer in _walk(model):
        inner = layer.layer if isinstance(layer, PatternPruning) else layer
        if not isinstance(inner, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, PrunableLayer)):
            continue
        value = np.asarray(keras.ops.convert_to_numpy(prunable_kernel(inner)))
        if value.ndim != 4:
            continue
        hwio = as_hwio(inner, value)
        kernels = np.transpose(hwio, (3, 2, 0, 1)).reshape(-1, hwio.shape[0], hwio.shape[1])
        nz = kernels != 0
        kept = nz.any(axis=(1, 2))
        if not isinstance(layer, PatternPruning) and kept.all() and nz.all():
            continue  # a dense layer of a stripped model: not pruned
        masks, counts = np.unique(nz[kept].reshape(kept.sum(), -1), axis=0, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        total_w = value.size
        kept_w = int(np.count_nonzero(value))
        report.append({
            "layer": layer.name,
            "kernel_shape": tuple(value.shape),
            "patterns": int(len(masks)),
            "library": [m.reshape(hwio.shape[:2]).astype(int) for m in masks[order]],
            "histogram": [int(c) for c in counts[order]],
            "kernels_kept": int(kept.sum()),
            "kernels_total": int(len(kernels)),
            "weight_reduction": total_w / max(kept_w, 1),
            "mac_reduction": total_w / max(kept_w, 1),
        })
    return report
