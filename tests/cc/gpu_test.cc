// The OpenCL backend against the reference kernels, on whatever OpenCL
// device the machine has (PoCL's CPU device in CI), plus its failure paths:
// a program that does not build, an allocation the device cannot make, a
// corrupt program-cache entry, damaged plans.  Without any OpenCL it checks
// that the error names the missing library and exits 0 saying so, unless
// COCOPIE_REQUIRE_OPENCL is set.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "cc/gpu/gpu_ops.h"
#include "cc/gpu/runtime.h"
#include "cc/kernels/pattern_conv.h"
#include "cc/kernels/reference.h"
#include "tests/cc/check.h"

namespace {

using namespace cocopie;

gpu::Runtime* g_rt = nullptr;
std::string g_cache;  // a fresh program-cache directory

gpu::OpOptions Opts() {
  gpu::OpOptions o;
  o.cache_dir = g_cache;
  return o;
}

std::vector<float> Random(size_t n, std::mt19937* rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = u(*rng);
  return v;
}

// 8 masks of 4 taps (3x3) or random masks of about half the taps, and 1 in
// `conn` kernels removed (connectivity pruning).
std::vector<float> PatternFilter(int out_c, int kh, int kw, int in_c, int conn,
                                 std::mt19937* rng) {
  std::vector<float> w = Random(size_t(out_c) * kh * kw * in_c, rng);
  std::vector<uint64_t> masks;
  for (int m = 0; m < 8; ++m) {
    uint64_t mask = 0;
    while (__builtin_popcountll(mask) < std::max(1, kh * kw * 4 / 9))
      mask |= 1ull << ((*rng)() % (kh * kw));
    masks.push_back(mask);
  }
  for (int o = 0; o < out_c; ++o)
    for (int i = 0; i < in_c; ++i) {
      const bool removed = conn > 1 && (*rng)() % conn == 0;
      const uint64_t mask = masks[(*rng)() % masks.size()];
      for (int t = 0; t < kh * kw; ++t)
        if (removed || !(mask >> t & 1)) w[(size_t(o) * kh * kw + t) * in_c + i] = 0.f;
    }
  return w;
}

double MaxRelError(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i]) != std::isnan(got[i])) return 1e30;
    if (std::isnan(want[i])) continue;
    if (std::isinf(want[i]) || std::isinf(got[i])) {
      if (want[i] != got[i]) return 1e30;
      continue;
    }
    num = std::max(num, std::fabs(double(got[i]) - want[i]));
    den = std::max(den, std::fabs(double(want[i])));
  }
  return num / den;
}

// Runs `op` on `in` and returns its output of `n` floats.
std::vector<float> Run(gpu::Op* op, const std::vector<float>& in, size_t n) {
  gpu::Buffer bi, bo;
  std::string why;
  std::vector<float> out(n, -7.f);
  CHECK(g_rt->Alloc(in.size() * 4, in.data(), &bi, &why));
  CHECK(g_rt->Alloc(n * 4, nullptr, &bo, &why));
  CHECK(op->Enqueue(*g_rt, bi, nullptr, bo, nullptr, &why));
  CHECK(g_rt->Download(bo, out.data(), n * 4, &why));
  if (!why.empty()) std::printf("  error: %s\n", why.c_str());
  return out;
}

struct ConvCase {
  int batch, h, w, in_c, out_c, kh, kw, sh, sw, dh, dw;
  Padding pad;
  float lo, hi;
};

void CheckConv(const ConvCase& c, bool pruned, bool non_finite, std::mt19937* rng) {
  ConvShape s;
  s.batch = c.batch; s.in_h = c.h; s.in_w = c.w; s.in_c = c.in_c; s.out_c = c.out_c;
  s.k_h = c.kh; s.k_w = c.kw; s.stride_h = c.sh; s.stride_w = c.sw; s.dil_h = c.dh; s.dil_w = c.dw;
  s.act_min = c.lo; s.act_max = c.hi;
  if (!ResolveConvShape(c.pad, &s).empty()) return;
  const std::vector<float> w = pruned ? PatternFilter(c.out_c, c.kh, c.kw, c.in_c, 2, rng)
                                      : Random(size_t(c.out_c) * c.kh * c.kw * c.in_c, rng);
  const std::vector<float> b = Random(c.out_c, rng);
  std::vector<float> in = Random(size_t(c.batch) * c.h * c.w * c.in_c, rng);
  if (non_finite) {
    in[in.size() / 3] = INFINITY;
    in[in.size() / 2] = NAN;
  }
  PatternPlan plan;
  const bool use_plan = pruned && BuildPatternPlan(w.data(), c.out_c, c.kh, c.kw, c.in_c, b.data(),
                                                   1, &plan).empty();
  std::string why;
  auto op = gpu::MakeConv(*g_rt, s, use_plan ? &plan : nullptr, w.data(), b.data(), Opts(), &why);
  CHECK(op != nullptr);
  if (op == nullptr) {
    std::printf("  MakeConv: %s\n", why.c_str());
    return;
  }
  const size_t n = size_t(s.batch) * s.out_h * s.out_w * s.out_c;
  std::vector<float> want(n);
  Conv2DReference(s, in.data(), w.data(), b.data(), want.data());
  const double err = MaxRelError(Run(op.get(), in, n), want);
  if (!(err <= 1e-5))
    std::printf("  conv %dx%dx%dx%d -> %d k%dx%d s%d,%d d%d,%d %s pruned=%d nonfinite=%d: "
                "rel error %g\n", c.batch, c.h, c.w, c.in_c, c.out_c, c.kh, c.kw, c.sh, c.sw,
                c.dh, c.dw, c.pad == Padding::kSame ? "SAME" : "VALID", use_plan, non_finite, err);
  CHECK(err <= 1e-5);
}

TEST_CASE(conv_sweep_matches_reference) {
  std::mt19937 rng(1);
  const float inf = INFINITY;
  const ConvCase cases[] = {
      {1, 8, 8, 4, 8, 3, 3, 1, 1, 1, 1, Padding::kSame, -inf, inf},
      {2, 9, 7, 5, 6, 3, 3, 1, 1, 1, 1, Padding::kValid, 0.f, inf},
      {1, 11, 13, 8, 16, 3, 3, 2, 2, 1, 1, Padding::kSame, 0.f, 6.f},
      {1, 10, 10, 3, 5, 3, 3, 1, 2, 2, 1, Padding::kSame, -inf, inf},
      {1, 12, 9, 6, 7, 3, 3, 1, 1, 2, 2, Padding::kValid, -1.f, 1.f},
      {1, 4, 4, 16, 32, 3, 3, 1, 1, 1, 1, Padding::kSame, 0.f, inf},
      {1, 2, 2, 8, 8, 3, 3, 1, 1, 1, 1, Padding::kSame, -inf, inf},
      {1, 1, 1, 8, 4, 1, 1, 1, 1, 1, 1, Padding::kValid, -inf, inf},
      {3, 7, 5, 6, 10, 1, 1, 1, 1, 1, 1, Padding::kSame, 0.f, inf},
      {1, 9, 9, 4, 6, 5, 5, 2, 1, 1, 1, Padding::kSame, -inf, inf},
      {1, 15, 17, 3, 8, 7, 7, 2, 2, 1, 1, Padding::kSame, 0.f, inf},
      {1, 6, 6, 2, 3, 1, 3, 1, 1, 1, 1, Padding::kSame, -inf, inf},
  };
  for (const ConvCase& c : cases)
    for (int pruned = 0; pruned < 2; ++pruned) CheckConv(c, pruned, false, &rng);
  // Inf/NaN in the image: the pruned conv computes it as stock TFLite does.
  CheckConv(cases[0], true, true, &rng);
  CheckConv(cases[2], true, true, &rng);
}

TEST_CASE(depthwise_and_fully_connected_match_reference) {
  std::mt19937 rng(2);
  struct Dw { int batch, h, w, c, m, k, stride, dil; Padding pad; };
  for (const Dw& d : {Dw{1, 9, 9, 8, 1, 3, 1, 1, Padding::kSame}, Dw{2, 8, 11, 3, 2, 3, 2, 1, Padding::kValid},
                      Dw{1, 10, 10, 5, 1, 3, 1, 2, Padding::kSame}, Dw{1, 7, 7, 40, 1, 5, 2, 1, Padding::kSame}}) {
    ConvShape s;
    s.batch = d.batch; s.in_h = d.h; s.in_w = d.w; s.in_c = d.c; s.depth_multiplier = d.m;
    s.out_c = d.c * d.m; s.k_h = s.k_w = d.k; s.stride_h = s.stride_w = d.stride;
    s.dil_h = s.dil_w = d.dil; s.act_min = 0.f;
    CHECK(ResolveConvShape(d.pad, &s).empty());
    const auto w = Random(size_t(d.k) * d.k * s.out_c, &rng), b = Random(s.out_c, &rng);
    const auto in = Random(size_t(d.batch) * d.h * d.w * d.c, &rng);
    std::string why;
    auto op = gpu::MakeDepthwise(*g_rt, s, w.data(), b.data(), Opts(), &why);
    CHECK(op != nullptr);
    if (op == nullptr) continue;
    const size_t n = size_t(s.batch) * s.out_h * s.out_w * s.out_c;
    std::vector<float> want(n);
    DepthwiseConv2DReference(s, in.data(), w.data(), b.data(), want.data());
    CHECK(MaxRelError(Run(op.get(), in, n), want) <= 1e-5);
  }
  for (int batch : {1, 3}) {
    const int in_n = 37, out_n = 19;
    const auto x = Random(size_t(batch) * in_n, &rng), w = Random(size_t(out_n) * in_n, &rng),
               b = Random(out_n, &rng);
    std::string why;
    auto op = gpu::MakeFullyConnected(*g_rt, batch, in_n, out_n, w.data(), b.data(), -0.5f, 0.5f,
                                      Opts(), &why);
    CHECK(op != nullptr);
    if (op == nullptr) continue;
    std::vector<float> want(size_t(batch) * out_n);
    FullyConnectedReference(batch, in_n, out_n, x.data(), w.data(), b.data(), -0.5f, 0.5f,
                            want.data());
    CHECK(MaxRelError(Run(op.get(), x, want.size()), want) <= 1e-5);
  }
}

TEST_CASE(float_to_half_rounds_to_nearest_even) {
  CHECK(gpu::FloatToHalf(1.f) == 0x3c00);
  CHECK(gpu::FloatToHalf(-2.f) == 0xc000);
  CHECK(gpu::FloatToHalf(65504.f) == 0x7bff);
  CHECK(gpu::FloatToHalf(65520.f) == 0x7c00);     // halfway to the next: even is Inf
  CHECK(gpu::FloatToHalf(std::ldexp(1.f, -24)) == 0x0001);  // smallest subnormal
  CHECK(gpu::FloatToHalf(std::ldexp(1.f, -26)) == 0x0000);  // below half of it
  CHECK(gpu::FloatToHalf(1.f / 3.f) == 0x3555);
  CHECK(gpu::FloatToHalf(1.f + std::ldexp(1.f, -11)) == 0x3c00);  // tie: to even
  CHECK(gpu::FloatToHalf(1.f + 3 * std::ldexp(1.f, -11)) == 0x3c02);
  CHECK((gpu::FloatToHalf(NAN) & 0x7c00) == 0x7c00 && (gpu::FloatToHalf(NAN) & 0x3ff) != 0);
}

// precision=fp16 stays within its documented bound: per output
// |y - y_ref| <= 2^-11 * sum |w x| (weights rounded to half) plus float32
// accumulation error.
TEST_CASE(fp16_weights_stay_within_the_bound) {
  std::mt19937 rng(4);
  ConvShape s;
  s.in_h = 10; s.in_w = 9; s.in_c = 16; s.out_c = 12; s.k_h = s.k_w = 3;
  CHECK(ResolveConvShape(Padding::kSame, &s).empty());
  for (int pruned = 0; pruned < 2; ++pruned) {
    const auto w = pruned ? PatternFilter(s.out_c, 3, 3, s.in_c, 2, &rng)
                          : Random(size_t(s.out_c) * 9 * s.in_c, &rng);
    const auto in = Random(size_t(s.in_h) * s.in_w * s.in_c, &rng);
    PatternPlan plan;
    CHECK(BuildPatternPlan(w.data(), s.out_c, 3, 3, s.in_c, nullptr, 1, &plan).empty());
    gpu::OpOptions o = Opts();
    o.fp16 = true;
    std::string why;
    auto op = gpu::MakeConv(*g_rt, s, pruned ? &plan : nullptr, w.data(), nullptr, o, &why);
    CHECK(op != nullptr);
    if (op == nullptr) continue;
    const size_t n = size_t(s.out_h) * s.out_w * s.out_c;
    std::vector<float> want(n), bound(n), aw(w.size()), ax(in.size());
    for (size_t i = 0; i < w.size(); ++i) aw[i] = std::fabs(w[i]);
    for (size_t i = 0; i < in.size(); ++i) ax[i] = std::fabs(in[i]);
    Conv2DReference(s, in.data(), w.data(), nullptr, want.data());
    Conv2DReference(s, ax.data(), aw.data(), nullptr, bound.data());
    const auto got = Run(op.get(), in, n);
    int over = 0;
    double worst = 0;
    for (size_t i = 0; i < n; ++i) {
      const double err = std::fabs(double(got[i]) - want[i]);
      const double b = std::ldexp(1.0, -11) * bound[i] + 1e-6 * (1 + bound[i]);
      over += err > b;
      worst = std::max(worst, err / b);
    }
    CHECK(over == 0);
    std::printf("  fp16 %s conv: worst error %.2f of the bound\n", pruned ? "pruned" : "dense", worst);
  }
  // Weights the half range cannot hold are refused, not turned into Inf.
  std::vector<float> big(size_t(s.out_c) * 9 * s.in_c, 1e5f);
  gpu::OpOptions o = Opts();
  o.fp16 = true;
  std::string why;
  CHECK(gpu::MakeConv(*g_rt, s, nullptr, big.data(), nullptr, o, &why) == nullptr);
  CHECK(why.find("half range") != std::string::npos);
}

TEST_CASE(build_failure_gives_the_compiler_log) {
  std::vector<gpu::Kernel> k;
  gpu::BuildInfo info;
  std::string why;
  CHECK(!g_rt->Build("__kernel void broken(__global float* x) { x[0] = undeclared_name; }", "",
                     {"broken"}, &k, &info, &why));
  CHECK(why.find("clBuildProgram") != std::string::npos);
  CHECK(why.find("undeclared_name") != std::string::npos);
  // A kernel name the program lacks.
  CHECK(!g_rt->Build("__kernel void ok(__global float* x) { x[0] = 1.0f; }", "", {"missing"}, &k,
                     &info, &why));
  CHECK(why.find("missing") != std::string::npos);
}

TEST_CASE(allocation_failure_is_an_error) {
  gpu::Buffer b;
  std::string why;
  CHECK(!g_rt->Alloc(size_t(1) << 52, nullptr, &b, &why));
  CHECK(why.find("bytes") != std::string::npos);
  std::printf("  (allocating 2^52 bytes: %s)\n", why.c_str());
}

TEST_CASE(program_cache_stores_hits_and_rebuilds_corrupt_entries) {
  const std::string dir = g_cache + "/own";
  const std::string src = "__kernel void k(__global float* x) { x[get_global_id(0)] = 3.0f; }\n";
  std::vector<gpu::Kernel> k;
  gpu::BuildInfo info;
  std::string why;
  CHECK(g_rt->Build(src, dir, {"k"}, &k, &info, &why));
  CHECK(info.cache == "stored" || info.cache.rfind("not stored", 0) == 0);
  if (info.cache != "stored") return;  // the driver gives no binaries
  CHECK(g_rt->Build(src, dir, {"k"}, &k, &info, &why));
  CHECK(info.cache == "hit");
  // Damage every entry: a flipped byte in the binary, then a truncation.
  for (int damage = 0; damage < 2; ++damage) {
    const std::string list = "ls " + dir + "/*.clbin > " + dir + "/list.txt";
    CHECK(std::system(list.c_str()) == 0);
    std::ifstream names(dir + "/list.txt");
    std::string path;
    while (std::getline(names, path)) {
      std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
      std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      if (damage == 0) data[data.size() - 1] ^= 0x5a;
      else data.resize(data.size() / 2);
      f.close();
      std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
    }
    CHECK(g_rt->Build(src, dir, {"k"}, &k, &info, &why));
    CHECK(info.cache.rfind("rebuilt", 0) == 0);
    std::printf("  damaged entry %d: %s\n", damage, info.cache.c_str());
    CHECK(g_rt->Build(src, dir, {"k"}, &k, &info, &why));
    CHECK(info.cache == "hit");
  }
  // And the rebuilt program computes.
  gpu::Buffer b;
  float out[4] = {0, 0, 0, 0};
  CHECK(g_rt->Alloc(sizeof out, out, &b, &why));
  const size_t global[1] = {4};
  CHECK(g_rt->EnqueueKernel(k[0], {gpu::Arg::Of(b)}, 1, global, nullptr, nullptr, &why));
  CHECK(g_rt->Download(b, out, sizeof out, &why));
  CHECK(out[0] == 3.f && out[3] == 3.f);
}

TEST_CASE(damaged_plans_are_refused) {
  std::mt19937 rng(3);
  const int oc = 8, ic = 6;
  const auto w = PatternFilter(oc, 3, 3, ic, 2, &rng);
  PatternPlan good;
  CHECK(BuildPatternPlan(w.data(), oc, 3, 3, ic, nullptr, 1, &good).empty());
  ConvShape s;
  s.in_h = s.in_w = 8; s.in_c = ic; s.out_c = oc; s.k_h = s.k_w = 3;
  CHECK(ResolveConvShape(Padding::kSame, &s).empty());
  int refused = 0, trials = 0;
  for (int t = 0; t < 200; ++t) {
    PatternPlan p = good;
    switch (t % 6) {
      case 0: p.index[rng() % p.index.size()] = ic + int(rng() % 1000); break;
      case 1: p.stride[rng() % p.stride.size()] += 1 + int(rng() % 50); break;
      case 2: p.offset[1 + rng() % oc] -= 1 + int(rng() % 5); break;
      case 3: p.reorder[rng() % oc] = int(rng() % (3 * oc)) - oc; break;
      case 4: p.fkw_weights.resize(p.fkw_weights.size() / 2); break;
      case 5: p.pattern_taps[rng() % p.pattern_taps.size()].push_back(9 + int(rng() % 20)); break;
    }
    ++trials;
    std::string why;
    auto op = gpu::MakeConv(*g_rt, s, &p, w.data(), nullptr, gpu::OpOptions(), &why);
    if (op == nullptr) {
      ++refused;
      CHECK(why.find("invalid plan") != std::string::npos);
    }
  }
  // Every kind of damage above breaks an invariant the generator checks
  // (a reorder entry may by chance stay a permutation: then it must run).
  CHECK(refused >= trials * 9 / 10);
  std::printf("  %d of %d damaged plans refused\n", refused, trials);
}

}  // namespace

int main() {
  std::string why;
  auto rt = gpu::Runtime::Create(-1, false, &why);
  if (rt == nullptr) {
    std::printf("gpu_test: no OpenCL device: %s\n", why.c_str());
    CHECK(!why.empty());
    if (std::getenv("COCOPIE_REQUIRE_OPENCL") != nullptr) {
      std::printf("COCOPIE_REQUIRE_OPENCL is set: FAILED\n");
      return 1;
    }
    std::printf("gpu tests did not run\n");
    return 0;
  }
  g_rt = rt.get();
  char tmpl[] = "/tmp/cocopie_gpu_test_XXXXXX";
  g_cache = ::mkdtemp(tmpl);
  std::printf("gpu_test on %s\n", rt->info().ToString().c_str());
  const int rc = cocopie_test::RunAll();
  const std::string rm = "rm -rf " + g_cache;
  if (std::system(rm.c_str()) != 0) std::printf("could not remove %s\n", g_cache.c_str());
  return rc;
}
