#include "cc/kernels/dispatch.h"

#include <algorithm>

#include "cc/kernels/reference.h"

namespace cocopie {

namespace generic {
extern const KernelSet kKernelSet;
}
#if defined(COCOPIE_HAVE_AVX2_KERNELS)
namespace avx2_fma {
extern const KernelSet kKernelSet;
}
#endif

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
  return s.empty() ? "baseline" : s;
}

const std::vector<const KernelSet*>& CompiledKernelSets() {
  static const std::vector<const KernelSet*> sets = [] {
    std::vector<const KernelSet*> v;
#if defined(COCOPIE_HAVE_AVX2_KERNELS)
    v.push_back(&avx2_fma::kKernelSet);
#endif
    v.push_back(&generic::kKernelSet);
    return v;
  }();
  return sets;
}

namespace {

bool Supported(const KernelSet* set) {
  const std::string isa = set->isa;
  if (isa == "avx2_fma") return DetectCpu().avx2 && DetectCpu().fma;
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

void RunConv2D(const KernelSet* set, const ConvShape& s, const PackedConv& w,
               const float* filter_ohwi, const float* input, float* output,
               ThreadPool* pool) {
  if (set == nullptr) {
    Conv2DReference(s, input, filter_ohwi, w.bias.data(), output);
    return;
  }
  const int64_t rows = static_cast<int64_t>(s.batch) * s.out_h;
  const int64_t macs_row = static_cast<int64_t>(s.out_w) * s.out_c * s.k_h * s.k_w * s.in_c;
  ParallelFor(pool, rows, GrainFor(macs_row), [&](int64_t b, int64_t e) {
    set->conv2d(s, w, input, output, b, e);
  });
}

void RunDepthwise(const KernelSet* set, const ConvShape& s,
                  const PackedDepthwise& w, const float* input, float* output,
                  ThreadPool* pool) {
  if (set == nullptr) {
    DepthwiseConv2DReference(s, input, w.hwc.data(), w.bias.data(), output);
    return;
  }
  const int64_t rows = static_cast<int64_t>(s.batch) * s.out_h;
  const int64_t macs_row = static_cast<int64_t>(s.out_w) * s.out_c * s.k_h * s.k_w;
  ParallelFor(pool, rows, GrainFor(macs_row), [&](int64_t b, int64_t e) {
    set->depthwise(s, w, input, output, b, e);
  });
}

void RunFullyConnected(const KernelSet* set, int batch,
                       const PackedFullyConnected& w, float act_min,
                       float act_max, const float* input, float* output,
                       ThreadPool* pool) {
  if (set == nullptr) {
    FullyConnectedReference(batch, w.in, w.out, input, w.oi.data(),
                            w.bias.data(), act_min, act_max, output);
    return;
  }
  ParallelFor(pool, w.out, GrainFor(static_cast<int64_t>(batch) * w.in),
              [&](int64_t b, int64_t e) {
                set->fully_connected(batch, w, act_min, act_max, input, output, b, e);
              });
}

}  // namespace cocopie
