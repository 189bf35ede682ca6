// AVX-512 build of the direct kernels.  The build compiles this file with
// -mavx512f -mavx2 -mfma on x86-64 only; dispatch.cc calls it only when the
// CPU has all three.  Its pattern kernels also run 16-float tile vectors
// (zmm): small maps then need half the FMAs of the 8-float tiles (VGG-16
// CIFAR's 8x8 layers ran 2.4x faster, docs/engine.md section 17).
#if defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define COCOPIE_ISA_NS avx512
#define COCOPIE_ISA_NAME "avx512"
#define COCOPIE_PATTERN_MAX_LANES 16
#include "cc/kernels/direct_kernels.inc"

#include <chrono>

namespace cocopie {
namespace avx512 {

// Seconds for `rounds` rounds of 12 independent FMA chains on 512-bit (zmm)
// or 256-bit (ymm) vectors: 12 chains cover the FMA latency of every x86 core
// met so far (4 cycles x 2 pipes, with room), so the loop runs at the FMA
// pipes' throughput.  The CPU-feature probe in dispatch.cc compares the two.
double TimeFmaChains(bool zmm, int64_t rounds) {
  // Written in assembly: compiled from intrinsics, the twelve accumulators
  // went through the stack and the loop timed loads and stores instead.
  const auto start = std::chrono::steady_clock::now();
  if (zmm) {
    __asm__ volatile(
        "vxorps %%xmm0, %%xmm0, %%xmm0\n"
        "vmovaps %%zmm0, %%zmm1\n vmovaps %%zmm0, %%zmm2\n vmovaps %%zmm0, %%zmm3\n"
        "vmovaps %%zmm0, %%zmm4\n vmovaps %%zmm0, %%zmm5\n vmovaps %%zmm0, %%zmm6\n"
        "vmovaps %%zmm0, %%zmm7\n vmovaps %%zmm0, %%zmm8\n vmovaps %%zmm0, %%zmm9\n"
        "vmovaps %%zmm0, %%zmm10\n vmovaps %%zmm0, %%zmm11\n"
        "vmovaps %%zmm0, %%zmm12\n vmovaps %%zmm0, %%zmm13\n"
        "1:\n"
        "vfmadd231ps %%zmm12, %%zmm13, %%zmm0\n vfmadd231ps %%zmm12, %%zmm13, %%zmm1\n"
        "vfmadd231ps %%zmm12, %%zmm13, %%zmm2\n vfmadd231ps %%zmm12, %%zmm13, %%zmm3\n"
        "vfmadd231ps %%zmm12, %%zmm13, %%zmm4\n vfmadd231ps %%zmm12, %%zmm13, %%zmm5\n"
        "vfmadd231ps %%zmm12, %%zmm13, %%zmm6\n vfmadd231ps %%zmm12, %%zmm13, %%zmm7\n"
        "vfmadd231ps %%zmm12, %%zmm13, %%zmm8\n vfmadd231ps %%zmm12, %%zmm13, %%zmm9\n"
        "vfmadd231ps %%zmm12, %%zmm13, %%zmm10\n vfmadd231ps %%zmm12, %%zmm13, %%zmm11\n"
        "dec %0\n jnz 1b\n"
        "vzeroupper\n"
        : "+r"(rounds)
        :
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "cc");
  } else {
    __asm__ volatile(
        "vxorps %%xmm0, %%xmm0, %%xmm0\n"
        "vmovaps %%ymm0, %%ymm1\n vmovaps %%ymm0, %%ymm2\n vmovaps %%ymm0, %%ymm3\n"
        "vmovaps %%ymm0, %%ymm4\n vmovaps %%ymm0, %%ymm5\n vmovaps %%ymm0, %%ymm6\n"
        "vmovaps %%ymm0, %%ymm7\n vmovaps %%ymm0, %%ymm8\n vmovaps %%ymm0, %%ymm9\n"
        "vmovaps %%ymm0, %%ymm10\n vmovaps %%ymm0, %%ymm11\n"
        "vmovaps %%ymm0, %%ymm12\n vmovaps %%ymm0, %%ymm13\n"
        "1:\n"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm0\n vfmadd231ps %%ymm12, %%ymm13, %%ymm1\n"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm2\n vfmadd231ps %%ymm12, %%ymm13, %%ymm3\n"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm4\n vfmadd231ps %%ymm12, %%ymm13, %%ymm5\n"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm6\n vfmadd231ps %%ymm12, %%ymm13, %%ymm7\n"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm8\n vfmadd231ps %%ymm12, %%ymm13, %%ymm9\n"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm10\n vfmadd231ps %%ymm12, %%ymm13, %%ymm11\n"
        "dec %0\n jnz 1b\n"
        "vzeroupper\n"
        : "+r"(rounds)
        :
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "cc");
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace avx512
}  // namespace cocopie
#endif
