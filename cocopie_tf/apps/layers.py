"""The few layers the applications need beyond stock Keras; each converts to
one stock TFLite op (DEPTH_TO_SPACE, ADD with broadcasting)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="cocopie_tf")
class PixelShuffle(keras.layers.Layer):
    """Sub-pixel upscaling (Shi et al. 2016): (H, W, r*r*C) -> (rH, rW, C),
    TFLite's DEPTH_TO_SPACE."""

    def __init__(self, scale: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(scale, int) or scale < 2:
            raise ValueError(f"scale must be an integer >= 2, got {scale!r}")
        self.scale = scale

    def call(self, x):
        import tensorflow as tf

        return tf.nn.depth_to_space(x, self.scale)

    def compute_output_shape(self, shape):
        b, h, w, c = shape
        r = self.scale
        return (b, None if h is None else h * r, None if w is None else w * r, c // (r * r))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="cocopie_tf")
class BroadcastAdd(keras.layers.Layer):
    """``features (B, H, W, C) + vector (B, C)``: the fusion layer of the
    colouring network. A 1x1 conv of ``concat(features, tiled vector)`` equals
    ``conv1x1(features) + dense(vector)``; this is the second form, which
    never materialises the tiled vector."""

    def call(self, inputs):
        features, vector = inputs
        # A reshape (one TFLite RESHAPE), not vector[:, None, None, :]
        # (a STRIDED_SLICE with new axes).
        return features + keras.ops.reshape(vector, (-1, 1, 1, vector.shape[-1]))

    def compute_output_shape(self, shapes):
        return shapes[0]


@keras.saving.register_keras_serializable(package="cocopie_tf")
class UpsampleNearest(keras.layers.Layer):
    """Nearest-neighbour upscaling by an integer factor, as TFLite's
    RESIZE_NEAREST_NEIGHBOR (Keras' UpSampling2D lowers to tf.repeat, whose
    dynamic shapes the TFLite converter cannot legalise for the conv after)."""

    def __init__(self, scale: int = 2, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(scale, int) or scale < 2:
            raise ValueError(f"scale must be an integer >= 2, got {scale!r}")
        self.scale = scale

    def call(self, x):
        import tensorflow as tf

        size = tf.shape(x)[1:3] * self.scale
        return tf.image.resize(x, size, method="nearest")

    def compute_output_shape(self, shape):
        b, h, w, c = shape
        r = self.scale
        return (b, None if h is None else h * r, None if w is None else w * r, c)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
