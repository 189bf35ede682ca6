"""Fast style transfer (Johnson et al. 2016): a feed-forward transformation
network (strided convs down, residual blocks, nearest upsampling + convs up)
trained with a content loss and a Gram-matrix style loss on the feature maps
of a VGG-16 loss network.

The loss network uses ImageNet weights when Keras has them (``loss_weights=
"auto"`` uses them if they are already in Keras' cache, ``"imagenet"``
downloads them). Offline it falls back to VGG-16 with fixed random weights
(``"random"``): random convolutional features still capture texture
statistics (Ulyanov et al. 2017; He et al. 2016 on random-weight style
transfer), so the method works, with a weaker, blotchier style. Both losses
are normalised per layer (content by the content features' energy, style by
the style Gram matrix's), so they need no retuning between the two.

Normalisation layers are left out on purpose: the deployed network is convs,
adds and upsampling only, all of which stay in fixed-point-free float
kernels the delegate and XNNPACK run directly.
"""

from __future__ import annotations

import os
import pathlib

import keras
import numpy as np

from cocopie_tf.apps import photos as ph

STYLE_PHOTO = "immunohistochemistry"  # blotchy purple-brown stains: a painterly texture
CONTENT_LAYER = "block2_conv2"
STYLE_LAYERS = ("block1_conv2", "block2_conv2", "block3_conv3")
STYLE_WEIGHT = 4.0
_VGG_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def build(input_shape=(None, None, 3), width: int = 16, blocks: int = 4):
    from cocopie_tf.apps.layers import UpsampleNearest

    inp = keras.Input(input_shape, name="photo")
    conv = keras.layers.Conv2D
    x = conv(width, 3, padding="same", activation="relu", name="head")(inp)
    x = conv(2 * width, 3, strides=2, padding="same", activation="relu", name="down1")(x)
    x = conv(4 * width, 3, strides=2, padding="same", activation="relu", name="down2")(x)
    for i in range(blocks):
        r = conv(4 * width, 3, padding="same", activation="relu", name=f"res{i}_a")(x)
        r = conv(4 * width, 3, padding="same", name=f"res{i}_b")(r)
        x = keras.layers.Add(name=f"res{i}_add")([x, r])
    x = UpsampleNearest(2, name="up1_nearest")(x)
    x = conv(2 * width, 3, padding="same", activation="relu", name="up1")(x)
    x = UpsampleNearest(2, name="up2_nearest")(x)
    x = conv(width, 3, padding="same", activation="relu", name="up2")(x)
    out = conv(3, 3, padding="same", activation="sigmoid", name="to_rgb")(x)
    return keras.Model(inp, out, name="style_transfer")


def _keras_cache() -> pathlib.Path:
    return pathlib.Path(os.environ.get("KERAS_HOME", pathlib.Path.home() / ".keras")) / "models"


def loss_network(weights: str = "auto"):
    """VGG-16 up to block3_conv3 -> (model with the content and style layers
    as outputs, the weights actually used: 'imagenet' or 'random')."""
    if weights not in ("auto", "imagenet", "random"):
        raise ValueError(f"loss_weights must be 'auto', 'imagenet' or 'random', got {weights!r}")
    if weights == "auto":
        weights = "imagenet" if (_keras_cache() / _VGG_FILE).is_file() else "random"
    if weights == "random":
        keras.utils.set_random_seed(1234)  # the same random features in every run
    vgg = keras.applications.VGG16(include_top=False, input_shape=(None, None, 3),
                                   weights="imagenet" if weights == "imagenet" else None)
    vgg.trainable = False
    names = (CONTENT_LAYER,) + STYLE_LAYERS
    outputs = [vgg.get_layer(n).output for n in names]
    return keras.Model(vgg.input, outputs, name=f"vgg16_{weights}"), weights


def _vgg_input(x):
    """[0, 1] RGB -> VGG-16's caffe preprocessing (BGR, mean-subtracted, 0-255)."""
    mean = keras.ops.convert_to_tensor(np.array([103.939, 116.779, 123.68], np.float32))
    return x[..., ::-1] * 255.0 - mean


def gram(features):
    """(B, H, W, C) -> (B, C, C) / (H W)."""
    f = keras.ops.convert_to_tensor(features)
    shape = keras.ops.shape(f)
    flat = keras.ops.reshape(f, (shape[0], -1, shape[3]))
    n = keras.ops.cast(shape[1] * shape[2], f.dtype)
    return keras.ops.einsum("bnc,bnd->bcd", flat, flat) / n


@keras.saving.register_keras_serializable(package="cocopie_tf")
class StyleLoss(keras.losses.Loss):
    """content + STYLE_WEIGHT * style, both normalised per layer (see the
    module docstring). ``y_true`` is the content photo, ``y_pred`` the
    network's output. Its config is (loss network weights, style size), so a
    compiled model clones and reloads with it."""

    def __init__(self, loss_weights: str = "auto", style_size: int = 256, name="style_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.loss_weights, self.style_size = loss_weights, int(style_size)
        self.network, self.weights = loss_network(loss_weights)
        style = ph.center_crop(ph.load_photo(STYLE_PHOTO), self.style_size)
        feats = self.network(_vgg_input(keras.ops.convert_to_tensor(style[None])))
        self.style_grams = [gram(f) for f in feats[1:]]
        self.style_norms = [keras.ops.sum(g * g) for g in self.style_grams]

    def parts(self, y_true, y_pred):
        ft = self.network(_vgg_input(y_true))
        fp = self.network(_vgg_input(y_pred))
        content = keras.ops.sum((fp[0] - ft[0]) ** 2) / (keras.ops.sum(ft[0] ** 2) + 1e-6)
        style = 0.0
        for f, g_s, norm in zip(fp[1:], self.style_grams, self.style_norms):
            d = gram(f) - g_s
            style = style + keras.ops.mean(keras.ops.sum(d * d, axis=(1, 2))) / norm
        return content, style / len(self.style_grams)

    def call(self, y_true, y_pred):
        content, style = self.parts(y_true, y_pred)
        return content + STYLE_WEIGHT * style

    def get_config(self):
        return {"loss_weights": self.loss_weights, "style_size": self.style_size,
                "name": self.name}


_LOSSES: dict = {}


def style_loss(settings) -> StyleLoss:
    key = (settings.loss_weights, max(settings.patch, 256))
    if key not in _LOSSES:
        _LOSSES[key] = StyleLoss(*key)
    return _LOSSES[key]


def training_data(settings):
    content = [img for n, img in ph.photos("train").items() if n != STYLE_PHOTO]
    x = ph.random_patches(content, settings.patch, settings.patches, seed=settings.seed)
    return x, x


def compile_model(model, settings):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                  loss=style_loss(settings))
    return model


def eval_pairs(size: int):
    """``{photo: (content photo, content photo)}``: the reference of a
    stylised image is its own content."""
    return {n: (ph.center_crop(img, size),) * 2 for n, img in ph.photos("eval").items()}


def quality(outputs: dict, pairs: dict, settings) -> dict:
    """Content and style losses (as trained, normalised; lower is better)
    per photo and on average."""
    loss = style_loss(settings)
    rows = {}
    for name, (x, _) in pairs.items():
        c, s = loss.parts(keras.ops.convert_to_tensor(x[None]),
                          keras.ops.convert_to_tensor(np.clip(outputs[name], 0, 1)[None]))
        rows[name] = {"content_loss": float(c), "style_loss": float(s)}
    rows["mean"] = {k: float(np.mean([r[k] for r in rows.values()]))
                    for k in ("content_loss", "style_loss")}
    rows["loss_network"] = loss.weights
    return rows


PANELS = ("content", "style", "model")


def pictures(name: str, pair, output) -> list:
    """``(title, image)`` per panel of PANELS."""
    style = ph.center_crop(ph.load_photo(STYLE_PHOTO), pair[0].shape[0])
    return list(zip(PANELS, (pair[0], style, np.clip(output, 0, 1))))


PRESETS = {
    "ci": dict(patch=32, patches=32, batch=8, dense_epochs=1, admm_epochs=1, retrain_epochs=1,
               eval_size=64),
    "demo": dict(patch=96, patches=768, batch=8, dense_epochs=4, admm_epochs=3,
                 retrain_epochs=2),
    "full": dict(patch=128, patches=2048, batch=8, dense_epochs=12, admm_epochs=8,
                 retrain_epochs=6),
}
