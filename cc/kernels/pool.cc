#include "cc/kernels/pool.h"

#include <algorithm>
#include <limits>
#include <vector>

namespace cocopie {

std::string CheckPoolShape(const ConvShape& s) {
  if (s.batch <= 0 || s.in_h <= 0 || s.in_w <= 0 || s.in_c <= 0 || s.out_h <= 0 || s.out_w <= 0)
    return "pooling: empty input or output";
  if (s.k_h <= 0 || s.k_w <= 0 || s.stride_h <= 0 || s.stride_w <= 0 || s.dil_h != 1 ||
      s.dil_w != 1)
    return "pooling: invalid window or stride";
  if (s.out_c != s.in_c) return "pooling: output channels differ from input channels";
  // Every window must hold an in-bounds position (TFLite's SAME and VALID
  // padding guarantee it; a count of 0 would divide by zero).
  const auto covered = [](int out, int stride, int pad, int k, int in) {
    return -pad + k > 0 && int64_t(out - 1) * stride - pad < in && pad >= 0;
  };
  if (!covered(s.out_h, s.stride_h, s.pad_top, s.k_h, s.in_h) ||
      !covered(s.out_w, s.stride_w, s.pad_left, s.k_w, s.in_w))
    return "pooling: a window lies outside the input";
  return "";
}

void RunPool2D(const KernelSet* set, bool max, const ConvShape& s, bool planar, bool zero_border,
               const float* in, float* out, ThreadPool* pool) {
  if (planar) {
    PoolPlanesArgs a;
    a.s = &s; a.max = max; a.zero_border = zero_border; a.input = in; a.output = out;
    ParallelFor(pool, s.in_c, 1, [&](int64_t c0, int64_t c1) { set->pool_planes(a, c0, c1); });
    return;
  }
  const float init = max ? std::numeric_limits<float>::quiet_NaN() : 0.f;
  const float lo = s.act_min, hi = s.act_max;
  // NHWC: each output pixel reduces its window pixel by pixel over all
  // channels at once (contiguous), in the reference kernels' order.
  const int C = s.in_c;
  ParallelFor(pool, int64_t(s.batch) * s.out_h, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / s.out_h;
      const int oy = static_cast<int>(r % s.out_h);
      const int y0 = oy * s.stride_h - s.pad_top;
      const int ya = std::max(y0, 0), yb = std::min(y0 + s.k_h, s.in_h);
      for (int ox = 0; ox < s.out_w; ++ox) {
        const int x0 = ox * s.stride_w - s.pad_left;
        const int xa = std::max(x0, 0), xb = std::min(x0 + s.k_w, s.in_w);
        float* o = out + ((b * s.out_h + oy) * s.out_w + ox) * C;
        std::fill(o, o + C, init);
        for (int y = ya; y < yb; ++y)
          for (int x = xa; x < xb; ++x) {
            const float* v = in + ((b * s.in_h + y) * s.in_w + x) * C;
            if (max)  // NaN skipped unless the window holds nothing else
              for (int c = 0; c < C; ++c) o[c] = (o[c] < v[c] || o[c] != o[c]) ? v[c] : o[c];
            else
              for (int c = 0; c < C; ++c) o[c] += v[c];
          }
        int count = std::max(yb - ya, 0) * std::max(xb - xa, 0);
        if (zero_border && count < s.k_h * s.k_w) {  // the border's zeros take part
          if (max)
            for (int c = 0; c < C; ++c) o[c] = (o[c] < 0.f || o[c] != o[c]) ? 0.f : o[c];
          count = s.k_h * s.k_w;
        }
        for (int c = 0; c < C; ++c) {
          float m = max ? o[c] : o[c] / static_cast<float>(count);
          m = m < lo ? lo : m;  // TFLite's clamp: a NaN stays NaN
          o[c] = hi < m ? hi : m;
        }
      }
    }
  });
}

}  // namespace cocopie
