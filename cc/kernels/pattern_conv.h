// Pattern-pruned convolution: the layerwise plan (filter kernel reorder and
// FKW compact weights) and the kernels that run it.
//
// A kernel (the k_h x k_w weights connecting one input channel to one filter)
// is described by its *pattern*, the mask of its non-zero positions.  Removed
// kernels (connectivity pruning) are simply absent.  The plan stores, per
// filter, only its kept kernels, sorted by pattern (FKW, technical notes §4):
//   offset[f]..offset[f+1]  the kept kernels of reordered filter f
//   reorder[f]              original output channel of reordered filter f
//   index[k]                input channel of kept kernel k
//   stride[f*(P+1) + p]     where pattern p's run starts within filter f
//   weights                 the kept values, kernel after kernel
// Filters whose kernel lists are identical (same input channels and patterns:
// "group-shared" pruning) are processed G at a time, so every input vector
// loaded feeds G filters (load-redundancy elimination across filters).
#ifndef COCOPIE_CC_KERNELS_PATTERN_CONV_H_
#define COCOPIE_CC_KERNELS_PATTERN_CONV_H_

#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "cc/kernels/shapes.h"

namespace cocopie {

constexpr int kMaxGroup = 4;  // filters sharing one kernel list, per unit

// The pattern contract's limits, one owner for the delegate's claim check,
// the converter's metadata writer and the reports (exposed to Python as
// cocopie_tf._cc.pattern_limits()).  Above kPatternMaxDensity the dense
// kernels are as fast (measured on AVX2, docs/benchmarks.md); more than
// kPatternMaxDistinct masks is unstructured sparsity, which the pattern
// kernels are not built for.
constexpr double kPatternMaxDensity = 0.5;
constexpr int kPatternMaxDistinct = 64;
// Dense spatial convs whose filters are short (at most this many weights per
// filter, as the conv runs: a network's first conv over 3 channels is 27, 48
// once phase-split; not 1x1 convs, which XNNPACK runs as a plain GEMM) run as
// generated code too: every input load feeds each filter
// of a block, where XNNPACK's GEMM kernels starve on so short a reduction
// (MobileNetV2's stem, docs/engine.md section 28).
constexpr int kJitDenseMaxDepth = 64;
// AVX-512 generated code runs deeper dense filters as fast as XNNPACK or
// faster (AMD Zen 4, 1 thread: ResNet-50's 7x7 stride-2 stem over 3
// channels, 192 weights per filter phase-split, 2.34 ms against about 2.7;
// a 3x3 conv over 64 channels, 576, 2.54 against 2.54; docs/engine.md
// section 31), so such convs may join a claimed group whose layout they
// keep (ResNet's stem and first block).  Other ISAs keep kJitDenseMaxDepth.
constexpr int kJitDenseMaxDepthAvx512 = 576;

struct PatternPlan {
  int out_c = 0, in_c = 0, k_h = 0, k_w = 0;
  std::vector<uint32_t> patterns;            // bit (ky*k_w+kx) set = kept
  std::vector<std::vector<int>> pattern_taps;  // kept positions, ascending
  // FKW arrays (see above), over reordered filters.
  std::vector<int32_t> offset, reorder, index, stride;
  std::vector<float> fkw_weights;  // per kept kernel its taps, in tap order
  // Execution units: consecutive reordered filters [unit_begin[u], +unit_size[u])
  // share one kernel list; their weights are interleaved [kernel][tap][g].
  std::vector<int32_t> unit_begin, unit_size, unit_weight_offset;
  std::vector<float> unit_weights;
  std::vector<float> bias;  // original channel order, zeros if none
  int64_t kept_kernels = 0;
  int64_t kept_weights = 0;

  int num_patterns() const { return static_cast<int>(patterns.size()); }
  // Kept weights per output pixel: the MACs the kernel actually executes.
  int64_t MacsPerPixel() const { return kept_weights; }
  // FKW storage in bytes (offset, reorder, index, stride, weights) and the
  // bytes of the same weights in CSR (int32 column index per weight, row
  // pointers per filter) and dense float32.
  int64_t FkwBytes() const;
  int64_t CsrBytes() const;
  int64_t DenseBytes() const;
};

// Structure of a filter tensor, found from its zeros.
struct PatternStats {
  int distinct_patterns = 0;  // non-empty masks
  int64_t kept_kernels = 0, total_kernels = 0;
  int64_t kept_weights = 0, total_weights = 0;
  int max_group = 1;  // largest run of filters with identical kernel lists
  int filter_depth = 0;  // weights per filter, kept or not: in_c * k_h * k_w
  double Density() const {
    return total_weights ? double(kept_weights) / double(total_weights) : 1.0;
  }
};
// Filters short enough that XNNPACK's dense kernels starve (kJitDenseMaxDepth).
inline bool ShortFilters(const PatternStats& st) {
  return st.filter_depth > 0 && st.filter_depth <= kJitDenseMaxDepth;
}
PatternStats AnalyzePatterns(const float* filter_ohwi, int out_c, int k_h,
                             int k_w, int in_c);

// Builds the plan (reorder + FKW + units). `group` caps filters per unit
// (1..kMaxGroup).  Returns an error message for unsupported shapes.
std::string BuildPatternPlan(const float* filter_ohwi, int out_c, int k_h,
                             int k_w, int in_c, const float* bias, int group,
                             PatternPlan* plan);

// The same from a given structure (e.g. the converter's metadata): the
// pattern masks, each kernel's pattern id ([out_c][in_c], -1 = removed) and
// the filter order (empty: DefaultFilterOrder).  Kernels whose weights are
// a subset of their pattern are fine (the missing taps multiply zeros).
std::string BuildPatternPlanWith(const float* filter_ohwi, int out_c, int k_h, int k_w,
                                 int in_c, const float* bias, int group,
                                 const std::vector<uint32_t>& patterns,
                                 const std::vector<int>& kernel_pattern,
                                 const std::vector<int>& order, PatternPlan* plan);

// The filter order BuildPatternPlan uses, from each kernel's pattern id
// ([out_c][in_c], -1 = removed): identical kernel lists adjacent, heavier
// filters first.  kernel_pattern must hold out_c * in_c ids.
std::vector<int> DefaultFilterOrder(const std::vector<int>& kernel_pattern, int out_c, int in_c);

// The CPU execution layout of a plan, derived from it for one geometry:
// input channels are cut into chunks small enough that a chunk's input rows
// for one position block stay in L1 while every unit reads them (cache
// blocking over input channels); each unit's kernels are re-sorted by
// (chunk, pattern, channel) so a chunk is again a set of branch-free
// per-pattern runs.
struct PatternExec {
  int chunk_channels = 0, num_chunks = 0;
  std::vector<int32_t> runs;           // [unit][chunk][P + 1], kernel positions in the unit list
  std::vector<int32_t> kernel_offset;  // [unit + 1], start of the unit's kernel list
  std::vector<int32_t> channel;        // per kernel, input channel x channel stride
  std::vector<int64_t> weight_offset;  // [unit][chunk], into weights
  std::vector<float> weights;          // [kernel][tap][g], per unit, in exec order
};

// Which engine runs a pattern convolution: code generated for the layer
// (jit_pattern.h) for one ISA, or the static kernels of the kernel set.
// kAuto picks the best generator the CPU and the build have (dispatch.cc).
enum class JitIsa { kAuto = 0, kNone = 1, kAvx2 = 2, kAvx512 = 3, kNeon = 4 };
// "auto", "static", "avx2_fma", "avx512", "neon"; ParseJitIsa returns false for
// others.
const char* JitIsaName(JitIsa isa);
bool ParseJitIsa(const std::string& name, JitIsa* isa);

// Knobs of the CPU kernels (0 = chosen from the geometry).  Auto-tuning and
// the ablation benchmark set them; results do not depend on them.
struct PatternTuning {
  int chunk_channels = 0;  // static: input channels per cache block; >= in_c: no blocking
  int tile_vectors = 0;    // static: tile vectors per register tile row: 1..4, 6 or 8
  JitIsa jit = JitIsa::kAuto;
  int jit_filters = 0;     // generated: filters per register tile (M)
  int jit_vectors = 0;     // generated: vectors of positions per tile (V)
  bool jit_reorder = true; // generated: block filters by shared columns
  // generated: FMAs per code segment (0: kJitSegmentUses, < 0: a block's
  // code in one piece); see jit_pattern.h
  int jit_segment = 0;
  // generated: output positions per call of a block's code (0: about
  // kJitTaskPositions, fewer when the threads need more tasks)
  int jit_task_positions = 0;
  // generated: output rows per band (0: chosen from the layer's size, < 0:
  // the whole image at once); see PatternBand
  int jit_band_rows = 0;
  // static: < 0 never runs the small-map kernel (PatternGeometry::small_map);
  // set by the driver for layers whose padded planes another step writes
  // (phase split), not tuned or cached.
  int static_small_map = 0;
  // generated, 1x1 convs: set by the driver when the input or the output is
  // a planar tensor (dispatch.h): the code then reads and writes those
  // tensors in place (PatternGeometry::direct); not tuned or cached.
  bool planar_direct = false;
  // generated, direct 1x1 convs (planar_direct): the epilogue adds a residual
  // tensor given at run time (PatternIo::residual), an ADD fused into the
  // conv by the delegate; not tuned or cached.  Where the generator cannot
  // (JitKernel::AddsResidual) or the conv does not run direct, the code is
  // made without it (JitLayout::residual tells).
  bool residual_epilogue = false;
  // With residual_epilogue: the residual starts the sums
  // (JitLayout::residual_first), for an output the delegate writes over the
  // residual; not tuned or cached.
  bool residual_first = false;
  // generated: filters blocked within this many equal ranges of output
  // channels, the blocks in range order (BuildJitLayout's channel_parts);
  // set by the driver to its thread count for 1x1 convs that run in place,
  // so that each thread's share of the blocks writes the planes its share
  // of the next depthwise conv reads (0 or 1: one range); not tuned or
  // cached.
  int jit_channel_parts = 0;
};

// Scratch buffers reused across runs (padded CHW input, CHW output) and the
// execution layout, rebuilt only when the geometry or tuning changes.
// Where the pattern kernel's buffers live for one layer geometry.
// Floats per tile vector of the static pattern kernels; the AVX-512 set also
// runs 16-float tile vectors (KernelSet::pattern_lanes).
constexpr int kVectorWidth = 8;
constexpr int kSmallMapLanes = 16;  // positions of a small map (one AVX-512 vector)

struct PatternGeometry {
  int wp = 0, hp = 0;          // padded input width, height
  int64_t plane = 0;           // hp * wp
  int64_t positions = 0;       // out_h * wp, flattened (see PatternConvArgs)
  int tile_vectors = 1, block_len = 0, num_blocks = 0, max_offset = 0, chunk = 0;
  int tile_lanes = kVectorWidth;  // static kernels: floats per tile vector (8 or 16)
  size_t input_size = 0;       // the kernels' input buffer, with read slack
  // Maps of at most kSmallMapLanes input and output positions (4x4, 2x2),
  // where the kernel set has a small-map kernel (AVX-512): a channel's
  // input is one unpadded 16-float vector ([in_c][16], 64-byte aligned) and
  // each tap reads a permutation of it, the positions that fall outside the
  // image zeroed.  A kernel then reads one line, and 512 channels (32 KB)
  // stay in L1, where the padded planes cost two split vector loads per tap.
  // Output positions are compact (pitch out_w), one vector per filter.
  bool small_map = false;
  // Maps of at most 8x8 (AVX-512): rows of 8 floats, two per vector
  // ([in_c][vector -1 .. ceil(in_h / 2) + 1][16], the outer vectors and the
  // unused rows and columns zero); each tap of an output vector is a
  // two-source permutation (vpermt2ps) of two neighbouring input vectors.
  bool pair_map = false;
  int64_t map_stride = 0;    // pair map: floats per input channel
  int out_pitch = 0;  // positions per output row in the kernels' output: wp, out_w or 8
  // Generated 1x1 conv (PatternTuning::planar_direct): its padded planes are
  // exactly plain CHW planes (no padding; channel stride h * w), blocks are
  // one register tile, and the code reads a planar input tensor and writes a
  // planar output tensor in place, no copies.  The `direct_tail` positions
  // past the last whole tile are computed by one more tile that ends at
  // h * w (it overlaps the one before, run after it by the same task).
  bool direct = false;
  int direct_tail = 0;
};

// Row bands (generated code, large layers): instead of moving the whole image
// into padded planes, running the kernel, and moving the whole result out,
// each thread takes a band of `rows` output rows at a time and packs its
// input rows (plus the halo) into a small per-thread buffer, runs the code
// on it, and writes the band's output rows to their destination.  The band
// buffers are reused by every band and layer, so they stay in the core's L2
// cache; the whole-image buffers were megabytes that came back from DRAM
// after any pause (docs/engine.md, section 16).  rows == 0: off.
struct PatternBand {
  int rows = 0, num_bands = 0;
  int64_t plane = 0;        // floats per input channel (rows + the kernel's reach)
  int64_t out_plane = 0;    // floats per output channel in the band buffer
  size_t input_size = 0;    // band input buffer, with read slack
};

// Allocator of 64-byte aligned (cache-line) storage: glibc puts large blocks
// 16 bytes into a page, and the kernels' planes are laid out in whole lines.
template <typename T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <typename U>
  LineAllocator(const LineAllocator<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const LineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LineAllocator<U>&) const { return false; }
};
using LineFloats = std::vector<float, LineAllocator<float>>;

class JitKernel;
struct PatternScratch {
  LineFloats input, output;
  // Small maps: padded CHW planes for PropagateNonFinite (made only then),
  // and the permutations of each tap and 4-tap pattern (PatternConvArgs).
  std::vector<float> padded;
  std::vector<int32_t, LineAllocator<int32_t>> small_index, small_quad_index;  // 64-byte rows
  std::vector<int32_t> small_quad_kernels;
  std::vector<uint16_t> small_mask, small_quad_mask;
  std::vector<int8_t> small_shift;
  std::vector<int32_t> tap_offsets;
  PatternExec exec;
  int64_t exec_key = -1;
  // The generated kernel for the current geometry and knobs (null: the
  // static kernels run; jit_error says why when generation was refused).
  std::shared_ptr<const JitKernel> jit;
  std::string jit_error;
  // What PreparePatternConv set up (geometry, engine) and for which key.
  PatternGeometry geometry;
  PatternBand band;  // rows > 0: the code was generated for band buffers
  std::string engine, prepared_key;
  // Set by the previous layer when it wrote `input` itself (chained): whether
  // it wrote an Inf or NaN there.
  bool input_non_finite = false;
  // Whether the last run's threads took the generated code's tasks filter
  // block by filter block (JitFilterMajor in dispatch.cc).
  bool filter_major = false;
};

constexpr int kMaxTaps = 32;  // kernel positions a pattern mask can hold

// One image's worth of work for the per-ISA kernels.  Output positions are
// flattened with the padded input's row pitch: position p = oy * wp + ox
// reads input p + tap offset, so a vector may run across rows and small
// feature maps (4x4, 2x2) still fill whole vectors; positions with
// ox >= out_w are computed and discarded.
struct PatternConvArgs {
  const PatternPlan* plan = nullptr;
  const PatternExec* exec = nullptr;
  const float* input = nullptr;  // zero-padded CHW: [in_c][hp * wp]; exec holds channel offsets
  int block_len = 0;             // positions per task, a multiple of the tile
  int num_blocks = 0;
  int tile_vectors = 1;          // tile vectors per register tile
  int tile_lanes = kVectorWidth; // floats per tile vector: 8, or 16 (AVX-512 set)
  const int32_t* tap_offsets = nullptr;  // [pattern][kMaxTaps] element offsets
  float* output = nullptr;       // [out_c][num_blocks * block_len], original order
  int unit_splits = 1;           // tasks per block: units are cut into this many ranges
  // Small maps (PatternGeometry::small_map): per tap of the kernel grid, the
  // input lane each output position reads ([tap][16]) and which positions
  // read inside the image ([tap], bit p).
  const int32_t* small_index = nullptr;
  const uint16_t* small_mask = nullptr;
  // Maps of <= 4 positions (2x2): per pattern of 4 taps, lane p * 4 + t
  // holds tap t at position p, so one vector does a whole kernel ([pattern]
  // [16] and [pattern]; null when the map is larger, mask 0 for patterns of
  // other sizes).
  const int32_t* small_quad_index = nullptr;
  const uint16_t* small_quad_mask = nullptr;
  // ... and when every pattern has 4 taps, per kernel of the exec lists
  // (PatternExec::channel order) its input offset | pattern id (< 16; the
  // offsets are multiples of 16): a unit's kernels then run as one loop
  // instead of one per pattern, whose varying trip counts the branch
  // predictor cannot learn across layers (null: per pattern).
  const int32_t* small_quad_kernels = nullptr;
  // Pair maps (PatternGeometry::pair_map): per tap, the first of the two
  // input vectors, relative to the output vector (-1, 0 or 1); small_index
  // and small_mask then hold the two-source permutation and its mask.
  const int8_t* small_shift = nullptr;
  int out_vectors = 0;
};

// Builds `exec` for `plan` with the given channel chunk (>= 1); kernels'
// input offsets are premultiplied by `channel_stride` (floats per channel).
void BuildPatternExec(const PatternPlan& plan, int chunk_channels, int64_t channel_stride,
                      PatternExec* exec);

// Register-tile widths the kernels are compiled for (in tile vectors).
inline bool ValidTileVectors(int t) { return (t >= 1 && t <= 4) || t == 6 || t == 8; }

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_PATTERN_CONV_H_
