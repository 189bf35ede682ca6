"""The package never opens a network connection: not on import, not while
converting and running (the demo does both)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

# An audit hook sees every socket the Python process (or any library calling
# through Python) tries to create, resolve or connect; it logs them to stderr.
GUARD = r"""
import sys
def hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.sendto",
                 "socket.gethostbyname", "urllib.Request", "http.client.connect"):
        sys.stderr.write("NETWORK ATTEMPT: %s %r\n" % (event, args[:2]))
sys.addaudithook(hook)
"""
DEMO = GUARD + 'from cocopie_tf.cli import main\nsys.exit(main(["demo", "--runs", "2"]))\n'


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_demo_without_network(tmp_path):
    cmd = [sys.executable, "-c", DEMO]
    # Where the kernel lets us, also cut the network off entirely: a native
    # library bypassing Python's socket module would then fail loudly.
    if _unshare_works():
        cmd = ["unshare", "--net"] + cmd
    # cwd: away from the source tree, so the installed package is imported.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert "NETWORK ATTEMPT" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "outputs agree" in proc.stdout


def test_guard_sees_a_connection_attempt(tmp_path):
    """The guard itself works: a plain connect to loopback is reported."""
    code = GUARD + (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "except OSError:\n"
        "    pass\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert "NETWORK ATTEMPT: socket.connect" in proc.stderr


def test_import_does_not_pull_in_tensorflow_or_tfmot(tmp_path):
    code = ("import sys, cocopie_tf, cocopie_tf.lite\n"
            "bad = [m for m in ('tensorflow', 'tensorflow_model_optimization', 'tf_keras') "
            "if m in sys.modules]\n"
            "import os\n"
            "assert not bad, bad\n"
            "assert os.environ.get('TF_USE_LEGACY_KERAS') in (None, '0'), 'legacy keras switched on'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
