#include <algorithm>
#include <map>
#include <numeric>
#include <unordered_set>

#include "cc/kernels/pattern_conv.h"

namespace cocopie {
namespace {

// Non-zero mask of every kernel, [out_c][in_c].
std::vector<uint32_t> KernelMasks(const float* w, int out_c, int k_h, int k_w, int in_c) {
  std::vector<uint32_t> masks(static_cast<size_t>(out_c) * in_c, 0);
  for (int o = 0; o < out_c; ++o)
    for (int y = 0; y < k_h; ++y)
      for (int x = 0; x < k_w; ++x) {
        const float* src = w + ((static_cast<size_t>(o) * k_h + y) * k_w + x) * in_c;
        const uint32_t bit = 1u << (y * k_w + x);
        for (int i = 0; i < in_c; ++i)
          if (src[i] != 0.f) masks[static_cast<size_t>(o) * in_c + i] |= bit;
      }
  return masks;
}

int Popcount(uint32_t v) { return __builtin_popcount(v); }

}  // namespace

int64_t PatternPlan::FkwBytes() const {
  return static_cast<int64_t>(offset.size() + reorder.size() + index.size() + stride.size()) *
             4 +
         static_cast<int64_t>(fkw_weights.size()) * 4;
}
int64_t PatternPlan::CsrBytes() const {
  return (out_c + 1) * 4LL + kept_weights * 8LL;  // row pointers + (column, value)
}
int64_t PatternPlan::DenseBytes() const {
  return static_cast<int64_t>(out_c) * in_c * k_h * k_w * 4;
}

PatternStats AnalyzePatterns(const float* filter, int out_c, int k_h, int k_w, int in_c) {
  PatternStats st;
  st.total_kernels = static_cast<int64_t>(out_c) * in_c;
  st.total_weights = st.total_kernels * k_h * k_w;
  st.filter_depth = in_c * k_h * k_w;
  if (k_h * k_w > 32) {
    // No mask holds so many taps (a 7x7 stem before its phase split): the
    // kept weights still count, so the density is the layer's; the split
    // kernel's own analysis judges its patterns.
    const int taps = k_h * k_w;
    for (int64_t o = 0; o < out_c; ++o)
      for (int i = 0; i < in_c; ++i) {
        int kept = 0;
        for (int t = 0; t < taps; ++t) kept += filter[(o * taps + t) * in_c + i] != 0.f;
        st.kept_weights += kept;
        st.kept_kernels += kept > 0;
      }
    return st;
  }
  const std::vector<uint32_t> masks = KernelMasks(filter, out_c, k_h, k_w, in_c);
  std::map<uint32_t, int> distinct;
  std::map<std::vector<uint32_t>, int> signatures;
  for (int o = 0; o < out_c; ++o) {
    const uint32_t* row = masks.data() + static_cast<size_t>(o) * in_c;
    for (int i = 0; i < in_c; ++i) {
      if (row[i] == 0) continue;
      distinct[row[i]]++;
      st.kept_kernels++;
      st.kept_weights += Popcount(row[i]);
    }
    st.max_group = std::max(st.max_group, ++signatures[std::vector<uint32_t>(row, row + in_c)]);
  }
  st.distinct_patterns = static_cast<int>(distinct.size());
  return st;
}

std::string BuildPatternPlanWith(const float* filter, int out_c, int k_h, int k_w, int in_c,
                                 const float* bias, int group,
                                 const std::vector<uint32_t>& patterns,
                                 const std::vector<int>& kernel_pattern,
                                 const std::vector<int>& given_order, PatternPlan* plan) {
  if (k_h * k_w > 32) return "kernel larger than 32 positions";
  if (out_c <= 0 || in_c <= 0 || k_h <= 0 || k_w <= 0) return "empty filter";
  if (kernel_pattern.size() != static_cast<size_t>(out_c) * in_c) return "kernel map size mismatch";
  const std::vector<int> order =
      given_order.empty() ? DefaultFilterOrder(kernel_pattern, out_c, in_c) : given_order;
  if (order.size() != static_cast<size_t>(out_c)) return "filter order size mismatch";
  group = std::max(1, std::min(group, kMaxGroup));
  PatternPlan p;
  p.out_c = out_c; p.in_c = in_c; p.k_h = k_h; p.k_w = k_w;
  p.bias = bias ? std::vector<float>(bias, bias + out_c) : std::vector<float>(out_c, 0.f);
  p.patterns = patterns;
  for (uint32_t m : patterns) {
    if (m == 0 || (k_h * k_w < 32 && (m >> (k_h * k_w)) != 0)) return "pattern outside the kernel";
    std::vector<int> taps;
    for (int b = 0; b < k_h * k_w; ++b)
      if (m >> b & 1u) taps.push_back(b);
    p.pattern_taps.push_back(taps);
  }
  const int P = p.num_patterns();

  // Each filter's kernel list sorted by (pattern, input channel): one run per
  // pattern, so the inner loop for a run is branch-free.
  using Kernel = std::pair<int, int>;  // (pattern id, input channel)
  std::vector<std::vector<Kernel>> lists(out_c);
  for (int o = 0; o < out_c; ++o) {
    for (int i = 0; i < in_c; ++i) {
      const int q = kernel_pattern[static_cast<size_t>(o) * in_c + i];
      if (q >= P) return "kernel pattern id out of range";
      if (q >= 0) lists[o].push_back({q, i});
    }
    std::sort(lists[o].begin(), lists[o].end());
  }

  p.offset.push_back(0);
  p.stride.reserve(static_cast<size_t>(out_c) * (P + 1));
  std::vector<int64_t> weight_start(out_c + 1, 0);  // fkw_weights offset per filter
  for (int f = 0; f < out_c; ++f) {
    const int o = order[f];
    if (o < 0 || o >= out_c) return "filter order is not a permutation";
    p.reorder.push_back(o);
    int run_start = 0;
    for (int q = 0; q <= P; ++q) {
      p.stride.push_back(run_start);
      while (run_start < static_cast<int>(lists[o].size()) && lists[o][run_start].first == q)
        ++run_start;
    }
    for (const Kernel& k : lists[o]) {
      p.index.push_back(k.second);
      for (int tap : p.pattern_taps[k.first]) {
        const int y = tap / k_w, x = tap % k_w;
        p.fkw_weights.push_back(filter[((static_cast<size_t>(o) * k_h + y) * k_w + x) * in_c + k.second]);
      }
      p.kept_kernels++;
      p.kept_weights += static_cast<int64_t>(p.pattern_taps[k.first].size());
    }
    p.offset.push_back(static_cast<int32_t>(p.index.size()));
    weight_start[f + 1] = static_cast<int64_t>(p.fkw_weights.size());
  }
  std::vector<int> sorted_order(order);
  std::sort(sorted_order.begin(), sorted_order.end());
  for (int f = 0; f < out_c; ++f)
    if (sorted_order[f] != f) return "filter order is not a permutation";

  // Units: up to `group` adjacent filters with identical kernel lists.
  for (int f = 0; f < out_c;) {
    int g = 1;
    while (g < group && f + g < out_c && lists[order[f + g]] == lists[order[f]]) ++g;
    p.unit_begin.push_back(f);
    p.unit_size.push_back(g);
    p.unit_weight_offset.push_back(static_cast<int32_t>(p.unit_weights.size()));
    // Interleave [kernel tap][g] so one input load feeds g broadcasts.
    const int64_t n = weight_start[f + 1] - weight_start[f];
    for (int64_t t = 0; t < n; ++t)
      for (int j = 0; j < g; ++j) p.unit_weights.push_back(p.fkw_weights[weight_start[f + j] + t]);
    f += g;
  }
  *plan = std::move(p);
  return "";
}

void BuildPatternExec(const PatternPlan& p, int chunk_channels, int64_t channel_stride,
                      PatternExec* exec) {
  const int P = p.num_patterns();
  const int units = static_cast<int>(p.unit_begin.size());
  PatternExec e;
  e.chunk_channels = std::max(1, std::min(chunk_channels, p.in_c));
  e.num_chunks = (p.in_c + e.chunk_channels - 1) / e.chunk_channels;
  e.kernel_offset.push_back(0);
  struct Kernel {
    int chunk, pattern, channel;
    const float* w;  // its [tap][g] weights in unit_weights
  };
  std::vector<Kernel> list;
  for (int u = 0; u < units; ++u) {
    const int f0 = p.unit_begin[u], g = p.unit_size[u];
    // The unit's kernels in FKW order (pattern runs of its first filter).
    list.clear();
    const float* w = p.unit_weights.data() + p.unit_weight_offset[u];
    const int32_t* runs = p.stride.data() + static_cast<int64_t>(f0) * (P + 1);
    for (int q = 0; q < P; ++q)
      for (int k = runs[q]; k < runs[q + 1]; ++k) {
        const int c = p.index[p.offset[f0] + k];
        list.push_back({c / e.chunk_channels, q, c, w});
        w += p.pattern_taps[q].size() * g;
      }
    std::sort(list.begin(), list.end(), [](const Kernel& a, const Kernel& b) {
      if (a.chunk != b.chunk) return a.chunk < b.chunk;
      return a.pattern != b.pattern ? a.pattern < b.pattern : a.channel < b.channel;
    });
    size_t k = 0;
    for (int ch = 0; ch < e.num_chunks; ++ch) {
      e.weight_offset.push_back(static_cast<int64_t>(e.weights.size()));
      for (int q = 0; q <= P; ++q) {
        e.runs.push_back(static_cast<int32_t>(k));
        while (q < P && k < list.size() && list[k].chunk == ch && list[k].pattern == q) {
          e.channel.push_back(static_cast<int32_t>(list[k].channel * channel_stride));
          const size_t n = p.pattern_taps[q].size() * g;
          e.weights.insert(e.weights.end(), list[k].w, list[k].w + n);
          ++k;
        }
      }
    }
    e.kernel_offset.push_back(static_cast<int32_t>(e.channel.size()));
  }
  *exec = std::move(e);
}

std::vector<int> DefaultFilterOrder(const std::vector<int>& kernel_pattern, int out_c, int in_c) {
  // Filter kernel reorder: filters with identical kernel lists are adjacent
  // (they can share input loads); otherwise heavier filters first so threads
  // that take units in order finish together.
  std::vector<std::vector<std::pair<int, int>>> lists(out_c);
  for (int o = 0; o < out_c; ++o) {
    for (int i = 0; i < in_c; ++i) {
      const int q = kernel_pattern[static_cast<size_t>(o) * in_c + i];
      if (q >= 0) lists[o].push_back({q, i});
    }
    std::sort(lists[o].begin(), lists[o].end());
  }
  std::vector<int> order(out_c);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    if (lists[a].size() != lists[b].size()) return lists[a].size() > lists[b].size();
    return lists[a] < lists[b];
  });
  return order;
}

std::string BuildPatternPlan(const float* filter, int out_c, int k_h, int k_w, int in_c,
                             const float* bias, int group, PatternPlan* plan) {
  if (k_h * k_w > 32) return "kernel larger than 32 positions";
  if (out_c <= 0 || in_c <= 0 || k_h <= 0 || k_w <= 0) return "empty filter";
  const std::vector<uint32_t> masks = KernelMasks(filter, out_c, k_h, k_w, in_c);
  // Patterns: most taps first, then by mask value (deterministic ids).
  // Distinct masks first (a layer has ~10^5 kernels but a handful of masks).
  std::vector<uint32_t> patterns;
  {
    std::unordered_set<uint32_t> seen;
    for (uint32_t m : masks)
      if (m != 0 && seen.insert(m).second) patterns.push_back(m);
  }
  std::sort(patterns.begin(), patterns.end(), [](uint32_t a, uint32_t b) {
    return Popcount(a) != Popcount(b) ? Popcount(a) > Popcount(b) : a < b;
  });
  patterns.erase(std::unique(patterns.begin(), patterns.end()), patterns.end());
  std::map<uint32_t, int> pid;
  for (size_t i = 0; i < patterns.size(); ++i) pid[patterns[i]] = static_cast<int>(i);
  std::vector<int> kernel_pattern(masks.size());
  for (size_t k = 0; k < masks.size(); ++k) kernel_pattern[k] = masks[k] ? pid[masks[k]] : -1;

  const std::vector<int> order = DefaultFilterOrder(kernel_pattern, out_c, in_c);
  return BuildPatternPlanWith(filter, out_c, k_h, k_w, in_c, bias, group, patterns,
                              kernel_pattern, order, plan);
}

}  // namespace cocopie
