"""Converter: pattern metadata in the .tflite, read back, used and checked by
the delegate; the file stays a stock TFLite model."""

from __future__ import annotations

import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import cocopie_tf  # noqa: E402
from cocopie_tf import lite  # noqa: E402
from cocopie_tf.converter import add_metadata, read_metadata  # noqa: E402
from cocopie_tf.converter import metadata as M  # noqa: E402
from conftest import reference_outputs, rel_error, run_tflite  # noqa: E402
from test_pruning import compile_, digits, functional, pruned_names  # noqa: E402


def _sequential_bn(bn):
    keras.utils.set_random_seed(3)
    layers = [keras.Input((16, 16, 1)), keras.layers.Conv2D(8, 3, padding="same", activation="relu")]
    for f in (16, 16):
        layers.append(keras.layers.Conv2D(f, 3, padding="same", use_bias=not bn))
        if bn:
            layers.append(keras.layers.BatchNormalization())
        layers.append(keras.layers.ReLU())
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    return keras.Sequential(layers)


@pytest.fixture(scope="module")
def trained():
    """Pruned models (functional and Sequential, with and without BN)."""
    x, y = digits(300)
    out = {}
    for name, build in [("functional", lambda: functional()), ("functional_bn", lambda: functional(bn=True)),
                        ("sequential", lambda: _sequential_bn(False)),
                        ("sequential_bn", lambda: _sequential_bn(True))]:
        model = compile_(cocopie_tf.prune_patterns(build(), group=4))
        model.fit(x, y, epochs=3, batch_size=64, callbacks=[cocopie_tf.ADMMPruning()], verbose=0)
        out[name] = model
    return out, x


@pytest.mark.parametrize("name", ["functional", "functional_bn", "sequential", "sequential_bn"])
def test_one_valid_record_per_pruned_conv(trained, name):
    models, x = trained
    model = models[name]
    tfl = cocopie_tf.convert(model)  # wrapped: stripped on the way
    meta = read_metadata(tfl)
    assert meta is not None and meta["version"] == 2
    assert len(meta["records"]) == len(pruned_names(model))
    for r in meta["records"]:
        assert 1 <= len(r["patterns"]) <= 8
        assert all(bin(m).count("1") == 4 for m in r["patterns"])
        assert r["group"] == 4
    # Round trip of the format.
    assert M.decode(M.encode(meta["records"]))["records"][0]["filter_crc32"] == meta["records"][0]["filter_crc32"]
    # A stock model: plain LiteRT (no delegate) equals Keras.
    xs = x[:4]
    stock = reference_outputs(tfl, [xs])[0]
    keras_out = np.asarray(cocopie_tf.strip_pruning(model)(xs))
    assert rel_error(stock, keras_out) <= 1e-5
    # With the delegate (claim=all so the small layers are taken): records used.
    interp = lite.Interpreter(model_content=tfl, claim="all")
    out = run_tflite(interp, [xs])[0]
    assert rel_error(out, stock) <= 1e-5
    used = [e for e in interp.delegate_report() if e["metadata"] == "used"]
    assert len(used) == len(meta["records"])


def test_record_that_disagrees_with_weights_is_ignored(trained):
    models, x = trained
    tfl = cocopie_tf.convert(models["functional"])
    records = read_metadata(tfl)["records"]
    # Left to the weights in the file; read_metadata derives the codes.
    assert all(r["codes_from_weights"] and r["reorder"] is None for r in records)
    assert M.decode(M.encode(records))["records"][0]["codes"] is None  # not in the file
    from cocopie_tf.converter import pattern_records as _pr

    for mine, theirs in zip(records, _pr(tfl)[0]):
        np.testing.assert_array_equal(mine["codes"], theirs["codes"])
    # Stored codes (v2 allows them) that put a kernel into another pattern.
    from cocopie_tf.converter import pattern_records

    bad = dict(pattern_records(tfl)[0][0], codes_from_weights=False)
    codes = bad["codes"].copy()
    k = int(np.flatnonzero(codes.ravel())[0])
    codes.ravel()[k] = 1 + (codes.ravel()[k] % len(bad["patterns"]))  # another pattern
    bad["codes"] = codes
    tampered = add_metadata(tfl, M.encode([bad] + records[1:]))
    interp = lite.Interpreter(model_content=tampered, claim="all")
    out = run_tflite(interp, [x[:2]])[0]
    assert rel_error(out, reference_outputs(tfl, [x[:2]])[0]) <= 1e-5
    status = {e["node_index"]: e["metadata"] for e in interp.delegate_report()}
    assert status[bad["op_index"]].startswith("rejected")


def test_unknown_version_is_ignored(trained):
    models, x = trained
    tfl = cocopie_tf.convert(models["functional"])
    payload = bytearray(M.encode(read_metadata(tfl)["records"]))
    payload[4] = 9  # version 9
    odd = add_metadata(tfl, bytes(payload))
    with pytest.raises(ValueError, match="version"):
        read_metadata(odd)
    interp = lite.Interpreter(model_content=odd, claim="all")
    out = run_tflite(interp, [x[:2]])[0]
    assert rel_error(out, reference_outputs(tfl, [x[:2]])[0]) <= 1e-5
    assert all(e["metadata"] == "none" for e in interp.delegate_report())


def test_model_without_metadata_and_dense_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3)(inp))
    tfl = cocopie_tf.convert(model)
    assert read_metadata(tfl) is None


def test_convert_keeps_tensorflow_info_logs_quiet(caplog):
    """The temporary SavedModel's INFO lines ("Assets written to ...") stay
    out of the user's log; the logger's level is restored afterwards."""
    import logging

    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3)(inp))
    with caplog.at_level(logging.INFO, logger="tensorflow"):
        cocopie_tf.convert(model)
        assert logging.getLogger("tensorflow").level == logging.INFO
    assert "Assets written" not in caplog.text


def test_convert_refuses_to_overwrite_and_bad_options(tmp_path, trained):
    models, _ = trained
    path = tmp_path / "m.tflite"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        cocopie_tf.convert(models["functional"], output_path=path)
    assert path.read_bytes() == b"keep me"
    cocopie_tf.convert(models["functional"], output_path=path, force=True)
    assert read_metadata(path) is not None
    with pytest.raises(ValueError, match="unknown converter options"):
        cocopie_tf.convert(models["functional"], optimisations=[])
    import tensorflow as tf

    with pytest.raises(ValueError, match="EXPERIMENTAL_SPARSITY"):
        cocopie_tf.convert(models["functional"], optimizations=[tf.lite.Optimize.EXPERIMENTAL_SPARSITY])


def test_cli_convert_and_inspect(tmp_path, trained):
    import subprocess
    import sys

    models, _ = trained
    src = tmp_path / "m.keras"
    models["functional"].save(src)
    dst = tmp_path / "m.tflite"
    cli = [sys.executable, "-m", "cocopie_tf.cli"]
    p = subprocess.run(cli + ["convert", str(src), "-o", str(dst)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 0 and "pattern metadata for 2 convolution(s)" in p.stdout, p.stderr[-2000:]
    # TensorFlow's C++ start-up lines stay out of the CLI (issue 13 item 7).
    assert "absl::InitializeLog" not in p.stderr and "cudart_stub" not in p.stderr, p.stderr
    assert "loading" in p.stdout and "converting" in p.stdout  # progress for slow conversions
    p = subprocess.run(cli + ["convert", str(src), "-o", str(dst)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 2 and "--force" in p.stderr
    p = subprocess.run(cli + ["inspect", str(dst)], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "cocopie metadata present, v2, 2 records" in p.stdout
    assert p.stdout.count("metadata record: valid") == 2
    assert "FKW" in p.stdout and "#" in p.stdout


def test_converter_and_delegate_share_the_pattern_limits():
    """One definition of 'pattern-pruned' (_cc.pattern_limits()): a filter just
    under the density limit gets a metadata record, one just over gets a note,
    and the delegate takes exactly the first as a pattern conv."""
    import keras

    from cocopie_tf import _cc, converter, lite

    limits = _cc.pattern_limits()
    assert limits == {"max_density": 0.5, "max_patterns": 64, "max_taps": 32, "max_group": 4,
                      "jit_dense_max_depth": 64, "jit_dense_max_depth_avx512": 576}
    rng = np.random.default_rng(0)
    for density, want_record in ((limits["max_density"] - 0.05, True),
                                 (limits["max_density"] + 0.05, False)):
        inp = keras.Input((10, 10, 16), batch_size=1)
        conv = keras.layers.Conv2D(16, 3, padding="same")
        model = keras.Model(inp, conv(inp))
        w = conv.get_weights()
        # Whole kernels kept with 5 of 9 taps (one mask): density = kept * 5/9.
        mask = np.zeros((3, 3), bool)
        mask.ravel()[[0, 2, 4, 6, 8]] = True
        keep = rng.random((16, 16)) < density * 9 / 5
        w[0] = np.where(mask[:, :, None, None] & keep[None, None], w[0], 0).astype(np.float32)
        conv.set_weights(w)
        tfl = tf_convert(model)
        records, notes = converter.core.pattern_records(tfl)
        assert (len(records) == 1) == want_record, (density, notes)
        # The static kernels: generated code also runs denser filters, up to
        # jit_dense_max_depth weights (jit_dense_max_depth_avx512 on AVX-512).
        it = lite.Interpreter(model_content=tfl, claim="all", jit="static")
        it.allocate_tensors()
        (e,) = it.delegate_report()
        assert ("pattern" in e["kernel"]) == want_record, (density, e)


def tf_convert(model):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def test_cli_inspect_on_corrupt_files_gives_one_line(tmp_path):
    """Byte-flipped and truncated copies of a converted model: `cocopie-tf
    inspect` answers each with exit 0 (still readable) or 2 and one line on
    stderr, never a traceback.  The corpus runs in a child process with a
    timeout, so a crash or hang fails the test instead of the suite."""
    import json
    import subprocess
    import sys

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 16), batch_size=1)
    conv = keras.layers.Conv2D(16, 3, padding="same")
    model = keras.Model(inp, conv(inp))
    w = conv.get_weights()
    from cocopie_tf.patterns import prune_kernel

    w[0] = prune_kernel(w[0], connectivity=2.0)
    conv.set_weights(w)
    good = cocopie_tf.convert(model)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(160):
        raw = bytearray(good)
        if i % 4 == 3:
            raw = raw[: int(rng.integers(1, len(raw)))]
        else:
            for pos in rng.integers(0, len(raw), size=int(rng.integers(1, 9))):
                raw[pos] = int(rng.integers(0, 256))
        p = tmp_path / f"bad{i}.tflite"
        p.write_bytes(bytes(raw))
        paths.append(str(p))
    code = (
        "import contextlib, io, json, sys\n"
        "from cocopie_tf import cli\n"
        "for p in sys.argv[1:]:\n"
        "    err, out = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):\n"
        "        rc = cli.main(['inspect', p])\n"
        "    print(json.dumps({'rc': rc, 'err': err.getvalue()}))\n")
    proc = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    assert len(results) == len(paths)
    for r in results:
        assert r["rc"] in (0, 2), r
        assert "Traceback" not in r["err"]
        if r["rc"] == 2:
            assert r["err"].count("\n") == 1 and r["err"].startswith("cocopie-tf inspect: "), r
    assert sum(r["rc"] == 2 for r in results) > 0


def _encode_v1(records):
    """A v1 payload (what converters before format v2 wrote), for the reader's
    backward compatibility."""
    import struct
    import zlib

    body = b""
    for r in records:
        payload = (struct.pack(f"<{len(r['patterns'])}I", *r["patterns"]) +
                   np.asarray(r["codes"], np.uint8).tobytes() +
                   np.asarray(r["reorder"], "<u4").tobytes() + struct.pack("<I", 0))
        body += M._RECORD_V1.pack(M._RECORD_V1.size + len(payload), r["subgraph"], r["op_index"],
                                  r["filter_tensor"], r["out_c"], r["in_c"], r["k_h"], r["k_w"],
                                  len(r["patterns"]), r["group"], r["filter_crc32"]) + payload
    return M._HEADER.pack(M.MAGIC, 1, 0, len(records), zlib.crc32(body)) + body


def test_v1_payloads_are_still_read_and_used(trained):
    from cocopie_tf import _cc
    from cocopie_tf.converter import pattern_records

    models, x = trained
    tfl = cocopie_tf.convert(models["functional"])
    records = pattern_records(tfl)[0]
    for r in records:  # v1 stores the filter order too
        filt = cocopie_tf.converter.core.filter_array(tfl, r["subgraph"], r["filter_tensor"])
        r["reorder"] = _cc.pattern_info(np.ascontiguousarray(filt))["reorder"]
    old = add_metadata(tfl, _encode_v1(records))
    meta = read_metadata(old)
    assert meta["version"] == 1 and all(r["codes"] is not None for r in meta["records"])
    np.testing.assert_array_equal(meta["records"][0]["codes"], records[0]["codes"])
    interp = lite.Interpreter(model_content=old, claim="all")
    out = run_tflite(interp, [x[:2]])[0]
    assert rel_error(out, reference_outputs(tfl, [x[:2]])[0]) <= 1e-5
    assert sum(e["metadata"] == "used" for e in interp.delegate_report()) == len(records)


def _depthwise_and_1x1_model():
    """A MobileNet-style block: pattern-pruned depthwise 3x3 (4 of 9 taps, 4
    masks) and a connectivity-pruned 1x1 conv (28% of its weights), plus a
    dense 1x1 conv that must stay without a record."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((12, 12, 16), batch_size=1)
    dw = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")
    pw = keras.layers.Conv2D(24, 1)
    dense = keras.layers.Conv2D(8, 1)
    model = keras.Model(inp, dense(pw(dw(inp))))
    rng = np.random.default_rng(5)
    w = dw.get_weights()
    masks = [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    keep = np.zeros((3, 3, 16, 1), bool)
    for c in range(16):
        keep.reshape(9, 16)[masks[c % 4], c] = True
    w[0] = np.where(keep, w[0], 0).astype(np.float32)
    dw.set_weights(w)
    w = pw.get_weights()
    w[0] = np.where(rng.random(w[0].shape) < 0.28, w[0], 0).astype(np.float32)
    pw.set_weights(w)
    return model


def test_depthwise_and_1x1_records_are_compact_and_checked(tmp_path):
    """Format v2: records for the pruned depthwise and 1x1 convs, a few dozen
    bytes each (codes and order derived from the weights); the delegate checks
    them (the depthwise one is valid but runs on the dense depthwise kernel),
    rejects a stale one, and the outputs equal stock LiteRT."""
    from cocopie_tf.converter import core

    tfl = cocopie_tf.convert(_depthwise_and_1x1_model())
    meta = read_metadata(tfl)
    kinds = sorted((r["op_kind"], r["k_h"], r["out_c"], r["in_c"]) for r in meta["records"])
    assert kinds == [(M.OP_CONV_2D, 1, 24, 16), (M.OP_DEPTHWISE_CONV_2D, 3, 16, 1)]
    by_kind = {r["op_kind"]: r for r in meta["records"]}
    assert sorted(by_kind[M.OP_DEPTHWISE_CONV_2D]["patterns"]) == sorted(
        sum(1 << t for t in m) for m in [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]])
    assert by_kind[M.OP_CONV_2D]["patterns"] == [1]
    # Compact: header + P masks + tuning length, no codes or order.
    payload = M.encode(meta["records"])
    assert len(payload) == 16 + sum(40 + 4 * len(r["patterns"]) + 4 for r in meta["records"])
    # The metadata's cost in the file: the same flatbuffer without the entry.
    from test_examples import _without_cocopie_metadata

    assert len(tfl) - len(_without_cocopie_metadata(core, tfl)) <= len(payload) + 64
    x = np.random.default_rng(1).uniform(-1, 1, (1, 12, 12, 16)).astype(np.float32)
    ref = reference_outputs(tfl, [x])[0]
    interp = lite.Interpreter(model_content=tfl, claim="all")
    assert rel_error(run_tflite(interp, [x])[0], ref) <= 1e-5
    status = {e["op"]: e["metadata"] for e in interp.delegate_report()
              if e["node_index"] in {r["op_index"] for r in meta["records"]}}
    assert status["DEPTHWISE_CONV_2D"] == \
        "valid, not used: depthwise convs run on the dense depthwise kernel"
    assert status["CONV_2D"] in ("used", "valid, not used: this conv runs on the dense kernel")
    # A record that no longer matches (another op's filter CRC) is rejected.
    stale = [dict(r, filter_crc32=r["filter_crc32"] ^ 1) if r["op_kind"] else r
             for r in meta["records"]]
    interp = lite.Interpreter(model_content=add_metadata(tfl, M.encode(stale)), claim="all")
    assert rel_error(run_tflite(interp, [x])[0], ref) <= 1e-5
    assert [e["metadata"] for e in interp.delegate_report() if e["op"] == "DEPTHWISE_CONV_2D"] == \
        ["rejected: filter checksum differs"]
    # A depthwise record given to the conv node: the op kinds differ.
    swapped = [dict(r, op_index=by_kind[M.OP_CONV_2D]["op_index"],
                    filter_tensor=by_kind[M.OP_CONV_2D]["filter_tensor"]) for r in meta["records"]
               if r["op_kind"] == M.OP_DEPTHWISE_CONV_2D]
    interp = lite.Interpreter(model_content=add_metadata(tfl, M.encode(swapped)), claim="all")
    assert rel_error(run_tflite(interp, [x])[0], ref) <= 1e-5
    conv_status = [e["metadata"] for e in interp.delegate_report()
                   if e["node_index"] == by_kind[M.OP_CONV_2D]["op_index"]]
    assert conv_status == ["rejected: the record describes a DEPTHWISE_CONV_2D, the node is a "
                           "CONV_2D"]

    # inspect lists every op: the two records, the dense 1x1 conv and why.
    from cocopie_tf.cli import inspect_text

    text = inspect_text(tfl, "block.tflite")
    assert "cocopie metadata present, v2, 2 records" in text
    assert re.search(r"DEPTHWISE_CONV_2D op \d+: filter 1x3x3x16, 4 patterns, kernels kept 16/16",
                     text), text
    assert re.search(r"\nCONV_2D op \d+: filter 24x1x1x16, 1 patterns", text), text
    assert text.count("metadata record: valid") == 2
    assert re.search(r"CONV_2D op \d+: not pattern-pruned \(100% non-zero", text), text


def test_encode_refuses_what_the_format_cannot_hold():
    base = dict(subgraph=0, op_index=0, filter_tensor=1, out_c=2, in_c=1, k_h=3, k_w=3,
                filter_crc32=0, patterns=[3])
    with pytest.raises(M.MetadataError, match="op kind"):
        M.encode([dict(base, op_kind=7, codes_from_weights=True)])
    with pytest.raises(M.MetadataError, match="codes size"):
        M.encode([dict(base, codes=[1])])
    with pytest.raises(M.MetadataError, match="reorder size"):
        M.encode([dict(base, codes_from_weights=True, reorder=[0])])
    with pytest.raises(M.MetadataError, match="patterns"):
        M.encode([dict(base, patterns=list(range(1, 300)), codes_from_weights=True)])
    ok = M.decode(M.encode([dict(base, codes_from_weights=True)]))["records"][0]
    assert ok["codes"] is None and ok["reorder"] is None and ok["op_kind"] == M.OP_CONV_2D
