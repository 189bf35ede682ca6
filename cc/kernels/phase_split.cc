#include "cc/kernels/phase_split.h"

#include <atomic>
#include <cstring>

#include "cc/kernels/thread_pool.h"

namespace cocopie {

std::vector<float> PhaseSplitFilter(const float* filter, int out_c, int k_h, int k_w, int in_c,
                                    int stride_h, int stride_w, int* split_k_h, int* split_k_w) {
  const int kh2 = (k_h + stride_h - 1) / stride_h, kw2 = (k_w + stride_w - 1) / stride_w;
  const int c2 = stride_h * stride_w * in_c;
  std::vector<float> out(static_cast<size_t>(out_c) * kh2 * kw2 * c2, 0.f);
  for (int o = 0; o < out_c; ++o)
    for (int ky = 0; ky < k_h; ++ky)
      for (int kx = 0; kx < k_w; ++kx) {
        const int a = ky / stride_h, p = ky % stride_h, b = kx / stride_w, q = kx % stride_w;
        const float* src = filter + ((static_cast<int64_t>(o) * k_h + ky) * k_w + kx) * in_c;
        float* dst = out.data() + ((static_cast<int64_t>(o) * kh2 + a) * kw2 + b) * c2 +
                     static_cast<int64_t>(p * stride_w + q) * in_c;
        std::memcpy(dst, src, sizeof(float) * in_c);
      }
  *split_k_h = kh2;
  *split_k_w = kw2;
  return out;
}

ConvShape PhaseSplitShape(const ConvShape& s) {
  ConvShape t = s;
  t.k_h = (s.k_h + s.stride_h - 1) / s.stride_h;
  t.k_w = (s.k_w + s.stride_w - 1) / s.stride_w;
  t.in_h = s.out_h + t.k_h - 1;
  t.in_w = s.out_w + t.k_w - 1;
  t.in_c = s.stride_h * s.stride_w * s.in_c;
  t.stride_h = t.stride_w = 1;
  t.dil_h = t.dil_w = 1;
  t.pad_top = t.pad_left = 0;
  return t;
}

ConvShape SubsampledShape(const ConvShape& s) {
  ConvShape t = s;
  t.in_h = s.out_h;
  t.in_w = s.out_w;
  t.stride_h = t.stride_w = 1;
  t.dil_h = t.dil_w = 1;
  t.pad_top = t.pad_left = 0;
  return t;
}

void SubsampleInput(const ConvShape& s, bool planar, const float* in, float* out,
                    ThreadPool* pool) {
  const int sh = s.stride_h, sw = s.stride_w, c = s.in_c;
  if (planar) {  // one task per (channel, output row)
    ParallelFor(pool, static_cast<int64_t>(c) * s.out_h, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t ch = r / s.out_h, oy = r % s.out_h;
        const float* src = in + (ch * s.in_h + oy * sh) * s.in_w;
        float* dst = out + r * s.out_w;
        for (int ox = 0; ox < s.out_w; ++ox) dst[ox] = src[static_cast<int64_t>(ox) * sw];
      }
    });
    return;
  }
  ParallelFor(pool, static_cast<int64_t>(s.batch) * s.out_h, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / s.out_h, oy = r % s.out_h;
      const float* row = in + ((b * s.in_h + oy * sh) * s.in_w) * c;
      float* dst = out + r * s.out_w * c;
      for (int ox = 0; ox < s.out_w; ++ox)
        std::memcpy(dst + static_cast<int64_t>(ox) * c, row + static_cast<int64_t>(ox) * sw * c,
                    sizeof(float) * c);
    }
  });
}

bool PhaseSplitInput(const ConvShape& s, const float* input, float* split, ThreadPool* pool) {
  const ConvShape t = PhaseSplitShape(s);
  const int c = s.in_c, sh = s.stride_h, sw = s.stride_w;
  const int64_t rows = static_cast<int64_t>(s.batch) * t.in_h;
  std::atomic<bool> non_finite{false};
  ParallelFor(pool, rows, 4, [&](int64_t r0, int64_t r1) {
    uint32_t bad = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / t.in_h;
      const int i = static_cast<int>(r % t.in_h);
      float* dst = split + r * t.in_w * t.in_c;
      for (int j = 0; j < t.in_w; ++j)
        for (int p = 0; p < sh; ++p)
          for (int q = 0; q < sw; ++q, dst += c) {
            const int y = sh * i + p - s.pad_top, x = sw * j + q - s.pad_left;
            if (y < 0 || y >= s.in_h || x < 0 || x >= s.in_w) {
              std::memset(dst, 0, sizeof(float) * c);
              continue;
            }
            const float* src = input + ((b * s.in_h + y) * s.in_w + x) * c;
            std::memcpy(dst, src, sizeof(float) * c);
            for (int k = 0; k < c; ++k) {  // +0 unless Inf or NaN (vectorised)
              const float d = src[k] - src[k];
              uint32_t bits;
              std::memcpy(&bits, &d, sizeof bits);
              bad |= bits;
            }
          }
    }
    if (bad) non_finite.store(true, std::memory_order_relaxed);
  });
  return non_finite.load();
}

}  // namespace cocopie
