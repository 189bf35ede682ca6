"""ADMM pattern + connectivity pruning inside model.fit (Keras 3)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import cocopie_tf  # noqa: E402
from cocopie_tf import patterns as P  # noqa: E402
from cocopie_tf.pruning.callback import find_wrappers  # noqa: E402


def digits(n=600, size=16):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images[:n, :, :, None].astype("float32") / 16.0
    x = np.repeat(np.repeat(x, size // 8, 1), size // 8, 2)
    return x, d.target[:n].astype("int32")


def compile_(model):
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def functional(bn=False, size=16):
    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 1))
    h = inp
    for f in (8, 16, 16):
        h = keras.layers.Conv2D(f, 3, padding="same", use_bias=not bn)(h)
        if bn:
            h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inp, keras.layers.Dense(10)(h))


def sequential():
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.DepthwiseConv2D(3, padding="same"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])


def nested():
    keras.utils.set_random_seed(2)
    inner_in = keras.Input((8, 8, 8))
    inner = keras.Model(inner_in, keras.layers.Conv2D(16, 3, padding="same", activation="relu")(
        keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inner_in)), name="block")
    inp = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    h = inner(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(10)(h))


def check_constraints(stripped, pruned_names, library_size=8, rate=3.6):
    report = {r["layer"]: r for r in cocopie_tf.pruning_report(stripped)}
    for layer in stripped.layers if not any(isinstance(l, keras.Model) for l in stripped.layers) \
            else [l for m in [stripped] + [l for l in stripped.layers if isinstance(l, keras.Model)]
                  for l in m.layers]:
        if layer.name not in pruned_names:
            continue
        k = np.asarray(layer.get_weights()[0])
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            k = k.reshape(k.shape[0], k.shape[1], 1, -1)
        kernels = np.transpose(k, (3, 2, 0, 1)).reshape(-1, k.shape[0], k.shape[1])
        masks = {m.tobytes() for m in (kernels != 0) if m.any()}
        assert len(masks) <= library_size, layer.name
        # Every kept kernel has exactly `entries` non-zeros (4 of 9), i.e. its
        # mask is one library pattern (weights exactly 0.0 by chance aside).
        nz = (kernels != 0).reshape(len(kernels), -1).sum(1)
        assert set(np.unique(nz)) <= {0, 4}, layer.name
        if not isinstance(layer, keras.layers.DepthwiseConv2D):
            kept = int((nz > 0).sum())
            assert kept <= int(np.ceil(len(kernels) / rate)), layer.name
        assert layer.name in report


def pruned_names(model):
    return {w.layer.name for w in find_wrappers(model)}


@pytest.mark.parametrize("build", [functional, sequential, nested], ids=["functional", "sequential", "nested"])
def test_whole_schedule_in_one_fit(build):
    x, y = digits()
    model = compile_(cocopie_tf.prune_patterns(build()))
    names = pruned_names(model)
    assert names  # the first conv is skipped, the others are wrapped
    cb = cocopie_tf.ADMMPruning()
    hist = model.fit(x, y, epochs=5, batch_size=64, callbacks=[cb], verbose=0)
    assert "admm_pattern_residual" in hist.history
    assert cb.summary()["phase"] == "masked"
    stripped = cocopie_tf.strip_pruning(model)
    assert not any(isinstance(l, cocopie_tf.PatternPruning) for l in stripped.layers)
    check_constraints(stripped, names)
    # The stripped model computes what the pruned one does.
    np.testing.assert_allclose(stripped.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_masks_hold_after_further_fit_and_with_batchnorm():
    x, y = digits()
    model = compile_(cocopie_tf.prune_patterns(functional(bn=True)))
    model.fit(x, y, epochs=3, batch_size=64, callbacks=[cocopie_tf.ADMMPruning(admm_epochs=2)],
              verbose=0)
    wrappers = find_wrappers(model)
    zeros = [w.kernel_value() == 0 for w in wrappers]
    # A second fit call continues in the masked phase: zeros stay exactly zero.
    model.fit(x, y, epochs=2, batch_size=64, callbacks=[cocopie_tf.ADMMPruning()], verbose=0)
    for w, z in zip(wrappers, zeros):
        assert np.all(w.kernel_value()[z] == 0.0)
    check_constraints(cocopie_tf.strip_pruning(model), pruned_names(model))


def test_save_load_resume_mid_schedule(tmp_path):
    x, y = digits()
    model = compile_(cocopie_tf.prune_patterns(functional()))
    model.fit(x, y, epochs=2, batch_size=64,
              callbacks=[cocopie_tf.ADMMPruning(admm_epochs=3, retrain_epochs=2)], verbose=0)
    path = tmp_path / "mid.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(find_wrappers(model), find_wrappers(loaded)):
        for name in ("z", "u", "y", "v", "mask", "library", "rho", "phase", "epoch", "schedule"):
            np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
        np.testing.assert_array_equal(a.kernel_value(), b.kernel_value())
    assert int(np.asarray(find_wrappers(loaded)[0].epoch)) == 2
    cb = cocopie_tf.ADMMPruning()  # defaults: the stored schedule wins
    loaded.fit(x, y, epochs=3, batch_size=64, callbacks=[cb], verbose=0)
    assert cb.summary()["phase"] == "masked" and cb.summary()["epoch"] == 5
    check_constraints(cocopie_tf.strip_pruning(loaded), pruned_names(loaded))


def test_group_shared_masks():
    x, y = digits()
    model = compile_(cocopie_tf.prune_patterns(functional(), group=4, connectivity=2.0))
    model.fit(x, y, epochs=3, batch_size=64, callbacks=[cocopie_tf.ADMMPruning()], verbose=0)
    for layer in cocopie_tf.strip_pruning(model).layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.name in pruned_names(model):
            nz = np.asarray(layer.get_weights()[0]) != 0  # kh, kw, in, out
            groups = nz.reshape(*nz.shape[:3], -1, 4)
            assert np.all(groups == groups[..., :1])  # 4 filters share each mask


def test_given_library_is_used():
    lib = P.candidate_patterns()[:8]
    x, y = digits()
    model = compile_(cocopie_tf.prune_patterns(functional(), library=lib))
    model.fit(x, y, epochs=2, batch_size=64, callbacks=[cocopie_tf.ADMMPruning()], verbose=0)
    stripped = cocopie_tf.strip_pruning(model)
    allowed = {m.tobytes() for m in lib}
    for layer in stripped.layers:
        if layer.name in pruned_names(model):
            k = np.asarray(layer.get_weights()[0])
            for m in np.transpose(k != 0, (3, 2, 0, 1)).reshape(-1, 3, 3):
                assert not m.any() or m.tobytes() in allowed


def test_report_renders_and_draws(tmp_path, monkeypatch):
    x, y = digits(200)
    model = compile_(cocopie_tf.prune_patterns(functional()))
    model.fit(x, y, epochs=2, batch_size=64, callbacks=[cocopie_tf.ADMMPruning()], verbose=0)
    stripped = cocopie_tf.strip_pruning(model)
    report = cocopie_tf.pruning_report(stripped)
    assert len(report) == 2 and "weight red." in str(report)
    for r in report:
        assert r["weight_reduction"] > 6 and sum(r["histogram"]) == r["kernels_kept"]
    # Model-level totals (issue 13 item 1), counted here from the weights.
    layers = [l for l in stripped.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
    kernels = [np.asarray(l.get_weights()[0]) for l in layers]
    positions = [int(np.prod(l.output.shape[1:-1])) if len(l.output.shape) > 2 else 1
                 for l in layers]
    t = report.totals
    assert t["layers"] == len(layers) == 4  # 3 convs (the first unpruned), the dense head
    assert t["weights"] == sum(k.size for k in kernels)
    assert t["weights_kept"] == sum(np.count_nonzero(k) for k in kernels)
    assert t["macs"] == sum(p * k.size for p, k in zip(positions, kernels))
    assert t["macs_kept"] == sum(p * np.count_nonzero(k) for p, k in zip(positions, kernels))
    assert 0 < t["weights_pruned_share"] < 1 and "pruned away" in str(report)
    # A fully convolutional model (no fixed height/width) has no MACs per
    # sample: no partial total.
    inp = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(16, 3, padding="same")(inp)
    h = keras.layers.Conv2D(16, 3, padding="same")(h)
    fcn = cocopie_tf.strip_pruning(cocopie_tf.prune_oneshot(keras.Model(inp, h)))
    fcn_report = cocopie_tf.pruning_report(fcn)
    assert fcn_report.totals["macs"] is None and fcn_report.totals["macs_kept"] is None
    assert "MACs per sample depend on the input size" in str(fcn_report)
    matplotlib = pytest.importorskip("matplotlib")
    # Drawing must not switch the user's backend (a notebook's inline display).
    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: pytest.fail("switched the backend"))
    fig = report.plot_library(tmp_path / "lib.png")
    assert (tmp_path / "lib.png").read_bytes()[:4] == b"\x89PNG"
    assert len(fig.axes) == len(report) * max(len(r["library"]) for r in report)


@pytest.mark.parametrize("kwargs,match", [
    (dict(connectivity=0.5), "connectivity"),
    (dict(num_patterns=57), "num_patterns=57"),
    (dict(entries=10), "entries=10"),
    (dict(layers=["nope"]), "no layer named 'nope'"),
    (dict(layers=["dense"]), "'dense' cannot be pruned"),
])
def test_bad_arguments(kwargs, match):
    model = functional()
    if "layers" in kwargs and kwargs["layers"] == ["dense"]:
        kwargs = dict(layers=[model.layers[-1].name])
        match = f"'{model.layers[-1].name}' cannot be pruned"
    with pytest.raises(ValueError, match=match):
        cocopie_tf.prune_patterns(model, **kwargs)


def test_nothing_to_prune():
    inp = keras.Input((4,))
    with pytest.raises(ValueError, match="nothing to prune"):
        cocopie_tf.prune_patterns(keras.Model(inp, keras.layers.Dense(2)(inp)))


def test_callback_without_wrappers():
    x, y = digits(64)
    model = compile_(functional())
    with pytest.raises(ValueError, match="prune_patterns"):
        model.fit(x, y, epochs=1, callbacks=[cocopie_tf.ADMMPruning()], verbose=0)


@pytest.mark.slow
def test_mirrored_strategy_two_logical_cpus(tmp_path):
    code = textwrap.dedent("""
        import sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.path.insert(0, sys.argv[1])
        import numpy as np, keras, cocopie_tf
        from test_pruning import digits, functional, compile_, check_constraints, pruned_names
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        x, y = digits()
        with strategy.scope():
            model = compile_(cocopie_tf.prune_patterns(functional()))
        cb = cocopie_tf.ADMMPruning()
        model.fit(x, y, epochs=4, batch_size=64, callbacks=[cb], verbose=0)
        assert cb.summary()["phase"] == "masked", cb.summary()
        check_constraints(cocopie_tf.strip_pruning(model), pruned_names(model))
        print("mirrored ok")
    """)
    import pathlib

    tests_dir = str(pathlib.Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-c", code, tests_dir], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert "mirrored ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_1x1_connectivity_and_5x5_patterns():
    x, y = digits(200)
    keras.utils.set_random_seed(4)
    inp = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(16, 5, padding="same", activation="relu", name="five")(h)
    h = keras.layers.Conv2D(16, 1, activation="relu", name="one")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(10)(h))
    pruned = compile_(cocopie_tf.prune_patterns(model, prune_1x1=True, connectivity=2.0))
    assert pruned_names(pruned) == {"five", "one"}
    pruned.fit(x, y, epochs=2, batch_size=64, callbacks=[cocopie_tf.ADMMPruning()], verbose=0)
    stripped = cocopie_tf.strip_pruning(pruned)
    five = np.asarray(stripped.get_layer("five").get_weights()[0])
    nz = (np.transpose(five, (3, 2, 0, 1)).reshape(-1, 25) != 0).sum(1)
    assert set(np.unique(nz)) <= {0, 4} and (nz > 0).sum() <= 8 * 16 / 2
    one = np.asarray(stripped.get_layer("one").get_weights()[0])
    assert np.count_nonzero(one) == 16 * 16 // 2  # half the 1x1 connections kept


def test_single_layer_and_custom_layer_opt_in():
    wrapped = cocopie_tf.prune_patterns(keras.layers.Conv2D(4, 3))
    assert isinstance(wrapped, cocopie_tf.PatternPruning)

    class MyConv(keras.layers.Layer, cocopie_tf.PrunableLayer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(3, 3, input_shape[-1], 8), initializer="glorot_uniform")

        def call(self, x):
            return keras.ops.conv(x, self.w, padding="same")

        def get_prunable_kernel(self):
            return self.w

    keras.utils.set_random_seed(5)
    inp = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, padding="same")(inp)
    h = MyConv(name="mine")(h)
    model = keras.Model(inp, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h)))
    pruned = compile_(cocopie_tf.prune_patterns(model, layers=["mine"]))
    x, y = digits(128)
    pruned.fit(x, y, epochs=2, batch_size=64, callbacks=[cocopie_tf.ADMMPruning()], verbose=0)
    w = find_wrappers(pruned)[0]
    nz = (np.transpose(w.kernel_value(), (3, 2, 0, 1)).reshape(-1, 9) != 0).sum(1)
    assert set(np.unique(nz)) <= {0, 4}


class _RecordLR(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.lrs = []

    def on_train_batch_begin(self, batch, logs=None):
        self.lrs.append(float(np.asarray(self.model.optimizer.learning_rate)))


def test_retraining_cosine_lr_decay_and_restore():
    x, y = digits(256)  # 4 steps per epoch
    model = functional()
    model = cocopie_tf.prune_patterns(model)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rec = _RecordLR()
    model.fit(x, y, epochs=3, batch_size=64, verbose=0,
              callbacks=[cocopie_tf.ADMMPruning(admm_epochs=1, retrain_epochs=2,
                                                retrain_lr_decay="cosine"), rec])
    lrs = np.array(rec.lrs)
    assert len(lrs) == 12
    np.testing.assert_allclose(lrs[:4], 2e-3, rtol=1e-6)  # ADMM: the user's rate
    t = np.arange(8) / 8
    np.testing.assert_allclose(lrs[4:], 2e-3 * 0.5 * (1 + np.cos(np.pi * t)), rtol=1e-5)
    # Restored once retraining is over.
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(2e-3)


def test_retraining_lr_decay_resumes_and_can_be_off(tmp_path):
    x, y = digits(256)
    model = compile_(cocopie_tf.prune_patterns(functional()))
    base = float(np.asarray(model.optimizer.learning_rate))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0,
              callbacks=[cocopie_tf.ADMMPruning(admm_epochs=1, retrain_epochs=3,
                                                retrain_lr_decay="cosine")])
    # Interrupted mid-retraining; a fresh callback continues the same curve.
    rec = _RecordLR()
    model.fit(x, y, epochs=2, batch_size=64, verbose=0,
              callbacks=[cocopie_tf.ADMMPruning(retrain_lr_decay="cosine"), rec])
    t = np.arange(4, 12) / 12
    np.testing.assert_allclose(rec.lrs, base * 0.5 * (1 + np.cos(np.pi * t)), rtol=1e-4)
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(base)

    off = compile_(cocopie_tf.prune_patterns(functional()))
    rec = _RecordLR()
    off.fit(x, y, epochs=2, batch_size=64, verbose=0,
            callbacks=[cocopie_tf.ADMMPruning(admm_epochs=1), rec])  # default: off
    np.testing.assert_allclose(rec.lrs, base, rtol=1e-6)
    with pytest.raises(ValueError, match="retrain_lr_decay"):
        cocopie_tf.ADMMPruning(retrain_lr_decay="step")


def test_admm_updates_every_n_steps():
    """update_unit="step": Z/U/Y/V are updated every N optimizer steps of the
    ADMM phase (checked by counting the updates), rho grows once per epoch,
    and the dual update is U <- U + W - Z with Z the projection of W + U."""
    x, y = digits(320)
    model = compile_(cocopie_tf.prune_patterns(functional()))
    calls = []

    class Counting(cocopie_tf.ADMMPruning):
        def _admm_update(self):
            w = self.wrappers[0]
            before = (w.kernel_value(), np.asarray(w.u))
            super()._admm_update()
            calls.append((before, np.asarray(w.z), np.asarray(w.u)))

    cb = Counting(admm_epochs=2, retrain_epochs=1, update_every=3, update_unit="step")
    model.fit(x, y, epochs=3, batch_size=32, callbacks=[cb], verbose=0)  # 10 steps an epoch
    assert len(calls) == 2 * (10 // 3)
    wrapper = cb.wrappers[0]
    for (wv, u0), z, u1 in calls:
        pat, _ = wrapper.masks_for(wv + u0, connectivity=False)
        np.testing.assert_allclose(z, (wv + u0) * pat, rtol=0, atol=0)
        np.testing.assert_allclose(u1, u0 + wv - z, rtol=1e-6, atol=1e-7)
    assert cb.summary()["phase"] == "masked"
    check_constraints(cocopie_tf.strip_pruning(model), pruned_names(model))
    with pytest.raises(ValueError, match="update_unit"):
        cocopie_tf.ADMMPruning(update_unit="batch")


def test_fit_without_the_callback_keeps_the_mask_and_warns(tmp_path):
    """Issue 12 item 8: resuming fit without ADMMPruning un-pruned the model."""
    import warnings

    x, y = digits(256)
    model = compile_(cocopie_tf.prune_patterns(functional()))
    model.fit(x, y, epochs=3, batch_size=64, verbose=0,
              callbacks=[cocopie_tf.ADMMPruning(admm_epochs=2, retrain_epochs=1)])
    path = tmp_path / "pruned.keras"
    model.save(path)
    resumed = keras.models.load_model(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a masked model fine-tunes without a warning
        resumed.fit(x, y, epochs=2, batch_size=32, verbose=0)
    wrappers = find_wrappers(resumed)
    assert wrappers
    for w in wrappers:
        mask = np.asarray(keras.ops.convert_to_numpy(w.mask))
        value = w.kernel_value()
        assert mask.mean() < 0.5
        assert np.count_nonzero(value[mask == 0]) == 0
        assert np.count_nonzero(value[mask == 1]) == np.count_nonzero(mask)
    fresh = compile_(cocopie_tf.prune_patterns(functional()))
    with pytest.warns(UserWarning, match="without the ADMMPruning callback"):
        fresh.fit(x, y, epochs=1, batch_size=64, verbose=0)


LOAD_CHILD = textwrap.dedent(r"""
    import sys
    order, path = sys.argv[1], sys.argv[2]
    if order == "cocopie_first":
        import cocopie_tf
        assert "keras" not in sys.modules and "tensorflow" not in sys.modules
        import keras
        model = keras.models.load_model(path)
    elif order == "keras_first":
        import keras
        import cocopie_tf
        model = keras.models.load_model(path)
    else:
        import keras
        try:
            keras.models.load_model(path)
            raise SystemExit("loaded without cocopie_tf")
        except TypeError:
            pass
        import cocopie_tf
        # pruning_scope() works even where the global registration is missing.
        keras.saving.get_custom_objects().pop("cocopie_tf>PatternPruning", None)
        with cocopie_tf.pruning_scope():
            model = keras.models.load_model(path)
    phases = [int(l.phase.numpy()) for l in model.layers if hasattr(l, "phase")]
    print("PHASES", phases)
""")


@pytest.mark.parametrize("order", ["cocopie_first", "keras_first", "scope"])
def test_load_model_after_import_cocopie_tf(tmp_path, order):
    """Issue 13 item 4: wrapped models load after `import cocopie_tf`, in
    either import order, mid-schedule; pruning_scope() for the rest."""
    x, y = digits(128)
    model = compile_(cocopie_tf.prune_patterns(functional()))
    model.fit(x, y, epochs=1, batch_size=64, verbose=0,
              callbacks=[cocopie_tf.ADMMPruning(admm_epochs=3)])
    path = tmp_path / "mid.keras"
    model.save(path)
    want = [int(w.phase.numpy()) for w in find_wrappers(model)]
    assert want and set(want) == {1}  # mid-schedule: ADMM phase
    p = subprocess.run([sys.executable, "-c", LOAD_CHILD, order, str(path)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split("PHASES")[1].strip() == str(want)


def test_selection_skips_what_it_cannot_prune_and_says_why():
    """Issue 13 item 1: a 1x3 conv is skipped (not an error) by the default
    selection and listed with the reason; naming it explicitly still raises."""
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="first")(inp)
    h = keras.layers.Conv2D(8, (1, 3), padding="same", name="one_by_three")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", name="c3")(h)
    h = keras.layers.SeparableConv2D(16, 3, padding="same", name="sep")(h)
    h = keras.layers.Conv2D(16, 1, name="pw")(h)
    h = keras.layers.Dense(10, name="fc")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, h)
    pruned = cocopie_tf.prune_patterns(model)
    sel = pruned.pruning_selection
    assert [r["layer"] for r in sel] == ["first", "one_by_three", "c3", "sep", "pw", "fc"]
    assert [r["layer"] for r in sel if r["decision"] == "wrapped"] == ["c3"]
    assert [w.layer.name for w in find_wrappers(pruned)] == ["c3"]
    why = sel.skipped()
    assert "1x3 kernel" in why["one_by_three"] and "first convolution" in why["first"]
    assert "1x1" in why["pw"] and "SeparableConv2D" in why["sep"] and "Dense" in why["fc"]
    assert "c3" in str(sel) and "wrapped 1 of 6 layers" in str(sel)
    with pytest.raises(ValueError, match="one_by_three.*1x3 kernel"):
        cocopie_tf.prune_patterns(model, layers=["one_by_three"])


def test_selection_of_mobilenet_v2_lists_every_conv_with_true_totals():
    mobilenet = keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None)
    sel = cocopie_tf.prune_patterns(mobilenet).pruning_selection
    convs = [l for l in mobilenet.layers
             if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense))]
    assert [r["layer"] for r in sel] == [l.name for l in convs]
    wrapped = [l for l in convs if isinstance(l, keras.layers.DepthwiseConv2D)]
    assert [r["layer"] for r in sel if r["decision"] == "wrapped"] == [l.name for l in wrapped]
    assert all(r["why"] for r in sel if r["decision"] == "skipped")
    # The totals, counted here independently from the layers' own shapes.
    weights = {l.name: int(np.prod(l.kernel.shape)) for l in convs}
    macs = {l.name: int(np.prod(l.output.shape[1:-1])) * weights[l.name] for l in convs}
    t = sel.totals()
    assert t["weights"] == sum(weights.values())
    assert t["weights_wrapped"] == sum(weights[l.name] for l in wrapped)
    assert t["macs"] == sum(macs.values())
    assert t["macs_wrapped"] == sum(macs[l.name] for l in wrapped)
    assert t["weights_share"] < 0.03  # the honest figure: depthwise weights are few


def test_subclassed_model_gets_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = keras.layers.Conv2D(8, 3)
            self.b = keras.layers.Conv2D(8, 3)

        def call(self, x):
            return self.b(self.a(x))

    net = Net()
    net(np.zeros((1, 8, 8, 4), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        cocopie_tf.prune_patterns(net)


def test_strip_before_pruning_names_the_missing_step():
    """Issue 13 item 2: strip_pruning before any hard prune used to fail with
    'library contains an empty pattern'."""
    wrapped = cocopie_tf.prune_patterns(functional())
    with pytest.raises(ValueError, match="ADMMPruning callback has not run.*prune_oneshot"):
        cocopie_tf.strip_pruning(wrapped)


def test_prune_oneshot_needs_no_fit_and_its_masks_hold(capsys):
    x, y = digits(128)
    model = functional()
    wrapped = cocopie_tf.prune_oneshot(model, connectivity=3.6)
    stripped = cocopie_tf.strip_pruning(wrapped)
    check_constraints(stripped, pruned_names(wrapped))
    masks = {w.name: np.asarray(keras.ops.convert_to_numpy(w.mask)) for w in find_wrappers(wrapped)}
    compile_(wrapped).fit(x, y, epochs=1, batch_size=64, verbose=0)  # optional masked retraining
    for w in find_wrappers(wrapped):
        assert np.count_nonzero(w.kernel_value()[masks[w.name] == 0]) == 0
    assert "hard prune" not in capsys.readouterr().out  # no ADMM, so no residuals to report


def test_hard_prune_at_large_residuals_is_logged_and_warned(capsys):
    x, y = digits(128)
    model = compile_(cocopie_tf.prune_patterns(functional()))
    cb = cocopie_tf.ADMMPruning(admm_epochs=1, rho=1e-4)  # hard prune right after 1 epoch
    with pytest.warns(UserWarning, match="hard-pruning at large residuals") as record:
        model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[cb])
    message = str(next(r.message for r in record if "large residuals" in str(r.message)))
    assert "admm_epochs" in message and "rho" in message  # says what to change
    out = capsys.readouterr().out
    assert "ADMMPruning: hard prune after 1 ADMM epoch(s); relative residuals" in out
    # One line, with the per-layer share of ||W||^2 the hard prune removed.
    line = next(l for l in out.splitlines() if "hard prune after" in l)
    assert "share of ||W||^2 removed per layer: mean" in line and "max" in line
    removed = cb.hard_prune_residuals
    assert set(removed) == pruned_names(model)
    assert all(0 <= v <= 1 for v in removed.values())
    assert max(removed.values()) > cb.LARGE_RESIDUAL  # from random weights after 1 epoch
    assert f"max {max(removed.values()):.3f}" in line
    assert f"mean {np.mean(list(removed.values())):.3f}" in line
    # Below the threshold the line is printed without a warning.
    cb.LARGE_RESIDUAL = 1.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cb._report_hard_prune(removed)
    assert "share of ||W||^2 removed" in capsys.readouterr().out


def test_logged_loss_is_the_task_loss_and_the_penalty_its_own_metric(capsys):
    """History's and the progress bar's ``loss`` is the compiled loss plus the
    user's regularisation, ``admm_penalty`` the ADMM penalty; evaluate() never
    includes it; the penalty still drives the gradient."""
    import tensorflow as tf

    x, y = digits(96)
    keras.utils.set_random_seed(5)
    inp = keras.Input((16, 16, 1))
    h = inp
    for f in (8, 8, 8):
        h = keras.layers.Conv2D(f, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(10, kernel_regularizer=keras.regularizers.L2(1e-2), name="head")(h)
    model = cocopie_tf.prune_patterns(keras.Model(inp, out))
    # Learning rate 0: the weights stay put, so every batch's task loss is the
    # one computed by hand below on the final weights.
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrappers = find_wrappers(model)
    seen = {}

    def penalty_at_start(logs=None):  # runs after ADMMPruning initialised Z, U, Y, V and rho
        value = lambda v: np.asarray(keras.ops.convert_to_numpy(v), "float64")  # noqa: E731
        seen["penalty"] = sum(
            0.5 * value(w.rho) * (np.sum((w.kernel_value() - value(w.z) + value(w.u)) ** 2)
                                  + np.sum((w.kernel_value() - value(w.y) + value(w.v)) ** 2))
            for w in wrappers)

    cb = cocopie_tf.ADMMPruning(admm_epochs=2, rho=1.0)
    hist = model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=1,
                     callbacks=[cb, keras.callbacks.LambdaCallback(on_train_begin=penalty_at_start)])
    assert cb.summary()["phase"] == "admm"

    logits = np.asarray(model.predict(x, verbose=0), "float64")
    m = logits.max(1, keepdims=True)
    ce = np.mean(np.log(np.exp(logits - m).sum(1)) + m[:, 0] - logits[np.arange(len(y)), y])
    reg = 1e-2 * np.sum(np.asarray(model.get_layer("head").kernel, "float64") ** 2)
    task = ce + reg
    assert seen["penalty"] > 0.05  # large enough to see in the loss if it were included
    np.testing.assert_allclose(hist.history["loss"][0], task, rtol=1e-5)
    np.testing.assert_allclose(hist.history["admm_penalty"][0], seen["penalty"], rtol=1e-5)
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), task, rtol=1e-5)
    progress = capsys.readouterr().out
    assert "admm_penalty:" in progress and "loss:" in progress
    assert "admm_penalty" not in model.metrics_names  # evaluate() returns the compiled results

    # The penalty is in the gradient (ADMM's W-step), not in the loss value.
    with tf.GradientTape() as tape:
        model(x[:8], training=True)
        extra = sum(loss for w in wrappers for loss in w.losses)  # what the wrappers add
    kernels = [cocopie_tf.pruning.wrapper.prunable_kernel(w.layer) for w in wrappers]
    grads = tape.gradient(extra, kernels)
    assert float(extra) == 0.0
    for w, g in zip(wrappers, grads):
        value = lambda v: np.asarray(keras.ops.convert_to_numpy(v))  # noqa: E731
        wv, rho = w.kernel_value(), float(value(w.rho))
        expected = rho * ((wv - value(w.z) + value(w.u)) + (wv - value(w.y) + value(w.v)))
        np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-4, atol=1e-6)
