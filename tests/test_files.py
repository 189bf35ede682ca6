"""Nothing the user has is lost (issue 12, items 4, 5, 7 and the leftovers):
outputs are checked before converting, created exclusively without --force,
never replace special files, keep their permission bits, and a killed
writer's temporary files are cleaned up by the next run."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import cocopie_tf  # noqa: E402
from cocopie_tf import _files  # noqa: E402
from cocopie_tf.converter import ConverterError, core  # noqa: E402
from cocopie_tf.patterns import prune_kernel  # noqa: E402


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    conv = keras.layers.Conv2D(8, 3, padding="same")
    m = keras.Model(inp, conv(inp))
    w = conv.get_weights()
    w[0] = prune_kernel(w[0], connectivity=2.0)
    conv.set_weights(w)
    return m


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_file_created_during_conversion_is_not_overwritten(tmp_path, model, monkeypatch):
    path = tmp_path / "m.tflite"
    real = core.pattern_records

    def meanwhile(raw):  # another process writes the file while we convert
        path.write_bytes(b"theirs")
        return real(raw)

    monkeypatch.setattr(core, "pattern_records", meanwhile)
    with pytest.raises(FileExistsError, match="exists"):
        cocopie_tf.convert(model, output_path=path)
    assert path.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]  # no temporary left


def test_file_created_between_check_and_move_is_not_overwritten(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    real = _files.remove_stale_temporaries

    def meanwhile(folder):  # runs after the last check, before the move
        path.write_bytes(b"theirs")
        return real(folder)

    monkeypatch.setattr(_files, "remove_stale_temporaries", meanwhile)
    with pytest.raises(FileExistsError, match="appeared while writing"):
        _files.write_file(path, b"ours", replace=False)
    assert path.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_force_refuses_special_files_and_directories(tmp_path, model):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FileExistsError, match="not a regular file"):
        cocopie_tf.convert(model, output_path=fifo, force=True)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        cocopie_tf.convert(model, output_path=tmp_path, force=True)
    with pytest.raises(FileExistsError, match="not a regular file"):
        _files.check_destination("/dev/null", replace=True)


def test_modes_follow_the_existing_file_or_the_umask(tmp_path, model):
    old = os.umask(0o027)
    try:
        new = tmp_path / "new.tflite"
        cocopie_tf.convert(model, output_path=new)
        assert stat.S_IMODE(os.stat(new).st_mode) == 0o640
        kept = tmp_path / "kept.tflite"
        kept.write_bytes(b"old")
        os.chmod(kept, 0o604)
        cocopie_tf.convert(model, output_path=kept, force=True)
        assert stat.S_IMODE(os.stat(kept).st_mode) == 0o604 and kept.read_bytes() != b"old"
    finally:
        os.umask(old)


def test_symlinked_output_is_written_through(tmp_path, model):
    target = tmp_path / "real.tflite"
    target.write_bytes(b"old")
    link = tmp_path / "link.tflite"
    link.symlink_to(target)
    cocopie_tf.convert(model, output_path=link, force=True)
    assert link.is_symlink() and target.read_bytes()[4:8] == b"TFL3"


def test_bad_destination_fails_before_converting(tmp_path, model, monkeypatch):
    import tensorflow as tf

    def no(*a, **k):
        raise AssertionError("converted before checking the destination")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", no)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cocopie_tf.convert(model, output_path=tmp_path / "missing" / "m.tflite")
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        cocopie_tf.convert(model, output_path=tmp_path / "f" / "m.tflite")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="not writable"):
            cocopie_tf.convert(model, output_path=ro / "m.tflite")


def test_cli_convert_destination_errors_are_one_line(tmp_path, model):
    src = tmp_path / "m.keras"
    model.save(src)
    cli = [sys.executable, "-m", "cocopie_tf.cli", "convert", str(src)]
    for dst, extra, want in [(tmp_path, ["--force"], "is a directory"),
                             (tmp_path / "no" / "m.tflite", [], "does not exist")]:
        p = subprocess.run(cli + ["-o", str(dst)] + extra, capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
        assert p.returncode == 2 and want in p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


class _Det(keras.layers.Layer):
    def call(self, x):
        import tensorflow as tf

        return tf.linalg.det(x)


def test_unsupported_layer_is_named():
    inp = keras.Input((4, 4, 3), batch_size=1)
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    out = _Det(name="my_det")(h)
    with pytest.raises(ConverterError) as e:
        cocopie_tf.convert(keras.Model(inp, out))
    assert e.value.layers == ["my_det"] and e.value.ops == ["MatrixDeterminant"]
    assert "'my_det' (_Det)" in str(e.value) and "MatrixDeterminant" in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_leftovers_of_killed_runs_are_removed(tmp_path, model, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    dead, alive = _dead_pid(), os.getppid()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".m.tflite.cocopie-{dead}-0123abcd.tmp"
    busy = out / f".m.tflite.cocopie-{alive}-0123abcd.tmp"
    stale_dir = temp / f"cocopie-convert-{dead}-x1"
    busy_dir = temp / f"cocopie-convert-{alive}-x2"
    for p in (stale, busy):
        p.write_bytes(b"x")
    for d in (stale_dir, busy_dir):
        d.mkdir()
        (d / "saved_model.pb").write_bytes(b"x")
    cocopie_tf.convert(model, output_path=out / "m.tflite")
    assert not stale.exists() and busy.exists()
    assert not stale_dir.exists() and busy_dir.exists()
    # The converter's own folder is gone too, and the result is a model.
    assert sorted(p.name for p in temp.iterdir()) == [busy_dir.name]
    assert (out / "m.tflite").read_bytes()[4:8] == b"TFL3"
    assert np.frombuffer((out / "m.tflite").read_bytes(), np.uint8).size > 100
