// Baseline build of the direct kernels (whatever the compiler's default target
// gives: SSE2 on x86-64, NEON on aarch64).
#define COCOPIE_ISA_NS generic
#define COCOPIE_ISA_NAME "generic"
#include "cc/kernels/direct_kernels.inc"
