#include "cc/kernels/shapes.h"

#include <algorithm>

namespace cocopie {

bool ComputeAxis(int in, int k, int stride, int dilation, Padding padding,
                 int* out, int* pad_before) {
  if (in <= 0 || k <= 0 || stride <= 0 || dilation <= 0) return false;
  const int64_t eff_k = static_cast<int64_t>(k - 1) * dilation + 1;
  int64_t o;
  if (padding == Padding::kSame) {
    o = (static_cast<int64_t>(in) + stride - 1) / stride;
  } else {
    if (eff_k > in) return false;
    o = (in - eff_k) / stride + 1;
  }
  const int64_t total = std::max<int64_t>(0, (o - 1) * stride + eff_k - in);
  *out = static_cast<int>(o);
  *pad_before = padding == Padding::kSame ? static_cast<int>(total / 2) : 0;
  return true;
}

std::string ResolveConvShape(Padding padding, ConvShape* s) {
  if (s->batch <= 0 || s->in_c <= 0 || s->out_c <= 0)
    return "batch and channel counts must be positive";
  if (!ComputeAxis(s->in_h, s->k_h, s->stride_h, s->dil_h, padding, &s->out_h,
                   &s->pad_top))
    return "invalid height geometry (input, kernel, stride or dilation)";
  if (!ComputeAxis(s->in_w, s->k_w, s->stride_w, s->dil_w, padding, &s->out_w,
                   &s->pad_left))
    return "invalid width geometry (input, kernel, stride or dilation)";
  return "";
}

}  // namespace cocopie
