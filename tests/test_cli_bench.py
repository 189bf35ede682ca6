"""`cocopie-tf bench` and `cocopie-tf tune-kernels` on a real pruned model."""

from __future__ import annotations

import json

import pytest

from conftest import convert
from cocopie_tf import cli
from cocopie_tf.patterns import prune_kernel


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((16, 16, 32), batch_size=1)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
    out = keras.layers.Conv2D(32, 3, padding="same")(h)
    model = keras.Model(inp, out)
    w = model.layers[2].get_weights()
    w[0] = prune_kernel(w[0], connectivity=3.6, group=4)
    model.layers[2].set_weights(w)
    path = tmp_path_factory.mktemp("m") / "pruned.tflite"
    path.write_bytes(convert(model))
    return path


def test_bench_prints_ratio_per_layer_and_writes_json(model_file, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    assert cli.main(["bench", str(model_file), "--threads", "1,2", "--runs", "3",
                     "--warmup", "1", "--option", "tune=off", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "speed-up" in text and "f32_conv2d_pattern__" in text
    result = json.loads(out_json.read_text())
    # The machine line names both engines: the static set and the generator's ISAs.
    from cocopie_tf import _cc

    isas = [i for i in _cc.jit_choices() if i not in ("auto", "static")]
    assert result["machine"]["jit_isas"] == isas
    assert f"code generator {'/'.join(isas) or 'none'}" in text
    assert f"static kernels {_cc.default_kernel_set()}" in text
    assert [r["threads"] for r in result["rows"]] == [1, 2]
    for r in result["rows"]:
        assert r["claimed"] == 1 and r["rel_error"] <= 1e-5
        assert len(r["xnnpack_runs"]) == len(r["cocopie_runs"]) == 3
        assert r["nodes"][0]["invokes"] == 4  # warm-up + timed runs, profiled
        assert r["speedup"] == pytest.approx(r["xnnpack_ms"]["median"] / r["cocopie_ms"]["median"])
    # Never overwrites: the same --json path again is refused.
    assert cli.main(["bench", str(model_file), "--runs", "3", "--json", str(out_json)]) == 2
    assert "exists" in capsys.readouterr().err


def test_tune_kernels_fills_the_cache(model_file, tmp_path, capsys):
    cache = tmp_path / "t.tsv"
    assert cli.main(["tune-kernels", str(model_file), "--threads", "1", "--cache", str(cache),
                     "--budget-ms", "5"]) == 0
    assert "node" in capsys.readouterr().out
    assert len(cache.read_text().splitlines()) == 1


@pytest.mark.parametrize("argv,message", [
    (["bench", "missing.tflite"], "not found"),
    (["bench", "{model}", "--threads", "0"], "--threads"),
    (["bench", "{model}", "--threads", "a,b"], "--threads"),
    (["bench", "{model}", "--runs", "1"], "runs"),
    (["bench", "{model}", "--option", "nokey"], "KEY=VALUE"),
    (["bench", "{model}", "--option", "fast=1"], "unknown option 'fast'"),
    (["tune-kernels", "{model}", "--budget-ms", "0"], "--budget-ms"),
])
def test_bad_arguments_are_refused(model_file, capsys, argv, message):
    argv = [a.replace("{model}", str(model_file)) for a in argv]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_bench_with_nothing_claimed_reports_no_speed_up(model_file, capsys):
    assert cli.main(["bench", str(model_file), "--runs", "3", "--warmup", "1",
                     "--option", "pattern_kernels=off"]) == 0
    text = capsys.readouterr().out
    assert "0 nodes claimed: both runs execute the same kernels" in text
    row = [line for line in text.splitlines() if line.strip().startswith("1 ")][0]
    assert "n/a" in row and "x " not in row


def test_help_shows_defaults_and_inspect_explains_its_columns(model_file, capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "(>= 3; default 15)" in text and "(default 8)" in text
    out = cli.inspect_text(model_file.read_bytes())
    assert "FKW: the delegate's compact weights" in out and "CSR: the same weights" in out
