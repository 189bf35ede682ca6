// Pruned vs dense convolutions on one OpenCL device, timed with profiling
// events (device time of pack + conv, median of the runs).  C++ only, so it
// runs on a machine that has a GPU but no Python stack:
//   cmake -S . -B build -DCOCOPIE_BUILD_TESTS=ON -DCOCOPIE_BUILD_PYTHON=OFF
//   cmake --build build --target gpu_layer_bench && build/gpu_layer_bench [runs]
// Layers: VGG-16 CIFAR's 3x3 convs and the 56x56x128 layer of the CPU peer
// table; pruned = 8 patterns of 4 taps + 3.6x connectivity (as the peers).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cc/gpu/gpu_ops.h"
#include "cc/kernels/pattern_conv.h"

using namespace cocopie;

namespace {

std::vector<float> PrunedFilter(int oc, int ic, bool prune, std::mt19937* rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> w(size_t(oc) * 9 * ic);
  for (float& x : w) x = u(*rng);
  if (!prune) return w;
  std::vector<uint32_t> masks;
  while (masks.size() < 8) {
    uint32_t m = 0;
    while (__builtin_popcount(m) < 4) m |= 1u << ((*rng)() % 9);
    if (std::find(masks.begin(), masks.end(), m) == masks.end()) masks.push_back(m);
  }
  for (int o = 0; o < oc; ++o)
    for (int i = 0; i < ic; ++i) {
      const bool removed = std::uniform_real_distribution<double>(0, 1)(*rng) > 1 / 3.6;
      const uint32_t m = masks[(*rng)() % 8];
      for (int t = 0; t < 9; ++t)
        if (removed || !(m >> t & 1)) w[(size_t(o) * 9 + t) * ic + i] = 0.f;
    }
  return w;
}

double TimeMs(gpu::Runtime& rt, gpu::Op* op, const ConvShape& s, int runs) {
  std::string why;
  gpu::Buffer in, out;
  std::vector<float> x(size_t(s.in_h) * s.in_w * s.in_c, 0.5f);
  if (!rt.Alloc(x.size() * 4, x.data(), &in, &why) ||
      !rt.Alloc(size_t(s.out_h) * s.out_w * s.out_c * 4, nullptr, &out, &why)) {
    std::printf("alloc: %s\n", why.c_str());
    std::exit(1);
  }
  std::vector<double> t;
  for (int r = 0; r < runs + 3; ++r) {
    double ms = 0;
    if (!op->Enqueue(rt, in, nullptr, out, &ms, &why)) {
      std::printf("enqueue: %s\n", why.c_str());
      std::exit(1);
    }
    if (r >= 3) t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int runs = argc > 1 ? std::max(3, std::atoi(argv[1])) : 21;
  std::string why;
  auto rt = gpu::Runtime::Create(-1, /*profiling=*/true, &why);
  if (rt == nullptr) {
    std::printf("no OpenCL device: %s\n", why.c_str());
    return 1;
  }
  std::printf("device: %s\n%d runs, median device ms (pack + conv)\n\n", rt->info().ToString().c_str(), runs);
  std::printf("%-22s %10s %10s %9s %12s\n", "layer", "dense ms", "pruned ms", "speed-up", "pruned GMAC/s");
  struct L { int hw, ic, oc; };
  std::mt19937 rng(0);
  double dense_sum = 0, pruned_sum = 0;
  for (const L& l : {L{32, 64, 64}, L{16, 64, 128}, L{16, 128, 128}, L{8, 128, 256}, L{8, 256, 256},
                     L{4, 256, 512}, L{4, 512, 512}, L{2, 512, 512}, L{56, 128, 128}}) {
    ConvShape s;
    s.in_h = s.in_w = l.hw; s.in_c = l.ic; s.out_c = l.oc; s.k_h = s.k_w = 3; s.act_min = 0.f;
    if (!ResolveConvShape(Padding::kSame, &s).empty()) return 1;
    const auto wd = PrunedFilter(l.oc, l.ic, false, &rng), wp = PrunedFilter(l.oc, l.ic, true, &rng);
    PatternPlan plan;
    if (!BuildPatternPlan(wp.data(), l.oc, 3, 3, l.ic, nullptr, 1, &plan).empty()) return 1;
    auto dense = gpu::MakeConv(*rt, s, nullptr, wd.data(), nullptr, gpu::OpOptions(), &why);
    auto pruned = gpu::MakeConv(*rt, s, &plan, wp.data(), nullptr, gpu::OpOptions(), &why);
    if (dense == nullptr || pruned == nullptr) {
      std::printf("build: %s\n", why.c_str());
      return 1;
    }
    const double td = TimeMs(*rt, dense.get(), s, runs), tp = TimeMs(*rt, pruned.get(), s, runs);
    if (l.hw != 56) dense_sum += td, pruned_sum += tp;
    const double macs = double(s.out_h) * s.out_w * plan.kept_weights;
    char name[32];
    std::snprintf(name, sizeof name, "%dx%dx%d->%d", l.hw, l.hw, l.ic, l.oc);
    std::printf("%-22s %10.4f %10.4f %8.2fx %12.1f\n", name, td, tp, td / tp, macs / tp * 1e-6);
  }
  std::printf("\nVGG-16 CIFAR 3x3 convs 2-13 (one of each shape above but 56x56): dense %.3f ms, "
              "pruned %.3f ms, %.2fx\n", dense_sum, pruned_sum, dense_sum / pruned_sum);
  return 0;
}
