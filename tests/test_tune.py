"""CoCo-Tune: Sequitur, block selection, pre-training, assembly, search."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")

from cocopie_tf import patterns as P  # noqa: E402
from cocopie_tf import tune  # noqa: E402
from cocopie_tf.tune import Block, Candidate, Nonterminal, sequitur  # noqa: E402

# ---------------------------------------------------------------------------
# Sequitur


def _check_grammar(seq, g):
    assert g.expand() == list(seq)
    uses = g.uses()
    for r, body in g.rules.items():
        if r:
            assert uses[r] >= 2, f"rule utility: R{r} used {uses[r]} time(s)\n{g}"
            assert len(body) >= 2
    where = {}
    for r, body in g.rules.items():
        for i in range(len(body) - 1):
            d = (body[i], body[i + 1])
            if d in where:
                # Only the overlapping occurrence inside a run "xxx" may repeat.
                r0, i0 = where[d]
                assert (r0, i0 + 1) == (r, i) and body[i] == body[i + 1], \
                    f"digram {d} occurs twice\n{g}"
            where[d] = (r, i)


def test_sequitur_known_inputs():
    g = sequitur("abcdbcabcd")  # the example of Nevill-Manning & Witten (1997)
    assert g.rules == {0: (Nonterminal(1), Nonterminal(2), Nonterminal(1)),
                       1: ("a", Nonterminal(2), "d"), 2: ("b", "c")}
    g = sequitur("aaaaaaaa")
    assert g.rules == {0: (Nonterminal(1), Nonterminal(1)), 1: (Nonterminal(2), Nonterminal(2)),
                       2: ("a", "a")}
    assert sequitur("abcde").rules == {0: tuple("abcde")}
    assert sequitur([]).rules == {0: ()}
    with pytest.raises(ValueError, match="sequence"):
        sequitur([[1], [2]])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=80))
def test_sequitur_invariants(seq):
    _check_grammar(seq, sequitur(seq))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abc"), min_size=1, max_size=6), min_size=1,
                max_size=12))
def test_sequitur_invariants_with_end_markers(strings):
    seq = [s for i, w in enumerate(strings) for s in [*w, ("end", i)]]
    g = sequitur(seq)
    _check_grammar(seq, g)
    for r, body in g.rules.items():  # a unique marker can never be inside a rule
        if r:
            assert not any(isinstance(s, tuple) for s in body)


def test_sequitur_linear_time():
    rng = np.random.default_rng(0)
    for n in (1_000, 10_000, 100_000):
        g = sequitur(rng.integers(0, 3, n).tolist())
        assert g.steps <= 4 * n  # digram checks per input symbol stay bounded


def test_cli_import_stays_light():
    # `cocopie-tf --help` builds every subcommand's parser: no Keras for that.
    code = ("import sys, cocopie_tf.tune.cli, cocopie_tf.tune as t; "
            "t.select_blocks([t.Candidate((0.3, 0.5))] * 2); "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# candidates and block selection


def test_candidates_and_bad_rates():
    cands = tune.sample_candidates(4, (0.3, 0.5, 0.7))
    assert len(cands) == 81 and len(set(cands)) == 81
    some = tune.sample_candidates(4, (0.3, 0.5, 0.7), n=64, seed=1)
    assert len(set(some)) == 64 and set(some) <= set(cands)
    both = tune.sample_candidates(2, (0.5,), method=["filter", "pattern"])
    assert [c.method for c in both] == ["filter", "pattern"]
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"rates.*outside \(0, 1\)"):
            Candidate((0.3, bad))
        with pytest.raises(ValueError, match="rates"):
            tune.sample_candidates(3, (0.3, bad))
    with pytest.raises(ValueError, match="method"):
        Candidate((0.3,), "magnitude")


def test_select_blocks_drops_single_use_rules():
    cands = [Candidate(r) for r in [(.3, .5, .7), (.3, .5, .3), (.5, .5, .7)]]
    sel = tune.select_blocks(cands, single_modules=False)
    # Only "m0@0.3 m1@0.5" repeats (in two networks); the third shares nothing.
    assert sel.blocks == [Block(0, (.3, .5), "filter")]
    assert sel.uses == [(0,), (0,), ()]
    # One-module blocks: m2@0.7 is left outside the rule in two networks;
    # m1@0.5 is outside it in the third only, so it gets no block.
    sel = tune.select_blocks(cands)
    assert sel.blocks == [Block(0, (.3, .5), "filter"), Block(2, (.7,), "filter")]
    assert sel.uses == [(0, 1), (0,), (1,)]


def test_select_blocks_parent_versus_child():
    # "a b c" occurs in X and Y only: one rule, taken whole.
    two = [Candidate(r) for r in [(.1, .2, .3, .4), (.1, .2, .3, .5)]]
    sel = tune.select_blocks(two, single_modules=False)
    assert sel.blocks == [Block(0, (.1, .2, .3), "filter")] and sel.uses == [(0,), (0,)]
    # Adding Z = "f b c g": "b c" (3 uses) is more frequent than its parent
    # "a b c" (2 uses), so the child block serves all three networks.
    three = two + [Candidate((.6, .2, .3, .7))]
    sel = tune.select_blocks(three, single_modules=False)
    assert [r for r in sel.grammar.rules.values() if len(r) == 2 and
            isinstance(r[1], Nonterminal)], "expected a nested rule"
    assert sel.blocks == [Block(1, (.2, .3), "filter")] and sel.uses == [(0,), (0,), (0,)]


def test_select_blocks_covers_candidates_exactly():
    cands = tune.sample_candidates(5, (0.3, 0.5, 0.7), n=70, seed=3)
    sel = tune.select_blocks(cands)
    for c, used in zip(cands, sel.uses):
        covered = []
        for j in used:
            b = sel.blocks[j]
            assert c.rates[b.start:b.stop] == b.rates and b.method == c.method
            covered += range(b.start, b.stop)
        assert len(covered) == len(set(covered))  # blocks of one network never overlap
    counts = np.bincount([j for u in sel.uses for j in u], minlength=len(sel.blocks))
    assert counts.min() >= 2  # every block is shared
    assert any(len(b.rates) > 1 for b in sel.blocks)


# ---------------------------------------------------------------------------
# models


def digits(n=400, size=16):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images[:n, :, :, None].astype("float32") / 16.0
    x = np.repeat(np.repeat(x, size // 8, 1), size // 8, 2)
    return x, d.target[:n].astype("int32")


def small_cnn(residual=False):
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c0")(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(h)
    h = keras.layers.MaxPooling2D(name="p1")(h)
    a = keras.layers.Conv2D(12, 3, padding="same", name="c2")(h)
    a = keras.layers.BatchNormalization(name="bn2")(a)
    a = keras.layers.ReLU(name="r2")(a)
    a = keras.layers.Conv2D(8, 3, padding="same", name="c3")(a)
    if residual:
        a = keras.layers.Add(name="add")([a, h])
    h = keras.layers.ReLU(name="r3")(a)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(h))


@pytest.fixture(scope="module")
def trained():
    x, y = digits()
    model = small_cnn(residual=True)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:300], y[:300], epochs=6, batch_size=32, verbose=0)
    return model, x[:300], y[:300], x[300:], y[300:]


def test_find_modules_auto_and_given():
    mods = tune.find_modules(small_cnn())
    assert [m.layers for m in mods] == [("c0", "c1", "p1"), ("c2", "bn2", "r2", "c3", "r3")]
    assert [m.prunable for m in mods] == [("c0",), ("c2",)]
    res = tune.find_modules(small_cnn(residual=True))
    # The residual block stays whole; its last conv feeds the Add, so only c2
    # can lose filters.
    assert [m.layers for m in res] == [("c0", "c1", "p1"),
                                       ("c2", "bn2", "r2", "c3", "add", "r3")]
    assert res[1].prunable == ("c2",) and res[1].convs == ("c2", "c3")
    seq = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="s0"),
                            keras.layers.ReLU(name="sr"), keras.layers.Conv2D(4, 3, name="s1"),
                            keras.layers.Flatten(name="f"), keras.layers.Dense(2, name="d")])
    assert [m.layers for m in tune.find_modules(seq)] == [("s0", "sr", "s1")]
    given = tune.find_modules(small_cnn(), [["c0", "c1"], ["p1", "c2", "bn2", "r2", "c3"]])
    assert [m.prunable for m in given] == [("c0",), ("c2",)]


def test_find_modules_bad_input():
    m = small_cnn(residual=True)
    with pytest.raises(ValueError, match=r"modules\[1\]: no layer named 'nope'"):
        tune.find_modules(m, [["c0", "c1"], ["nope"]])
    with pytest.raises(ValueError, match=r"modules\[0\] is not contiguous"):
        tune.find_modules(m, [["c0", "p1"]])
    with pytest.raises(ValueError, match=r"modules\[0\].*one input and one output"):
        tune.find_modules(m, [["c1", "p1", "c2"]])  # p1 also feeds the shortcut
    with pytest.raises(ValueError, match="modules"):
        tune.find_modules(m, [])
    with pytest.raises(ValueError, match="model must be a keras.Model"):
        tune.find_modules("model.keras")


def _l1_keep(kernel, rate):
    n = kernel.shape[-1]
    k = max(1, round((1 - rate) * n))
    return np.sort(np.argsort(-np.abs(kernel).sum(axis=(0, 1, 2)), kind="stable")[:k])


def _direct(n0, n2):
    """The residual CNN written out with c0 and c2 holding n0 and n2 filters."""
    inp = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(n0, 3, padding="same", activation="relu", name="c0")(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(h)
    h = keras.layers.MaxPooling2D(name="p1")(h)
    a = keras.layers.Conv2D(n2, 3, padding="same", name="c2")(h)
    a = keras.layers.BatchNormalization(name="bn2")(a)
    a = keras.layers.ReLU(name="r2")(a)
    a = keras.layers.Conv2D(8, 3, padding="same", name="c3")(a)
    h = keras.layers.ReLU(name="r3")(keras.layers.Add(name="add")([a, h]))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(h))


def test_pretrain_and_assemble(trained):
    model, x, _, _, _ = trained
    before = [w.copy() for w in model.get_weights()]
    block = Block(1, (0.5,), "filter")
    pre = tune.pretrain_blocks(model, [block], x, epochs=4, batch_size=32)
    p = pre[block]
    assert p.mse_after < 0.8 * p.mse_before
    assert p.history[-1] < p.history[0]
    for a, b in zip(before, model.get_weights()):  # the dense model is untouched
        np.testing.assert_array_equal(a, b)
    assert set(p.weights) == {"c2", "bn2", "r2", "c3", "add", "r3"}
    with pytest.raises(ValueError, match="blocks: block filter-m2-0.5 covers modules 2..2"):
        tune.pretrain_blocks(model, [Block(2, (0.5,), "filter")], x)

    # Independent reference: c2 keeps its strongest half by L1 norm, c3 reads
    # those channels, BN statistics follow them; block weights changed.
    w = {layer.name: layer.get_weights() for layer in model.layers}
    keep2 = _l1_keep(w["c2"][0], 0.5)
    init = [w["c2"][0][..., keep2], w["c2"][1][keep2]]
    assert p.weights["c2"][0].shape == init[0].shape
    assert not np.allclose(p.weights["c2"][0], init[0])

    # Teacher-student MSE before training, recomputed from the dense model.
    probe = keras.Model(model.input, [model.get_layer("p1").output, model.get_layer("r3").output])
    xin, yout = probe.predict(x, verbose=0)
    ref = _direct(8, len(keep2))
    sub_in = keras.Input(xin.shape[1:])
    a = ref.get_layer("c2")(sub_in)
    a = ref.get_layer("r2")(ref.get_layer("bn2")(a))
    a = ref.get_layer("c3")(a)
    sub = keras.Model(sub_in, keras.layers.ReLU()(keras.layers.Add()([a, sub_in])))
    ref.get_layer("c2").set_weights(init)
    ref.get_layer("bn2").set_weights([v[keep2] for v in w["bn2"]])
    ref.get_layer("c3").set_weights([w["c3"][0][:, :, keep2, :], w["c3"][1]])
    mse0 = float(np.mean((sub.predict(xin, verbose=0).astype(np.float64) - yout) ** 2))
    assert mse0 == pytest.approx(p.mse_before, rel=1e-4)

    # Assembly == the model built directly with the same weights.
    cand = Candidate((0.3, 0.5))
    net = tune.assemble(model, cand, pre)
    keep0 = _l1_keep(w["c0"][0], 0.3)
    ref = _direct(len(keep0), len(keep2))
    ref.get_layer("c0").set_weights([w["c0"][0][..., keep0], w["c0"][1][keep0]])
    ref.get_layer("c1").set_weights([w["c1"][0][:, :, keep0, :], w["c1"][1]])
    for name in ("c2", "bn2", "c3"):
        ref.get_layer(name).set_weights(p.weights[name])
    ref.get_layer("logits").set_weights(w["logits"])
    np.testing.assert_allclose(net.predict(x[:64], verbose=0), ref.predict(x[:64], verbose=0),
                               atol=1e-6, rtol=0)
    assert net.count_params() == ref.count_params()

    # Without blocks the same candidate starts from the pruned dense weights.
    plain = tune.assemble(model, cand)
    np.testing.assert_array_equal(plain.get_layer("c2").get_weights()[0], init[0])


def test_assemble_pattern_candidate(trained):
    model = trained[0]
    net = tune.assemble(model, Candidate((0.5, 0.7), "pattern"))
    for name, rate in (("c0", 0.5), ("c1", 0.5), ("c2", 0.7), ("c3", 0.7)):
        k = model.get_layer(name).get_weights()[0]
        ref = P.prune_kernel(k, num_patterns=8, connectivity=1 / (1 - rate))
        np.testing.assert_array_equal(net.get_layer(name).get_weights()[0], ref)
    with pytest.raises(ValueError, match="rates"):
        tune.assemble(model, Candidate((0.5, 0.5, 0.5)))


# ---------------------------------------------------------------------------
# the search


SEARCH = dict(finetune_steps=4, eval_every=2, pretrain_epochs=1, batch_size=32, progress=False)


def test_search_early_stop_and_report(trained, tmp_path, monkeypatch):
    model, x, y, xv, yv = trained
    cands = tune.sample_candidates(2, (0.3, 0.7))
    res = tune.search(model, x, y, xv, yv, candidates=cands, target=0.02,
                      directory=tmp_path / "s", **SEARCH)
    # Any network beats 2% accuracy: the smallest candidate is the answer.
    assert res.met and res.complete and res.trained == 1
    assert res.chosen["rank"] == 0 and res.chosen["candidate"] == "filter[0.7, 0.7]"
    chosen = res.model()
    assert chosen.count_params() == res.chosen["size"]
    acc = np.mean(np.argmax(chosen.predict(xv, verbose=0), -1) == yv)
    assert acc == pytest.approx(res.chosen["score"], abs=1e-9)
    assert "*" in res.table() and "chosen" in res.message
    import matplotlib

    monkeypatch.setattr(matplotlib, "use", lambda *a, **k: pytest.fail("switched the backend"))
    res.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_search_explore_all(trained, tmp_path):
    model, x, y, xv, yv = trained
    cands = tune.sample_candidates(2, (0.3, 0.7))
    res = tune.search(model, x, y, xv, yv, candidates=cands, target=0.02,
                      directory=tmp_path / "s", explore="all", **SEARCH)
    # Every candidate is evaluated; the answer is the same as stopping early.
    assert res.met and res.complete and res.trained == len(cands)
    assert res.chosen["rank"] == 0 and res.chosen["candidate"] == "filter[0.7, 0.7]"
    assert [r["rank"] for r in res.results] == list(range(len(cands)))
    # An unmeetable target: every candidate uses the whole budget, and the
    # trace holds an evaluation before training and every eval_every steps.
    res = tune.search(model, x, y, xv, yv, candidates=cands[:2], target=1.0,
                      directory=tmp_path / "u", explore="all", **SEARCH)
    for r in res.results:
        assert [s for s, _ in r["trace"]] == [0, 2, 4] or r["trace"][-1][1] >= 1.0
    with pytest.raises(ValueError, match="explore"):
        tune.search(model, x, y, xv, yv, candidates=cands, target=0.5,
                    directory=tmp_path / "t", explore="some", **SEARCH)


def test_search_on_demand_pretrains_only_what_it_reaches(trained, tmp_path):
    model, x, y, xv, yv = trained
    cands = tune.sample_candidates(2, (0.3, 0.5, 0.7))
    sel = tune.select_blocks(cands)
    res = tune.search(model, x, y, xv, yv, candidates=cands, target=0.02,
                      directory=tmp_path / "s", pretrain="on_demand", **SEARCH)
    assert res.trained == 1 and res.chosen["candidate"] == "filter[0.7, 0.7]"
    first = cands.index(Candidate((0.7, 0.7)))
    trained_blocks = set()
    for p in (tmp_path / "s" / "blocks").glob("*.json"):
        trained_blocks |= set(json.loads(p.read_text()))
    # Only the blocks of the one candidate reached were pre-trained.
    assert trained_blocks == {sel.blocks[j].key for j in sel.uses[first]}
    assert set(res.chosen["blocks"]) == trained_blocks
    assert len(sel.blocks) > len(trained_blocks)
    with pytest.raises(ValueError, match="pretrain"):
        tune.search(model, x, y, xv, yv, candidates=cands, target=0.5,
                    directory=tmp_path / "t", pretrain="lazy", **SEARCH)


def test_search_bad_inputs(trained, tmp_path):
    model, x, y, xv, yv = trained
    cands = tune.sample_candidates(2, (0.5,))
    for target in (0, 1.5, -1):
        with pytest.raises(ValueError, match="target"):
            tune.search(model, x, y, xv, yv, candidates=cands, target=target,
                        directory=tmp_path / "a", **SEARCH)
    with pytest.raises(ValueError, match="rates"):
        tune.search(model, x, y, xv, yv, candidates=[(0.5, 0.5, 0.5)], target=0.5,
                    directory=tmp_path / "a", **SEARCH)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="directory"):
        tune.search(model, x, y, xv, yv, candidates=cands, target=0.5,
                    directory=tmp_path / "user", **SEARCH)
    assert (tmp_path / "user" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="modules"):
        tune.search(model, x, y, xv, yv, candidates=cands, target=0.5, modules=[["c9"]],
                    directory=tmp_path / "b", **SEARCH)


def test_search_psnr_metric(tmp_path):
    """A regression search (metric="psnr", mean-squared-error loss): the
    scores in the results are the PSNR of the candidate's own predictions
    (numpy float64), and targets in dB are accepted."""
    x, _ = digits(240)
    rng = np.random.default_rng(0)
    noisy = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1).astype("float32")
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="b")(h)
    model = keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", name="out")(h))
    model.compile(optimizer="adam", loss="mse")
    model.fit(noisy[:200], x[:200], epochs=3, batch_size=32, verbose=0)
    xv, yv = noisy[200:], x[200:]

    def psnr(m):
        err = np.mean((m.predict(xv, verbose=0).astype(np.float64) - yv) ** 2)
        return 10 * np.log10(1 / err)

    dense_db = psnr(model)
    cands = [Candidate((0.5,)), Candidate((0.25,))]
    res = tune.search(model, noisy[:200], x[:200], xv, yv, candidates=cands,
                      target=dense_db + 30.0, metric="psnr", modules=[["a", "b"]],
                      directory=tmp_path / "s", explore="all", **SEARCH)
    assert not res.met and res.trained == 2  # 30 dB above dense: unreachable
    assert "objective unreachable" in res.message and " dB" in res.message
    assert "psnr" in res.table()
    best = res.model()
    assert res.chosen["score"] == pytest.approx(psnr(best), abs=1e-3)
    assert 0 < res.chosen["score"] < dense_db + 30.0
    res = tune.search(model, noisy[:200], x[:200], xv, yv, candidates=cands,
                      target=5.0, metric="psnr", modules=[["a", "b"]],
                      directory=tmp_path / "t", **SEARCH)
    assert res.met and res.trained == 1 and res.chosen["steps"] == 0
    for bad in (float("nan"), float("inf"), "30"):
        with pytest.raises(ValueError, match="target"):
            tune.search(model, noisy, x, xv, yv, candidates=cands, target=bad, metric="psnr",
                        modules=[["a", "b"]], directory=tmp_path / "x", **SEARCH)
    with pytest.raises(ValueError, match=r"y_val has \(10,\)"):
        tune.search(model, noisy[:200], x[:200], xv, np.zeros((len(xv), 10)),
                    candidates=cands, target=20.0, metric="psnr", modules=[["a", "b"]],
                    directory=tmp_path / "x", **SEARCH)
    with pytest.raises(ValueError, match="metric"):
        tune.search(model, noisy, x, xv, yv, candidates=cands, target=0.5, metric="ssim",
                    modules=[["a", "b"]], directory=tmp_path / "x", **SEARCH)


def test_search_unreachable_and_resume(trained, tmp_path):
    model, x, y, xv, yv = trained
    cands = tune.sample_candidates(2, (0.3, 0.7))
    d = tmp_path / "s"
    seen = []

    def crash(res):
        seen.append(res["index"])
        if len(seen) == 2:
            raise KeyboardInterrupt  # the search is interrupted after 2 candidates

    with pytest.raises(KeyboardInterrupt):
        tune.search(model, x, y, xv, yv, candidates=cands, target=1.0, directory=d,
                    callback=crash, **SEARCH)
    files = {p.name: p.read_bytes() for p in (d / "results").glob("*.json")}
    blocks = {p.name: p.stat().st_mtime_ns for p in (d / "blocks").iterdir()}
    assert len(files) == 2 and blocks
    later = []
    res = tune.search(model, x, y, xv, yv, candidates=cands, target=1.0, directory=d,
                      callback=lambda r: later.append(r["index"]), **SEARCH)
    assert sorted(seen + later) == list(range(4))  # nothing trained twice
    for name, data in files.items():
        assert (d / "results" / name).read_bytes() == data
    assert {p.name: p.stat().st_mtime_ns for p in (d / "blocks").iterdir()} == blocks
    # Unreachable objective: ends with the best found and says so.
    assert not res.met and res.complete and res.trained == 4
    best = max(res.results, key=lambda r: (r["score"], -r["size"]))
    assert res.chosen["index"] == best["index"]
    assert res.message.startswith("objective unreachable") and "best found" in res.message
    assert res.model() is not None
    with pytest.raises(ValueError, match="different search"):
        tune.search(model, x, y, xv, yv, candidates=cands, target=0.9, directory=d, **SEARCH)
    merged = tune.collect(d)
    assert [r["index"] for r in merged.results] == [r["index"] for r in res.results]


WORKER = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import keras, numpy as np
    from cocopie_tf import tune
    z = np.load(sys.argv[2])
    model = keras.models.load_model(sys.argv[1])
    cands = tune.sample_candidates(2, (0.3, 0.7))
    tune.search(model, z["x"], z["y"], z["xv"], z["yv"], candidates=cands, target=1.0,
                directory=sys.argv[3], worker=int(sys.argv[4]), num_workers=2,
                finetune_steps=4, eval_every=2, pretrain_epochs=1, batch_size=32,
                progress=False, wait_timeout=600)
""")


def test_search_sharded_over_two_workers(trained, tmp_path):
    model, x, y, xv, yv = trained
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y, xv=xv, yv=yv)
    d = tmp_path / "shared"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "m.keras"),
                               str(tmp_path / "d.npz"), str(d), str(w)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for w in (0, 1)]
    for p in procs:
        out = p.communicate(timeout=600)[0]
        assert p.returncode == 0, out.decode()[-3000:]
    res = tune.collect(d)
    assert res.complete and res.trained == 4
    for r in res.results:
        assert r["worker"] == r["rank"] % 2  # worker i of n took ranks i, i+n, ...
    groups = sorted((d / "blocks").glob("group-*.json"))
    assert len(groups) >= 2  # block pre-training was shared out too
    # The same search in one process gives the same answers per candidate.
    one = tune.search(model, x, y, xv, yv, candidates=tune.sample_candidates(2, (0.3, 0.7)),
                      target=1.0, directory=tmp_path / "one", **SEARCH)
    acc = {r["index"]: r["score"] for r in one.results}
    for r in res.results:
        assert r["score"] == pytest.approx(acc[r["index"]], abs=0.02)


def test_cli(trained, tmp_path, capsys):
    from cocopie_tf.tune import cli

    model, x, y, xv, yv = trained
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_val=xv, y_val=yv)
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))

    def run(*argv):
        return cli.main(parser.parse_args(["tune", *argv]))

    base = [str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"), "--no-progress",
            "--finetune-steps", "4", "--eval-every", "2", "--pretrain-epochs", "1",
            "--rates", "0.3", "0.7"]
    assert run(*base, "--target", "0.5", "--dir", str(tmp_path / "x"), "--rates", "0.3",
               "1.2") == 2
    assert "outside (0, 1)" in capsys.readouterr().err
    assert run(*base, "--target", "0.5", "--dir", str(tmp_path / "x"),
               "--modules", "c0,c1;zz") == 2
    assert "no layer named 'zz'" in capsys.readouterr().err
    (tmp_path / "taken.keras").write_text("mine")
    assert run(*base, "--target", "0.5", "--dir", str(tmp_path / "x"),
               "--output", str(tmp_path / "taken.keras")) == 2
    assert (tmp_path / "taken.keras").read_text() == "mine"
    out = tmp_path / "chosen.keras"
    assert run(*base, "--target", "0.02", "--dir", str(tmp_path / "ok"), "--output",
               str(out)) == 0
    text = capsys.readouterr().out
    assert "chosen: filter[0.7, 0.7]" in text
    assert keras.models.load_model(out).count_params() > 0
    assert (tmp_path / "ok" / "report.txt").exists() and (tmp_path / "ok" / "tune.png").exists()
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert len(manifest["candidates"]) == 4


def test_workers_starting_together_share_the_directory(tmp_path):
    """The second worker of a sharded search may look at the directory while
    the first is still creating it (blocks/ and results/ made, the manifest
    being written): that is not someone else's data.  A foreign file still
    is, and a different search is refused."""
    from cocopie_tf.tune import explore

    d = tmp_path / "shared"
    (d / "blocks").mkdir(parents=True)
    (d / "results").mkdir()
    (d / ".manifest.json.cocopie-1-abcd.tmp").write_bytes(b"{")
    manifest = {"format": 1, "x": [1, 2]}
    assert explore._open_directory(d, manifest) == d
    assert json.loads((d / "manifest.json").read_text()) == manifest
    assert explore._open_directory(d, manifest) == d  # the next worker
    with pytest.raises(ValueError, match="different search"):
        explore._open_directory(d, {"format": 1, "x": [3]})
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        explore._open_directory(other, manifest)
