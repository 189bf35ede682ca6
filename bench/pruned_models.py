"""Pattern-prune the 3x3 convolutions of a Keras model in place, for
benchmarks (one-shot projection, see cocopie_tf.patterns.prune_kernel).
Accuracy is not the point here (random weights): the sparsity structure is
what the kernels see after ADMM training."""

from __future__ import annotations

from cocopie_tf.patterns import prune_kernel


def prune_model(model, *, skip_first=True, **kw):
    """Prunes every 3x3 Conv2D (not depthwise) of `model` in place, except the
    first when skip_first. Returns the number of pruned layers."""
    import keras

    convs = [l for l in model.layers if type(l) is keras.layers.Conv2D and l.kernel_size == (3, 3)]
    n = 0
    for i, layer in enumerate(convs):
        if skip_first and i == 0:
            continue
        w = layer.get_weights()
        w[0] = prune_kernel(w[0], **kw)
        layer.set_weights(w)
        n += 1
    return n


def prune_1x1(model, *, connectivity=3.6):
    """Connectivity-prunes every 1x1 Conv2D of `model` in place: per layer the
    1/connectivity of its (input channel, filter) weights with the largest
    magnitude stay (a 1x1 kernel is one weight, so this is the whole kernel).
    Returns the number of pruned layers."""
    import keras
    import numpy as np

    n = 0
    for layer in model.layers:
        if type(layer) is keras.layers.Conv2D and layer.kernel_size == (1, 1):
            w = layer.get_weights()
            k = w[0]
            keep = max(1, int(round(k.size / connectivity)))
            thresh = np.partition(np.abs(k).ravel(), k.size - keep)[k.size - keep]
            w[0] = np.where(np.abs(k) >= thresh, k, 0).astype(k.dtype)
            layer.set_weights(w)
            n += 1
    return n


def prune_depthwise(model, *, num_patterns=8):
    """Pattern-prunes every 3x3 DepthwiseConv2D of `model` in place: each
    channel's kernel keeps the 4 taps of its best pattern from the layer's
    own 8-pattern library (no channel removed). Returns the number of pruned
    layers."""
    import keras

    n = 0
    for layer in model.layers:
        if type(layer) is keras.layers.DepthwiseConv2D and layer.kernel_size == (3, 3):
            w = layer.get_weights()
            k = w[0]  # [3, 3, C, 1]: channel c's kernel is a filter of one input
            hwio = k.reshape(3, 3, 1, -1)
            w[0] = prune_kernel(hwio, num_patterns=num_patterns, connectivity=None).reshape(k.shape)
            layer.set_weights(w)
            n += 1
    return n
