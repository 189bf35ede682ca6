#include "cc/kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

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

void Pool2DReference(bool max, const ConvShape& s, const float* input, float* output) {
  for (int b = 0; b < s.batch; ++b)
    for (int oy = 0; oy < s.out_h; ++oy)
      for (int ox = 0; ox < s.out_w; ++ox)
        for (int c = 0; c < s.in_c; ++c) {
          const int y0 = oy * s.stride_h - s.pad_top, x0 = ox * s.stride_w - s.pad_left;
          float m = max ? std::numeric_limits<float>::quiet_NaN() : 0.f;
          int count = 0;
          for (int y = std::max(y0, 0); y < std::min(y0 + s.k_h, s.in_h); ++y)
            for (int x = std::max(x0, 0); x < std::min(x0 + s.k_w, s.in_w); ++x) {
              const float v =
                  input[((static_cast<int64_t>(b) * s.in_h + y) * s.in_w + x) * s.in_c + c];
              if (max) m = (m < v || std::isnan(m)) ? v : m;
              else m += v;
              ++count;
            }
          if (!max) m = count > 0 ? m / static_cast<float>(count) : 0.f;
          // std::min(std::max(...)) as TFLite: a NaN stays NaN.
          m = m < s.act_min ? s.act_min : m;
          m = s.act_max < m ? s.act_max : m;
          output[((static_cast<int64_t>(b) * s.out_h + oy) * s.out_w + ox) * s.in_c + c] = m;
        }
}

}  // namespace cocopie
