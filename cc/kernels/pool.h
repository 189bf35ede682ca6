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

// The semantics of TFLite's reference kernels (Pool2DReference, the oracle), which the GPU backend's pool
// shares (cc/gpu/gpu_ops.cc):
// - a window covers its in-bounds positions only (SAME padding adds none);
// - max starts at the lowest finite float and keeps `m < v ? v : m`, so a
//   NaN is skipped and a window holding only NaN or -inf gives the lowest
//   float (XNNPACK, stock LiteRT's default on x86, answers such windows with
//   -inf, and a NaN with -inf or a partial maximum depending on where it
//   sits: docs/engine.md section 31);
// - average is the in-bounds sum divided by their count (float);
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
