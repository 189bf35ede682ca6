// The backend-neutral half of the generated pattern convolution: which
// filters share a block, which columns each block walks, which weights feed
// which accumulator, and the proof that every offset stays in its buffer.
#include <algorithm>
#include <cstring>
#include <limits>

#include "cc/kernels/jit_pattern.h"

namespace cocopie {

const char* JitIsaName(JitIsa isa) {
  switch (isa) {
    case JitIsa::kAuto: return "auto";
    case JitIsa::kNone: return "static";
    case JitIsa::kAvx2: return "avx2_fma";
    case JitIsa::kAvx512: return "avx512";
    case JitIsa::kNeon: return "neon";
  }
  return "?";
}

bool ParseJitIsa(const std::string& name, JitIsa* isa) {
  for (JitIsa v : {JitIsa::kAuto, JitIsa::kNone, JitIsa::kAvx2, JitIsa::kAvx512, JitIsa::kNeon})
    if (name == JitIsaName(v)) {
      *isa = v;
      return true;
    }
  if (name == "off") {
    *isa = JitIsa::kNone;
    return true;
  }
  return false;
}

int JitLanes(JitIsa isa) {
  switch (isa) {
    case JitIsa::kAvx512: return 16;
    case JitIsa::kAvx2: return 8;
    case JitIsa::kNeon: return 4;
    default: return 0;
  }
}

int JitMaxFilters(JitIsa isa, int vectors, bool check_input) {
  if (vectors < 1 || vectors > 4) return 0;
  // Registers: M*V accumulators + V inputs + one broadcast register, except
  // AVX-512 with V = 1, whose FMAs take the weight as an embedded broadcast.
  // NEON: the register is a quad of 4 weights, FMLA by element picks one.
  // The input check: a temporary and the flag.
  const int check = check_input ? 2 : 0;
  if (isa == JitIsa::kAvx512) return vectors == 1 ? 31 - check : (31 - vectors - check) / vectors;
  if (isa == JitIsa::kAvx2) return (15 - vectors - check) / vectors;
  if (isa == JitIsa::kNeon) return check_input ? 0 : (31 - vectors) / vectors;
  return 0;
}

bool JitChecksInput(JitIsa isa) { return isa == JitIsa::kAvx512 || isa == JitIsa::kAvx2; }

int JitTunedMaxFilters(JitIsa isa, int vectors, bool check_input) {
  const int m = JitMaxFilters(isa, vectors, check_input);
  return isa == JitIsa::kAvx512 && vectors == 1 ? std::min(m, check_input ? 27 : 29) : m;
}

namespace {

constexpr int64_t kMaxDisp = std::numeric_limits<int32_t>::max();

struct Use {
  int32_t column;  // channel * taps + tap
  int32_t slot;
  float w;
};

// Greedy blocking by shared columns: each block starts from the heaviest
// filter left and adds, one at a time, the filter whose columns overlap the
// block's union most (ties: fewer new columns, then plan order).  This is
// filter kernel reorder with a measurable job: more FMAs per input load.
// Its popcounts are most of a large layer's Prepare (ResNet-50's 2048-filter
// 1x1 convs): on x86-64 a POPCNT clone is chosen at load time where the CPU
// has the instruction, since the baseline build calls libgcc's bit loop.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("popcnt", "default")))
#endif
std::vector<std::vector<int>> BlockFilters(const std::vector<std::vector<int32_t>>& cols,
                                           int num_columns, int m, bool reorder) {
  const int n = static_cast<int>(cols.size());
  std::vector<std::vector<int>> blocks;
  if (!reorder) {
    for (int f = 0; f < n; f += m) {
      blocks.emplace_back();
      for (int j = f; j < std::min(n, f + m); ++j) blocks.back().push_back(j);
    }
    return blocks;
  }
  const int words = (num_columns + 63) / 64;
  std::vector<uint64_t> bits(static_cast<size_t>(n) * words, 0);
  for (int f = 0; f < n; ++f)
    for (int32_t c : cols[f]) bits[static_cast<size_t>(f) * words + c / 64] |= 1ull << (c % 64);
  std::vector<int> left(n);
  for (int f = 0; f < n; ++f) left[f] = f;  // plan order: heavier filters first
  std::vector<uint64_t> uni(words);
  while (!left.empty()) {
    std::vector<int> block = {left.front()};
    left.erase(left.begin());
    std::memcpy(uni.data(), &bits[static_cast<size_t>(block[0]) * words], words * 8);
    while (static_cast<int>(block.size()) < m && !left.empty()) {
      int best = 0;
      int64_t best_shared = -1, best_new = 0;
      for (size_t i = 0; i < left.size(); ++i) {
        const uint64_t* b = &bits[static_cast<size_t>(left[i]) * words];
        int64_t shared = 0, fresh = 0;
        for (int w = 0; w < words; ++w) {
          shared += __builtin_popcountll(b[w] & uni[w]);
          fresh += __builtin_popcountll(b[w] & ~uni[w]);
        }
        if (shared > best_shared || (shared == best_shared && fresh < best_new)) {
          best = static_cast<int>(i);
          best_shared = shared;
          best_new = fresh;
        }
      }
      const int f = left[best];
      left.erase(left.begin() + best);
      block.push_back(f);
      for (int w = 0; w < words; ++w) uni[w] |= bits[static_cast<size_t>(f) * words + w];
    }
    blocks.push_back(block);
  }
  return blocks;
}

// BlockFilters within each part (part[f] in [0, parts)), the parts' blocks
// in part order: no block mixes two parts.
std::vector<std::vector<int>> BlockFiltersInParts(const std::vector<std::vector<int32_t>>& cols,
                                                  int num_columns, int m, bool reorder,
                                                  const std::vector<int>& part, int parts) {
  if (parts <= 1) return BlockFilters(cols, num_columns, m, reorder);
  std::vector<std::vector<int>> blocks;
  for (int q = 0; q < parts; ++q) {
    std::vector<std::vector<int32_t>> sub;
    std::vector<int> ids;  // sub's filters in plan order
    for (size_t f = 0; f < cols.size(); ++f)
      if (part[f] == q) sub.push_back(cols[f]), ids.push_back(static_cast<int>(f));
    for (std::vector<int>& b : BlockFilters(sub, num_columns, m, reorder)) {
      for (int& f : b) f = ids[f];
      blocks.push_back(std::move(b));
    }
  }
  return blocks;
}

}  // namespace

std::vector<JitSegment> JitSegments(const JitBlock& b) {
  std::vector<JitSegment> out(b.segment_begin.size());
  const size_t slots = b.out_channel.size();
  size_t u = 0;
  for (size_t g = 0; g < out.size(); ++g) {
    JitSegment& sg = out[g];
    sg.first = g == 0;
    sg.last = g + 1 == out.size();
    sg.c0 = b.segment_begin[g];
    sg.c1 = sg.last ? b.column_offset.size() : b.segment_begin[g + 1];
    sg.u0 = u;
    for (size_t c = sg.c0; c < sg.c1; ++c) u += b.column_uses[c];
    sg.u1 = u;
    sg.moved.assign(slots, sg.first || sg.last ? 1 : 0);
    for (size_t k = sg.u0; k < sg.u1; ++k) sg.moved[b.use_slot[k]] = 1;
  }
  return out;
}

std::string BuildJitLayout(const PatternPlan& p, const int32_t* tap_offsets,
                           int64_t channel_stride, int64_t input_floats, int64_t out_plane,
                           JitIsa isa, int filters, int vectors, bool reorder_filters,
                           int segment_uses, float act_min, float act_max, JitLayout* layout,
                           bool check_input, int channel_parts) {
  if (JitLanes(isa) == 0) return "no code generator for this ISA";
  if (channel_parts < 1 || channel_parts > p.out_c) channel_parts = 1;
  if (check_input && !JitChecksInput(isa)) return "this ISA's generator cannot check its input";
  if (vectors == 0) vectors = 1;
  const int max_m = JitMaxFilters(isa, vectors, check_input);
  if (max_m == 0) return "jit_vectors must be 1..4";
  // AVX-512, V = 1: 28 filters leave zmm30-31 to the shifted column loads
  // (jit_x86.cc), 27 with the input check's two registers.
  if (filters == 0)
    filters = isa == JitIsa::kAvx512 ? std::min(check_input ? 27 : 28, max_m) : max_m;
  // (JitTunedMaxFilters(isa, vectors, true) is the most that keeps them.)
  if (filters < 1 || filters > max_m)
    return "jit_filters must be 1.." + std::to_string(max_m) + " with jit_vectors=" +
           std::to_string(vectors);
  // Ranges of fewer than half a block's filters would make blocks too
  // small to share their loads: one range then.
  if (int64_t(p.out_c) * 2 < int64_t(channel_parts) * filters) channel_parts = 1;
  const int taps = p.k_h * p.k_w;
  const int P = p.num_patterns();
  if (p.out_c <= 0 || p.in_c <= 0 || taps <= 0 || taps > kMaxTaps) return "empty or oversized plan";
  if (p.offset.size() != static_cast<size_t>(p.out_c) + 1 ||
      p.reorder.size() != static_cast<size_t>(p.out_c) ||
      p.stride.size() != static_cast<size_t>(p.out_c) * (P + 1) ||
      static_cast<int>(p.pattern_taps.size()) != P)
    return "inconsistent plan arrays";
  if (channel_stride <= 0 || out_plane <= 0 || input_floats <= 0) return "empty geometry";
  if (p.bias.size() != static_cast<size_t>(p.out_c)) return "bias size does not match the filters";
  if (!(act_min <= act_max)) return "activation bounds are not ordered";
  if (static_cast<int64_t>(p.in_c) * taps > std::numeric_limits<int32_t>::max())
    return "too many columns";

  JitLayout L;
  L.isa = isa;
  L.lanes = JitLanes(isa);
  L.filters = filters;
  L.vectors = vectors;
  L.channel_stride = channel_stride;
  L.out_plane = out_plane;
  L.input_floats = input_floats;
  L.act_min = act_min;
  L.act_max = act_max;
  L.check_input = check_input;
  L.channel_parts = channel_parts;
  L.segment_uses = segment_uses == 0  ? kJitSegmentUses
                   : segment_uses < 0 ? std::numeric_limits<int64_t>::max()
                                      : segment_uses;
  const int64_t tile = L.TileLen();

  // Every filter's uses, from the FKW arrays (checked as they are read).
  std::vector<std::vector<Use>> uses(p.out_c);
  std::vector<std::vector<int32_t>> cols(p.out_c);
  std::vector<int64_t> tap_offset(taps, -1);
  size_t w = 0;
  for (int f = 0; f < p.out_c; ++f) {
    const int32_t* runs = p.stride.data() + static_cast<size_t>(f) * (P + 1);
    const int32_t k0 = p.offset[f], k1 = p.offset[f + 1];
    if (k0 < 0 || k0 > k1 || k1 > static_cast<int32_t>(p.index.size()) || runs[0] != 0 ||
        runs[P] != k1 - k0)
      return "inconsistent FKW offsets";
    for (int q = 0; q < P; ++q)  // all runs first: each must lie inside the filter's kernels
      if (runs[q] > runs[q + 1]) return "inconsistent FKW pattern runs";
    for (int q = 0; q < P; ++q) {
      const std::vector<int>& pt = p.pattern_taps[q];
      if (pt.size() > static_cast<size_t>(kMaxTaps)) return "pattern with too many taps";
      for (int k = runs[q]; k < runs[q + 1]; ++k) {
        const int c = p.index[k0 + k];
        if (c < 0 || c >= p.in_c) return "kernel input channel out of range";
        for (size_t t = 0; t < pt.size(); ++t) {
          const int tap = pt[t];
          if (tap < 0 || tap >= taps) return "pattern tap outside the kernel";
          const int64_t off = tap_offsets[q * kMaxTaps + t];
          if (off < 0 || (tap_offset[tap] >= 0 && tap_offset[tap] != off))
            return "inconsistent tap offsets";
          tap_offset[tap] = off;
          if (w >= p.fkw_weights.size()) return "FKW weights shorter than the kernels";
          const int32_t col = c * taps + tap;
          uses[f].push_back({col, 0, p.fkw_weights[w++]});
          cols[f].push_back(col);
        }
      }
    }
    std::sort(cols[f].begin(), cols[f].end());
    if (std::adjacent_find(cols[f].begin(), cols[f].end()) != cols[f].end())
      return "a filter uses one input channel twice";
  }
  if (w != p.fkw_weights.size()) return "FKW weights longer than the kernels";

  std::vector<char> column_checked(static_cast<size_t>(p.in_c) * taps, 0);
  std::vector<int> part(static_cast<size_t>(p.out_c), 0);
  for (int f = 0; f < p.out_c; ++f) {
    const int o = p.reorder[f];
    if (o < 0 || o >= p.out_c) return "filter order out of range";
    part[f] = static_cast<int>(int64_t(o) * channel_parts / p.out_c);
  }
  for (const std::vector<int>& members : BlockFiltersInParts(cols, p.in_c * taps, filters,
                                                             reorder_filters, part, channel_parts)) {
    JitBlock b;
    std::vector<Use> all;
    for (size_t s = 0; s < members.size(); ++s) {
      const int f = members[s];
      const int o = p.reorder[f];  // checked above
      b.out_channel.push_back(o);
      for (Use u : uses[f]) {
        u.slot = static_cast<int32_t>(s);
        all.push_back(u);
      }
    }
    // Walk columns in memory order (channel, tap): neighbouring loads share
    // cache lines.
    std::sort(all.begin(), all.end(), [](const Use& a, const Use& c) {
      return a.column != c.column ? a.column < c.column : a.slot < c.slot;
    });
    for (size_t i = 0; i < all.size();) {
      size_t j = i;
      while (j < all.size() && all[j].column == all[i].column) {
        b.use_slot.push_back(static_cast<uint8_t>(all[j].slot));
        b.weights.push_back(all[j].w);
        ++j;
      }
      const int64_t off =
          static_cast<int64_t>(all[i].column / taps) * channel_stride + tap_offset[all[i].column % taps];
      b.column_offset.push_back(off);
      b.column_uses.push_back(static_cast<int32_t>(j - i));
      if (check_input) b.column_check.push_back(!column_checked[all[i].column]);
      column_checked[all[i].column] = 1;
      L.max_column_offset = std::max(L.max_column_offset, off);
      i = j;
    }
    b.num_uses = static_cast<int64_t>(b.weights.size());
    // Segments of equal size, the fewest of at most segment_uses each (cut
    // at column boundaries, so a segment may exceed its share by one column).
    const int64_t pieces = std::max<int64_t>(
        1, b.num_uses / L.segment_uses + (b.num_uses % L.segment_uses != 0));
    const int64_t share = (b.num_uses + pieces - 1) / pieces;
    b.segment_begin.push_back(0);
    int64_t in_segment = 0;
    for (size_t c = 0; c < b.column_uses.size(); ++c) {
      if (in_segment >= share) {
        b.segment_begin.push_back(static_cast<int32_t>(c));
        in_segment = 0;
      }
      in_segment += b.column_uses[c];
    }
    L.segments += static_cast<int64_t>(b.segment_begin.size());
    // Input planes one segment reads (columns run channel-major, and a
    // column's tap offset is less than a plane): the driver sizes its calls
    // so that many planes' rows stay in L2.
    for (size_t k = 0; k < b.segment_begin.size(); ++k) {
      const size_t c0 = b.segment_begin[k];
      const size_t c1 = k + 1 < b.segment_begin.size() ? b.segment_begin[k + 1]
                                                        : b.column_offset.size();
      int64_t planes = 0, last = -1;
      for (size_t c = c0; c < c1; ++c) {
        const int64_t ch = b.column_offset[c] / std::max<int64_t>(1, channel_stride);
        planes += ch != last;
        last = ch;
      }
      L.max_segment_planes = std::max(L.max_segment_planes, planes);
    }
    for (int32_t o : b.out_channel) b.weights.push_back(p.bias[o]);
    b.weights.push_back(act_min);
    b.weights.push_back(act_max);
    L.uses += b.num_uses;
    L.columns += static_cast<int64_t>(b.column_offset.size());
    L.blocks.push_back(std::move(b));
  }
  std::vector<char> read(p.in_c, 0);
  for (const std::vector<int32_t>& fc : cols)
    for (int32_t col : fc) read[col / taps] = 1;
  for (int c = 0; c < p.in_c; ++c)
    if (!read[c]) L.unread_channels.push_back(c);
  std::vector<char> seen(p.out_c, 0);
  for (const JitBlock& b : L.blocks)
    for (int32_t o : b.out_channel) {
      if (seen[o]) return "an output channel appears twice";
      seen[o] = 1;
    }

  // What the code will address: one tile's reads and writes must fit the
  // buffers, and every byte displacement must encode in 32 bits.
  if (L.max_column_offset + tile > input_floats) return "input buffer too small for one tile";
  if ((L.max_column_offset + tile) * 4 > kMaxDisp) return "input offsets exceed 32-bit displacements";
  if (tile > out_plane) return "output plane shorter than one tile";
  if (static_cast<int64_t>(p.out_c) * out_plane * 4 > kMaxDisp)
    return "output offsets exceed 32-bit displacements";
  for (const JitBlock& b : L.blocks)
    if (static_cast<int64_t>(b.weights.size()) * 4 > kMaxDisp) return "block weights exceed 32-bit displacements";
  *layout = std::move(L);
  return "";
}

}  // namespace cocopie
