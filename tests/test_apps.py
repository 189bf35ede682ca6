"""cocopie_tf.apps: the applications' layers and image maths against numpy
float64 references, each application end to end on its 'ci' preset (trained,
pruned, converted, run on stock LiteRT and with the delegate), and the
``demo --app`` command line."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from cocopie_tf.apps import layers, photos, pipeline


def _tflite_run(model, x):
    """``model`` converted with cocopie_tf.convert, run on stock LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    import cocopie_tf

    interp = Interpreter(model_content=cocopie_tf.convert(model))
    interp.allocate_tensors()
    for d, v in zip(interp.get_input_details(), x if isinstance(x, list) else [x]):
        interp.set_tensor(d["index"], v)
    interp.invoke()
    ops = {o["op_name"] for o in interp._get_ops_details()}
    return interp.get_tensor(interp.get_output_details()[0]["index"]), ops


def test_pixel_shuffle_matches_numpy_and_lowers_to_depth_to_space():
    rng = np.random.default_rng(0)
    r, c = 2, 3
    x = rng.standard_normal((2, 5, 4, r * r * c)).astype(np.float32)
    ref = np.empty((2, 5 * r, 4 * r, c))
    for i in range(r):
        for j in range(r):
            ref[:, i::r, j::r, :] = x[..., (i * r + j) * c:(i * r + j + 1) * c]
    inp = keras.Input((5, 4, r * r * c), batch_size=2)
    model = keras.Model(inp, layers.PixelShuffle(r)(inp))
    np.testing.assert_array_equal(np.asarray(model(x)), ref.astype(np.float32))
    out, ops = _tflite_run(model, x)
    np.testing.assert_array_equal(out, ref.astype(np.float32))
    assert "DEPTH_TO_SPACE" in ops
    assert model.layers[-1].compute_output_shape((2, 5, 4, 12)) == (2, 10, 8, 3)


def test_upsample_nearest_matches_numpy_and_lowers_to_one_resize():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    ref = np.repeat(np.repeat(x, 3, axis=1), 3, axis=2)
    inp = keras.Input((3, 4, 5), batch_size=2)
    model = keras.Model(inp, layers.UpsampleNearest(3)(inp))
    np.testing.assert_array_equal(np.asarray(model(x)), ref)
    out, ops = _tflite_run(model, x)
    np.testing.assert_array_equal(out, ref)
    assert "RESIZE_NEAREST_NEIGHBOR" in ops


def test_broadcast_add_matches_numpy():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((2, 3, 4, 6)).astype(np.float32)
    v = rng.standard_normal((2, 6)).astype(np.float32)
    a, b = keras.Input((3, 4, 6), batch_size=2), keras.Input((6,), batch_size=2)
    model = keras.Model([a, b], layers.BroadcastAdd()([a, b]))
    ref = f.astype(np.float64) + v.astype(np.float64)[:, None, None, :]
    np.testing.assert_allclose(np.asarray(model([f, v])), ref, rtol=1e-6)


@pytest.mark.parametrize("cls", [layers.PixelShuffle, layers.UpsampleNearest])
@pytest.mark.parametrize("scale", [1, 0, 2.0, "2"])
def test_scale_must_be_an_integer_of_at_least_2(cls, scale):
    with pytest.raises(ValueError, match="scale must be an integer >= 2"):
        cls(scale)


def test_layers_round_trip_through_keras_files(tmp_path):
    inp = keras.Input((4, 4, 8))
    vec = keras.Input((2,))
    x = layers.PixelShuffle(2)(inp)
    x = layers.UpsampleNearest(2)(x)
    x = layers.BroadcastAdd()([x, vec])
    model = keras.Model([inp, vec], x)
    path = tmp_path / "m.keras"
    model.save(path)
    # In a fresh process, `import cocopie_tf.apps` is all loading needs.
    code = ("import sys, keras, cocopie_tf.apps; m = keras.models.load_model(sys.argv[1]); "
            "print(type(m.layers[1]).__name__)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert proc.returncode == 0 and "PixelShuffle" in proc.stdout, proc.stderr[-2000:]
    loaded = keras.models.load_model(path)
    rng = np.random.default_rng(2)
    args = [rng.standard_normal((1, 4, 4, 8)).astype(np.float32),
            rng.standard_normal((1, 2)).astype(np.float32)]
    np.testing.assert_array_equal(np.asarray(loaded(args)), np.asarray(model(args)))


def test_downscale_is_a_2x2_box_average():
    from cocopie_tf.apps import sr

    rng = np.random.default_rng(3)
    hr = rng.random((2, 6, 8, 3)).astype(np.float32)
    ref = np.zeros((2, 3, 4, 3))
    for y in range(3):
        for x in range(4):
            ref[:, y, x] = hr[:, 2 * y:2 * y + 2, 2 * x:2 * x + 2].astype(np.float64).mean((1, 2))
    np.testing.assert_allclose(sr.downscale(hr), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="not a multiple of 2"):
        sr.downscale(hr[:, :5])


def test_psnr():
    a = np.zeros((4, 4, 3))
    assert photos.psnr(a, a + 0.1) == pytest.approx(20.0)
    assert photos.psnr(a, a + 25.5, peak=255) == pytest.approx(20.0)
    assert photos.psnr(a, a) == float("inf")
    with pytest.raises(ValueError, match="shapes differ"):
        photos.psnr(a, a[:2])


def test_gram_matches_numpy():
    from cocopie_tf.apps import style

    rng = np.random.default_rng(4)
    f = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    flat = f.astype(np.float64).reshape(2, 15, 4)
    ref = np.einsum("bnc,bnd->bcd", flat, flat) / 15
    np.testing.assert_allclose(np.asarray(style.gram(f)), ref, rtol=1e-5)


def test_lab_split_round_trips():
    from cocopie_tf.apps import color

    rgb = photos.center_crop(photos.load_photo("chelsea"), 32)
    lightness, ab = color.split_lab(rgb)
    assert lightness.shape == (32, 32, 1) and ab.shape == (32, 32, 2)
    assert 0 <= lightness.min() and lightness.max() <= 1 and np.abs(ab).max() <= 1
    np.testing.assert_allclose(color.to_rgb(lightness, ab), rgb, atol=2e-3)


def test_photos_are_split_and_cropped():
    assert not set(photos.EVAL_PHOTOS) & set(photos.TRAIN_PHOTOS)
    for name in photos.EVAL_PHOTOS + photos.TRAIN_PHOTOS:
        img = photos.load_photo(name)
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3
        assert 0 <= img.min() and img.max() <= 1 and min(img.shape[:2]) >= 256, name
    img = photos.load_photo("chelsea")
    crop = photos.center_crop(img, 100)
    h, w = img.shape[:2]
    np.testing.assert_array_equal(crop, img[(h - 100) // 2:(h - 100) // 2 + 100,
                                            (w - 100) // 2:(w - 100) // 2 + 100])
    assert photos.center_crop(img, 1000).shape == (1000, 1000, 3)  # resized up first
    p = photos.random_patches([img], 16, 5, seed=7)
    assert p.shape == (5, 16, 16, 3)
    np.testing.assert_array_equal(p, photos.random_patches([img], 16, 5, seed=7))
    with pytest.raises(ValueError, match="smaller than the 9999px patch"):
        photos.random_patches([img], 9999, 1)
    with pytest.raises(ValueError, match="unknown photo"):
        photos.load_photo("no_such_photo")
    with pytest.raises(ValueError, match="split must be"):
        photos.photos("test")


def test_settings_errors():
    assert pipeline.settings_for("sr", "ci").eval_size == 64
    assert pipeline.settings_for("color", "ci", seed=3).seed == 3
    with pytest.raises(ValueError, match="unknown app 'depth'"):
        pipeline.settings_for("depth")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        pipeline.settings_for("sr", "huge")
    with pytest.raises(ValueError, match="unknown setting.*epochs"):
        pipeline.settings_for("sr", "ci", epochs=3)
    from cocopie_tf.apps import style

    with pytest.raises(ValueError, match="loss_weights must be"):
        style.loss_network("vgg")


def _png_shape(path):
    import imageio.v3 as imageio

    return imageio.imread(path).shape


def _assert_patterned(model):
    """Every 3x3 kernel of every pruned conv keeps at most 4 weights, and
    some kernels are removed whole (connectivity pruning)."""
    seen = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.kernel_size == (3, 3) \
                and layer.kernel.shape[2] >= 8:
            k = np.asarray(layer.kernel).reshape(9, -1)
            nnz = (k != 0).sum(0)
            assert nnz.max() <= 4, layer.name
            assert (nnz == 0).any(), layer.name
            seen += 1
    assert seen >= 4


@pytest.mark.slow
@pytest.mark.parametrize("app", ["sr", "style", "color"])
def test_app_end_to_end(app, tmp_path):
    settings = pipeline.settings_for(app, "ci")
    dense, pruned, record = pipeline.train(app, settings, log=lambda *_: None)
    _assert_patterned(pruned)
    assert np.isfinite(record["dense_loss"]) and np.isfinite(record["pruned_loss"])

    # The deployed (fixed-shape, converted) dense model computes what Keras does.
    pairs = pipeline.app_module(app).eval_pairs(settings.eval_size)
    x = next(iter(pairs.values()))[0]
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=pipeline.deploy(app, dense, x.shape))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x[None])
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    ref = np.asarray(dense(x[None]), np.float64)
    assert np.linalg.norm(got - ref) <= 1e-4 * np.linalg.norm(ref)

    result = pipeline.evaluate(app, dense, pruned, settings, threads=(1,), runs=2,
                               out_dir=tmp_path, log=lambda *_: None)
    assert result["claimed_nodes"] > 0
    assert 0 < result["executed_macs"] < result["claimed_macs"]
    assert result["delegate_vs_stock_rel_error"] <= pipeline.AGREEMENT
    for model in ("dense", "pruned"):
        q = result["quality"][model]["mean"]
        assert all(np.isfinite(v) for v in q.values()), q
    lat = result["latency_ms"][1]
    assert set(lat) == {"dense_xnnpack", "pruned_xnnpack", "pruned_cocopie"}
    assert all(v["median"] > 0 for v in lat.values())
    titles = pipeline.panel_titles(app)
    size = settings.eval_size
    assert len(result["pictures"]) == len(photos.EVAL_PHOTOS)
    for path in result["pictures"]:
        assert _png_shape(path) == (size, len(titles) * size + 4 * (len(titles) - 1), 3)
    # A second run refuses to replace the pictures.
    with pytest.raises(FileExistsError):
        blank = {p: np.zeros(ref.shape[1:], np.float32) for p in pairs}
        pipeline.write_pictures(app, pairs, {"dense": blank, "pruned_cocopie": blank}, tmp_path)


def _cli(*args, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "cocopie_tf.cli", "demo", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_demo_app_writes_pictures(tmp_path):
    proc = _cli("--app", "sr", "--preset", "ci", "--runs", "2", "--threads", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "delegate claimed" in proc.stdout and "bicubic PSNR dB" in proc.stdout
    written = sorted(p.name for p in (tmp_path / "cocopie-demo-sr").iterdir())
    assert written == sorted(f"sr_{p}.png" for p in photos.EVAL_PHOTOS)


def test_cli_demo_app_errors(tmp_path, capsys):
    from cocopie_tf import cli

    (tmp_path / "file").write_text("x")
    assert cli.main(["demo", "--app", "sr", "--pictures", str(tmp_path / "file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    out = tmp_path / "pics"
    out.mkdir()
    (out / f"sr_{photos.EVAL_PHOTOS[0]}.png").write_bytes(b"mine")
    assert cli.main(["demo", "--app", "sr", "--pictures", str(out)]) == 2  # before training
    assert "exists" in capsys.readouterr().err
    assert (out / f"sr_{photos.EVAL_PHOTOS[0]}.png").read_bytes() == b"mine"
    assert cli.main(["demo", "--threads", "1,2"]) == 2
    assert "one --threads value" in capsys.readouterr().err
    assert cli.main(["demo", "--pictures", str(out)]) == 2
    assert "--pictures needs --app" in capsys.readouterr().err
    assert cli.main(["demo", "--app", "color", "--output", str(tmp_path / "m.tflite")]) == 2
    assert "--output is for the digits demo" in capsys.readouterr().err
    assert cli.main(["demo", "--app", "color", "--runs", "0"]) == 2
    assert "--runs must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--app", "depth"])


class _LocalLoss(keras.losses.Loss):  # not registered: Keras cannot rebuild it from config
    def call(self, y_true, y_pred):
        return keras.ops.mean((y_true - y_pred) ** 2)


def _small_cnn():
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, padding="same")(inp)
    x = keras.layers.Conv2D(16, 3, padding="same")(x)
    return keras.Model(inp, x)


def test_prune_patterns_keeps_the_compile_state():
    import cocopie_tf

    model = _small_cnn()
    model.compile(optimizer="adam", loss="mse")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruned = cocopie_tf.prune_patterns(model)
    assert pruned.compiled and pruned.loss == "mse"
    assert model.compiled


def test_prune_patterns_warns_when_the_loss_cannot_be_rebuilt():
    import cocopie_tf

    model = _small_cnn()
    model.compile(optimizer="adam", loss=_LocalLoss())
    with pytest.warns(UserWarning, match="is not compiled.*compile it before fit"):
        pruned = cocopie_tf.prune_patterns(model)
    assert not pruned.compiled and model.compiled
    pruned.compile(optimizer="adam", loss=_LocalLoss())  # and it trains once compiled
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 12, 12, 3)).astype(np.float32)
    pruned.fit(x, np.zeros((4, 12, 12, 16), np.float32), epochs=1, verbose=0,
               callbacks=[cocopie_tf.ADMMPruning(admm_epochs=1, retrain_epochs=0)])
