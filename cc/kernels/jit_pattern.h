// Generated pattern convolution (CoCo-Gen's inference side): per layer, at
// Prepare, machine code with the layer's filters, columns and weights baked
// in.  Nothing is indexed at run time.
//
// Shape of the generated kernel: a register tile of M filters x V vectors of
// output positions.  A filter block walks the union of its filters' non-zero
// (input channel, tap) "columns"; per column it loads V input vectors once and
// issues one FMA per (filter of the block that uses the column) x vector, the
// weight a broadcast memory operand.  The load is shared by every filter that
// needs the column (load-redundancy elimination across filters); the block
// assignment puts filters with overlapping columns together (filter kernel
// reorder with a job to do).
//
// Code segments: a block's code is one instruction per use, tens of KB for a
// wide layer, more than the 32 KB L1 instruction cache.  So each block's
// columns are cut into segments of about `segment_uses` uses, and each
// segment runs over all of a call's tiles before the next segment starts;
// the accumulators pass between segments through the output buffer (the
// first segment starts them at zero, the last adds bias and clamps).  The
// code fetched from L2 is then reused once per tile instead of once per call,
// and the arithmetic, in the same order, gives bit-identical results.
//
// Two layers, so the generator's input can be checked before any byte of
// code exists:
//   JitLayout    backend-neutral: blocks, columns, weights, all offsets; built
//                and validated by BuildJitLayout (every offset the code will
//                use is proved inside the buffers it will be given);
//   JitKernel    the machine code for one ISA (x86-64 AVX-512 or AVX2+FMA via
//                Xbyak, AArch64 NEON via a64_asm.h), mapped write-xor-execute;
//                Run() checks its buffer arguments against the layout's
//                bounds on every call.
#ifndef COCOPIE_CC_KERNELS_JIT_PATTERN_H_
#define COCOPIE_CC_KERNELS_JIT_PATTERN_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cc/kernels/pattern_conv.h"

// The generator this build has, at most one: x86-64 (jit_x86.cc) with Xbyak's
// headers, or AArch64 (jit_a64.cc, its own encoder: a64_asm.h).
#if defined(COCOPIE_HAVE_XBYAK) && (defined(__x86_64__) || defined(_M_X64))
#define COCOPIE_JIT_X86 1
#elif defined(__aarch64__) && !defined(COCOPIE_NO_JIT)
#define COCOPIE_JIT_A64 1
#endif

namespace cocopie {

// True when this build contains a code generator (x86-64 built with Xbyak,
// or AArch64 without COCOPIE_NO_JIT).
bool JitCompiled();

// Register-file limits per ISA: lanes per vector and the tile sizes allowed.
int JitLanes(JitIsa isa);
// Largest M for a given V (accumulators + inputs + a broadcast register must
// fit the register file); 0 when V itself is not allowed.  `check_input`
// (JitLayout::check_input) takes two more registers.
int JitMaxFilters(JitIsa isa, int vectors, bool check_input = false);
// Whether the generator for `isa` can check the input it loads for Inf and
// NaN (JitLayout::check_input): x86-64, not NEON yet.
bool JitChecksInput(JitIsa isa);
// The largest M the tuner tries: on AVX-512 with V = 1, 29, which leaves
// zmm30-31 to the shifted column loads (jit_x86.cc; worth more than two more
// filters per block); 27 with the input check's two registers.
int JitTunedMaxFilters(JitIsa isa, int vectors, bool check_input = false);

// The backend-neutral layout of a generated layer.
struct JitBlock {
  std::vector<int32_t> out_channel;  // per slot: the original output channel
  // Columns in walk order: the input offset (floats from a tile's first
  // position, channel stride and tap offset applied) and its uses.
  std::vector<int64_t> column_offset;
  std::vector<int32_t> column_uses;  // uses per column
  // With JitLayout::check_input, per column: 1 where this block checks it
  // (the first block that reads it, so each input vector is checked once
  // per call); empty without.
  std::vector<uint8_t> column_check;
  std::vector<uint8_t> use_slot;     // per use: the filter slot it feeds
  // Per use, in consumption order; then per slot its bias; then the
  // activation's lower and upper bound (the epilogue reads them from here).
  std::vector<float> weights;
  int64_t num_uses = 0;
  // Code segments: the first column of each (always at least one segment,
  // starting at column 0, even for a block without columns).
  std::vector<int32_t> segment_begin;
};

// One code segment of a block as both generators walk it: columns [c0, c1),
// uses [u0, u1), and the slots it moves through the output buffer (all in
// the first and last segment, else the ones it feeds: the others' partial
// sums wait there).
struct JitSegment {
  size_t c0 = 0, c1 = 0, u0 = 0, u1 = 0;
  bool first = false, last = false;
  std::vector<char> moved;
};
std::vector<JitSegment> JitSegments(const JitBlock& b);

// Default FMAs per code segment: about 11 KB of AVX-512 code, a third of the
// L1 instruction cache (measured on Sapphire Rapids, docs/engine.md).
constexpr int kJitSegmentUses = 1536;

struct JitLayout {
  JitIsa isa = JitIsa::kNone;
  int lanes = 0, filters = 0, vectors = 0;  // M, V
  // Blocks never mix output channels of two of these equal ranges, and
  // come in range order (BuildJitLayout's channel_parts).
  int channel_parts = 1;
  int64_t channel_stride = 0;  // floats between input channels (padded plane)
  int64_t out_plane = 0;       // floats between output channels
  int64_t input_floats = 0;    // size of the input buffer the code reads
  int64_t max_column_offset = 0;
  int64_t segment_uses = 0;    // the resolved target per code segment
  // The epilogue: bias added and the activation clamp applied in registers
  // before the store (NaN propagates: the accumulator is the operand MAXPS /
  // MINPS return when either is NaN).  Infinite bounds emit no clamp.
  float act_min = 0, act_max = 0;
  std::vector<JitBlock> blocks;
  int64_t uses = 0, columns = 0, segments = 0;  // totals, for reports
  int64_t max_segment_planes = 0;  // most input planes one code segment reads
  // The code ORs x - x of the input vectors it loads into a flag (+0 unless
  // some value was Inf or NaN) and stores it at its fifth argument: an
  // in-place 1x1 conv then needs no separate pass over its input
  // (docs/engine.md section 25).  Each column is checked by the first block
  // that reads it (JitBlock::column_check), so the blocks of a call together
  // cover every input channel some filter reads; `unread_channels` lists the
  // others (their Inf/NaN still reaches every output through a zero weight,
  // so the driver scans them).
  bool check_input = false;
  std::vector<int32_t> unread_channels;
  // The epilogue adds a residual tensor (laid out as the output) after the
  // bias, before the clamp: an ADD fused into the conv before it, the
  // ADD's activation as the clamp (JitKernel::Run's `residual`).  x86 only
  // (AddsResidual).
  bool residual = false;
  // With `residual`: the first segment starts the accumulators from the
  // residual instead of zero and the epilogue adds nothing more, so the
  // output may be written over the residual (the delegate shares their
  // buffer): with several segments, the partial sums an early segment
  // stores would otherwise replace residual values the last one still
  // reads.  The residual is then added first, not after the bias: the
  // result may differ from the unfused graph's in the last bit.
  bool residual_first = false;
  // > 0: each tile asks for the output lines this many floats ahead of its
  // stores (x86 `prefetchw`, a no-op on CPUs without it; the NEON generator
  // ignores the field: PrefetchesOutput).  The hardware prefetchers follow
  // the many short output streams of a large planar output badly
  // (docs/engine.md section 47).  A hint: it never faults, even past the
  // buffer's end, and no result depends on it.  Generate refuses a distance
  // over 2^24 floats; a request whose offset would not fit a 32-bit
  // displacement is left out.
  int64_t prefetch_out_floats = 0;
  int TileLen() const { return lanes * vectors; }
};

// Builds the layout for `plan` at one geometry: `tap_offset(pattern, t)` is
// kMaxTaps-strided element offsets (as PatternScratch::tap_offsets),
// `channel_stride` floats per input channel, `input_floats` the input
// buffer's size, `out_plane` the output's channel stride.  M and V of 0 pick
// defaults.  `reorder_filters` groups filters by shared columns (off: the
// plan's order, for the ablation).  `segment_uses` as
// PatternTuning::jit_segment.  `check_input` as JitLayout's (the default M
// then leaves its registers free).  Returns "" or why the layer cannot be
// generated (then the static kernels run it).
// The output is plan.bias added and clamped to [act_min, act_max].
// `channel_parts` > 1 (PatternTuning::jit_channel_parts) splits the output
// channels into that many equal ranges, blocks filters within each, and
// orders the blocks by range: the thread that runs a share of the blocks then
// writes one range of channels, the one the next depthwise conv's same
// thread reads (docs/engine.md section 40).  Ranges of fewer than half of M
// filters would leave blocks too small: one range then (JitLayout says).
std::string BuildJitLayout(const PatternPlan& plan, const int32_t* tap_offsets,
                           int64_t channel_stride, int64_t input_floats, int64_t out_plane,
                           JitIsa isa, int filters, int vectors, bool reorder_filters,
                           int segment_uses, float act_min, float act_max, JitLayout* layout,
                           bool check_input = false, int channel_parts = 1);

class JitKernel {
 public:
  // Emits the code for every block of `layout`.  Returns null and sets
  // *error if this build has no generator, the ISA is not this build's, or
  // an instruction cannot encode an offset.
  static std::unique_ptr<JitKernel> Generate(const JitLayout& layout, std::string* error);
  ~JitKernel();

  // One more tile, run after a call's `tiles` in the same pass over each code
  // segment (so its code comes from L1, not once more from L2), whose first
  // `skip` positions are not stored: a direct 1x1 conv's last positions
  // (PatternGeometry::direct_tail), as the tile that ends at the plane's end
  // and overlaps the one before.  Those positions' partial sums (between
  // code segments) are the other tile's, so the tile's own stores are masked
  // to the positions after `skip`.  AVX-512 only (FusesTail; AVX2 has no
  // cheap masked store, NEON none): elsewhere the driver runs the tile as a
  // call of its own, which takes every segment's code once more.
  struct Tail {
    int64_t start = 0;
    int skip = 0;
  };
  bool FusesTail() const { return layout_.isa == JitIsa::kAvx512; }
  // Whether a generator for `isa` takes JitLayout::residual.
  static bool AddsResidual(JitIsa isa) { return isa == JitIsa::kAvx512 || isa == JitIsa::kAvx2; }
  // Whether a generator for `isa` emits JitLayout::prefetch_out_floats.
  static bool PrefetchesOutput(JitIsa isa) { return isa == JitIsa::kAvx512 || isa == JitIsa::kAvx2; }

  // Filter block `block` over `tiles` tiles of positions starting at
  // flattened position `start` (any position; the driver uses block starts),
  // then `tail`'s tile if not null.  With layout().residual, `residual`
  // (residual_floats, laid out as the output) is added to each output
  // position, and must be given.  Returns false
  // without running anything if the arguments would leave the buffers the
  // layout was validated for.  With layout().check_input, sets *non_finite
  // when an input vector the code loaded held an Inf or NaN (and needs it).
  bool Run(int block, const float* input, int64_t input_floats, float* output,
           int64_t output_floats, int64_t start, int64_t tiles,
           bool* non_finite = nullptr, const Tail* tail = nullptr,
           const float* residual = nullptr, int64_t residual_floats = 0) const;

  int num_blocks() const { return static_cast<int>(entries_.size()); }
  // Where block `block`'s code lies (each thread reads it in as data before
  // running it first: TouchBlockOnce).
  const void* block_code(int block) const { return reinterpret_cast<const void*>(entries_[block]); }
  size_t block_code_bytes(int block) const { return block_code_bytes_[block]; }
  size_t code_bytes() const { return code_bytes_; }
  double generate_ms() const { return generate_ms_; }
  const JitLayout& layout() const { return layout_; }

 private:
  struct Code;
  JitKernel() = default;
  // After emitting: entry points and sizes from the blocks' byte offsets in
  // `code`, the layout, the rows each block writes, the generation time.
  void Adopt(const JitLayout& layout, const uint8_t* code, size_t code_bytes,
             const std::vector<size_t>& block_starts, std::chrono::steady_clock::time_point t0);
  JitLayout layout_;
  std::unique_ptr<Code> code_;
  // `flag`: 16 floats the code stores its input check to (check_input).
  // `call`: the extra tile's input and output addresses (null: none) and,
  // per vector, the 16-bit mask of the lanes it stores (Tail; AVX-512); the
  // residual's address minus the output's, in bytes (layout().residual).
  struct CallArgs {
    const float* tail_in;
    float* tail_out;
    uint16_t mask[4];
    int64_t residual_delta;
  };
  using Fn = void (*)(const float* in, const float* w, float* out, int64_t tiles, float* flag,
                      const CallArgs* call);
  std::vector<Fn> entries_;
  std::vector<int64_t> block_rows_;  // per block: 1 + its largest output channel
  std::vector<size_t> block_code_bytes_;
  size_t code_bytes_ = 0;
  double generate_ms_ = 0;
};

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_JIT_PATTERN_H_
