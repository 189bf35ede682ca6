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

// Pattern-pruned convolution (stride 1, any dilation): NHWC in and out; the
// kernels work on a zero-padded CHW copy held in `scratch`.  With
// `input_packed`, that copy was already written by the previous layer (input
// may be null); with `next`, the output goes to the next layer (output may
// be null).  `set` must not
// be null (the reference for a pattern layer is the dense reference kernel).
void RunPatternConv(const KernelSet* set, const ConvShape& s,
                    const PatternPlan& plan, PatternScratch* scratch,
                    const float* input, float* output, ThreadPool* pool,
                    const PatternTuning& tuning = PatternTuning(), bool input_packed = false,
                    const PatternNext* next = nullptr);

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
bool PatternKernelApplies(const PatternStats& stats, const ConvShape& s);
// `dense_macs` and `edge_elements` (input + output elements of the node,
// which the engine transposes at a partition edge) make the prediction
// include the layout change; 0 leaves it out.
double PredictedSpeedupOverDense(const PatternStats& stats, JitIsa jit = JitIsa::kNone,
                                 int64_t dense_macs = 0, int64_t edge_elements = 0);

// "f32_<op>__<isa>" for reports.
std::string KernelName(const KernelSet* set, const char* op);

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_DISPATCH_H_
