"""Does CoCo-Tune's pre-training pay off on super-resolution? A probe, not
the full search: how many fine-tuning steps a filter-pruned x2
super-resolution network needs to recover its PSNR, starting from the dense
model's L1-pruned weights (the baseline) or assembled from teacher-student
pre-trained one-module tuning blocks (CoCo-Tune).

Data: grayscale 24x24 patches of scikit-image's sample photos (training:
12 photos, validation: 4 others), 2x2-averaged to 12x12 and bilinearly
upsampled back; the network (a stem conv, 3 conv-pair modules of 32
channels, an output conv; every module's first conv is filter-pruned)
predicts the residual HR - bilinear, so the PSNR of its output against the
residual equals the PSNR of the reconstructed image.

    python bench/tune_sr_probe.py [--dense-epochs 20] [--pretrain-epochs 3] [--steps 400]

Prints the dense and bilinear PSNR, the blocks' teacher-student MSE before
and after pre-training, and per candidate the validation PSNR every 40
fine-tuning steps for both starts.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HR = 24
TRAIN = ["astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "brick", "grass",
         "gravel", "hubble_deep_field", "immunohistochemistry"]
VAL = ["cat", "clock", "page", "text"]


def _gray(im):
    from skimage import color

    im = np.asarray(im)
    if im.ndim == 3:
        return color.rgb2gray(im[..., :3]).astype(np.float32)
    return (im / 255.0).astype(np.float32)


def patches(names, n, rng):
    """(bilinear-upsampled LR input, HR - input residual target), n patches."""
    from skimage import data, transform

    ims = [_gray(getattr(data, k)()) for k in names]
    out = []
    for _ in range(n):
        im = ims[rng.integers(len(ims))]
        y, x = rng.integers(im.shape[0] - HR + 1), rng.integers(im.shape[1] - HR + 1)
        out.append(im[y:y + HR, x:x + HR])
    hr = np.stack(out)[..., None]
    lr = hr.reshape(n, HR // 2, 2, HR // 2, 2, 1).mean((2, 4))
    up = np.stack([transform.resize(p[..., 0], (HR, HR), order=1, mode="edge",
                                    anti_aliasing=False) for p in lr])[..., None]
    up = up.astype(np.float32)
    return up, (hr - up).astype(np.float32)


def build(keras):
    inp = keras.Input((HR, HR, 1))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="stem")(inp)
    modules = []
    for m in range(3):
        names = [f"m{m}a", f"m{m}b"]
        for name in names:
            h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name=name)(h)
        modules.append(names)
    return keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", name="out")(h)), modules


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dense-epochs", type=int, default=20)
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()

    import keras

    from cocopie_tf import tune
    from cocopie_tf.tune import explore as E

    rng = np.random.default_rng(0)
    xtr, ytr = patches(TRAIN, 4000, rng)
    xva, yva = patches(VAL, 500, rng)
    keras.utils.set_random_seed(0)
    model, modules = build(keras)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    t0 = time.perf_counter()
    model.fit(xtr, ytr, epochs=args.dense_epochs, batch_size=64, verbose=0)
    print(f"bilinear {E._psnr(yva, np.zeros_like(yva)):.2f} dB; dense "
          f"{E._psnr(yva, model.predict(xva, verbose=0)):.2f} dB "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    tm = E._Model(model, modules)
    blocks = [tune.Block(i, (r,), "filter") for i in range(3) for r in (0.3, 0.5, 0.7)]
    t0 = time.perf_counter()
    pre = tune.pretrain_blocks(tm, blocks, xtr, epochs=args.pretrain_epochs)
    print(f"pre-training {len(blocks)} blocks: {time.perf_counter() - t0:.0f} s; MSE before -> "
          "after: " + ", ".join(f"{b.key} {p.mse_before:.1e} -> {p.mse_after:.1e}"
                                for b, p in pre.items()), flush=True)
    for rates in [(0.3, 0.3, 0.3), (0.5, 0.5, 0.5), (0.7, 0.7, 0.7), (0.3, 0.7, 0.5)]:
        cand = tune.Candidate(rates, "filter")
        for name, blocks_ in (("baseline", None), ("blocks", pre)):
            keras.utils.set_random_seed(1)
            net = tune.assemble(tm, cand, blocks_, masks=True)
            trace = E._finetune(net, (xtr, ytr, xva, yva), steps=args.steps, eval_every=40,
                                target=float("inf"), batch_size=64, learning_rate=1e-3, seed=1,
                                strategy=None, loss=keras.losses.MeanSquaredError(), fn=E._psnr)
            print(f"{str(cand):<24} {name:<8} " + " ".join(f"{s}:{v:.2f}" for s, v in trace),
                  flush=True)


if __name__ == "__main__":
    main()
