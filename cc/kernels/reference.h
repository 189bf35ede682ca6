// Reference kernels: the oracle every optimised kernel is tested against.
// Plain loops in the obvious order, accumulating in double, so they are easy
// to check by eye and more accurate than any float kernel.
#ifndef COCOPIE_CC_KERNELS_REFERENCE_H_
#define COCOPIE_CC_KERNELS_REFERENCE_H_

#include "cc/kernels/shapes.h"

namespace cocopie {

// filter: OHWI [out_c][k_h][k_w][in_c]; bias may be null.
void Conv2DReference(const ConvShape& s, const float* input,
                     const float* filter, const float* bias, float* output);

// filter: [1][k_h][k_w][in_c * depth_multiplier]; bias may be null.
void DepthwiseConv2DReference(const ConvShape& s, const float* input,
                              const float* filter, const float* bias,
                              float* output);

// weights: [out][in]; input: [batch][in]; bias may be null.
void FullyConnectedReference(int batch, int in, int out, const float* input,
                             const float* weights, const float* bias,
                             float act_min, float act_max, float* output);

// MAX_POOL_2D (`max`) or AVERAGE_POOL_2D over NHWC `input`, in-bounds
// positions only: max skips NaN unless the window holds nothing else;
// average = sum / count; then the clamp (cc/kernels/pool.h).
void Pool2DReference(bool max, const ConvShape& s, const float* input, float* output);

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_REFERENCE_H_
