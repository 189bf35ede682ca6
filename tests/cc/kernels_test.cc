// Every compiled kernel set against the float64 reference kernels, over a
// sweep of shapes, strides, dilations, padding, activations and threads.
#include <array>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>
#include <string>
#include <cstdio>
#if defined(__linux__)
#include <sched.h>
#endif

#include "cc/kernels/dispatch.h"
#include "cc/kernels/jit_pattern.h"
#include "cc/kernels/pool.h"
#include "cc/kernels/reference.h"
#include "cc/kernels/thread_pool.h"
#include "tests/cc/check.h"

using namespace cocopie;

namespace {

std::vector<float> Random(size_t n, std::mt19937* rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = u(*rng);
  return v;
}

double RelError(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

std::vector<const KernelSet*> UsableSets() {
  std::vector<const KernelSet*> out;
  for (const KernelSet* set : CompiledKernelSets()) {
    std::string err;
    if (SelectKernelSet(set->isa, &err) == set) out.push_back(set);
  }
  return out;
}

// Every usable set's transposes: the plain one and the streaming one.
std::vector<decltype(KernelSet::transpose)> UsableTransposes() {
  std::vector<decltype(KernelSet::transpose)> out;
  for (const KernelSet* set : UsableSets()) {
    out.push_back(set->transpose);
    out.push_back(set->transpose_stream);
  }
  return out;
}

struct Geometry {
  int batch, h, w, in_c, out_c, k, stride, dil;
  Padding pad;
  float lo, hi;
};

const Geometry kGeometries[] = {
    {1, 7, 13, 3, 5, 3, 1, 1, Padding::kSame, -INFINITY, INFINITY},
    {2, 9, 9, 8, 16, 3, 2, 1, Padding::kValid, 0.f, INFINITY},
    {1, 8, 11, 17, 70, 1, 1, 1, Padding::kSame, 0.f, 6.f},
    {1, 12, 10, 6, 9, 5, 2, 1, Padding::kSame, -1.f, 1.f},
    {1, 13, 7, 4, 130, 3, 1, 2, Padding::kSame, -INFINITY, INFINITY},
    {2, 10, 10, 5, 7, 3, 1, 2, Padding::kValid, 0.f, INFINITY},
    {1, 1, 1, 33, 65, 1, 1, 1, Padding::kValid, -INFINITY, INFINITY},
};

ConvShape MakeShape(const Geometry& g, bool depthwise) {
  ConvShape s;
  s.batch = g.batch; s.in_h = g.h; s.in_w = g.w; s.in_c = g.in_c;
  s.out_c = depthwise ? g.in_c * 2 : g.out_c;
  s.depth_multiplier = depthwise ? 2 : 1;
  s.k_h = s.k_w = g.k;
  s.stride_h = s.stride_w = g.stride;
  s.dil_h = s.dil_w = g.dil;
  s.act_min = g.lo; s.act_max = g.hi;
  ResolveConvShape(g.pad, &s);
  return s;
}

}  // namespace

// Every index is visited exactly once per call, for back-to-back calls (the
// workers spinning between them or asleep), and for two callers sharing one
// pool (serialised).
TEST_CASE(ThreadPoolVisitsEveryIndexOnce) {
  for (int spin_us : {0, 100})
    for (int threads : {1, 2, 3, 5}) {
      ThreadPool pool(threads, spin_us);
      CHECK(pool.num_threads() == threads && pool.spin_us() == spin_us);
      std::vector<std::atomic<int>> hits(1000);
      for (int call = 0; call < 300; ++call) {
        const int64_t n = 1 + (call * 37) % 1000, grain = 1 + call % 7;
        for (auto& h : hits) h.store(0);
        ParallelFor(&pool, n, grain, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        bool once = true;
        for (int64_t i = 0; i < 1000; ++i) once = once && hits[i].load() == (i < n ? 1 : 0);
        CHECK(once);
        if (call == 150) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // workers sleep
      }
      std::atomic<int64_t> sum{0};
      auto caller = [&] {
        for (int call = 0; call < 100; ++call)
          pool.ParallelFor(64, 1, [&](int64_t b, int64_t e) { sum.fetch_add(e - b); });
      };
      std::thread other(caller);
      caller();
      other.join();
      CHECK(sum.load() == 2 * 100 * 64);
    }
  CHECK(ThreadPool(2, -5).spin_us() == 0 && ThreadPool(2, 1 << 30).spin_us() == ThreadPool::kMaxSpinUs);
}

// Chunks: at most a quarter of a share, halving down to `grain` as the share
// runs out, so a thread done early finds small pieces left to take.  At one
// thread the caller alone walks its share, so the sizes are exact.
TEST_CASE(ThreadPoolChunksHalveAtTheEndOfAShare) {
  ThreadPool pool(1, 0);
  std::vector<int64_t> sizes;
  int64_t next = 0;
  bool in_order = true;
  pool.ParallelFor(100, 3, [&](int64_t b, int64_t e) {
    in_order = in_order && b == next;
    next = e;
    sizes.push_back(e - b);
  });
  CHECK(in_order && next == 100);
  CHECK(sizes == (std::vector<int64_t>{25, 25, 25, 13, 6, 3, 3}));
  sizes.clear();
  pool.ParallelFor(10, 8, [&](int64_t b, int64_t e) { sizes.push_back(e - b); });
  CHECK(sizes == (std::vector<int64_t>{8, 2}));  // never below grain but at the end
}

// Placement: a core of its own for each worker where one is free, never the
// caller's CPU, kept while it stays free (two cores of two hyperthreads each:
// CPUs 0 and 1 on core 0, 2 and 3 on core 1).
TEST_CASE(WorkerCpusAvoidTheCallersCore) {
  const std::vector<int> cpus = {0, 1, 2, 3};
  const std::vector<long> cores = {0, 0, 1, 1};
  CHECK(ChooseWorkerCpus(cpus, cores, {-1}, 0) == std::vector<int>{2});
  CHECK(ChooseWorkerCpus(cpus, cores, {-1, -1}, 0) == (std::vector<int>{2, 1}));
  CHECK(ChooseWorkerCpus(cpus, cores, {-1, -1, -1}, 0) == (std::vector<int>{2, 1, 3}));
  CHECK(ChooseWorkerCpus(cpus, cores, {3}, 0) == std::vector<int>{3});  // kept
  CHECK(ChooseWorkerCpus(cpus, cores, {3}, 2) == std::vector<int>{0});  // caller moved to its core
  CHECK(ChooseWorkerCpus(cpus, cores, {1}, 1) == std::vector<int>{2});
  CHECK(ChooseWorkerCpus(cpus, cores, {-1, -1, -1, -1}, 0) == (std::vector<int>{2, 1, 3, -1}));
  // Unknown topology (no cores): any other CPU; the caller outside the set.
  CHECK(ChooseWorkerCpus(cpus, {}, {-1}, 0) == std::vector<int>{1});
  CHECK(ChooseWorkerCpus({4, 5}, {}, {-1}, 7) == std::vector<int>{4});
  CHECK(ChooseWorkerCpus({4, 5}, {}, {9}, -1) == std::vector<int>{4});  // a CPU no longer allowed
}

#if defined(__linux__)
// Workers are pinned to CPUs other than the caller's, and follow it when it
// moves (a worker woken unpinned lands behind the caller: thread_pool.h).
TEST_CASE(ThreadPoolPinsWorkersAwayFromTheCaller) {
  cpu_set_t saved;
  CHECK(sched_getaffinity(0, sizeof saved, &saved) == 0);
  std::vector<int> allowed;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &saved)) allowed.push_back(c);
  const int n = static_cast<int>(allowed.size());
  // The pool pins only where every CPU has the same capacity (read here from
  // sysfs on its own: big.LITTLE phones differ, x86 machines do not).
  std::vector<std::string> capacities;
  for (int c : allowed) {
    std::FILE* f = std::fopen(("/sys/devices/system/cpu/cpu" + std::to_string(c) + "/cpu_capacity").c_str(), "r");
    char buf[32] = "";
    if (f != nullptr) {
      if (std::fgets(buf, sizeof buf, f) == nullptr) buf[0] = '\0';
      std::fclose(f);
    }
    capacities.push_back(buf);
  }
  const bool pins = std::all_of(capacities.begin(), capacities.end(),
                                [&](const std::string& c) { return c == capacities[0]; });
  // Too few CPUs for one each, or pinning off: nothing is pinned.
  CHECK(ThreadPool(n + 1).worker_cpus() == std::vector<int>(static_cast<size_t>(n), -1));
  CHECK(ThreadPool(2, 100, false).worker_cpus() == std::vector<int>{-1});
  if (n < 2 || !pins) {
    CHECK(ThreadPool(2).worker_cpus() == std::vector<int>{-1});
    return;
  }
  const auto pin_caller = [](int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
  };
  // Every chunk a worker runs must run on its pinned CPU.
  const auto worker_runs_on = [](ThreadPool& pool, int cpu) {
    const std::thread::id caller = std::this_thread::get_id();
    std::atomic<int> seen{0}, wrong{0};
    for (int call = 0; call < 50; ++call)
      pool.ParallelFor(2, 1, [&](int64_t, int64_t) {
        if (std::this_thread::get_id() == caller) {
          std::this_thread::sleep_for(std::chrono::microseconds(200));  // let the worker take one
        } else {
          seen.fetch_add(1);
          if (cpu != -2 && sched_getcpu() != cpu) wrong.fetch_add(1);
        }
      });
    return seen.load() > 0 && wrong.load() == 0;
  };
  {
    // The workers may use the CPUs their creator may use (they inherit its
    // affinity); the caller moves after that.
    ThreadPool pool(2);
    pin_caller(allowed[0]);
    const bool ran = worker_runs_on(pool, -2);  // -2: any CPU; places the worker
    const int first = pool.worker_cpus()[0];
    CHECK(ran && first >= 0 && first != allowed[0]);
    CHECK(worker_runs_on(pool, first));
    pin_caller(first);  // the caller moves onto the worker's CPU
    const bool moved = worker_runs_on(pool, -2);
    const int second = pool.worker_cpus()[0];
    CHECK(moved && second >= 0 && second != first);
    CHECK(worker_runs_on(pool, second));
  }
  sched_setaffinity(0, sizeof saved, &saved);
  if (n >= 3) {  // three threads: three different CPUs
    ThreadPool pool(3);
    pool.ParallelFor(3, 1, [](int64_t, int64_t) {});
    std::vector<int> cpus = pool.worker_cpus();
    cpus.push_back(sched_getcpu());
    std::sort(cpus.begin(), cpus.end());
    CHECK(cpus[0] >= 0 && std::unique(cpus.begin(), cpus.end()) == cpus.end());
  }
}
#endif

TEST_CASE(ReferenceConvHandComputed) {
  // 3x3 input, 2x2 all-ones filter, VALID: each output sums a 2x2 window.
  ConvShape s;
  s.in_h = s.in_w = 3; s.in_c = 1; s.out_c = 1; s.k_h = s.k_w = 2;
  CHECK(ResolveConvShape(Padding::kValid, &s).empty());
  CHECK(s.out_h == 2 && s.out_w == 2);
  const float in[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, w[4] = {1, 1, 1, 1}, bias[1] = {0.5f};
  float out[4];
  Conv2DReference(s, in, w, bias, out);
  CHECK(out[0] == 12.5f && out[1] == 16.5f && out[2] == 24.5f && out[3] == 28.5f);
}

TEST_CASE(SamePaddingMatchesTfLite) {
  int out, pad;
  CHECK(ComputeAxis(7, 3, 2, 1, Padding::kSame, &out, &pad) && out == 4 && pad == 1);
  CHECK(ComputeAxis(8, 3, 2, 1, Padding::kSame, &out, &pad) && out == 4 && pad == 0);
  CHECK(ComputeAxis(13, 3, 1, 2, Padding::kValid, &out, &pad) && out == 9 && pad == 0);
  CHECK(!ComputeAxis(2, 3, 1, 1, Padding::kValid, &out, &pad));
}

TEST_CASE(CostModelTakesDamagedShapes) {
  // The delegate asks these before a file's declared shapes are validated
  // (a fuzzed file: a 1x1 conv declaring an output of width 0 divided by 0).
  for (JitIsa isa : {JitIsa::kAvx2, JitIsa::kAvx512, JitIsa::kNeon}) {
    ConvShape s;
    s.k_h = s.k_w = 1;
    s.out_h = 14;
    for (int w : {0, -1, -16, std::numeric_limits<int>::min()}) {
      s.out_w = w;
      CHECK(!JitRunsOnMap(isa, s) && !JitInPlacePays(isa, s));
    }
    s.out_w = 14;
    s.out_h = 0;
    CHECK(!JitRunsOnMap(isa, s) && !JitInPlacePays(isa, s));
    s.out_h = 14;
    s.k_w = 3;
    s.dil_w = -2;  // out_w + (k_w - 1) * dil_w < 0
    CHECK(!JitRunsOnMap(isa, s) && !JitInPlacePays(isa, s));
    s.dil_w = 1;
    CHECK(JitRunsOnMap(isa, s));  // 14x16 positions: enough tiles everywhere
  }
}

TEST_CASE(Conv2DMatchesReference) {
  std::mt19937 rng(1);
  for (const Geometry& g : kGeometries) {
    const ConvShape s = MakeShape(g, false);
    const auto in = Random(size_t(s.batch) * s.in_h * s.in_w * s.in_c, &rng);
    const auto w = Random(size_t(s.out_c) * s.k_h * s.k_w * s.in_c, &rng);
    const auto b = Random(s.out_c, &rng);
    std::vector<float> ref(size_t(s.batch) * s.out_h * s.out_w * s.out_c), out(ref.size());
    Conv2DReference(s, in.data(), w.data(), b.data(), ref.data());
    const PackedConv p = PackConv2D(w.data(), s.out_c, s.k_h, s.k_w, s.in_c, b.data());
    for (const KernelSet* set : UsableSets())
      for (int threads : {1, 2, 3}) {
        ThreadPool pool(threads);
        RunConv2D(set, s, p, w.data(), in.data(), out.data(), &pool);
        CHECK(RelError(out, ref) <= 1e-6);
      }
  }
}

TEST_CASE(DepthwiseMatchesReference) {
  std::mt19937 rng(2);
  for (const Geometry& g : kGeometries) {
    const ConvShape s = MakeShape(g, true);
    const auto in = Random(size_t(s.batch) * s.in_h * s.in_w * s.in_c, &rng);
    const auto w = Random(size_t(s.k_h) * s.k_w * s.out_c, &rng);
    std::vector<float> ref(size_t(s.batch) * s.out_h * s.out_w * s.out_c), out(ref.size());
    DepthwiseConv2DReference(s, in.data(), w.data(), nullptr, ref.data());
    const PackedDepthwise p = PackDepthwise(w.data(), s.out_c, s.k_h, s.k_w, nullptr);
    for (const KernelSet* set : UsableSets())
      for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        RunDepthwise(set, s, p, in.data(), out.data(), &pool);
        CHECK(RelError(out, ref) <= 1e-6);
      }
  }
}

// The planar depthwise kernel against the float64 reference through NHWC:
// random geometries (kernel 1-5, stride 1-4, dilation 1-2, SAME and VALID,
// depth multiplier 1-2, maps from 1x1 to 30x70), filters pattern-pruned (4
// of 9 taps), pattern-pruned with some channels emptied (no tap) or dense,
// 1-3 threads,
// and inputs holding Inf or NaN (which must meet the dropped zero taps as
// stock TFLite's dense products do).  Buffers are exactly sized (ASan).
// An NHWC image (batch 1) as channel planes, by index: independent of the
// kernels' transposes.
std::vector<float> PlanarByIndex(const std::vector<float>& nhwc, int h, int w, int c) {
  std::vector<float> planes(nhwc.size());
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < c; ++k)
        planes[(size_t(k) * h + y) * w + x] = nhwc[(size_t(y) * w + x) * c + k];
  return planes;
}

// NaN and +-Inf exactly where the reference has them, the rest within 1e-5
// relative (plus 1e-5 absolute).
bool MatchesReference(const std::vector<float>& out, const std::vector<float>& ref) {
  if (out.size() != ref.size()) return false;
  for (size_t i = 0; i < out.size(); ++i) {
    const float a = out[i], r = ref[i];
    const bool ok = std::isnan(r)   ? std::isnan(a)
                    : std::isinf(r) ? a == r
                                    : std::fabs(double(a) - r) <= 1e-5 * (1 + std::fabs(r));
    if (!ok) return false;
  }
  return true;
}

// Every usable set's planar depthwise conv at 1-3 threads on the NHWC input
// `in`, against the float64 reference (MatchesReference).  Returns the runs.
int DepthwisePlanarRunsMatch(const ConvShape& s, const PackedDepthwise& p, const std::vector<float>& in,
                             const std::vector<float>& w, const std::vector<float>& bias) {
  const size_t out_n = size_t(s.out_h) * s.out_w * s.out_c;
  std::vector<float> ref(out_n);
  DepthwiseConv2DReference(s, in.data(), w.data(), bias.data(), ref.data());
  const std::vector<float> pin = PlanarByIndex(in, s.in_h, s.in_w, s.in_c),
                           ref_planar = PlanarByIndex(ref, s.out_h, s.out_w, s.out_c);
  int runs = 0;
  for (const KernelSet* set : UsableSets()) {
    CHECK(DepthwisePlanarApplies(set, s, p));
    for (int threads = 1; threads <= 3; ++threads) {
      ThreadPool pool(threads);
      std::vector<float> out(out_n, 12345.f);
      RunDepthwisePlanar(set, s, p, pin.data(), out.data(), &pool);
      CHECK(MatchesReference(out, ref_planar));
      ++runs;
    }
  }
  return runs;
}

TEST_CASE(DepthwisePlanarMatchesReference) {
  std::mt19937 rng(21);
  const auto pick = [&](int lo, int hi) { return lo + int(rng() % unsigned(hi - lo + 1)); };
  int runs = 0, blocks_runs = 0;
  for (int trial = 0; trial < 80; ++trial) {
    ConvShape s;
    // Some maps wider than four vectors and taller than a few 4-row groups
    // (the AVX-512 stride-2 kernel's interior path).
    s.in_h = trial % 5 == 2 ? pick(20, 30) : pick(1, 19);
    s.in_w = trial % 4 == 1 ? pick(38, 70) : pick(1, 37);
    // Some with whole blocks of 16 channels and a partial one (the AVX-512
    // channel-block kernel of strided maps).
    s.in_c = trial % 8 == 7 ? pick(17, 40) : pick(1, 11);
    s.depth_multiplier = trial % 5 == 4 ? 2 : 1;
    s.out_c = s.in_c * s.depth_multiplier;
    s.k_h = s.k_w = trial % 7 == 6 ? 5 : trial % 11 == 10 ? 1 : 3;
    s.k_h = trial % 13 == 12 ? 2 : s.k_h;
    s.stride_h = pick(1, 4); s.stride_w = trial % 3 == 0 ? s.stride_h : pick(1, 2);
    s.dil_h = s.dil_w = trial % 4 == 3 ? 2 : 1;
    s.act_min = trial % 2 ? 0.f : -INFINITY;
    s.act_max = trial % 3 == 1 ? 6.f : INFINITY;
    if (!ResolveConvShape(trial % 6 == 5 ? Padding::kValid : Padding::kSame, &s).empty()) continue;
    const int taps = s.k_h * s.k_w;
    auto w = Random(size_t(taps) * s.out_c, &rng);
    // 0 pattern (about 4 taps; half of a 5x5 kernel's 25 in every other
    // trial, more taps than the AVX-512 flat kernel unrolls), 1 pattern
    // with some channels empty, 2 dense (the AVX-512 set runs the first two
    // on its copy-free kernels).
    const int style = trial % 3;
    const int keep = taps > 9 && trial % 2 ? 12 : 4;
    for (int o = 0; o < s.out_c; ++o) {
      const bool empty = style == 1 && rng() % 3 == 0;
      for (int t = 0; t < taps; ++t)
        if (empty || (style != 2 && taps > 4 && int(rng() % taps) >= keep)) w[size_t(t) * s.out_c + o] = 0.f;
    }
    const auto bias = Random(s.out_c, &rng);
    const PackedDepthwise p = PackDepthwise(w.data(), s.out_c, s.k_h, s.k_w, bias.data());
    const size_t in_n = size_t(s.in_h) * s.in_w * s.in_c;
    for (int nonfinite = 0; nonfinite < 3; ++nonfinite) {
      auto in = Random(in_n, &rng);
      if (nonfinite)
        for (int k = 0; k < 2; ++k)
          in[rng() % in_n] = nonfinite == 1 ? NAN : (k ? -INFINITY : INFINITY);
      runs += DepthwisePlanarRunsMatch(s, p, in, w, bias);
      for (const KernelSet* set : UsableSets()) blocks_runs += DepthwiseBlocksApply(set, s) && s.out_c > 16;
    }
  }
  CHECK(runs > 100);
  // AVX-512 machines: whole and partial blocks of channels ran too.
  for (const KernelSet* set : UsableSets())
    if (set->depthwise_blocks) CHECK(blocks_runs >= 3);
  {  // Which strided maps the channel-block kernel takes.
    ConvShape b;
    b.in_h = b.in_w = 14; b.in_c = b.out_c = 40; b.k_h = b.k_w = 3; b.stride_h = b.stride_w = 2;
    CHECK(ResolveConvShape(Padding::kSame, &b).empty());
    for (const KernelSet* set : UsableSets())
      CHECK(DepthwiseBlocksApply(set, b) == (std::string(set->isa) == "avx512"));
    ConvShape one = b;
    one.stride_w = 1;
    ConvShape big = b;
    big.in_h = big.in_w = 56;
    ConvShape mult = b;
    mult.in_c = 20;
    mult.depth_multiplier = 2;
    for (ConvShape* x : {&one, &big, &mult}) {
      CHECK(ResolveConvShape(Padding::kSame, x).empty());
      for (const KernelSet* set : UsableSets()) CHECK(!DepthwiseBlocksApply(set, *x));
    }
  }
  // Inf/NaN weights are refused (the NHWC kernel keeps stock TFLite's
  // products with the padding).
  ConvShape s;
  s.in_h = s.in_w = 5; s.in_c = s.out_c = 2; s.k_h = s.k_w = 3;
  CHECK(ResolveConvShape(Padding::kSame, &s).empty());
  std::vector<float> w(18, 0.5f);
  w[3] = INFINITY;
  for (const KernelSet* set : UsableSets())
    CHECK(!DepthwisePlanarApplies(set, s, PackDepthwise(w.data(), 2, 3, 3, nullptr)));
  CHECK(!DepthwisePlanarApplies(nullptr, s, PackDepthwise(w.data(), 2, 3, 3, nullptr)));
  // So are geometries whose phase planes would be huge: a dilation far
  // beyond the map, a stride beyond kMaxDepthwisePlanarStride.
  w[3] = 0.5f;
  const PackedDepthwise finite = PackDepthwise(w.data(), 2, 3, 3, nullptr);
  for (const KernelSet* set : UsableSets()) {
    CHECK(DepthwisePlanarApplies(set, s, finite));
    ConvShape wide = s;
    wide.dil_h = wide.dil_w = 1 << 20;
    CHECK(ResolveConvShape(Padding::kSame, &wide).empty());
    CHECK(!DepthwisePlanarApplies(set, wide, finite));
    ConvShape strided = s;
    strided.stride_h = strided.stride_w = kMaxDepthwisePlanarStride + 1;
    CHECK(ResolveConvShape(Padding::kSame, &strided).empty());
    CHECK(!DepthwisePlanarApplies(set, strided, finite));
  }
}

// Depthwise convs on tensors of 1 MB and more ask for the next channel's
// planes while they compute one (DepthwisePrefetchesPlanes): the flat
// stride-1 kernel and the stride-2 kernel, pattern-pruned, a NaN in one case
// (the flat kernel's second pass over that channel), 1-3 threads; equal to
// the reference, and a map too small or too few channels per thread asks for
// nothing.
TEST_CASE(DepthwisePlanarPrefetchesLargeTensors) {
  std::mt19937 rng(52);
  struct Case { int hw, c, stride; bool nan; };
  int prefetched = 0;
  // 192x192x8: 1.2 MB over 8 channels, whole planes per task at 1-2
  // threads, bands at 3 (then nothing is asked for).
  for (const Case k : {Case{112, 24, 1, false}, Case{64, 72, 1, true}, Case{112, 24, 2, false},
                       Case{33, 48, 2, false}, Case{192, 8, 1, false}}) {
    ConvShape s;
    s.in_h = s.in_w = k.hw; s.in_c = s.out_c = k.c; s.k_h = s.k_w = 3;
    s.stride_h = s.stride_w = k.stride;
    s.act_min = 0.f; s.act_max = 6.f;
    CHECK(ResolveConvShape(Padding::kSame, &s).empty());
    auto w = Random(size_t(9) * s.out_c, &rng);
    for (int o = 0; o < s.out_c; ++o)  // 4 of 9 taps, as a pattern keeps
      for (int t = 0; t < 9; ++t)
        if ((t + o) % 9 >= 4) w[size_t(t) * s.out_c + o] = 0.f;
    const auto bias = Random(s.out_c, &rng);
    const PackedDepthwise p = PackDepthwise(w.data(), s.out_c, 3, 3, bias.data());
    const size_t in_n = size_t(s.in_h) * s.in_w * s.in_c, out_n = size_t(s.out_h) * s.out_w * s.out_c;
    auto in = Random(in_n, &rng);
    if (k.nan) in[in_n / 2 + 7] = NAN;
    std::vector<float> ref(out_n);
    DepthwiseConv2DReference(s, in.data(), w.data(), bias.data(), ref.data());
    const std::vector<float> pin = PlanarByIndex(in, s.in_h, s.in_w, s.in_c),
                             ref_planar = PlanarByIndex(ref, s.out_h, s.out_w, s.out_c);
    for (const KernelSet* set : UsableSets())
      for (int threads = 1; threads <= 3; ++threads) {
        const bool large = in_n * sizeof(float) >= (size_t(1) << 20);
        CHECK(DepthwisePrefetchesPlanes(set, s, threads) == (large && s.out_c >= 4 * threads));
        prefetched += DepthwisePrefetchesPlanes(set, s, threads);
        ThreadPool pool(threads);
        std::vector<float> out(out_n, 12345.f);
        RunDepthwisePlanar(set, s, p, pin.data(), out.data(), &pool);
        CHECK(MatchesReference(out, ref_planar));
      }
  }
  CHECK(prefetched > 0);
}

// Max and average pooling in both layouts against the reference, over
// windows, strides, paddings, activations, batches and thread counts, with
// Inf, -Inf and NaN placed in the input: max must match exactly (NaN
// skipped among numbers, a window of NaN alone NaN, of -Inf alone -Inf),
// the average to float rounding (the planar kernel sums column-first).
TEST_CASE(PoolingMatchesReference) {
  std::mt19937 rng(31);
  const auto pick = [&](int lo, int hi) { return lo + int(rng() % unsigned(hi - lo + 1)); };
  int runs = 0;
  for (int trial = 0; trial < 120; ++trial) {
    ConvShape s;
    s.batch = trial % 5 == 4 ? 2 : 1;
    s.in_h = pick(1, 20); s.in_w = pick(1, 37); s.in_c = pick(1, 20);
    s.out_c = s.in_c;
    s.k_h = pick(1, 4); s.k_w = trial % 3 == 0 ? s.k_h : pick(1, 4);
    s.stride_h = pick(1, 3); s.stride_w = trial % 4 == 0 ? s.stride_h : pick(1, 3);
    s.act_min = trial % 2 ? 0.f : -INFINITY;
    s.act_max = trial % 3 == 1 ? 6.f : INFINITY;
    if (trial % 6 == 5) {  // 2x2 stride 2 tiling the input (the exact AVX-512 paths)
      static const int widths[] = {2, 4, 8, 16, 18, 32, 34, 66};
      s.in_h = 2 * pick(1, 10); s.in_w = widths[trial / 6 % 8];
      s.k_h = s.k_w = 2; s.stride_h = s.stride_w = 2;
    }
    if (trial == 7) {  // the largest window, wider than the scratch row's slack
      s.in_w = 130; s.k_w = kMaxPoolWindow; s.stride_w = 2;
    }
    if (!ResolveConvShape(trial % 2 ? Padding::kValid : Padding::kSame, &s).empty()) continue;
    CHECK(CheckPoolShape(s).empty());
    const size_t in_n = size_t(s.batch) * s.in_h * s.in_w * s.in_c;
    const size_t out_n = size_t(s.batch) * s.out_h * s.out_w * s.out_c;
    for (int nonfinite = 0; nonfinite < 4; ++nonfinite) {
      auto in = Random(in_n, &rng);
      if (nonfinite == 1)
        for (int k = 0; k < 3; ++k) in[rng() % in_n] = k == 0 ? INFINITY : -INFINITY;
      if (nonfinite == 2)
        for (int k = 0; k < 3; ++k) in[rng() % in_n] = NAN;
      if (nonfinite == 3)  // whole planes of -Inf and of NaN: windows with nothing else
        for (size_t i = 0; i < in_n; ++i) {
          if (i % s.in_c == 0) in[i] = -INFINITY;
          else if (s.in_c > 1 && i % s.in_c == 1) in[i] = NAN;
        }
      for (bool max : {true, false}) {
        std::vector<float> ref(out_n);
        Pool2DReference(max, s, in.data(), ref.data());
        const auto agree = [&](const std::vector<float>& out) {
          bool ok = true;
          for (size_t i = 0; i < out_n; ++i) {
            const float a = out[i], r = ref[i];
            if (max || !std::isfinite(r)) ok = ok && (std::isnan(r) ? std::isnan(a) : a == r);
            else ok = ok && std::fabs(double(a) - r) <= 1e-6 * (1 + std::fabs(r));
          }
          return ok;
        };
        for (int threads = 1; threads <= 3; threads += 2)
          for (const KernelSet* set : UsableSets()) {
          ThreadPool pool(threads);
          std::vector<float> out(out_n, 12345.f);
          RunPool2D(set, max, s, false, false, in.data(), out.data(), &pool);
          CHECK(agree(out));
          if (s.batch == 1) {  // planar by index
            std::vector<float> pin(in_n), pout(out_n, 12345.f);
            for (int y = 0; y < s.in_h; ++y)
              for (int x = 0; x < s.in_w; ++x)
                for (int c = 0; c < s.in_c; ++c)
                  pin[(size_t(c) * s.in_h + y) * s.in_w + x] =
                      in[(size_t(y) * s.in_w + x) * s.in_c + c];
            RunPool2D(set, max, s, true, false, pin.data(), pout.data(), &pool);
            for (int y = 0; y < s.out_h; ++y)
              for (int x = 0; x < s.out_w; ++x)
                for (int c = 0; c < s.out_c; ++c)
                  out[(size_t(y) * s.out_w + x) * s.out_c + c] =
                      pout[(size_t(c) * s.out_h + y) * s.out_w + x];
            CHECK(agree(out));
          }
          ++runs;
        }
      }
    }
  }
  CHECK(runs > 600);
  // A hand-computed case: 3x3 stride 2 VALID over a 5x5 ramp, and a window
  // of NaN and -Inf alone.
  ConvShape s;
  s.in_h = s.in_w = 5; s.in_c = s.out_c = 1; s.k_h = s.k_w = 3; s.stride_h = s.stride_w = 2;
  CHECK(ResolveConvShape(Padding::kValid, &s).empty());
  std::vector<float> in(25), out(4);
  for (int i = 0; i < 25; ++i) in[i] = float(i);
  for (const KernelSet* set : UsableSets()) {
    for (int i = 0; i < 25; ++i) in[i] = float(i);
    RunPool2D(set, true, s, true, false, in.data(), out.data(), nullptr);
    CHECK(out[0] == 12.f && out[1] == 14.f && out[2] == 22.f && out[3] == 24.f);
    RunPool2D(set, false, s, true, false, in.data(), out.data(), nullptr);
    CHECK(out[0] == 6.f && out[1] == 8.f && out[2] == 16.f && out[3] == 18.f);
    for (int i : {0, 1, 2, 5, 6, 7, 10, 11, 12}) in[i] = i % 2 ? NAN : -INFINITY;
    RunPool2D(set, true, s, true, false, in.data(), out.data(), nullptr);
    CHECK(out[0] == -INFINITY && out[1] == 14.f);  // NaN skipped, -Inf kept
    for (int i : {0, 1, 2, 5, 6, 7, 10, 11, 12}) in[i] = NAN;
    RunPool2D(set, true, s, true, false, in.data(), out.data(), nullptr);
    CHECK(std::isnan(out[0]) && out[1] == 14.f);  // a window of NaN alone
  }
  // A PAD fused into a VALID pool (zero_border): equal to the pool of the
  // explicitly zero-padded input, in both layouts.
  int zb_runs = 0;
  for (int trial = 0; trial < 40; ++trial) {
    ConvShape z;
    z.in_h = pick(1, 12); z.in_w = pick(1, 19); z.in_c = z.out_c = pick(1, 9);
    z.k_h = pick(1, 3); z.k_w = pick(1, 3); z.stride_h = pick(1, 2); z.stride_w = pick(1, 3);
    const int t = pick(0, 2), b = pick(0, 2), l = pick(0, 2), r = pick(0, 2);
    ConvShape padded = z;
    padded.in_h += t + b; padded.in_w += l + r;
    if (!ResolveConvShape(Padding::kValid, &padded).empty()) continue;
    z.out_h = padded.out_h; z.out_w = padded.out_w; z.pad_top = t; z.pad_left = l;
    auto in = Random(size_t(z.in_h) * z.in_w * z.in_c, &rng);
    if (trial % 3 == 0) in[0] = NAN;
    std::vector<float> pin(size_t(padded.in_h) * padded.in_w * z.in_c, 0.f);
    for (int y = 0; y < z.in_h; ++y)
      for (int x = 0; x < z.in_w; ++x)
        for (int c = 0; c < z.in_c; ++c)
          pin[(size_t(y + t) * padded.in_w + x + l) * z.in_c + c] =
              in[(size_t(y) * z.in_w + x) * z.in_c + c];
    const size_t out_n = size_t(z.out_h) * z.out_w * z.in_c;
    for (bool max : {true, false}) {
      std::vector<float> ref(out_n), got(out_n), planes(out_n), pl(in.size());
      Pool2DReference(max, padded, pin.data(), ref.data());
      for (int y = 0; y < z.in_h; ++y)
        for (int x = 0; x < z.in_w; ++x)
          for (int c = 0; c < z.in_c; ++c)
            pl[(size_t(c) * z.in_h + y) * z.in_w + x] = in[(size_t(y) * z.in_w + x) * z.in_c + c];
      for (const KernelSet* set : UsableSets()) {
        RunPool2D(set, max, z, false, true, in.data(), got.data(), nullptr);
        RunPool2D(set, max, z, true, true, pl.data(), planes.data(), nullptr);
        bool ok = true;
        for (int y = 0; y < z.out_h; ++y)
          for (int x = 0; x < z.out_w; ++x)
            for (int c = 0; c < z.in_c; ++c) {
              const size_t i = (size_t(y) * z.out_w + x) * z.in_c + c;
              const float p = planes[(size_t(c) * z.out_h + y) * z.out_w + x];
              for (float a : {got[i], p})
                ok = ok && (std::isnan(ref[i]) ? std::isnan(a)
                                               : std::fabs(double(a) - ref[i]) <= 1e-6 * (1 + std::fabs(ref[i])));
            }
        CHECK(ok);
        ++zb_runs;
      }
    }
  }
  CHECK(zb_runs > 40);
  // Shapes it refuses.
  ConvShape bad = s;
  bad.out_c = 2;
  CHECK(!CheckPoolShape(bad).empty());
  bad = s;
  bad.pad_top = -1;
  CHECK(!CheckPoolShape(bad).empty());
  bad = s;
  bad.out_w = 40;  // windows past the input
  CHECK(!CheckPoolShape(bad).empty());
}

// The flat stride-1 kernel checks its input for Inf/NaN on the loads of its
// zero-offset tap when a channel keeps that tap and the output is the
// input's size; otherwise it scans.  Either way an Inf or NaN that only a
// pruned tap reads must still make stock TFLite's NaN (0 x Inf).
TEST_CASE(DepthwiseFlatChecksWhatOnlyPrunedTapsRead) {
  struct Case { int h, w, k_h, k_w; Padding pad; std::vector<int> keep; };
  const std::vector<Case> cases = {
      {14, 14, 3, 3, Padding::kSame, {1, 4, 8}},  // keeps the centre: checked in the loads
      {14, 14, 3, 3, Padding::kSame, {0, 2, 6}},  // no centre: scanned
      {8, 9, 3, 1, Padding::kValid, {0}},         // offset 0 kept, fewer output rows: scanned
  };
  int runs = 0;
  for (const Case& c : cases) {
    ConvShape s;
    s.in_h = c.h; s.in_w = c.w; s.in_c = s.out_c = 20; s.k_h = c.k_h; s.k_w = c.k_w;
    CHECK(ResolveConvShape(c.pad, &s).empty());
    std::mt19937 rng(5);
    std::vector<float> w(size_t(s.k_h) * s.k_w * s.out_c, 0.f);
    for (int o = 0; o < s.out_c; ++o)
      for (int t : c.keep) w[size_t(t) * s.out_c + o] = 0.25f + 0.5f * float(rng() % 4);
    const auto bias = Random(s.out_c, &rng);
    const PackedDepthwise p = PackDepthwise(w.data(), s.out_c, s.k_h, s.k_w, bias.data());
    const size_t in_n = size_t(s.in_h) * s.in_w * s.in_c, out_n = size_t(s.out_h) * s.out_w * s.out_c;
    // Corners, edges and the last row: the places only some taps read.
    for (const auto& at : std::vector<std::array<int, 2>>{
             {0, 0}, {s.in_h - 1, s.in_w - 1}, {s.in_h - 1, s.in_w / 2}, {s.in_h / 2, 0}, {5, 7}})
      for (float bad : {NAN, INFINITY}) {
        auto in = Random(in_n, &rng);
        in[(size_t(at[0]) * s.in_w + at[1]) * s.in_c + 3] = bad;
        std::vector<float> ref(out_n), pin(in_n);
        DepthwiseConv2DReference(s, in.data(), w.data(), bias.data(), ref.data());
        for (int y = 0; y < s.in_h; ++y)
          for (int x = 0; x < s.in_w; ++x)
            for (int ch = 0; ch < s.in_c; ++ch)
              pin[(size_t(ch) * s.in_h + y) * s.in_w + x] = in[(size_t(y) * s.in_w + x) * s.in_c + ch];
        int ref_bad = 0;
        for (float r : ref) ref_bad += !std::isfinite(r);
        CHECK(ref_bad > 0);
        for (const KernelSet* set : UsableSets()) {
          CHECK(DepthwisePlanarApplies(set, s, p));
          ThreadPool pool(1);
          std::vector<float> out(out_n, 12345.f);
          RunDepthwisePlanar(set, s, p, pin.data(), out.data(), &pool);
          bool ok = true;
          for (int y = 0; y < s.out_h; ++y)
            for (int x = 0; x < s.out_w; ++x)
              for (int ch = 0; ch < s.out_c; ++ch) {
                const float a = out[(size_t(ch) * s.out_h + y) * s.out_w + x];
                const float r = ref[(size_t(y) * s.out_w + x) * s.out_c + ch];
                ok = ok && (std::isnan(r)   ? std::isnan(a)
                            : std::isinf(r) ? a == r
                                            : std::fabs(double(a) - r) <= 1e-5 * (1 + std::fabs(r)));
              }
          CHECK(ok);
          ++runs;
        }
      }
  }
  CHECK(runs >= 30);
}

// The stride-2 3x3 kernel checks its loads for Inf/NaN and scans only the
// rows its kept taps do not load: every place of the input must still reach
// the output as stock TFLite's dense sum does (0 x Inf = NaN).  Kept taps
// with both row parities, even kernel rows only (odd input rows unloaded),
// the middle row only (even ones unloaded), the last kernel row without the
// first (its loads are then the only ones of even rows); odd sizes (padding before); a
// VALID map whose output rows fill their vectors exactly (columns the loads
// do not reach: scanned first); few channels at 3 threads (bands of rows).
TEST_CASE(DepthwiseStride2ChecksWhatOnlyPrunedTapsRead) {
  struct Case { int h, w, c; Padding pad; std::vector<int> keep; };
  const std::vector<Case> cases = {
      {20, 40, 20, Padding::kSame, {1, 4, 6, 8}},   // both parities, 4-row groups and edges
      {21, 37, 20, Padding::kSame, {0, 3, 4, 5}},   // odd sizes: a padded first row and column
      {20, 40, 20, Padding::kSame, {0, 2, 6, 8}},   // even kernel rows only
      {19, 33, 20, Padding::kSame, {3, 4, 5}},      // middle row only
      {22, 40, 20, Padding::kSame, {4, 6, 7, 8}},   // no first kernel row: the last one's loads checked
      {18, 34, 20, Padding::kValid, {1, 4, 7}},     // 16 output columns: a column unloaded
      {30, 36, 2, Padding::kSame, {2, 4, 5, 6}},    // 2 channels: bands at 2-3 threads
  };
  int runs = 0, fused = 0;
  for (const Case& c : cases) {
    ConvShape s;
    s.in_h = c.h; s.in_w = c.w; s.in_c = s.out_c = c.c; s.k_h = s.k_w = 3;
    s.stride_h = s.stride_w = 2;
    s.act_min = 0.f; s.act_max = 6.f;
    CHECK(ResolveConvShape(c.pad, &s).empty());
    std::mt19937 rng(11);
    std::vector<float> w(size_t(9) * s.out_c, 0.f);
    for (int o = 0; o < s.out_c; ++o)
      for (int t : c.keep) w[size_t(t) * s.out_c + o] = 0.25f + 0.5f * float(rng() % 4) - (o % 3 == 0);
    const auto bias = Random(s.out_c, &rng);
    const PackedDepthwise p = PackDepthwise(w.data(), s.out_c, 3, 3, bias.data());
    const size_t in_n = size_t(s.in_h) * s.in_w * s.in_c;
    // Corners, the last row and column (NaN, Inf and -Inf each), and one
    // place in every row (the 4-row groups load some rows twice and check
    // them once), its value by row.
    struct Place { int y, x; float bad; };
    std::vector<Place> places;
    for (const auto& yx : std::vector<std::array<int, 2>>{{0, 0}, {0, s.in_w - 1}, {s.in_h - 1, 0},
                                                          {s.in_h - 1, s.in_w - 1}, {s.in_h / 2, s.in_w - 2}})
      for (float bad : {NAN, INFINITY, -INFINITY}) places.push_back({yx[0], yx[1], bad});
    for (int y = 0; y < s.in_h; ++y)
      places.push_back({y, (y * 7 + 3) % s.in_w, y % 3 == 0 ? NAN : y % 3 == 1 ? INFINITY : -INFINITY});
    for (const Place& at : places) {
      auto in = Random(in_n, &rng);
      in[(size_t(at.y) * s.in_w + at.x) * s.in_c + 1] = at.bad;
      runs += DepthwisePlanarRunsMatch(s, p, in, w, bias);
      for (const KernelSet* set : UsableSets())
        fused += std::string(set->isa) == "avx512" && !DepthwiseBlocksApply(set, s);
    }
  }
  CHECK(runs >= 100);
  // On AVX-512 machines these maps ran the stride-2 kernel (not the
  // channel-block one, which takes maps of at most 16 x 16).
  for (const KernelSet* set : UsableSets())
    if (std::string(set->isa) == "avx512") CHECK(fused > 0);
}

TEST_CASE(FullyConnectedMatchesReference) {
  std::mt19937 rng(3);
  for (int in_n : {1, 15, 16, 100, 513})
    for (int batch : {1, 3}) {
      const int out_n = 37;
      const auto x = Random(size_t(batch) * in_n, &rng);
      const auto w = Random(size_t(out_n) * in_n, &rng);
      const auto b = Random(out_n, &rng);
      std::vector<float> ref(size_t(batch) * out_n), out(ref.size());
      FullyConnectedReference(batch, in_n, out_n, x.data(), w.data(), b.data(), 0.f, INFINITY,
                              ref.data());
      const PackedFullyConnected p = PackFullyConnected(w.data(), out_n, in_n, b.data());
      for (const KernelSet* set : UsableSets()) {
        ThreadPool pool(2);
        RunFullyConnected(set, batch, p, 0.f, INFINITY, x.data(), out.data(), &pool);
        CHECK(RelError(out, ref) <= 1e-6);
      }
    }
}

// A pattern-pruned filter: each kept kernel takes one of 8 masks with 4 taps
// (centre kept for 3x3), about half the kernels removed; with `shared`,
// filters come in runs of 4 with identical kernel lists (group-shared masks).
std::vector<float> PatternFilter(int out_c, int k, int in_c, bool shared, std::mt19937* rng) {
  std::vector<uint32_t> masks;
  const int taps = k * k, centre = taps / 2;
  while (masks.size() < 8) {
    uint32_t m = 1u << centre;
    while (__builtin_popcount(m) < 4) m |= 1u << ((*rng)() % taps);
    bool seen = false;
    for (uint32_t x : masks) seen = seen || x == m;
    if (!seen) masks.push_back(m);
  }
  auto w = Random(size_t(out_c) * taps * in_c, rng);
  std::vector<int> choice(in_c);
  for (int o = 0; o < out_c; ++o) {
    if (!shared || o % 4 == 0)
      for (int c = 0; c < in_c; ++c) choice[c] = ((*rng)() % 2) ? int((*rng)() % 8) : -1;
    for (int t = 0; t < taps; ++t)
      for (int c = 0; c < in_c; ++c) {
        const bool keep = choice[c] >= 0 && ((masks[choice[c]] >> t) & 1u);
        if (!keep) w[(size_t(o) * taps + t) * in_c + c] = 0.f;
      }
  }
  return w;
}

// One pattern-conv test problem: shape, pruned filter, bias, input and the
// float64 reference output.
struct PatternCase { int batch, h, w, in_c, out_c, k, dil; Padding pad; float lo, hi; };
struct PatternProblem {
  ConvShape s;
  std::vector<float> w, b, in, ref;
};
PatternProblem MakeProblem(const PatternCase& c, bool shared, std::mt19937* rng) {
  PatternProblem p;
  ConvShape& s = p.s;
  s.batch = c.batch; s.in_h = c.h; s.in_w = c.w; s.in_c = c.in_c; s.out_c = c.out_c;
  s.k_h = s.k_w = c.k; s.dil_h = s.dil_w = c.dil;
  s.act_min = c.lo; s.act_max = c.hi;
  CHECK(ResolveConvShape(c.pad, &s).empty());
  p.w = PatternFilter(s.out_c, c.k, s.in_c, shared, rng);
  p.b = Random(s.out_c, rng);
  p.in = Random(size_t(s.batch) * s.in_h * s.in_w * s.in_c, rng);
  p.ref.resize(size_t(s.batch) * s.out_h * s.out_w * s.out_c);
  Conv2DReference(s, p.in.data(), p.w.data(), p.b.data(), p.ref.data());
  return p;
}

// Geometries both engines are swept over: SAME/VALID, dilation, 5x5,
// 2x2 and 4x4 maps, filter counts that do not fill a register tile.
const PatternCase kPatternCases[] = {
    {1, 7, 13, 5, 11, 3, 1, Padding::kSame, -INFINITY, INFINITY},
    {2, 14, 14, 16, 32, 3, 1, Padding::kSame, 0.f, INFINITY},
    {2, 14, 14, 16, 40, 3, 1, Padding::kSame, 0.f, INFINITY},
    {1, 4, 4, 24, 12, 3, 1, Padding::kSame, 0.f, 6.f},
    {1, 2, 2, 8, 33, 3, 1, Padding::kSame, -INFINITY, INFINITY},
    {1, 9, 10, 6, 130, 3, 2, Padding::kSame, -INFINITY, INFINITY},
    {1, 11, 9, 7, 9, 3, 1, Padding::kValid, -1.f, 1.f},
    {1, 12, 12, 4, 8, 5, 1, Padding::kSame, -INFINITY, INFINITY},
    // Maps up to 8x8 (row pairs on AVX-512 where they save vectors): SAME,
    // VALID, dilated, 5x5.
    {1, 8, 8, 12, 20, 3, 1, Padding::kSame, 0.f, INFINITY},
    {2, 7, 8, 9, 14, 3, 1, Padding::kSame, -INFINITY, INFINITY},
    {1, 8, 6, 5, 9, 3, 2, Padding::kSame, -1.f, 1.f},
    {1, 8, 8, 4, 7, 5, 1, Padding::kSame, -INFINITY, INFINITY},
    {1, 8, 8, 6, 10, 3, 1, Padding::kValid, -INFINITY, INFINITY},
    // Small maps (<= 16 positions): VALID, dilated, 5x5, odd sizes, 1x1.
    {1, 4, 4, 9, 20, 3, 1, Padding::kValid, -INFINITY, INFINITY},
    {2, 4, 4, 10, 17, 3, 2, Padding::kSame, 0.f, INFINITY},
    {1, 3, 5, 6, 5, 3, 1, Padding::kSame, -1.f, 1.f},
    {1, 4, 4, 4, 8, 5, 1, Padding::kSame, -INFINITY, INFINITY},
    {1, 1, 1, 7, 9, 3, 1, Padding::kSame, -INFINITY, INFINITY},
};

TEST_CASE(PatternConvMatchesReference) {
  std::mt19937 rng(4);
  int small_map_runs = 0;
  for (const PatternCase& c : kPatternCases)
    for (bool shared : {false, true}) {
      const PatternProblem prob = MakeProblem(c, shared, &rng);
      const ConvShape& s = prob.s;
      const auto &w = prob.w, &b = prob.b, &in = prob.in, &ref = prob.ref;
      std::vector<float> out(ref.size());
      for (int group : {1, 4}) {
        PatternPlan plan;
        CHECK(BuildPatternPlan(w.data(), s.out_c, c.k, c.k, s.in_c, b.data(), group, &plan).empty());
        for (const KernelSet* set : UsableSets())
          for (int threads : {1, 2, 3}) {
            ThreadPool pool(threads);
            PatternScratch scratch;
            for (int rep = 0; rep < 2; ++rep) {  // the second run reuses the scratch halo
              RunPatternConv(set, s, plan, &scratch, in.data(), out.data(), &pool);
              CHECK(RelError(out, ref) <= 1e-5);
            }
            // The AVX-512 set runs 16-float tile vectors on maps of more
            // than 8 flattened positions; a small map keeps a channel in a
            // 16-float slot on every set that has the kernel.
            if (scratch.engine == set->isa) {
              const bool wide = scratch.geometry.small_map ||
                                (set->pattern_lanes == 16 && int64_t(s.out_h) * scratch.geometry.wp > 8);
              CHECK(scratch.geometry.tile_lanes == (wide ? 16 : 8));
            }
            // Every tuning knob (channel chunk, register tile, small-map
            // kernel or not) gives the same result, including tiles the
            // layer must clamp.
            if (threads == 2)
              for (int small : {0, -1})
                for (int chunk : {1, 3, 0, s.in_c})
                  for (int tile : {1, 2, 3, 4, 6, 8}) {
                    std::fill(out.begin(), out.end(), NAN);
                    PatternTuning t{chunk, tile, JitIsa::kNone};
                    t.static_small_map = small;
                    RunPatternConv(set, s, plan, &scratch, in.data(), out.data(), &pool, t);
                    CHECK(RelError(out, ref) <= 1e-5);
                    const bool fits = s.in_h * s.in_w <= set->small_map_in &&
                                      s.out_h * s.out_w <= set->small_map_out;
                    CHECK(scratch.geometry.small_map ==
                          (small == 0 && fits && set->pattern_small_map != nullptr));
                    small_map_runs += scratch.geometry.small_map;
                  }
          }
      }
    }
  // The small maps ran the small-map kernel where the set has one (AVX-512:
  // <= 16 positions, AVX2: 2x2 and smaller).
  bool any_small_kernel = false;
  for (const KernelSet* set : UsableSets()) any_small_kernel |= set->pattern_small_map != nullptr;
  CHECK((small_map_runs > 0) == any_small_kernel);
}

// Runs a batch-1 pattern conv with planar input and output; returns the
// output as NHWC.
std::vector<float> RunThroughPlanes(const KernelSet* set, const ConvShape& s,
                                    const PatternPlan& plan, PatternScratch* scratch,
                                    ThreadPool* pool, const PatternTuning& t,
                                    const std::vector<float>& in) {
  std::vector<float> pin(in.size()), pout(size_t(s.out_h) * s.out_w * s.out_c, NAN),
      back(pout.size());
  NhwcToPlanar(set, s.in_h, s.in_w, s.in_c, in.data(), pin.data(), pool);
  PatternIo io;
  io.planar_input = pin.data();
  io.planar_output = pout.data();
  RunPatternConv(set, s, plan, scratch, nullptr, nullptr, pool, t, io);
  PlanarToNhwc(set, s.out_h, s.out_w, s.out_c, pout.data(), back.data(), pool);
  return back;
}

TEST_CASE(SmallMapsMatchTheReference) {
  // Random maps of up to 8x8 on every set with a small-map kernel (one
  // vector up to 16 positions, row pairs up to 8x8): non-square kernels,
  // patterns of 1-9 taps, dilation per axis, SAME/VALID, batch 2, planar
  // input and output, Inf and NaN inputs; the same scratch re-prepared with
  // the kernels off must switch them off.
  std::mt19937 rng(17);
  int runs = 0, pair_runs = 0;
  for (int trial = 0; trial < 250; ++trial) {
    ConvShape s;
    s.batch = 1 + int(rng() % 2);
    s.in_h = 1 + int(rng() % 8);
    s.in_w = trial % 2 ? 1 + int(rng() % 8) : 1 + int(rng() % (16 / s.in_h));
    s.k_h = 1 + int(rng() % 3);
    s.k_w = 1 + int(rng() % 3);
    s.dil_h = 1 + int(rng() % 2);
    s.dil_w = 1 + int(rng() % 2);
    s.in_c = 1 + int(rng() % 20);
    s.out_c = 1 + int(rng() % 13);
    if (!ResolveConvShape(rng() % 3 ? Padding::kSame : Padding::kValid, &s).empty()) continue;
    const int taps = s.k_h * s.k_w;
    std::vector<uint32_t> masks;
    for (int m = 0; m < 1 + int(rng() % 6); ++m) {
      uint32_t mask = 0;
      const int bits = 1 + int(rng() % taps);
      while (__builtin_popcount(mask) < bits) mask |= 1u << (rng() % taps);
      masks.push_back(mask);
    }
    auto w = Random(size_t(s.out_c) * taps * s.in_c, &rng);
    for (int o = 0; o < s.out_c; ++o)
      for (int c = 0; c < s.in_c; ++c) {
        const uint32_t mask = rng() % 3 ? masks[rng() % masks.size()] : 0u;
        for (int t = 0; t < taps; ++t)
          if (!((mask >> t) & 1u)) w[(size_t(o) * taps + t) * s.in_c + c] = 0.f;
      }
    const auto b = Random(s.out_c, &rng);
    auto in = Random(size_t(s.batch) * s.in_h * s.in_w * s.in_c, &rng);
    if (trial % 4 == 0) in[rng() % in.size()] = NAN;
    if (trial % 8 == 1) in[rng() % in.size()] = -INFINITY;
    std::vector<float> ref(size_t(s.batch) * s.out_h * s.out_w * s.out_c), out(ref.size());
    Conv2DReference(s, in.data(), w.data(), b.data(), ref.data());
    PatternPlan plan;
    CHECK(BuildPatternPlan(w.data(), s.out_c, s.k_h, s.k_w, s.in_c, b.data(), 1 + int(rng() % 4),
                           &plan).empty());
    // Same NaN / infinity pattern, and the finite values within 1e-5.
    auto same = [&](const std::vector<float>& got) {
      double num = 0, den = 0;
      bool ok = true;
      for (size_t i = 0; i < ref.size(); ++i) {
        if (std::isnan(ref[i]) || std::isinf(ref[i])) {
          ok = ok && (std::isnan(ref[i]) ? std::isnan(got[i]) : got[i] == ref[i]);
          continue;
        }
        num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
        den += double(ref[i]) * ref[i];
      }
      return ok && std::sqrt(num / (den > 0 ? den : 1)) <= 1e-5;
    };
    for (const KernelSet* set : UsableSets()) {
      if (set->pattern_small_map == nullptr) continue;
      ThreadPool pool(1 + trial % 3);
      PatternScratch scratch;
      for (int small : {0, -1}) {
        PatternTuning t{0, 0, JitIsa::kNone};
        t.static_small_map = small;
        std::fill(out.begin(), out.end(), 0.f);
        RunPatternConv(set, s, plan, &scratch, in.data(), out.data(), &pool, t);
        CHECK(same(out));
        const bool fits = s.in_h * s.in_w <= set->small_map_in && s.out_h * s.out_w <= set->small_map_out;
        CHECK(scratch.geometry.small_map == (small == 0 && fits));
        runs += scratch.geometry.small_map;
        // Row pairs: only maps up to 8x8 too large for one vector.
        CHECK(!scratch.geometry.pair_map ||
              (small == 0 && !fits && set->pattern_pair_map != nullptr && s.in_h <= 8 &&
               s.in_w <= 8 && s.out_h <= 8 && s.out_w <= 8));
        pair_runs += scratch.geometry.pair_map;
        if (s.batch != 1) continue;
        CHECK(same(RunThroughPlanes(set, s, plan, &scratch, &pool, t, in)));
      }
    }
  }
  bool any = false, any_pairs = false;
  for (const KernelSet* set : UsableSets()) {
    any |= set->pattern_small_map != nullptr;
    any_pairs |= set->pattern_pair_map != nullptr;
  }
  CHECK((runs > 0) == any);
  CHECK((pair_runs > 0) == any_pairs);
}

// Maps of <= 4 positions whose patterns all have 4 taps run a unit's
// kernels as one loop, each kernel reading its pattern's permutation
// (PatternConvArgs::small_quad_kernels); a 3-tap pattern among them keeps
// the loop per pattern.  Both against the reference, Inf/NaN included.
TEST_CASE(SmallQuadMapsMatchTheReference) {
  std::mt19937 rng(29);
  const uint32_t four[8] = {0x1d, 0x1e, 0x33, 0x71, 0x93, 0x95, 0xd1, 0x170};  // VGG-16's
  int merged = 0, per_pattern = 0;
  for (int trial = 0; trial < 60; ++trial) {
    ConvShape s;
    s.in_h = 1 + trial % 2; s.in_w = 1 + (trial / 2) % 2;  // 1x1 .. 2x2
    s.k_h = s.k_w = 3;
    s.in_c = 1 + int(rng() % 40);
    s.out_c = 1 + int(rng() % 20);
    s.act_min = trial % 3 ? -INFINITY : 0.f;
    CHECK(ResolveConvShape(Padding::kSame, &s).empty());
    const bool mixed = trial % 5 == 4;  // one 3-tap pattern among them
    auto w = Random(size_t(s.out_c) * 9 * s.in_c, &rng);
    for (int o = 0; o < s.out_c; ++o)
      for (int c = 0; c < s.in_c; ++c) {
        uint32_t mask = rng() % 4 ? four[rng() % 8] : 0u;
        if (mixed && o == 0 && c == 0) mask = 0x13;
        for (int t = 0; t < 9; ++t)
          if (!((mask >> t) & 1u)) w[(size_t(o) * 9 + t) * s.in_c + c] = 0.f;
      }
    const auto b = Random(s.out_c, &rng);
    auto in = Random(size_t(s.in_h) * s.in_w * s.in_c, &rng);
    if (trial % 3 == 1) in[rng() % in.size()] = trial % 2 ? NAN : INFINITY;
    std::vector<float> ref(size_t(s.out_h) * s.out_w * s.out_c), out(ref.size());
    Conv2DReference(s, in.data(), w.data(), b.data(), ref.data());
    PatternPlan plan;
    CHECK(BuildPatternPlan(w.data(), s.out_c, 3, 3, s.in_c, b.data(), 1 + trial % 4, &plan).empty());
    for (const KernelSet* set : UsableSets()) {
      if (set->pattern_small_map == nullptr) continue;
      ThreadPool pool(1 + trial % 2);
      PatternScratch scratch;
      PatternTuning t{0, 0, JitIsa::kNone};
      RunPatternConv(set, s, plan, &scratch, in.data(), out.data(), &pool, t);
      CHECK(scratch.geometry.small_map);
      bool ok = true;
      for (size_t i = 0; i < ref.size(); ++i)
        ok = ok && (std::isnan(ref[i])   ? std::isnan(out[i])
                    : std::isinf(ref[i]) ? out[i] == ref[i]
                                         : std::fabs(double(out[i]) - ref[i]) <= 1e-5 * (1 + std::fabs(ref[i])));
      CHECK(ok);
      // Every pattern of 4 taps (none used at all counts too): one loop.
      bool all_four = true;
      for (const auto& taps : plan.pattern_taps) all_four = all_four && taps.size() == 4;
      CHECK(scratch.small_quad_kernels.empty() == !all_four);
      merged += !scratch.small_quad_kernels.empty();
      per_pattern += scratch.small_quad_kernels.empty();
    }
  }
  bool any = false;
  for (const KernelSet* set : UsableSets()) any |= set->pattern_small_map != nullptr;
  CHECK(!any || (merged > 0 && per_pattern > 0));
}

TEST_CASE(ChainedPatternConvsKeepTheLayout) {
  // conv A (SAME 3x3) feeds conv B (VALID 3x3, then SAME dilated 5x5): A writes
  // straight into B's padded CHW input; the result equals running both
  // through NHWC, and stays right when the pair is run again (halo reuse).
  std::mt19937 rng(6);
  for (int variant = 0; variant < 2; ++variant) {
    ConvShape a, b;
    a.in_h = 9; a.in_w = 11; a.in_c = 6; a.out_c = 10; a.k_h = a.k_w = 3;
    a.act_min = 0.f;
    CHECK(ResolveConvShape(Padding::kSame, &a).empty());
    b.in_h = a.out_h; b.in_w = a.out_w; b.in_c = a.out_c; b.out_c = 7;
    b.k_h = b.k_w = variant == 0 ? 3 : 5;
    b.dil_h = b.dil_w = variant == 0 ? 1 : 2;
    CHECK(ResolveConvShape(variant == 0 ? Padding::kValid : Padding::kSame, &b).empty());
    const auto wa = PatternFilter(a.out_c, 3, a.in_c, false, &rng);
    const auto wb = PatternFilter(b.out_c, b.k_h, b.in_c, variant == 1, &rng);
    const auto ba = Random(a.out_c, &rng), bb = Random(b.out_c, &rng);
    const auto in = Random(size_t(a.in_h) * a.in_w * a.in_c, &rng);
    std::vector<float> mid(size_t(a.out_h) * a.out_w * a.out_c), ref(size_t(b.out_h) * b.out_w * b.out_c);
    Conv2DReference(a, in.data(), wa.data(), ba.data(), mid.data());
    Conv2DReference(b, mid.data(), wb.data(), bb.data(), ref.data());
    PatternPlan pa, pb;
    CHECK(BuildPatternPlan(wa.data(), a.out_c, 3, 3, a.in_c, ba.data(), 4, &pa).empty());
    CHECK(BuildPatternPlan(wb.data(), b.out_c, b.k_h, b.k_w, b.in_c, bb.data(), 4, &pb).empty());
    for (const KernelSet* set : UsableSets())
      for (int tile : {0, 1, 8}) {
        ThreadPool pool(2);
        PatternScratch sa, sb;
        // A static layer feeding a generated one, and the other way round.
        PatternTuning ta{0, tile, JitIsa::kNone}, tb{3, 0};
        if (tile == 8) std::swap(ta.jit, tb.jit);
        tb.static_small_map = -1;  // a chained layer reads the planes A writes
        const PatternNext next{&b, &pb, &tb, &sb};
        std::vector<float> out(ref.size());
        for (int rep = 0; rep < 2; ++rep) {
          std::fill(out.begin(), out.end(), NAN);
          RunPatternConv(set, a, pa, &sa, in.data(), nullptr, &pool, ta, false, &next);
          RunPatternConv(set, b, pb, &sb, nullptr, out.data(), &pool, tb, true, nullptr);
          CHECK(RelError(out, ref) <= 1e-5);
        }
      }
  }
}

TEST_CASE(PlanarTensorsMatchTheNhwcPath) {
  // A residual block's tensors in plain CHW planes: conv A (1x1) writes a
  // planar tensor, ADD adds a planar shortcut converted from NHWC, conv B
  // (SAME 3x3) reads the sum; every buffer is exactly sized (ASan in CI) and
  // the result equals the float64 reference through NHWC.
  std::mt19937 rng(9);
  ConvShape a, b;
  a.in_h = 7; a.in_w = 13; a.in_c = 12; a.out_c = 12; a.k_h = a.k_w = 1;
  CHECK(ResolveConvShape(Padding::kSame, &a).empty());
  b.in_h = a.out_h; b.in_w = a.out_w; b.in_c = a.out_c; b.out_c = 9; b.k_h = b.k_w = 3;
  b.act_min = 0.f;
  CHECK(ResolveConvShape(Padding::kSame, &b).empty());
  // A 1x1 filter connectivity-pruned: about 3 of 4 weights zero.
  auto wa = Random(size_t(a.out_c) * a.in_c, &rng);
  for (float& v : wa)
    if (rng() % 4 != 0) v = 0.f;
  const auto wb = PatternFilter(b.out_c, 3, b.in_c, true, &rng);
  const auto ba = Random(a.out_c, &rng), bb = Random(b.out_c, &rng);
  const size_t n = size_t(a.in_h) * a.in_w * a.in_c;
  const auto in = Random(n, &rng);
  std::vector<float> mid(n), sum(n), ref(size_t(b.out_h) * b.out_w * b.out_c);
  Conv2DReference(a, in.data(), wa.data(), ba.data(), mid.data());
  for (size_t i = 0; i < n; ++i) sum[i] = std::max(mid[i] + in[i], 0.f);
  Conv2DReference(b, sum.data(), wb.data(), bb.data(), ref.data());
  PatternPlan pa, pb;
  CHECK(BuildPatternPlan(wa.data(), a.out_c, 1, 1, a.in_c, ba.data(), 4, &pa).empty());
  CHECK(BuildPatternPlan(wb.data(), b.out_c, 3, 3, b.in_c, bb.data(), 4, &pb).empty());
  std::vector<JitIsa> engines = {JitIsa::kNone};
  for (JitIsa isa : {JitIsa::kAvx2, JitIsa::kAvx512, JitIsa::kNeon}) {
    std::string err, set_err;
    if (ResolveJitIsa(SelectKernelSet("auto", &set_err), isa, &err) == isa) engines.push_back(isa);
  }
  for (const KernelSet* set : UsableSets())
    for (JitIsa isa : engines) {
      if (isa != JitIsa::kNone && std::string(set->isa) == "generic") continue;
      ThreadPool pool(2);
      PatternScratch sa, sb;
      PatternTuning t;
      t.jit = isa;
      std::vector<float> planar_mid(n), planar_in(n), planar_sum(n), out(ref.size());
      for (int rep = 0; rep < 2; ++rep) {
        std::fill(out.begin(), out.end(), NAN);
        PatternIo io_a;
        io_a.planar_output = planar_mid.data();
        RunPatternConv(set, a, pa, &sa, in.data(), nullptr, &pool, t, io_a);
        CHECK(!NhwcToPlanar(set, a.in_h, a.in_w, a.in_c, in.data(), planar_in.data(), &pool));
        RunAdd(int64_t(n), planar_mid.data(), planar_in.data(), 0.f, INFINITY,
               planar_sum.data(), &pool);
        PatternIo io_b;
        io_b.planar_input = planar_sum.data();
        RunPatternConv(set, b, pb, &sb, nullptr, out.data(), &pool, t, io_b);
        CHECK(RelError(out, ref) <= 1e-5);
      }
      // And back: planar -> NHWC is the exact inverse.
      std::vector<float> back(n);
      CHECK(!PlanarToNhwc(set, a.in_h, a.in_w, a.in_c, planar_in.data(), back.data(), &pool));
      CHECK(back == in);
    }
}

// The ISAs of the code generator this build and CPU can run.
std::vector<JitIsa> JitIsas() {
  std::vector<JitIsa> out;
  for (JitIsa isa : {JitIsa::kAvx2, JitIsa::kAvx512, JitIsa::kNeon}) {
    std::string err;
    std::string set_err;
    if (ResolveJitIsa(SelectKernelSet("auto", &set_err), isa, &err) == isa) out.push_back(isa);
  }
  return out;
}

TEST_CASE(GeneratedPatternConvMatchesReference) {
  const std::vector<JitIsa> isas = JitIsas();
  std::printf("generated kernels tested for:");
  for (JitIsa isa : isas) std::printf(" %s", JitIsaName(isa));
  std::printf("%s\n", isas.empty() ? " none (no generator in this build or CPU)" : "");
  if (!JitCompiled()) return;
  std::string err;
  const KernelSet* set = SelectKernelSet("auto", &err);
  std::mt19937 rng(11);
  for (const PatternCase& c : kPatternCases)
    for (bool shared : {false, true}) {
      const PatternProblem prob = MakeProblem(c, shared, &rng);
      const ConvShape& s = prob.s;
      const auto &w = prob.w, &b = prob.b, &in = prob.in, &ref = prob.ref;
      std::vector<float> out(ref.size());
      PatternPlan plan;
      CHECK(BuildPatternPlan(w.data(), s.out_c, c.k, c.k, s.in_c, b.data(), 4, &plan).empty());
      for (JitIsa isa : isas)
        for (int v = 1; v <= 4; ++v)
          for (int m : {1, std::min(3, JitMaxFilters(isa, v)), JitMaxFilters(isa, v)})
            for (bool reorder : {true, false})
              for (int threads : {1, 2}) {
                ThreadPool pool(threads);
                PatternScratch scratch;
                PatternTuning t;
                t.jit = isa; t.jit_filters = m; t.jit_vectors = v; t.jit_reorder = reorder;
                const std::string engine = PreparePatternConv(set, s, plan, &scratch, t);
                if (engine != std::string("jit_") + JitIsaName(isa)) std::printf("%s\n", scratch.jit_error.c_str());
                CHECK(engine == std::string("jit_") + JitIsaName(isa));
                for (int rep = 0; rep < 2; ++rep) {
                  std::fill(out.begin(), out.end(), NAN);
                  RunPatternConv(set, s, plan, &scratch, in.data(), out.data(), &pool, t);
                  CHECK(RelError(out, ref) <= 1e-5);
                }
              }
    }
}

// Code segments (jit_pattern.h): every cut of a block's columns, down to one
// use per segment, gives the reference's result, and bit for bit the result
// of the uncut block (same products in the same order; the partial sums only
// pass through memory).
TEST_CASE(GeneratedSegmentsMatchWholeBlocks) {
  if (!JitCompiled()) return;
  std::string err;
  const KernelSet* set = SelectKernelSet("auto", &err);
  std::mt19937 rng(13);
  for (const PatternCase& c : kPatternCases)
    for (bool shared : {false, true}) {
      const PatternProblem prob = MakeProblem(c, shared, &rng);
      PatternPlan plan;
      CHECK(BuildPatternPlan(prob.w.data(), prob.s.out_c, c.k, c.k, prob.s.in_c, prob.b.data(), 4,
                             &plan).empty());
      for (JitIsa isa : JitIsas())
        for (int v : {1, 2}) {
          ThreadPool pool(2);
          std::vector<float> whole(prob.ref.size()), out(prob.ref.size());
          int64_t whole_segments = 0;
          for (int segment : {-1, 1, 5, 64, 0}) {
            PatternScratch scratch;
            PatternTuning t;
            t.jit = isa; t.jit_vectors = v; t.jit_segment = segment;
            CHECK(PreparePatternConv(set, prob.s, plan, &scratch, t) ==
                  std::string("jit_") + JitIsaName(isa));
            const JitLayout& L = scratch.jit->layout();
            int64_t max_uses = 0;  // uses of any segment but the longest column
            for (const JitBlock& b : L.blocks) {
              CHECK(!b.segment_begin.empty() && b.segment_begin[0] == 0);
              for (size_t g = 0; g + 1 < b.segment_begin.size(); ++g) {
                int64_t n = 0;
                for (int32_t col = b.segment_begin[g]; col < b.segment_begin[g + 1]; ++col)
                  n += b.column_uses[col];
                max_uses = std::max(max_uses, n);
                CHECK(b.segment_begin[g] < b.segment_begin[g + 1]);
              }
            }
            if (segment == -1) {
              whole_segments = L.segments;
              CHECK(L.segments == static_cast<int64_t>(L.blocks.size()));
            }
            if (segment == 1) {  // one column each (and one for a block without columns)
              int64_t expect = 0;
              for (const JitBlock& b : L.blocks)
                expect += std::max<int64_t>(1, static_cast<int64_t>(b.column_offset.size()));
              CHECK(L.segments == expect);
            }
            if (segment > 1) CHECK(max_uses <= segment + L.filters);
            std::fill(out.begin(), out.end(), NAN);
            RunPatternConv(set, prob.s, plan, &scratch, prob.in.data(), out.data(), &pool, t);
            CHECK(RelError(out, prob.ref) <= 1e-5);
            if (segment == -1) whole = out;
            else CHECK(std::memcmp(out.data(), whole.data(), out.size() * sizeof(float)) == 0);
          }
          CHECK(whole_segments >= 1);
        }
    }
}

// Row bands (PatternBand): any band height, NHWC or planar input, NHWC,
// planar or chained output, 1-3 threads, an Inf or NaN in the input: bit for
// bit the unbanded generated result (same products in the same order), and
// the float64 reference.  (The band buffers are per-thread and only grow, so
// ASan cannot see an overread inside one; JitKernel::Run checks every call
// against the layout's proven bounds instead.)
bool SameOrBothNan(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(std::isnan(a[i]) && std::isnan(b[i])) &&
        std::memcmp(&a[i], &b[i], sizeof(float)) != 0)
      return false;
  return true;
}

TEST_CASE(GeneratedRowBandsMatchTheWholeImage) {
  if (!JitCompiled()) return;
  std::string err;
  const KernelSet* set = SelectKernelSet("auto", &err);
  std::mt19937 rng(17);
  // The last two are large enough for automatic bands (kJitBandBytes).
  const PatternCase cases[] = {
      {1, 9, 10, 6, 13, 3, 1, Padding::kSame, -INFINITY, INFINITY},
      {2, 11, 9, 7, 9, 3, 1, Padding::kValid, -1.f, 1.f},
      {1, 12, 12, 4, 8, 5, 2, Padding::kSame, 0.f, 6.f},
      {1, 13, 7, 5, 6, 1, 1, Padding::kSame, -INFINITY, INFINITY},
      {1, 64, 64, 48, 40, 3, 1, Padding::kSame, 0.f, INFINITY},
      {1, 37, 45, 96, 33, 1, 1, Padding::kValid, -INFINITY, INFINITY},
  };
  for (const PatternCase& c : cases) {
    PatternProblem prob;
    if (c.k == 1) {  // no 4-tap patterns: connectivity pruning only
      PatternCase c3 = c;
      c3.k = 3;
      prob = MakeProblem(c3, false, &rng);
      prob.s.k_h = prob.s.k_w = 1;
      CHECK(ResolveConvShape(c.pad, &prob.s).empty());
      prob.w = Random(size_t(prob.s.out_c) * prob.s.in_c, &rng);
      for (float& v : prob.w)
        if (rng() % 3 != 0) v = 0.f;
      prob.ref.assign(size_t(prob.s.out_h) * prob.s.out_w * prob.s.out_c, 0.f);
      Conv2DReference(prob.s, prob.in.data(), prob.w.data(), prob.b.data(), prob.ref.data());
    } else {
      prob = MakeProblem(c, false, &rng);
    }
    const ConvShape& s = prob.s;
    PatternPlan plan;
    CHECK(BuildPatternPlan(prob.w.data(), s.out_c, c.k, c.k, s.in_c, prob.b.data(), 4, &plan)
              .empty());
    for (JitIsa isa : JitIsas()) {
      PatternTuning whole;
      whole.jit = isa;
      whole.jit_band_rows = -1;
      PatternScratch ws;
      CHECK(PreparePatternConv(set, s, plan, &ws, whole) == std::string("jit_") + JitIsaName(isa));
      CHECK(ws.band.rows == 0);
      PatternTuning autob = whole;
      autob.jit_band_rows = 0;
      PatternScratch as;
      PreparePatternConv(set, s, plan, &as, autob);
      const bool large = &c - cases >= 4;
      CHECK((as.band.rows > 0) == large);
      CHECK(!large || as.band.num_bands >= 4);
      for (bool poison : {false, true}) {
        std::vector<float> in = prob.in;
        if (poison) {
          in[in.size() / 3] = INFINITY;
          in[in.size() / 2 + 1] = NAN;
        }
        std::vector<float> expect(prob.ref.size());
        ThreadPool pool1(1);
        RunPatternConv(set, s, plan, &ws, in.data(), expect.data(), &pool1, whole);
        if (!poison) CHECK(RelError(expect, prob.ref) <= 1e-5);
        for (int rows : {0, 1, 2, 3, s.out_h - 1, s.out_h})
          for (int threads : {1, 2, 3}) {
            if (rows < 0) continue;
            ThreadPool pool(threads);
            PatternTuning t = whole;
            t.jit_band_rows = rows;
            PatternScratch bs;
            PreparePatternConv(set, s, plan, &bs, t);
            CHECK(rows == 0 || rows >= s.out_h || bs.band.rows == rows);
            std::vector<float> out(expect.size(), NAN);
            for (int rep = 0; rep < 2; ++rep) {
              RunPatternConv(set, s, plan, &bs, in.data(), out.data(), &pool, t);
              CHECK(SameOrBothNan(out, expect));
            }
            if (s.batch != 1) continue;
            // Planar in and out.
            CHECK(SameOrBothNan(RunThroughPlanes(set, s, plan, &bs, &pool, t, in), expect));
            // Chained into an unbanded 1x1 conv.
            ConvShape s2;
            s2.in_h = s.out_h; s2.in_w = s.out_w; s2.in_c = s.out_c; s2.out_c = 5;
            s2.k_h = s2.k_w = 1;
            CHECK(ResolveConvShape(Padding::kValid, &s2).empty());
            auto w2 = Random(size_t(s2.out_c) * s2.in_c, &rng);
            for (float& v : w2)
              if (rng() % 3 == 0) v = 0.f;
            const auto b2 = Random(s2.out_c, &rng);
            PatternPlan p2;
            CHECK(BuildPatternPlan(w2.data(), s2.out_c, 1, 1, s2.in_c, b2.data(), 4, &p2).empty());
            PatternScratch s2s;
            const PatternNext next{&s2, &p2, &whole, &s2s};
            std::vector<float> chained(size_t(s2.out_h) * s2.out_w * s2.out_c, NAN),
                direct(chained.size());
            RunPatternConv(set, s, plan, &bs, in.data(), nullptr, &pool, t, false, &next);
            RunPatternConv(set, s2, p2, &s2s, nullptr, chained.data(), &pool, whole, true);
            PatternScratch s2d;
            RunPatternConv(set, s2, p2, &s2d, expect.data(), direct.data(), &pool, whole);
            CHECK(SameOrBothNan(chained, direct));
          }
      }
    }
  }
}

// 1x1 convs on planar tensors in place (PatternTuning::planar_direct): maps
// of whole tiles, of a tail (one more tile that overlaps the one before),
// of exactly one tile and of less than one (then copies as before); planar
// input, output or both, every M, V, segment length and thread count, an
// Inf and a NaN in the input.  Bit for bit the result through copies (same
// products, same order; that one is checked against the float64 reference
// where the input is finite, and against stock LiteRT's NaNs in
// tests/test_residual.py); the planar buffers are
// exactly sized, so ASan sees any read or write past them.
TEST_CASE(GeneratedOneByOneRunsInPlace) {
  if (!JitCompiled()) return;
  std::string err;
  const KernelSet* set = SelectKernelSet("auto", &err);
  std::mt19937 rng(23);
  const int maps[][2] = {{8, 8}, {9, 9}, {4, 4}, {5, 7}, {3, 5}, {14, 14}};
  int in_place_runs = 0, checked_runs = 0;
  for (const auto& hw : maps) {
    ConvShape s;
    s.in_h = hw[0]; s.in_w = hw[1]; s.in_c = 37; s.out_c = 19; s.k_h = s.k_w = 1;
    s.act_min = 0.f; s.act_max = 6.f;
    CHECK(ResolveConvShape(Padding::kSame, &s).empty());
    auto w = Random(size_t(s.out_c) * s.in_c, &rng);
    for (float& v : w)
      if (rng() % 3 != 0) v = 0.f;
    const int unread = 5;  // no filter reads this channel (JitLayout::unread_channels)
    for (int o = 0; o < s.out_c; ++o) w[size_t(o) * s.in_c + unread] = 0.f;
    const auto b = Random(s.out_c, &rng);
    PatternPlan plan;
    CHECK(BuildPatternPlan(w.data(), s.out_c, 1, 1, s.in_c, b.data(), 4, &plan).empty());
    const int64_t n_in = int64_t(s.in_h) * s.in_w * s.in_c, n_out = int64_t(s.out_h) * s.out_w * s.out_c;
    // 0: finite; 1: an Inf and a NaN; 2: one Inf at a random position of a
    // channel filters read (the code's own check must see it); 3: one NaN
    // in the unread channel (the driver's scan); 4: one Inf at the last
    // pixel (the tail tile where the map is not whole tiles).
    for (int poison : {0, 1, 2, 3, 4}) {
      auto in = Random(size_t(n_in), &rng);
      const int64_t pixel = int64_t(rng() % uint32_t(s.in_h * s.in_w));
      if (poison == 1) {
        in[size_t(n_in / 3)] = INFINITY;
        in[size_t(n_in / 2 + 1)] = NAN;
      } else if (poison == 2) {
        in[size_t(pixel * s.in_c + (unread + 1 + rng() % (s.in_c - 1)) % s.in_c)] = -INFINITY;
      } else if (poison == 3) {
        in[size_t(pixel * s.in_c + unread)] = NAN;
      } else if (poison == 4) {
        in[size_t(int64_t(s.in_h * s.in_w - 1) * s.in_c + (unread + 1) % s.in_c)] = INFINITY;
      }
      std::vector<float> ref(static_cast<size_t>(n_out));
      Conv2DReference(s, in.data(), w.data(), b.data(), ref.data());
      for (JitIsa isa : JitIsas())
        for (int v : {1, 2})
          // M = 1 and the largest checked M that keeps the shifted loads
          // check their loads; M up to JitMaxFilters(isa, v, true) (the
          // check's registers at the top of the file) where the planes are
          // whole vectors (8x8 here); the largest M never.
          for (int m : {1, JitTunedMaxFilters(isa, v, true), JitMaxFilters(isa, v, true),
                        JitMaxFilters(isa, v)})
            for (int segment : {0, 5})
              for (int threads : {1, 2, 3}) {
                ThreadPool pool(threads);
                PatternTuning copies;
                copies.jit = isa; copies.jit_vectors = v; copies.jit_filters = m;
                copies.jit_segment = segment;
                PatternTuning direct = copies;
                direct.planar_direct = true;
                PatternScratch cs, ds;
                PreparePatternConv(set, s, plan, &cs, copies);
                PreparePatternConv(set, s, plan, &ds, direct);
                const bool fits = int64_t(s.out_h) * s.out_w >= int64_t(JitLanes(isa)) * v;
                CHECK(ds.geometry.direct == fits && !cs.geometry.direct);
                CHECK(ds.band.rows == 0);
                const std::vector<float> expect = RunThroughPlanes(set, s, plan, &cs, &pool, copies, in);
                if (poison == 0) CHECK(RelError(expect, ref) <= 1e-5);
                for (int sides : {1, 2, 3}) {  // planar input, output, both
                  std::vector<float> pin(static_cast<size_t>(n_in)), pout(static_cast<size_t>(n_out), NAN),
                      nhwc(static_cast<size_t>(n_out), NAN), back(static_cast<size_t>(n_out));
                  NhwcToPlanar(set, s.in_h, s.in_w, s.in_c, in.data(), pin.data(), &pool);
                  PatternIo io;
                  if (sides & 1) io.planar_input = pin.data();
                  if (sides & 2) io.planar_output = pout.data();
                  for (int rep = 0; rep < 2; ++rep) {
                    RunPatternConv(set, s, plan, &ds, in.data(), nhwc.data(), &pool, direct, io);
                    // The exact path (whole padded input) runs iff the input
                    // holds an Inf or NaN: a check that missed one, or fired
                    // on finite input, shows here even where the outputs
                    // would agree.
                    if (sides == 1 && rep == 0 && ds.geometry.direct)
                      CHECK(ds.input.empty() == (poison == 0));
                    if (sides & 2) PlanarToNhwc(set, s.out_h, s.out_w, s.out_c, pout.data(), back.data(), &pool);
                    else back = nhwc;
                    CHECK(SameOrBothNan(back, expect));
                  }
                  in_place_runs += ds.geometry.direct;
                  checked_runs += ds.jit != nullptr && ds.jit->layout().check_input;
                }
              }
    }
  }
  CHECK(JitIsas().empty() || in_place_runs > 0);
  // The code checks its own loads on x86 (JitChecksInput), at M = 1 here.
  bool checks = false;
  for (JitIsa isa : JitIsas()) checks |= JitChecksInput(isa);
  CHECK(!checks || checked_runs > 0);
}

// Outputs of 1 MB and more (kFarTensorBytes, cc/kernels/dispatch.cc): the
// x86 generated code asks for its output lines ahead (JitLayout::
// prefetch_out_floats; the requests are in the code, which is larger than
// the same layout's without them), a 1x1 conv in place on planar tensors
// (62x62: a partial last tile; code segments of 5 uses) and a 3x3 conv on
// its whole-image buffer; the results still equal the reference, and a
// smaller output asks for nothing.
TEST_CASE(GeneratedCodePrefetchesLargeOutputs) {
  if (!JitCompiled() || JitIsas().empty()) return;
  std::string err;
  const KernelSet* set = SelectKernelSet("auto", &err);
  std::mt19937 rng(47);
  struct Case { int hw, in_c, out_c, k; bool large; };
  int prefetching = 0;
  for (const Case c : {Case{64, 16, 72, 1, true}, Case{62, 16, 72, 1, true},
                       Case{61, 12, 80, 3, true}, Case{32, 16, 72, 1, false}}) {
    ConvShape s;
    s.in_h = s.in_w = c.hw; s.in_c = c.in_c; s.out_c = c.out_c; s.k_h = s.k_w = c.k;
    s.act_min = 0.f; s.act_max = 6.f;
    CHECK(ResolveConvShape(Padding::kSame, &s).empty());
    auto w = c.k == 1 ? Random(size_t(s.out_c) * s.in_c, &rng) : PatternFilter(s.out_c, 3, s.in_c, false, &rng);
    if (c.k == 1)
      for (float& v : w)
        if (rng() % 3 != 0) v = 0.f;
    const auto b = Random(s.out_c, &rng);
    PatternPlan plan;
    CHECK(BuildPatternPlan(w.data(), s.out_c, c.k, c.k, s.in_c, b.data(), 4, &plan).empty());
    const auto in = Random(size_t(s.in_h) * s.in_w * s.in_c, &rng);
    std::vector<float> ref(size_t(s.out_h) * s.out_w * s.out_c);
    Conv2DReference(s, in.data(), w.data(), b.data(), ref.data());
    for (JitIsa isa : JitIsas())
      for (int v : {1, 4})
        for (int segment : {0, 5})
          for (int threads : {1, 2}) {
            ThreadPool pool(threads);
            PatternTuning t;
            t.jit = isa; t.jit_vectors = v; t.jit_segment = segment;
            t.planar_direct = c.k == 1;
            t.jit_band_rows = -1;  // the 3x3 conv on its whole image, not in bands
            PatternScratch scratch;
            CHECK(PreparePatternConv(set, s, plan, &scratch, t).rfind("jit_", 0) == 0);
            CHECK(scratch.geometry.direct == (c.k == 1) && scratch.band.rows == 0);
            const JitLayout& layout = scratch.jit->layout();
            const bool asks = c.large && JitKernel::PrefetchesOutput(isa);
            CHECK((layout.prefetch_out_floats > 0) == asks);
            if (asks) {
              JitLayout plain = layout;
              plain.prefetch_out_floats = 0;
              const auto without = JitKernel::Generate(plain, &err);
              CHECK(without != nullptr && without->code_bytes() < scratch.jit->code_bytes());
              ++prefetching;
            }
            CHECK(RelError(RunThroughPlanes(set, s, plan, &scratch, &pool, t, in), ref) <= 1e-5);
          }
  }
  bool x86 = false;
  for (JitIsa isa : JitIsas()) x86 |= JitKernel::PrefetchesOutput(isa);
  CHECK(!x86 || prefetching > 0);
}

// Column offsets beyond every immediate form: input planes 24 MB apart (odd
// float strides, so no offset is vector-aligned) make the generators build
// wide addresses (x86: 32-bit displacements; AArch64: MOVZ/MOVK + ADD).  A
// 1x1 layer checked against a float64 sum.
TEST_CASE(GeneratedCodeReachesFarColumns) {
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int oc = 5, ic = 3;
  const int64_t stride = 6000003, out_plane = 67;
  std::vector<float> w(oc * ic), bias(oc);
  for (float& v : w) v = u(rng);
  for (float& v : bias) v = u(rng);
  PatternPlan plan;
  CHECK(BuildPatternPlan(w.data(), oc, 1, 1, ic, bias.data(), 1, &plan).empty());
  std::vector<int32_t> taps(size_t(plan.num_patterns()) * kMaxTaps, 0);
  const int64_t in_floats = (ic - 1) * stride + out_plane + 64;
  std::vector<float> in(in_floats, 0.f);
  for (int c = 0; c < ic; ++c)
    for (int64_t p = 0; p < out_plane + 64; ++p) in[c * stride + p] = u(rng);
  for (JitIsa isa : JitIsas()) {
    JitLayout layout;
    CHECK(BuildJitLayout(plan, taps.data(), stride, in_floats, out_plane, isa, 2, 1, true, 0,
                         -INFINITY, INFINITY, &layout).empty());
    std::string err;
    auto k = JitKernel::Generate(layout, &err);
    CHECK(k != nullptr);
    if (!k) continue;
    const int64_t tiles = out_plane / layout.TileLen();
    std::vector<float> out(size_t(oc) * out_plane, NAN);
    for (int b = 0; b < k->num_blocks(); ++b)
      CHECK(k->Run(b, in.data(), in_floats, out.data(), out.size(), 0, tiles));
    double worst = 0;
    for (int o = 0; o < oc; ++o)
      for (int64_t p = 0; p < tiles * layout.TileLen(); ++p) {
        double ref = bias[o];
        for (int c = 0; c < ic; ++c) ref += double(w[o * ic + c]) * in[c * stride + p];
        worst = std::max(worst, std::fabs(out[o * out_plane + p] - ref));
      }
    CHECK(worst <= 1e-5);
  }
}

// A 1x1 layer of oc filters over ic channels, a third of its weights kept
// (uniform in [-range, range], as its bias), planned for the generator.
struct OneByOne {
  std::vector<float> w, bias;
  PatternPlan plan;
  std::vector<int32_t> taps;  // one pattern of one tap at offset 0
};
OneByOne SparseOneByOne(int oc, int ic, float range, std::mt19937* rng) {
  std::uniform_real_distribution<float> u(-range, range);
  OneByOne l;
  l.w.resize(size_t(oc) * ic);
  l.bias.resize(oc);
  for (float& v : l.w) v = (*rng)() % 3 ? 0.f : u(*rng);
  for (float& v : l.bias) v = u(*rng);
  CHECK(BuildPatternPlan(l.w.data(), oc, 1, 1, ic, l.bias.data(), 1, &l.plan).empty());
  l.taps.assign(size_t(l.plan.num_patterns()) * kMaxTaps, 0);
  return l;
}

// JitKernel::Tail: the tile that ends at the plane's end, run in the same
// pass as the whole tiles (AVX-512), stores only its positions after
// `skip`, whose partial sums between code segments are its own: bit for bit
// the result of running it as a call of its own, with segments of two uses.
// Other generators refuse it; so does every tail outside the plane.
TEST_CASE(GeneratedTailTileInTheSamePass) {
  std::mt19937 rng(29);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int oc = 7, ic = 5;
  const OneByOne layer = SparseOneByOne(oc, ic, 1.f, &rng);
  const PatternPlan& plan = layer.plan;
  const std::vector<int32_t>& taps = layer.taps;
  int fused = 0;
  for (JitIsa isa : JitIsas())
    for (int v : {1, 2}) {
      const int tile = JitLanes(isa) * v;
      const int64_t plane = 2 * tile + 3;  // two whole tiles and 3 positions
      const int64_t in_floats = ic * plane;
      std::vector<float> in(in_floats);
      for (float& x : in) x = u(rng);
      JitLayout layout;
      CHECK(BuildJitLayout(plan, taps.data(), plane, in_floats, plane, isa, 3, v, true, 2, -INFINITY,
                           INFINITY, &layout).empty());
      CHECK(layout.segments > int64_t(layout.blocks.size()));
      std::string err;
      auto k = JitKernel::Generate(layout, &err);
      CHECK(k != nullptr);
      if (!k) continue;
      std::vector<float> apart(size_t(oc) * plane, NAN), together(size_t(oc) * plane, NAN);
      JitKernel::Tail tail;
      tail.start = plane - tile;
      tail.skip = tile - 3;
      for (int b = 0; b < k->num_blocks(); ++b) {
        CHECK(k->Run(b, in.data(), in_floats, apart.data(), apart.size(), 0, 2));
        CHECK(k->Run(b, in.data(), in_floats, apart.data(), apart.size(), plane - tile, 1));
        CHECK(k->Run(b, in.data(), in_floats, together.data(), together.size(), 0, 2, nullptr, &tail) ==
              k->FusesTail());
      }
      CHECK(k->FusesTail() == (isa == JitIsa::kAvx512));
      if (!k->FusesTail()) continue;
      CHECK(std::memcmp(apart.data(), together.data(), apart.size() * sizeof(float)) == 0);
      ++fused;
      // Tails outside the plane or the tile.
      for (const auto& bad : {std::pair<int64_t, int>{plane - tile + 1, 0}, {-1, 0},
                              {plane - tile, -1}, {plane - tile, tile}}) {
        JitKernel::Tail t;
        t.start = bad.first;
        t.skip = bad.second;
        CHECK(!k->Run(0, in.data(), in_floats, together.data(), together.size(), 0, 2, nullptr, &t));
      }
    }
  std::printf("tail tile in the same pass: %d layouts\n", fused);
}

// JitLayout::residual (an ADD fused into a direct 1x1 conv): the epilogue
// adds the residual after the bias and clamps with the ADD's bounds, bit for
// bit the unfused conv (no clamp) followed by TFLite's ADD, NaN and Inf in
// the residual included, the AVX-512 tail tile too.  Run() refuses a
// residual the code does not add, a missing one and one too short; the NEON
// generator refuses the layout.
TEST_CASE(GeneratedResidualEpilogue) {
  std::mt19937 rng(37);
  std::uniform_real_distribution<float> u(-4.f, 4.f);
  const int oc = 9, ic = 6;
  const OneByOne layer = SparseOneByOne(oc, ic, 4.f, &rng);
  const PatternPlan& plan = layer.plan;
  const std::vector<int32_t>& taps = layer.taps;
  int runs = 0;
  for (JitIsa isa : JitIsas())
    for (int v : {1, 2}) {
      const int tile = JitLanes(isa) * v;
      const int64_t plane = 2 * tile + 3, in_floats = ic * plane, out_floats = oc * plane;
      std::vector<float> in(in_floats), res(out_floats);
      for (float& x : in) x = u(rng);
      for (float& x : res) x = u(rng);
      res[5] = NAN;
      res[plane + 7] = INFINITY;
      res[out_floats - 1] = -INFINITY;  // the last position: the tail tile's
      JitLayout plain, fused;
      CHECK(BuildJitLayout(plan, taps.data(), plane, in_floats, plane, isa, 4, v, true, 3,
                           -INFINITY, INFINITY, &plain).empty());
      CHECK(BuildJitLayout(plan, taps.data(), plane, in_floats, plane, isa, 4, v, true, 3, 0.f,
                           6.f, &fused).empty());
      fused.residual = true;
      std::string err;
      auto kp = JitKernel::Generate(plain, &err);
      auto kf = JitKernel::Generate(fused, &err);
      CHECK(kp != nullptr);
      CHECK((kf != nullptr) == JitKernel::AddsResidual(isa));
      if (!kf) {
        CHECK(err.find("residual") != std::string::npos);
        continue;
      }
      std::vector<float> conv(out_floats, NAN), got(out_floats, NAN);
      JitKernel::Tail tail;
      tail.start = plane - tile;
      tail.skip = tile - 3;
      for (int b = 0; b < kp->num_blocks(); ++b) {
        CHECK(kp->Run(b, in.data(), in_floats, conv.data(), out_floats, 0, 2));
        CHECK(kp->Run(b, in.data(), in_floats, conv.data(), out_floats, plane - tile, 1));
        if (kf->FusesTail()) {
          CHECK(kf->Run(b, in.data(), in_floats, got.data(), out_floats, 0, 2, nullptr, &tail,
                        res.data(), out_floats));
        } else {
          CHECK(kf->Run(b, in.data(), in_floats, got.data(), out_floats, 0, 2, nullptr, nullptr,
                        res.data(), out_floats));
          CHECK(kf->Run(b, in.data(), in_floats, got.data(), out_floats, plane - tile, 1, nullptr,
                        nullptr, res.data(), out_floats));
        }
      }
      bool same = true;
      for (int64_t i = 0; i < out_floats; ++i) {
        const float sum = conv[i] + res[i];
        const float want = std::min(std::max(sum, 0.f), 6.f);  // TFLite's ADD clamp
        same = same && (std::isnan(want) ? std::isnan(got[i])
                                         : std::memcmp(&want, &got[i], sizeof want) == 0);
      }
      CHECK(same);
      // The residual starting the sums (JitLayout::residual_first), one
      // segment per 3 FMAs: in a buffer of its own, and where the code runs
      // its tail in the same pass also with the output written over it (the
      // delegate's shared buffer; earlier segments' partial sums overwrite
      // residual values).  Summed in another order: equal to rounding.
      JitLayout first_layout = fused;
      first_layout.residual_first = true;
      auto k1 = JitKernel::Generate(first_layout, &err);
      CHECK(k1 != nullptr);
      for (bool over : {false, true}) {
        if (over && !k1->FusesTail()) continue;
        std::vector<float> out1(out_floats, NAN), res1 = res;
        float* dst = over ? res1.data() : out1.data();
        for (int b = 0; b < k1->num_blocks(); ++b) {
          if (k1->FusesTail()) {
            CHECK(k1->Run(b, in.data(), in_floats, dst, out_floats, 0, 2, nullptr, &tail,
                          res1.data(), out_floats));
          } else {
            CHECK(k1->Run(b, in.data(), in_floats, dst, out_floats, 0, 2, nullptr, nullptr,
                          res1.data(), out_floats));
            CHECK(k1->Run(b, in.data(), in_floats, dst, out_floats, plane - tile, 1, nullptr,
                          nullptr, res1.data(), out_floats));
          }
        }
        bool close = true;
        for (int64_t i = 0; i < out_floats; ++i) {
          const float want = std::min(std::max(conv[i] + res[i], 0.f), 6.f);
          close = close && (std::isnan(want) ? std::isnan(dst[i])
                                             : std::fabs(dst[i] - want) <=
                                                   1e-5f * (std::fabs(conv[i]) + std::fabs(res[i]) + 1.f));
        }
        CHECK(close);
      }
      // A residual the code does not add, none where it must, one too short.
      CHECK(!kp->Run(0, in.data(), in_floats, conv.data(), out_floats, 0, 2, nullptr, nullptr,
                     res.data(), out_floats));
      CHECK(!kf->Run(0, in.data(), in_floats, got.data(), out_floats, 0, 2));
      CHECK(!kf->Run(0, in.data(), in_floats, got.data(), out_floats, 0, 2, nullptr, nullptr,
                     res.data(), out_floats - plane * oc));
      ++runs;
    }
  std::printf("residual epilogue: %d layouts\n", runs);
}

TEST_CASE(GeneratorRefusesBadInput) {
  // A damaged plan, bad knobs or a too-small buffer: BuildJitLayout names the
  // problem before any code exists; Run() refuses arguments outside the
  // buffers the layout was proved for.
  std::mt19937 rng(12);
  const int oc = 20, ic = 9;
  const auto w = PatternFilter(oc, 3, ic, false, &rng);
  PatternPlan plan;
  CHECK(BuildPatternPlan(w.data(), oc, 3, 3, ic, nullptr, 1, &plan).empty());
  const int wp = 12, hp = 12;
  const int64_t plane = wp * hp, in_floats = plane * ic + 64, out_plane = 160;
  std::vector<int32_t> taps(size_t(plan.num_patterns()) * kMaxTaps, 0);
  for (int q = 0; q < plan.num_patterns(); ++q)
    for (size_t t = 0; t < plan.pattern_taps[q].size(); ++t)
      taps[q * kMaxTaps + t] = plan.pattern_taps[q][t] / 3 * wp + plan.pattern_taps[q][t] % 3;
  JitLayout layout;
  // The generator this build and CPU run (AVX-512 when there is none: the
  // layout checks need no code).
  const std::vector<JitIsa> runnable = JitIsas();
  const JitIsa native = runnable.empty() ? JitIsa::kAvx512 : runnable.back();
  auto build = [&](const PatternPlan& p, JitIsa isa, int m, int v, int64_t in_size) {
    return BuildJitLayout(p, taps.data(), plane, in_size, out_plane, isa, m, v, true, 0, -INFINITY,
                          INFINITY, &layout);
  };
  CHECK(build(plan, JitIsa::kAvx512, 0, 0, in_floats).empty());
  CHECK(build(plan, JitIsa::kNone, 0, 0, in_floats) == "no code generator for this ISA");
  CHECK(build(plan, JitIsa::kAvx2, 15, 1, in_floats).find("jit_filters must be 1..14") == 0);
  CHECK(build(plan, JitIsa::kAvx512, 0, 5, in_floats) == "jit_vectors must be 1..4");
  // The input check's two registers lower M; NEON's generator has no check.
  CHECK(BuildJitLayout(plan, taps.data(), plane, in_floats, out_plane, JitIsa::kAvx2, 13, 1, true,
                       0, -INFINITY, INFINITY, &layout, true)
            .find("jit_filters must be 1..12") == 0);
  CHECK(BuildJitLayout(plan, taps.data(), plane, in_floats, out_plane, JitIsa::kNeon, 0, 1, true,
                       0, -INFINITY, INFINITY, &layout, true) ==
        "this ISA's generator cannot check its input");
  if (JitCompiled() && (native == JitIsa::kAvx512 || native == JitIsa::kAvx2)) {
    // A layout whose tile leaves no room for the check (changed after it
    // was built) is refused by the generator, not emitted.
    const int v = native == JitIsa::kAvx512 ? 2 : 1;  // AVX-512, V = 1: 20 filters fit
    CHECK(BuildJitLayout(plan, taps.data(), plane, in_floats, out_plane, native,
                         JitMaxFilters(native, v, true), v, true, 0, -INFINITY, INFINITY, &layout,
                         true).empty());
    std::string err;
    CHECK(JitKernel::Generate(layout, &err) != nullptr);
    CHECK(build(plan, native, JitMaxFilters(native, v), v, in_floats).empty());
    layout.check_input = true;
    CHECK(JitKernel::Generate(layout, &err) == nullptr);
    CHECK(err == "register tile does not fit the register file");
    // ... and one without the per-column check flags.
    CHECK(build(plan, native, 1, 1, in_floats).empty());
    layout.check_input = true;
    CHECK(JitKernel::Generate(layout, &err) == nullptr);
    CHECK(err == "input check flags do not match the columns");
    // An output prefetch distance that a displacement cannot carry.
    for (int64_t bad : {int64_t(-16), int64_t(1) << 30}) {
      CHECK(build(plan, native, 1, 1, in_floats).empty());
      layout.prefetch_out_floats = bad;
      CHECK(JitKernel::Generate(layout, &err) == nullptr);
      CHECK(err == "output prefetch distance out of range");
    }
  }
  CHECK(build(plan, JitIsa::kAvx512, 0, 0, plane * (ic - 1)) == "input buffer too small for one tile");
  {
    PatternPlan p = plan;
    p.index[3] = ic;  // a channel past the input
    CHECK(build(p, JitIsa::kAvx512, 0, 0, in_floats) == "kernel input channel out of range");
    p = plan;
    p.index[p.offset[1]] = -5;
    CHECK(build(p, JitIsa::kAvx512, 0, 0, in_floats) == "kernel input channel out of range");
    p = plan;
    p.offset[1] = p.offset[2] + 1;
    CHECK(!build(p, JitIsa::kAvx512, 0, 0, in_floats).empty());
    p = plan;
    p.reorder[1] = p.reorder[0];
    CHECK(build(p, JitIsa::kAvx512, 0, 0, in_floats) == "an output channel appears twice");
    p = plan;
    p.fkw_weights.pop_back();
    CHECK(build(p, JitIsa::kAvx512, 0, 0, in_floats) == "FKW weights shorter than the kernels");
    p = plan;
    p.pattern_taps[0][0] = 9;
    CHECK(build(p, JitIsa::kAvx512, 0, 0, in_floats) == "pattern tap outside the kernel");
    p = plan;
    p.offset[1] = -1;  // found by the random damage below under ASan
    CHECK(build(p, JitIsa::kAvx512, 0, 0, in_floats) == "inconsistent FKW offsets");
    p = plan;
    p.pattern_taps[0].assign(kMaxTaps + 1, 0);
    CHECK(build(p, JitIsa::kAvx512, 0, 0, in_floats) == "pattern with too many taps");
    p = plan;
    p.stride[1] = p.stride[2] + 1;
    CHECK(build(p, JitIsa::kAvx512, 0, 0, in_floats) == "inconsistent FKW pattern runs");
  }
  // Random damage to the plan's arrays: either a clear refusal or a layout
  // whose code, run on exactly-sized buffers (ASan in CI), stays inside them.
  int refused = 0, ran = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    PatternPlan p = plan;
    std::vector<int32_t>* arrays[] = {&p.offset, &p.reorder, &p.index, &p.stride};
    std::vector<int32_t>& a = *arrays[rng() % 4];
    const int32_t vals[] = {-1, 0, 1, ic, oc, 1 << 30, int32_t(rng() % 64)};
    a[rng() % a.size()] = vals[rng() % 7];
    if (rng() % 4 == 0) {  // and a pattern's tap list
      std::vector<int>& pt = p.pattern_taps[rng() % p.pattern_taps.size()];
      pt[rng() % pt.size()] = vals[rng() % 7];
    }
    const std::string why = build(p, native, 0, 0, in_floats);
    if (!why.empty()) { ++refused; continue; }
    std::string gen_err;
    auto k = JitKernel::Generate(layout, &gen_err);
    if (!k) continue;  // no generator for this ISA in this build
    std::vector<float> in(in_floats, 1.f), out(size_t(oc) * out_plane);
    std::string cpu_err;
    if (ResolveJitIsa(SelectKernelSet("auto", &cpu_err), native, &cpu_err) != native)
      continue;  // generated, but this CPU cannot run it
    const int64_t tiles = (out_plane - JitLanes(native)) / JitLanes(native);
    for (int blk = 0; blk < k->num_blocks(); ++blk)
      CHECK(k->Run(blk, in.data(), in_floats, out.data(), out.size(), 0, tiles));
    ++ran;
  }
  CHECK(refused > 0);
  std::printf("damaged plans: %d refused, %d generated and ran in bounds\n", refused, ran);
  // Run() bounds.
#if defined(__aarch64__)
  CHECK(build(plan, JitIsa::kNeon, 0, 0, in_floats).empty());
#else
  CHECK(build(plan, JitIsa::kAvx2, 0, 0, in_floats).empty());
#endif
  std::string gen_err;
  auto k = JitKernel::Generate(layout, &gen_err);
  CHECK(JitCompiled() == (k != nullptr));
  if (k) {
    std::vector<float> in(in_floats), out(size_t(oc) * out_plane);
    CHECK(!k->Run(-1, in.data(), in_floats, out.data(), out.size(), 0, 1));
    CHECK(!k->Run(k->num_blocks(), in.data(), in_floats, out.data(), out.size(), 0, 1));
    CHECK(!k->Run(0, in.data(), in_floats, out.data(), out.size(), -8, 1));
    CHECK(!k->Run(0, in.data(), in_floats, out.data(), out.size(), 0, out_plane / k->layout().TileLen() + 1));
    // Counts whose products would wrap a signed 64-bit end position.
    CHECK(!k->Run(0, in.data(), in_floats, out.data(), out.size(), 0, INT64_MAX / 2));
    CHECK(!k->Run(0, in.data(), in_floats, out.data(), out.size(), INT64_MAX - 4, 1));
    CHECK(!k->Run(0, in.data(), in_floats - 1, out.data(), out.size(), 0, 1));
    CHECK(!k->Run(0, in.data(), in_floats, out.data(), out.size() - 1, 0, 1) ||
          k->layout().blocks[0].out_channel.size() < size_t(oc));
    CHECK(k->code_bytes() > 0 && k->generate_ms() >= 0);
  } else {
    CHECK(gen_err.find("libxbyak-dev") != std::string::npos);
  }
}

// Every set's Inf/NaN scan and copy against a scalar check: lengths around
// the vector widths (the masked tails), a value at each position, -0 and
// the largest finite floats (finite), an offset start (unaligned).
TEST_CASE(KernelSetScansAndCopiesNonFinite) {
  const float specials[] = {INFINITY, -INFINITY, NAN, -NAN};
  const float finite[] = {-0.f, 3.4028235e38f, -3.4028235e38f, 1.1754944e-38f, 1e-45f};
  for (const KernelSet* set : UsableSets()) {
    for (int n = 0; n <= 70; ++n) {
      std::vector<float> src(n + 3), dst(n + 3, 7.f);
      for (int i = 0; i < n + 3; ++i) src[i] = finite[i % 5] + 0.25f * i;
      const float* x = src.data() + 1;  // unaligned start
      CHECK(!set->any_non_finite(x, n));
      CHECK(!set->copy_non_finite(x, dst.data() + 1, n));
      CHECK(dst[0] == 7.f && dst[n + 1] == 7.f);  // nothing outside [0, n) written
      for (int i = 0; i < n; ++i) CHECK(std::memcmp(&dst[1 + i], &x[i], 4) == 0);
      for (int i = 0; i < n; ++i)
        for (float v : specials) {
          src[1 + i] = v;
          CHECK(set->any_non_finite(x, n));
          CHECK(!set->any_non_finite(x, i));  // the value just past the end is not read
          CHECK(set->copy_non_finite(x, dst.data() + 1, n));
          CHECK(std::memcmp(&dst[1 + i], &v, 4) == 0);
          src[1 + i] = finite[(i + 1) % 5] + 0.25f * (i + 1);
        }
    }
  }
}

// Every set's transpose against index arithmetic: sizes around the 8 x 8
// and 16 x 16 blocks, destinations with whole-line strides starting 0, 1, 5
// and 15 floats into a line (AVX-512: 16 x 16 blocks, the rows rotated into
// masked line stores when not line-aligned), nothing written outside the
// transposed cells, and an Inf or NaN anywhere reported.  The same for the
// streaming variant (line-aligned rows: non-temporal stores on x86).
TEST_CASE(KernelSetTransposesMatchIndexing) {
  std::mt19937 rng(31);
  for (const auto transpose : UsableTransposes())
    for (int rows : {1, 7, 8, 15, 16, 17, 32, 40})
      for (int cols : {1, 8, 9, 16, 31, 33})
        for (int offset : {0, 1, 5, 15}) {
          const int64_t ss = cols + 3, ds = (rows + 15) / 16 * 16 + 16;
          std::vector<float> src(size_t(rows) * ss);
          for (float& v : src) v = float(rng() % 1000) - 500.f;
          LineFloats buf(size_t(cols) * ds + 32, -7.f);
          float* dst = buf.data() + 16 + offset;
          CHECK(!transpose(src.data(), ss, dst, ds, rows, cols));
          for (int j = 0; j < cols; ++j)
            for (int64_t i = -offset; i < ds - offset - 16; ++i) {
              const float want = i >= 0 && i < rows ? src[size_t(i * ss + j)] : -7.f;
              CHECK(dst[j * ds + i] == want);
            }
          for (int k = 0; k < 3; ++k) {
            const int i = int(rng() % rows), j = int(rng() % cols);
            const float keep = src[size_t(i * ss + j)];
            src[size_t(i * ss + j)] = k == 0 ? INFINITY : k == 1 ? -INFINITY : NAN;
            CHECK(transpose(src.data(), ss, dst, ds, rows, cols));
            src[size_t(i * ss + j)] = keep;
          }
        }
}

// Sources narrower than 8 columns (AVX-512: loaded whole and picked out by
// permutes for row strides up to 16, gathered beyond): an image of 1-7
// channels into planes, or every other pixel of it into phase planes
// (stride 2 x channels), rows ending inside the last vector of the source
// buffer (nothing read past it: ASan), Inf/NaN reported.
TEST_CASE(KernelSetTransposesNarrowSources) {
  std::mt19937 rng(37);
  for (const auto transpose : UsableTransposes())
    for (int cols = 1; cols < 8; ++cols)
      for (int stride_px : {1, 2, 3, 4, 6})
        for (int rows : {8, 9, 15, 16, 17, 31, 33, 113}) {
          const int64_t ss = int64_t(stride_px) * cols, ds = rows + 5;
          // Exactly the floats the rows reach, so an over-read is caught.
          std::vector<float> src(size_t((rows - 1) * ss + cols));
          for (float& v : src) v = float(rng() % 1000) - 500.f;
          std::vector<float> dst(size_t(cols) * ds, -7.f);
          CHECK(!transpose(src.data(), ss, dst.data(), ds, rows, cols));
          for (int j = 0; j < cols; ++j)
            for (int64_t i = 0; i < ds; ++i)
              CHECK(dst[j * ds + i] == (i < rows ? src[size_t(i * ss + j)] : -7.f));
          const int i = int(rng() % rows), j = int(rng() % cols);
          src[size_t(i * ss + j)] = NAN;
          CHECK(transpose(src.data(), ss, dst.data(), ds, rows, cols));
        }
}

TEST_CASE(KernelSetForThisIsa) {
  // The build compiles the set the ISA promises: NEON on AArch64, AVX-512 and
  // AVX2+FMA (next to the generic set) on x86-64, best first.
  std::string names;
  for (const KernelSet* set : CompiledKernelSets()) names += std::string(set->isa) + " ";
#if defined(__aarch64__)
  CHECK(names == "neon ");
  std::string err;
  CHECK(SelectKernelSet("auto", &err) != nullptr && std::string(SelectKernelSet("auto", &err)->isa) == "neon");
#elif defined(__x86_64__)
  CHECK(names == "avx512 avx2_fma generic ");
  std::string err;
  const KernelSet* best = SelectKernelSet("auto", &err);
  const CpuFeatures& cpu = DetectCpu();
  CHECK(best != nullptr &&
        std::string(best->isa) == (cpu.avx512f && cpu.avx2 && cpu.fma ? "avx512"
                                   : cpu.avx2 && cpu.fma             ? "avx2_fma"
                                                                     : "generic"));
  CHECK(best->pattern_lanes == (std::string(best->isa) == "avx512" ? 16 : 8));
#endif
}

TEST_CASE(ThreadPoolCoversEveryIndexOnce) {
  ThreadPool pool(3);
  std::vector<int> hits(1000, 0);
  pool.ParallelFor(1000, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) ++hits[i];
  });
  bool all_once = true;
  for (int h : hits) all_once = all_once && h == 1;
  CHECK(all_once);
}


// Each thread starts on its own share (the caller on [0, n/2) of 2 threads,
// the worker on [n/2, n)) and takes chunks of the other's only when its own
// share is done: a thread held up on its first chunk loses the rest of its
// share to the other, and every index still runs exactly once.
TEST_CASE(ThreadPoolSharesAndStealing) {
  {
    // Each thread starts on its own share: the caller's first chunk begins
    // at 0 and the worker's, if it gets one, in [n/2, n) (it takes from the
    // caller's share only once its own is claimed, and the caller claims
    // its own first, so nothing of the caller's share is left by then).
    // A pool handing out chunks first come, first served gives the worker
    // one of the first chunks.  This holds however late either thread is.
    ThreadPool pool(2);
    const std::thread::id caller = std::this_thread::get_id();
    int worker_ran = 0;
    for (int call = 0; call < 5; ++call) {
      const int64_t n = 32;
      std::atomic<int64_t> caller_first{-1}, worker_first{-1};
      pool.ParallelFor(n, 1, [&](int64_t b, int64_t e) {
        int64_t unset = -1;
        (std::this_thread::get_id() == caller ? caller_first : worker_first)
            .compare_exchange_strong(unset, b);
        for (int64_t i = b; i < e; ++i) std::this_thread::sleep_for(std::chrono::microseconds(300));
      });
      CHECK(caller_first.load() == 0);
      CHECK(worker_first.load() == -1 || worker_first.load() >= n / 2);
      worker_ran += worker_first.load() >= 0;
    }
    CHECK(worker_ran > 0);
  }
  for (int slow : {0, 1}) {  // 0: the caller is held up, 1: the worker
    ThreadPool pool(2);
    const std::thread::id caller = std::this_thread::get_id();
    for (int call = 0; call < 5; ++call) {
      const int64_t n = 64;
      std::vector<std::atomic<int>> hits(n);
      std::vector<std::atomic<int>> by_caller(n);
      std::atomic<bool> held{false};
      pool.ParallelFor(n, 1, [&](int64_t b, int64_t e) {
        const bool is_caller = std::this_thread::get_id() == caller;
        // The held-up thread's first chunk of its own share waits 100 ms
        // (far longer than the other thread needs to wake).
        const bool own = is_caller ? b < n / 2 : b >= n / 2;
        if (own && is_caller == (slow == 0) && !held.exchange(true))
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        for (int64_t i = b; i < e; ++i) {
          hits[i].fetch_add(1);
          by_caller[i].store(is_caller);
        }
      });
      bool once = true;
      int64_t caller_in_first = 0, caller_in_second = 0;
      for (int64_t i = 0; i < n; ++i) {
        once = once && hits[i].load() == 1;
        (i < n / 2 ? caller_in_first : caller_in_second) += by_caller[i].load();
      }
      CHECK(once);
      if (slow == 0) {
        // The worker finished its share and took most of the caller's.
        CHECK(caller_in_second == 0 && caller_in_first < n / 2);
      } else {
        // The caller did its share and took most of the worker's.
        CHECK(caller_in_first == n / 2 && caller_in_second > 0);
      }
    }
  }
}
// TailStealRuns (the banded conv's runs): one thread alone takes its own run
// front to back, then the fullest run's items from the back; empty and
// unowned runs; every item exactly once under real threads, a held-up
// owner's run finished from its end by the others.
TEST_CASE(TailStealRunsTakeOwnFrontThenOthersBack) {
  {
    TailStealRuns runs({0, 3, 8, 8, 10});  // runs of 3, 5, 0 and 2 items
    CHECK(runs.num_runs() == 4 && runs.PeekOwn(0) == 0 && runs.PeekOwn(2) == -1);
    std::vector<std::pair<int64_t, bool>> got;
    int64_t item;
    bool own;
    while (runs.Next(0, &item, &own)) got.emplace_back(item, own);
    // Own 0, 1, 2; then run 1 (5 left) from its back: 7, 6; then runs 1
    // and 3 hold 3 and 2: 5; then 2 and 2, the first fullest: 4; ...
    const std::vector<std::pair<int64_t, bool>> want = {
        {0, true}, {1, true}, {2, true}, {7, false}, {6, false},
        {5, false}, {4, false}, {9, false}, {3, false}, {8, false}};
    CHECK(got == want);
    CHECK(!runs.Next(3, &item, &own) && runs.PeekOwn(1) == -1);
    // An owner index outside the runs only steals.
    TailStealRuns more({0, 2});
    CHECK(more.Next(5, &item, &own) && item == 1 && !own);
    CHECK(more.Next(-1, &item, &own) && item == 0 && !own && !more.Next(0, &item, &own));
    TailStealRuns none({});
    CHECK(none.num_runs() == 0 && !none.Next(0, &item, &own));
  }
  for (int threads : {2, 3, 4}) {
    ThreadPool pool(threads);
    for (int call = 0; call < 20; ++call) {
      const int64_t per_run = 7 + call % 5;
      std::vector<int64_t> bounds;
      for (int r = 0; r <= threads; ++r) bounds.push_back(r * per_run);
      TailStealRuns runs(bounds);
      std::vector<std::atomic<int>> hits(size_t(threads * per_run));
      std::vector<std::atomic<int>> taker(hits.size());
      std::atomic<bool> in_order{true};  // CHECK is not thread-safe
      pool.ParallelFor(threads, 1, [&](int64_t p0, int64_t p1) {
        for (int self = int(p0); self < p1; ++self) {
          int64_t item;
          bool own;
          bool held = false;
          int64_t last_own = -1;
          while (runs.Next(self, &item, &own)) {
            if (own) {
              if (!(item > last_own && item >= bounds[self] && item < bounds[self + 1]))
                in_order.store(false);
              last_own = item;
            }
            // The owner of run 0 is held up on its first item (call % 2):
            // the others finish its run from the end.
            if (own && self == 0 && call % 2 == 1 && !held) {
              held = true;
              std::this_thread::sleep_for(std::chrono::milliseconds(20));
            }
            hits[item].fetch_add(1);
            taker[item].store(self);
          }
        }
      });
      bool once = true;
      for (auto& h : hits) once = once && h.load() == 1;
      CHECK(once && in_order.load());
      if (call % 2 == 1) CHECK(taker[per_run - 1].load() != 0);
    }
  }
}

TEST_CASE(DispatchRejectsUnknownKernel) {
  std::string err;
  CHECK(SelectKernelSet("auto", &err) != nullptr && err.empty());
  CHECK(SelectKernelSet("reference", &err) == nullptr && err.empty());
  SelectKernelSet("sse9", &err);
  CHECK(err.find("unknown kernel set 'sse9'") != std::string::npos);
}

int main() { return cocopie_test::RunAll(); }
