#include "cc/kernels/dispatch.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>  // _mm_sfence (SSE: every x86-64 CPU)
#endif

#include "cc/kernels/jit_pattern.h"
#include "cc/kernels/phase_split.h"
#include "cc/kernels/reference.h"

namespace cocopie {

#if defined(COCOPIE_HAVE_GENERIC_KERNELS)
namespace generic {
extern const KernelSet kKernelSet;
}
#endif
#if defined(COCOPIE_HAVE_NEON_KERNELS)
namespace neon {
extern const KernelSet kKernelSet;
}
#endif
#if defined(COCOPIE_HAVE_AVX2_KERNELS)
namespace avx2_fma {
extern const KernelSet kKernelSet;
}
#endif
#if defined(COCOPIE_HAVE_AVX512_KERNELS)
namespace avx512 {
extern const KernelSet kKernelSet;
double TimeFmaChains(bool zmm, int64_t rounds);
}
#endif

namespace {

// CpuFeatures::Fma512FullRate: lanes per second of zmm FMAs over those of
// ymm FMAs, the fastest of interleaved tries of each: about 2 on full-rate
// cores, about 1 on half-rate ones.  A core just woken from idle ran its
// first ~0.2 ms slowly and unevenly (a ratio of 1.32-1.41 where it is 1.00,
// AMD Zen 4), so tries go on while the ratio is between the two, up to 40.
bool MeasureFma512FullRate() {
#if defined(COCOPIE_HAVE_AVX512_KERNELS)
  constexpr int64_t kRounds = 4096;  // ~50 k FMAs: 7-30 us a try
  double zmm = 1e9, ymm = 1e9, ratio = 0;
  for (int i = 0; i < 40; ++i) {
    zmm = std::min(zmm, avx512::TimeFmaChains(true, kRounds));
    ymm = std::min(ymm, avx512::TimeFmaChains(false, kRounds));
    ratio = zmm > 0 ? 2 * ymm / zmm : 0;
    if (i >= 4 && (ratio < 1.2 || ratio > 1.8)) break;
  }
  return ratio > 1.5;
#else
  return false;
#endif
}

}  // namespace

const CpuFeatures& DetectCpu() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.avx512f = __builtin_cpu_supports("avx512f");
#elif defined(__aarch64__)
    f.neon = true;  // mandatory on AArch64
#endif
    return f;
  }();
  return features;
}

bool CpuFeatures::Fma512FullRate() const {
  // COCOPIE_FMA512_RATE=full|half states it instead (tests; a machine whose
  // probe is disturbed).
  static const bool full = [] {
    const CpuFeatures& cpu = DetectCpu();
    const char* rate = std::getenv("COCOPIE_FMA512_RATE");
    const std::string forced = rate != nullptr ? rate : "";
    return cpu.avx512f && cpu.avx2 && cpu.fma &&
           (forced == "full" || (forced != "half" && MeasureFma512FullRate()));
  }();
  return full;
}

std::string CpuFeatures::ToString() const {
  std::string s;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!s.empty()) s += ",";
    s += name;
  };
  add(avx2, "avx2");
  add(fma, "fma");
  add(avx512f, "avx512f");
  add(neon, "neon");
  add(Fma512FullRate(), "fma512_full_rate");
  return s.empty() ? "baseline" : s;
}

const std::vector<const KernelSet*>& CompiledKernelSets() {
  static const std::vector<const KernelSet*> sets = [] {
    std::vector<const KernelSet*> v;
#if defined(COCOPIE_HAVE_AVX512_KERNELS)
    v.push_back(&avx512::kKernelSet);
#endif
#if defined(COCOPIE_HAVE_AVX2_KERNELS)
    v.push_back(&avx2_fma::kKernelSet);
#endif
#if defined(COCOPIE_HAVE_NEON_KERNELS)
    v.push_back(&neon::kKernelSet);
#endif
#if defined(COCOPIE_HAVE_GENERIC_KERNELS)
    v.push_back(&generic::kKernelSet);
#endif
    return v;
  }();
  return sets;
}

namespace {

bool Supported(const KernelSet* set) {
  const std::string isa = set->isa;
  if (isa == "avx2_fma") return DetectCpu().avx2 && DetectCpu().fma;
  if (isa == "avx512") return DetectCpu().avx512f && DetectCpu().avx2 && DetectCpu().fma;
  if (isa == "neon") return DetectCpu().neon;
  return true;  // generic runs anywhere
}

}  // namespace

std::vector<std::string> KernelChoices() {
  std::vector<std::string> names = {"auto", "reference"};
  for (const KernelSet* set : CompiledKernelSets()) names.push_back(set->isa);
  return names;
}

const KernelSet* SelectKernelSet(const std::string& choice, std::string* error) {
  error->clear();
  if (choice == "reference") return nullptr;
  for (const KernelSet* set : CompiledKernelSets()) {
    if (choice == "auto" && Supported(set)) return set;
    if (choice == set->isa) {
      if (Supported(set)) return set;
      *error = "kernel set '" + choice + "' is not supported by this CPU (" +
               DetectCpu().ToString() + ")";
      return nullptr;
    }
  }
  std::string known;
  for (const auto& n : KernelChoices()) known += (known.empty() ? "" : ", ") + n;
  *error = "unknown kernel set '" + choice + "' (choose one of: " + known + ")";
  return nullptr;
}

JitIsa ResolveJitIsa(const KernelSet* set, JitIsa requested, std::string* error) {
  error->clear();
  const CpuFeatures& cpu = DetectCpu();
  const bool avx2 = cpu.avx2 && cpu.fma;
  switch (requested) {
    case JitIsa::kNone: return JitIsa::kNone;
    case JitIsa::kAuto:
      // Generated code only where the user did not ask for a plain kernel
      // set, and only for an ISA this CPU runs.
      if (!JitCompiled() || set == nullptr || std::string(set->isa) == "generic")
        return JitIsa::kNone;
      if (cpu.avx512f) return JitIsa::kAvx512;
      if (avx2) return JitIsa::kAvx2;
      return cpu.neon ? JitIsa::kNeon : JitIsa::kNone;
    case JitIsa::kAvx2:
    case JitIsa::kAvx512:
    case JitIsa::kNeon: {
      if (!JitCompiled()) {
#if defined(__aarch64__)
        *error = "jit: this build has no code generator (built with COCOPIE_JIT=OFF)";
#else
        *error = "jit: this build has no code generator (install libxbyak-dev and rebuild)";
#endif
        return JitIsa::kNone;
      }
      const bool ok = requested == JitIsa::kAvx512 ? cpu.avx512f
                      : requested == JitIsa::kAvx2 ? avx2
                                                   : cpu.neon;
      if (!ok) {
        *error = std::string("jit: '") + JitIsaName(requested) +
                 "' is not supported by this CPU (" + cpu.ToString() + ")";
        return JitIsa::kNone;
      }
      return requested;
    }
  }
  return JitIsa::kNone;
}

std::vector<std::string> JitChoices() {
  std::vector<std::string> v = {"auto", "static"};
  if (JitCompiled()) {
    if (DetectCpu().avx2 && DetectCpu().fma) v.push_back(JitIsaName(JitIsa::kAvx2));
    if (DetectCpu().avx512f) v.push_back(JitIsaName(JitIsa::kAvx512));
    if (DetectCpu().neon) v.push_back(JitIsaName(JitIsa::kNeon));
  }
  return v;
}

std::string KernelName(const KernelSet* set, const char* op) {
  return std::string("f32_") + op + "__" + (set ? set->isa : "reference");
}

namespace {

// Rows are cheap to split, but keep a few per task so threads amortise the
// wake-up on small layers.
int64_t GrainFor(int64_t macs_per_row) {
  constexpr int64_t kMinMacsPerTask = 1 << 16;
  return std::max<int64_t>(1, kMinMacsPerTask / std::max<int64_t>(1, macs_per_row));
}

}  // namespace

namespace {

// Stock LiteRT's XNNPACK path multiplies the padding as zeros, so an Inf or
// NaN weight at a tap that falls outside the input makes that output NaN
// (0 x Inf); the direct kernels and the reference skip such taps.  Called
// only for filters holding a non-finite weight (`bad`: [tap * out_c + o]).
void PoisonPaddedTaps(const ConvShape& s, const std::vector<uint8_t>& bad, float* output,
                      ThreadPool* pool) {
  ParallelFor(pool, static_cast<int64_t>(s.batch) * s.out_h, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int oy = static_cast<int>(r % s.out_h);
      for (int ox = 0; ox < s.out_w; ++ox) {
        float* out = output + (r * s.out_w + ox) * s.out_c;
        for (int ky = 0; ky < s.k_h; ++ky)
          for (int kx = 0; kx < s.k_w; ++kx) {
            const int iy = oy * s.stride_h - s.pad_top + ky * s.dil_h;
            const int ix = ox * s.stride_w - s.pad_left + kx * s.dil_w;
            if (iy >= 0 && iy < s.in_h && ix >= 0 && ix < s.in_w) continue;
            const uint8_t* b = bad.data() + static_cast<size_t>(ky * s.k_w + kx) * s.out_c;
            for (int o = 0; o < s.out_c; ++o)
              if (b[o]) out[o] = NAN;
          }
      }
    }
  });
}

}  // namespace

void RunConv2D(const KernelSet* set, const ConvShape& s, const PackedConv& w,
               const float* filter_ohwi, const float* input, float* output,
               ThreadPool* pool) {
  if (set == nullptr) {
    Conv2DReference(s, input, filter_ohwi, w.bias.data(), output);
  } else {
    const int64_t rows = static_cast<int64_t>(s.batch) * s.out_h;
    const int64_t macs_row = static_cast<int64_t>(s.out_w) * s.out_c * s.k_h * s.k_w * s.in_c;
    ParallelFor(pool, rows, GrainFor(macs_row), [&](int64_t b, int64_t e) {
      set->conv2d(s, w, input, output, b, e);
    });
  }
  if (!w.nonfinite_taps.empty()) PoisonPaddedTaps(s, w.nonfinite_taps, output, pool);
}

void RunDepthwise(const KernelSet* set, const ConvShape& s,
                  const PackedDepthwise& w, const float* input, float* output,
                  ThreadPool* pool) {
  if (set == nullptr) {
    DepthwiseConv2DReference(s, input, w.hwc.data(), w.bias.data(), output);
  } else {
    const int64_t rows = static_cast<int64_t>(s.batch) * s.out_h;
    const int64_t macs_row = static_cast<int64_t>(s.out_w) * s.out_c * s.k_h * s.k_w;
    ParallelFor(pool, rows, GrainFor(macs_row), [&](int64_t b, int64_t e) {
      set->depthwise(s, w, input, output, b, e);
    });
  }
  if (!w.nonfinite_taps.empty()) PoisonPaddedTaps(s, w.nonfinite_taps, output, pool);
}

bool DepthwisePlanarApplies(const KernelSet* set, const ConvShape& s, const PackedDepthwise& w) {
  // Its phase planes hold a band's window span: a huge dilation or stride
  // would make them gigabytes (and overflow int); such a layer keeps the
  // NHWC kernel, which allocates nothing.
  const int64_t rows_off = int64_t(s.k_h - 1) * s.dil_h / std::max(1, s.stride_h);
  const int64_t cols_off = int64_t(s.k_w - 1) * s.dil_w / std::max(1, s.stride_w);
  const int64_t phase_floats =
      int64_t(s.stride_h) * s.stride_w * ((s.out_h + rows_off + 1) * (s.out_w + cols_off) + 32);
  if (s.stride_h < 1 || s.stride_w < 1 || s.dil_h < 1 || s.dil_w < 1 ||
      s.stride_h > kMaxDepthwisePlanarStride || s.stride_w > kMaxDepthwisePlanarStride ||
      rows_off > s.out_h + 64 || cols_off > s.out_w + 64 ||
      phase_floats > kMaxDepthwisePlanarScratch)
    return false;
  // Inf/NaN weights keep the NHWC kernel, whose PoisonPaddedTaps gives
  // stock TFLite's products with the padding.
  return set != nullptr && set->depthwise_planar != nullptr && s.batch == 1 &&
         s.k_h * s.k_w <= kDepthwisePlanarMaxTaps &&
         w.nonfinite_taps.empty() && w.tap_begin.size() == static_cast<size_t>(s.out_c) + 1 &&
         s.out_c == w.out_c && s.k_h == w.k_h && s.k_w == w.k_w;
}

bool DepthwiseBlocksApply(const KernelSet* set, const ConvShape& s) {
  return set != nullptr && set->depthwise_blocks && s.batch == 1 && s.depth_multiplier == 1 &&
         s.stride_h >= 2 && s.stride_w >= 2 &&
         static_cast<int64_t>(s.in_h) * s.in_w <= kDepthwiseBlocksMaxPositions &&
         s.k_h * s.k_w <= kDepthwisePlanarMaxTaps;
}

int64_t DepthwiseBlockTaps(const PackedDepthwise& w) {
  int64_t total = 0;
  for (int c0 = 0; c0 < w.out_c; c0 += kDepthwiseBlockChannels) {
    const int c1 = std::min(w.out_c, c0 + kDepthwiseBlockChannels);
    total += int64_t(__builtin_popcountll(DepthwiseTapUnion(w, c0, c1))) * (c1 - c0);
  }
  return total;
}

// A planar tensor at least this large lies mostly beyond L2 (1-2 MiB per
// core on the machines met) when the next op reads it, or when its writer
// stores it: its lines come from L3, whose latency the hardware prefetchers
// hide badly for planes, each a few 4 KiB pages of its own (their streams
// restart at every page).  Kernels on such tensors ask for lines ahead
// (DepthwisePrefetchesPlanes, JitLayout::prefetch_out_floats); measured on an
// Intel Xeon with 2 MiB L2, docs/engine.md section 47.  Smaller tensors are
// in L2 already, and the requests would only cost instructions.
constexpr int64_t kFarTensorBytes = int64_t(1) << 20;

namespace {

// Whole planes per task while there are channels enough to keep every
// thread busy; otherwise bands of rows.
int DepthwiseBands(const ConvShape& s, int threads) {
  const int want_tasks = 4 * threads;
  return s.out_c >= want_tasks ? 1 : std::min(s.out_h, (want_tasks + s.out_c - 1) / s.out_c);
}

}  // namespace

bool DepthwisePrefetchesPlanes(const KernelSet* set, const ConvShape& s, int threads) {
  return !DepthwiseBlocksApply(set, s) && DepthwiseBands(s, threads) == 1 &&
         s.depth_multiplier == 1 &&
         int64_t(s.in_h) * s.in_w * s.in_c * int64_t(sizeof(float)) >= kFarTensorBytes;
}

void RunDepthwisePlanar(const KernelSet* set, const ConvShape& s, const PackedDepthwise& w,
                        const float* input, float* output, ThreadPool* pool) {
  DepthwisePlanarArgs a;
  a.s = &s;
  a.w = &w;
  a.input = input;
  a.output = output;
  if (DepthwiseBlocksApply(set, s)) {
    a.channel_blocks = true;
    const int64_t blocks = (s.out_c + kDepthwiseBlockChannels - 1) / kDepthwiseBlockChannels;
    ParallelFor(pool, blocks, 1, [&](int64_t b, int64_t e) { set->depthwise_planar(a, b, e); });
    return;
  }
  const int threads = pool == nullptr ? 1 : pool->num_threads();
  const int bands = DepthwiseBands(s, threads);
  a.band_rows = (s.out_h + bands - 1) / bands;
  a.prefetch_next = DepthwisePrefetchesPlanes(set, s, threads);
  const int64_t tasks = static_cast<int64_t>(s.out_c) * ((s.out_h + a.band_rows - 1) / a.band_rows);
  const int64_t taps = w.tap_begin.empty() ? 0 : w.tap_begin.back() / std::max(1, s.out_c);
  const int64_t macs_task = static_cast<int64_t>(a.band_rows) * s.out_w * std::max<int64_t>(1, taps);
  ParallelFor(pool, tasks, GrainFor(macs_task), [&](int64_t b, int64_t e) {
    set->depthwise_planar(a, b, e);
  });
}

void RunFullyConnected(const KernelSet* set, int batch,
                       const PackedFullyConnected& w, float act_min,
                       float act_max, const float* input, float* output,
                       ThreadPool* pool) {
  if (set == nullptr) {
    FullyConnectedReference(batch, w.in, w.out, input, w.oi, w.bias.data(), act_min, act_max,
                            output);
    return;
  }
  // By input, one range of units per thread: its share of each row of
  // weights is then one long stream (4096 -> 4096 at 1 thread, half the
  // inputs zero: 1.55 ms in one range against 1.92 in ranges of 1024 units,
  // AMD Zen 4, docs/engine.md section 39).
  int64_t grain = GrainFor(static_cast<int64_t>(batch) * w.in);
  if (!w.io.empty() && pool != nullptr) {
    const int64_t threads = pool->num_threads();
    grain = std::max(grain, ((w.out + threads - 1) / threads + 15) / 16 * 16);
  }
  ParallelFor(pool, w.out, grain,
              [&](int64_t b, int64_t e) {
                set->fully_connected(batch, w, act_min, act_max, input, output, b, e);
              });
}

namespace {

int RoundUp(int v, int m) { return (v + m - 1) / m * m; }

constexpr size_t kL1BlockBytes = 16 * 1024;
constexpr int kMinTasks = 8;
// Below this many register tiles per image the generated code runs about
// once per inference, and fetching it costs more than the FMAs it saves
// (VGG-16 CIFAR's 4x4 and 2x2 maps, 2 and 1 tiles, ran 1.5-2x slower
// generated than on the static small-map kernels).  Since the driver reads
// code in ahead (TouchLines), 7x7 and 8x8 maps (4 and 5 tiles) run faster
// generated: ResNet-50's 7x7 3x3 convs 0.41-0.44 ms against 0.50-0.52 static,
// VGG-16 CIFAR's 8x8 ones 0.07-0.12 against 0.09-0.16 ms (AMD Zen 5, caches
// evicted; they needed 5 and 8 tiles before, docs/engine.md section 21).
// kAuto only: an explicit ISA always generates.
constexpr int64_t kMinJitTiles = 4;
// Positions per call of a generated block: each code segment is fetched once
// per call and reused for every tile of it, so calls are long (56x56x128 ran
// 1.27x and 28x28x256 1.69x faster with whole-map calls than with one row
// per call, Sapphire Rapids, docs/engine.md), as long as the threads still get
// kJitTasksPerThread tasks each to balance.
constexpr int64_t kJitTaskPositions = 1024;
// ... but a segment reads its rows of every input plane it touches for each
// tile of the call, and a 1x1 conv's segment touches ~200 planes: keep those
// rows within this many bytes, so they stay in L2 across the segment (a
// 56x56 1x1 256->64 layer ran 1.35x faster with 128 positions per call than
// with 1024, AMD Zen 5, docs/engine.md section 15).
constexpr int64_t kJitCallInputBytes = 128 << 10;
// How far ahead a tile asks for its output lines (kFarTensorBytes).
constexpr int64_t kJitPrefetchOutTiles = 4;
constexpr int kJitTasksPerThread = 4;
// Code or data up to this size stays in a thread's L2 between its tasks.
constexpr int64_t kJitResidentBytes = 512 << 10;

// Whether the threads take a generated layer's tasks filter block by filter
// block (each thread runs a share of the code over every position range)
// rather than range by range (a share of the positions through all of the
// code): the order whose bytes from beyond L2 per thread are fewer.  A
// range-major thread fetches all the code, a filter-major one all the input
// planes.  MobileNetV2's 7x7 960 -> 160 convs (468 KB of code, 183 KB of
// input, 2 ranges at 2 threads) ran 0.098 -> 0.065 ms; layers with one range
// are the same either way (docs/engine.md section 34).
bool JitFilterMajor(int64_t code_bytes, int64_t input_bytes, int64_t ranges, int64_t blocks,
                    int threads) {
  if (ranges <= 1 || blocks <= 1) return false;
  const auto refetch = [](int64_t bytes, int64_t count) {
    return bytes > kJitResidentBytes ? count : 1;
  };
  const int64_t t = std::max(1, threads);
  const int64_t range_major = input_bytes / t + code_bytes * refetch(code_bytes, (ranges + t - 1) / t);
  const int64_t filter_major = code_bytes / t + input_bytes * refetch(input_bytes, (blocks + t - 1) / t);
  return filter_major < range_major;
}
// Row bands (PatternBand): a band's input rows and its output rows each stay
// within this many bytes, together well inside the smallest L2 met so far
// (1 MiB per core, AMD Zen 4); layers whose whole padded input and output
// already fit run as one piece.
constexpr int64_t kJitBandBytes = 256 << 10;
constexpr int kJitMinBands = 4;

}  // namespace

double PredictedSpeedupOverDense(const PatternStats& st, JitIsa jit, int64_t dense_macs,
                                 int64_t edge_elements, bool one_by_one, bool in_place,
                                 double* saved) {
  if (saved != nullptr) *saved = 0;
  // Executed-MAC efficiency of the pattern kernel relative to XNNPACK's dense
  // convolution (56x56x128->128, 8 patterns, 1 thread; bench/bench_ablation.py
  // and bench/bench_engine.py).  Static kernels (AVX2): about 0.28 when every
  // filter has its own masks, 0.38 with 4-filter shared masks.  Generated
  // code does not depend on shared masks.  Kept a little below the measured
  // medians so that a near-tie stays with XNNPACK.
  double efficiency = st.max_group >= 4 ? 0.38 : st.max_group >= 2 ? 0.32 : 0.28;
  if (jit == JitIsa::kAvx512) efficiency = 0.60;
  if (jit == JitIsa::kAvx2) efficiency = 0.40;
  // Dense filters: each column feeds every filter of a block, and AVX-512
  // code then runs as fast as XNNPACK (kJitDenseMaxDepthAvx512's figures):
  // judged a tie, so such a conv is claimed only with a group whose layout
  // changes it saves.
  if (jit == JitIsa::kAvx512 && !one_by_one && st.Density() > kPatternMaxDensity) efficiency = 1.0;
  // NEON generated code has not been timed on ARM hardware (qemu here runs
  // it for correctness only): it is judged like the static kernels.
  // A 1x1 conv is a GEMM, XNNPACK's best kernel: in ResNet-50's residual
  // blocks (AMD Zen 5, AVX-512) generated 1x1 code that copied its planar
  // tensors into and out of padded planes ran 25-40 GMAC/s per executed MAC
  // against XNNPACK's ~115 dense, so 3.6x connectivity-pruned 1x1 convs only
  // tied (docs/engine.md section 15).  Reading and writing the planar
  // tensors in place (PatternGeometry::direct), the same layers ran 35-60
  // GMAC/s and the whole model 4-6% faster with them claimed (section 21):
  // two thirds of the ISA's 3x3 efficiency.
  if (one_by_one)
    efficiency = in_place && jit != JitIsa::kNone ? std::max(0.28, efficiency * 2 / 3)
                                                  : std::min(efficiency, 0.28);
  const double density = std::max(st.Density(), 1e-6);
  if (dense_macs <= 0) return efficiency / density;
  // The layout change (NHWC <-> padded CHW) at the node's edges, in
  // XNNPACK-MAC equivalents per element moved: about 15 measured (8x8 AVX
  // transposes of a 56x56x128 tensor: 0.12 ms each, the time XNNPACK spends
  // on 6 M MACs), doubled to cover the unaligned small tensors of
  // MobileNet-class layers (MobileNetV2 with connectivity-pruned 1x1 convs
  // ran 0.6x of XNNPACK when every 1x1 node was claimed on MACs alone).
  constexpr double kEdgeMacsPerElement = 30;
  const double ours = double(dense_macs) * density / efficiency +
                      kEdgeMacsPerElement * double(edge_elements);
  // XNNPACK's dense kernels starve on short filters: MobileNetV2's stem
  // (3x3 stride 2, 3 -> 32 channels, 27 weights per filter) took it 0.40 ms,
  // 27 GMAC/s, against 50-60 on the model's 1x1 convs (AMD Zen 4, 1 thread,
  // docs/engine.md section 28); generated code loads each input once for a
  // whole block of filters whatever the filter length.
  const double theirs = !one_by_one && st.Density() > kPatternMaxDensity && ShortFilters(st) &&
                                jit != JitIsa::kNone
                            ? 2.0 * double(dense_macs)
                            : double(dense_macs);
  if (saved != nullptr) *saved = theirs - ours;
  return theirs / ours;
}

namespace {

// Register tiles per image of generated code for a stride-1 conv of shape s
// (V = 1, the default tile); 0 without a generator.
// The delegate's cost model asks before any shape is validated (a file may
// declare an output of width 0): a map without positions has no tiles.
int64_t JitTilesOnMap(JitIsa isa, const ConvShape& s) {
  if (isa == JitIsa::kNone || isa == JitIsa::kAuto) return 0;
  if (s.out_h <= 0 || s.out_w <= 0 || s.k_w <= 0 || s.dil_w <= 0) return 0;
  const int64_t tile = JitLanes(isa);
  if (tile <= 0) return 0;
  const int64_t wp = s.out_w + int64_t(s.k_w - 1) * s.dil_w;
  const int64_t block = (wp + tile - 1) / tile * tile;
  const int64_t blocks = (int64_t(s.out_h) * wp + block - 1) / block;
  return blocks * block / tile;
}

// A generated 1x1 conv in place pays for its code only over enough tiles:
// ResNet-50's 7x7 ones (4 tiles) ran 28-31 GMAC/s in place, MobileNetV2's
// 20-25 (AMD Zen 5, 1 thread), no better than through copies, where the
// 14x14 ones (13 tiles) ran 33-44 and the larger maps 37-60.
constexpr int64_t kMinInPlaceTiles = 8;
// ... with claimed neighbours on both sides (no layout change at either
// edge, one thread pool), 4 tiles pay on AVX-512: ResNet-50's stage 5 ran
// 1.3-1.5x faster on the engine than on XNNPACK on AMD Zen 4, whose 512-bit
// FMAs run at half rate (docs/engine.md section 29), and on an Intel Xeon
// with full-rate FMAs ResNet-50 (1x1 convs 3.6x) ran 1.18-1.24x and
// MobileNetV2 (target model) 1.07-1.09x faster with its 7x7 1x1 convs
// claimed, caches evicted between runs as in the peer benchmark (section
// 46; AMD Zen 5 had run the stage 0.72 against XNNPACK's 0.65 ms with
// warmer caches, section 26).  MobileNetV2's 7x7 1x1 convs between dense
// depthwise convs that XNNPACK runs tied at 1 thread and ran 4-9% slower
// at 2 (Zen 4): the edges cost what the code gains.
constexpr int64_t kMinInPlaceTilesInside = 4;

}  // namespace

bool JitRunsOnMap(JitIsa isa, const ConvShape& s) {
  return JitTilesOnMap(isa, s) >= kMinJitTiles;
}

bool JitInPlacePays(JitIsa isa, const ConvShape& s, bool no_edges) {
  return JitTilesOnMap(isa, s) >=
         (no_edges && isa == JitIsa::kAvx512 ? kMinInPlaceTilesInside : kMinInPlaceTiles);
}

bool JitRunsDense(const PatternStats& st, JitIsa jit) {
  const int max_depth = jit == JitIsa::kAvx512 ? kJitDenseMaxDepthAvx512
                        : jit != JitIsa::kNone && jit != JitIsa::kAuto ? kJitDenseMaxDepth
                                                                      : 0;
  return st.filter_depth > 0 && st.filter_depth <= max_depth;
}

bool WeightsSuitPatternEngine(const PatternStats& st, int taps, JitIsa jit) {
  // Measured on AVX2 (docs/benchmarks.md): above about half the weights the
  // static kernels are no faster than the dense direct kernel; many distinct
  // masks mean unstructured sparsity, which this kernel is not built for.
  const bool sparse_enough =
      st.Density() <= kPatternMaxDensity || (taps > 1 && JitRunsDense(st, jit));
  return st.total_weights > 0 && sparse_enough && st.distinct_patterns <= kPatternMaxDistinct;
}

bool PatternKernelApplies(const PatternStats& st, const ConvShape& s, JitIsa jit) {
  return s.stride_h == 1 && s.stride_w == 1 && s.k_h * s.k_w <= kMaxTaps &&
         WeightsSuitPatternEngine(st, s.k_h * s.k_w, jit);
}

namespace {

// floor(v / 2) for negative v too.
int FloorHalf(int v) { return v >= 0 ? v / 2 : -((1 - v) / 2); }

// Whether a stride-1 conv runs as a pair map (PatternGeometry::pair_map):
// both maps at most 8x8 and more than 16 positions (smaller ones are one
// vector), and every tap's rows within one pair of neighbouring vectors
// starting at the output vector -1, 0 or +1.
bool PairMapFits(const ConvShape& s) {
  if (s.in_h > 8 || s.in_w > 8 || s.out_h > 8 || s.out_w > 8) return false;
  if (s.out_h * s.out_w <= kSmallMapLanes && s.in_h * s.in_w <= kSmallMapLanes) return false;
  for (int ky = 0; ky < s.k_h; ++ky) {
    const int shift = FloorHalf(ky * s.dil_h - s.pad_top);
    if (shift < -1 || shift > 1) return false;
  }
  return true;
}

// `jit_tile`: positions per register tile of the generated kernel (0: the
// static kernels' geometry of `set`: tile vectors of up to its
// pattern_lanes floats, and its small-map kernel where the map fits it).
PatternGeometry GeometryFor(const ConvShape& s, const PatternPlan& plan,
                            const PatternTuning& tuning, int jit_tile = 0,
                            const KernelSet* set = nullptr) {
  const int max_lanes = set != nullptr ? set->pattern_lanes : kVectorWidth;
  PatternGeometry g;
  int max_group = 1;
  for (int u : plan.unit_size) max_group = std::max(max_group, u);
  // Keep the G x T accumulators (and, for G > 1, the T inputs) in registers.
  const int t_max = max_group == 1 ? 8 : max_group == 2 ? 4 : 3;
  g.wp = s.out_w + (s.k_w - 1) * s.dil_w;
  g.hp = s.out_h + (s.k_h - 1) * s.dil_h;
  g.plane = static_cast<int64_t>(g.hp) * g.wp;
  g.positions = static_cast<int64_t>(s.out_h) * g.wp;
  // 16-float tile vectors where the map fills more than one 8-float vector
  // (2x2 maps, 8 positions, ran 1.2x slower on 16 lanes).
  g.tile_lanes = max_lanes >= 16 && g.positions > kVectorWidth ? 16 : kVectorWidth;
  g.tile_vectors = tuning.tile_vectors;
  if (!ValidTileVectors(g.tile_vectors)) {
    // The smallest compiled tile that covers the positions, up to t_max.
    const int64_t need =
        std::min<int64_t>(t_max, (g.positions + g.tile_lanes - 1) / g.tile_lanes);
    g.tile_vectors = 1;
    while (g.tile_vectors < need || !ValidTileVectors(g.tile_vectors)) ++g.tile_vectors;
  }
  // Tiles wider than 4 exist for single-filter units only (register file).
  if (max_group > 1) g.tile_vectors = std::min(g.tile_vectors, 4);
  const int tile = jit_tile > 0 ? jit_tile : g.tile_lanes * g.tile_vectors;
  g.block_len = RoundUp(g.wp, tile);  // about one output row per task
  g.num_blocks = static_cast<int>((g.positions + g.block_len - 1) / g.block_len);
  g.max_offset = (s.k_h - 1) * s.dil_h * g.wp + (s.k_w - 1) * s.dil_w;
  // Channel chunk: one chunk's reads for a block (block_len + max_offset
  // floats per channel) should fit in about half of a 32 KB L1.
  g.chunk = tuning.chunk_channels >= 1
                ? tuning.chunk_channels
                : std::max(4, static_cast<int>(kL1BlockBytes /
                                               (sizeof(float) * (g.block_len + g.max_offset))));
  // One block covers the map (4x4, 2x2): no channel blocking, so the
  // weights stream in order instead of jumping between units' chunk runs
  // (VGG-16 CIFAR's 4x4 and 2x2 layers ran 1.3-1.6x faster; docs/engine.md).
  if (tuning.chunk_channels < 1 && g.num_blocks == 1) g.chunk = s.in_c;
  // Reads run past the last plane by at most the rounding plus the largest tap.
  const int64_t slack =
      std::max<int64_t>(0, int64_t(g.num_blocks) * g.block_len + g.max_offset - g.plane);
  g.input_size = static_cast<size_t>(g.plane * s.in_c + slack);
  g.out_pitch = g.wp;
  if (jit_tile == 0 && set != nullptr && set->pattern_small_map != nullptr &&
      tuning.static_small_map >= 0 && int64_t(s.in_h) * s.in_w <= set->small_map_in &&
      int64_t(s.out_h) * s.out_w <= set->small_map_out) {
    g.small_map = true;
    g.tile_lanes = kSmallMapLanes;
    g.tile_vectors = 1;
    g.block_len = kSmallMapLanes;
    g.num_blocks = 1;
    g.chunk = s.in_c;
    g.max_offset = 0;
    g.out_pitch = s.out_w;
    // [in_c][16], each vector one line (the scratch is line-aligned).
    g.input_size = static_cast<size_t>(s.in_c) * kSmallMapLanes;
    return g;
  }
  // Row pairs only where they compute fewer vectors than the padded planes
  // (8x8: 4 against 5 rounded up to 6, 1.26x faster; 7x7: 4 against 4, and
  // the permutes made it 1.1x slower).
  const int64_t flat_vectors = int64_t(g.num_blocks) * g.block_len / g.tile_lanes;
  if (jit_tile == 0 && set != nullptr && set->pattern_pair_map != nullptr &&
      tuning.static_small_map >= 0 && PairMapFits(s) && (s.out_h + 1) / 2 < flat_vectors) {
    g.pair_map = true;
    g.tile_lanes = kSmallMapLanes;
    g.tile_vectors = (s.out_h + 1) / 2;
    g.block_len = g.tile_vectors * kSmallMapLanes;
    g.num_blocks = 1;
    g.chunk = s.in_c;
    g.max_offset = 0;
    g.out_pitch = 8;
    // Vectors -1 .. ceil(in_h / 2) + 1 per channel.
    g.map_stride = int64_t((s.in_h + 1) / 2 + 3) * kSmallMapLanes;
    g.input_size = static_cast<size_t>(s.in_c * g.map_stride);
  }
  return g;
}

// Floats >= n, a multiple of 16 (one 64-byte line) and an odd number of
// lines: a band buffer's channel stride.  A stride of a multiple of 2 KB put
// the 28 output rows of a register tile on two L1 sets and cost 1.4x.
int64_t OddLines(int64_t n) {
  int64_t v = (n + 15) / 16 * 16;
  if ((v / 16) % 2 == 0) v += 16;
  return v;
}

// Row bands for generated code of `tile` positions per register tile at
// geometry `g` (off: rows == 0).  Bands are at least twice the kernel's
// vertical reach tall (the halo rows are packed twice), and an even number
// of them keeps two threads equally busy.
PatternBand BandFor(const ConvShape& s, const PatternGeometry& g, const PatternTuning& t,
                    int tile) {
  PatternBand b;
  if (t.jit_band_rows < 0) return b;
  const int halo = (s.k_h - 1) * s.dil_h;
  const int64_t in_row = int64_t(s.in_c) * g.wp * int64_t(sizeof(float));
  const int64_t out_row = int64_t(s.out_c) * g.wp * int64_t(sizeof(float));
  int rows = t.jit_band_rows;
  if (rows == 0) {
    if (in_row * g.hp <= kJitBandBytes && out_row * s.out_h <= kJitBandBytes) return b;
    const int64_t fit = std::min(kJitBandBytes / in_row - halo, kJitBandBytes / out_row);
    rows = static_cast<int>(std::max<int64_t>({fit, 2 * halo, 1}));
    int bands = (s.out_h + rows - 1) / rows;
    if (bands > 1 && bands % 2) ++bands;
    rows = (s.out_h + bands - 1) / bands;
    // Rounding can make the count odd again (28 rows of 4 = 7 bands).
    while (rows > 1 && ((s.out_h + rows - 1) / rows) % 2 == 1 && (s.out_h + rows - 1) / rows > 1)
      --rows;
    // Fewer bands than kJitMinBands leave a thread waiting for another's
    // whole band when it wakes late (ResNet-50 at 2 threads, 14x14 and 28x28
    // maps in 2 bands: 1.10x XNNPACK against 1.17x unbanded); those layers
    // nearly fit L2 whole anyway.
    if ((s.out_h + rows - 1) / rows < kJitMinBands) return b;
  }
  rows = std::min(rows, s.out_h);
  b.num_bands = (s.out_h + rows - 1) / rows;
  // One band is the whole image: the unbanded path splits it better (over
  // filter blocks) between threads.
  if (b.num_bands < 2) return PatternBand();
  b.rows = rows;
  b.plane = OddLines(int64_t(rows + halo) * g.wp);
  const int64_t tiles = (int64_t(rows) * g.wp + tile - 1) / tile;
  b.out_plane = OddLines(tiles * tile);
  const int64_t slack = std::max<int64_t>(0, tiles * tile + g.max_offset - b.plane);
  b.input_size = static_cast<size_t>(b.plane * s.in_c + slack);
  return b;
}

// Element offset of each pattern tap in the padded CHW input of row pitch wp.
std::vector<int32_t> TapOffsets(const ConvShape& s, const PatternPlan& plan, int wp) {
  std::vector<int32_t> offs(static_cast<size_t>(plan.num_patterns()) * kMaxTaps, 0);
  for (int q = 0; q < plan.num_patterns(); ++q)
    for (size_t t = 0; t < plan.pattern_taps[q].size(); ++t) {
      const int tap = plan.pattern_taps[q][t];
      offs[q * kMaxTaps + t] = (tap / s.k_w) * s.dil_h * wp + (tap % s.k_w) * s.dil_w;
    }
  return offs;
}

// Small maps: for each tap of the kernel grid, the input lane each of the
// 16 output positions reads, and the mask of positions whose tap lands
// inside the image (the others read zero; lanes past out_h * out_w too).
// Maps of <= 4 positions also get, per pattern of 4 taps, the permutation
// whose lane p * 4 + t is tap t at position p (PatternConvArgs).
void SmallMapPermutations(const ConvShape& s, const PatternPlan& plan, PatternScratch* scratch) {
  const int taps = s.k_h * s.k_w;
  auto& index = scratch->small_index;
  std::vector<uint16_t>& mask = scratch->small_mask;
  index.assign(static_cast<size_t>(taps) * kSmallMapLanes, 0);
  mask.assign(taps, 0);
  for (int t = 0; t < taps; ++t)
    for (int p = 0; p < s.out_h * s.out_w; ++p) {
      const int iy = p / s.out_w - s.pad_top + (t / s.k_w) * s.dil_h;
      const int ix = p % s.out_w - s.pad_left + (t % s.k_w) * s.dil_w;
      if (iy < 0 || iy >= s.in_h || ix < 0 || ix >= s.in_w) continue;
      index[t * kSmallMapLanes + p] = iy * s.in_w + ix;
      mask[t] = static_cast<uint16_t>(mask[t] | (1u << p));
    }
  scratch->small_quad_index.clear();
  scratch->small_quad_mask.clear();
  scratch->small_quad_kernels.clear();
  if (s.out_h * s.out_w > 4) return;
  const int num_p = plan.num_patterns();
  scratch->small_quad_index.assign(static_cast<size_t>(num_p) * kSmallMapLanes, 0);
  scratch->small_quad_mask.assign(num_p, 0);
  for (int q = 0; q < num_p; ++q) {
    if (plan.pattern_taps[q].size() != 4) continue;
    for (int t = 0; t < 4; ++t)
      for (int p = 0; p < 4; ++p) {
        const int tap = plan.pattern_taps[q][t];
        if (!((mask[tap] >> p) & 1u)) continue;
        scratch->small_quad_index[q * kSmallMapLanes + p * 4 + t] = index[tap * kSmallMapLanes + p];
        scratch->small_quad_mask[q] = static_cast<uint16_t>(scratch->small_quad_mask[q] | (1u << (p * 4 + t)));
      }
  }
  // One loop per unit (PatternConvArgs::small_quad_kernels): every pattern
  // of 4 taps, at most 16 of them, one channel chunk, offsets of whole
  // 16-float channels.
  const PatternExec& e = scratch->exec;
  bool merged = num_p <= 16 && e.num_chunks == 1;
  for (int q = 0; q < num_p && merged; ++q) merged = plan.pattern_taps[q].size() == 4;
  if (!merged) return;
  const int units = static_cast<int>(plan.unit_begin.size());
  scratch->small_quad_kernels.assign(e.channel.size(), 0);
  for (int u = 0; u < units; ++u) {
    const int32_t* runs = e.runs.data() + static_cast<int64_t>(u) * (num_p + 1);
    const int32_t k0 = e.kernel_offset[u];
    for (int q = 0; q < num_p; ++q)
      for (int32_t k = k0 + runs[q]; k < k0 + runs[q + 1]; ++k) {
        const int32_t off = e.channel[static_cast<size_t>(k)];
        if (off % kSmallMapLanes != 0) {  // not whole channels: the per-pattern loops
          scratch->small_quad_kernels.clear();
          return;
        }
        scratch->small_quad_kernels[static_cast<size_t>(k)] = off | q;
      }
  }
}

// Pair maps: per tap, the first input vector relative to the output vector
// (small_shift) and the two-source permutation of those two vectors (lane
// r * 8 + ox of output vector j: input row 2j + r + dy, column ox + dx;
// index 16 and up: the second vector), masked to the positions inside the
// image.
void PairMapPermutations(const ConvShape& s, PatternScratch* scratch) {
  const int taps = s.k_h * s.k_w;
  scratch->small_index.assign(static_cast<size_t>(taps) * kSmallMapLanes, 0);
  scratch->small_mask.assign(taps, 0);
  scratch->small_shift.assign(taps, 0);
  for (int t = 0; t < taps; ++t) {
    const int dy = (t / s.k_w) * s.dil_h - s.pad_top, dx = (t % s.k_w) * s.dil_w - s.pad_left;
    const int shift = FloorHalf(dy);
    scratch->small_shift[t] = static_cast<int8_t>(shift);
    for (int r = 0; r < 2; ++r)
      for (int ox = 0; ox < s.out_w; ++ox) {
        const int col = ox + dx;
        if (col < 0 || col >= s.in_w) continue;
        const int row = r + dy - 2 * shift;  // 0..2: the pair's rows
        const int lane = r * 8 + ox;
        scratch->small_index[t * kSmallMapLanes + lane] = (row / 2) * 16 + (row % 2) * 8 + col;
        scratch->small_mask[t] = static_cast<uint16_t>(scratch->small_mask[t] | (1u << lane));
      }
  }
}



// Stock TFLite multiplies every weight, the pruned zeros included, so an Inf
// or NaN input that meets a pruned (input channel, tap) of a filter makes that
// output NaN (0 x Inf = NaN); the pattern kernels skip exactly those products.
// Called only when the padded CHW input `padded` holds a non-finite value:
// calls mark(oy, ox, o) for every output the kept weights alone would miss.
// O(non-finite inputs x taps x filters): a debugging path, not a fast one.
template <typename Mark>
void PropagateNonFinite(const ConvShape& s, const PatternPlan& plan, const PatternGeometry& g,
                        const float* padded, ThreadPool* pool, const Mark& mark) {
  // kept[c * out_c + o]: tap mask of kernel (o, c) in original filter order.
  std::vector<uint32_t> kept(static_cast<size_t>(s.in_c) * s.out_c, 0);
  const int P = plan.num_patterns();
  for (int f = 0; f < s.out_c; ++f) {
    const int32_t* runs = plan.stride.data() + static_cast<size_t>(f) * (P + 1);
    for (int q = 0; q < P; ++q)
      for (int k = runs[q]; k < runs[q + 1]; ++k)
        kept[static_cast<size_t>(plan.index[plan.offset[f] + k]) * s.out_c + plan.reorder[f]] =
            plan.patterns[q];
  }
  struct Bad { int c, py, px; };
  std::vector<Bad> bad;
  for (int c = 0; c < s.in_c; ++c)
    for (int py = 0; py < g.hp; ++py) {
      const float* row = padded + c * g.plane + static_cast<int64_t>(py) * g.wp;
      if (!AnyNonFinite(row, g.wp)) continue;
      for (int px = 0; px < g.wp; ++px)
        if (AnyNonFinite(row + px, 1)) bad.push_back({c, py, px});
    }
  // Split over filters: each (oy, ox, o) is written by one thread only.
  ParallelFor(pool, s.out_c, 1, [&](int64_t o0, int64_t o1) {
    for (const Bad& b : bad)
      for (int ty = 0; ty < s.k_h; ++ty) {
        const int oy = b.py - ty * s.dil_h;
        if (oy < 0 || oy >= s.out_h) continue;
        for (int tx = 0; tx < s.k_w; ++tx) {
          const int ox = b.px - tx * s.dil_w;
          if (ox < 0 || ox >= s.out_w) continue;
          const uint32_t bit = 1u << (ty * s.k_w + tx);
          const uint32_t* k = kept.data() + static_cast<size_t>(b.c) * s.out_c;
          for (int64_t o = o0; o < o1; ++o)
            if (!(k[o] & bit)) mark(oy, ox, static_cast<int>(o));
        }
      }
  });
}

}  // namespace

std::string PreparePatternConv(const KernelSet* set, const ConvShape& s, const PatternPlan& plan,
                               PatternScratch* scratch, const PatternTuning& tuning) {
  // Checked on every run: the fields' bytes, not text (formatting them with
  // snprintf cost about 1% of MobileNetV2's inference, on the calling thread).
  std::string key;
  key.reserve(120);
  const auto put = [&key](auto v) { key.append(reinterpret_cast<const char*>(&v), sizeof v); };
  put(static_cast<const void*>(set));
  for (int v : {s.batch, s.in_h, s.in_w, s.in_c, s.out_h, s.out_w, s.pad_top, s.pad_left, s.dil_h,
                s.dil_w, tuning.chunk_channels, tuning.tile_vectors, static_cast<int>(tuning.jit),
                tuning.jit_filters, tuning.jit_vectors, tuning.jit_reorder ? 1 : 0,
                tuning.jit_segment, tuning.jit_band_rows, tuning.static_small_map,
                tuning.planar_direct ? 1 : 0, tuning.residual_epilogue ? 1 : 0,
                tuning.residual_first ? 1 : 0, tuning.jit_channel_parts})
    put(v);
  put(s.act_min);
  put(s.act_max);
  if (scratch->prepared_key == key) return scratch->engine;
  scratch->jit.reset();
  scratch->jit_error.clear();
  std::string why;
  JitIsa isa = ResolveJitIsa(set, tuning.jit, &why);
  PatternGeometry g;
  const int vectors = tuning.jit_vectors > 0 ? tuning.jit_vectors : 1;
  if (isa != JitIsa::kNone) {
    // Generated code: its tile (lanes x V) sets the position blocking.
    g = GeometryFor(s, plan, tuning, JitLanes(isa) * vectors);
    const int64_t tiles =
        static_cast<int64_t>(g.num_blocks) * g.block_len / (JitLanes(isa) * vectors);
    if (tuning.jit == JitIsa::kAuto && tiles < kMinJitTiles) {
      why = "map too small for generated code (" + std::to_string(tiles) +
            " tiles per image): static kernels run";
      isa = JitIsa::kNone;
    }
    // A 1x1 conv's padded planes are the plain CHW planes: the code then
    // works on the planar tensors themselves (PatternGeometry::direct).
    const int tile = isa != JitIsa::kNone ? JitLanes(isa) * vectors : 0;
    const int64_t hw = static_cast<int64_t>(s.out_h) * s.out_w;
    if (tile > 0 && tuning.planar_direct && s.k_h == 1 && s.k_w == 1 && s.pad_top == 0 &&
        s.pad_left == 0 && s.in_h == s.out_h && s.in_w == s.out_w && g.plane == hw &&
        hw >= tile) {
      g.block_len = tile;
      g.num_blocks = static_cast<int>(hw / tile);
      g.direct_tail = static_cast<int>(hw % tile);
      g.input_size = static_cast<size_t>(hw * s.in_c);
      g.direct = true;
    }
  }
  PatternBand band;
  if (isa != JitIsa::kNone) {
    const std::vector<int32_t> taps = TapOffsets(s, plan, g.wp);
    // Banded code reads a band buffer: its channel stride and sizes.
    if (!g.direct) band = BandFor(s, g, tuning, JitLanes(isa) * vectors);
    const bool banded = band.rows > 0;
    // A direct 1x1 conv's code checks the input it loads for Inf and NaN,
    // where the generator can and the tuned M leaves the check's registers
    // without taking the shifted loads' (JitTunedMaxFilters): its separate
    // scan was a second pass over the input (56x56x144->24: 0.049 -> 0.035
    // ms without it, docs/engine.md section 25).
    // (Planes of whole vectors need no shifted loads: every column of a
    // direct 1x1 conv then starts on a vector.)
    const bool aligned_columns = g.plane % JitLanes(isa) == 0;
    const bool check_input =
        g.direct && JitChecksInput(isa) &&
        (tuning.jit_filters == 0 ||
         tuning.jit_filters <= (aligned_columns ? JitMaxFilters(isa, vectors, true)
                                                : JitTunedMaxFilters(isa, vectors, true)));
    JitLayout layout;
    why = BuildJitLayout(plan, taps.data(), banded ? band.plane : g.plane,
                         static_cast<int64_t>(banded ? band.input_size : g.input_size),
                         banded     ? band.out_plane
                         : g.direct ? g.plane
                                    : static_cast<int64_t>(g.num_blocks) * g.block_len,
                         isa, tuning.jit_filters, vectors, tuning.jit_reorder, tuning.jit_segment,
                         s.act_min, s.act_max, &layout, check_input, tuning.jit_channel_parts);
    layout.residual = tuning.residual_epilogue && g.direct && JitKernel::AddsResidual(isa);
    layout.residual_first = layout.residual && tuning.residual_first;
    // A large output (the planar tensor in place, or the whole-image buffer;
    // a band's buffer stays in L2): each tile asks for the lines
    // kJitPrefetchOutTiles tiles ahead, x86 only (JitKernel::PrefetchesOutput).
    // MobileNetV2's 112x112 16 -> 96 expand conv, 4.8 MB of output: 0.65 ->
    // 0.44 ms at 1 thread, caches evicted; its stem, 1.6 MB, gained at 1
    // thread and not at 2, the model neither way (section 47): one rule for
    // every large output.
    const int64_t out_floats =
        int64_t(s.out_c) * (g.direct ? g.plane : int64_t(g.num_blocks) * g.block_len);
    if (JitKernel::PrefetchesOutput(isa) && !banded &&
        out_floats * int64_t(sizeof(float)) >= kFarTensorBytes)
      layout.prefetch_out_floats = kJitPrefetchOutTiles * int64_t(JitLanes(isa)) * vectors;
    if (why.empty()) {
      std::unique_ptr<JitKernel> k = JitKernel::Generate(layout, &why);
      scratch->jit = std::move(k);
    }
  }
  if (scratch->jit == nullptr) {
    scratch->jit_error = why;
    g = GeometryFor(s, plan, tuning, 0, set);
    const int64_t stride = g.small_map ? kSmallMapLanes : g.pair_map ? g.map_stride : g.plane;
    const int64_t exec_key = (static_cast<int64_t>(std::min(g.chunk, s.in_c)) << 40) | stride;
    if (scratch->exec_key != exec_key) {
      BuildPatternExec(plan, g.chunk, stride, &scratch->exec);
      scratch->exec_key = exec_key;
    }
  }
  scratch->geometry = g;
  scratch->band = scratch->jit ? band : PatternBand();
  scratch->tap_offsets = TapOffsets(s, plan, g.wp);
  if (g.small_map) SmallMapPermutations(s, plan, scratch);
  if (g.pair_map) PairMapPermutations(s, scratch);
  // A new geometry may move the halo: start from zeros.  Banded layers use
  // the per-thread band buffers; the whole-image ones are made only if an
  // Inf or NaN needs them (RunPatternConv).
  // A direct 1x1 conv makes its buffers only when a side is not planar
  // (RunPatternConv).
  const bool whole = scratch->band.rows == 0 && !g.direct;
  scratch->input.assign(whole ? g.input_size : 0, 0.f);
  scratch->output.assign(whole ? static_cast<size_t>(s.out_c) * g.num_blocks * g.block_len : 0,
                         0.f);
  scratch->padded.clear();
  scratch->input.shrink_to_fit();
  scratch->output.shrink_to_fit();
  scratch->padded.shrink_to_fit();
  scratch->engine = scratch->jit ? std::string("jit_") + JitIsaName(isa) : std::string(set->isa);
  scratch->prepared_key = key;
  return scratch->engine;
}

bool PackPhaseSplitInput(const KernelSet* set, const ConvShape& s, const float* image,
                         PatternScratch* scratch, ThreadPool* pool) {
  const ConvShape t = PhaseSplitShape(s);
  const PatternGeometry& g = scratch->geometry;
  // The split conv is VALID with no padding: its planes are exactly X'.
  if (g.wp != t.in_w || g.hp != t.in_h || g.plane * t.in_c > int64_t(scratch->input.size()))
    std::abort();  // not prepared for this shape: a driver bug
  const int c = s.in_c, sh = s.stride_h, sw = s.stride_w;
  float* planes = scratch->input.data();
  std::atomic<bool> non_finite{false};
  // Columns j of phase column q with 0 <= sw*j + q - pad_left < in_w, for
  // input row y: [j_lo, j_hi).
  const auto columns = [&](int y, int q, int* j_lo, int* j_hi) {
    *j_lo = *j_hi = 0;
    if (y < 0 || y >= s.in_h) return;
    const int first = s.pad_left - q;  // sw*j >= first
    *j_lo = std::min(first > 0 ? (first + sw - 1) / sw : 0, t.in_w);
    *j_hi = s.in_w - 1 + s.pad_left - q < 0
                ? 0
                : std::min(t.in_w, (s.in_w - 1 + s.pad_left - q) / sw + 1);
    *j_hi = std::max(*j_hi, *j_lo);
  };
  ParallelFor(pool, t.in_h, 2, [&](int64_t i0, int64_t i1) {
    bool bad = false;
    for (int64_t i = i0; i < i1; ++i)
      for (int p = 0; p < sh; ++p) {
        const int y = static_cast<int>(sh * i) + p - s.pad_top;
        float* dst_p = planes + static_cast<int64_t>(p * sw) * c * g.plane + i * g.wp;
        // Column stride 2 with both phase columns over the same j: pixels
        // x and x + 1 are one source row of 2c floats for the 2c planes of
        // this row phase (consecutive, phase column-major), so the image
        // row is read once instead of once per phase column.
        int lo0, hi0, lo1 = 0, hi1 = 0;
        columns(y, 0, &lo0, &hi0);
        if (sw > 1) columns(y, 1, &lo1, &hi1);
        const bool pairs = sw == 2 && lo0 == lo1 && hi0 == hi1;
        for (int q = 0; q < sw; ++q) {
          float* dst = dst_p + static_cast<int64_t>(q) * c * g.plane;
          int j_lo, j_hi;
          columns(y, q, &j_lo, &j_hi);
          for (int ch = 0; ch < c; ++ch) {
            float* row = dst + ch * g.plane;
            std::fill(row, row + j_lo, 0.f);
            std::fill(row + j_hi, row + t.in_w, 0.f);
          }
          if (!pairs && j_hi > j_lo) {
            const int x = sw * j_lo + q - s.pad_left;
            bad |= set->transpose(image + (static_cast<int64_t>(y) * s.in_w + x) * c,
                                  static_cast<int64_t>(sw) * c, dst + j_lo, g.plane,
                                  j_hi - j_lo, c);
          }
        }
        if (pairs && hi0 > lo0)
          bad |= set->transpose(image + (static_cast<int64_t>(y) * s.in_w + 2 * lo0 - s.pad_left) * c,
                                2 * c, dst_p + lo0, g.plane, hi0 - lo0, 2 * c);
      }
    if (bad) non_finite.store(true, std::memory_order_relaxed);
  });
  scratch->input_non_finite = false;
  return non_finite.load();
}

void RunPatternConv(const KernelSet* set, const ConvShape& s, const PatternPlan& plan,
                    PatternScratch* scratch, const float* input, float* output,
                    ThreadPool* pool, const PatternTuning& tuning, bool input_packed,
                    const PatternNext* next) {
  PatternIo io;
  io.input_packed = input_packed;
  io.next = next;
  RunPatternConv(set, s, plan, scratch, input, output, pool, tuning, io);
}

namespace {

// Where the output rows of a pattern conv go when they stay in planes: the
// next conv's padded input, or a plain CHW tensor (no halo).
struct PlaneDest {
  float* base = nullptr;
  int64_t plane = 0;
  int wp = 0, hp = 0, pad_top = 0, pad_left = 0;
};

// Reads one byte of every 64-byte line of [p, p + bytes) as data.  Used on
// generated code about to run from L3 or DRAM: the instruction fetcher
// brings code in one miss after another, while these independent loads
// (which, unlike prefetch hints, are not dropped) bring it into L2 in
// parallel (docs/engine.md section 21).
inline void TouchLines(const void* p, size_t bytes) {
  const unsigned char* c = static_cast<const unsigned char*>(p);
  unsigned acc = 0;
  for (size_t k = 0; k < bytes; k += 64) acc += c[k];
  asm volatile("" : : "r"(acc));  // keep the loads
}

// A number for each run of a generated layer (TouchBlockOnce).
uint64_t NextCall() {
  static std::atomic<uint64_t> calls{0};
  return calls.fetch_add(1, std::memory_order_relaxed) + 1;
}

// TouchLines on filter block f's code, unless this thread did so already
// during run `call`: a thread runs several chunks of a layer's tasks, and
// reading the code again for each cost more than it saved on small layers.
void TouchBlockOnce(const JitKernel* jit, int f, uint64_t call) {
  thread_local std::vector<uint64_t> touched;  // per block: the run it was read in
  if (touched.size() < static_cast<size_t>(jit->num_blocks())) touched.resize(jit->num_blocks(), 0);
  if (touched[f] == call) return;
  touched[f] = call;
  TouchLines(jit->block_code(f), jit->block_code_bytes(f));
}

// The bits of v - v: +0 unless v is Inf or NaN (the transposes' test, so an
// OR over many values needs no branch).
inline uint32_t NonFiniteBits(float v) {
  const float z = v - v;
  uint32_t bits;
  std::memcpy(&bits, &z, sizeof bits);
  return bits;
}

}  // namespace

// An NHWC image that leaves the engine (a partition's output: a pattern
// conv's, PatternIo::output_leaves, or a planar op's through PlanarToNhwc)
// and is at least this large is written with streaming stores: it
// outgrows a core's L2 anyway, and where the caches are cold (other work ran
// between calls) reading its old lines before writing them over came from
// DRAM.  56x56x128 (1.6 MB) after an XNNPACK run and a 3 ms wait, 1 and 2
// threads: 1.04-1.08x faster, 1.01-1.07x with the caller's copy of the
// output (get_tensor) counted; back to back 0.99-1.03x, with the copy
// 0.96-1.02x (the copy then reads DRAM, not L3; docs/engine.md section 42).
constexpr int64_t kStreamOutputBytes = 1 << 20;

bool StreamsNhwcImage(const KernelSet* set, int64_t floats, bool output_leaves) {
  return output_leaves && set != nullptr && set->transpose_stream != nullptr &&
         floats * int64_t(sizeof(float)) >= kStreamOutputBytes;
}

bool StreamsNhwcOutput(const KernelSet* set, const ConvShape& s, const PatternScratch& scratch,
                       bool output_leaves) {
  return scratch.jit != nullptr &&
         StreamsNhwcImage(set, int64_t(s.out_h) * s.out_w * s.out_c, output_leaves);
}

namespace {

// Orders streaming stores before the stores that follow (the thread pool's
// hand-over), so another thread reading the data sees it.
inline void StreamFence() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_sfence();
#endif
}

// One image between NHWC and plain CHW planes, an image row per transpose:
// `to_planar` moves row y's [x][c] into column range y*w of every plane.
// `stream`: NHWC rows written with streaming stores (StreamsNhwcImage).
bool TransposeImage(const KernelSet* set, int h, int w, int c, const float* src, float* dst,
                    bool to_planar, bool stream, ThreadPool* pool) {
  std::atomic<bool> bad{false};
  const int64_t plane = static_cast<int64_t>(h) * w;
  const auto to_nhwc = stream ? set->transpose_stream : set->transpose;
  ParallelFor(pool, h, 4, [&](int64_t y0, int64_t y1) {
    bool b = false;
    for (int64_t y = y0; y < y1; ++y)
      b |= to_planar ? set->transpose(src + y * w * c, c, dst + y * w, plane, w, c)
                     : to_nhwc(src + y * w, plane, dst + y * w * c, c, c, w);
    if (stream) StreamFence();
    if (b) bad.store(true, std::memory_order_relaxed);
  });
  return bad.load();
}

}  // namespace

bool NhwcToPlanar(const KernelSet* set, int h, int w, int c, const float* nhwc, float* chw,
                  ThreadPool* pool) {
  return TransposeImage(set, h, w, c, nhwc, chw, true, false, pool);
}

bool PlanarToNhwc(const KernelSet* set, int h, int w, int c, const float* chw, float* nhwc,
                  ThreadPool* pool, bool output_leaves) {
  const bool stream = StreamsNhwcImage(set, int64_t(h) * w * c, output_leaves);
  return TransposeImage(set, h, w, c, chw, nhwc, false, stream, pool);
}

void RunAdd(int64_t n, const float* a, const float* b, float lo, float hi, float* out,
            ThreadPool* pool) {
  constexpr int64_t kGrain = 1 << 14;  // floats per task: a few L1-sized chunks
  const int64_t chunks = (n + kGrain - 1) / kGrain;
  ParallelFor(pool, chunks, 1, [&](int64_t c0, int64_t c1) {
    const int64_t i1 = std::min(n, c1 * kGrain);
    for (int64_t i = c0 * kGrain; i < i1; ++i) out[i] = std::min(std::max(a[i] + b[i], lo), hi);
  });
}

void RunSpatialMean(int batch, int64_t positions, int channels, bool planar, const float* in,
                    float* out, ThreadPool* pool) {
  const float scale = 1.0f / static_cast<float>(positions);
  if (planar) {  // one plane per channel, batch 1
    ParallelFor(pool, channels, 64, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        const float* p = in + c * positions;
        float sum = 0.f;
        for (int64_t i = 0; i < positions; ++i) sum += p[i];
        out[c] = sum * scale;
      }
    });
    return;
  }
  for (int b = 0; b < batch; ++b) {  // rows of channels, summed row by row
    const float* x = in + static_cast<int64_t>(b) * positions * channels;
    float* o = out + static_cast<int64_t>(b) * channels;
    std::fill(o, o + channels, 0.f);
    for (int64_t i = 0; i < positions; ++i)
      for (int c = 0; c < channels; ++c) o[c] += x[i * channels + c];
    for (int c = 0; c < channels; ++c) o[c] *= scale;
  }
}

namespace {

// Where a pattern conv's output rows go: an NHWC image, or planes (PlaneDest).
struct OutputDest {
  float* nhwc = nullptr;  // the image, when not planes
  PlaneDest planes;
  bool stream = false;  // nhwc written with streaming stores (StreamsNhwcOutput)
};

// Output rows [r0, r1) and channels [o0, o1) (all channels for NHWC) from the
// engine's CHW buffer `chw` (channel stride `chw_plane`, row pitch wp, its
// row 0 is output row `row_base`) to `d`, with bias and activation unless
// the generated code's epilogue applied them.  Returns the OR of x - x over
// the values written to planes (non-zero: an Inf or NaN), 0 for NHWC.
uint32_t StoreOutputRows(const KernelSet* set, const ConvShape& s, const PatternPlan& plan,
                         bool epilogue_done, const float* chw, int64_t chw_plane, int wp,
                         int row_base, int r0, int r1, int o0, int o1, const OutputDest& d) {
  uint32_t bad = 0;
  if (d.nhwc != nullptr) {
    // The epilogue below reads the image again: stream only finished values.
    const bool stream = d.stream && epilogue_done;
    const auto transpose = stream ? set->transpose_stream : set->transpose;
    for (int oy = r0; oy < r1; ++oy) {
      float* dst = d.nhwc + static_cast<int64_t>(oy) * s.out_w * s.out_c;
      // 16 pixels at a time: each call writes 16 whole pixels, one run of
      // memory, so a cold output streams like a copy (the transpose's order,
      // channel blocks outermost, wrote every pixel's line in 8 passes and
      // cost 3-4x a copy's time on cold memory).
      const float* src = chw + static_cast<int64_t>(oy - row_base) * wp;
      for (int x0 = 0; x0 < s.out_w; x0 += 16)
        transpose(src + x0, chw_plane, dst + static_cast<int64_t>(x0) * s.out_c, s.out_c, s.out_c,
                  std::min(16, s.out_w - x0));
      if (epilogue_done) continue;
      const float* bias = plan.bias.data();
      for (int ox = 0; ox < s.out_w; ++ox, dst += s.out_c)
        for (int o = 0; o < s.out_c; ++o)
          dst[o] = std::min(std::max(dst[o] + bias[o], s.act_min), s.act_max);
    }
    if (stream) StreamFence();
    return 0;
  }
  const PlaneDest& p = d.planes;
  const int n = std::min(s.out_w, p.wp - p.pad_left);
  for (int o = o0; o < o1; ++o) {
    const float bias = plan.bias[o];
    for (int oy = r0; oy < r1; ++oy) {
      const int py = oy + p.pad_top;
      if (py >= p.hp) continue;
      const float* src = chw + o * chw_plane + static_cast<int64_t>(oy - row_base) * wp;
      float* dst = p.base + o * p.plane + static_cast<int64_t>(py) * p.wp + p.pad_left;
      if (epilogue_done) {
        bad |= set->copy_non_finite(src, dst, n);
        continue;
      }
      for (int ox = 0; ox < n; ++ox) {
        const float v = std::min(std::max(src[ox] + bias, s.act_min), s.act_max);
        bad |= NonFiniteBits(v);
        dst[ox] = v;
      }
    }
  }
  return bad;
}

// Input rows of one image into padded planes of channel stride `plane` and
// row pitch wp: padded rows [py0, py1) land at local rows 0.. of `dst`;
// rows and columns outside the image are written as zeros when `zero_halo`
// (band buffers are shared, so their halo holds another band's values).
// The source is NHWC `nhwc` or plain CHW `planar`.  Returns true if a value
// moved was Inf or NaN.
bool PackInputRows(const KernelSet* set, const ConvShape& s, int wp, int64_t plane,
                   const float* nhwc, const float* planar, int py0, int py1, bool zero_halo,
                   float* dst) {
  const int nx = std::min(s.in_w, wp - s.pad_left);
  const int64_t in_plane = static_cast<int64_t>(s.in_h) * s.in_w;
  uint32_t bad = 0;
  bool tbad = false;
  for (int py = py0; py < py1; ++py) {
    const int iy = py - s.pad_top;
    float* row = dst + static_cast<int64_t>(py - py0) * wp;
    if (iy < 0 || iy >= s.in_h) {
      if (zero_halo)
        for (int c = 0; c < s.in_c; ++c) std::fill(row + c * plane, row + c * plane + wp, 0.f);
      continue;
    }
    if (zero_halo)
      for (int c = 0; c < s.in_c; ++c) {
        float* r = row + c * plane;
        std::fill(r, r + s.pad_left, 0.f);
        std::fill(r + s.pad_left + nx, r + wp, 0.f);
      }
    if (planar != nullptr) {
      for (int c = 0; c < s.in_c; ++c)
        bad |= set->copy_non_finite(planar + c * in_plane + static_cast<int64_t>(iy) * s.in_w,
                                    row + c * plane + s.pad_left, nx);
    } else {
      // One input row [x][c] becomes column x of every channel row.
      tbad |= set->transpose(nhwc + static_cast<int64_t>(iy) * s.in_w * s.in_c, s.in_c,
                             row + s.pad_left, plane, nx, s.in_c);
    }
  }
  return tbad || bad != 0;
}

// Cache lines to prefetch, issued a slice at a time between pieces of work,
// so the requests do not queue up behind one another at a band's start.
class PrefetchQueue {
 public:
  void Add(const void* p, int64_t bytes, bool write) {
    if (bytes <= 0) return;
    runs_.push_back({static_cast<const char*>(p), bytes, write});
    lines_ += (bytes + 63) / 64;
  }
  void AddFloats(const float* p, int64_t n, bool write) { Add(p, n * int64_t(sizeof(float)), write); }
  int64_t lines() const { return lines_; }
  // Issues the next `n` lines.
  void Issue(int64_t n) {
    for (; n > 0 && run_ < runs_.size(); --n) {
      const Run& r = runs_[run_];
      if (r.write) __builtin_prefetch(r.p + off_, 1, 2);
      else __builtin_prefetch(r.p + off_, 0, 2);
      off_ += 64;
      if (off_ >= r.bytes) ++run_, off_ = 0;
    }
  }

 private:
  struct Run { const char* p; int64_t bytes; bool write; };
  std::vector<Run> runs_;
  size_t run_ = 0;
  int64_t off_ = 0, lines_ = 0;
};

// Queue the input rows that padded rows [py0, py1) hold (NHWC: one run;
// planar: a run per channel).
void QueueInputRows(const ConvShape& s, const float* nhwc, const float* planar, int py0,
                    int py1, PrefetchQueue* q) {
  const int iy0 = std::max(0, py0 - s.pad_top), iy1 = std::min(s.in_h, py1 - s.pad_top);
  if (iy1 <= iy0) return;
  const int64_t n = int64_t(iy1 - iy0) * s.in_w;
  if (planar == nullptr) {
    q->AddFloats(nhwc + int64_t(iy0) * s.in_w * s.in_c, n * s.in_c, false);
    return;
  }
  const int64_t plane = int64_t(s.in_h) * s.in_w;
  for (int c = 0; c < s.in_c; ++c)
    q->AddFloats(planar + c * plane + iy0 * int64_t(s.in_w), n, false);
}


// A thread's band buffers (0: input, 1: output), shared by every banded layer
// the thread runs, so the previous band or layer left them in its L2.  They
// only grow; what they held before is overwritten or never read into a
// kept output (the halo is re-zeroed per band).
// Line-aligned, as the generated code's loads and stores assume for speed
// (docs/engine.md section 20).
float* BandBuffer(int which, size_t floats) {
  thread_local LineFloats buffers[2];
  LineFloats& b = buffers[which];
  if (b.size() < floats) b.resize(floats, 0.f);
  return b.data();
}

}  // namespace

void RunPatternConv(const KernelSet* set, const ConvShape& s, const PatternPlan& plan,
                    PatternScratch* scratch, const float* input, float* output,
                    ThreadPool* pool, const PatternTuning& tuning, const PatternIo& io) {
  const bool input_packed = io.input_packed;
  const PatternNext* next = io.next;
  if ((io.planar_input != nullptr || io.planar_output != nullptr) && s.batch != 1)
    std::abort();  // planar tensors exist at batch 1 only: a driver bug
  PreparePatternConv(set, s, plan, scratch, tuning);
  const PatternGeometry g = scratch->geometry;
  const PatternBand band = scratch->band;
  // Banded code reads band buffers only: a layer whose padded input someone
  // else writes (chained, phase split) must be prepared unbanded.
  if ((band.rows > 0 || g.small_map || g.pair_map || g.direct) && input_packed)
    std::abort();  // a driver bug
  const int wp = g.wp, block_len = g.block_len, num_blocks = g.num_blocks;
  const int64_t plane = g.plane;
  const JitKernel* jit = scratch->jit.get();
  scratch->filter_major = false;
  // A residual (a fused ADD) only where the code adds it: a direct 1x1
  // conv's, onto its planar output.
  if (io.residual != nullptr &&
      (jit == nullptr || !jit->layout().residual || !g.direct || io.planar_output == nullptr ||
       io.next != nullptr))
    std::abort();  // a driver bug

  PatternConvArgs args;
  args.plan = &plan;
  args.exec = &scratch->exec;
  args.input = scratch->input.data();
  args.block_len = block_len;
  args.num_blocks = num_blocks;
  args.tile_vectors = g.tile_vectors;
  args.tile_lanes = g.tile_lanes;
  args.tap_offsets = scratch->tap_offsets.data();
  args.output = scratch->output.data();
  // Enough tasks for the threads even when the map is one block (4x4, 2x2).
  const int units = static_cast<int>(plan.unit_begin.size());
  args.unit_splits = std::max(1, std::min(units, (kMinTasks + num_blocks - 1) / num_blocks));
  int64_t tasks = static_cast<int64_t>(num_blocks) * args.unit_splits;
  int64_t macs_task = std::max<int64_t>(1, plan.kept_weights * block_len / args.unit_splits);
  const int64_t out_plane = g.direct ? g.plane : static_cast<int64_t>(num_blocks) * block_len;
  // Generated code: tasks are (range of position blocks, filter block),
  // range-major or filter-major (JitFilterMajor); a range is
  // `blocks_per_task` consecutive blocks.  A call's
  // rows of the planes one segment reads should stay within
  // kJitCallInputBytes (`call_blocks`).
  int64_t blocks_per_task = 1, call_blocks = 1;
  if (jit != nullptr) {
    const int64_t fb = jit->num_blocks();
    int64_t want = tuning.jit_task_positions;
    if (want <= 0) {
      const int64_t planes = std::max<int64_t>(1, jit->layout().max_segment_planes);
      want = std::min(kJitTaskPositions, kJitCallInputBytes / (planes * int64_t(sizeof(float))));
    }
    call_blocks = std::max<int64_t>(1, want / block_len);
    blocks_per_task = std::max<int64_t>(1, std::min<int64_t>(num_blocks, call_blocks));
    const int threads = pool ? pool->num_threads() : 1;
    if (tuning.jit_task_positions <= 0 && threads > 1)
      blocks_per_task = std::max<int64_t>(
          1, std::min(blocks_per_task, num_blocks * fb / (int64_t(kJitTasksPerThread) * threads)));
    const int64_t ranges = (num_blocks + blocks_per_task - 1) / blocks_per_task;
    tasks = ranges * fb;
    macs_task = std::max<int64_t>(1, plan.kept_weights * block_len * blocks_per_task / fb);
  }

  // Chained: the next pattern conv reads our output in its padded CHW layout.
  PatternGeometry ng;
  if (next != nullptr) {
    PreparePatternConv(set, *next->shape, *next->plan, next->scratch, *next->tuning);
    if (next->scratch->band.rows > 0 || next->scratch->geometry.small_map ||
        next->scratch->geometry.pair_map || next->scratch->geometry.direct)
      std::abort();  // see above: a driver bug
    ng = next->scratch->geometry;
  }
  OutputDest dest;
  if (next != nullptr) {
    dest.planes = PlaneDest{next->scratch->input.data(), ng.plane, ng.wp, ng.hp,
                            next->shape->pad_top, next->shape->pad_left};
  } else if (io.planar_output != nullptr) {
    dest.planes = PlaneDest{io.planar_output, static_cast<int64_t>(s.out_h) * s.out_w, s.out_w,
                            s.out_h, 0, 0};
  }
  const bool to_planes = dest.planes.base != nullptr;
  dest.stream = !to_planes && StreamsNhwcOutput(set, s, *scratch, io.output_leaves);

  for (int b = 0; b < s.batch; ++b) {
    const float* in_b = input ? input + static_cast<int64_t>(b) * s.in_h * s.in_w * s.in_c : nullptr;
    if (!to_planes) dest.nhwc = output + static_cast<int64_t>(b) * s.out_h * s.out_w * s.out_c;
    // Whether the input holds an Inf or NaN the kernels can read: rare, and
    // only then do the products they skip matter (see PropagateNonFinite).
    // Packing finds out as it moves the data; a chained input was checked
    // by the layer that wrote it.
    std::atomic<bool> non_finite{input_packed && scratch->input_non_finite};
    std::atomic<bool> out_non_finite{false};  // what a planes destination got
    // NHWC or planar -> the whole zero-padded CHW buffer (only rows and
    // columns the kernels can read; the halo stays zero from Prepare).
    const auto pack_whole = [&] {
      if (scratch->input.size() < g.input_size) scratch->input.assign(g.input_size, 0.f);
      ParallelFor(pool, s.in_h, 4, [&](int64_t y0, int64_t y1) {
        const int py0 = static_cast<int>(y0) + s.pad_top;
        const int py1 = std::min(static_cast<int>(y1) + s.pad_top, g.hp);
        if (py1 > py0 && PackInputRows(set, s, wp, plane, in_b, io.planar_input, py0, py1, false,
                                       scratch->input.data() + static_cast<int64_t>(py0) * wp))
          non_finite.store(true, std::memory_order_relaxed);
      });
    };
    // Small map: one unpadded 16-float vector per channel (the lanes past
    // in_h * in_w stay zero from Prepare and are never selected).
    const auto pack_small = [&] {
      float* dst = scratch->input.data();
      const int hw = s.in_h * s.in_w;
      ParallelFor(pool, s.in_c, 64, [&](int64_t c0, int64_t c1) {
        bool bad = false;
        if (io.planar_input != nullptr) {
          uint32_t bits = 0;
          for (int64_t c = c0; c < c1; ++c)
            bits |= set->copy_non_finite(io.planar_input + c * hw, dst + c * kSmallMapLanes, hw);
          bad = bits != 0;
        } else {
          bad = set->transpose(in_b + c0, s.in_c, dst + c0 * kSmallMapLanes, kSmallMapLanes, hw,
                               static_cast<int>(c1 - c0));
        }
        if (bad) non_finite.store(true, std::memory_order_relaxed);
      });
    };
    // Pair map: rows of 8 floats from vector 0 on (vector -1, the columns
    // and rows past the image and the last two vectors stay zero).
    const auto pack_pairs = [&] {
      float* dst = scratch->input.data() + kSmallMapLanes;
      ParallelFor(pool, s.in_c, 64, [&](int64_t c0, int64_t c1) {
        bool bad = false;
        uint32_t bits = 0;
        for (int iy = 0; iy < s.in_h; ++iy) {
          float* row = dst + iy * 8;
          if (io.planar_input != nullptr) {
            for (int64_t c = c0; c < c1; ++c)
              bits |= set->copy_non_finite(io.planar_input + (c * s.in_h + iy) * s.in_w,
                                           row + c * g.map_stride, s.in_w);
          } else {
            bad |= set->transpose(in_b + int64_t(iy) * s.in_w * s.in_c + c0, s.in_c,
                                  row + c0 * g.map_stride, g.map_stride, s.in_w,
                                  static_cast<int>(c1 - c0));
          }
        }
        if (bad || bits != 0) non_finite.store(true, std::memory_order_relaxed);
      });
    };
    if (band.rows > 0) {
      // Bands: pack, run and store a band of rows at a time per thread, in
      // buffers that stay in its L2 (PatternBand).
      const int fb = jit->num_blocks();
      const int64_t tile = jit->layout().TileLen();
      const int halo = (s.k_h - 1) * s.dil_h;
      const int64_t out_floats = static_cast<int64_t>(s.out_c) * band.out_plane;
      const int64_t call_tiles = std::max<int64_t>(1, call_blocks * block_len / tile);
      // One run of bands per thread: an even share of the rows (not of the
      // bands: 56 rows in bands of 6 went 30/26 rows), in bands of at most
      // band.rows, whole bands first (56x56x128 at 2 threads, back to back:
      // 0.93x the time).  A thread takes its own run's bands in order and,
      // when it is done, the last band of the fullest run (TailStealRuns).
      const int64_t parts =
          std::min<int64_t>(band.num_bands, pool != nullptr ? pool->num_threads() : 1);
      std::vector<std::pair<int, int>> band_rows;
      std::vector<int64_t> bounds{0};
      for (int64_t p = 0; p < parts; ++p) {
        const int run0 = static_cast<int>(p * s.out_h / parts);
        const int run1 = static_cast<int>((p + 1) * s.out_h / parts);
        for (int r0 = run0; r0 < run1; r0 += band.rows)
          band_rows.emplace_back(r0, std::min(run1, r0 + band.rows));
        bounds.push_back(static_cast<int64_t>(band_rows.size()));
      }
      TailStealRuns runs(bounds);
      // The input rows band b reads that the band before it (prev, -1: none)
      // did not: what to prefetch for it.
      const auto queue_band_input = [&](int64_t b, int64_t prev, PrefetchQueue* q) {
        const int r0 = band_rows[b].first, r1 = band_rows[b].second;
        const bool follows = prev >= 0 && band_rows[prev].second == r0;
        QueueInputRows(s, in_b, io.planar_input, follows ? r0 + halo : r0, r1 + halo, q);
      };
      ParallelFor(pool, parts, 1, [&](int64_t p0, int64_t p1) {
        float* bin = BandBuffer(0, band.input_size);
        float* bout = BandBuffer(1, static_cast<size_t>(out_floats));
        bool bad_in = false;
        uint32_t bad_out = 0;
        bool code_touched = false;
        for (int self = static_cast<int>(p0); self < p1; ++self) {
          if (const int64_t b = runs.PeekOwn(self); b >= 0) {  // the run's first band
            PrefetchQueue first;
            queue_band_input(b, -1, &first);
            first.Issue(first.lines());
          }
          int64_t b;
          bool own;
          while (runs.Next(self, &b, &own)) {
            const int r0 = band_rows[b].first, r1 = band_rows[b].second;
            bad_in |= PackInputRows(set, s, wp, band.plane, in_b, io.planar_input, r0,
                                    r1 + halo, true, bin);
            // Ask for the next band's new input rows and this band's output
            // rows (unless streamed) while this band computes: after a
            // pause both come from DRAM, and the transposes' short strided
            // runs do not train the hardware prefetchers.  The requests go
            // out a slice before each call of the code, not all at once
            // (56x56x128 after a 20 ms pause: 1.82 -> 1.66 ms;
            // docs/engine.md section 18).  A stolen band has no known next
            // band.
            PrefetchQueue queue;
            if (const int64_t next = own ? runs.PeekOwn(self) : -1; next >= 0)
              queue_band_input(next, b, &queue);
            if (dest.nhwc != nullptr && !dest.stream)
              queue.AddFloats(dest.nhwc + int64_t(r0) * s.out_w * s.out_c,
                              int64_t(r1 - r0) * s.out_w * s.out_c, true);
            const int64_t tiles = ((r1 - r0) * int64_t(wp) + tile - 1) / tile;
            const int64_t pieces = ((tiles + call_tiles - 1) / call_tiles) * fb;
            const int64_t slice = (queue.lines() + pieces - 1) / pieces;
            for (int64_t c0 = 0; c0 < tiles; c0 += call_tiles) {
              const int64_t c1 = std::min(tiles, c0 + call_tiles);
              for (int f = 0; f < fb; ++f) {
                // A thread's first band fetches the layer's code (2 threads:
                // 0.754-0.766 -> 0.737-0.761 ms against prefetch hints for it).
                if (!code_touched) TouchLines(jit->block_code(f), jit->block_code_bytes(f));
                queue.Issue(slice);
                if (!jit->Run(f, bin, static_cast<int64_t>(band.input_size), bout, out_floats,
                              c0 * tile, c1 - c0))
                  std::abort();  // outside the validated buffers: a driver bug
              }
              code_touched = true;
            }
            bad_out |= StoreOutputRows(set, s, plan, true, bout, band.out_plane, wp, r0, r0, r1,
                                       0, s.out_c, dest);
          }
        }
        if (bad_in) non_finite.store(true, std::memory_order_relaxed);
        if (bad_out) out_non_finite.store(true, std::memory_order_relaxed);
      });
      // PropagateNonFinite reads the whole padded input.
      if (non_finite) pack_whole();
    } else {
      // A direct 1x1 conv's code reads a planar input and writes a planar
      // output where they are (PatternGeometry::direct).
      const bool direct_in = g.direct && io.planar_input != nullptr && !input_packed;
      const bool direct_out = g.direct && io.planar_output != nullptr && next == nullptr;
      if (g.small_map) pack_small();
      else if (g.pair_map) pack_pairs();
      else if (!input_packed && !direct_in) pack_whole();
      if (jit != nullptr) {
        const int fb = jit->num_blocks();
        const int64_t tile = jit->layout().TileLen();
        if (!direct_out && scratch->output.size() < static_cast<size_t>(s.out_c * out_plane))
          scratch->output.assign(static_cast<size_t>(s.out_c * out_plane), 0.f);
        const float* jit_in = direct_in ? io.planar_input : scratch->input.data();
        const int64_t in_size = direct_in ? static_cast<int64_t>(g.input_size)
                                          : static_cast<int64_t>(scratch->input.size());
        float* jit_out = direct_out ? io.planar_output : scratch->output.data();
        const int64_t out_size = direct_out ? s.out_c * out_plane
                                            : static_cast<int64_t>(scratch->output.size());
        const uint64_t call = NextCall();
        const bool checked = jit->layout().check_input;
        // A direct conv's last positions: the tile ending at the plane's end,
        // in the same pass as the block's whole tiles where the code can
        // (JitKernel::Tail), else in a call of its own.
        JitKernel::Tail tail_tile;
        tail_tile.start = plane - tile;
        tail_tile.skip = static_cast<int>(tile - g.direct_tail);
        const bool fused_tail = jit->FusesTail();
        const int64_t ranges = tasks / fb;
        const bool filter_major =
            JitFilterMajor(static_cast<int64_t>(jit->code_bytes()), in_size * int64_t(sizeof(float)),
                           ranges, fb, pool != nullptr ? pool->num_threads() : 1);
        scratch->filter_major = filter_major;
        const auto block_of = [&](int64_t t) { return int(filter_major ? t / ranges : t % fb); };
        ParallelFor(pool, tasks, GrainFor(macs_task), [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            // A block's code comes from L3 or DRAM the first time this
            // thread runs it in this call: read it, and the next block's,
            // in ahead (TouchLines).
            if (t == t0) TouchBlockOnce(jit, block_of(t), call);
            if (t + 1 < t1) TouchBlockOnce(jit, block_of(t + 1), call);
            const int f = block_of(t);
            const int64_t b0 = (filter_major ? t % ranges : t / fb) * blocks_per_task;
            const int64_t b1 = std::min<int64_t>(num_blocks, b0 + blocks_per_task);
            // Nothing packed the input, so nothing checked it yet.  Code
            // that checks its own loads leaves only the channels no filter
            // reads; otherwise the task of a range's first filter block scans
            // the range's columns.
            const bool tail = g.direct_tail > 0 && b1 == num_blocks;
            if (direct_in && f == 0) {
              const int64_t end = tail ? plane : b1 * block_len;
              bool bad = false;
              const auto scan = [&](int c) {
                bad |= set->any_non_finite(jit_in + c * plane + b0 * block_len, end - b0 * block_len);
              };
              if (checked)
                for (int32_t c : jit->layout().unread_channels) scan(c);
              else
                for (int c = 0; c < s.in_c; ++c) scan(c);
              if (bad) non_finite.store(true, std::memory_order_relaxed);
            }
            // Run() refuses arguments outside the validated buffers; the
            // driver's geometry makes that impossible, so it is a hard bug.
            bool loaded_non_finite = false;
            if (!jit->Run(f, jit_in, in_size, jit_out, out_size, b0 * block_len,
                          (b1 - b0) * block_len / tile, &loaded_non_finite,
                          tail && fused_tail ? &tail_tile : nullptr, io.residual, out_size) ||
                (tail && !fused_tail &&
                 !jit->Run(f, jit_in, in_size, jit_out, out_size, plane - tile, 1,
                           &loaded_non_finite, nullptr, io.residual, out_size)))
              std::abort();
            if (loaded_non_finite && direct_in) non_finite.store(true, std::memory_order_relaxed);
          }
        });
        // PropagateNonFinite reads the padded input.
        if (direct_in && non_finite) pack_whole();
      } else {
        if (g.pair_map) {
          args.input = scratch->input.data() + kSmallMapLanes;
          args.small_index = scratch->small_index.data();
          args.small_mask = scratch->small_mask.data();
          args.small_shift = scratch->small_shift.data();
          args.out_vectors = g.tile_vectors;
        }
        if (g.small_map) {
          args.input = scratch->input.data();
          args.small_index = scratch->small_index.data();
          args.small_mask = scratch->small_mask.data();
          if (!scratch->small_quad_index.empty()) {
            args.small_quad_index = scratch->small_quad_index.data();
            args.small_quad_mask = scratch->small_quad_mask.data();
            if (!scratch->small_quad_kernels.empty())
              args.small_quad_kernels = scratch->small_quad_kernels.data();
          }
        }
        ParallelFor(pool, tasks, GrainFor(macs_task), [&](int64_t t0, int64_t t1) {
          (g.small_map  ? set->pattern_small_map
           : g.pair_map ? set->pattern_pair_map
                        : set->pattern_conv2d)(args, t0, t1);
        });
      }
      const float* chw = scratch->output.data();
      const bool done = jit != nullptr;  // the generated epilogue did bias and activation
      if (direct_out) {
        // the code wrote the planar output, bias and activation applied
      } else if (to_planes) {
        ParallelFor(pool, s.out_c, 8, [&](int64_t o0, int64_t o1) {
          if (StoreOutputRows(set, s, plan, done, chw, out_plane, g.out_pitch, 0, 0, s.out_h,
                              static_cast<int>(o0), static_cast<int>(o1), dest))
            out_non_finite.store(true, std::memory_order_relaxed);
        });
      } else {
        ParallelFor(pool, s.out_h, 1, [&](int64_t y0, int64_t y1) {
          StoreOutputRows(set, s, plan, done, chw, out_plane, g.out_pitch, 0, static_cast<int>(y0),
                          static_cast<int>(y1), 0, s.out_c, dest);
        });
      }
    }
    if (non_finite) {
      // PropagateNonFinite reads padded planes: a small map makes them now.
      if (g.small_map || g.pair_map) {
        scratch->padded.assign(static_cast<size_t>(plane * s.in_c), 0.f);
        PackInputRows(set, s, wp, plane, in_b, io.planar_input, s.pad_top,
                      std::min(s.pad_top + s.in_h, g.hp), false,
                      scratch->padded.data() + static_cast<int64_t>(s.pad_top) * wp);
      }
      const float* padded =
          g.small_map || g.pair_map ? scratch->padded.data() : scratch->input.data();
      if (to_planes) {
        const PlaneDest& d = dest.planes;
        PropagateNonFinite(s, plan, g, padded, pool, [&](int oy, int ox, int o) {
          const int py = oy + d.pad_top, px = ox + d.pad_left;
          if (py < d.hp && px < d.wp) {
            d.base[o * d.plane + static_cast<int64_t>(py) * d.wp + px] = NAN;
            out_non_finite.store(true, std::memory_order_relaxed);
          }
        });
      } else {
        float* out_b = dest.nhwc;
        PropagateNonFinite(s, plan, g, padded, pool, [&](int oy, int ox, int o) {
          out_b[(static_cast<int64_t>(oy) * s.out_w + ox) * s.out_c + o] = NAN;
        });
      }
    }
    if (next != nullptr) next->scratch->input_non_finite = out_non_finite;
  }
}

}  // namespace cocopie
