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
// The loop for one register class R ("zmm" or "ymm"): zero 14 registers
// (12 and 13 are the factors), then `rounds` times 12 FMAs, each into its
// own accumulator.
#define COCOPIE_COPY0(R, i) "vmovaps %%" R "0, %%" R #i "\n"
#define COCOPIE_FMA(R, i) "vfmadd231ps %%" R "12, %%" R "13, %%" R #i "\n"
#define COCOPIE_FMA_CHAINS(R)                                                               \
  "vxorps %%xmm0, %%xmm0, %%xmm0\n" COCOPIE_COPY0(R, 1) COCOPIE_COPY0(R, 2)                \
      COCOPIE_COPY0(R, 3) COCOPIE_COPY0(R, 4) COCOPIE_COPY0(R, 5) COCOPIE_COPY0(R, 6)      \
      COCOPIE_COPY0(R, 7) COCOPIE_COPY0(R, 8) COCOPIE_COPY0(R, 9) COCOPIE_COPY0(R, 10)     \
      COCOPIE_COPY0(R, 11) COCOPIE_COPY0(R, 12) COCOPIE_COPY0(R, 13)                       \
      "1:\n" COCOPIE_FMA(R, 0) COCOPIE_FMA(R, 1) COCOPIE_FMA(R, 2) COCOPIE_FMA(R, 3)        \
      COCOPIE_FMA(R, 4) COCOPIE_FMA(R, 5) COCOPIE_FMA(R, 6) COCOPIE_FMA(R, 7)              \
      COCOPIE_FMA(R, 8) COCOPIE_FMA(R, 9) COCOPIE_FMA(R, 10) COCOPIE_FMA(R, 11)            \
      "dec %0\n jnz 1b\n vzeroupper\n"

double TimeFmaChains(bool zmm, int64_t rounds) {
  // Written in assembly: compiled from intrinsics, the twelve accumulators
  // went through the stack and the loop timed loads and stores instead.
  if (rounds <= 0) return 0;  // the loop decrements before it tests
  const auto start = std::chrono::steady_clock::now();
  if (zmm)
    __asm__ volatile(COCOPIE_FMA_CHAINS("zmm")
                     : "+r"(rounds)
                     :
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "cc");
  else
    __asm__ volatile(COCOPIE_FMA_CHAINS("ymm")
                     : "+r"(rounds)
                     :
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "cc");
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
#undef COCOPIE_FMA_CHAINS
#undef COCOPIE_FMA
#undef COCOPIE_COPY0

}  // namespace avx512
}  // namespace cocopie
#endif
