// The GPU backend's operators: OpenCL C source generated per layer from the
// same pattern plan the CPU engine runs (cc/kernels/pattern_conv.h), built
// by the device's OpenCL compiler, run on NHWC device buffers.
//
// Pattern conv: a work-item computes kPositions consecutive outputs of one
// row for one filter; a work-group is one filter over many positions, so
// its work-items run the same loop counts and read the same weights
// (uniform work per work-group: what filter kernel reorder is for here).
// Each pattern's taps are unrolled with their offsets baked in, the
// kernel list per (filter, pattern) is read from FKW arrays; no branch
// depends on a weight.  Dense convs use the same generator with one
// pattern of all taps.
#ifndef COCOPIE_CC_GPU_GPU_OPS_H_
#define COCOPIE_CC_GPU_GPU_OPS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cc/gpu/runtime.h"
#include "cc/kernels/pattern_conv.h"
#include "cc/kernels/shapes.h"

namespace cocopie {
namespace gpu {

// A conv filter's non-zero columns in the layout the generated code reads.
struct ConvColumns {
  int out_c = 0, in_c = 0, k_h = 0, k_w = 0;
  std::vector<std::vector<int>> taps;  // per pattern: kept positions (ky * k_w + kx)
  std::vector<int32_t> reorder;        // filter slot -> output channel
  std::vector<int32_t> runs;           // [slot][P + 1]: kernel index where pattern p starts
  std::vector<int32_t> kernels;        // per kernel: input channel, weight offset
  std::vector<float> weights;
  bool pruned = false;  // from a pattern plan (false: every weight of a dense filter)
};
// The plan's arrays are checked before they are read: a damaged plan gives
// an error message, never an out-of-bounds read.
std::string ColumnsFromPlan(const PatternPlan& plan, ConvColumns* columns);
ConvColumns DenseColumns(const float* filter_ohwi, int out_c, int k_h, int k_w, int in_c);
// Empty if `c` can only produce in-bounds reads for its filter shape, else why not.
std::string ValidateColumns(const ConvColumns& c);

// The OpenCL C of a conv (kernels "pack" and "conv") for one resolved
// geometry; `dense_fallback`: the conv kernel also takes the dense filter
// and uses it for images holding Inf or NaN, as stock TFLite computes them.
// `fp16`: the kept weights are read as half (vload_half: storage only, the
// arithmetic stays float32; no cl_khr_fp16 needed).
std::string ConvSource(const ConvShape& s, const ConvColumns& c, bool dense_fallback,
                       bool fp16 = false);

// How the ops are built: program cache directory ("" none), work-items per
// work-group of the conv kernels (0: chosen from the device), and weights
// stored as IEEE half (precision=fp16: each weight rounded to the nearest
// half, relative error <= 2^-11, so |y - y_fp32| <= 2^-11 * sum |w x| per
// output; weights beyond the half range are refused).
struct OpOptions {
  std::string cache_dir;
  int work_group = 0;
  bool fp16 = false;
};

// Round-to-nearest-even float -> IEEE half bits.
uint16_t FloatToHalf(float f);

class Op {
 public:
  virtual ~Op() = default;
  // Reads `in` (and for ADD `in2`; otherwise null) and writes `out`, NHWC
  // float32 device buffers of the op's shapes.  With profiling, adds the
  // device time to *ms.
  virtual bool Enqueue(Runtime& rt, const Buffer& in, const Buffer* in2, const Buffer& out,
                       double* ms, std::string* error) = 0;
  const BuildInfo& build() const { return build_; }
  const std::string& kernel_name() const { return kernel_name_; }
  int64_t device_bytes() const { return device_bytes_; }

 protected:
  BuildInfo build_;
  std::string kernel_name_;
  int64_t device_bytes_ = 0;  // weights and scratch held on the device
};

// `plan` null: a dense conv (any kernel size).
std::unique_ptr<Op> MakeConv(Runtime& rt, const ConvShape& s, const PatternPlan* plan,
                             const float* filter_ohwi, const float* bias, const OpOptions& o,
                             std::string* error);
std::unique_ptr<Op> MakeDepthwise(Runtime& rt, const ConvShape& s, const float* filter_1hwc,
                                  const float* bias, const OpOptions& o, std::string* error);
// Pooling over `s` (k_h x k_w window, strides, padding; in_c == out_c):
// max, or average over the window's in-bounds elements (as TFLite counts).
std::unique_ptr<Op> MakePool(Runtime& rt, const ConvShape& s, bool max, const OpOptions& o,
                             std::string* error);
// out = act(a + b) over `elements` floats.
std::unique_ptr<Op> MakeAdd(Runtime& rt, int64_t elements, float act_min, float act_max,
                            const OpOptions& o, std::string* error);
std::unique_ptr<Op> MakeFullyConnected(Runtime& rt, int batch, int in, int out,
                                       const float* weights, const float* bias, float act_min,
                                       float act_max, const OpOptions& o, std::string* error);

}  // namespace gpu
}  // namespace cocopie

#endif  // COCOPIE_CC_GPU_GPU_OPS_H_
