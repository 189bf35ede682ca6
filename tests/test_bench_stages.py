"""bench/bench_stages.py: prefixes of a model, and stage times from them."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))

import bench_stages  # noqa: E402


def test_stage_times_are_per_round_differences_of_prefixes():
    # Two rounds, three prefixes; XNNPACK's stages 1, 2, 3 ms and cocopie's
    # 0.5, 2, 1 ms, the second round's host 2x slower.
    stages = np.array([[1.0, 0.5], [2.0, 2.0], [3.0, 1.0]])
    times = np.stack([np.cumsum(stages, axis=0), 2 * np.cumsum(stages, axis=0)])
    rows = bench_stages.stage_rows(["a", "b", "c"], times)
    assert [r["stage"] for r in rows] == ["a", "b", "c"]
    # median of (1, 2) = 1.5 for stage a's XNNPACK time, and so on
    np.testing.assert_allclose([r["xnnpack_ms"] for r in rows], [1.5, 3.0, 4.5])
    np.testing.assert_allclose([r["cocopie_ms"] for r in rows], [0.75, 3.0, 1.5])
    np.testing.assert_allclose([r["stage_ratio"] for r in rows], [2.0, 1.0, 3.0])
    # the prefix ratio is per round: the host's 2x cancels
    np.testing.assert_allclose([r["prefix_ratio"] for r in rows], [2.0, 3 / 2.5, 6 / 3.5])
    assert rows[0]["prefix_ratio_ci"] == [None, None]  # 2 rounds: no interval


def test_a_stage_whose_difference_is_not_positive_has_no_ratio():
    times = np.array([[[1.0, 1.0], [0.9, 1.2]]] * 6)  # stage 2: XNNPACK -0.1 ms
    rows = bench_stages.stage_rows(["a", "b"], times)
    assert rows[1]["stage_ratio"] is None
    assert "n/a" in bench_stages.table(rows, 1)


def test_stage_rows_refuse_a_table_of_the_wrong_shape():
    with pytest.raises(ValueError, match="prefixes"):
        bench_stages.stage_rows(["a", "b"], np.zeros((3, 3, 2)))


@pytest.mark.slow
def test_prefixes_end_where_named_and_the_delegate_agrees_on_each():
    import keras

    from bench_peers import convert

    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(h)
    inner = keras.Model(x, keras.layers.GlobalAveragePooling2D(name="pool")(h), name="inner")
    i = keras.Input((12, 12, 3), batch_size=1)
    model = keras.Model(i, inner(i))  # nested, as the peer benchmark's models are
    prefixes = bench_stages.prefix_models(model, ["c1", "c2", None])
    data = np.random.default_rng(0).standard_normal((1, 12, 12, 3)).astype(np.float32)
    c1 = keras.Model(inner.inputs, inner.get_layer("c1").output)(data)
    c2 = keras.Model(inner.inputs, inner.get_layer("c2").output)(data)
    for m, want in zip(prefixes, [c1, c2, model(data)]):
        np.testing.assert_allclose(np.asarray(m(data)), np.asarray(want), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        bench_stages.prefix_models(model, ["nope"])
    times = bench_stages.measure([convert(m) for m in prefixes], threads=1, rounds=2, settle_ms=0)
    assert times.shape == (2, 3, 2) and (times > 0).all()
