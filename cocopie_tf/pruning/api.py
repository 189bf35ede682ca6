"""prune_patterns / strip_pruning / pruning_report."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from cocopie_tf import patterns as P
from cocopie_tf.pruning.wrapper import (PHASE_DENSE, PHASE_MASKED, PatternPruning, as_hwio,
                                        prunable_kernel)


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

    # clone_model re-creates the compile state from its config, which fails
    # for a loss or metric object Keras cannot deserialise; the copy is
    # compiled here instead, and left uncompiled (with a warning) when that
    # fails -- the user compiles the pruned model before fit anyway.
    compile_config = model.get_compile_config() if getattr(model, "compiled", False) else None
    if compile_config is not None:
        model.compiled = False
    try:
        cloned = keras.models.clone_model(model, clone_function=clone_fn)
    finally:
        if compile_config is not None:
            model.compiled = True
    for setter in setters:
        setter()
    if compile_config is not None:
        try:
            cloned.compile_from_config(compile_config)
        except (TypeError, ValueError) as e:
            warnings.warn(f"the copy of {model.name!r} is not compiled: its compile settings "
                          f"could not be rebuilt from their config ({str(e).splitlines()[0]}); "
                          f"compile it before fit", stacklevel=3)
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

    def kernel_problem(layer) -> str | None:
        kh, kw = tuple(prunable_kernel(layer).shape[:2]) if layer.built else tuple(layer.kernel_size)
        if kh * kw > 1:
            if entries > kh * kw:
                return f"entries={entries} is larger than its {kh}x{kw} kernel"
            n = len(P.candidate_patterns((kh, kw), entries, keep_center and kh % 2 == 1 and kw % 2 == 1))
            if num_patterns > n:
                return (f"num_patterns={num_patterns} is more than the {n} candidate patterns of "
                        f"its {kh}x{kw} kernel with {entries} entries")
        if library is not None and np.asarray(library).shape[1:] != (kh, kw):
            return f"library shape {np.asarray(library).shape} does not fit its {kh}x{kw} kernel"
        return None

    def check_kernel(layer):
        why = kernel_problem(layer)
        if why:
            raise ValueError(f"layer {layer.name!r} cannot be pruned: {why}")

    if not isinstance(model, keras.Model):  # a single layer
        why = _why_not_prunable(model, True, True)
        if why:
            raise ValueError(f"layer {model.name!r} cannot be pruned: {why}")
        check_kernel(model)
        return PatternPruning(model, **opts)
    if not model.built:
        raise ValueError("model must be built (give it an input shape) before prune_patterns")

    all_layers = list(_walk(model))
    skipped: dict[int, str] = {}
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
        for layer in chosen:
            check_kernel(layer)  # named explicitly: a layer that cannot be pruned is an error
    else:
        # The default selection skips what it cannot prune, and says why.
        first_conv = next((l for l in all_layers if isinstance(l, keras.layers.Conv2D)), None)
        chosen = []
        for layer in all_layers:
            why = _why_not_prunable(layer, prune_1x1, prune_depthwise)
            if why is None and layer is first_conv and not prune_first:
                why = "first convolution (few weights, most sensitive; pass prune_first=True)"
            if why is None:
                why = kernel_problem(layer)
            if why is None:
                chosen.append(layer)
            else:
                skipped[id(layer)] = why
    if not chosen:
        reasons = "; ".join(f"{l.name}: {skipped[id(l)]}" for l in all_layers
                            if id(l) in skipped and _has_weights_to_prune(l))
        raise ValueError("the model has nothing to prune: no Conv2D/DepthwiseConv2D layer "
                         "qualifies (the first conv and 1x1 convs are skipped by default; see "
                         "prune_first, prune_1x1, layers)" + (f". Skipped: {reasons}" if reasons
                                                               else ""))
    chosen_ids = {id(l) for l in chosen}
    selection = PruningSelection(
        _selection_row(l, "wrapped" if id(l) in chosen_ids else "skipped",
                       skipped.get(id(l), "not in layers=[...]"))
        for l in all_layers if _has_weights_to_prune(l))

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

    try:
        pruned = _clone(model, make)
    except ValueError as e:  # subclassed models: keras.models.clone_model cannot copy them
        if "subclass" in str(e).lower() or "Sequential models or Functional models" in str(e):
            raise ValueError("prune_patterns needs a Sequential or functional model; this one is "
                             "subclassed, which Keras cannot clone. Wrap its layers instead: "
                             "cocopie_tf.prune_patterns(layer) returns a wrapped layer") from None
        raise
    # What was wrapped, what was skipped and why: model.pruning_selection.
    pruned.pruning_selection = selection
    return pruned


def _has_weights_to_prune(layer) -> bool:
    return isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                              keras.layers.Conv2DTranspose, keras.layers.DepthwiseConv2D,
                              keras.layers.SeparableConv2D, keras.layers.Dense,
                              PrunableLayer)) or (
        bool(layer.weights) and type(layer).__module__.split(".")[0] != "keras")


def _layer_macs(layer, weights: int) -> int | None:
    """Multiply-accumulates per sample: each weight of a conv or dense layer
    is used once per output position."""
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return None
    if len(shape) < 2 or any(d is None for d in shape[1:-1]):
        return None
    positions = int(np.prod(shape[1:-1])) if len(shape) > 2 else 1
    if isinstance(layer, keras.layers.SeparableConv2D):
        dw, pw = (int(np.prod(w.shape)) for w in layer.weights[:2])
        return positions * (dw + pw)
    return positions * weights


def _selection_row(layer, decision: str, why: str) -> dict:
    kernel = getattr(layer, "kernel", None)
    if isinstance(layer, PrunableLayer):
        kernel = layer.get_prunable_kernel()
    if isinstance(layer, keras.layers.SeparableConv2D):
        kernel = None
    weights = (int(np.prod(kernel.shape)) if kernel is not None
               else sum(int(np.prod(w.shape)) for w in layer.weights if len(w.shape) > 1))
    return {"layer": layer.name, "type": type(layer).__name__,
            "kernel_shape": tuple(kernel.shape) if kernel is not None else None,
            "weights": weights, "macs": _layer_macs(layer, weights), "decision": decision,
            "why": "" if decision == "wrapped" else why}


class PruningSelection:
    """What prune_patterns did, per layer with weights (a sequence of dicts:
    layer, type, kernel_shape, weights, macs, decision, why), with totals;
    prints as a table.  (Not a list: Keras would wrap a list attribute of a
    model in its own tracking type.)"""

    def __init__(self, rows=()):
        self.rows = list(rows)

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def skipped(self) -> dict:
        """{layer name: why} of the layers left dense."""
        return {r["layer"]: r["why"] for r in self.rows if r["decision"] != "wrapped"}

    def totals(self) -> dict:
        """Weights and MACs (per sample) of the wrapped layers and of all
        conv/dense layers, and the wrapped shares."""
        w_all = sum(r["weights"] for r in self)
        w_in = sum(r["weights"] for r in self if r["decision"] == "wrapped")
        known = [r for r in self if r["macs"] is not None]
        m_all = sum(r["macs"] for r in known)
        m_in = sum(r["macs"] for r in known if r["decision"] == "wrapped")
        return {"layers": len(self), "wrapped": sum(r["decision"] == "wrapped" for r in self),
                "weights": w_all, "weights_wrapped": w_in,
                "weights_share": w_in / w_all if w_all else 0.0,
                "macs": m_all, "macs_wrapped": m_in, "macs_share": m_in / m_all if m_all else 0.0}

    def __str__(self):
        head = f"{'layer':<28} {'type':<16} {'weights':>9} {'MACs':>12}  decision"
        rows = [head, "-" * len(head)]
        for r in self:
            macs = f"{r['macs']:,}" if r["macs"] is not None else "?"
            what = r["decision"] + (f": {r['why']}" if r["why"] else "")
            rows.append(f"{r['layer']:<28.28} {r['type']:<16.16} {r['weights']:>9,} {macs:>12}  {what}")
        t = self.totals()
        rows.append(f"wrapped {t['wrapped']} of {t['layers']} layers: {t['weights_share']:.1%} of "
                    f"their {t['weights']:,} weights, {t['macs_share']:.1%} of their "
                    f"{t['macs']:,} MACs per sample")
        return "\n".join(rows)


def strip_pruning(model):
    """A plain Keras model (no wrappers) with the pruned weights as exact zeros.

    Layers still in the ADMM phase are hard-pruned on the way out (their
    current projection), so the result always satisfies the constraints."""

    never = [w.name for w in _walk(model) if isinstance(w, PatternPruning)
             and int(np.asarray(keras.ops.convert_to_numpy(w.phase))) == PHASE_DENSE]
    if never:
        raise ValueError(
            f"strip_pruning: {len(never)} wrapped layer(s) ({', '.join(never[:3])}"
            f"{', ...' if len(never) > 3 else ''}) were never pruned: the ADMMPruning callback "
            "has not run. Train with model.fit(..., callbacks=[cocopie_tf.ADMMPruning()]) first, "
            "or prune in one step with cocopie_tf.prune_oneshot(model)")

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
    """Per-layer facts (a list of dicts) that prints as a table; ``totals``
    covers every conv and dense layer of the model, pruned or not."""

    totals: dict = {}

    def __str__(self):
        head = (f"{'layer':<24} {'kernel':<14} {'patterns':>8} {'kernels kept':>14} "
                f"{'weight red.':>11} {'MAC red.':>9}")
        rows = [head, "-" * len(head)]
        for r in self:
            rows.append(f"{r['layer']:<24.24} {str(r['kernel_shape']):<14} {r['patterns']:>8} "
                        f"{r['kernels_kept']:>7}/{r['kernels_total']:<6} "
                        f"{r['weight_reduction']:>10.2f}x {r['mac_reduction']:>8.2f}x")
        t = self.totals
        if t:
            if t["macs"] is None:
                macs = "; MACs per sample depend on the input size (build the model at a fixed one)"
            else:
                macs = (f"; MACs per sample {t['macs']:,} -> {t['macs_kept']:,} "
                        f"({t['macs'] / max(t['macs_kept'], 1):.2f}x)") if t["macs"] else ""
            rows.append(f"model: {t['layers']} conv/dense layers, {t['weights']:,} weights, "
                        f"{t['weights_pruned_share']:.1%} of them pruned away{macs}")
        return "\n".join(rows)

    def plot_library(self, path=None):
        """Draws every layer's patterns (matplotlib); saves to ``path`` if given."""
        # A Figure without pyplot: no backend switch, so a notebook's inline
        # display keeps working.
        from matplotlib.figure import Figure

        n = max(len(r["library"]) for r in self) if self else 1
        fig = Figure(figsize=(n * 0.8, len(self) * 0.9))
        axes = fig.subplots(len(self), n, squeeze=False)
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
    totals = {"layers": 0, "weights": 0, "weights_kept": 0, "macs": 0, "macs_kept": 0}
    unknown_macs = False
    for layer in _walk(model):
        inner = layer.layer if isinstance(layer, PatternPruning) else layer
        if _has_weights_to_prune(inner) and not isinstance(inner, keras.layers.SeparableConv2D):
            kernel = prunable_kernel(inner) if hasattr(inner, "kernel") or isinstance(
                inner, PrunableLayer) else None
            if kernel is not None:
                value = np.asarray(keras.ops.convert_to_numpy(kernel))
                kept = int(np.count_nonzero(value))
                macs = _layer_macs(layer, value.size)
                totals["layers"] += 1
                totals["weights"] += value.size
                totals["weights_kept"] += kept
                if macs is None:
                    unknown_macs = True
                else:
                    totals["macs"] += macs
                    totals["macs_kept"] += macs // max(value.size, 1) * kept
    if unknown_macs:
        # A partial sum (e.g. only the dense head of a fully convolutional
        # model) would misstate the reduction.
        totals["macs"] = totals["macs_kept"] = None
    totals["weights_pruned_share"] = 1 - totals["weights_kept"] / max(totals["weights"], 1)
    report.totals = totals
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
