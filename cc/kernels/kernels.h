// Optimised kernels: weight packing done once per layer, and one KernelSet per
// instruction set.  The same source (direct_kernels.inc) is compiled once per
// ISA with different target flags; dispatch.cc is the only place that looks at
// CPU features and picks a set.
#ifndef COCOPIE_CC_KERNELS_KERNELS_H_
#define COCOPIE_CC_KERNELS_KERNELS_H_

#include <cstdint>
#include <cstring>
#include <vector>

#include "cc/kernels/pattern_conv.h"
#include "cc/kernels/shapes.h"

namespace cocopie {

// True if any of the n floats is Inf or NaN.
bool AnyNonFinite(const float* x, int64_t n);
// The same, for the per-ISA kernels to compile with their own vector width.
// `static`: each file keeps its own copy, so the linker can never hand an
// AVX-512 build of it to a caller on another ISA.  Exponent bits all ones;
// bit arithmetic rather than std::isfinite, so it holds under fast-math and
// vectorises.
static inline bool AnyNonFiniteInline(const float* x, int64_t n) {
  uint32_t acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    acc |= (bits & 0x7f800000u) + 0x00800000u;  // carries into bit 31 iff exponent is 0xff
  }
  return (acc & 0x80000000u) != 0;
}

// Conv filter repacked from OHWI to HWIO so the innermost loop runs over
// contiguous output channels (vectorises without reassociating sums).

struct PackedConv {
  int out_c = 0, k_h = 0, k_w = 0, in_c = 0;
  std::vector<float> hwio;
  std::vector<float> bias;  // out_c entries, zeros when the op has no bias
  // [tap * out_c + o] = 1 where filter o holds an Inf/NaN weight at that tap;
  // empty when every weight is finite (see PoisonPaddedTaps).
  std::vector<uint8_t> nonfinite_taps;
};
PackedConv PackConv2D(const float* filter_ohwi, int out_c, int k_h, int k_w,
                      int in_c, const float* bias);

// Depthwise filter kept as [k_h][k_w][out_c], copied into aligned storage
// (the runtime's mmapped weights are not always 16-byte aligned).
struct PackedDepthwise {
  int out_c = 0, k_h = 0, k_w = 0;
  std::vector<float> hwc;
  std::vector<float> bias;
  std::vector<uint8_t> nonfinite_taps;  // as PackedConv's
  // Per output channel o, its non-zero taps for the planar kernel:
  // tap_index/tap_weight[tap_begin[o] .. tap_begin[o + 1]), index ky * k_w +
  // kx.  A pattern-pruned channel keeps 4 of 9, a connectivity-pruned one
  // none.  has_zero_tap[o]: some tap was dropped, so an Inf/NaN input under
  // it must still reach the output (stock TFLite multiplies it by 0).
  std::vector<int32_t> tap_begin;
  std::vector<int32_t> tap_index;
  std::vector<float> tap_weight;
  std::vector<uint8_t> has_zero_tap;
};
PackedDepthwise PackDepthwise(const float* filter, int out_c, int k_h, int k_w,
                              const float* bias);
// Bit t set: some channel of [c0, c1) keeps tap t (t < 64).
inline uint64_t DepthwiseTapUnion(const PackedDepthwise& w, int c0, int c1) {
  uint64_t kept = 0;
  for (int k = w.tap_begin[c0]; k < w.tap_begin[c1]; ++k) kept |= uint64_t(1) << w.tap_index[k];
  return kept;
}

// A fully connected layer.  By default the kernel reads the model's rows:
// `oi` points at the caller's [out][in] weights, which must outlive the pack
// (the model's constant tensor; the reference kernel reads it too).
// `by_input` (for an input that a ReLU wrote, about half zeros) repacks
// them by input (`io`, [in][out]) when there are at least kFcByInputMinOut
// units: the kernel then adds x_i * io[i] for each input and skips the
// whole row of an input that is zero (VGG-16's 67 MB second classifier
// layer reads half its weights: 1.4-1.7 ms against 3.7-4.7 for its rows,
// AMD Zen 4, 1 thread).  On a dense input it reads everything, eight rows
// side by side, no faster than the rows (docs/engine.md section 39): hence
// the choice by producer.  Skipping is exact when every weight is finite
// (0 x w adds a zero); one Inf or NaN weight turns it off, since stock
// TFLite gives NaN for 0 x Inf.
constexpr int kFcByInputMinOut = 64;
struct PackedFullyConnected {
  int out = 0, in = 0;
  const float* oi = nullptr;  // [out][in], not owned
  std::vector<float> io;      // [in][out] when packed by input, else empty
  std::vector<float> bias;
  bool skip_zero_inputs = false;
};
PackedFullyConnected PackFullyConnected(const float* weights, int out, int in,
                                        const float* bias, bool by_input = false);

// Largest depthwise kernel (k_h * k_w taps), stride and per-thread scratch
// (floats of phase planes) the planar kernel takes.
constexpr int kDepthwisePlanarMaxTaps = 64;
constexpr int kMaxDepthwisePlanarStride = 4;
constexpr int64_t kMaxDepthwisePlanarScratch = int64_t(4) << 20;

// One planar depthwise conv (batch 1): input [in_c][in_h * in_w], output
// [out_c][out_h * out_w], both unpadded.  Tasks are (output channel, band of
// band_rows output rows), channel-major; or, with `channel_blocks`, blocks
// of kDepthwiseBlockChannels channels over the whole map (the set's
// depthwise_blocks kernel, DepthwiseBlocksApply).
struct DepthwisePlanarArgs {
  const ConvShape* s = nullptr;
  const PackedDepthwise* w = nullptr;
  const float* input = nullptr;
  float* output = nullptr;
  int band_rows = 1;
  bool channel_blocks = false;
  // Whole planes per task (band_rows = out_h; the kernels check): while a
  // task runs channel o, the kernel asks for channel o + 1's input and output
  // planes, so that they arrive from beyond L2 while it computes
  // (DepthwisePrefetchesPlanes).  A hint only: no result depends on it.
  bool prefetch_next = false;
};

// Channels per task of the channel-block depthwise kernel (one vector lane
// each), and the largest input map it takes.  Alone and warm it beat the
// per-channel kernels up to 40x40 at stride 2 (AVX-512, AMD Zen 4: 14x14
// 2.3x, 7x7 3.7x, 28x28 and 40x40 1.2x), but inside MobileNetV2 the 28x28
// one lost (0.86-0.94x) while the 14x14 one kept 1.65-1.94x
// (docs/engine.md section 35).
constexpr int kDepthwiseBlockChannels = 16;
constexpr int64_t kDepthwiseBlocksMaxPositions = 256;

// Max or average pooling over channel planes (batch 1): input [c][in_h *
// in_w], output [c][out_h * out_w], semantics as cc/kernels/pool.h;
// `zero_border`: positions outside the input are zeros that take part (a
// PAD fused into a VALID pool) instead of being skipped.
struct PoolPlanesArgs {
  const ConvShape* s = nullptr;
  bool max = true, zero_border = false;
  const float* input = nullptr;
  float* output = nullptr;
};

// Work is split into "rows" that threads take independently:
//   conv/depthwise: batch * out_h output rows; fully connected: output units.
struct KernelSet {
  const char* isa;  // e.g. "generic", "avx2_fma", "avx512"
  // Widest tile vector (floats) its pattern kernels run: 8, or 16 (AVX-512).
  int pattern_lanes;
  void (*conv2d)(const ConvShape& s, const PackedConv& w, const float* input,
                 float* output, int64_t row_begin, int64_t row_end);
  void (*depthwise)(const ConvShape& s, const PackedDepthwise& w,
                    const float* input, float* output, int64_t row_begin,
                    int64_t row_end);
  void (*fully_connected)(int batch, const PackedFullyConnected& w,
                          float act_min, float act_max, const float* input,
                          float* output, int64_t unit_begin, int64_t unit_end);
  // Pattern convolution over (unit, output row) tasks of one image.
  void (*pattern_conv2d)(const PatternConvArgs& args, int64_t task_begin,
                         int64_t task_end);
  // The same for a small map (PatternGeometry::small_map): tasks are ranges
  // of units.  Null where the set has no such kernel; it takes maps of at
  // most `small_map_in` input and `small_map_out` output positions.
  void (*pattern_small_map)(const PatternConvArgs& args, int64_t task_begin,
                            int64_t task_end);
  int small_map_in, small_map_out;
  // Maps of at most 8x8 as row pairs (PatternGeometry::pair_map); null
  // where the set has no such kernel.
  void (*pattern_pair_map)(const PatternConvArgs& args, int64_t task_begin, int64_t task_end);
  // dst[j * dst_stride + i] = src[i * src_stride + j], i < rows, j < cols:
  // the layout changes at the pattern engine's edges (NHWC <-> CHW).
  // Returns true if any value moved was Inf or NaN.
  bool (*transpose)(const float* src, int64_t src_stride, float* dst, int64_t dst_stride,
                    int rows, int cols);
  // The same with streaming (non-temporal) stores where the ISA has them,
  // for a large destination that leaves the engine (a partition's NHWC
  // output): the old lines are not read before being written over.  The
  // caller calls StreamFence() before another thread reads dst.
  bool (*transpose_stream)(const float* src, int64_t src_stride, float* dst,
                           int64_t dst_stride, int rows, int cols);
  // Depthwise conv on planar tensors (DepthwisePlanarArgs): only the
  // non-zero taps run, so pattern-pruned depthwise filters do 4 of 9.
  void (*depthwise_planar)(const DepthwisePlanarArgs& args, int64_t task_begin,
                           int64_t task_end);
  // Whether depthwise_planar takes `channel_blocks` tasks (vectorised over
  // channels; faster on small strided maps, DepthwiseBlocksApply).
  bool depthwise_blocks;
  // AnyNonFinite in the set's own vectors: the in-place 1x1 convs scan their
  // whole input with it (the baseline build's loop was half such a layer).
  bool (*any_non_finite)(const float* x, int64_t n);
  // dst = src for n floats; true if any was Inf or NaN (planar rows into the
  // pattern engine's planes and back).
  bool (*copy_non_finite)(const float* src, float* dst, int64_t n);
  // Pooling over planes (PoolPlanesArgs), tasks = channels.
  void (*pool_planes)(const PoolPlanesArgs& args, int64_t channel_begin, int64_t channel_end);
};

// Per-ISA sets (defined in direct_<isa>.cc). AvailableKernelSets() lists the
// ones compiled into this build, best first.
const std::vector<const KernelSet*>& CompiledKernelSets();

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_KERNELS_H_
