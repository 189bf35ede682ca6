// A probe, not part of the library: connectivity-pruned Winograd F(4x4, 3x3)
// for a stride-1 SAME 3x3 conv, timed against the pattern engine on the same
// pruned weights, both checked against the float64 reference
// (docs/engine.md section 36).  This version works on planar tensors, as
// inside a partition: the NHWC input is moved to planes and back with the
// engine's transposes (timed apart as "edges"), the input transform is
// vectorised over the 16 tiles of a tile row (stride-4 picks by two-source
// permutes, no transposes), the 36 products per tile run as 36
// connectivity-pruned 1x1 convs on the existing generated code (planar, in
// place), and the output transform interleaves its 4 x 16 outputs back into
// rows.  (The first version, vectorised over channels from NHWC with 16 x 16
// transposes, is in this file's history.)  AVX-512, maps up to 64 wide.
// Build from the repository root against a CMake build in /tmp/b:
//   g++ -O3 -march=native -std=c++17 -I. bench/winograd_probe.cc /tmp/b/libcocopie_kernels.a
//       -lpthread -o /tmp/winograd_probe
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
  // Planar, tile-vectorised variant: lanes = tiles of one tile row (T1 <= 16).
  if (T1 > 16) { printf("map too wide for this probe\n"); return 1; }
  const int TPR = T1 * 16;  // tile plane: 16 lanes per tile row
  ConvShape g2 = g; g2.in_w = TPR; ResolveConvShape(Padding::kValid, &g2);
  for (int xi = 0; xi < 36; ++xi) { PatternScratch fresh; gs[xi] = std::move(fresh); geng = PreparePatternConv(set, g2, gplan[xi], &gs[xi], gt); }
  std::vector<float> V(size_t(36) * C * TPR, 0.f), M(size_t(36) * K * TPR, 0.f), out1(ref.size());
  std::vector<float> xp(size_t(C) * H * H), yp(size_t(K) * H * H);
  const __m512i lane = _mm512_setr_epi32(0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15);
  __m512i idx_in[4];
  for (int jj = 0; jj < 4; ++jj) {
    alignas(64) int t[16]; for (int l = 0; l < 16; ++l) t[l] = 4 * (l % 8) + jj; idx_in[jj] = _mm512_load_si512(t);
  }
  __m512i idx_out[4];
  for (int k = 0; k < 4; ++k) { alignas(64) int t[16]; for (int m = 0; m < 16; ++m) t[m] = (m % 2 ? 16 : 0) + 4 * k + m / 4; idx_out[k] = _mm512_load_si512(t); }
  (void)lane;
  auto input_transform = [&](int64_t u0, int64_t u1) {  // unit = (channel, tile row)
    for (int64_t u = u0; u < u1; ++u) {
      const int c = int(u / T1), ty = int(u % T1);
      const float* plane = &xp[size_t(c) * H * H];
      __m512 R[6][6];
      for (int i = 0; i < 6; ++i) {
        const int y = ty * 4 + i - 1;
        __m512 D[6];
        if (y < 0 || y >= H) { for (int j = 0; j < 6; ++j) D[j] = _mm512_setzero_ps(); }
        else {
          const uintptr_t base = reinterpret_cast<uintptr_t>(plane + size_t(y) * H) - sizeof(float);  // x = -1
          __m512 A[5];
          for (int k = 0; k < 5; ++k) {
            const int lo = std::max(0, 1 - 16 * k), hi = std::min(16, H + 1 - 16 * k);  // elements e = 16k + l, x = e - 1 in [0, H)
            const __mmask16 m = hi <= lo ? 0 : static_cast<__mmask16>(((1u << hi) - 1) & ~((1u << lo) - 1));
            A[k] = _mm512_maskz_loadu_ps(m, reinterpret_cast<const void*>(base + 64 * k));
          }
          for (int jj = 0; jj < 4; ++jj)
            D[jj] = _mm512_mask_blend_ps(0xFF00, _mm512_permutex2var_ps(A[0], idx_in[jj], A[1]), _mm512_permutex2var_ps(A[2], idx_in[jj], A[3]));
          D[4] = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(A[4]), _mm512_castps_si512(D[0]), 1));
          const __m512i a41 = _mm512_alignr_epi32(_mm512_castps_si512(A[4]), _mm512_castps_si512(A[4]), 1);
          D[5] = _mm512_castsi512_ps(_mm512_alignr_epi32(a41, _mm512_castps_si512(D[1]), 1));
        }
        BTx(D, 1, R[i], 1);  // along x
      }
      for (int k = 0; k < 6; ++k) {
        __m512 col[6], f[6];
        for (int i = 0; i < 6; ++i) col[i] = R[i][k];
        BTx(col, 1, f, 1);  // along y
        for (int a = 0; a < 6; ++a) _mm512_storeu_ps(&V[(size_t(a * 6 + k) * C + c) * TPR + ty * 16], f[a]);
      }
    }
  };
  auto output_transform = [&](int64_t u0, int64_t u1) {
    const __m512 lo = _mm512_set1_ps(s.act_min), hi = _mm512_set1_ps(s.act_max);
    for (int64_t u = u0; u < u1; ++u) {
      const int o = int(u / T1), ty = int(u % T1);
      const __m512 bias = _mm512_set1_ps(b[o]);
      __m512 e[4][6];
      for (int bb = 0; bb < 6; ++bb) {
        __m512 col[6], r4[4];
        for (int a = 0; a < 6; ++a) col[a] = _mm512_loadu_ps(&M[(size_t(a * 6 + bb) * K + o) * TPR + ty * 16]);
        ATx(col, 1, r4, 1);  // along y
        for (int r = 0; r < 4; ++r) e[r][bb] = r4[r];
      }
      for (int r = 0; r < 4; ++r) {
        const int y = ty * 4 + r; if (y >= H) break;
        __m512 ov[4];
        ATx(e[r], 1, ov, 1);  // along x: ov[s][l] = output x = 4l + s
        float* row = &yp[(size_t(o) * H + y) * H];
        for (int k = 0; k < 4; ++k) {
          const int left = H - 16 * k; if (left <= 0) break;
          const __m512 t01 = _mm512_permutex2var_ps(ov[0], idx_out[k], ov[1]);
          const __m512 t23 = _mm512_permutex2var_ps(ov[2], idx_out[k], ov[3]);
          __m512 w = _mm512_add_ps(_mm512_mask_blend_ps(0xCCCC, t01, t23), bias);
          w = _mm512_min_ps(hi, _mm512_max_ps(lo, w));
          _mm512_mask_storeu_ps(row + 16 * k, left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1), w);
        }
      }
    }
  };
  const int64_t units_in = int64_t(C) * T1, units_out = int64_t(K) * T1;
  double t_in = 0, t_g = 0, t_out = 0, t_e = 0;
  auto wino = [&](bool timeit) {
    auto a0 = std::chrono::steady_clock::now();
    NhwcToPlanar(set, H, H, C, x.data(), xp.data(), &pool);
    auto a = std::chrono::steady_clock::now();
    pool.ParallelFor(units_in, 1, input_transform);
    auto b2 = std::chrono::steady_clock::now();
    for (int xi = 0; xi < 36; ++xi) {
      PatternIo io; io.planar_input = &V[size_t(xi) * C * TPR]; io.planar_output = &M[size_t(xi) * K * TPR];
      RunPatternConv(set, g2, gplan[xi], &gs[xi], nullptr, nullptr, &pool, gt, io);
    }
    auto c = std::chrono::steady_clock::now();
    pool.ParallelFor(units_out, 1, output_transform);
    auto d0 = std::chrono::steady_clock::now();
    PlanarToNhwc(set, H, H, K, yp.data(), out1.data(), &pool);
    auto d = std::chrono::steady_clock::now();
    auto ms = [](auto p, auto q) { return std::chrono::duration<double, std::milli>(q - p).count(); };
    if (timeit) { t_e += ms(a0, a) + ms(d0, d); t_in += ms(a, b2); t_g += ms(b2, c); t_out += ms(c, d0); }
  };
  wino(false);
  RunPatternConv(set, s, plan, &ps, x.data(), out0.data(), &pool, pt);
  auto rel = [&](const std::vector<float>& o) { double n = 0, dd = 0; for (size_t i = 0; i < o.size(); ++i) { n += (o[i] - ref[i]) * double(o[i] - ref[i]); dd += double(ref[i]) * ref[i]; } return std::sqrt(n / dd); };
  printf("%dx%dx%d->%d t%d engine %s gemm %s; rel err pattern %.2e winograd %.2e\n", H, H, C, K, threads, eng.c_str(), geng.c_str(), rel(out0), rel(out1));
  size_t code = 0; for (auto& q : gs) code += q.jit ? q.jit->code_bytes() : 0;
  printf("products %.1f M (kept %.0f%%), pattern executed %.1f M, gemm code %.1f MB\n", 36.0 * TPR * plan.kept_kernels / 1e6 * 1.0, 100.0 * plan.kept_kernels / (double(K) * C), double(plan.kept_weights) * H * H / 1e6, code / 1e6);
  std::vector<double> ta, tb;
  for (int r = 0; r < 400; ++r) {
    auto a = std::chrono::steady_clock::now();
    if (r % 2) RunPatternConv(set, s, plan, &ps, x.data(), out0.data(), &pool, pt); else wino(true);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count();
    (r % 2 ? ta : tb).push_back(ms);
  }
  std::sort(ta.begin(), ta.end()); std::sort(tb.begin(), tb.end());
  printf("pattern %.3f ms  winograd %.3f ms (edges %.3f in %.3f gemm %.3f out %.3f)  ratio %.2fx\n", ta[ta.size()/2], tb[tb.size()/2], t_e / 200, t_in / 200, t_g / 200, t_out / 200, ta[ta.size()/2] / tb[tb.size()/2]);
}
