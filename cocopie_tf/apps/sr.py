"""Super-resolution x2 in the WDSR style (Yu et al. 2018): residual blocks
whose activation is wide (the ReLU sits between a narrow identity path and a
``expansion``-times wider conv), sub-pixel upscaling at the end.

One deviation from WDSR, for training that converges in minutes on a CPU:
the global skip is a bilinear upscaling of the input (WDSR learns it with a
5x5 conv), so the body learns only the detail bilinear upscaling misses.
"""

from __future__ import annotations

import numpy as np

from cocopie_tf.apps import photos as ph

SCALE = 2


def build(input_shape=(None, None, 3), features: int = 16, expansion: int = 4, blocks: int = 6):
    import keras

    from cocopie_tf.apps.layers import PixelShuffle

    inp = keras.Input(input_shape, name="low_res")
    x = keras.layers.Conv2D(features, 3, padding="same", name="head")(inp)
    for i in range(blocks):
        r = keras.layers.Conv2D(features * expansion, 3, padding="same", activation="relu",
                                name=f"block{i}_wide")(x)
        r = keras.layers.Conv2D(features, 3, padding="same", name=f"block{i}_narrow")(r)
        x = keras.layers.Add(name=f"block{i}_add")([x, r])
    # Zero-initialised: training starts from plain bilinear upscaling.
    x = keras.layers.Conv2D(3 * SCALE * SCALE, 3, padding="same", kernel_initializer="zeros",
                            name="tail")(x)
    detail = PixelShuffle(SCALE, name="pixel_shuffle")(x)
    base = keras.layers.UpSampling2D(SCALE, interpolation="bilinear", name="bilinear")(inp)
    out = keras.layers.Add(name="high_res")([base, detail])
    return keras.Model(inp, out, name="wdsr_x2")


def downscale(hr: np.ndarray) -> np.ndarray:
    """The low-resolution input of a high-resolution image: 2x2 box average
    (what a camera's binning does; H and W must be even)."""
    h, w = hr.shape[-3:-1]
    if h % SCALE or w % SCALE:
        raise ValueError(f"image size {h}x{w} is not a multiple of {SCALE}")
    lead = hr.shape[:-3]
    return hr.reshape(*lead, h // SCALE, SCALE, w // SCALE, SCALE, hr.shape[-1]).mean(
        axis=(-4, -2)).astype(np.float32)


def bicubic(lr: np.ndarray) -> np.ndarray:
    """The classical baseline: bicubic upscaling (scikit-image, order 3)."""
    import skimage.transform

    h, w = lr.shape[:2]
    return np.clip(skimage.transform.resize(lr, (h * SCALE, w * SCALE), order=3,
                                            anti_aliasing=False), 0, 1).astype(np.float32)


def training_data(settings):
    hr = ph.random_patches(ph.photos("train").values(), settings.patch * SCALE,
                           settings.patches, seed=settings.seed)
    return downscale(hr), hr


def compile_model(model, settings):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="mae")
    return model


def eval_pairs(size: int):
    """``{photo: (low-res input, high-res reference)}`` for the ``size`` x
    ``size`` output of each held-out photo."""
    out = {}
    for name, img in ph.photos("eval").items():
        hr = ph.center_crop(img, size)
        out[name] = (downscale(hr), hr)
    return out


def quality(outputs: dict, pairs: dict, settings=None) -> dict:
    """PSNR (dB, RGB, 4-pixel border excluded as usual in SR) per photo and
    on average, for the model and for bicubic upscaling."""
    b = 2 * SCALE
    rows = {}
    for name, (lr, hr) in pairs.items():
        crop = (slice(b, -b), slice(b, -b))
        rows[name] = {"psnr": ph.psnr(np.clip(outputs[name], 0, 1)[crop], hr[crop]),
                      "psnr_bicubic": ph.psnr(bicubic(lr)[crop], hr[crop])}
    rows["mean"] = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("psnr", "psnr_bicubic")}
    return rows


PANELS = ("low-res input (nearest)", "bicubic", "model", "original")


def pictures(name: str, pair, output) -> list:
    """``(title, image)`` per panel of PANELS."""
    lr, hr = pair
    images = (np.repeat(np.repeat(lr, SCALE, 0), SCALE, 1), bicubic(lr), np.clip(output, 0, 1), hr)
    return list(zip(PANELS, images))


# patch: low-res side of a training crop. "ci" proves the pipeline in
# seconds; "demo" gives a model visibly sharper than bicubic in minutes;
# "full" is the run behind docs/apps.md.
PRESETS = {
    "ci": dict(patch=16, patches=64, batch=16, dense_epochs=1, admm_epochs=1, retrain_epochs=1,
               eval_size=64),
    "demo": dict(patch=24, patches=1536, batch=16, dense_epochs=6, admm_epochs=4,
                 retrain_epochs=3),
    "full": dict(patch=32, patches=4096, batch=16, dense_epochs=20, admm_epochs=12,
                 retrain_epochs=10),
}
