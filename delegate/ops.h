// Which TFLite nodes the delegate claims, and the per-node plan it runs.
#ifndef COCOPIE_DELEGATE_OPS_H_
#define COCOPIE_DELEGATE_OPS_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cc/kernels/kernels.h"
#include "cc/kernels/pad.h"
#include "delegate/metadata.h"
#include "delegate/tflite_abi.h"

namespace cocopie {

// Pooling and ADD are claimed by both backends (on the CPU they keep a VGG
// stage's or a residual block's tensors planar; on the GPU, on the device);
// MEAN and PAD (zeros around the spatial axes) by the CPU backend only.
enum class OpKind {
  kConv2D, kDepthwiseConv2D, kFullyConnected, kMaxPool, kAvgPool, kAdd, kMean, kPad
};
const char* OpKindName(OpKind kind);
inline bool IsPool(OpKind kind) { return kind == OpKind::kMaxPool || kind == OpKind::kAvgPool; }
// Ops whose output takes the layout of their input inside a partition
// (planar only from planar): depthwise convs, pools, PAD.
inline bool KeepsLayout(OpKind kind) {
  return kind == OpKind::kDepthwiseConv2D || IsPool(kind) || kind == OpKind::kPad;
}

// Everything needed to run one claimed node; weights are packed once here.
struct OpPlan {
  int node_index = -1;
  OpKind kind = OpKind::kConv2D;
  int input = -1, filter = -1, bias = -1, output = -1;  // tensor indices
  int input2 = -1;  // ADD's second operand
  SpatialPad pad;   // PAD: the rows and columns of zeros (dims resolved in Prepare)
  // A PAD folded into the VALID pool after it (set in Prepare): the PAD does
  // nothing, the pool reads the PAD's input with zeros around it.  An ADD
  // fused into the 1x1 conv that writes one of its operands: the ADD does
  // nothing, the conv adds `residual` (the other operand) in its generated
  // epilogue and writes `write_to` (the ADD's output) instead of `output`.
  bool fused = false, zero_border = false;
  int residual = -1, write_to = -1;
  Padding padding = Padding::kSame;
  int stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
  int k_h = 1, k_w = 1, in_c = 0, out_c = 0;
  bool keep_num_dims = false;  // fully connected; MEAN's keep_dims
  float act_min = 0, act_max = 0;
  const float* filter_data = nullptr;  // the model's constant weights
  const float* bias_data = nullptr;    // and bias (null: none)
  PackedConv conv;
  PackedDepthwise depthwise;
  PackedFullyConnected fc;
  // Pattern-pruned convolutions (chosen in BuildPlan by the cost model).
  bool use_pattern = false;
  PatternStats pattern_stats;
  PatternPlan pattern;
  PatternScratch pattern_scratch;
  PatternTuning tuning;
  std::string tuning_source = "default";
  // A strided pattern conv runs as a stride-1 one over its phase-split input
  // (cc/kernels/phase_split.h): `shape` is then the split shape the pattern
  // engine runs, `strided_shape` the node's own, `split_input` holds X' for
  // batch > 1 (batch 1 splits straight into the engine's planes); the
  // dense `conv` is packed too, for inputs holding Inf or NaN.
  bool phase_split = false;
  // A strided 1x1 conv runs as a stride-1 one over its input's subsample
  // (phase_split.h, SubsampleApplies): `shape` is then that conv's,
  // `strided_shape` the node's own, `subsampled` the subsample (NHWC, or
  // planar when the input is).
  bool subsample = false;
  LineFloats subsampled;
  ConvShape strided_shape;
  std::vector<float> split_input;
  // Layout kept between consecutive pattern convs (set in Prepare): this op
  // writes into the next op's padded CHW input / reads its own from there.
  bool chain_next = false, input_packed = false;
  // Planar tensors (dispatch.h, set in Prepare): the output, the input and
  // ADD's second operand are plain CHW planes instead of NHWC.
  bool planar_output = false, planar_input = false, planar_input2 = false;
  // The output is one of the partition's (set in Prepare): a pattern conv
  // writes it with streaming stores when large (StreamsNhwcOutput).
  bool output_leaves = false;
  // A depthwise conv the planar kernel can run (DepthwisePlanarApplies).
  bool dw_planar = false;
  std::vector<float> layout_tmp, layout_tmp2;  // an operand in the other layout
  // What became of the converter's metadata record for this node:
  // "none", "used" or "rejected: <why>" (then the plan comes from the weights).
  std::string metadata = "none";
  // Resolved in Prepare from the current input shape.
  ConvShape shape;
  int fc_batch = 0;
  std::vector<int> output_dims;
};

// Returns an empty string if the delegate can run `node`, otherwise why not
// (used for verbose logs and tests).
std::string CheckSupported(const TfLiteContext* context, const TfLiteNode* node,
                           const TfLiteRegistration* reg);

// The same for the GPU backend, which does not take MEAN or PAD.
std::string CheckSupportedOnGpu(const TfLiteContext* context, const TfLiteNode* node,
                                const TfLiteRegistration* reg);

// The `supported` nodes (in execution order), or none when the file's
// declared shapes contradict themselves: some conv, depthwise conv, pool, ADD
// or FULLY_CONNECTED declares an output shape other than the one stock
// TFLite's Prepare computes from its declared input (a damaged file).  Stock
// recomputes the shapes and runs such a file; claimed nodes would meet shapes
// their claim did not see (a broadcasting ADD the declared shapes hid), and
// XNNPACK's partitions beside them fail to reshape where its whole-graph one
// runs.  `why_not` gets the reason for each supported node.
std::vector<int> SupportedIfShapesAgree(TfLiteContext* context,
                                        const std::vector<int>& execution_plan,
                                        const std::vector<int>& supported,
                                        std::map<int, std::string>* why_not);

// claim=auto on the CPU backend, for the whole graph at once: which of the
// `supported` nodes (CheckSupported accepted them; in execution order) to
// take (`pattern_kernels`: the kernel set, null when pattern kernels are
// off).  Pattern convs are charged a layout change only at an edge whose
// neighbour stays with TFLite (or reads NHWC: a phase-split conv), so convs
// of a residual block are judged together; ADDs are taken next to claimed
// convs, pools and MEANs after them, and FULLY_CONNECTED layers whose input
// has one position per image (a MEAN's, a pool's down to 1x1) after those.
// `why_not` gets the reason for every supported node left out.
std::vector<int> ChooseClaims(TfLiteContext* context, const std::vector<int>& execution_plan,
                              const std::vector<int>& supported, const KernelSet* pattern_kernels,
                              JitIsa jit, std::map<int, std::string>* why_not);

// The FULLY_CONNECTED nodes of `execution_plan` whose input a ReLU or
// ReLU6 wrote (an op's fused activation or the op itself, through max
// pools and reshapes): about half their inputs are zero, so their weights
// are packed by input and the zeros' rows skipped (PackFullyConnected).
std::set<int> FcsAfterRelu(TfLiteContext* context, const std::vector<int>& execution_plan);

// Builds the plan of a node that CheckSupported accepted. `kernels` is the
// delegate's kernel set (null: reference kernels only, no pattern kernels);
// `jit` the code generator's ISA (kNone: none), which also takes dense convs
// of short filters (kJitDenseMaxDepth).
OpPlan BuildPlan(const TfLiteContext* context, int node_index,
                 const TfLiteNode* node, const TfLiteRegistration* reg,
                 const KernelSet* kernels, bool allow_pattern,
                 const PatternRecord* record = nullptr, JitIsa jit = JitIsa::kNone);

// Computes plan->shape / output_dims from the input dims. Returns an error
// message or an empty string.
std::string ResolveShapes(const std::vector<int>& input_dims, OpPlan* plan);

// Dense multiply-accumulates of a resolved plan, and those its kernel runs.
int64_t DenseMacs(const OpPlan& plan);
int64_t ExecutedMacs(const OpPlan& plan);

}  // namespace cocopie

#endif  // COCOPIE_DELEGATE_OPS_H_
