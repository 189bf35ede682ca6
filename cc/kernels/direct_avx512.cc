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
#endif
