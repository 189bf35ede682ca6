#include "delegate/ops.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <unordered_map>
#include <vector>

#include "cc/kernels/dispatch.h"
#include "cc/kernels/phase_split.h"
#include "cc/kernels/pool.h"

namespace cocopie {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

bool ActivationRange(TfLiteFusedActivation act, float* lo, float* hi) {
  switch (act) {
    case kTfLiteActNone: *lo = -kInf; *hi = kInf; return true;
    case kTfLiteActRelu: *lo = 0.f; *hi = kInf; return true;
    case kTfLiteActRelu6: *lo = 0.f; *hi = 6.f; return true;
    case kTfLiteActReluN1To1: *lo = -1.f; *hi = 1.f; return true;
    default: return false;
  }
}

bool IsConstFloat(const TfLiteTensor& t) {
  return t.type == kTfLiteFloat32 && t.allocation_type == kTfLiteMmapRo &&
         t.data.raw != nullptr && t.dims != nullptr;
}

int Dim(const TfLiteTensor& t, int i) { return t.dims->data[i]; }

int64_t NumElements(const TfLiteTensor& t) {
  int64_t n = 1;
  for (int i = 0; i < t.dims->size; ++i) n *= t.dims->data[i];
  return n;
}

// Tensor index checks shared by all ops: valid indices, float32 activations.
std::string CheckIo(const TfLiteContext* ctx, const TfLiteNode* node,
                    int min_inputs, int max_inputs) {
  if (node->inputs == nullptr || node->outputs == nullptr) return "node has no tensors";
  if (node->inputs->size < min_inputs || node->inputs->size > max_inputs)
    return "unexpected number of inputs";
  if (node->outputs->size != 1) return "expected one output";
  for (int i = 0; i < node->inputs->size; ++i) {
    const int t = node->inputs->data[i];
    if (t == kTfLiteOptionalTensor && i == 2) continue;  // optional bias
    if (t < 0 || static_cast<size_t>(t) >= ctx->tensors_size) return "bad tensor index";
  }
  const int out = node->outputs->data[0];
  if (out < 0 || static_cast<size_t>(out) >= ctx->tensors_size) return "bad tensor index";
  const TfLiteTensor& in = ctx->tensors[node->inputs->data[0]];
  if (in.type != kTfLiteFloat32) return "input is not float32";
  if (ctx->tensors[out].type != kTfLiteFloat32) return "output is not float32";
  return "";
}

std::string CheckBias(const TfLiteContext* ctx, const TfLiteNode* node, int out_c) {
  if (node->inputs->size < 3 || node->inputs->data[2] == kTfLiteOptionalTensor) return "";
  const TfLiteTensor& b = ctx->tensors[node->inputs->data[2]];
  if (!IsConstFloat(b)) return "bias is not a constant float32 tensor";
  if (NumElements(b) != out_c) return "bias size does not match the output channels";
  return "";
}

}  // namespace

const char* OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kConv2D: return "CONV_2D";
    case OpKind::kDepthwiseConv2D: return "DEPTHWISE_CONV_2D";
    case OpKind::kFullyConnected: return "FULLY_CONNECTED";
    case OpKind::kMaxPool: return "MAX_POOL_2D";
    case OpKind::kAvgPool: return "AVERAGE_POOL_2D";
    case OpKind::kAdd: return "ADD";
    case OpKind::kMean: return "MEAN";
    case OpKind::kPad: return "PAD";
  }
  return "?";
}

namespace {

// float32 ADD of two same-shaped tensors (no broadcasting) with a fused
// activation the kernels clamp to.
std::string CheckAdd(const TfLiteContext* ctx, const TfLiteNode* node) {
  std::string why = CheckIo(ctx, node, 2, 2);
  if (!why.empty()) return why;
  const TfLiteTensor& in = ctx->tensors[node->inputs->data[0]];
  const TfLiteTensor& b = ctx->tensors[node->inputs->data[1]];
  if (in.dims == nullptr) return "input has no shape";
  if (b.type != kTfLiteFloat32) return "second input is not float32";
  if (b.dims == nullptr || b.dims->size != in.dims->size) return "broadcasting ADD";
  for (int i = 0; i < in.dims->size; ++i)
    if (b.dims->data[i] != in.dims->data[i]) return "broadcasting ADD";
  float lo, hi;
  const auto* p = static_cast<const TfLiteAddParams*>(node->builtin_data);
  if (!ActivationRange(p->activation, &lo, &hi)) return "unsupported fused activation";
  return "";
}

// float32 MEAN of a 4-D tensor over its two spatial axes (global average
// pooling: Keras' GlobalAveragePooling2D), the axes a constant int32 tensor
// holding 1 and 2 (or -3 and -2) in either order.
std::string CheckMean(const TfLiteContext* ctx, const TfLiteNode* node) {
  std::string why = CheckIo(ctx, node, 2, 2);
  if (!why.empty()) return why;
  const TfLiteTensor& in = ctx->tensors[node->inputs->data[0]];
  const TfLiteTensor& axes = ctx->tensors[node->inputs->data[1]];
  if (in.dims == nullptr || in.dims->size != 4) return "MEAN: input is not 4-D";
  if (axes.type != kTfLiteInt32 || axes.allocation_type != kTfLiteMmapRo ||
      axes.data.raw == nullptr || axes.dims == nullptr || axes.dims->size != 1 ||
      axes.dims->data[0] != 2 || axes.bytes < 2 * sizeof(int32_t))
    return "MEAN: axes are not a constant int32 tensor of two values";
  bool seen[4] = {false, false, false, false};
  for (int i = 0; i < 2; ++i) {
    const int32_t a = axes.data.i32[i] < 0 ? axes.data.i32[i] + 4 : axes.data.i32[i];
    if (a < 0 || a > 3) return "MEAN: axis out of range";
    seen[a] = true;
  }
  if (!seen[1] || !seen[2]) return "MEAN over other axes than height and width";
  return "";
}

// PAD of a 4-D float tensor with zeros around its two spatial axes only,
// the paddings a constant int32 [4, 2] tensor (Keras' ZeroPadding2D); *pad
// (if given) gets the four sides.
std::string CheckPad(const TfLiteContext* ctx, const TfLiteNode* node, SpatialPad* pad) {
  std::string why = CheckIo(ctx, node, 2, 2);
  if (!why.empty()) return why;
  const TfLiteTensor& in = ctx->tensors[node->inputs->data[0]];
  const TfLiteTensor& p = ctx->tensors[node->inputs->data[1]];
  if (in.dims == nullptr || in.dims->size != 4) return "PAD: input is not 4-D";
  if (p.type != kTfLiteInt32 || p.allocation_type != kTfLiteMmapRo || p.data.raw == nullptr ||
      p.dims == nullptr || p.dims->size != 2 || p.dims->data[0] != 4 || p.dims->data[1] != 2 ||
      p.bytes < 8 * sizeof(int32_t))
    return "PAD: paddings are not a constant int32 [4, 2] tensor";
  const int32_t* v = p.data.i32;
  if (v[0] != 0 || v[1] != 0 || v[6] != 0 || v[7] != 0)
    return "PAD of the batch or channel axis";
  for (int i = 2; i < 6; ++i)
    if (v[i] < 0 || v[i] > kMaxSpatialPad)
      return "PAD: padding negative or above " + std::to_string(kMaxSpatialPad);
  if (pad != nullptr) {
    pad->top = v[2]; pad->bottom = v[3]; pad->left = v[4]; pad->right = v[5];
  }
  return "";
}

// MAX_POOL_2D / AVERAGE_POOL_2D (both backends): one 4-D input, TFLite's
// paddings, a window of at most kMaxPoolWindow per axis.
std::string CheckPool(const TfLiteContext* ctx, const TfLiteNode* node) {
  std::string why = CheckIo(ctx, node, 1, 1);
  if (!why.empty()) return why;
  const TfLiteTensor& in = ctx->tensors[node->inputs->data[0]];
  if (in.dims == nullptr) return "input has no shape";
  if (in.dims->size != 4) return "input is not 4-D";
  const auto* p = static_cast<const TfLitePoolParams*>(node->builtin_data);
  if (p->padding != kTfLitePaddingSame && p->padding != kTfLitePaddingValid)
    return "unknown padding";
  if (p->stride_width < 1 || p->stride_height < 1 || p->filter_width < 1 ||
      p->filter_height < 1 || p->filter_width > kMaxPoolWindow ||
      p->filter_height > kMaxPoolWindow)
    return "invalid pooling window or stride";
  float lo, hi;
  if (!ActivationRange(p->activation, &lo, &hi)) return "unsupported fused activation";
  return "";
}

}  // namespace

std::string CheckSupported(const TfLiteContext* ctx, const TfLiteNode* node,
                           const TfLiteRegistration* reg) {
  const int code = reg->builtin_code;
  if (code != kTfLiteBuiltinConv2d && code != kTfLiteBuiltinDepthwiseConv2d &&
      code != kTfLiteBuiltinFullyConnected && code != kTfLiteBuiltinAdd &&
      code != kTfLiteBuiltinMean && code != kTfLiteBuiltinMaxPool2d &&
      code != kTfLiteBuiltinAveragePool2d && code != kTfLiteBuiltinPad)
    return "operator not handled by the delegate";
  if (code == kTfLiteBuiltinPad) return CheckPad(ctx, node, nullptr);  // no parameters
  if (node->builtin_data == nullptr) return "operator has no parameters";
  if (code == kTfLiteBuiltinAdd) return CheckAdd(ctx, node);
  if (code == kTfLiteBuiltinMean) return CheckMean(ctx, node);
  if (code == kTfLiteBuiltinMaxPool2d || code == kTfLiteBuiltinAveragePool2d)
    return CheckPool(ctx, node);
  std::string why = CheckIo(ctx, node, 2, 3);
  if (!why.empty()) return why;
  const TfLiteTensor& in = ctx->tensors[node->inputs->data[0]];
  const TfLiteTensor& w = ctx->tensors[node->inputs->data[1]];
  if (!IsConstFloat(w)) return "filter is not a constant float32 tensor";
  float lo, hi;

  if (code == kTfLiteBuiltinConv2d || code == kTfLiteBuiltinDepthwiseConv2d) {
    // Stock TFLite requires the bias input of both (FULLY_CONNECTED's is
    // optional); a node stock refuses is not ours to run.
    if (node->inputs->size < 3 || node->inputs->data[2] == kTfLiteOptionalTensor)
      return "no bias input (stock TFLite refuses this node too)";
    if (in.dims == nullptr || in.dims->size != 4) return "input is not 4-D";
    if (w.dims->size != 4) return "filter is not 4-D";
    int padding, sw, sh, dw, dh, act;
    if (code == kTfLiteBuiltinConv2d) {
      const auto* p = static_cast<const TfLiteConvParams*>(node->builtin_data);
      padding = p->padding; sw = p->stride_width; sh = p->stride_height;
      dw = p->dilation_width_factor; dh = p->dilation_height_factor; act = p->activation;
      if (Dim(w, 3) != Dim(in, 3)) return "grouped convolution (filter depth != input depth)";
    } else {
      const auto* p = static_cast<const TfLiteDepthwiseConvParams*>(node->builtin_data);
      padding = p->padding; sw = p->stride_width; sh = p->stride_height;
      dw = p->dilation_width_factor; dh = p->dilation_height_factor; act = p->activation;
      if (Dim(w, 0) != 1) return "depthwise filter must be 1xHxWxC";
      if (Dim(in, 3) <= 0 || Dim(w, 3) % Dim(in, 3) != 0)
        return "depthwise output channels are not a multiple of input channels";
    }
    if (padding != kTfLitePaddingSame && padding != kTfLitePaddingValid) return "unknown padding";
    if (sw < 1 || sh < 1 || dw < 1 || dh < 1) return "invalid stride or dilation";
    if (int64_t(Dim(w, 1) - 1) * dh > kMaxKernelSpan || int64_t(Dim(w, 2) - 1) * dw > kMaxKernelSpan)
      return "dilated kernel spans more than " + std::to_string(kMaxKernelSpan) +
             " pixels (padded planes too large)";
    if (!ActivationRange(static_cast<TfLiteFusedActivation>(act), &lo, &hi))
      return "unsupported fused activation";
    for (int i = 0; i < 4; ++i)
      if (Dim(w, i) <= 0) return "filter has an empty dimension";
    return CheckBias(ctx, node, Dim(w, code == kTfLiteBuiltinConv2d ? 0 : 3));
  }

  // FULLY_CONNECTED
  const auto* p = static_cast<const TfLiteFullyConnectedParams*>(node->builtin_data);
  if (p->weights_format != kTfLiteFullyConnectedWeightsFormatDefault)
    return "shuffled weights format";
  if (!ActivationRange(p->activation, &lo, &hi)) return "unsupported fused activation";
  if (w.dims->size != 2 || Dim(w, 0) <= 0 || Dim(w, 1) <= 0) return "weights are not 2-D";
  if (in.dims == nullptr || in.dims->size < 1) return "input has no shape";
  return CheckBias(ctx, node, Dim(w, 0));
}

std::string CheckSupportedOnGpu(const TfLiteContext* ctx, const TfLiteNode* node,
                                const TfLiteRegistration* reg) {
  if (reg->builtin_code == kTfLiteBuiltinMean) return "MEAN has a CPU kernel only";
  if (reg->builtin_code == kTfLiteBuiltinPad) return "PAD has a CPU kernel only";
  return CheckSupported(ctx, node, reg);
}

namespace {

// A record the node's kernel has no use for: still checked, so the report
// tells a valid record from a stale one.
std::string CheckedButUnused(const PatternRecord& record, RecordOp op, const TfLiteTensor& w,
                             const OpPlan& plan, const char* why_unused) {
  const int in_c = op == RecordOp::kDepthwiseConv2D ? 1 : plan.in_c;
  const std::string why = CheckRecordAgainstFilter(record, op, w.data.f, w.bytes, plan.out_c,
                                                   plan.k_h, plan.k_w, in_c);
  return why.empty() ? std::string("valid, not used: ") + why_unused : "rejected: " + why;
}

}  // namespace

OpPlan BuildPlan(const TfLiteContext* ctx, int node_index, const TfLiteNode* node,
                 const TfLiteRegistration* reg, const KernelSet* kernels, bool allow_pattern,
                 const PatternRecord* record, JitIsa jit) {
  OpPlan plan;
  plan.node_index = node_index;
  const int code = reg->builtin_code;
  if (code == kTfLiteBuiltinPad) {
    plan.kind = OpKind::kPad;
    plan.input = node->inputs->data[0];
    plan.output = node->outputs->data[0];
    CheckPad(ctx, node, &plan.pad);  // accepted by CheckSupported
    plan.act_min = -kInf;
    plan.act_max = kInf;
    return plan;
  }
  if (code == kTfLiteBuiltinMean) {
    plan.kind = OpKind::kMean;
    plan.input = node->inputs->data[0];
    plan.output = node->outputs->data[0];
    plan.keep_num_dims = static_cast<const TfLiteReducerParams*>(node->builtin_data)->keep_dims;
    plan.act_min = -kInf;
    plan.act_max = kInf;
    return plan;
  }
  if (code == kTfLiteBuiltinAdd || code == kTfLiteBuiltinMaxPool2d ||
      code == kTfLiteBuiltinAveragePool2d) {
    plan.input = node->inputs->data[0];
    plan.output = node->outputs->data[0];
    TfLiteFusedActivation act;
    if (code == kTfLiteBuiltinAdd) {
      plan.kind = OpKind::kAdd;
      plan.input2 = node->inputs->data[1];
      act = static_cast<const TfLiteAddParams*>(node->builtin_data)->activation;
    } else {
      const auto* p = static_cast<const TfLitePoolParams*>(node->builtin_data);
      plan.kind = code == kTfLiteBuiltinMaxPool2d ? OpKind::kMaxPool : OpKind::kAvgPool;
      plan.padding = p->padding == kTfLitePaddingSame ? Padding::kSame : Padding::kValid;
      plan.stride_h = p->stride_height; plan.stride_w = p->stride_width;
      plan.k_h = p->filter_height; plan.k_w = p->filter_width;
      plan.in_c = plan.out_c = ctx->tensors[plan.input].dims->data[3];
      act = p->activation;
    }
    ActivationRange(act, &plan.act_min, &plan.act_max);
    return plan;
  }
  plan.input = node->inputs->data[0];
  plan.filter = node->inputs->data[1];
  plan.bias = node->inputs->size >= 3 ? node->inputs->data[2] : kTfLiteOptionalTensor;
  plan.output = node->outputs->data[0];
  const TfLiteTensor& w = ctx->tensors[plan.filter];
  plan.filter_data = w.data.f;
  const float* bias =
      plan.bias == kTfLiteOptionalTensor ? nullptr : ctx->tensors[plan.bias].data.f;
  plan.bias_data = bias;
  TfLiteFusedActivation act;
  if (reg->builtin_code == kTfLiteBuiltinFullyConnected) {
    const auto* p = static_cast<const TfLiteFullyConnectedParams*>(node->builtin_data);
    plan.kind = OpKind::kFullyConnected;
    plan.out_c = Dim(w, 0);
    plan.in_c = Dim(w, 1);
    plan.keep_num_dims = p->keep_num_dims;
    act = p->activation;
    plan.fc = PackFullyConnected(w.data.f, plan.out_c, plan.in_c, bias);
  } else {
    int padding;
    if (reg->builtin_code == kTfLiteBuiltinConv2d) {
      const auto* p = static_cast<const TfLiteConvParams*>(node->builtin_data);
      plan.kind = OpKind::kConv2D;
      padding = p->padding;
      plan.stride_h = p->stride_height; plan.stride_w = p->stride_width;
      plan.dil_h = p->dilation_height_factor; plan.dil_w = p->dilation_width_factor;
      act = p->activation;
      plan.out_c = Dim(w, 0); plan.k_h = Dim(w, 1); plan.k_w = Dim(w, 2); plan.in_c = Dim(w, 3);
      plan.pattern_stats = AnalyzePatterns(w.data.f, plan.out_c, plan.k_h, plan.k_w, plan.in_c);
      ConvShape geometry;
      geometry.k_h = plan.k_h; geometry.k_w = plan.k_w;
      geometry.stride_h = plan.stride_h; geometry.stride_w = plan.stride_w;
      plan.subsample = allow_pattern && kernels != nullptr &&
                       SubsampleApplies(plan.k_h, plan.k_w, plan.stride_h, plan.stride_w);
      if (plan.subsample) geometry.stride_h = geometry.stride_w = 1;  // what runs
      plan.use_pattern = allow_pattern && kernels != nullptr &&
                         PatternKernelApplies(plan.pattern_stats, geometry, jit);
      if (allow_pattern && kernels != nullptr && !plan.subsample &&
          PhaseSplitApplies(plan.stride_h, plan.stride_w, plan.dil_h, plan.dil_w)) {
        int kh2, kw2;
        const std::vector<float> split = PhaseSplitFilter(
            w.data.f, plan.out_c, plan.k_h, plan.k_w, plan.in_c, plan.stride_h, plan.stride_w,
            &kh2, &kw2);
        const int c2 = plan.stride_h * plan.stride_w * plan.in_c;
        const PatternStats st = AnalyzePatterns(split.data(), plan.out_c, kh2, kw2, c2);
        ConvShape g2;
        g2.k_h = kh2; g2.k_w = kw2;
        // The layer itself must be pattern-pruned: splitting alone makes a
        // dense 1x1 stride-2 filter look 75% sparse.
        plan.phase_split = WeightsSuitPatternEngine(plan.pattern_stats, plan.k_h * plan.k_w, jit) &&
                           PatternKernelApplies(st, g2, jit) &&
                           BuildPatternPlan(split.data(), plan.out_c, kh2, kw2, c2, bias,
                                            kMaxGroup, &plan.pattern).empty();
        if (plan.phase_split) {
          plan.use_pattern = true;
          plan.pattern_stats = st;
          // The record describes the unsplit kernel's masks.
          if (record != nullptr) plan.metadata = "not used: the strided conv runs phase-split";
          plan.conv = PackConv2D(w.data.f, plan.out_c, plan.k_h, plan.k_w, plan.in_c, bias);
        }
      } else if (plan.use_pattern && record != nullptr) {
        // The converter's record: verified against the weights, then its
        // patterns, kernel map and filter order (or the default order) are
        // used as they are.
        std::vector<int> ids;
        std::string why = CheckRecordAgainstFilter(*record, RecordOp::kConv2D, w.data.f, w.bytes,
                                                   plan.out_c, plan.k_h, plan.k_w, plan.in_c,
                                                   &ids);
        if (why.empty()) {
          const std::vector<int> order(record->reorder.begin(), record->reorder.end());
          why = BuildPatternPlanWith(w.data.f, plan.out_c, plan.k_h, plan.k_w, plan.in_c, bias,
                                     kMaxGroup, record->patterns, ids, order, &plan.pattern);
        }
        plan.metadata = why.empty() ? "used" : "rejected: " + why;
        if (!why.empty())
          plan.use_pattern = BuildPatternPlan(w.data.f, plan.out_c, plan.k_h, plan.k_w,
                                              plan.in_c, bias, kMaxGroup, &plan.pattern).empty();
      } else if (plan.use_pattern && !plan.phase_split) {
        plan.use_pattern = BuildPatternPlan(w.data.f, plan.out_c, plan.k_h, plan.k_w, plan.in_c,
                                            bias, kMaxGroup, &plan.pattern).empty();
      }
      // The subsample is for the pattern engine only: the dense kernel runs
      // the strided shape.
      plan.subsample = plan.subsample && plan.use_pattern;
      if (!plan.use_pattern) {
        plan.conv = PackConv2D(w.data.f, plan.out_c, plan.k_h, plan.k_w, plan.in_c, bias);
        if (record != nullptr && plan.metadata == "none")
          plan.metadata = CheckedButUnused(*record, RecordOp::kConv2D, w, plan,
                                           "this conv runs on the dense kernel");
      }
    } else {
      const auto* p = static_cast<const TfLiteDepthwiseConvParams*>(node->builtin_data);
      plan.kind = OpKind::kDepthwiseConv2D;
      padding = p->padding;
      plan.stride_h = p->stride_height; plan.stride_w = p->stride_width;
      plan.dil_h = p->dilation_height_factor; plan.dil_w = p->dilation_width_factor;
      act = p->activation;
      plan.k_h = Dim(w, 1); plan.k_w = Dim(w, 2); plan.out_c = Dim(w, 3);
      plan.in_c = Dim(ctx->tensors[plan.input], 3);
      plan.depthwise = PackDepthwise(w.data.f, plan.out_c, plan.k_h, plan.k_w, bias);
      if (record != nullptr)
        plan.metadata = CheckedButUnused(*record, RecordOp::kDepthwiseConv2D, w, plan,
                                         "depthwise convs run on the dense depthwise kernel");
    }
    plan.padding = padding == kTfLitePaddingSame ? Padding::kSame : Padding::kValid;
  }
  ActivationRange(act, &plan.act_min, &plan.act_max);
  return plan;
}

std::string ResolveShapes(const std::vector<int>& in, OpPlan* plan) {
  if (plan->kind == OpKind::kAdd) {
    plan->output_dims = in;
    return "";
  }
  if (plan->kind == OpKind::kPad) {
    if (in.size() != 4) return "input is not 4-D";
    for (int d : in)
      if (d <= 0) return "input has an empty dimension";
    SpatialPad& p = plan->pad;
    p.batch = in[0]; p.in_h = in[1]; p.in_w = in[2]; p.channels = in[3];
    plan->in_c = plan->out_c = in[3];
    plan->output_dims = {in[0], p.out_h(), p.out_w(), in[3]};
    return "";
  }
  if (plan->kind == OpKind::kMean) {
    if (in.size() != 4) return "input is not 4-D";
    for (int d : in)
      if (d <= 0) return "input has an empty dimension";
    ConvShape s;
    s.batch = in[0]; s.in_h = in[1]; s.in_w = in[2]; s.in_c = s.out_c = in[3];
    s.out_h = s.out_w = 1;
    plan->shape = s;
    plan->in_c = plan->out_c = in[3];
    plan->output_dims = plan->keep_num_dims ? std::vector<int>{in[0], 1, 1, in[3]}
                                            : std::vector<int>{in[0], in[3]};
    return "";
  }
  if (plan->kind == OpKind::kFullyConnected) {
    int64_t n = 1;
    for (int d : in) n *= d;
    if (in.empty() || n % plan->in_c != 0)
      return "input size is not a multiple of the weights' input dimension";
    plan->fc_batch = static_cast<int>(n / plan->in_c);
    if (plan->keep_num_dims) {
      if (in.back() != plan->in_c) return "last input dimension does not match the weights";
      plan->output_dims = in;
      plan->output_dims.back() = plan->out_c;
    } else {
      plan->output_dims = {plan->fc_batch, plan->out_c};
    }
    return "";
  }
  if (in.size() != 4) return "input is not 4-D";
  ConvShape s;
  s.batch = in[0]; s.in_h = in[1]; s.in_w = in[2]; s.in_c = in[3];
  s.out_c = plan->out_c;
  s.k_h = plan->k_h; s.k_w = plan->k_w;
  s.stride_h = plan->stride_h; s.stride_w = plan->stride_w;
  s.dil_h = plan->dil_h; s.dil_w = plan->dil_w;
  s.act_min = plan->act_min; s.act_max = plan->act_max;
  if (plan->kind == OpKind::kMaxPool || plan->kind == OpKind::kAvgPool) plan->in_c = s.in_c;
  if (plan->kind == OpKind::kMaxPool || plan->kind == OpKind::kAvgPool) s.out_c = s.in_c;
  if (s.in_c != plan->in_c) return "input channels do not match the filter";
  if (plan->kind == OpKind::kDepthwiseConv2D) s.depth_multiplier = s.out_c / s.in_c;
  std::string why = ResolveConvShape(plan->padding, &s);
  if (why.empty() && (plan->kind == OpKind::kMaxPool || plan->kind == OpKind::kAvgPool))
    why = CheckPoolShape(s);
  if (!why.empty()) return why;
  plan->shape = s;
  if (plan->phase_split) {
    plan->strided_shape = s;
    plan->shape = PhaseSplitShape(s);
    const ConvShape& t = plan->shape;
    // Batch 1 splits straight into the engine's padded planes.
    plan->split_input.assign(
        t.batch > 1 ? static_cast<size_t>(t.batch) * t.in_h * t.in_w * t.in_c : 0, 0.f);
  }
  if (plan->subsample) {
    if (s.pad_top != 0 || s.pad_left != 0) return "strided 1x1 conv with padding";
    plan->strided_shape = s;
    plan->shape = SubsampledShape(s);
    plan->subsampled.assign(static_cast<size_t>(s.batch) * s.out_h * s.out_w * s.in_c, 0.f);
  }
  plan->output_dims = {s.batch, s.out_h, s.out_w, s.out_c};
  return "";
}

namespace {

// What claim=auto needs to know of one conv: the pattern statistics of the
// layer as written (the executed MACs are its kept weights, split or not),
// its dense MACs and the elements at its two edges.
struct ConvCost {
  PatternStats stats;
  bool split = false;       // strided: runs phase-split (reads NHWC)
  bool one_by_one = false;  // 1x1 kernel
  int64_t dense = 0, in_elements = 0, out_elements = 0;
  bool jit_runs = true;  // the map is large enough for generated code
  bool in_place_pays = false;  // ... and, for a 1x1 conv, to run in place
  bool in_place_pays_inside = false;  // ... when neither edge changes layout
};

// "" and *cost when the conv can run on the pattern engine, else why not.
std::string AnalyzeConv(const TfLiteContext* ctx, const TfLiteNode* node,
                        const KernelSet* pattern_kernels, JitIsa jit, ConvCost* cost) {
  if (!pattern_kernels) return "pattern kernels are off and the dense kernel is slower than TFLite's";
  const TfLiteTensor& w = ctx->tensors[node->inputs->data[1]];
  const auto* p = static_cast<const TfLiteConvParams*>(node->builtin_data);
  PatternStats st = AnalyzePatterns(w.data.f, Dim(w, 0), Dim(w, 1), Dim(w, 2), Dim(w, 3));
  cost->stats = st;
  cost->one_by_one = Dim(w, 1) * Dim(w, 2) == 1;
  ConvShape geometry;
  geometry.k_h = Dim(w, 1); geometry.k_w = Dim(w, 2);
  geometry.stride_h = p->stride_height; geometry.stride_w = p->stride_width;
  // A strided 1x1 conv runs stride-1 over its input's subsample.
  const bool subsample =
      SubsampleApplies(Dim(w, 1), Dim(w, 2), p->stride_height, p->stride_width);
  if (subsample) geometry.stride_h = geometry.stride_w = 1;
  cost->split = !subsample && PhaseSplitApplies(p->stride_height, p->stride_width,
                                                p->dilation_height_factor,
                                                p->dilation_width_factor);
  if (cost->split) {  // judged as the stride-1 conv it runs as
    // ... but only if the layer itself is pattern-pruned: the split alone
    // makes a dense 1x1 stride-2 filter look 75% sparse.
    if (!WeightsSuitPatternEngine(st, Dim(w, 1) * Dim(w, 2), jit))
      return "not pattern-pruned: TFLite's dense kernel is faster";
    int kh2, kw2;
    const std::vector<float> f = PhaseSplitFilter(w.data.f, Dim(w, 0), Dim(w, 1), Dim(w, 2),
                                                  Dim(w, 3), p->stride_height, p->stride_width,
                                                  &kh2, &kw2);
    st = AnalyzePatterns(f.data(), Dim(w, 0), kh2, kw2,
                         p->stride_height * p->stride_width * Dim(w, 3));
    geometry = ConvShape();
    geometry.k_h = kh2; geometry.k_w = kw2;
  }
  if (!PatternKernelApplies(st, geometry, jit))
    return "not pattern-pruned (or strided with dilation): TFLite's dense kernel is faster";
  const TfLiteTensor& in = ctx->tensors[node->inputs->data[0]];
  const TfLiteTensor& out = ctx->tensors[node->outputs->data[0]];
  if (in.dims != nullptr && out.dims != nullptr && in.dims->size == 4 && out.dims->size == 4) {
    const int64_t in_elems = NumElements(in), out_elems = NumElements(out);
    if (in_elems > 0 && out_elems > 0) {
      cost->dense = out_elems * Dim(w, 1) * Dim(w, 2) * Dim(w, 3);
      cost->in_elements = in_elems * (cost->split ? 2 : 1);  // the split is one more pass
      if (subsample)  // a layout change at its input moves only the subsample
        cost->in_elements = out_elems / Dim(out, 3) * Dim(in, 3);
      cost->out_elements = out_elems;
    }
    ConvShape run = geometry;  // the stride-1 conv the engine runs
    run.out_h = Dim(out, 1); run.out_w = Dim(out, 2);
    run.dil_w = cost->split ? 1 : p->dilation_width_factor;
    cost->jit_runs = JitRunsOnMap(jit, run);
    cost->in_place_pays = cost->one_by_one && !cost->split && JitInPlacePays(jit, run);
    cost->in_place_pays_inside =
        cost->one_by_one && !cost->split && JitInPlacePays(jit, run, /*no_edges=*/true);
  }
  return "";
}

// "" when a depthwise conv may join a claimed inverted-residual block
// (claim=auto), else why not.  It joins only between claimed convs (see
// ChooseClaims): its own kernel is slower than XNNPACK's dense one (16
// layers of MobileNetV2 224 at 4 of 9 taps: 0.65 ms against 0.44 ms), but
// with it claimed the block's 1x1 convs read and write planar tensors in
// place instead of changing layout on both sides, and they are where a
// pruned MobileNet gains (docs/engine.md section 25: the target model
// 3.16 -> 2.81 ms at 1 thread on AMD Zen 5, XNNPACK 3.16).  Only the
// AVX-512 set has the kernel's copy-free paths, and only pattern-pruned
// filters (at most 5 of 9 taps on average) are cheap enough.
std::string AnalyzeDepthwise(const TfLiteContext* ctx, const TfLiteNode* node,
                             const KernelSet* set) {
  if (set == nullptr || std::string(set->isa) != "avx512")
    return "depthwise convs join a claimed block on AVX-512 only: TFLite's kernel is faster here";
  const TfLiteTensor& in = ctx->tensors[node->inputs->data[0]];
  const TfLiteTensor& w = ctx->tensors[node->inputs->data[1]];
  const auto* p = static_cast<const TfLiteDepthwiseConvParams*>(node->builtin_data);
  if (in.dims == nullptr || in.dims->size != 4 || NumElements(in) <= 0)
    return "input shape unknown";
  ConvShape s;
  s.batch = Dim(in, 0); s.in_h = Dim(in, 1); s.in_w = Dim(in, 2); s.in_c = Dim(in, 3);
  s.out_c = Dim(w, 3); s.k_h = Dim(w, 1); s.k_w = Dim(w, 2);
  // Declared shapes are not validated yet (a damaged file: negative sizes).
  if (s.batch <= 0 || s.in_h <= 0 || s.in_w <= 0 || s.in_c <= 0 || s.out_c <= 0 || s.k_h <= 0 ||
      s.k_w <= 0)
    return "invalid geometry";
  s.depth_multiplier = s.out_c / s.in_c;
  s.stride_h = p->stride_height; s.stride_w = p->stride_width;
  s.dil_h = p->dilation_height_factor; s.dil_w = p->dilation_width_factor;
  if (!ResolveConvShape(p->padding == kTfLitePaddingSame ? Padding::kSame : Padding::kValid, &s)
           .empty())
    return "invalid geometry";
  const PackedDepthwise packed = PackDepthwise(w.data.f, s.out_c, s.k_h, s.k_w, nullptr);
  if (!DepthwisePlanarApplies(set, s, packed))
    return "the planar depthwise kernel does not take this layer (batch, stride, weights)";
  const double taps = double(packed.tap_begin.back()) / (double(s.out_c) * s.k_h * s.k_w);
  if (taps > 5.0 / 9.0) return "not pattern-pruned: TFLite's dense depthwise kernel is faster";
  return "";
}

double Predicted(const ConvCost& c, JitIsa jit, bool in_edge, bool out_edge,
                 double* saved = nullptr) {
  const int64_t edge = (in_edge ? c.in_elements : 0) + (out_edge ? c.out_elements : 0);
  // Maps too small for generated code run on the static kernels.  A 1x1
  // conv with a claimed neighbour keeps a planar tensor on that side, which
  // generated code reads or writes in place (RunInPlace in delegate.cc).
  const JitIsa isa = c.jit_runs ? jit : JitIsa::kNone;
  const bool in_place = in_edge || out_edge ? c.in_place_pays && !(in_edge && out_edge)
                                            : c.in_place_pays_inside;
  return PredictedSpeedupOverDense(c.stats, isa, c.dense, edge, c.one_by_one, in_place, saved);
}

// The speed-up a conv must be predicted to claim it.  1x1 convs are
// XNNPACK's most efficient kernel (a plain GEMM), and in MobileNet-class
// models each sits alone between depthwise convs, so every one pays both
// layout changes: measured on MobileNetV2 224 with 3.6x connectivity-pruned
// 1x1 convs, the 14x14 and 7x7 ones predicted 1.1-1.3x ran slower than
// XNNPACK.  Demand a clear margin there; a 1x1 conv with a claimed
// neighbour (a residual block's) keeps the planar layout on that side, and
// its lower efficiency is in PredictedSpeedupOverDense.
double Needed(const ConvCost& c, bool in_edge, bool out_edge) {
  return c.one_by_one && in_edge && out_edge ? 2.0 : 1.05;
}

std::string NotWorth(double speedup) {
  return "pattern kernel predicted " + std::to_string(speedup).substr(0, 4) +
         "x of TFLite's dense kernel: not worth claiming";
}

}  // namespace

namespace {

std::string DimsText(const int* d, int n) {
  std::string s = "[";
  for (int i = 0; i < n; ++i) s += (i ? "," : "") + std::to_string(d[i]);
  return s + "]";
}

// The output shape stock TFLite's Prepare gives `node` from its inputs'
// declared shapes, for the ops whose rule is simple and which the delegate
// takes or sits between (convs, pools, ADD, FULLY_CONNECTED); false when it
// is not known here (another op, missing or unusable parameters or shapes).
bool StockOutputShape(const TfLiteContext* ctx, const TfLiteNode* node, int code,
                      std::vector<int>* out) {
  if (code == kTfLiteBuiltinPad) {  // no parameters; CheckPad: spatial axes only
    SpatialPad p;
    if (!CheckPad(ctx, node, &p).empty()) return false;
    const TfLiteIntArray* d = ctx->tensors[node->inputs->data[0]].dims;
    for (int i = 0; i < 4; ++i)
      if (d->data[i] <= 0) return false;
    *out = {d->data[0], d->data[1] + p.top + p.bottom, d->data[2] + p.left + p.right,
            d->data[3]};
    return true;
  }
  if (node->inputs == nullptr || node->inputs->size < 1 || node->builtin_data == nullptr)
    return false;
  const auto input = [&](int i) -> const TfLiteTensor* {
    if (i >= node->inputs->size) return nullptr;
    const int t = node->inputs->data[i];
    if (t < 0 || static_cast<size_t>(t) >= ctx->tensors_size || ctx->tensors[t].dims == nullptr)
      return nullptr;
    return &ctx->tensors[t];
  };
  const TfLiteTensor* in = input(0);
  if (in == nullptr) return false;
  const std::vector<int> d(in->dims->data, in->dims->data + in->dims->size);
  for (int v : d)
    if (v <= 0) return false;
  const auto spatial = [&](int padding, int kh, int kw, int sh, int sw, int dh, int dw, int c) {
    if (d.size() != 4 || (padding != kTfLitePaddingSame && padding != kTfLitePaddingValid))
      return false;
    const Padding pad = padding == kTfLitePaddingSame ? Padding::kSame : Padding::kValid;
    int oh, ow, before;
    if (!ComputeAxis(d[1], kh, sh, dh, pad, &oh, &before) ||
        !ComputeAxis(d[2], kw, sw, dw, pad, &ow, &before) || c <= 0)
      return false;
    *out = {d[0], oh, ow, c};
    return true;
  };
  if (code == kTfLiteBuiltinConv2d || code == kTfLiteBuiltinDepthwiseConv2d) {
    const TfLiteTensor* w = input(1);
    if (w == nullptr || w->dims->size != 4) return false;
    if (code == kTfLiteBuiltinConv2d) {
      const auto* p = static_cast<const TfLiteConvParams*>(node->builtin_data);
      return spatial(p->padding, Dim(*w, 1), Dim(*w, 2), p->stride_height, p->stride_width,
                     p->dilation_height_factor, p->dilation_width_factor, Dim(*w, 0));
    }
    const auto* p = static_cast<const TfLiteDepthwiseConvParams*>(node->builtin_data);
    return spatial(p->padding, Dim(*w, 1), Dim(*w, 2), p->stride_height, p->stride_width,
                   p->dilation_height_factor, p->dilation_width_factor, Dim(*w, 3));
  }
  if (code == kTfLiteBuiltinMaxPool2d || code == kTfLiteBuiltinAveragePool2d) {
    const auto* p = static_cast<const TfLitePoolParams*>(node->builtin_data);
    return d.size() == 4 && spatial(p->padding, p->filter_height, p->filter_width,
                                    p->stride_height, p->stride_width, 1, 1, d[3]);
  }
  if (code == kTfLiteBuiltinAdd) {  // numpy broadcasting, aligned on the last axis
    const TfLiteTensor* b = input(1);
    if (b == nullptr) return false;
    const std::vector<int> e(b->dims->data, b->dims->data + b->dims->size);
    out->assign(std::max(d.size(), e.size()), 1);
    for (size_t i = 0; i < out->size(); ++i) {
      const int x = i < d.size() ? d[d.size() - 1 - i] : 1;
      const int y = i < e.size() ? e[e.size() - 1 - i] : 1;
      if (y <= 0 || (x != y && x != 1 && y != 1)) return false;
      (*out)[out->size() - 1 - i] = x == 1 ? y : x;
    }
    return true;
  }
  if (code == kTfLiteBuiltinMean) {  // CheckMean: over height and width only
    if (d.size() != 4 || !CheckMean(ctx, node).empty()) return false;
    if (static_cast<const TfLiteReducerParams*>(node->builtin_data)->keep_dims)
      *out = {d[0], 1, 1, d[3]};
    else
      *out = {d[0], d[3]};
    return true;
  }
  if (code == kTfLiteBuiltinFullyConnected) {
    const TfLiteTensor* w = input(1);
    const auto* p = static_cast<const TfLiteFullyConnectedParams*>(node->builtin_data);
    if (w == nullptr || w->dims->size != 2 || Dim(*w, 0) <= 0 || Dim(*w, 1) <= 0) return false;
    const int units = Dim(*w, 0), depth = Dim(*w, 1);
    if (p->keep_num_dims) {
      if (d.empty() || d.back() != depth) return false;
      *out = d;
      out->back() = units;
      return true;
    }
    int64_t total = 1;
    for (int v : d) {
      if (total > std::numeric_limits<int64_t>::max() / v) return false;  // a hostile file
      total *= v;
    }
    if (total % depth != 0 || total / depth > std::numeric_limits<int>::max()) return false;
    *out = {static_cast<int>(total / depth), units};
    return true;
  }
  return false;
}

}  // namespace

std::vector<int> SupportedIfShapesAgree(TfLiteContext* ctx,
                                        const std::vector<int>& execution_plan,
                                        const std::vector<int>& supported,
                                        std::map<int, std::string>* why_not) {
  std::string why;
  for (int n : execution_plan) {
    TfLiteNode* node = nullptr;
    TfLiteRegistration* reg = nullptr;
    if (ctx->GetNodeAndRegistration(ctx, n, &node, &reg) != kTfLiteOk || node == nullptr ||
        reg == nullptr || node->outputs == nullptr || node->outputs->size < 1)
      continue;
    std::vector<int> want;
    const int o = node->outputs->data[0];
    if (o < 0 || static_cast<size_t>(o) >= ctx->tensors_size || ctx->tensors[o].dims == nullptr ||
        !StockOutputShape(ctx, node, reg->builtin_code, &want))
      continue;
    const TfLiteIntArray* got = ctx->tensors[o].dims;
    if (std::equal(want.begin(), want.end(), got->data, got->data + got->size)) continue;
    why = "the file's declared shapes contradict themselves (node " + std::to_string(n) +
          " declares output shape " + DimsText(got->data, got->size) + " where its input and "
          "parameters give " + DimsText(want.data(), static_cast<int>(want.size())) +
          "): a damaged file is left to TFLite, which recomputes the shapes";
    break;
  }
  if (why.empty()) return supported;
  for (int n : supported) (*why_not)[n] = why;
  return {};
}

std::vector<int> ChooseClaims(TfLiteContext* ctx, const std::vector<int>& execution_plan,
                              const std::vector<int>& supported, const KernelSet* pattern_kernels,
                              JitIsa jit, std::map<int, std::string>* why_not) {
  std::unordered_map<int, int> producer;                // tensor -> node
  std::unordered_map<int, std::vector<int>> readers;    // tensor -> nodes
  std::unordered_map<int, std::pair<int, int>> io;      // node -> (input, output)
  for (int n : execution_plan) {
    TfLiteNode* node = nullptr;
    TfLiteRegistration* reg = nullptr;
    if (ctx->GetNodeAndRegistration(ctx, n, &node, &reg) != kTfLiteOk) continue;
    if (node->inputs != nullptr)
      for (int i = 0; i < node->inputs->size; ++i)
        if (node->inputs->data[i] >= 0) readers[node->inputs->data[i]].push_back(n);
    if (node->outputs != nullptr)
      for (int i = 0; i < node->outputs->size; ++i) producer[node->outputs->data[i]] = n;
  }
  // Descendants of every node (bit sets over execution order): a tensor
  // between two claimed nodes still changes layout when an unclaimed node
  // lies on a path between them, because the runtime then puts them in
  // different partitions (MobileNetV2: a block's projection conv, its
  // depthwise conv left to TFLite, and the ADD that reads both).
  // Graphs beyond kMaxTrackedNodes (8 MB of bit sets) are not tracked: every
  // such tensor then counts as an edge, the cautious answer.
  constexpr size_t kMaxTrackedNodes = 8192;
  const bool tracked = execution_plan.size() <= kMaxTrackedNodes;
  std::unordered_map<int, size_t> position;
  for (size_t i = 0; tracked && i < execution_plan.size(); ++i) position[execution_plan[i]] = i;
  const size_t words = (execution_plan.size() + 63) / 64;
  std::vector<std::vector<uint64_t>> below(tracked ? execution_plan.size() : 0,
                                           std::vector<uint64_t>(words, 0));
  for (size_t i = below.size(); i-- > 0;) {
    TfLiteNode* node = nullptr;
    TfLiteRegistration* reg = nullptr;
    if (ctx->GetNodeAndRegistration(ctx, execution_plan[i], &node, &reg) != kTfLiteOk ||
        node->outputs == nullptr)
      continue;
    for (int o = 0; o < node->outputs->size; ++o) {
      const auto r = readers.find(node->outputs->data[o]);
      if (r == readers.end()) continue;
      for (int n : r->second) {
        const auto pn = position.find(n);
        if (pn == position.end() || pn->second <= i) continue;
        below[i][pn->second / 64] |= uint64_t(1) << (pn->second % 64);
        for (size_t w = 0; w < words; ++w) below[i][w] |= below[pn->second][w];
      }
    }
  }
  std::map<int, ConvCost> convs;  // candidates, by node
  // Convs of generated code predicted to tie with XNNPACK where no
  // neighbour changes layout: not claimed alone, but part of the set judged
  // as a whole (below).  (The static kernels' ties are not: a residual
  // block's 1x1 convs on them, claimed for the layout changes they save,
  // ran 0.21 against 0.16 ms, AMD Zen 4.  Nor are 1x1 convs whose code is
  // not judged to pay in place: MobileNetV2's 7x7 stage ran 0.72 ms on the
  // engine against XNNPACK's 0.65 on AMD Zen 5, where 512-bit FMAs run at
  // full rate, docs/engine.md sections 26 and 29.)
  std::map<int, ConvCost> ties;
  std::map<int, std::pair<int, int>> depthwise;  // candidates: node -> (input, output)
  std::vector<std::pair<int, std::pair<int, int>>> adds;  // node, operands
  std::vector<std::pair<int, int>> means;  // node, input
  std::vector<std::pair<int, int>> fcs;    // FULLY_CONNECTED: node, input
  // Pools and PADs, in execution order: node, (input, whether a PAD).
  std::vector<std::pair<int, std::pair<int, bool>>> spatial;
  std::map<int, int> pad_input;  // PAD node -> its input tensor
  for (int n : supported) {
    TfLiteNode* node = nullptr;
    TfLiteRegistration* reg = nullptr;
    if (ctx->GetNodeAndRegistration(ctx, n, &node, &reg) != kTfLiteOk) continue;
    if (reg->builtin_code == kTfLiteBuiltinAdd) {
      adds.push_back({n, {node->inputs->data[0], node->inputs->data[1]}});
      continue;
    }
    if (reg->builtin_code == kTfLiteBuiltinMean) {
      means.push_back({n, node->inputs->data[0]});
      continue;
    }
    if (reg->builtin_code == kTfLiteBuiltinFullyConnected) {
      fcs.push_back({n, node->inputs->data[0]});
      continue;
    }
    if (reg->builtin_code == kTfLiteBuiltinMaxPool2d ||
        reg->builtin_code == kTfLiteBuiltinAveragePool2d ||
        reg->builtin_code == kTfLiteBuiltinPad) {
      const bool is_pad = reg->builtin_code == kTfLiteBuiltinPad;
      spatial.push_back({n, {node->inputs->data[0], is_pad}});
      if (is_pad) {
        pad_input[n] = node->inputs->data[0];
        io[n] = {node->inputs->data[0], node->outputs->data[0]};
      }
      continue;
    }
    if (reg->builtin_code == kTfLiteBuiltinDepthwiseConv2d) {
      const std::string why = AnalyzeDepthwise(ctx, node, pattern_kernels);
      if (!why.empty()) {
        (*why_not)[n] = why;
        continue;
      }
      depthwise[n] = {node->inputs->data[0], node->outputs->data[0]};
      continue;
    }
    if (reg->builtin_code != kTfLiteBuiltinConv2d) {
      (*why_not)[n] = "dense operator: TFLite's own kernel is faster (use claim=all to force)";
      continue;
    }
    ConvCost c;
    std::string why = AnalyzeConv(ctx, node, pattern_kernels, jit, &c);
    if (why.empty()) {  // optimistic first: no layout change at either edge
      const double speedup = Predicted(c, jit, false, false);
      if (speedup < Needed(c, false, false)) why = NotWorth(speedup);
      if (speedup < Needed(c, false, false) && speedup >= 1.0 && c.jit_runs &&
          jit != JitIsa::kNone && (!c.one_by_one || c.in_place_pays_inside)) {
        ties[n] = c;
        io[n] = {node->inputs->data[0], node->outputs->data[0]};
      }
    }
    if (!why.empty()) {
      (*why_not)[n] = why;
      continue;
    }
    convs[n] = c;
    io[n] = {node->inputs->data[0], node->outputs->data[0]};
  }
  // The ADDs, depthwise convs and MEANs a set of convs brings with it: an
  // ADD is claimed when an operand comes from a claimed conv or ADD (it
  // keeps a residual block planar), a depthwise conv when the conv that
  // writes its input and every conv that reads its output are
  // (AnalyzeDepthwise), a MEAN when its input comes from a claimed node (it
  // reads the planes as they are, so the partition's edge is its small
  // output), and a pool likewise (its output is a quarter of its input at
  // stride 2, and a claimed conv after it then reads planes: a VGG stage
  // or ResNet's stem stays in one partition).  A PAD (which only grows its
  // tensor) is claimed after a claimed node too, or when claimed convs read
  // it: the layout change then moves to its smaller input.
  std::set<int> claimed_adds, claimed_dw, claimed_means, claimed_spatial, claimed_fcs;
  const std::map<int, ConvCost>* set = &convs;
  const auto bring = [&]() {
    claimed_adds.clear();
    claimed_dw.clear();
    claimed_means.clear();
    claimed_fcs.clear();
    claimed_spatial.clear();
    for (const auto& a : adds)
      for (int t : {a.second.first, a.second.second}) {
        const auto p = producer.find(t);
        if (p != producer.end() && (set->count(p->second) || claimed_adds.count(p->second)))
          claimed_adds.insert(a.first);
      }
    // Its input read by it alone: another reader would keep that tensor
    // NHWC, and the depthwise conv would run the slower NHWC kernel.  (The
    // cost model does not charge for the depthwise conv itself: section 25
    // of docs/engine.md measured the blocks as a whole.)
    for (const auto& d : depthwise) {
      const auto p = producer.find(d.second.first);
      const std::vector<int>& r = readers[d.second.second];
      bool bridge = p != producer.end() && set->count(p->second) && !r.empty() &&
                    readers[d.second.first].size() == 1;
      for (int n : r) bridge = bridge && set->count(n) && !set->at(n).split;
      if (bridge) claimed_dw.insert(d.first);
    }
    const auto from_claimed = [&](int tensor) {
      const auto p = producer.find(tensor);
      return p != producer.end() && (set->count(p->second) || claimed_adds.count(p->second) ||
                                     claimed_dw.count(p->second) || claimed_spatial.count(p->second));
    };
    for (const auto& q : spatial) {  // in execution order: a pool after a claimed PAD
      bool take = from_claimed(q.second.first);
      if (!take && q.second.second) {
        const std::vector<int>& r = readers[io[q.first].second];
        take = !r.empty();
        for (int m : r) take = take && set->count(m);
      }
      if (take) claimed_spatial.insert(q.first);
    }
    for (const auto& m : means)
      if (from_claimed(m.second)) claimed_means.insert(m.first);
    // A classifier whose input has no spatial extent (a MEAN's output, a
    // pool's down to 1x1, another FC's) ends the partition after the node
    // that writes it, when that is claimed: there is no layout to change,
    // the graph's cores are not handed to XNNPACK's thread pool for it, and
    // its kernel skips the weights of zero inputs (PackFullyConnected:
    // VGG-16's ReLU-fed classifier).
    for (const auto& f : fcs) {
      const auto p = producer.find(f.second);
      const TfLiteIntArray* d = ctx->tensors[f.second].dims;
      const bool one_position = d != nullptr && (d->size == 2 || (d->size == 4 && d->data[1] == 1 &&
                                                                  d->data[2] == 1));
      if (p != producer.end() && one_position &&
          (from_claimed(f.second) || claimed_means.count(p->second) || claimed_fcs.count(p->second)))
        claimed_fcs.insert(f.first);
    }
  };
  const auto claimed = [&](int n) {
    return set->count(n) || claimed_adds.count(n) || claimed_dw.count(n) ||
           claimed_means.count(n) || claimed_spatial.count(n) || claimed_fcs.count(n);
  };
  // Whether an unclaimed node lies on a path from node a to node b.
  const auto cut = [&](int a, int b) {
    const auto pa = position.find(a), pb = position.find(b);
    if (pa == position.end() || pb == position.end()) return true;
    const size_t ib = pb->second;
    const std::vector<uint64_t>& from = below[pa->second];
    for (size_t u = pa->second + 1; u < ib; ++u)
      if ((from[u / 64] >> (u % 64) & 1) && !claimed(execution_plan[u]) &&
          (below[u][ib / 64] >> (ib % 64) & 1))
        return true;
    return false;
  };
  // Whether a conv pays next to the current claims (its layout changes
  // where a neighbour is not claimed); its predicted speed-up and the time
  // it saves.
  const auto pays = [&](int n, const ConvCost& c, double* speedup, double* saved) {
    auto p = producer.find(io[n].first);
    // A claimed PAD before it changes nothing: the layout changes at the
    // PAD's input if at all.
    if (p != producer.end() && pad_input.count(p->second) && claimed(p->second))
      p = producer.find(pad_input[p->second]);
    const bool in_edge =
        c.split || p == producer.end() || !claimed(p->second) || cut(p->second, n);
    const std::vector<int>& r = readers[io[n].second];
    bool out_edge = r.empty();  // a graph output
    for (int m : r) {
      const auto rc = set->find(m);
      out_edge = out_edge || !claimed(m) || (rc != set->end() && rc->second.split) || cut(n, m);
    }
    *speedup = Predicted(c, jit, in_edge, out_edge, saved);
    return *speedup >= Needed(c, in_edge, out_edge);
  };
  // Drop, one pass at a time, convs that do not pay for the layout changes
  // their unclaimed neighbours force, until none does.
  std::map<int, ConvCost> candidates = convs;
  candidates.insert(ties.begin(), ties.end());
  for (bool changed = true; changed;) {
    changed = false;
    bring();
    for (auto it = convs.begin(); it != convs.end();) {
      double speedup, saved;
      if (!pays(it->first, it->second, &speedup, &saved)) {
        (*why_not)[it->first] = NotWorth(speedup);
        it = convs.erase(it);
        changed = true;
      } else {
        ++it;
      }
    }
  }
  // That drops node by node a group that pays only together: MobileNetV2's
  // stem is slower than XNNPACK's alone, but with it claimed the block after
  // it keeps its tensors planar (docs/engine.md section 28).  So the whole
  // candidate set is judged too, by the time it saves in all, and taken
  // when that is more.  A conv short of its margin (Needed) counts no gain,
  // only its loss where it is predicted slower.
  const auto total_saved = [&](const std::map<int, ConvCost>& s) {
    set = &s;
    bring();
    double sum = 0;
    for (const auto& kv : s) {
      double speedup, saved;
      sum += pays(kv.first, kv.second, &speedup, &saved) ? saved : std::min(saved, 0.0);
    }
    return sum;
  };
  if (candidates.size() > convs.size() && total_saved(candidates) > total_saved(convs)) {
    for (const auto& kv : candidates) why_not->erase(kv.first);
    convs = candidates;
    // Then each conv of it that does not pay alone leaves it if the rest
    // then saves more (MobileNetV2: block 13's expansion, whose depthwise
    // conv and projection stay with TFLite).  Each try re-judges the set,
    // so large graphs keep the whole set as it is.
    constexpr size_t kMaxRefinedConvs = 256;
    for (bool changed = convs.size() <= kMaxRefinedConvs; changed;) {
      changed = false;
      const double now = total_saved(convs);
      for (const auto& kv : convs) {
        double speedup, saved;
        set = &convs;
        bring();
        if (pays(kv.first, kv.second, &speedup, &saved)) continue;
        std::map<int, ConvCost> rest = convs;
        rest.erase(kv.first);
        if (total_saved(rest) > now) {
          (*why_not)[kv.first] = NotWorth(speedup);
          convs = std::move(rest);
          changed = true;
          break;
        }
      }
    }
  }
  set = &convs;
  bring();
  // A connected group of claims with no pattern-pruned conv in it saves
  // nothing real: its dense convs tie with XNNPACK at best (short filters,
  // kJitDenseMaxDepthAvx512), and at 2 threads a partition between
  // XNNPACK's nodes costs a hand-over of the cores (unpruned VGG-16 CIFAR
  // with its first block claimed: 0.97x at 2 threads, AMD Zen 4).  Such
  // groups stay with TFLite.
  {
    std::map<int, int> parent;
    const std::function<int(int)> root = [&](int n) {
      while (parent[n] != n) n = parent[n] = parent[parent[n]];
      return n;
    };
    std::vector<int> members;
    for (int n : supported)
      if (claimed(n)) {
        parent[n] = n;
        members.push_back(n);
      }
    for (int n : members) {
      TfLiteNode* node = nullptr;
      TfLiteRegistration* reg = nullptr;
      if (ctx->GetNodeAndRegistration(ctx, n, &node, &reg) != kTfLiteOk) continue;
      for (int i = 0; i < node->inputs->size; ++i) {
        const auto p = producer.find(node->inputs->data[i]);
        if (p != producer.end() && parent.count(p->second)) parent[root(p->second)] = root(n);
      }
    }
    std::set<int> pruned_groups;
    for (const auto& kv : convs)
      if (kv.second.stats.Density() <= kPatternMaxDensity) pruned_groups.insert(root(kv.first));
    bool dropped = false;
    for (auto it = convs.begin(); it != convs.end();) {
      if (pruned_groups.count(root(it->first))) {
        ++it;
        continue;
      }
      (*why_not)[it->first] =
          "dense conv in a group with no pattern-pruned conv: TFLite's dense kernels are as fast";
      it = convs.erase(it);
      dropped = true;
    }
    if (dropped) bring();
  }
  std::vector<int> out;
  for (int n : supported)
    if (convs.count(n) || claimed_adds.count(n) || claimed_dw.count(n) ||
        claimed_means.count(n) || claimed_spatial.count(n) || claimed_fcs.count(n))
      out.push_back(n);
    else if (std::any_of(fcs.begin(), fcs.end(), [n](const std::pair<int, int>& f) { return f.first == n; }))
      (*why_not)[n] = "fully connected layer not after a claimed node's output of one position "
                      "(a MEAN, a pool to 1x1, a claimed FC): TFLite's own kernel is as fast on "
                      "dense inputs (use claim=all to force)";
    else if (depthwise.count(n))
      (*why_not)[n] = "not between claimed convs (its input from a claimed conv and read by it "
                      "alone, its output read only by claimed convs)";
    else if (!why_not->count(n)) (*why_not)[n] = "no claimed conv next to it";
  return out;
}

std::set<int> FcsAfterRelu(TfLiteContext* ctx, const std::vector<int>& execution_plan) {
  std::map<int, bool> writer;  // tensor -> whether a ReLU wrote it
  std::set<int> out;
  for (int n : execution_plan) {
    TfLiteNode* node = nullptr;
    TfLiteRegistration* reg = nullptr;
    if (ctx->GetNodeAndRegistration(ctx, n, &node, &reg) != kTfLiteOk || node->outputs->size < 1 ||
        node->inputs->size < 1)
      continue;
    TfLiteFusedActivation act = kTfLiteActNone;
    const void* p = node->builtin_data;
    switch (p == nullptr ? -1 : reg->builtin_code) {  // no parameters: no fused activation
      case kTfLiteBuiltinConv2d: act = static_cast<const TfLiteConvParams*>(p)->activation; break;
      case kTfLiteBuiltinDepthwiseConv2d:
        act = static_cast<const TfLiteDepthwiseConvParams*>(p)->activation;
        break;
      case kTfLiteBuiltinFullyConnected:
        act = static_cast<const TfLiteFullyConnectedParams*>(p)->activation;
        break;
      case kTfLiteBuiltinAdd: act = static_cast<const TfLiteAddParams*>(p)->activation; break;
      case kTfLiteBuiltinMaxPool2d: act = static_cast<const TfLitePoolParams*>(p)->activation; break;
      default: break;
    }
    switch (reg->builtin_code) {
      case kTfLiteBuiltinRelu: act = kTfLiteActRelu; break;
      case kTfLiteBuiltinRelu6: act = kTfLiteActRelu6; break;
      default: break;
    }
    const int input = node->inputs->data[0];
    bool relu = act == kTfLiteActRelu || act == kTfLiteActRelu6;
    if (reg->builtin_code == kTfLiteBuiltinMaxPool2d ||  // the max of ReLU outputs
        reg->builtin_code == kTfLiteBuiltinReshape) {    // a Flatten before a Dense
      const auto w = writer.find(input);
      relu = relu || (w != writer.end() && w->second);
    }
    if (reg->builtin_code == kTfLiteBuiltinFullyConnected) {
      const auto w = writer.find(input);
      if (w != writer.end() && w->second) out.insert(n);
    }
    writer[node->outputs->data[0]] = relu;
  }
  return out;
}

int64_t ExecutedMacs(const OpPlan& plan) {
  if (!plan.use_pattern) return DenseMacs(plan);
  const ConvShape& s = plan.shape;
  return static_cast<int64_t>(s.batch) * s.out_h * s.out_w * plan.pattern.MacsPerPixel();
}

int64_t DenseMacs(const OpPlan& plan) {
  if (plan.kind == OpKind::kAdd || plan.kind == OpKind::kMean || IsPool(plan.kind) ||
      plan.kind == OpKind::kPad)
    return 0;  // no multiply-accumulates
  if (plan.kind == OpKind::kFullyConnected)
    return static_cast<int64_t>(plan.fc_batch) * plan.in_c * plan.out_c;
  if (plan.phase_split) return plan.strided_shape.DenseMacs(false);
  return plan.shape.DenseMacs(plan.kind == OpKind::kDepthwiseConv2D);
}

}  // namespace cocopie
