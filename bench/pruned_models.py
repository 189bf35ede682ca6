"""Pattern-prune the 3x3 convolutions of a Keras model in place (one-shot
projection: 8-pattern library + connectivity), for benchmarks.  Accuracy is
not the point here (random weights); the sparsity structure is what the
kernels see after ADMM training."""

from __future__ import annotations

import numpy as np

from cocopie_tf import patterns as P


def prune_conv_kernel(kernel_hwio: np.ndarray, *, num_patterns=8, connectivity=3.6,
                      group=1, rng=None) -> np.ndarray:
    """Returns the HWIO kernel with a pattern library + connectivity applied.

    group > 1: groups of `group` consecutive filters share the same masks
    (the compiler-friendly option of the pruning issue)."""
    kh, kw, ic, oc = kernel_hwio.shape
    kern = np.transpose(kernel_hwio, (3, 2, 0, 1)).astype(np.float64)  # [oc, ic, kh, kw]
    if oc % group:
        group = 1
    lib = P.select_library(kern, num_patterns=num_patterns)
    g = kern.reshape(oc // group, group, ic, kh, kw)
    energy = np.sqrt((g ** 2).sum(1))  # what the group shares
    _, ids = P.project_to_library(energy, lib)
    masks = lib[np.maximum(ids, 0)]
    masks &= P.connectivity_mask(energy * masks, connectivity)[..., None, None]
    pruned = (g * masks[:, None]).reshape(oc, ic, kh, kw)
    return np.transpose(pruned, (2, 3, 1, 0)).astype(kernel_hwio.dtype)


def prune_model(model, *, skip_first=True, **kw):
    """Prunes every 3x3 Conv2D (not depthwise) of `model` in place. Returns
    the number of pruned layers."""
    import keras

    n = 0
    convs = [l for l in model.layers if type(l) is keras.layers.Conv2D and l.kernel_size == (3, 3)]
    for i, layer in enumerate(convs):
        if skip_first and i == 0:
            continue
        w = layer.get_weights()
        w[0] = prune_conv_kernel(w[0], **kw)
        layer.set_weights(w)
        n += 1
    return n
