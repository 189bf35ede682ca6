// NEON build of the direct and pattern kernels, for AArch64 (where NEON is
// part of the base ISA, so no target flags are needed; the build compiles this
// file instead of direct_generic.cc there).  Each 8-float vector of the
// shared source is a pair of q registers; products become FMLA by element.
#if defined(__aarch64__) && defined(__ARM_NEON)
#define COCOPIE_ISA_NS neon
#define COCOPIE_ISA_NAME "neon"
#include "cc/kernels/direct_kernels.inc"
#endif
