// Max and average pooling (TFLite's MAX_POOL_2D and AVERAGE_POOL_2D) on the
// CPU, in both layouts a delegate partition uses.  Claimed so a VGG stage or
// ResNet's stem keeps its planar tensors across the pool instead of leaving
// the partition (docs/engine.md section 31).
#ifndef COCOPIE_CC_KERNELS_POOL_H_
#define COCOPIE_CC_KERNELS_POOL_H_

#include <string>

#include "cc/kernels/kernels.h"
#include "cc/kernels/shapes.h"
#include "cc/kernels/thread_pool.h"

namespace cocopie {

// The semantics (Pool2DReference is the oracle; the GPU backend's pool,
// cc/gpu/gpu_ops.cc, has the same):
// - a window covers its in-bounds positions only (SAME padding adds none);
// - max: a NaN among numbers is skipped, a window of NaN alone gives NaN,
//   -inf is a number (numpy's nanmax, but NaN rather than an error for an
//   all-NaN window).  Stock LiteRT has no single rule to follow: its
//   reference kernels skip NaN and answer a window of NaN or -inf alone
//   with the lowest float; its default on x86 (XNNPACK's MAXPS chain)
//   gives NaN for a window of NaN and -inf for one of -inf, but for a lone
//   NaN among numbers -inf, a partial maximum or the maximum depending on
//   where it sits (docs/engine.md section 31).  This rule agrees with
//   XNNPACK wherever XNNPACK does not depend on the NaN's place, and with
//   the reference kernels wherever a window holds a number;
// - average: the in-bounds sum divided by their count (float), so a NaN or
//   an Inf reaches the result;
// - then the fused activation's clamp [act_min, act_max] (NaN stays NaN).
// `s`: batch, in_h, in_w, in_c, out_h, out_w, k_h, k_w, strides and
// pad_top / pad_left resolved (ResolveConvShape); dilation 1; out_c == in_c.
//
// planar: batch 1, input [c][in_h * in_w] and output [c][out_h * out_w]
// (the partition's planar tensors); otherwise NHWC in and out, any batch.
// The largest window per axis either backend takes (TFLite has no limit;
// real models use 2 or 3, global pooling is MEAN).
constexpr int kMaxPoolWindow = 64;

// `max`: max pooling, else average.  `set` runs the planar kernel (not
// null when planar).  `zero_border` (a PAD fused into a VALID pool):
// positions outside the input are zeros that take part, and an average
// divides by k_h * k_w.
void RunPool2D(const KernelSet* set, bool max, const ConvShape& s, bool planar, bool zero_border,
               const float* in, float* out, ThreadPool* pool);

// "" when RunPool2D takes `s` (after ResolveConvShape), else why not.
std::string CheckPoolShape(const ConvShape& s);

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_POOL_H_
