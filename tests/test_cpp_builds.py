"""The C++ tests, built every way the project supports: CMake (plain and under
AddressSanitizer/UBSan), Bazel (the top-level BUILD, offline), and a cross
build for AArch64 (the NEON kernels and the NEON code generator) run under
qemu-user; the generator's instruction encoder is checked against GNU as."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "third_party" / "bazel_offline"


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.slow
def test_cmake_static_fallback_without_generator(tmp_path):
    """COCOPIE_JIT=OFF stands for a machine without Xbyak: the kernels build,
    every pattern conv runs on the static kernels and the tests pass."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    build = tmp_path / "cmake"
    _run(["cmake", "-S", ROOT, "-B", build, "-DCOCOPIE_BUILD_TESTS=ON",
          "-DCOCOPIE_BUILD_PYTHON=OFF", "-DCOCOPIE_JIT=OFF"])
    _run(["cmake", "--build", build, "--parallel", "2", "--target", "kernels_test"])
    out = _run([build / "kernels_test"])
    assert "generated kernels tested for: none" in out
    assert " 0 failed" in out


@pytest.mark.slow
def test_cmake_ctest_under_sanitizers(tmp_path):
    """Every CMake C++ test (kernels, options, plugin, metadata, OpenCL),
    built with optimisation (RelWithDebInfo, -O2) under AddressSanitizer and
    UBSan.  Without sanitizers the same tests run in the Bazel build (all but
    the OpenCL one) and kernels_test in the static build above; a plain CMake
    build of them as well cost CI minutes and found nothing these miss."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    build = tmp_path / "cmake"
    _run(["cmake", "-S", ROOT, "-B", build, "-DCOCOPIE_BUILD_TESTS=ON",
          "-DCOCOPIE_BUILD_PYTHON=OFF", "-DCOCOPIE_SANITIZE=ON",
          "-DCMAKE_BUILD_TYPE=RelWithDebInfo"])
    _run(["cmake", "--build", build, "--parallel", "2"])
    out = _run(["ctest", "--test-dir", build, "--output-on-failure"])
    assert "100% tests passed" in out


def _need_aarch64_tools(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        if os.environ.get("COCOPIE_REQUIRE_AARCH64"):
            pytest.fail(f"COCOPIE_REQUIRE_AARCH64 is set but {missing} not installed "
                        "(apt-get install g++-aarch64-linux-gnu qemu-user)")
        pytest.skip(f"{missing} not installed (Debian: g++-aarch64-linux-gnu qemu-user)")


def test_a64_encoder_matches_gnu_as(tmp_path):
    """Every instruction form of cc/kernels/a64_asm.h (the NEON generator's
    hand-written encoder), over a sweep of registers and immediates, gives the
    word GNU as gives for the same text."""
    _need_aarch64_tools("aarch64-linux-gnu-as", "aarch64-linux-gnu-objcopy")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    dump = tmp_path / "a64_encode_dump"
    _run([cxx, "-std=c++17", "-O1", f"-I{ROOT}", str(ROOT / "tests" / "cc" / "a64_encode_dump.cc"),
          "-o", str(dump)])
    lines = _run([str(dump)]).splitlines()
    assert len(lines) > 5000
    (tmp_path / "a.s").write_text("".join(line.split("\t", 1)[1] + "\n" for line in lines))
    _run(["aarch64-linux-gnu-as", str(tmp_path / "a.s"), "-o", str(tmp_path / "a.o")])
    _run(["aarch64-linux-gnu-objcopy", "-O", "binary", "-j", ".text", str(tmp_path / "a.o"),
          str(tmp_path / "a.bin")])
    data = (tmp_path / "a.bin").read_bytes()
    assert len(data) == 4 * len(lines)
    wrong = [(line, data[4 * i:4 * i + 4][::-1].hex()) for i, line in enumerate(lines)
             if int(line.split("\t", 1)[0], 16) != int.from_bytes(data[4 * i:4 * i + 4], "little")]
    assert not wrong, f"{len(wrong)} encodings differ from GNU as (ours, as): {wrong[:10]}"


@pytest.mark.slow
def test_aarch64_neon_kernels_under_qemu(tmp_path):
    _need_aarch64_tools("aarch64-linux-gnu-g++", "qemu-aarch64")
    build = tmp_path / "arm"
    _run(["cmake", "-S", ROOT, "-B", build, "-DCOCOPIE_BUILD_TESTS=ON",
          "-DCOCOPIE_BUILD_PYTHON=OFF", "-DCMAKE_BUILD_TYPE=Release",
          f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake' / 'aarch64-linux-gnu.cmake'}"])
    _run(["cmake", "--build", build, "--parallel", "2"])
    kernels = build / "kernels_test"
    head = kernels.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    # ctest runs every test binary through qemu (CMAKE_CROSSCOMPILING_EMULATOR);
    # kernels_test checks that the set compiled and chosen is "neon" and that
    # it matches the float64 reference (dense, depthwise, FC, pattern convs).
    # The cross-built gpu_test cannot load the host's (x86-64) OpenCL driver, so
    # it skips here; CI's COCOPIE_REQUIRE_OPENCL is for the native build.
    env = {k: v for k, v in os.environ.items() if k != "COCOPIE_REQUIRE_OPENCL"}
    out = _run(["ctest", "--test-dir", build, "--output-on-failure"], env=env)
    assert "100% tests passed" in out
    out = _run(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", kernels])
    assert " 0 failed" in out and "FAILED" not in out, out
    # The NEON code generator ran (GeneratedPatternConvMatchesReference and
    # the segment, band, planar and far-offset tests).
    assert "generated kernels tested for: neon" in out, out


def _bazel():
    exe = shutil.which("bazel")
    if exe is None:
        if os.environ.get("COCOPIE_REQUIRE_BAZEL"):
            pytest.fail("COCOPIE_REQUIRE_BAZEL is set but bazel is not installed "
                        "(apt-get install bazel-bootstrap)")
        pytest.skip("bazel not installed (Debian: apt-get install bazel-bootstrap)")
    return exe


@pytest.mark.slow
def test_bazel_build_and_cc_tests(tmp_path):
    bazel = _bazel()
    startup = [bazel, f"--output_user_root={tmp_path / 'bazel'}"]
    flags = ["--symlink_prefix=/", "--test_output=errors"] + [
        f"--override_repository={name}={OFFLINE / name}"
        for name in ("rules_cc", "rules_java", "remote_coverage_tools")
    ]
    try:
        out = _run(startup + ["test", "//:all"] + flags, cwd=ROOT)
        assert "Executed 4 out of 4 tests: 4 tests pass" in out
        _run(startup + ["build", "//:libcocopie_delegate.so"] + flags, cwd=ROOT)
        bin_dir = _run(startup + ["info", "bazel-bin"] + flags[:1], cwd=ROOT).strip()
        lib = pathlib.Path(bin_dir) / "libcocopie_delegate.so"
        assert lib.is_file()
        # The Bazel-built delegate works in LiteRT exactly like the wheel's.
        code = (
            "import sys, numpy as np\n"
            "sys.path.insert(0, sys.argv[2])\n"
            "from conftest import convert, reference_outputs, rel_error, run_tflite\n"
            "import keras\n"
            "from ai_edge_litert.interpreter import Interpreter, load_delegate\n"
            "keras.utils.set_random_seed(0)\n"
            "i = keras.Input((9, 9, 3)); m = keras.Model(i, keras.layers.Conv2D(5, 3)(i))\n"
            "tfl = convert(m); x = np.ones((1, 9, 9, 3), np.float32)\n"
            "it = Interpreter(model_content=tfl, experimental_delegates=[load_delegate(sys.argv[1], {'claim': 'all'})])\n"
            "err = rel_error(run_tflite(it, [x])[0], reference_outputs(tfl, [x])[0])\n"
            "assert 'DELEGATE' in [d['op_name'] for d in it._get_ops_details()]\n"
            "assert err <= 1e-5, err\n"
            "print('bazel delegate ok', err)\n"
        )
        out = _run([sys.executable, "-c", code, str(lib), str(ROOT / "tests")], cwd=tmp_path)
        assert "bazel delegate ok" in out
    finally:
        subprocess.run(startup + ["shutdown"], cwd=ROOT, capture_output=True)
