#include "delegate/gpu_partition.h"

namespace cocopie {
namespace {

size_t Elements(const std::vector<int>& dims) {
  size_t n = 1;
  for (int d : dims) n *= static_cast<size_t>(d);
  return n;
}

}  // namespace

std::string GpuPartition::Prepare(Delegate* d, const TfLiteContext* ctx,
                                  const std::vector<OpPlan>& ops, const std::set<int>& outputs,
                                  std::map<int, ReportEntry>* entries) {
  gpu::Runtime& rt = *d->gpu;
  const DelegateOptions& o = d->options;
  const std::string cache = o.gpu_cache == "off"    ? ""
                            : o.gpu_cache.empty() ? gpu::DefaultProgramCacheDir()
                                                  : o.gpu_cache;
  gpu::OpOptions oo;
  oo.cache_dir = cache;
  oo.work_group = o.gpu_work_group;
  oo.fp16 = o.gpu_precision == "fp16";
  ops_.clear();
  tensors_.clear();
  bytes_.clear();
  uploads_.clear();
  downloads_.clear();
  std::set<int> produced;
  for (const OpPlan& op : ops) {
    std::string why;
    std::unique_ptr<gpu::Op> g;
    const float* bias = op.bias_data;
    if (op.kind == OpKind::kConv2D) {
      // Judged on the layer itself, at stride 1: the device runs any stride
      // directly (no phase split).
      const PatternStats st = AnalyzePatterns(op.filter_data, op.out_c, op.k_h, op.k_w, op.in_c);
      ConvShape unit;
      unit.k_h = op.k_h;
      unit.k_w = op.k_w;
      PatternPlan plan;
      const bool pruned = o.pattern_kernels && PatternKernelApplies(st, unit) &&
                          BuildPatternPlan(op.filter_data, op.out_c, op.k_h, op.k_w, op.in_c,
                                           bias, 1, &plan).empty();
      g = gpu::MakeConv(rt, op.shape, pruned ? &plan : nullptr, op.filter_data, bias, oo, &why);
    } else if (op.kind == OpKind::kDepthwiseConv2D) {
      g = gpu::MakeDepthwise(rt, op.shape, op.filter_data, bias, oo, &why);
    } else if (op.kind == OpKind::kMaxPool || op.kind == OpKind::kAvgPool) {
      g = gpu::MakePool(rt, op.shape, op.kind == OpKind::kMaxPool, oo, &why);
    } else if (op.kind == OpKind::kAdd) {
      g = gpu::MakeAdd(rt, static_cast<int64_t>(Elements(op.output_dims)), op.act_min,
                       op.act_max, oo, &why);
    } else {
      g = gpu::MakeFullyConnected(rt, op.fc_batch, op.in_c, op.out_c, op.filter_data, bias,
                                  op.act_min, op.act_max, oo, &why);
    }
    if (g == nullptr)
      return "node " + std::to_string(op.node_index) + " (" + OpKindName(op.kind) + ") on " +
             rt.info().name + ": " + why;
    // Device buffers for the op's tensors; inputs not produced in the
    // partition come from the host.
    for (int input : {op.input, op.input2}) {
      if (input < 0 || produced.count(input)) continue;
      const TfLiteTensor& t = ctx->tensors[input];
      if (t.dims == nullptr) return "node " + std::to_string(op.node_index) + ": input has no shape";
      const std::vector<int> dims(t.dims->data, t.dims->data + t.dims->size);
      if (!bytes_.count(input)) uploads_.push_back(input);
      bytes_[input] = Elements(dims) * sizeof(float);
    }
    if (op.kind == OpKind::kAdd && bytes_[op.input2] != bytes_[op.input])
      return "node " + std::to_string(op.node_index) + " (ADD): operands of different sizes "
             "(broadcasting ADD is not supported on the GPU backend)";
    bytes_[op.output] = Elements(op.output_dims) * sizeof(float);
    produced.insert(op.output);
    if (outputs.count(op.output)) downloads_.push_back(op.output);
    ReportEntry& e = (*entries)[op.node_index];
    e.device = "gpu";
    e.kernel = g->kernel_name();
    e.engine = oo.fp16 ? "opencl_fp16_weights" : "opencl";
    e.program_cache = g->build().cache;
    e.build_ms = g->build().build_ms;
    e.code_bytes = static_cast<int64_t>(g->build().source_bytes);
    e.gpu_device = rt.info().ToString();
    if (e.kernel.find("pattern") != std::string::npos) {
      // Kept weights per output position, every filter.
      const PatternStats st = AnalyzePatterns(op.filter_data, op.out_c, op.k_h, op.k_w, op.in_c);
      e.executed_macs = int64_t(op.shape.batch) * op.shape.out_h * op.shape.out_w *
                        st.kept_weights;
      e.patterns = st.distinct_patterns;
    }
    ops_.push_back(std::move(g));
  }
  for (const auto& kv : bytes_) {
    std::string why;
    if (!rt.Alloc(kv.second, nullptr, &tensors_[kv.first], &why)) return why;
  }
  return "";
}

std::string GpuPartition::Invoke(Delegate* d, TfLiteContext* ctx, const std::vector<OpPlan>& ops,
                                 std::map<int, double>* ms_by_node) {
  gpu::Runtime& rt = *d->gpu;
  std::string why;
  for (int t : uploads_) {
    const void* src = ctx->tensors[t].data.raw;
    if (src == nullptr) return "input tensor " + std::to_string(t) + " has no data";
    if (!rt.Upload(tensors_[t], src, bytes_[t], &why)) return why;
  }
  for (size_t k = 0; k < ops.size(); ++k) {
    double ms = 0;
    const gpu::Buffer* in2 = ops[k].input2 >= 0 ? &tensors_[ops[k].input2] : nullptr;
    if (!ops_[k]->Enqueue(rt, tensors_[ops[k].input], in2, tensors_[ops[k].output],
                          ms_by_node != nullptr ? &ms : nullptr, &why))
      return "node " + std::to_string(ops[k].node_index) + ": " + why;
    if (ms_by_node != nullptr) (*ms_by_node)[ops[k].node_index] += ms;
  }
  for (int t : downloads_) {
    void* dst = ctx->tensors[t].data.raw;
    if (dst == nullptr) return "output tensor " + std::to_string(t) + " has no data";
    if (!rt.Download(tensors_[t], dst, bytes_[t], &why)) return why;
  }
  return rt.Finish(&why) ? "" : why;
}

}  // namespace cocopie
