// Zero padding of the two spatial axes (TFLite's PAD with a constant
// paddings tensor that leaves batch and channels alone: Keras'
// ZeroPadding2D, as before ResNet's stem conv and max pool), in both layouts
// a delegate partition uses, so such a stem stays in one partition.
#ifndef COCOPIE_CC_KERNELS_PAD_H_
#define COCOPIE_CC_KERNELS_PAD_H_

#include <cstdint>

#include "cc/kernels/thread_pool.h"

namespace cocopie {

// The largest padding per side either the check or the kernel takes (a
// damaged file could ask for a plane beyond any allocation).
constexpr int kMaxSpatialPad = 1 << 12;

struct SpatialPad {
  int batch = 1, in_h = 0, in_w = 0, channels = 0;
  int top = 0, bottom = 0, left = 0, right = 0;
  int out_h() const { return in_h + top + bottom; }
  int out_w() const { return in_w + left + right; }
};

// out = in with `top`/`bottom` rows and `left`/`right` columns of zeros
// around every plane; values (Inf and NaN too) are copied unchanged.
// planar: batch 1, [channels][h * w] in and out; otherwise NHWC, any batch.
void RunSpatialPad(const SpatialPad& p, bool planar, const float* in, float* out,
                   ThreadPool* pool);

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_PAD_H_
