"""The photographs the applications train and evaluate on: colour photos that
ship inside scikit-image and scikit-learn (no download), split by photo so no
evaluation pixel is seen in training."""

from __future__ import annotations

import numpy as np

# Held out for evaluation: a cat (fur, fine texture) and a flower (smooth
# gradients, saturated colour) -- both kinds of content the apps must handle.
EVAL_PHOTOS = ("chelsea", "flower")
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "motorcycle", "china", "immunohistochemistry",
                "hubble_deep_field")


def load_photo(name: str) -> np.ndarray:
    """One photo as float32 RGB in [0, 1], shape (H, W, 3)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        if name == "motorcycle":  # the left view of the stereo pair
            img = skimage.data.stereo_motorcycle()[0]
        else:
            fn = getattr(skimage.data, name, None) if name in TRAIN_PHOTOS + EVAL_PHOTOS else None
            if fn is None:
                raise ValueError(f"unknown photo {name!r}")
            img = fn()
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"photo {name!r} is not an RGB image (shape {img.shape})")
    return (img[..., :3].astype(np.float32) / 255.0)


def photos(split: str) -> dict[str, np.ndarray]:
    """``split`` is 'train' or 'eval'."""
    names = {"train": TRAIN_PHOTOS, "eval": EVAL_PHOTOS}.get(split)
    if names is None:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return {n: load_photo(n) for n in names}


def random_patches(images, size: int, count: int, seed: int = 0, flips: bool = True) -> np.ndarray:
    """``count`` random ``size`` x ``size`` crops drawn evenly from ``images``
    (each at least ``size`` on both sides), with random flips."""
    rng = np.random.default_rng(seed)
    images = list(images)
    for img in images:
        if min(img.shape[:2]) < size:
            raise ValueError(f"photo of shape {img.shape} is smaller than the {size}px patch")
    out = np.empty((count, size, size, images[0].shape[2]), np.float32)
    for i in range(count):
        img = images[i % len(images)]
        y = rng.integers(0, img.shape[0] - size + 1)
        x = rng.integers(0, img.shape[1] - size + 1)
        p = img[y:y + size, x:x + size]
        if flips and rng.random() < 0.5:
            p = p[:, ::-1]
        if flips and rng.random() < 0.5:
            p = p[::-1]
        out[i] = p
    return out


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` crop (the photo is resized up first if
    it is smaller)."""
    h, w = img.shape[:2]
    if min(h, w) < size:
        import skimage.transform

        scale = size / min(h, w)
        img = skimage.transform.resize(img, (int(np.ceil(h * scale)), int(np.ceil(w * scale))),
                                       anti_aliasing=True).astype(np.float32)
        h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[y:y + size, x:x + size])


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, peak] (float64)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(peak * peak / mse))
