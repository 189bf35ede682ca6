// cocopie_tf._cc: the C++ kernels exposed to Python for tests and tools.
// Arguments follow TFLite conventions (NHWC activations, OHWI conv filters,
// 1HW(C*M) depthwise filters, [out][in] fully-connected weights).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include "cc/kernels/dispatch.h"
#include "cc/kernels/thread_pool.h"
#include "cc/kernels/jit_pattern.h"
#include "cc/kernels/kernels.h"
#include "cc/kernels/tuning.h"

namespace py = pybind11;
using Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

namespace cocopie {
namespace {

void ActivationRange(const std::string& act, float* lo, float* hi) {
  const float inf = std::numeric_limits<float>::infinity();
  if (act == "none") { *lo = -inf; *hi = inf; }
  else if (act == "relu") { *lo = 0; *hi = inf; }
  else if (act == "relu6") { *lo = 0; *hi = 6; }
  else if (act == "relu_n1_to_1") { *lo = -1; *hi = 1; }
  else throw py::value_error("activation: expected none, relu, relu6 or relu_n1_to_1, got '" + act + "'");
}

Padding ParsePadding(const std::string& p) {
  if (p == "same") return Padding::kSame;
  if (p == "valid") return Padding::kValid;
  throw py::value_error("padding: expected 'same' or 'valid', got '" + p + "'");
}

const KernelSet* Select(const std::string& kernel) {
  std::string error;
  const KernelSet* set = SelectKernelSet(kernel, &error);
  if (!error.empty()) throw py::value_error("kernel: " + error);
  return set;
}

std::unique_ptr<ThreadPool> MakePool(int num_threads) {
  if (num_threads < 1) throw py::value_error("num_threads must be >= 1");
  return std::unique_ptr<ThreadPool>(new ThreadPool(num_threads));
}

const float* BiasPtr(const py::object& bias, int n, Array* holder) {
  if (bias.is_none()) return nullptr;
  *holder = Array::ensure(bias);
  if (!*holder || holder->ndim() != 1 || holder->shape(0) != n)
    throw py::value_error("bias must be a 1-D array with one entry per output channel");
  return holder->data();
}

ConvShape ConvGeometry(const Array& input, int k_h, int k_w, int out_c,
                       std::pair<int, int> strides, std::pair<int, int> dilations,
                       const std::string& padding, const std::string& activation) {
  if (input.ndim() != 4) throw py::value_error("input must be NHWC (4-D)");
  ConvShape s;
  s.batch = static_cast<int>(input.shape(0));
  s.in_h = static_cast<int>(input.shape(1));
  s.in_w = static_cast<int>(input.shape(2));
  s.in_c = static_cast<int>(input.shape(3));
  s.k_h = k_h;
  s.k_w = k_w;
  s.out_c = out_c;
  s.stride_h = strides.first;
  s.stride_w = strides.second;
  s.dil_h = dilations.first;
  s.dil_w = dilations.second;
  ActivationRange(activation, &s.act_min, &s.act_max);
  const std::string why = ResolveConvShape(ParsePadding(padding), &s);
  if (!why.empty()) throw py::value_error(why);
  return s;
}

Array Conv2D(const Array& input, const Array& filter, const py::object& bias,
             std::pair<int, int> strides, std::pair<int, int> dilations,
             const std::string& padding, const std::string& activation,
             const std::string& kernel, int num_threads) {
  if (filter.ndim() != 4) throw py::value_error("filter must be OHWI (4-D)");
  const int oc = filter.shape(0), kh = filter.shape(1), kw = filter.shape(2), ic = filter.shape(3);
  ConvShape s = ConvGeometry(input, kh, kw, oc, strides, dilations, padding, activation);
  if (s.in_c != ic) throw py::value_error("filter depth does not match input channels");
  Array b;
  const float* bp = BiasPtr(bias, oc, &b);
  const KernelSet* set = Select(kernel);
  auto pool = MakePool(num_threads);
  Array out({s.batch, s.out_h, s.out_w, s.out_c});
  const PackedConv packed = PackConv2D(filter.data(), oc, kh, kw, ic, bp);
  {
    py::gil_scoped_release release;
    RunConv2D(set, s, packed, filter.data(), input.data(), out.mutable_data(), pool.get());
  }
  return out;
}

Array Depthwise(const Array& input, const Array& filter, const py::object& bias,
                std::pair<int, int> strides, std::pair<int, int> dilations,
                const std::string& padding, const std::string& activation,
                const std::string& kernel, int num_threads) {
  if (filter.ndim() != 4 || filter.shape(0) != 1)
    throw py::value_error("depthwise filter must be 1 x H x W x (C*M)");
  const int kh = filter.shape(1), kw = filter.shape(2), oc = filter.shape(3);
  ConvShape s = ConvGeometry(input, kh, kw, oc, strides, dilations, padding, activation);
  if (oc % s.in_c != 0) throw py::value_error("filter channels are not a multiple of input channels");
  s.depth_multiplier = oc / s.in_c;
  Array b;
  const float* bp = BiasPtr(bias, oc, &b);
  const KernelSet* set = Select(kernel);
  auto pool = MakePool(num_threads);
  Array out({s.batch, s.out_h, s.out_w, s.out_c});
  const PackedDepthwise packed = PackDepthwise(filter.data(), oc, kh, kw, bp);
  {
    py::gil_scoped_release release;
    RunDepthwise(set, s, packed, input.data(), out.mutable_data(), pool.get());
  }
  return out;
}

Array FullyConnected(const Array& input, const Array& weights, const py::object& bias,
                     const std::string& activation, const std::string& kernel,
                     int num_threads, bool by_input) {
  if (input.ndim() != 2 || weights.ndim() != 2 || input.shape(1) != weights.shape(1))
    throw py::value_error("expected input [batch, in] and weights [out, in]");
  const int batch = input.shape(0), in = weights.shape(1), out_n = weights.shape(0);
  float lo, hi;
  ActivationRange(activation, &lo, &hi);
  Array b;
  const float* bp = BiasPtr(bias, out_n, &b);
  const KernelSet* set = Select(kernel);
  auto pool = MakePool(num_threads);
  Array out({batch, out_n});
  const PackedFullyConnected packed = PackFullyConnected(weights.data(), out_n, in, bp, by_input);
  {
    py::gil_scoped_release release;
    RunFullyConnected(set, batch, packed, lo, hi, input.data(), out.mutable_data(), pool.get());
  }
  return out;
}

// A pattern convolution with its plan built once (as the delegate does in
// Prepare), so repeated calls time only the kernel; the knobs let the
// ablation benchmark switch the engine's optimisations off one at a time.
class PatternConvLayer {
 public:
  PatternConvLayer(const Array& filter, const py::object& bias, std::pair<int, int> dilations,
                   const std::string& padding, const std::string& activation,
                   const std::string& kernel, int num_threads, int group, bool reorder,
                   int chunk_channels, int tile_vectors, const std::string& jit, int jit_filters,
                   int jit_vectors, bool jit_reorder, int jit_segment, int jit_task_positions,
                   int jit_band_rows, int jit_channel_parts)
      : dilations_(dilations), padding_(padding), activation_(activation) {
    if (filter.ndim() != 4) throw py::value_error("filter must be OHWI (4-D)");
    oc_ = filter.shape(0); kh_ = filter.shape(1); kw_ = filter.shape(2); ic_ = filter.shape(3);
    if (group < 1 || group > kMaxGroup)
      throw py::value_error("group must be between 1 and " + std::to_string(kMaxGroup));
    if (chunk_channels < 0) throw py::value_error("chunk_channels must be >= 0 (0 = auto)");
    if (tile_vectors != 0 && !ValidTileVectors(tile_vectors))
      throw py::value_error("tile_vectors must be 0 (auto), 1, 2, 3, 4, 6 or 8");
    Array b;
    const float* bp = BiasPtr(bias, oc_, &b);
    set_ = Select(kernel);
    if (set_ == nullptr) throw py::value_error("kernel: the pattern kernel has no 'reference' variant");
    pool_ = MakePool(num_threads);
    std::string why;
    if (reorder) {
      why = BuildPatternPlan(filter.data(), oc_, kh_, kw_, ic_, bp, group, &plan_);
    } else {  // the same plan with filters in their original order
      PatternPlan tmp;
      why = BuildPatternPlan(filter.data(), oc_, kh_, kw_, ic_, bp, 1, &tmp);
      if (why.empty()) {
        std::vector<int> kernel_pattern(static_cast<size_t>(oc_) * ic_, -1), order(oc_);
        for (int f = 0; f < oc_; ++f) {
          const int o = tmp.reorder[f];
          order[f] = f;
          for (int q = 0; q < tmp.num_patterns(); ++q)
            for (int k = tmp.stride[f * (tmp.num_patterns() + 1) + q];
                 k < tmp.stride[f * (tmp.num_patterns() + 1) + q + 1]; ++k)
              kernel_pattern[static_cast<size_t>(o) * ic_ + tmp.index[tmp.offset[f] + k]] = q;
        }
        why = BuildPatternPlanWith(filter.data(), oc_, kh_, kw_, ic_, bp, group, tmp.patterns,
                                   kernel_pattern, order, &plan_);
      }
    }
    if (!why.empty()) throw py::value_error(why);
    tuning_.chunk_channels = chunk_channels;
    tuning_.tile_vectors = tile_vectors;
    if (!ParseJitIsa(jit, &tuning_.jit))
      throw py::value_error("jit must be one of 'auto', 'static', 'avx2_fma', 'avx512', 'neon', got '" +
                            jit + "'");
    std::string err;
    ResolveJitIsa(set_, tuning_.jit, &err);
    if (!err.empty()) throw py::value_error(err);
    if (jit_filters < 0 || jit_vectors < 0 || jit_vectors > 4)
      throw py::value_error("jit_filters must be >= 0 and jit_vectors 0..4 (0 = automatic)");
    tuning_.jit_filters = jit_filters;
    tuning_.jit_vectors = jit_vectors;
    tuning_.jit_reorder = jit_reorder;
    tuning_.jit_segment = jit_segment;
    if (jit_task_positions < 0) throw py::value_error("jit_task_positions must be >= 0 (0 = automatic)");
    tuning_.jit_task_positions = jit_task_positions;
    if (jit_band_rows < -1)
      throw py::value_error("jit_band_rows must be >= -1 (0 = automatic, -1 = whole image)");
    tuning_.jit_band_rows = jit_band_rows;
    if (jit_channel_parts < 0) throw py::value_error("jit_channel_parts must be >= 0 (0 = one range)");
    tuning_.jit_channel_parts = jit_channel_parts;
  }

  Array Call(const Array& input) {
    ConvShape s = ConvGeometry(input, kh_, kw_, oc_, {1, 1}, dilations_, padding_, activation_);
    if (s.in_c != ic_) throw py::value_error("filter depth does not match input channels");
    Array out({s.batch, s.out_h, s.out_w, s.out_c});
    {
      py::gil_scoped_release release;
      PreparePatternConv(set_, s, plan_, &scratch_, tuning_);
      if (tuning_.jit != JitIsa::kAuto && tuning_.jit != JitIsa::kNone && !scratch_.jit) {
        py::gil_scoped_acquire acquire;
        throw py::value_error("jit: code not generated: " + scratch_.jit_error);
      }
      RunPatternConv(set_, s, plan_, &scratch_, input.data(), out.mutable_data(), pool_.get(),
                     tuning_);
    }
    return out;
  }

  // Runs the auto-tuner on this layer for `input`'s shape and keeps its pick.
  py::dict Tune(const Array& input, double budget_ms) {
    if (!(budget_ms >= 1)) throw py::value_error("budget_ms must be >= 1");
    ConvShape s = ConvGeometry(input, kh_, kw_, oc_, {1, 1}, dilations_, padding_, activation_);
    if (s.in_c != ic_) throw py::value_error("filter depth does not match input channels");
    TuneResult r;
    {
      py::gil_scoped_release release;
      r = TunePatternConv(set_, s, plan_, pool_.get(), budget_ms, tuning_.jit);
    }
    tuning_ = r.tuning;
    py::dict d;
    d["chunk_channels"] = r.tuning.chunk_channels;
    d["tile_vectors"] = r.tuning.tile_vectors;
    d["jit_segment"] = r.tuning.jit_segment;
    d["best_ms"] = r.best_ms;
    d["default_ms"] = r.default_ms;
    d["candidates"] = r.candidates;
    return d;
  }

  // What the last call ran: the engine, and for generated code its size,
  // generation time, tile and filter blocks.
  py::dict Engine() const {
    py::dict d;
    d["engine"] = scratch_.engine;
    d["jit_error"] = scratch_.jit_error;
    if (scratch_.jit) {
      const JitLayout& l = scratch_.jit->layout();
      d["code_bytes"] = scratch_.jit->code_bytes();
      d["generate_ms"] = scratch_.jit->generate_ms();
      d["filter_blocks"] = scratch_.jit->num_blocks();
      d["jit_filters"] = l.filters;
      d["jit_vectors"] = l.vectors;
      d["columns"] = l.columns;
      d["uses"] = l.uses;
      d["segments"] = l.segments;
      d["band_rows"] = scratch_.band.rows;
      d["filter_major"] = scratch_.filter_major;
      d["channel_parts"] = l.channel_parts;
      py::list blocks;  // each block's output channels
      for (const JitBlock& b : l.blocks) blocks.append(py::cast(b.out_channel));
      d["block_channels"] = blocks;
    }
    return d;
  }

  int units() const { return static_cast<int>(plan_.unit_begin.size()); }
  int chunk_channels() const { return scratch_.exec.chunk_channels; }
  int64_t macs_per_pixel() const { return plan_.MacsPerPixel(); }

 private:
  std::pair<int, int> dilations_;
  std::string padding_, activation_;
  int oc_ = 0, kh_ = 0, kw_ = 0, ic_ = 0;
  const KernelSet* set_ = nullptr;
  std::unique_ptr<ThreadPool> pool_;
  PatternPlan plan_;
  PatternScratch scratch_;
  PatternTuning tuning_;
};

Array PatternConv2D(const Array& input, const Array& filter, const py::object& bias,
                   std::pair<int, int> dilations, const std::string& padding,
                   const std::string& activation, const std::string& kernel, int num_threads,
                   int group) {
  PatternConvLayer layer(filter, bias, dilations, padding, activation, kernel, num_threads, group,
                         true, 0, 0, "auto", 0, 0, true, 0, 0, 0, 0);
  return layer.Call(input);
}

py::dict PatternInfo(const Array& filter, int group) {
  if (filter.ndim() != 4) throw py::value_error("filter must be OHWI (4-D)");
  const int oc = filter.shape(0), kh = filter.shape(1), kw = filter.shape(2), ic = filter.shape(3);
  const PatternStats st = AnalyzePatterns(filter.data(), oc, kh, kw, ic);
  PatternPlan plan;
  const std::string why = BuildPatternPlan(filter.data(), oc, kh, kw, ic, nullptr, group, &plan);
  if (!why.empty()) throw py::value_error(why);
  py::dict d;
  d["distinct_patterns"] = st.distinct_patterns;
  d["kept_kernels"] = st.kept_kernels;
  d["total_kernels"] = st.total_kernels;
  d["kept_weights"] = st.kept_weights;
  d["density"] = st.Density();
  d["max_group"] = st.max_group;
  d["units"] = plan.unit_begin.size();
  d["fkw_bytes"] = plan.FkwBytes();
  d["csr_bytes"] = plan.CsrBytes();
  d["dense_bytes"] = plan.DenseBytes();
  d["offset"] = plan.offset;
  d["reorder"] = plan.reorder;
  d["index"] = plan.index;
  d["stride"] = plan.stride;
  d["weights"] = plan.fkw_weights;
  d["patterns"] = plan.patterns;
  return d;
}

}  // namespace
}  // namespace cocopie

PYBIND11_MODULE(_cc, m) {
  using namespace cocopie;
  m.doc() = "cocopie_tf C++ kernels (NHWC float32).";
  const auto pair11 = std::make_pair(1, 1);
  m.def("conv2d", &Conv2D, py::arg("input"), py::arg("filter"), py::arg("bias") = py::none(),
        py::arg("strides") = pair11, py::arg("dilations") = pair11, py::arg("padding") = "same",
        py::arg("activation") = "none", py::arg("kernel") = "auto", py::arg("num_threads") = 1,
        "2-D convolution; filter is OHWI.");
  m.def("depthwise_conv2d", &Depthwise, py::arg("input"), py::arg("filter"),
        py::arg("bias") = py::none(), py::arg("strides") = pair11, py::arg("dilations") = pair11,
        py::arg("padding") = "same", py::arg("activation") = "none", py::arg("kernel") = "auto",
        py::arg("num_threads") = 1, "Depthwise convolution; filter is 1 x H x W x (C*M).");
  m.def("fully_connected", &FullyConnected, py::arg("input"), py::arg("weights"),
        py::arg("bias") = py::none(), py::arg("activation") = "none", py::arg("kernel") = "auto",
        py::arg("num_threads") = 1, py::arg("by_input") = false,
        "Fully connected; weights are [out, in].  by_input: weights packed by input, the rows "
        "of zero inputs skipped (the delegate's choice for an input a ReLU wrote).");
  m.def("pattern_conv2d", &PatternConv2D, py::arg("input"), py::arg("filter"),
        py::arg("bias") = py::none(), py::arg("dilations") = pair11, py::arg("padding") = "same",
        py::arg("activation") = "none", py::arg("kernel") = "auto", py::arg("num_threads") = 1,
        py::arg("group") = kMaxGroup,
        "Stride-1 convolution with the pattern (FKW) kernel; filter is OHWI.");
  py::class_<PatternConvLayer>(m, "PatternConvLayer",
                               "A pattern convolution with its plan built once; call it on "
                               "NHWC inputs.  reorder/chunk_channels/tile_vectors are the "
                               "engine's knobs (0 = automatic), for ablation and tuning.")
      .def(py::init<const Array&, const py::object&, std::pair<int, int>, const std::string&,
                    const std::string&, const std::string&, int, int, bool, int, int,
                    const std::string&, int, int, bool, int, int, int, int>(),
           py::arg("filter"), py::arg("bias") = py::none(), py::arg("dilations") = pair11,
           py::arg("padding") = "same", py::arg("activation") = "none",
           py::arg("kernel") = "auto", py::arg("num_threads") = 1,
           py::arg("group") = kMaxGroup, py::arg("reorder") = true,
           py::arg("chunk_channels") = 0, py::arg("tile_vectors") = 0, py::arg("jit") = "auto",
           py::arg("jit_filters") = 0, py::arg("jit_vectors") = 0, py::arg("jit_reorder") = true,
           py::arg("jit_segment") = 0, py::arg("jit_task_positions") = 0,
           py::arg("jit_band_rows") = 0, py::arg("jit_channel_parts") = 0)
      .def_property_readonly("engine", &PatternConvLayer::Engine,
                             "what the last call ran: engine name, and for generated code "
                             "code_bytes, generate_ms, filter blocks and tile")
      .def("__call__", &PatternConvLayer::Call, py::arg("input"))
      .def("tune", &PatternConvLayer::Tune, py::arg("input"), py::arg("budget_ms") = 400.0,
           "Auto-tunes the knobs for this input shape (as the delegate's tune=on) and keeps them.")
      .def_property_readonly("units", &PatternConvLayer::units)
      .def_property_readonly("chunk_channels", &PatternConvLayer::chunk_channels,
                             "channels per cache block used by the last call")
      .def_property_readonly("macs_per_pixel", &PatternConvLayer::macs_per_pixel);
  m.def("pattern_info", &PatternInfo, py::arg("filter"), py::arg("group") = kMaxGroup,
        "Pattern structure and FKW arrays of an OHWI filter.");
  m.def("pattern_limits", [] {
    py::dict d;
    d["max_density"] = kPatternMaxDensity;
    d["jit_dense_max_depth"] = kJitDenseMaxDepth;
    d["jit_dense_max_depth_avx512"] = kJitDenseMaxDepthAvx512;
    d["max_patterns"] = kPatternMaxDistinct;
    d["max_taps"] = kMaxTaps;
    d["max_group"] = kMaxGroup;
    return d;
  }, "The pattern contract's limits (what the delegate takes as pattern-pruned).");
  m.def("kernel_limits", [] {
    py::dict d;
    d["depthwise_block_channels"] = kDepthwiseBlockChannels;
    d["depthwise_blocks_max_positions"] = kDepthwiseBlocksMaxPositions;
    return d;
  }, "Where the planar depthwise conv runs over blocks of channels (AVX-512, strides >= 2).");
  m.def("cpu_features", [] { return DetectCpu().ToString(); }, "Detected CPU features.");
  m.def("cross_core_read_ratio", &CrossCoreReadRatio, py::arg("rounds") = 60,
        py::call_guard<py::gil_scoped_release>(),
        "How much slower one CPU reads 256 KB another CPU just wrote than its own "
        "(median over rounds): ~1.1 with a shared L3, ~3 across AMD CCDs; 0 with one CPU.");
  m.def("cpu_speed_ratio", &CpuSpeedRatio, py::arg("rounds") = 3,
        py::call_guard<py::gil_scoped_release>(),
        "How much slower the slower of the first two CPUs runs a fixed multiply-add chain "
        "than the faster, each pinned and alone: 1.0 on an idle machine; 0 with one CPU.");
  m.def("default_tuning_cache_path", &DefaultTuningCachePath,
        "The tuning cache file the delegate uses when tune_cache is not given.");
  m.def("kernel_choices", &KernelChoices, "Accepted values of the 'kernel' option.");
  m.def("jit_choices", &JitChoices, "Accepted values of the 'jit' option on this build and CPU.");
  m.def("jit_compiled", &JitCompiled, "Whether this build contains the code generator.");
  m.def("default_kernel_set", [] {
    std::string e;
    const KernelSet* s = SelectKernelSet("auto", &e);
    return std::string(s ? s->isa : "reference");
  }, "The kernel set 'auto' selects on this CPU.");
}
