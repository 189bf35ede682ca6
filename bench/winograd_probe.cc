// A probe, not part of the library: connectivity-pruned Winograd F(4x4, 3x3)
// for a stride-1 SAME 3x3 conv (NHWC in and out, AVX-512), its 36 products
// per tile run as 36 connectivity-pruned 1x1 convs on the existing generated
// code (planar, in place), timed against the pattern engine on the same
// pruned weights, both checked against the float64 reference
// (docs/engine.md section 36).  Build from the repository root against a
// CMake build in /tmp/b:
//   g++ -O3 -march=native -std=c++17 -I. bench/winograd_probe.cc \
//       /tmp/b/libcocopie_kernels.a -lpthread -o /tmp/winograd_probe
//   /tmp/winograd_probe [H=56] [C=128] [threads=1]
#include "cc/kernels/dispatch.h"
#include "cc/kernels/pattern_conv.h"
#include "cc/kernels/reference.h"
#include "cc/kernels/thread_pool.h"
#include "cc/kernels/jit_pattern.h"
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <algorithm>
#include <cmath>
using namespace cocopie;
static const float BT[6][6] = {{4,0,-5,0,1,0},{0,-4,-4,1,1,0},{0,4,-4,-1,1,0},{0,-2,-1,2,1,0},{0,2,-1,-2,1,0},{0,4,0,-5,0,1}};
static const double Gm[6][3] = {{1/4.,0,0},{-1/6.,-1/6.,-1/6.},{-1/6.,1/6.,-1/6.},{1/24.,1/12.,1/6.},{1/24.,-1/12.,1/6.},{0,0,1}};
static const float AT[4][6] = {{1,1,1,1,1,0},{0,1,-1,2,-2,0},{0,1,1,4,4,0},{0,1,-1,8,-8,1}};
static inline void T16(const float* src, int64_t ss, float* dst, int64_t ds) {  // dst[j][i] = src[i][j], 16x16
  __m512 r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ss);
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) { t[i] = _mm512_unpacklo_ps(r[i], r[i+1]); t[i+1] = _mm512_unpackhi_ps(r[i], r[i+1]); }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i+2], 0x44); r[i+1] = _mm512_shuffle_ps(t[i], t[i+2], 0xEE);
    r[i+2] = _mm512_shuffle_ps(t[i+1], t[i+3], 0x44); r[i+3] = _mm512_shuffle_ps(t[i+1], t[i+3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    __m512 a = _mm512_shuffle_f32x4(r[k], r[4+k], 0x44), b = _mm512_shuffle_f32x4(r[k], r[4+k], 0xEE);
    __m512 c = _mm512_shuffle_f32x4(r[8+k], r[12+k], 0x44), d = _mm512_shuffle_f32x4(r[8+k], r[12+k], 0xEE);
    _mm512_storeu_ps(dst + (0+k)*ds, _mm512_shuffle_f32x4(a, c, 0x88));
    _mm512_storeu_ps(dst + (4+k)*ds, _mm512_shuffle_f32x4(a, c, 0xDD));
    _mm512_storeu_ps(dst + (8+k)*ds, _mm512_shuffle_f32x4(b, d, 0x88));
    _mm512_storeu_ps(dst + (12+k)*ds, _mm512_shuffle_f32x4(b, d, 0xDD));
  }
}
static inline void BTx(const __m512* d, int sd, __m512* t, int st) {
  const __m512 four = _mm512_set1_ps(4.f), five = _mm512_set1_ps(5.f), two = _mm512_set1_ps(2.f);
  const __m512 d0 = d[0], d1 = d[sd], d2 = d[2*sd], d3 = d[3*sd], d4 = d[4*sd], d5 = d[5*sd];
  t[0] = _mm512_fnmadd_ps(five, d2, _mm512_fmadd_ps(four, d0, d4));
  const __m512 a = _mm512_fnmadd_ps(four, d2, d4), bq = _mm512_fnmadd_ps(four, d1, d3);
  t[st] = _mm512_add_ps(a, bq);                 // -4d1 -4d2 + d3 + d4
  t[2*st] = _mm512_sub_ps(a, bq);               // 4d1 -4d2 - d3 + d4
  const __m512 c = _mm512_sub_ps(d4, d2), e = _mm512_mul_ps(two, _mm512_sub_ps(d3, d1));
  t[3*st] = _mm512_add_ps(c, e);                // -2d1 - d2 + 2d3 + d4
  t[4*st] = _mm512_sub_ps(c, e);                // 2d1 - d2 - 2d3 + d4
  t[5*st] = _mm512_fnmadd_ps(five, d3, _mm512_fmadd_ps(four, d1, d5));
}
static inline void ATx(const __m512* m, int sm, __m512* o, int so) {
  const __m512 m0 = m[0], m1 = m[sm], m2 = m[2*sm], m3 = m[3*sm], m4 = m[4*sm], m5 = m[5*sm];
  const __m512 s12 = _mm512_add_ps(m1, m2), d12 = _mm512_sub_ps(m1, m2), s34 = _mm512_add_ps(m3, m4), d34 = _mm512_sub_ps(m3, m4);
  o[0] = _mm512_add_ps(_mm512_add_ps(m0, s12), s34);
  o[so] = _mm512_fmadd_ps(_mm512_set1_ps(2.f), d34, d12);
  o[2*so] = _mm512_fmadd_ps(_mm512_set1_ps(4.f), s34, s12);
  o[3*so] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.f), d34, d12), m5);
}
int main(int argc, char** argv) {
  const int H = argc > 1 ? atoi(argv[1]) : 56, C = argc > 2 ? atoi(argv[2]) : 128, K = C;
  const int threads = argc > 3 ? atoi(argv[3]) : 1;
  std::string err; const KernelSet* set = SelectKernelSet("auto", &err);
  std::mt19937 rng(1); std::uniform_real_distribution<float> u(-1, 1);
  ConvShape s; s.in_h = s.in_w = H; s.in_c = C; s.out_c = K; s.k_h = s.k_w = 3; s.act_min = 0; s.act_max = 6;
  ResolveConvShape(Padding::kSame, &s);
  const int pats[8][4] = {{1,3,4,5},{1,4,5,7},{0,1,3,4},{4,5,7,8},{1,3,4,7},{3,4,5,7},{1,2,4,5},{3,4,6,7}};
  std::vector<float> w(size_t(K) * 9 * C, 0.f), b(K), x(size_t(H) * H * C);
  std::vector<char> kept(size_t(K) * C, 0);
  for (int o = 0; o < K; ++o) for (int c = 0; c < C; ++c) if (rng() % 2) {
    kept[size_t(o) * C + c] = 1; int p = rng() % 8; for (int t : pats[p]) w[(size_t(o) * 9 + t) * C + c] = u(rng); }
  for (auto& v : b) v = u(rng) * 0.1f;
  for (auto& v : x) v = u(rng);
  std::vector<float> ref(size_t(H) * H * K);
  Conv2DReference(s, x.data(), w.data(), b.data(), ref.data());
  ThreadPool pool(threads);
  // Baseline: the pattern engine on the layer (NHWC in and out).
  PatternPlan plan; BuildPatternPlan(w.data(), K, 3, 3, C, b.data(), 4, &plan);
  PatternScratch ps; PatternTuning pt; std::string eng = PreparePatternConv(set, s, plan, &ps, pt);
  std::vector<float> out0(ref.size());
  // Winograd: tiles
  const int T1 = (H + 3) / 4, NT = T1 * T1;  // tiles per side, tiles
  const int TP = (NT + 15) / 16 * 16;          // tile "plane", padded to whole vectors
  // 1x1 convs per xi over a "map" of 1 x TP positions
  ConvShape g; g.in_h = 1; g.in_w = TP; g.in_c = C; g.out_c = K; g.k_h = g.k_w = 1; ResolveConvShape(Padding::kValid, &g);
  std::vector<PatternPlan> gplan(36); std::vector<PatternScratch> gs(36);
  PatternTuning gt; gt.planar_direct = true;
  std::vector<float> U(size_t(K) * C), zero(K, 0.f);
  std::string geng;
  for (int xi = 0; xi < 36; ++xi) {
    const int a = xi / 6, bb = xi % 6;
    for (int o = 0; o < K; ++o) for (int c = 0; c < C; ++c) {
      double v = 0;
      if (kept[size_t(o) * C + c])
        for (int i = 0; i < 3; ++i) for (int j = 0; j < 3; ++j) v += Gm[a][i] * w[(size_t(o) * 9 + i * 3 + j) * C + c] * Gm[bb][j];
      U[size_t(o) * C + c] = float(v);
    }
    std::string e = BuildPatternPlan(U.data(), K, 1, 1, C, zero.data(), 4, &gplan[xi]);
    if (!e.empty()) { printf("plan %s\n", e.c_str()); return 1; }
    geng = PreparePatternConv(set, g, gplan[xi], &gs[xi], gt);
  }
  std::vector<float> V(size_t(36) * C * TP, 0.f), M(size_t(36) * K * TP, 0.f), out1(ref.size());
  auto input_transform = [&](int64_t tb0, int64_t tb1) {
    alignas(64) float buf[16][36][16];  // [tile][xi][ch]: a unit's 36 stores contiguous (xi-major at 1 KB strides put them in 4 L1 sets)
    for (int64_t tb = tb0; tb < tb1; ++tb)       // tile block of 16 tiles
      for (int c0 = 0; c0 < C; c0 += 16) {
        for (int k = 0; k < 16; ++k) {
          const int t = int(tb) * 16 + k;
          if (t >= NT) { for (int xi = 0; xi < 36; ++xi) _mm512_store_ps(buf[k][xi], _mm512_setzero_ps()); continue; }
          const int ty = t / T1, tx = t % T1;
          const int y0 = ty * 4 - 1, x0 = tx * 4 - 1;
          const bool inside = y0 >= 0 && x0 >= 0 && y0 + 6 <= H && x0 + 6 <= H;
          alignas(64) __m512 r[6][6];  // row-transformed: r[i][j'] = sum_j BT[j'][j] d[i][j]
          for (int i = 0; i < 6; ++i) {
            __m512 d[6];
            const int y = y0 + i;
            if (inside) {
              const float* row = &x[(size_t(y) * H + x0) * C + c0];
              for (int j = 0; j < 6; ++j) d[j] = _mm512_loadu_ps(row + size_t(j) * C);
            } else {
              for (int j = 0; j < 6; ++j) {
                const int xx = x0 + j;
                d[j] = (y < 0 || y >= H || xx < 0 || xx >= H) ? _mm512_setzero_ps() : _mm512_loadu_ps(&x[(size_t(y) * H + xx) * C + c0]);
              }
            }
            BTx(d, 1, r[i], 1);
          }
          for (int j = 0; j < 6; ++j) {
            __m512 c[6], f[6];
            for (int i = 0; i < 6; ++i) c[i] = r[i][j];
            BTx(c, 1, f, 1);
            for (int i = 0; i < 6; ++i) _mm512_store_ps(buf[k][i * 6 + j], f[i]);
          }
        }
        for (int xi = 0; xi < 36; ++xi) T16(&buf[0][xi][0], 36 * 16, &V[(size_t(xi) * C + c0) * TP + tb * 16], TP);
      }
  };
  auto output_transform = [&](int64_t tb0, int64_t tb1) {
    alignas(64) float buf[16][36][16];  // [tile][xi][oc]
    for (int64_t tb = tb0; tb < tb1; ++tb)
      for (int o0 = 0; o0 < K; o0 += 16) {
        for (int xi = 0; xi < 36; ++xi) T16(&M[(size_t(xi) * K + o0) * TP + tb * 16], TP, &buf[0][xi][0], 36 * 16);
        const __m512 bias = _mm512_loadu_ps(&b[o0]), lo = _mm512_set1_ps(s.act_min), hi = _mm512_set1_ps(s.act_max);
        for (int k = 0; k < 16; ++k) {
          const int t = int(tb) * 16 + k; if (t >= NT) break;
          const int ty = t / T1, tx = t % T1;
          alignas(64) __m512 e[4][6];
          for (int j = 0; j < 6; ++j) {
            __m512 c[6], o[4];
            for (int i = 0; i < 6; ++i) c[i] = _mm512_load_ps(buf[k][i * 6 + j]);
            ATx(c, 1, o, 1);
            for (int i = 0; i < 4; ++i) e[i][j] = o[i];
          }
          for (int i = 0; i < 4; ++i) {
            __m512 o[4];
            ATx(e[i], 1, o, 1);
            const int y = ty * 4 + i; if (y >= H) break;
            float* orow = &out1[(size_t(y) * H + tx * 4) * K + o0];
            for (int j = 0; j < 4 && tx * 4 + j < H; ++j)
              _mm512_storeu_ps(orow + size_t(j) * K, _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(o[j], bias))));
          }
        }
      }
  };
  const int nblocks = TP / 16;
  double t_in = 0, t_g = 0, t_out = 0;
  auto wino = [&](bool timeit) {
    auto a = std::chrono::steady_clock::now();
    pool.ParallelFor(nblocks, 1, input_transform);
    auto b2 = std::chrono::steady_clock::now();
    for (int xi = 0; xi < 36; ++xi) {
      PatternIo io; io.planar_input = &V[size_t(xi) * C * TP]; io.planar_output = &M[size_t(xi) * K * TP];
      RunPatternConv(set, g, gplan[xi], &gs[xi], nullptr, nullptr, &pool, gt, io);
    }
    auto c = std::chrono::steady_clock::now();
    pool.ParallelFor(nblocks, 1, output_transform);
    auto d = std::chrono::steady_clock::now();
    if (timeit) { t_in += std::chrono::duration<double, std::milli>(b2 - a).count(); t_g += std::chrono::duration<double, std::milli>(c - b2).count(); t_out += std::chrono::duration<double, std::milli>(d - c).count(); }
  };
  wino(false);
  RunPatternConv(set, s, plan, &ps, x.data(), out0.data(), &pool, pt);
  auto rel = [&](const std::vector<float>& o) { double n = 0, dd = 0; for (size_t i = 0; i < o.size(); ++i) { n += (o[i] - ref[i]) * double(o[i] - ref[i]); dd += double(ref[i]) * ref[i]; } return std::sqrt(n / dd); };
  printf("%dx%dx%d->%d t%d engine %s gemm %s; rel err pattern %.2e winograd %.2e\n", H, H, C, K, threads, eng.c_str(), geng.c_str(), rel(out0), rel(out1));
  size_t code = 0; for (auto& q : gs) code += q.jit ? q.jit->code_bytes() : 0;
  printf("products %.1f M (kept %.0f%%), pattern executed %.1f M, gemm code %.1f MB\n", 36.0 * TP * plan.kept_kernels / 1e6 * 1.0, 100.0 * plan.kept_kernels / (double(K) * C), double(plan.kept_weights) * H * H / 1e6, code / 1e6);
  std::vector<double> ta, tb;
  for (int r = 0; r < 400; ++r) {
    auto a = std::chrono::steady_clock::now();
    if (r % 2) RunPatternConv(set, s, plan, &ps, x.data(), out0.data(), &pool, pt); else wino(true);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count();
    (r % 2 ? ta : tb).push_back(ms);
  }
  std::sort(ta.begin(), ta.end()); std::sort(tb.begin(), tb.end());
  printf("pattern %.3f ms  winograd %.3f ms (in %.3f gemm %.3f out %.3f)  ratio %.2fx\n", ta[ta.size()/2], tb[tb.size()/2], t_in / 200, t_g / 200, t_out / 200, ta[ta.size()/2] / tb[tb.size()/2]);
}
