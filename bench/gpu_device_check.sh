#!/usr/bin/env bash
# The GPU backend on a machine with a real GPU, in one pass (device time is
# short: everything in one script).  C++ only: builds cc/gpu and its tests with
# CMake, runs gpu_test (every claimed op against the float64 reference, the
# failure paths) and gpu_layer_bench (pruned vs dense on the same GPU).
#   bash bench/gpu_device_check.sh [OUT_DIR]
# If the machine has NVIDIA's OpenCL driver (libnvidia-opencl.so.1) but no ICD
# loader (libOpenCL.so.1), put Debian's ocl-icd-libopencl1 .deb in
# third_party/ (apt-get download ocl-icd-libopencl1): it is unpacked locally.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$OUT"
log() { echo "$@" | tee -a "$OUT/summary.txt"; }

log "== machine"; { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true; } | tee -a "$OUT/summary.txt"
log "== OpenCL"
ldconfig -p | grep -E "libnvidia-opencl|libOpenCL" | tee -a "$OUT/summary.txt"
ls /etc/OpenCL/vendors 2>&1 | tee -a "$OUT/summary.txt"
if ! ldconfig -p | grep -q "libOpenCL.so.1"; then
  deb=$(ls third_party/ocl-icd-libopencl1_*.deb 2>/dev/null | head -1)
  if [ -n "$deb" ]; then
    dpkg -x "$deb" "$OUT/ocl" && export LD_LIBRARY_PATH="$OUT/ocl/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
    log "ICD loader from $deb"
  else
    log "no libOpenCL.so.1 and no ocl-icd .deb in third_party/: cannot run"; exit 1
  fi
fi
if [ ! -e /etc/OpenCL/vendors/nvidia.icd ] && ldconfig -p | grep -q libnvidia-opencl.so.1; then
  mkdir -p "$OUT/vendors" && echo libnvidia-opencl.so.1 > "$OUT/vendors/nvidia.icd"
  export OCL_ICD_VENDORS="$OUT/vendors"
  log "ICD file written for libnvidia-opencl.so.1"
fi
log "== build"
cmake -S . -B "$OUT/build" -DCOCOPIE_BUILD_TESTS=ON -DCOCOPIE_BUILD_PYTHON=OFF >"$OUT/cmake.log" 2>&1 &&
  cmake --build "$OUT/build" --parallel "$(nproc)" --target gpu_test gpu_layer_bench >>"$OUT/cmake.log" 2>&1 ||
  { log "build failed (see cmake.log)"; exit 1; }
log "== gpu_test"
COCOPIE_REQUIRE_OPENCL=1 "$OUT/build/gpu_test" 2>&1 | tee "$OUT/gpu_test.txt" | tail -3 | tee -a "$OUT/summary.txt"
log "== gpu_layer_bench"
"$OUT/build/gpu_layer_bench" 51 2>&1 | tee "$OUT/gpu_layer_bench.txt" | tee -a "$OUT/summary.txt"
