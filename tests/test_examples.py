"""examples/new_user.py: the script a new user runs on MobileNetV2 and
ResNet-50 prints what was pruned, what the delegate claimed, and a measured
speed-up or that nothing was claimed; its numbers are checked against the
models it builds."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "new_user.py"


@pytest.mark.slow
def test_new_user_script_reports_pruning_claims_and_speed(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "MobileNetV2", "ResNet50", "--size", "32", "32",
         "--runs", "3", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for name in ("MobileNetV2", "ResNet50"):
        assert f"== {name} 32x32: what was pruned ==" in out
        assert f"== {name}: stock LiteRT vs the cocopie delegate ==" in out
        assert (tmp_path / f"{name.lower()}_32.tflite").is_file()
    # MobileNetV2's recipe wraps its 1x1 and depthwise convs, skips the first
    # conv and the classifier, and says why.
    mnv2 = out.split("== ResNet50 32x32")[0]
    assert re.search(r"Conv1 .* skipped: first convolution", mnv2)
    assert re.search(r"block_1_depthwise .* wrapped", mnv2)
    assert re.search(r"block_1_project .* wrapped", mnv2)
    assert re.search(r"wrapped 51 of 53 layers", mnv2)
    # ResNet-50 keeps the 1x1 convs dense by default and says so.
    resnet = out.split("== ResNet50 32x32")[1]
    assert "skipped: 1x1 convolution (pass prune_1x1=True" in resnet
    # Each bench names the claims: a speed-up when something was claimed, or
    # the explicit "0 nodes claimed" sentence; outputs agree with stock.
    rows = re.findall(r"^\s+1\s+[\d.]+ \([^)]*\)\s+[\d.]+ \([^)]*\)\s+(\S+)\s+(\d+)\s+(\S+)$",
                      out, re.M)
    assert len(rows) == 2, out[-3000:]
    for speedup, claimed, err in rows:
        assert float(err) <= 1e-4
        if int(claimed):
            assert speedup.endswith("x")
        else:
            assert speedup == "n/a"
    if any(int(c) == 0 for _, c, _ in rows):
        assert "0 nodes claimed: both runs execute the same kernels" in out
    assert "All log messages before absl::InitializeLog" not in proc.stderr

    # The pattern metadata adds at most 2% to pruned ResNet-50's file, and
    # (format v2: codes derived from the weights) almost nothing to
    # MobileNetV2's, whose pruned 1x1 and depthwise convs all have records:
    # compare with the same flatbuffer repacked without the cocopie entry.
    from cocopie_tf.converter import core

    for name, records in (("resnet50", 16), ("mobilenetv2", 51)):
        content = (tmp_path / f"{name}_32.tflite").read_bytes()
        without = _without_cocopie_metadata(core, content)
        meta = core.read_metadata(content)
        assert meta is not None and len(content) > len(without)
        assert len(meta["records"]) >= records, (name, len(meta["records"]))
        assert len(content) <= 1.002 * len(without), (name, len(content), len(without))


def test_new_user_script_keeps_existing_files(tmp_path):
    existing = tmp_path / "mobilenetv2_32.tflite"
    existing.write_bytes(b"the user's model")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "MobileNetV2", "--size", "32",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 2 and "exists; pass --force to replace" in proc.stderr
    assert existing.read_bytes() == b"the user's model"


def _without_cocopie_metadata(core, content: bytes) -> bytes:
    import flatbuffers
    import numpy as np

    schema = core._schema()
    model_t = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    names = [m.name.decode() if isinstance(m.name, bytes) else m.name
             for m in (model_t.metadata or [])]
    ours = [m for m, n in zip(model_t.metadata or [], names) if n == core.M.NAME]
    for m in ours:  # empty its buffer (removing it would renumber the others)
        model_t.buffers[m.buffer].data = np.zeros(0, np.uint8)
    model_t.metadata = [m for m, n in zip(model_t.metadata or [], names) if n != core.M.NAME]
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model_t.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
