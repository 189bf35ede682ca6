// The one place that decides which kernel runs, from CPU features and the
// user's request.  Kernel names follow XNNPACK's habit: op, variant, ISA,
// e.g. "f32_conv2d_direct__avx2_fma" or "f32_conv2d__reference".
#ifndef COCOPIE_CC_KERNELS_DISPATCH_H_
#define COCOPIE_CC_KERNELS_DISPATCH_H_

#include <string>
#include <vector>

#include "cc/kernels/kernels.h"
#include "cc/kernels/thread_pool.h"

namespace cocopie {

// CPU features relevant to kernel choice, detected once.
struct CpuFeatures {
  bool avx2 = false, fma = false, avx512f = false, neon = false;
  // AVX-512 only: whether a 512-bit FMA does twice the lanes per cycle of a
  // 256-bit one (two 512-bit FMA pipes: Intel Xeon Gold/Platinum, AMD Zen 5
  // server parts) rather than the same (AMD Zen 4, which runs a zmm FMA on
  // its two 256-bit pipes; one-pipe Xeons).  No CPUID bit says it, so it is
  // measured (0.1-1.5 ms) on the first call, not at load: no kernel or claim
  // depends on it.  Reports and benchmark records state it, since dense GEMMs
  // such as XNNPACK's run at twice the speed per cycle on full-rate cores.
  bool Fma512FullRate() const;
  std::string ToString() const;
};
const CpuFeatures& DetectCpu();

// Names accepted by SelectKernelSet: "auto", "reference", or an ISA name.
std::vector<std::string> KernelChoices();

// Returns the kernel set for `choice`, or null for "reference" (the caller
// then runs the reference kernels).  Sets *error for unknown or unsupported
// choices.
const KernelSet* SelectKernelSet(const std::string& choice, std::string* error);

// Parallel drivers over the per-ISA row kernels; a null `set` means reference.
void RunConv2D(const KernelSet* set, const ConvShape& s, const PackedConv& w,
               const float* filter_ohwi, const float* input, float* output,
               ThreadPool* pool);
void RunDepthwise(const KernelSet* set, const ConvShape& s,
                  const PackedDepthwise& w, const float* input, float* output,
                  ThreadPool* pool);
// Depthwise conv on planar tensors (batch 1: input [in_c][in_h * in_w],
// output [out_c][out_h * out_w]); only the filter's non-zero taps run.
// Applies when the set has the kernel and every weight is finite (Inf/NaN
// weights keep RunDepthwise); Inf/NaN inputs give stock TFLite's results.
bool DepthwisePlanarApplies(const KernelSet* set, const ConvShape& s, const PackedDepthwise& w);
// Whether RunDepthwisePlanar runs `s` over blocks of channels (the set's
// channel-block kernel: AVX-512, strides >= 2 both ways, maps of at most
// kDepthwiseBlocksMaxPositions input positions, one input per channel).
bool DepthwiseBlocksApply(const KernelSet* set, const ConvShape& s);
// Whether RunDepthwisePlanar on `threads` threads has each task ask for the
// next channel's planes ahead (DepthwisePlanarArgs::prefetch_next): an input
// of at least 1 MiB (beyond L2), whole planes per task, depth multiplier 1,
// and a per-channel kernel (not the channel-block one).
bool DepthwisePrefetchesPlanes(const KernelSet* set, const ConvShape& s, int threads);
// Taps that kernel runs per output position, summed over channels: for each
// block, the union of its channels' non-zero taps times its channels.
int64_t DepthwiseBlockTaps(const PackedDepthwise& w);
void RunDepthwisePlanar(const KernelSet* set, const ConvShape& s, const PackedDepthwise& w,
                        const float* input, float* output, ThreadPool* pool);
void RunFullyConnected(const KernelSet* set, int batch,
                       const PackedFullyConnected& w, float act_min,
                       float act_max, const float* input, float* output,
                       ThreadPool* pool);

// Layout kept between two pattern convolutions (batch 1): the first writes
// its result, bias and activation applied, straight into the second's padded
// CHW input, so neither transposes.
struct PatternNext {
  const ConvShape* shape;
  const PatternPlan* plan;
  const PatternTuning* tuning;
  PatternScratch* scratch;
};

// The generator that runs pattern convolutions for `requested` with kernel
// set `set`: kAuto picks AVX-512 or AVX2+FMA code generation where the build
// has a generator and the CPU the ISA (never with the "generic" set), else
// kNone (static kernels).  An explicit ISA the CPU or build lacks sets *error.
JitIsa ResolveJitIsa(const KernelSet* set, JitIsa requested, std::string* error);
// Values the 'jit' option accepts on this build and CPU.
std::vector<std::string> JitChoices();

// Sets up `scratch` for this geometry and knobs (padded buffers, and the
// generated code or the static kernels' execution layout) unless it already
// is; returns the engine that will run: "jit_avx512", "jit_avx2_fma" or the
// kernel set's ISA (scratch->jit_error then says why code was not generated,
// if it was asked for).  RunPatternConv calls it; the delegate calls it in
// Prepare so generation happens there.
std::string PreparePatternConv(const KernelSet* set, const ConvShape& s, const PatternPlan& plan,
                               PatternScratch* scratch, const PatternTuning& tuning);

// Where a pattern conv's input comes from and its result goes, besides
// NHWC `input` / `output`.  At most one source and one destination apply.
//   input_packed: the padded CHW copy in `scratch` was already written by
//                 the previous layer (input may be null);
//   planar_input: the input as plain CHW planes [in_c][in_h * in_w] (batch 1),
//                 a partition's planar tensor (see PlanarLayout below);
//   next:         the output goes to the next pattern conv's padded input;
//   planar_output: the output, bias and activation applied, as plain CHW
//                 planes [out_c][out_h * out_w] (batch 1).
struct PatternIo {
  bool input_packed = false;
  const float* planar_input = nullptr;
  const PatternNext* next = nullptr;
  float* planar_output = nullptr;
  // Added to the output before the clamp (a fused ADD): a planar tensor laid
  // out as planar_output.  Only for a layer whose generated code takes it
  // (scratch->jit->layout().residual, PatternTuning::residual_epilogue).
  const float* residual = nullptr;
  // The NHWC output leaves the engine (a partition's output): when large it
  // is written with streaming stores (StreamsNhwcOutput).
  bool output_leaves = false;
};

// Whether an NHWC image of `floats` floats that leaves the engine is
// written with streaming stores (large, and the set has them).
bool StreamsNhwcImage(const KernelSet* set, int64_t floats, bool output_leaves);

// Whether RunPatternConv writes an NHWC output of shape `s` with streaming
// stores: large, leaving the engine, finished by generated code (the static
// kernels' bias pass reads the output again) and the set has them.
bool StreamsNhwcOutput(const KernelSet* set, const ConvShape& s, const PatternScratch& scratch,
                       bool output_leaves);

// Pattern-pruned convolution (stride 1, any dilation): NHWC in and out unless
// `io` says otherwise; the kernels work on a zero-padded CHW copy held in
// `scratch`.  `set` must not be null (the reference for a pattern layer is the
// dense reference kernel).
void RunPatternConv(const KernelSet* set, const ConvShape& s,
                    const PatternPlan& plan, PatternScratch* scratch,
                    const float* input, float* output, ThreadPool* pool,
                    const PatternTuning& tuning, const PatternIo& io);
// NHWC in and out, or chained as the two flags say (the older form).
void RunPatternConv(const KernelSet* set, const ConvShape& s,
                    const PatternPlan& plan, PatternScratch* scratch,
                    const float* input, float* output, ThreadPool* pool,
                    const PatternTuning& tuning = PatternTuning(), bool input_packed = false,
                    const PatternNext* next = nullptr);

// Planar layout: inside a delegate partition, at batch 1, a tensor whose
// producer and readers all work on channel planes is kept as plain CHW
// [c][h * w] (same element count as NHWC), so a residual block's convs and
// ADD never transpose.  These change layout at the partition's edges (per-ISA
// transposes; `set` must not be null).  Both return true if a value moved
// was Inf or NaN.
bool NhwcToPlanar(const KernelSet* set, int h, int w, int c, const float* nhwc, float* chw,
                  ThreadPool* pool);
// `output_leaves`: the NHWC image is a partition's output, written with
// streaming stores when large (StreamsNhwcImage).
bool PlanarToNhwc(const KernelSet* set, int h, int w, int c, const float* chw, float* nhwc,
                  ThreadPool* pool, bool output_leaves = false);

// MEAN over the spatial axes (global average pooling): out[b][c] = the sum
// of channel c's `positions` values, divided by `positions`.  The input is
// NHWC ([batch][positions][channels]) or, batch 1, planar ([channels]
// [positions]).  Plain float sums, as stock TFLite's kernels, so an Inf or
// NaN reaches the channel's result.
void RunSpatialMean(int batch, int64_t positions, int channels, bool planar, const float* in,
                    float* out, ThreadPool* pool);

// Elementwise out[i] = min(max(a[i] + b[i], lo), hi) over n floats (ADD with
// its fused activation; NaN propagates).  Layout-free: both operands and the
// output share one layout, NHWC or planar.
void RunAdd(int64_t n, const float* a, const float* b, float lo, float hi, float* out,
            ThreadPool* pool);

// A strided conv's input (one image, NHWC, resolved strided shape `s`)
// phase-split straight into the padded CHW buffer of `scratch`, prepared for
// PhaseSplitShape(s) (cc/kernels/phase_split.h): the split and the layout
// change in one pass, after which RunPatternConv(PhaseSplitShape(s), ...,
// input_packed = true) runs it.  Returns true, leaving the buffer
// incomplete, when a value it moved is Inf or NaN (the caller then runs the
// unsplit dense kernel).
bool PackPhaseSplitInput(const KernelSet* set, const ConvShape& s, const float* image,
                         PatternScratch* scratch, ThreadPool* pool);

// The cost model.  PatternKernelApplies: the pattern kernel can run the layer
// and beats this project's dense kernel.  PredictedSpeedupOverDense: the
// expected speed of the pattern kernel relative to a dense kernel of
// XNNPACK-class efficiency, from per-MAC efficiencies measured on AVX2
// (docs/benchmarks.md); > 1 means worth taking the node from TFLite.
// With a code generator (`jit`), dense convs of short filters apply too
// (kJitDenseMaxDepth).
bool PatternKernelApplies(const PatternStats& stats, const ConvShape& s,
                          JitIsa jit = JitIsa::kNone);
// The weights' half of that, whatever the geometry (`taps` = k_h * k_w of
// the layer as written): pattern-pruned, or dense filters generated code
// runs (JitRunsDense).  A strided layer is judged by it before its phase
// split (a 7x7 stem has more taps than a mask holds until split).
bool WeightsSuitPatternEngine(const PatternStats& stats, int taps, JitIsa jit);
// Dense filters the generator `jit` runs: kJitDenseMaxDepth weights per
// filter, kJitDenseMaxDepthAvx512 on AVX-512; none without a generator.
bool JitRunsDense(const PatternStats& stats, JitIsa jit);
// Whether jit=auto generates code for a stride-1 conv of shape `s` (output
// size, kernel width and dilation are read) on `isa`; false for maps too
// small for generated code, which the static kernels run.
bool JitRunsOnMap(JitIsa isa, const ConvShape& s);
// Whether generated code for a 1x1 conv of shape `s` that reads or writes a
// planar tensor in place is judged at the in-place efficiency
// (PredictedSpeedupOverDense): maps of enough register tiles.  `no_edges`:
// both of the conv's tensors stay planar (claimed neighbours on both
// sides); with AVX-512 code smaller maps then pay too.
bool JitInPlacePays(JitIsa isa, const ConvShape& s, bool no_edges = false);
// `dense_macs` and `edge_elements` (input + output elements of the node,
// which the engine transposes at a partition edge) make the prediction
// include the layout change; 0 leaves it out.  `in_place`: a 1x1 conv whose
// generated code will read or write a planar tensor in place.  `saved`, if
// given, gets the predicted time saved in XNNPACK-MAC equivalents (negative
// when the node is predicted slower), for comparing sets of claims.
double PredictedSpeedupOverDense(const PatternStats& stats, JitIsa jit = JitIsa::kNone,
                                 int64_t dense_macs = 0, int64_t edge_elements = 0,
                                 bool one_by_one = false, bool in_place = false,
                                 double* saved = nullptr);

// "f32_<op>__<isa>" for reports.
std::string KernelName(const KernelSet* set, const char* op);

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_DISPATCH_H_
