// A strided convolution as a stride-1 convolution over the phase-split input,
// so the pattern engines (which vectorise over consecutive output positions)
// run strided layers too.
//
// With strides (sh, sw), tap (ky, kx) = (sh*a + p, sw*b + q) of output
// (oy, ox) reads padded input row sh*(oy + a) + p, column sw*(ox + b) + q.
// Splitting the zero-padded input into its sh*sw phases,
//   X'[i][j][(p*sw + q)*C + c] = Xpad[sh*i + p][sw*j + q][c],
// and the filter alike,
//   K'[o][a][b][(p*sw + q)*C + c] = K[o][sh*a + p][sw*b + q][c]  (0 past the kernel),
// turns the layer into a VALID stride-1 convolution of a ceil(k_h/sh) x
// ceil(k_w/sw) kernel over sh*sw*C channels with the same output and the
// same kept weights (pruned kernels stay zero; patterns become masks of the
// smaller kernel).  The split costs one pass over the input.
#ifndef COCOPIE_CC_KERNELS_PHASE_SPLIT_H_
#define COCOPIE_CC_KERNELS_PHASE_SPLIT_H_

#include <cstdint>
#include <vector>

#include "cc/kernels/shapes.h"

namespace cocopie {

class ThreadPool;

constexpr int kMaxPhaseStride = 4;

// Whether a convolution with these strides and dilations is run split.
inline bool PhaseSplitApplies(int stride_h, int stride_w, int dil_h, int dil_w) {
  return (stride_h > 1 || stride_w > 1) && stride_h <= kMaxPhaseStride &&
         stride_w <= kMaxPhaseStride && dil_h == 1 && dil_w == 1;
}

// K' (OHWI) of an OHWI filter; sets the split kernel's size.
std::vector<float> PhaseSplitFilter(const float* filter, int out_c, int k_h, int k_w, int in_c,
                                    int stride_h, int stride_w, int* split_k_h, int* split_k_w);

// The stride-1 shape of a resolved strided shape `s` (batch, output and
// activation kept; VALID, no padding).
ConvShape PhaseSplitShape(const ConvShape& s);

// X' of every image of `input` (NHWC, shape `s`) into `split` (NHWC,
// PhaseSplitShape(s)).  Returns true when an input value it copied is Inf or
// NaN (the caller then runs the unsplit dense kernel, whose 0 x Inf products
// match stock TFLite's window by window).
bool PhaseSplitInput(const ConvShape& s, const float* input, float* split, ThreadPool* pool);

// A strided 1x1 conv reads only every stride-th pixel (a 1x1 kernel never
// pads), so it runs as a stride-1 1x1 conv over that subsample instead of
// the phase split, which would carry every phase to use one of them.  This
// also lets it read a planar tensor (ResNet's stage-entry convs, whose input
// is the previous stage's last ADD).
inline bool SubsampleApplies(int k_h, int k_w, int stride_h, int stride_w) {
  return k_h == 1 && k_w == 1 && (stride_h > 1 || stride_w > 1);
}

// The stride-1 shape over the subsample of a resolved strided 1x1 shape `s`
// (input map = output map).
ConvShape SubsampledShape(const ConvShape& s);

// out = pixels (oy * stride_h, ox * stride_w) of `in`: NHWC [b][oy][ox][c],
// or planar [c][oy][ox] from planar [c][y][x] (batch 1).  No arithmetic, so
// Inf and NaN travel as they are.
void SubsampleInput(const ConvShape& s, bool planar, const float* in, float* out,
                    ThreadPool* pool);

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_PHASE_SPLIT_H_
