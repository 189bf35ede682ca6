"""Automatic coloring after Iizuka, Simo-Serra and Ishikawa (2016): a shared
low-level feature network, a mid-level path at 1/4 resolution, a global path
(strided convs, global average pooling, dense layers) whose vector is fused
into every position of the mid-level features, and a colorization decoder
with nearest upsampling. Input: the L channel of CIE Lab; output: the a, b
channels, trained with the mean squared error on the photos.

Fusion: Iizuka et al. concatenate the global vector to every position and
apply a 1x1 conv; ``conv1x1(local) + dense(global)`` broadcast over the
positions is the same function with fewer operations
(:class:`~cocopie_tf.apps.layers.BroadcastAdd`).
The paper's classification head is left out (no labels here).
"""

from __future__ import annotations

import numpy as np

from cocopie_tf.apps import photos as ph

AB_SCALE = 110.0  # |a|, |b| of sRGB colours stay below about 110


def build(input_shape=(None, None, 1), width: int = 16):
    import keras

    from cocopie_tf.apps.layers import BroadcastAdd, UpsampleNearest

    conv = keras.layers.Conv2D
    inp = keras.Input(input_shape, name="lightness")
    x = conv(width, 3, strides=2, padding="same", activation="relu", name="low1")(inp)
    x = conv(2 * width, 3, padding="same", activation="relu", name="low2")(x)
    x = conv(2 * width, 3, strides=2, padding="same", activation="relu", name="low3")(x)
    low = conv(4 * width, 3, padding="same", activation="relu", name="low4")(x)

    mid = conv(4 * width, 3, padding="same", activation="relu", name="mid1")(low)
    mid = conv(2 * width, 3, padding="same", activation="relu", name="mid2")(mid)

    g = conv(4 * width, 3, strides=2, padding="same", activation="relu", name="global1")(low)
    g = conv(4 * width, 3, strides=2, padding="same", activation="relu", name="global2")(g)
    g = keras.layers.GlobalAveragePooling2D(name="global_pool")(g)
    g = keras.layers.Dense(4 * width, activation="relu", name="global_fc1")(g)
    g = keras.layers.Dense(2 * width, name="global_fc2")(g)

    f = conv(2 * width, 1, name="fusion_local")(mid)
    f = BroadcastAdd(name="fusion")([f, g])
    f = keras.layers.ReLU(name="fusion_relu")(f)

    d = conv(2 * width, 3, padding="same", activation="relu", name="dec1")(f)
    d = UpsampleNearest(2, name="dec_up1")(d)
    d = conv(width, 3, padding="same", activation="relu", name="dec2")(d)
    d = UpsampleNearest(2, name="dec_up2")(d)
    d = conv(width, 3, padding="same", activation="relu", name="dec3")(d)
    out = conv(2, 3, padding="same", activation="tanh", name="ab")(d)
    return keras.Model(inp, out, name="colorization")


def split_lab(rgb: np.ndarray):
    """RGB in [0, 1] -> (L / 100 with a channel axis, ab / AB_SCALE)."""
    import skimage.color

    lab = skimage.color.rgb2lab(rgb).astype(np.float32)
    return lab[..., :1] / 100.0, lab[..., 1:] / AB_SCALE


def to_rgb(lightness: np.ndarray, ab: np.ndarray) -> np.ndarray:
    import skimage.color

    lab = np.concatenate([lightness * 100.0, np.clip(ab, -1, 1) * AB_SCALE], axis=-1)
    return np.clip(skimage.color.lab2rgb(lab.astype(np.float64)), 0, 1).astype(np.float32)


def training_data(settings):
    crops = ph.random_patches(ph.photos("train").values(), settings.patch, settings.patches,
                              seed=settings.seed)
    lightness, ab = split_lab(crops)
    return lightness, ab


def compile_model(model, settings):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="mse")
    return model


def eval_pairs(size: int):
    """``{photo: (L input, RGB original)}``."""
    out = {}
    for name, img in ph.photos("eval").items():
        rgb = ph.center_crop(img, size)
        out[name] = (split_lab(rgb)[0], rgb)
    return out


def quality(outputs: dict, pairs: dict, settings=None) -> dict:
    """PSNR (dB, RGB) of the colourised photo, and of the grey photo (a = b =
    0) as the baseline."""
    rows = {}
    for name, (lightness, rgb) in pairs.items():
        rows[name] = {"psnr": ph.psnr(to_rgb(lightness, outputs[name]), rgb),
                      "psnr_grey": ph.psnr(to_rgb(lightness, np.zeros_like(outputs[name])), rgb)}
    rows["mean"] = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("psnr", "psnr_grey")}
    return rows


PANELS = ("grey input", "model", "original")


def pictures(name: str, pair, output) -> list:
    """``(title, image)`` per panel of PANELS."""
    lightness, rgb = pair
    return list(zip(PANELS, (np.repeat(lightness, 3, -1), to_rgb(lightness, output), rgb)))


PRESETS = {
    "ci": dict(patch=32, patches=64, batch=16, dense_epochs=1, admm_epochs=1, retrain_epochs=1,
               eval_size=64),
    "demo": dict(patch=64, patches=2048, batch=16, dense_epochs=8, admm_epochs=4,
                 retrain_epochs=3),
    "full": dict(patch=96, patches=4096, batch=16, dense_epochs=24, admm_epochs=12,
                 retrain_epochs=10),
}
