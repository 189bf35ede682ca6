// AVX2+FMA build of the direct kernels.  The build compiles this file with
// -mavx2 -mfma on x86-64 only; dispatch.cc calls it only when the CPU has both.
#if defined(__AVX2__) && defined(__FMA__)
#define COCOPIE_ISA_NS avx2_fma
#define COCOPIE_ISA_NAME "avx2_fma"
#include "cc/kernels/direct_kernels.inc"
#endif
