// Geometry of the convolution-like operators, independent of any runtime.
// Layouts follow TFLite so the delegate never copies activations:
//   activations NHWC; conv filter OHWI; depthwise filter 1HW(C*M);
//   fully-connected weights [out][in].
#ifndef COCOPIE_CC_KERNELS_SHAPES_H_
#define COCOPIE_CC_KERNELS_SHAPES_H_

#include <cstdint>
#include <limits>
#include <string>

namespace cocopie {

enum class Padding { kSame, kValid };

struct ConvShape {
  int batch = 1;
  int in_h = 0, in_w = 0, in_c = 0;
  int out_h = 0, out_w = 0, out_c = 0;
  int k_h = 0, k_w = 0;
  int stride_h = 1, stride_w = 1;
  int dil_h = 1, dil_w = 1;
  int pad_top = 0, pad_left = 0;
  int depth_multiplier = 1;  // depthwise only: out_c == in_c * depth_multiplier
  float act_min = -std::numeric_limits<float>::infinity();
  float act_max = std::numeric_limits<float>::infinity();

  // Multiply-accumulates of the dense operator (conv: per output, k_h*k_w*in_c;
  // depthwise: k_h*k_w).
  int64_t DenseMacs(bool depthwise) const {
    const int64_t per_out =
        static_cast<int64_t>(k_h) * k_w * (depthwise ? 1 : in_c);
    return static_cast<int64_t>(batch) * out_h * out_w * out_c * per_out;
  }
};

// The largest span of a dilated kernel ((k - 1) * dilation) the CPU kernels
// take: their padded input planes grow with it (a damaged file's dilation of
// 1.9e9 asked for a plane beyond any allocation).  Real models stay far
// below (DeepLab's largest atrous rate, 24, spans 48 on a 3x3 kernel).
constexpr int64_t kMaxKernelSpan = int64_t(1) << 12;

// Output size and leading padding along one axis, computed as TFLite does.
// Returns false (and leaves outputs untouched) if the geometry is invalid.
bool ComputeAxis(int in, int k, int stride, int dilation, Padding padding,
                 int* out, int* pad_before);

// Fills out_h/out_w/pad_top/pad_left from the other fields. Returns an empty
// string on success, otherwise a message naming the problem.
std::string ResolveConvShape(Padding padding, ConvShape* shape);

}  // namespace cocopie

#endif  // COCOPIE_CC_KERNELS_SHAPES_H_
