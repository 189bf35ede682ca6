#include "cc/kernels/pad.h"

#include <algorithm>
#include <cstring>

namespace cocopie {

void RunSpatialPad(const SpatialPad& p, bool planar, const float* in, float* out,
                   ThreadPool* pool) {
  const int oh = p.out_h(), ow = p.out_w();
  if (planar) {
    const int64_t in_plane = int64_t(p.in_h) * p.in_w, out_plane = int64_t(oh) * ow;
    ParallelFor(pool, p.channels, 4, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const float* src = in + c * in_plane;
        float* dst = out + c * out_plane;
        std::fill(dst, dst + int64_t(p.top) * ow, 0.f);
        for (int y = 0; y < p.in_h; ++y) {
          float* row = dst + int64_t(p.top + y) * ow;
          std::fill(row, row + p.left, 0.f);
          std::memcpy(row + p.left, src + int64_t(y) * p.in_w, sizeof(float) * p.in_w);
          std::fill(row + p.left + p.in_w, row + ow, 0.f);
        }
        std::fill(dst + int64_t(p.top + p.in_h) * ow, dst + out_plane, 0.f);
      }
    });
    return;
  }
  const int64_t C = p.channels, in_row = int64_t(p.in_w) * C, out_row = int64_t(ow) * C;
  ParallelFor(pool, int64_t(p.batch) * oh, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / oh;
      const int y = static_cast<int>(r % oh) - p.top;
      float* row = out + r * out_row;
      if (y < 0 || y >= p.in_h) {
        std::fill(row, row + out_row, 0.f);
        continue;
      }
      std::fill(row, row + p.left * C, 0.f);
      std::memcpy(row + p.left * C, in + (b * p.in_h + y) * in_row, sizeof(float) * in_row);
      std::fill(row + (p.left + p.in_w) * C, row + out_row, 0.f);
    }
  });
}

}  // namespace cocopie
