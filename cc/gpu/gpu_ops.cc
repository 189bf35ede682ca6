#include "cc/gpu/gpu_ops.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

namespace cocopie {
namespace gpu {
namespace {

constexpr int kPositions = 4;        // outputs per work-item along a row
constexpr int kDefaultWorkGroup = 64;
constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();  // kernels index in int

std::string Float(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9ef", static_cast<double>(v));
  return buf;
}

// The fused activation as stock TFLite applies it (std::max then std::min,
// so NaN passes through), on variable `v`.
std::string Activation(float lo, float hi) {
  std::string s;
  if (!std::isinf(lo)) s += "  v = v < " + Float(lo) + " ? " + Float(lo) + " : v;\n";
  if (!std::isinf(hi)) s += "  v = " + Float(hi) + " < v ? " + Float(hi) + " : v;\n";
  return s;
}

void Define(std::string* s, const char* name, int64_t v) {
  *s += "#define " + std::string(name) + " " + std::to_string(v) + "\n";
}

// Where the padded CHW input of a conv lives: rows and columns every
// work-item may read (rounded-up position blocks included).
struct PaddedGeometry {
  int px = 1, xb = 1, wp = 1, hp = 1;
  int64_t npos = 0, plane = 0;
};

PaddedGeometry Padded(const ConvShape& s) {
  PaddedGeometry g;
  g.px = s.out_w < kPositions ? s.out_w : kPositions;
  g.xb = (s.out_w + g.px - 1) / g.px;
  g.wp = (g.xb * g.px - 1) * s.stride_w + (s.k_w - 1) * s.dil_w + 1;
  g.hp = (s.out_h - 1) * s.stride_h + (s.k_h - 1) * s.dil_h + 1;
  g.npos = static_cast<int64_t>(s.out_h) * g.xb;
  g.plane = static_cast<int64_t>(g.hp) * g.wp;
  return g;
}

std::string CheckSizes(const ConvShape& s, const PaddedGeometry& g) {
  if (s.batch <= 0 || s.out_h <= 0 || s.out_w <= 0 || s.in_c <= 0 || s.out_c <= 0)
    return "empty shape";
  const int64_t in = int64_t(s.batch) * s.in_c * g.plane;
  const int64_t out = int64_t(s.batch) * s.out_h * s.out_w * s.out_c;
  const int64_t src = int64_t(s.batch) * s.in_h * s.in_w * s.in_c;
  if (in > kMaxIndex || out > kMaxIndex || src > kMaxIndex)
    return "tensor larger than 2^31 elements (the generated code indexes with int)";
  return "";
}

size_t RoundUp(size_t n, size_t m) { return (n + m - 1) / m * m; }

// A built program's kernels and the buffers they read.
class ProgramOp : public Op {
 public:
  bool Setup(Runtime& rt, const std::string& source, const std::vector<std::string>& names,
             const std::string& cache_dir, const std::string& kernel_name, std::string* error) {
    kernel_name_ = kernel_name;
    return rt.Build(source, cache_dir, names, &kernels_, &build_, error);
  }
  const std::vector<Kernel>& kernels_ref() const { return kernels_; }
  bool AddBuffer(Runtime& rt, size_t bytes, const void* host, std::string* error) {
    buffers_.emplace_back();
    device_bytes_ += static_cast<int64_t>(bytes);
    return rt.Alloc(bytes, host, &buffers_.back(), error);
  }

 protected:
  std::vector<Kernel> kernels_;
  std::vector<Buffer> buffers_;
};

class ConvOp : public ProgramOp {
 public:
  ConvShape s;
  PaddedGeometry g;
  bool fallback = false;
  size_t local = 1;
  // buffers_: padded input, flag, runs, kernels, weights, reorder, bias[, dense filter]
  bool Enqueue(Runtime& rt, const Buffer& in, const Buffer*, const Buffer& out, double* ms,
               std::string* error) override {
    const int zero = 0;
    if (fallback && !rt.Upload(buffers_[1], &zero, sizeof zero, error)) return false;
    const size_t pack_global[3] = {size_t(g.wp), size_t(g.hp), size_t(s.batch) * s.in_c};
    if (!rt.EnqueueKernel(kernels_[0], {Arg::Of(in), Arg::Of(buffers_[0]), Arg::Of(buffers_[1])},
                          3, pack_global, nullptr, ms, error))
      return false;
    std::vector<Arg> args = {Arg::Of(buffers_[0]), Arg::Of(out),        Arg::Of(buffers_[2]),
                             Arg::Of(buffers_[3]), Arg::Of(buffers_[4]), Arg::Of(buffers_[5]),
                             Arg::Of(buffers_[6])};
    if (fallback) {
      args.push_back(Arg::Of(buffers_[1]));
      args.push_back(Arg::Of(buffers_[7]));
    }
    const size_t global[3] = {RoundUp(size_t(g.npos), local), size_t(s.out_c), size_t(s.batch)};
    const size_t local3[3] = {local, 1, 1};
    return rt.EnqueueKernel(kernels_[1], args, 3, global, local3, ms, error);
  }
};

// One kernel over (in[, in2], out[, buffers...]).
class SimpleOp : public ProgramOp {
 public:
  size_t global[3] = {1, 1, 1}, local[3] = {1, 1, 1};
  bool binary = false;
  bool Enqueue(Runtime& rt, const Buffer& in, const Buffer* in2, const Buffer& out, double* ms,
               std::string* error) override {
    std::vector<Arg> args = {Arg::Of(in)};
    if (binary) {
      if (in2 == nullptr) {
        *error = "binary op without its second input";
        return false;
      }
      args.push_back(Arg::Of(*in2));
    }
    args.push_back(Arg::Of(out));
    for (const Buffer& b : buffers_) args.push_back(Arg::Of(b));
    return rt.EnqueueKernel(kernels_[0], args, 3, global, local, ms, error);
  }
};

template <typename T>
size_t Bytes(const std::vector<T>& v) {
  return v.size() * sizeof(T);
}

// precision=fp16: weights as half, or an error naming the first one the
// half range cannot hold.
bool ToHalf(const std::vector<float>& w, std::vector<uint16_t>* half, std::string* error) {
  half->resize(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    if (!(std::fabs(w[i]) <= 65504.f)) {
      *error = "precision=fp16: weight " + std::to_string(i) + " (" + std::to_string(w[i]) +
               ") is outside the half range (|w| <= 65504)";
      return false;
    }
    (*half)[i] = FloatToHalf(w[i]);
  }
  return true;
}

// Element `index` (an OpenCL expression) of weight buffer `w`.
std::string Weight(bool fp16, const std::string& index) {
  return fp16 ? "vload_half(" + index + ", w)" : "w[" + index + "]";
}

bool AddWeights(Runtime& rt, SimpleOp* op, const float* w, size_t n, bool fp16,
                std::string* error) {
  if (!fp16) return op->AddBuffer(rt, n * 4, w, error);
  std::vector<uint16_t> half;
  return ToHalf(std::vector<float>(w, w + n), &half, error) &&
         op->AddBuffer(rt, Bytes(half), half.data(), error);
}

}  // namespace

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, e = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (e == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));
  const int exp = int(e) - 127 + 15;
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow: Inf
  if (exp <= 0) {                                                // half subnormal or zero
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const int shift = 14 - exp;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = sign | (uint32_t(exp) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rounds into the exponent
  return static_cast<uint16_t>(h);
}

std::string ColumnsFromPlan(const PatternPlan& p, ConvColumns* out) {
  ConvColumns c;
  c.out_c = p.out_c; c.in_c = p.in_c; c.k_h = p.k_h; c.k_w = p.k_w;
  c.pruned = true;
  c.taps = p.pattern_taps;
  c.reorder = p.reorder;
  const int P = p.num_patterns();
  if (p.out_c <= 0 || P <= 0 || p.pattern_taps.size() != size_t(P) ||
      p.offset.size() != size_t(p.out_c) + 1 || p.stride.size() != size_t(p.out_c) * (P + 1) ||
      p.offset[0] != 0 || p.index.size() != size_t(p.offset.back()))
    return "plan arrays have inconsistent sizes";
  int64_t w = 0;
  for (int f = 0; f < p.out_c; ++f) {
    const int32_t base = p.offset[f], count = p.offset[f + 1] - p.offset[f];
    if (base < 0 || count < 0) return "plan filter offsets out of range";
    const int32_t* runs = p.stride.data() + size_t(f) * (P + 1);
    for (int q = 0; q <= P; ++q) {
      if (runs[q] < 0 || runs[q] > count || (q > 0 && runs[q] < runs[q - 1]))
        return "plan pattern runs out of range";
      c.runs.push_back(base + runs[q]);
    }
    for (int q = 0; q < P; ++q)
      for (int32_t k = runs[q]; k < runs[q + 1]; ++k) {
        c.kernels.push_back(p.index[size_t(base) + k]);
        c.kernels.push_back(static_cast<int32_t>(w));
        w += static_cast<int64_t>(p.pattern_taps[q].size());
        if (w > kMaxIndex) return "plan has too many weights";
      }
  }
  c.weights = p.fkw_weights;
  *out = std::move(c);
  return "";  // ValidateColumns checks channels, taps and weight ranges
}

ConvColumns DenseColumns(const float* f, int out_c, int k_h, int k_w, int in_c) {
  ConvColumns c;
  c.out_c = out_c; c.in_c = in_c; c.k_h = k_h; c.k_w = k_w;
  c.taps.emplace_back();
  for (int t = 0; t < k_h * k_w; ++t) c.taps[0].push_back(t);
  const int taps = k_h * k_w;
  for (int o = 0; o < out_c; ++o) {
    c.reorder.push_back(o);
    c.runs.push_back(o * in_c);
    c.runs.push_back((o + 1) * in_c);
    for (int i = 0; i < in_c; ++i) {
      c.kernels.push_back(i);
      c.kernels.push_back(static_cast<int32_t>(c.weights.size()));
      for (int t = 0; t < taps; ++t) c.weights.push_back(f[(size_t(o) * taps + t) * in_c + i]);
    }
  }
  return c;
}

std::string ValidateColumns(const ConvColumns& c) {
  if (c.out_c <= 0 || c.in_c <= 0 || c.k_h <= 0 || c.k_w <= 0) return "empty filter";
  const int P = static_cast<int>(c.taps.size());
  if (P <= 0) return "no patterns";
  for (const auto& t : c.taps) {
    if (t.empty()) return "empty pattern";
    for (int x : t)
      if (x < 0 || x >= c.k_h * c.k_w) return "pattern tap outside the kernel";
  }
  if (c.reorder.size() != size_t(c.out_c)) return "filter order size mismatch";
  std::vector<bool> seen(c.out_c, false);
  for (int o : c.reorder) {
    if (o < 0 || o >= c.out_c || seen[o]) return "filter order is not a permutation";
    seen[o] = true;
  }
  if (c.runs.size() != size_t(c.out_c) * (P + 1)) return "run table size mismatch";
  const int64_t nk = static_cast<int64_t>(c.kernels.size() / 2);
  if (c.kernels.size() % 2 != 0 || nk > kMaxIndex) return "kernel table size mismatch";
  for (int f = 0; f < c.out_c; ++f)
    for (int q = 0; q < P; ++q) {
      const int64_t a = c.runs[size_t(f) * (P + 1) + q], b = c.runs[size_t(f) * (P + 1) + q + 1];
      if (a < 0 || b < a || b > nk) return "kernel run out of range";
      for (int64_t k = a; k < b; ++k) {
        const int64_t ch = c.kernels[2 * k], w = c.kernels[2 * k + 1];
        if (ch < 0 || ch >= c.in_c) return "kernel input channel out of range";
        if (w < 0 || w + int64_t(c.taps[q].size()) > int64_t(c.weights.size()))
          return "kernel weights out of range";
      }
    }
  return "";
}

std::string ConvSource(const ConvShape& s, const ConvColumns& c, bool dense_fallback, bool fp16) {
  const PaddedGeometry g = Padded(s);
  const int P = static_cast<int>(c.taps.size());
  std::string src = "// cocopie_tf generated conv: " + std::to_string(s.out_c) + "x" +
                    std::to_string(s.k_h) + "x" + std::to_string(s.k_w) + "x" +
                    std::to_string(s.in_c) + (c.pruned ? ", " + std::to_string(P) + " patterns"
                                                       : ", dense") + "\n";
  Define(&src, "IN_H", s.in_h); Define(&src, "IN_W", s.in_w); Define(&src, "IN_C", s.in_c);
  Define(&src, "OUT_H", s.out_h); Define(&src, "OUT_W", s.out_w); Define(&src, "OUT_C", s.out_c);
  Define(&src, "PAD_T", s.pad_top); Define(&src, "PAD_L", s.pad_left);
  Define(&src, "HP", g.hp); Define(&src, "WP", g.wp); Define(&src, "PLANE", g.plane);
  Define(&src, "XB", g.xb); Define(&src, "NPOS", g.npos);
  Define(&src, "SH", s.stride_h); Define(&src, "SW", s.stride_w);
  src +=
      "__kernel void pack(__global const float* restrict src, __global float* restrict dst,\n"
      "                   __global int* restrict flag) {\n"
      "  const int x = get_global_id(0), y = get_global_id(1), nc = get_global_id(2);\n"
      "  const int n = nc / IN_C, c = nc - n * IN_C, iy = y - PAD_T, ix = x - PAD_L;\n"
      "  float v = 0.0f;\n"
      "  if (iy >= 0 && iy < IN_H && ix >= 0 && ix < IN_W) {\n"
      "    v = src[((n * IN_H + iy) * IN_W + ix) * IN_C + c];\n";
  if (dense_fallback) src += "    if (!isfinite(v)) flag[0] = 1;\n";
  src +=
      "  }\n"
      "  dst[(nc * HP + y) * WP + x] = v;\n"
      "}\n\n"
      "__kernel void conv(__global const float* restrict in, __global float* restrict out,\n"
      "                   __global const int* restrict runs, __global const int2* restrict kern,\n"
      "                   __global const " + std::string(fp16 ? "half" : "float") +
      "* restrict w, __global const int* restrict reorder,\n"
      "                   __global const float* restrict bias";
  if (dense_fallback)
    src += ",\n                   __global const int* restrict flag, "
           "__global const float* restrict dense";
  src +=
      ") {\n"
      "  const int pos = get_global_id(0);\n"
      "  if (pos >= NPOS) return;\n"
      "  const int f = get_global_id(1), n = get_global_id(2);\n"
      "  const int oy = pos / XB, ox0 = (pos - oy * XB) * " + std::to_string(g.px) + ";\n"
      "  const __global float* base = in + n * (IN_C * PLANE) + oy * SH * WP + ox0 * SW;\n"
      "  const int o = reorder[f];\n";
  for (int x = 0; x < g.px; ++x) src += "  float a" + std::to_string(x) + " = 0.0f;\n";
  std::string body;
  const std::string runs = "runs + f * " + std::to_string(P + 1);
  body += "  const __global int* r = " + runs + ";\n";
  for (int q = 0; q < P; ++q) {
    body += "  for (int k = r[" + std::to_string(q) + "]; k < r[" + std::to_string(q + 1) +
            "]; ++k) {\n"
            "    const int2 kk = kern[k];\n"
            "    const __global float* s = base + kk.x * PLANE;\n"
            "    const __global " + std::string(fp16 ? "half" : "float") + "* wk = w + kk.y;\n";
    for (size_t t = 0; t < c.taps[q].size(); ++t) {
      const int tap = c.taps[q][t], ky = tap / c.k_w, kx = tap % c.k_w;
      const int64_t off = int64_t(ky) * s.dil_h * g.wp + int64_t(kx) * s.dil_w;
      body += fp16 ? "    { const float wt = vload_half(" + std::to_string(t) + ", wk);"
                   : "    { const float wt = wk[" + std::to_string(t) + "];";
      for (int x = 0; x < g.px; ++x)
        body += " a" + std::to_string(x) + " = fma(wt, s[" +
                std::to_string(off + int64_t(x) * s.stride_w) + "], a" + std::to_string(x) + ");";
      body += " }\n";
    }
    body += "  }\n";
  }
  if (dense_fallback) {
    src += "  if (flag[0] == 0) {\n" + body +
           "  } else {\n"
           "    // Inf/NaN in the image: every weight of the dense filter, zeros\n"
           "    // included, as stock TFLite multiplies them.\n"
           "    for (int ky = 0; ky < " + std::to_string(s.k_h) + "; ++ky)\n"
           "      for (int kx = 0; kx < " + std::to_string(s.k_w) + "; ++kx)\n"
           "        for (int c = 0; c < IN_C; ++c) {\n"
           "          const float wt = dense[((o * " + std::to_string(s.k_h) + " + ky) * " +
           std::to_string(s.k_w) + " + kx) * IN_C + c];\n"
           "          const __global float* s = base + c * PLANE + ky * " +
           std::to_string(s.dil_h) + " * WP + kx * " + std::to_string(s.dil_w) + ";\n";
    for (int x = 0; x < g.px; ++x)
      src += "          a" + std::to_string(x) + " = fma(wt, s[" + std::to_string(x) +
             " * SW], a" + std::to_string(x) + ");\n";
    src += "        }\n  }\n";
  } else {
    src += body;
  }
  src += "  const float b = bias[o];\n"
         "  __global float* dst = out + ((n * OUT_H + oy) * OUT_W + ox0) * OUT_C + o;\n";
  for (int x = 0; x < g.px; ++x) {
    const std::string xs = std::to_string(x);
    src += "  if (ox0 + " + xs + " < OUT_W) {\n    float v = a" + xs + " + b;\n" +
           Activation(s.act_min, s.act_max) + "    dst[" + xs + " * OUT_C] = v;\n  }\n";
  }
  src += "}\n";
  return src;
}

std::unique_ptr<Op> MakeConv(Runtime& rt, const ConvShape& s, const PatternPlan* plan,
                             const float* filter, const float* bias, const OpOptions& o,
                             std::string* error) {
  const std::string& cache_dir = o.cache_dir;
  const int work_group = o.work_group;
  auto op = std::make_unique<ConvOp>();
  op->s = s;
  op->g = Padded(s);
  if (std::string why = CheckSizes(s, op->g); !why.empty()) {
    *error = "conv: " + why;
    return nullptr;
  }
  ConvColumns c;
  if (plan == nullptr) {
    c = DenseColumns(filter, s.out_c, s.k_h, s.k_w, s.in_c);
  } else if (std::string why = ColumnsFromPlan(*plan, &c); !why.empty()) {
    *error = "conv: invalid plan: " + why;
    return nullptr;
  }
  if (c.out_c != s.out_c || c.in_c != s.in_c || c.k_h != s.k_h || c.k_w != s.k_w) {
    *error = "conv: plan does not match the layer's shape";
    return nullptr;
  }
  if (std::string why = ValidateColumns(c); !why.empty()) {
    *error = "conv: invalid plan: " + why;
    return nullptr;
  }
  op->fallback = c.pruned;
  std::vector<uint16_t> half;
  if (o.fp16 && !ToHalf(c.weights, &half, error)) return nullptr;
  const std::string source = ConvSource(s, c, op->fallback, o.fp16);
  if (!op->Setup(rt, source, {"pack", "conv"}, cache_dir,
                 c.pruned ? "f32_conv2d_pattern__opencl" : "f32_conv2d_direct__opencl", error))
    return nullptr;
  size_t limit = rt.KernelWorkGroupLimit(op->kernels_ref()[1]);
  size_t local = work_group > 0 ? size_t(work_group) : size_t(kDefaultWorkGroup);
  if (local > limit) local = limit;
  if (local > size_t(op->g.npos)) local = size_t(op->g.npos);
  op->local = local < 1 ? 1 : local;
  std::vector<float> zero_bias(s.out_c, 0.f);
  const int zero = 0;
  if (!op->AddBuffer(rt, size_t(s.batch) * s.in_c * op->g.plane * 4, nullptr, error) ||
      !op->AddBuffer(rt, sizeof zero, &zero, error) ||
      !op->AddBuffer(rt, Bytes(c.runs), c.runs.data(), error) ||
      !op->AddBuffer(rt, Bytes(c.kernels), c.kernels.data(), error) ||
      (o.fp16 ? !op->AddBuffer(rt, Bytes(half), half.data(), error)
              : !op->AddBuffer(rt, Bytes(c.weights), c.weights.data(), error)) ||
      !op->AddBuffer(rt, Bytes(c.reorder), c.reorder.data(), error) ||
      !op->AddBuffer(rt, size_t(s.out_c) * 4, bias != nullptr ? bias : zero_bias.data(), error))
    return nullptr;
  if (op->fallback &&
      !op->AddBuffer(rt, size_t(s.out_c) * s.k_h * s.k_w * s.in_c * 4, filter, error))
    return nullptr;
  return op;
}

std::unique_ptr<Op> MakeDepthwise(Runtime& rt, const ConvShape& s, const float* filter,
                                  const float* bias, const OpOptions& o, std::string* error) {
  const std::string& cache_dir = o.cache_dir;
  auto op = std::make_unique<SimpleOp>();
  if (s.batch <= 0 || s.out_h <= 0 || s.out_w <= 0 || s.out_c <= 0 ||
      s.out_c != s.in_c * s.depth_multiplier) {
    *error = "depthwise conv: invalid shape";
    return nullptr;
  }
  const int64_t out = int64_t(s.batch) * s.out_h * s.out_w * s.out_c;
  const int64_t in = int64_t(s.batch) * s.in_h * s.in_w * s.in_c;
  if (out > kMaxIndex || in > kMaxIndex) {
    *error = "depthwise conv: tensor larger than 2^31 elements";
    return nullptr;
  }
  std::string src = "// cocopie_tf generated depthwise conv\n";
  Define(&src, "IN_H", s.in_h); Define(&src, "IN_W", s.in_w); Define(&src, "IN_C", s.in_c);
  Define(&src, "OUT_H", s.out_h); Define(&src, "OUT_W", s.out_w); Define(&src, "OUT_C", s.out_c);
  Define(&src, "DM", s.depth_multiplier);
  src += "__kernel void dw(__global const float* restrict in, __global float* restrict out,\n"
         "                 __global const " + std::string(o.fp16 ? "half" : "float") +
         "* restrict w, __global const float* restrict bias) {\n"
         "  const int c = get_global_id(0), pos = get_global_id(1), n = get_global_id(2);\n"
         "  if (c >= OUT_C) return;\n"
         "  const int oy = pos / OUT_W, ox = pos - oy * OUT_W, ic = c / DM;\n"
         "  float a = 0.0f;\n";
  for (int ky = 0; ky < s.k_h; ++ky) {
    src += "  { const int iy = oy * " + std::to_string(s.stride_h) + " - " +
           std::to_string(s.pad_top) + " + " + std::to_string(ky * s.dil_h) + ";\n"
           "    if (iy >= 0 && iy < IN_H) {\n";
    for (int kx = 0; kx < s.k_w; ++kx)
      src += "      { const int ix = ox * " + std::to_string(s.stride_w) + " - " +
             std::to_string(s.pad_left) + " + " + std::to_string(kx * s.dil_w) +
             "; if (ix >= 0 && ix < IN_W) a = fma(" + Weight(o.fp16, std::to_string(ky * s.k_w + kx) +
             " * OUT_C + c") + ", in[((n * IN_H + iy) * IN_W + ix) * IN_C + ic], a); }\n";
    src += "    }\n  }\n";
  }
  src += "  float v = a + bias[c];\n" + Activation(s.act_min, s.act_max) +
         "  out[((n * OUT_H + oy) * OUT_W + ox) * OUT_C + c] = v;\n}\n";
  if (!op->Setup(rt, src, {"dw"}, cache_dir, "f32_dwconv2d_direct__opencl", error)) return nullptr;
  std::vector<float> zero_bias(s.out_c, 0.f);
  if (!AddWeights(rt, op.get(), filter, size_t(s.k_h) * s.k_w * s.out_c, o.fp16, error) ||
      !op->AddBuffer(rt, size_t(s.out_c) * 4, bias != nullptr ? bias : zero_bias.data(), error))
    return nullptr;
  op->local[0] = s.out_c < 32 ? size_t(s.out_c) : 32;
  op->global[0] = RoundUp(size_t(s.out_c), op->local[0]);
  op->global[1] = size_t(s.out_h) * s.out_w;
  op->global[2] = size_t(s.batch);
  return op;
}

std::unique_ptr<Op> MakeFullyConnected(Runtime& rt, int batch, int in, int out,
                                       const float* weights, const float* bias, float act_min,
                                       float act_max, const OpOptions& o, std::string* error) {
  const std::string& cache_dir = o.cache_dir;
  auto op = std::make_unique<SimpleOp>();
  if (batch <= 0 || in <= 0 || out <= 0 || int64_t(batch) * in > kMaxIndex ||
      int64_t(out) * in > kMaxIndex || int64_t(batch) * out > kMaxIndex) {
    *error = "fully connected: invalid or too large shape";
    return nullptr;
  }
  std::string src = "// cocopie_tf generated fully connected\n";
  Define(&src, "IN", in);
  Define(&src, "OUT", out);
  src += "__kernel void fc(__global const float* restrict in, __global float* restrict out,\n"
         "                 __global const " + std::string(o.fp16 ? "half" : "float") +
         "* restrict w, __global const float* restrict bias) {\n"
         "  const int o = get_global_id(0), b = get_global_id(1);\n"
         "  if (o >= OUT) return;\n"
         "  const __global float* x = in + b * IN;\n"
         "  const int wr = o * IN;\n"
         "  float a = 0.0f;\n"
         "  for (int i = 0; i < IN; ++i) a = fma(" + Weight(o.fp16, "wr + i") + ", x[i], a);\n"
         "  float v = a + bias[o];\n" + Activation(act_min, act_max) +
         "  out[b * OUT + o] = v;\n}\n";
  if (!op->Setup(rt, src, {"fc"}, cache_dir, "f32_fc_direct__opencl", error)) return nullptr;
  std::vector<float> zero_bias(out, 0.f);
  if (!AddWeights(rt, op.get(), weights, size_t(out) * in, o.fp16, error) ||
      !op->AddBuffer(rt, size_t(out) * 4, bias != nullptr ? bias : zero_bias.data(), error))
    return nullptr;
  op->local[0] = out < 32 ? size_t(out) : 32;
  op->global[0] = RoundUp(size_t(out), op->local[0]);
  op->global[1] = size_t(batch);
  return op;
}

std::unique_ptr<Op> MakePool(Runtime& rt, const ConvShape& s, bool max, const OpOptions& o,
                             std::string* error) {
  const std::string& cache_dir = o.cache_dir;
  auto op = std::make_unique<SimpleOp>();
  if (s.batch <= 0 || s.out_h <= 0 || s.out_w <= 0 || s.in_c <= 0 || s.out_c != s.in_c ||
      int64_t(s.batch) * s.in_h * s.in_w * s.in_c > kMaxIndex ||
      int64_t(s.batch) * s.out_h * s.out_w * s.out_c > kMaxIndex) {
    *error = "pooling: invalid or too large shape";
    return nullptr;
  }
  std::string src = std::string("// cocopie_tf generated ") + (max ? "max" : "average") + " pool\n";
  Define(&src, "IN_H", s.in_h); Define(&src, "IN_W", s.in_w); Define(&src, "C", s.in_c);
  Define(&src, "OUT_H", s.out_h); Define(&src, "OUT_W", s.out_w);
  src += "__kernel void pool(__global const float* restrict in, __global float* restrict out) {\n"
         "  const int c = get_global_id(0), pos = get_global_id(1), n = get_global_id(2);\n"
         "  if (c >= C) return;\n"
         "  const int oy = pos / OUT_W, ox = pos - oy * OUT_W;\n"
         "  const int y0 = oy * " + std::to_string(s.stride_h) + " - " + std::to_string(s.pad_top) +
         ", x0 = ox * " + std::to_string(s.stride_w) + " - " + std::to_string(s.pad_left) + ";\n"
         "  const int ya = max(y0, 0), yb = min(y0 + " + std::to_string(s.k_h) + ", IN_H);\n"
         "  const int xa = max(x0, 0), xb = min(x0 + " + std::to_string(s.k_w) + ", IN_W);\n";
  // As the CPU kernels (cc/kernels/pool.h): max skips NaN unless the
  // window holds nothing else; average divides by the in-bounds count.
  src += max ? "  float m = NAN;\n" : "  float m = 0.0f;\n";
  src += "  for (int y = ya; y < yb; ++y)\n"
         "    for (int x = xa; x < xb; ++x) {\n"
         "      const float v = in[((n * IN_H + y) * IN_W + x) * C + c];\n";
  src += max ? "      m = (m < v || isnan(m)) ? v : m;\n" : "      m += v;\n";
  src += "    }\n";
  src += max ? "  float v = m;\n" : "  const int cnt = (yb - ya) * (xb - xa);\n  float v = cnt > 0 ? m / cnt : 0.0f;\n";
  src += Activation(s.act_min, s.act_max) +
         "  out[((n * OUT_H + oy) * OUT_W + ox) * C + c] = v;\n}\n";
  if (!op->Setup(rt, src, {"pool"}, cache_dir,
                 max ? "f32_maxpool2d__opencl" : "f32_avgpool2d__opencl", error))
    return nullptr;
  op->local[0] = s.in_c < 32 ? size_t(s.in_c) : 32;
  op->global[0] = RoundUp(size_t(s.in_c), op->local[0]);
  op->global[1] = size_t(s.out_h) * s.out_w;
  op->global[2] = size_t(s.batch);
  return op;
}

std::unique_ptr<Op> MakeAdd(Runtime& rt, int64_t elements, float act_min, float act_max,
                            const OpOptions& o, std::string* error) {
  const std::string& cache_dir = o.cache_dir;
  auto op = std::make_unique<SimpleOp>();
  if (elements <= 0 || elements > kMaxIndex) {
    *error = "add: invalid or too large shape";
    return nullptr;
  }
  op->binary = true;
  std::string src = "// cocopie_tf generated add\n";
  Define(&src, "N", elements);
  src += "__kernel void add(__global const float* restrict a, __global const float* restrict b,\n"
         "                  __global float* restrict out) {\n"
         "  const int i = get_global_id(0);\n"
         "  if (i >= N) return;\n"
         "  float v = a[i] + b[i];\n" + Activation(act_min, act_max) + "  out[i] = v;\n}\n";
  if (!op->Setup(rt, src, {"add"}, cache_dir, "f32_add__opencl", error)) return nullptr;
  op->local[0] = elements < 64 ? size_t(elements) : 64;
  op->global[0] = RoundUp(size_t(elements), op->local[0]);
  return op;
}

}  // namespace gpu
}  // namespace cocopie
