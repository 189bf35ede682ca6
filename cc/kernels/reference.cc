#include "cc/kernels/reference.h"

#include <algorithm>

namespace cocopie {
namespace {

float Clamp(double v, float lo, float hi) {
  return std::min(std::max(static_cast<float>(v), lo), hi);
}

}  // namespace

void Conv2DReference(const ConvShape& s, const float* input,
                     const float* filter, const float* bias, float* output) {
  for (int b = 0; b < s.batch; ++b)
    for (int oy = 0; oy < s.out_h; ++oy)
      for (int ox = 0; ox < s.out_w; ++ox)
        for (int oc = 0; oc < s.out_c; ++oc) {
          double acc = bias ? bias[oc] : 0.0;
          for (int ky = 0; ky < s.k_h; ++ky) {
            const int iy = oy * s.stride_h - s.pad_top + ky * s.dil_h;
            if (iy < 0 || iy >= s.in_h) continue;
            for (int kx = 0; kx < s.k_w; ++kx) {
              const int ix = ox * s.stride_w - s.pad_left + kx * s.dil_w;
              if (ix < 0 || ix >= s.in_w) continue;
              const float* x =
                  input + ((static_cast<int64_t>(b) * s.in_h + iy) * s.in_w + ix) * s.in_c;
              const float* w =
                  filter + ((static_cast<int64_t>(oc) * s.k_h + ky) * s.k_w + kx) * s.in_c;
              for (int ic = 0; ic < s.in_c; ++ic)
                acc += static_cast<double>(x[ic]) * w[ic];
            }
          }
          output[((static_cast<int64_t>(b) * s.out_h + oy) * s.out_w + ox) * s.out_c + oc] =
              Clamp(acc, s.act_min, s.act_max);
        }
}

void DepthwiseConv2DReference(const ConvShape& s, const float* input,
                              const float* filter, const float* bias,
                              float* output) {
  const int m = s.depth_multiplier;
  for (int b = 0; b < s.batch; ++b)
    for (int oy = 0; oy < s.out_h; ++oy)
      for (int ox = 0; ox < s.out_w; ++ox)
        for (int oc = 0; oc < s.out_c; ++oc) {
          const int ic = oc / m;
          double acc = bias ? bias[oc] : 0.0;
          for (int ky = 0; ky < s.k_h; ++ky) {
            const int iy = oy * s.stride_h - s.pad_top + ky * s.dil_h;
            if (iy < 0 || iy >= s.in_h) continue;
            for (int kx = 0; kx < s.k_w; ++kx) {
              const int ix = ox * s.stride_w - s.pad_left + kx * s.dil_w;
              if (ix < 0 || ix >= s.in_w) continue;
              const float x =
                  input[((static_cast<int64_t>(b) * s.in_h + iy) * s.in_w + ix) * s.in_c + ic];
              const float w = filter[(static_cast<int64_t>(ky) * s.k_w + kx) * s.out_c + oc];
              acc += static_cast<double>(x) * w;
            }
          }
          output[((static_cast<int64_t>(b) * s.out_h + oy) * s.out_w + ox) * s.out_c + oc] =
              Clamp(acc, s.act_min, s.act_max);
        }
}

void FullyConnectedReference(int batch, int in, int out, const float* input,
                             const float* weights, const float* bias,
                             float act_min, float act_max, float* output) {
  for (int b = 0; b < batch; ++b)
    for (int o = 0; o < out; ++o) {
      double acc = bias ? bias[o] : 0.0;
      for (int i = 0; i < in; ++i)
        acc += static_cast<double>(input[static_cast<int64_t>(b) * in + i]) *
               weights[static_cast<int64_t>(o) * in + i];
      output[static_cast<int64_t>(b) * out + o] = Clamp(acc, act_min, act_max);
    }
}

}  // namespace cocopie
