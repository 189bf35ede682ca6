#include "delegate/delegate.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <new>
#include <set>
#include <unordered_map>
#include <vector>

#include "cc/kernels/phase_split.h"
#include "cc/kernels/pool.h"
#include "cc/kernels/reference.h"
#include "delegate/gpu_partition.h"
#include "delegate/ops.h"

namespace cocopie {
namespace {

constexpr int kBuiltinDelegate = 51;  // BuiltinOperator_DELEGATE

std::vector<int> Dims(const TfLiteIntArray* a) {
  return a ? std::vector<int>(a->data, a->data + a->size) : std::vector<int>();
}

bool SameDims(const TfLiteIntArray* a, const std::vector<int>& b) {
  return a != nullptr && Dims(a) == b;
}

// The runtime frees dims arrays with free(); build them with malloc().
TfLiteIntArray* NewIntArray(const std::vector<int>& v) {
  auto* a = static_cast<TfLiteIntArray*>(
      std::malloc(sizeof(TfLiteIntArray) + sizeof(int) * v.size()));
  if (a == nullptr) return nullptr;
  a->size = static_cast<int>(v.size());
  for (size_t i = 0; i < v.size(); ++i) a->data[i] = v[i];
  return a;
}

// One delegated partition: a run of claimed nodes the runtime replaced with a
// single delegate node.  Tensors produced and consumed only inside it get no
// memory from the runtime, so they live in the partition's own buffers
// (`slots_`), shared by tensors whose lifetimes do not overlap.
class Partition {
 public:
  Partition(Delegate* delegate, std::vector<OpPlan> ops, const TfLiteIntArray* outputs)
      : delegate_(delegate), ops_(std::move(ops)) {
    for (int t : Dims(outputs)) outputs_.insert(t);
    for (const OpPlan& op : ops_) node_input_.push_back(op.input);
  }

  TfLiteStatus Prepare(TfLiteContext* ctx) {
    std::unordered_map<int, std::vector<int>> internal_dims;
    std::unordered_map<int, size_t> internal_floats;
    std::map<int, ReportEntry> entries;
    // Each Prepare (the first, and again after an input is resized) starts
    // from the nodes as claimed: the fusions below rewire ops for the shapes
    // at hand (a pool reading its PAD's input, a conv writing its ADD's
    // output) and are made again from scratch.
    for (size_t k = 0; k < ops_.size(); ++k) {
      OpPlan& op = ops_[k];
      op.input = node_input_[k];
      op.fused = op.zero_border = false;
      op.residual = op.write_to = -1;
    }
    std::set<int> depthwise_inputs;  // tensors a depthwise conv reads
    for (const OpPlan& op : ops_)
      if (op.kind == OpKind::kDepthwiseConv2D) depthwise_inputs.insert(op.input);
    for (OpPlan& op : ops_) {
      const auto it = internal_dims.find(op.input);
      std::vector<int> in_dims;
      if (it != internal_dims.end()) {
        in_dims = it->second;
      } else {
        const TfLiteTensor& t = ctx->tensors[op.input];
        if (t.type != kTfLiteFloat32 || t.dims == nullptr) {
          ctx->ReportError(ctx, "cocopie: node %d: input is not a float32 tensor", op.node_index);
          return kTfLiteError;
        }
        in_dims = Dims(t.dims);
      }
      std::string why = ResolveShapes(in_dims, &op);
      if (why.empty() && op.kind == OpKind::kAdd) {
        // The operands may have been resized apart since the node was claimed.
        const auto it2 = internal_dims.find(op.input2);
        const TfLiteTensor& t2 = ctx->tensors[op.input2];
        const std::vector<int> dims2 = it2 != internal_dims.end() ? it2->second : Dims(t2.dims);
        if (it2 == internal_dims.end() && t2.type != kTfLiteFloat32)
          why = "second input is not a float32 tensor";
        else if (dims2 != in_dims)
          why = "operands have different shapes (broadcasting ADD)";
      }
      if (!why.empty()) {
        ctx->ReportError(ctx, "cocopie: node %d (%s): %s", op.node_index,
                         OpKindName(op.kind), why.c_str());
        return kTfLiteError;
      }
      int64_t n = 1;
      for (int d : op.output_dims) n *= d;
      if (outputs_.count(op.output)) {
        TfLiteTensor& out = ctx->tensors[op.output];
        if (!SameDims(out.dims, op.output_dims)) {
          TfLiteIntArray* dims = NewIntArray(op.output_dims);
          if (dims == nullptr || ctx->ResizeTensor(ctx, &out, dims) != kTfLiteOk) {
            ctx->ReportError(ctx, "cocopie: node %d: cannot resize output", op.node_index);
            return kTfLiteError;
          }
        }
      } else {
        internal_dims[op.output] = op.output_dims;
        internal_floats[op.output] = static_cast<size_t>(n);
      }
      op.dw_planar = op.kind == OpKind::kDepthwiseConv2D && delegate_->gpu == nullptr &&
                     DepthwisePlanarApplies(delegate_->kernels, op.shape, op.depthwise);
      ReportEntry e;
      if (op.use_pattern && delegate_->gpu == nullptr) {
        ChooseTuning(&op);
        // A 1x1 conv's code is made for the plain planes at once
        // (PatternGeometry::direct): most such convs run in place
        // (RunInPlace), and making the padded planes' code first doubled
        // their generation (ResNet-50's Prepare 1.8 -> 1.3 s).  RunInPlace
        // makes it again for the few that end up not in place.
        if (InPlaceCandidate(op)) {
          op.tuning.planar_direct = true;
          // Each thread's share of the filter blocks writes one range of
          // channels, the range its share of a depthwise conv after reads.
          if (depthwise_inputs.count(op.output))
            op.tuning.jit_channel_parts = delegate_->num_threads;
        }
        // Code generation (or the static layout) happens here, not in the
        // first Invoke.
        e.engine = PreparePatternConv(delegate_->kernels, op.shape, op.pattern,
                                      &op.pattern_scratch, op.tuning);
        e.jit_error = op.pattern_scratch.jit_error;
        ReportJit(op.pattern_scratch, &e);
        e.small_map = op.pattern_scratch.geometry.small_map;
        e.pair_map = op.pattern_scratch.geometry.pair_map;
      }
      e.node_index = op.node_index;
      e.tuning = op.tuning_source;
      e.chunk_channels = op.tuning.chunk_channels;
      e.tile_vectors = op.tuning.tile_vectors;
      e.op = OpKindName(op.kind);
      const char* kname = op.use_pattern                  ? "conv2d_pattern"
                          : op.kind == OpKind::kConv2D ? "conv2d_direct"
                          : op.kind == OpKind::kDepthwiseConv2D ? "dwconv2d_direct"
                          : op.kind == OpKind::kAdd             ? "add"
                          : op.kind == OpKind::kMean            ? "mean"
                          : op.kind == OpKind::kMaxPool         ? "maxpool2d"
                          : op.kind == OpKind::kAvgPool         ? "avgpool2d"
                          : op.kind == OpKind::kPad             ? "pad2d"
                          : !op.fc.io.empty()                   ? "fc_by_input"
                                                                : "fc_direct";
      if (delegate_->kernels == nullptr)
        kname = op.kind == OpKind::kConv2D ? "conv2d"
                : op.kind == OpKind::kDepthwiseConv2D ? "dwconv2d"
                : op.kind == OpKind::kAdd             ? "add"
                : op.kind == OpKind::kMean            ? "mean"
                : op.kind == OpKind::kMaxPool         ? "maxpool2d"
                : op.kind == OpKind::kAvgPool         ? "avgpool2d"
                : op.kind == OpKind::kPad             ? "pad2d" : "fc";
      e.kernel = KernelName(delegate_->kernels, kname);
      // One portable kernel (compiled for the baseline ISA) for every set.
      if (delegate_->kernels != nullptr && (IsPool(op.kind) || op.kind == OpKind::kPad))
        e.kernel = std::string("f32_") + kname + "__portable";
      if (op.use_pattern && op.pattern_scratch.jit) e.kernel = "f32_conv2d_pattern__" + e.engine;
      e.dense_macs = DenseMacs(op);
      e.executed_macs = ExecutedMacs(op);
      e.patterns = op.pattern_stats.distinct_patterns;
      e.metadata = op.metadata;
      entries[op.node_index] = e;
    }
    if (delegate_->gpu != nullptr) {
      gpu_.reset(new GpuPartition());
      const std::string why = gpu_->Prepare(delegate_, ctx, ops_, outputs_, &entries);
      if (!why.empty()) {
        ctx->ReportError(ctx, "cocopie: backend=gpu: %s", why.c_str());
        return kTfLiteError;
      }
      // internal tensors live on the device
    } else {
      FusePadsIntoPools(&internal_floats, &entries);
      ShareInternalBuffers(internal_floats, &entries);
      if (!delegate_->gpu_fallback_reason.empty())
        for (auto& kv : entries) kv.second.gpu_device = "unavailable: " + delegate_->gpu_fallback_reason;
      ChainPatternConvs(&entries);
      AssignPlanar(&entries);
      // A conv with a fused ADD writes the ADD's output, earlier than the
      // ADD did: the buffers are shared again for those lifetimes.
      if (RunInPlace(&internal_floats, &entries)) ShareInternalBuffers(internal_floats, &entries);
    }
    if (cache_dirty_) {
      const std::string why = delegate_->tuning_cache->Save();
      delegate_->Log(why.empty() ? "tuning cache saved to " + delegate_->tuning_cache->path()
                                 : "tuning cache not saved: " + why);
      cache_dirty_ = false;
    }
    std::lock_guard<std::mutex> lock(delegate_->report_mu);
    for (auto& kv : entries) delegate_->report[kv.first] = kv.second;
    return kTfLiteOk;
  }

  // A PAD whose only reader is the VALID pool right after it (ResNet's
  // stem: ZeroPadding2D, then a 3x3 stride-2 max pool) is folded into the
  // pool, which reads the PAD's input with zeros around it
  // (RunPool2D's zero_border): the padded copy (0.28 ms for 112x112x64 on
  // AMD Zen 4) is never written.
  void FusePadsIntoPools(std::unordered_map<int, size_t>* internal_floats,
                         std::map<int, ReportEntry>* entries) {
    for (size_t i = 0; i + 1 < ops_.size(); ++i) {
      OpPlan &pad = ops_[i], &p = ops_[i + 1];
      if (pad.kind != OpKind::kPad || !IsPool(p.kind) || p.input != pad.output ||
          p.padding != Padding::kValid || outputs_.count(pad.output) ||
          p.shape.pad_top != 0 || p.shape.pad_left != 0)
        continue;
      if (ReadByOtherThan(pad.output, i + 1)) continue;
      pad.fused = true;
      p.input = pad.input;
      p.zero_border = true;
      p.shape.in_h = pad.pad.in_h;
      p.shape.in_w = pad.pad.in_w;
      p.shape.pad_top = pad.pad.top;
      p.shape.pad_left = pad.pad.left;
      internal_floats->erase(pad.output);
      (*entries)[pad.node_index].layout = "folded into the next pool";
    }
  }

  // Whether an op other than ops_[reader] reads `tensor` (either operand
  // of an ADD counts).
  bool ReadByOtherThan(int tensor, size_t reader) const {
    for (size_t j = 0; j < ops_.size(); ++j)
      if (j != reader && (ops_[j].input == tensor ||
                          (ops_[j].kind == OpKind::kAdd && ops_[j].input2 == tensor)))
        return true;
    return false;
  }

  // A pattern 1x1 conv that may run on planar tensors in place (RunInPlace).
  static bool InPlaceCandidate(const OpPlan& op) {
    return op.kind == OpKind::kConv2D && op.use_pattern && !op.phase_split && op.shape.k_h == 1 &&
           op.shape.k_w == 1;
  }

  // Whether an op after ops_[k] other than ops_[except] reads `tensor`.
  bool ReadAfter(int tensor, size_t k, size_t except) const {
    for (size_t j = k + 1; j < ops_.size(); ++j)
      if (j != except && (ops_[j].input == tensor ||
                          (ops_[j].kind == OpKind::kAdd && ops_[j].input2 == tensor)))
        return true;
    return false;
  }

  // Consecutive pattern convs whose intermediate tensor nothing else reads
  // (and batch 1) keep the kernels' padded CHW layout between them.
  void ChainPatternConvs(std::map<int, ReportEntry>* entries) {
    for (OpPlan& op : ops_) op.chain_next = op.input_packed = false;
    for (size_t i = 0; i + 1 < ops_.size(); ++i) {
      OpPlan &a = ops_[i], &b = ops_[i + 1];
      // A split conv reads its phase planes, not a padded CHW input.
      // A banded layer packs its own input (dispatch.h, PatternBand), and
      // so does a small or pair map (PatternGeometry): its input becomes a
      // planar tensor instead (AssignPlanar).
      if (!a.use_pattern || !b.use_pattern || b.phase_split || b.subsample ||
          b.pattern_scratch.band.rows > 0 ||
          b.pattern_scratch.geometry.small_map || b.pattern_scratch.geometry.pair_map ||
          b.input != a.output || outputs_.count(a.output) ||
          a.shape.batch != 1 || b.shape.batch != 1)
        continue;
      if (ReadByOtherThan(a.output, i + 1)) continue;
      // A 1x1 conv with generated code for at least one tile of its map runs
      // in place on a planar input instead (RunInPlace): chained, it read
      // the planes as its own packed input and copied its result out, and
      // an ADD after it could not be fused into it (AddFusions, RunInPlace;
      // ResNet-50's last stage, a 3x3 conv then such a 1x1 conv, docs/
      // engine.md section 32).
      const JitKernel* bk = b.pattern_scratch.jit.get();
      if (b.shape.k_h == 1 && b.shape.k_w == 1 && bk != nullptr &&
          int64_t(b.shape.out_h) * b.shape.out_w >= bk->layout().TileLen())
        continue;
      a.chain_next = b.input_packed = true;
      (*entries)[a.node_index].keeps_layout = true;
    }
  }

  // Planar tensors (dispatch.h): at batch 1, a tensor produced by a pattern
  // conv (or by an ADD or depthwise conv with a planar input) whose readers
  // in the partition are all non-split pattern convs, ADDs or depthwise
  // convs the planar kernel takes stays in plain CHW planes: a residual
  // block's convs and ADD, or an inverted-residual block's 1x1 -> depthwise
  // -> 1x1, then never transpose.  Partition outputs and chained tensors
  // (ChainPatternConvs) are not planar.
  void AssignPlanar(std::map<int, ReportEntry>* entries) {
    std::set<int> planar;
    std::unordered_map<int, std::vector<const OpPlan*>> readers;
    for (const OpPlan& op : ops_) {
      readers[op.input].push_back(&op);
      if (op.kind == OpKind::kAdd) readers[op.input2].push_back(&op);
    }
    for (OpPlan& op : ops_) {
      if (op.fused) continue;  // writes nothing
      op.planar_input = planar.count(op.input) != 0;
      op.planar_input2 = op.kind == OpKind::kAdd && planar.count(op.input2) != 0;
      op.planar_output = false;
      op.output_leaves = outputs_.count(op.output) != 0;
      if (delegate_->kernels == nullptr || op.chain_next || op.output_leaves ||
          op.output_dims.size() != 4 || op.output_dims[0] != 1)
        continue;
      // A depthwise conv keeps the layout it is given: planar out only from
      // planar in (its NHWC kernel is the faster one between NHWC tensors).
      // So do a pool and a PAD (KeepsLayout).
      const bool produces = (op.kind == OpKind::kConv2D && op.use_pattern) ||
                            (op.kind == OpKind::kAdd && (op.planar_input || op.planar_input2)) ||
                            (KeepsLayout(op.kind) && op.planar_input);
      const auto r = readers.find(op.output);
      if (!produces || r == readers.end()) continue;
      bool all_planar = true;
      for (const OpPlan* q : r->second)
        all_planar = all_planar && ((q->kind == OpKind::kConv2D && q->use_pattern &&
                                     !q->phase_split && !q->input_packed) ||
                                    q->kind == OpKind::kAdd || q->kind == OpKind::kMean ||
                                    IsPool(q->kind) || q->kind == OpKind::kPad ||
                                    (q->kind == OpKind::kDepthwiseConv2D && q->dw_planar));
      if (!all_planar) continue;
      planar.insert(op.output);
      op.planar_output = true;
    }
    for (OpPlan& op : ops_) {
      if (op.fused) continue;
      ReportEntry& e = (*entries)[op.node_index];
      e.streamed_output = StreamsOutput(op);
      if (op.planar_output) {
        e.layout = "planar";
        if (op.kind == OpKind::kConv2D) e.keeps_layout = true;
      } else if (op.chain_next) {
        e.layout = "chained";
      }
      // (MEAN reads planes as they are: no buffer, and its output is 2-D.)
      const size_t n = op.kind != OpKind::kMean &&
                               (op.planar_output || op.planar_input || op.planar_input2)
                           ? static_cast<size_t>(op.output_dims[0]) * op.output_dims[1] *
                                 op.output_dims[2] * op.output_dims[3]
                           : 0;
      // An ADD whose operands' layouts differ converts one into a buffer.
      const bool add = op.kind == OpKind::kAdd;
      // ... and so does a planar result bound for NHWC of an op that keeps
      // its input's layout (a depthwise conv, a pool, a PAD).
      const bool planar_to_nhwc = KeepsLayout(op.kind) && op.planar_input && !op.planar_output;
      if (op.kind == OpKind::kDepthwiseConv2D && op.planar_input) {
        const bool blocks = DepthwiseBlocksApply(delegate_->kernels, op.shape);
        e.kernel = KernelName(delegate_->kernels,
                              blocks ? "dwconv2d_planar_channel_blocks" : "dwconv2d_planar");
        // Only the non-zero taps run; over blocks of channels, the union of
        // each block's taps for all its channels.
        e.executed_macs = int64_t(op.shape.batch) * op.shape.out_h * op.shape.out_w *
                          (blocks ? DepthwiseBlockTaps(op.depthwise) : op.depthwise.tap_begin.back());
        e.prefetch = DepthwisePrefetchesPlanes(delegate_->kernels, op.shape, delegate_->num_threads);
      }
      op.layout_tmp.assign((add && op.planar_input != op.planar_output) || planar_to_nhwc ? n : 0,
                           0.f);
      // (Both operands planar into an NHWC output: one buffer, the sum.)
      const bool sum_first = add && op.planar_input && op.planar_input2 && !op.planar_output;
      op.layout_tmp2.assign(add && !sum_first && op.planar_input2 != op.planar_output ? n : 0, 0.f);
      // A split conv that meets Inf/NaN runs the dense kernel into NHWC.
      if (op.phase_split && op.planar_output) op.layout_tmp.assign(n, 0.f);
    }
  }

  // Whether `op` writes its NHWC output with streaming stores (for
  // delegate_report()): a pattern conv itself, a planar op through the
  // PlanarToNhwc that Invoke calls for it.
  bool StreamsOutput(const OpPlan& op) const {
    if (op.kind == OpKind::kConv2D && op.use_pattern)
      return !op.planar_output && !op.chain_next &&
             StreamsNhwcOutput(delegate_->kernels, op.shape, op.pattern_scratch,
                               op.output_leaves);
    const bool through_planes =
        op.planar_input && !op.planar_output &&
        (op.kind == OpKind::kDepthwiseConv2D || IsPool(op.kind) || op.kind == OpKind::kPad ||
         (op.kind == OpKind::kAdd && op.planar_input2));
    int64_t floats = 1;
    for (int v : op.output_dims) floats *= v;
    return through_planes && StreamsNhwcImage(delegate_->kernels, floats, op.output_leaves);
  }

  // The generated code's figures for delegate_report().
  static void ReportJit(const PatternScratch& scratch, ReportEntry* e) {
    e->prefetch = false;  // (static kernels: the 1 MiB rule is generated code's)
    if (const JitKernel* k = scratch.jit.get()) {
      e->code_bytes = static_cast<int64_t>(k->code_bytes());
      e->generate_ms = k->generate_ms();
      e->jit_filters = k->layout().filters;
      e->jit_vectors = k->layout().vectors;
      e->jit_segments = k->layout().segments;
      e->jit_channel_parts = k->layout().channel_parts;
      e->prefetch = k->layout().prefetch_out_floats > 0;
      e->band_rows = scratch.band.rows;
    }
  }

  // An ADD of planar tensors, one of whose operands an in-place 1x1 conv
  // writes for it alone, is fused into that conv: its generated epilogue adds
  // the other operand (the residual, computed before the conv runs) after the
  // bias and clamps with the ADD's activation, and it writes the ADD's output.
  // The conv's own output is never written or read back, and the ADD's pass
  // over three tensors is gone (docs/engine.md section 32).  Only for a conv
  // with no activation of its own, whose code the generator can give the
  // residual (JitKernel::AddsResidual); otherwise the ADD runs as before.
  // Here the candidates (conv op -> its ADD op); RunInPlace generates their
  // in-place code with the residual and makes the fusion.
  std::map<size_t, size_t> AddFusions() {
    std::unordered_map<int, size_t> producer;
    for (size_t k = 0; k < ops_.size(); ++k) producer[ops_[k].output] = k;
    const auto fusable = [&](const OpPlan& c) {
      const JitKernel* k = c.pattern_scratch.jit.get();
      return c.kind == OpKind::kConv2D && c.use_pattern && !c.phase_split && !c.subsample &&
             !c.chain_next && !c.input_packed && c.planar_output && c.shape.batch == 1 &&
             c.shape.k_h == 1 && c.shape.k_w == 1 &&
             c.shape.act_min == -std::numeric_limits<float>::infinity() &&
             c.shape.act_max == std::numeric_limits<float>::infinity() && k != nullptr &&
             JitKernel::AddsResidual(k->layout().isa);
    };
    std::map<size_t, size_t> fusions;
    for (size_t j = 0; j < ops_.size(); ++j) {
      const OpPlan& add = ops_[j];
      if (add.kind != OpKind::kAdd || !add.planar_input || !add.planar_input2 ||
          !add.planar_output)
        continue;
      for (int side = 0; side < 2; ++side) {
        const int x = side == 0 ? add.input : add.input2, r = side == 0 ? add.input2 : add.input;
        const auto p = producer.find(x);
        if (x == r || p == producer.end() || p->second >= j || ReadByOtherThan(x, j) ||
            outputs_.count(x) || fusions.count(p->second))
          continue;
        // The residual must exist when the conv runs.
        const auto pr = producer.find(r);
        if ((pr != producer.end() && pr->second >= p->second) || !fusable(ops_[p->second]))
          continue;
        fusions[p->second] = j;
        break;
      }
    }
    return fusions;
  }

  // A 1x1 conv whose input or output is a planar tensor runs its generated
  // code on that tensor in place, where its map holds at least one register
  // tile (PatternTuning::planar_direct): the copies into and out of the
  // padded planes are most of such a layer's time.  Not for a conv whose
  // input another step writes (chained, phase split).  With an ADD to fuse
  // (AddFusions) the code is generated with the residual at once (each
  // generation is Prepare's time: ResNet-50's took 2.0 s with a third one).
  // Returns whether an ADD was fused (its operand's buffer is gone).
  bool RunInPlace(std::unordered_map<int, size_t>* internal_floats,
                  std::map<int, ReportEntry>* entries) {
    const std::map<size_t, size_t> fusions = AddFusions();
    bool fused_any = false;
    for (size_t k = 0; k < ops_.size(); ++k) {
      OpPlan& op = ops_[k];
      if (!InPlaceCandidate(op)) continue;
      ReportEntry& e = (*entries)[op.node_index];
      const std::string key_before = op.pattern_scratch.prepared_key;
      const double first_ms = e.generate_ms;
      // The code that runs now; each generation was Prepare's time.
      const auto report = [&] {
        if (op.pattern_scratch.prepared_key == key_before) return;
        ReportJit(op.pattern_scratch, &e);
        e.generate_ms += first_ms;
      };
      if (op.input_packed || !(op.planar_input || op.planar_output)) {
        // Not in place after all (a chained or NHWC input and an NHWC
        // output): the padded planes' code, with its row bands.
        op.tuning.planar_direct = false;
        PreparePatternConv(delegate_->kernels, op.shape, op.pattern, &op.pattern_scratch,
                           op.tuning);
        report();
        continue;
      }
      const auto f = fusions.find(k);
      OpPlan* add = f != fusions.end() ? &ops_[f->second] : nullptr;
      PatternTuning t = op.tuning;
      t.planar_direct = true;
      ConvShape shape = op.shape;
      if (add != nullptr) {
        t.residual_epilogue = true;
        // The output may take the residual's buffer (ShareInternalBuffers)
        // when nothing after the ADD reads the residual, the conv does not
        // read it as its input, and the map's last partial tile runs in the
        // same pass (AVX-512: its lanes over the tile before are masked) or
        // there is none (AVX2: the map a whole number of vectors; with a
        // wider tile, generated later, the buffers stay apart).
        const int r = add->input == op.output ? add->input2 : add->input;
        const JitKernel* before = op.pattern_scratch.jit.get();
        const int64_t plane = static_cast<int64_t>(op.shape.out_h) * op.shape.out_w;
        t.residual_first = before != nullptr &&
                           (before->FusesTail() || plane % JitLanes(before->layout().isa) == 0) &&
                           r != op.input &&
                           internal_floats->count(r) && !outputs_.count(r) &&
                           !ReadAfter(r, k, f->second);
        shape.act_min = add->act_min;
        shape.act_max = add->act_max;
      }
      PreparePatternConv(delegate_->kernels, shape, op.pattern, &op.pattern_scratch, t);
      const JitKernel* code = op.pattern_scratch.jit.get();
      if (!op.pattern_scratch.geometry.direct) {  // a map smaller than a tile
        op.tuning.planar_direct = false;
        PreparePatternConv(delegate_->kernels, op.shape, op.pattern, &op.pattern_scratch,
                           op.tuning);
        report();
        continue;
      }
      if (add != nullptr && (code == nullptr || !code->layout().residual)) {
        // (Not expected: AddFusions asked the generator.)  In place, no ADD.
        add = nullptr;
        t.residual_epilogue = t.residual_first = false;
        shape = op.shape;
        PreparePatternConv(delegate_->kernels, shape, op.pattern, &op.pattern_scratch, t);
      }
      op.tuning = t;
      e.in_place = true;
      report();
      if (add == nullptr) continue;
      op.shape = shape;
      op.residual = add->input == op.output ? add->input2 : add->input;
      op.write_to = add->output;
      add->fused = true;
      internal_floats->erase(op.output);
      (*entries)[add->node_index].layout = "fused into node " + std::to_string(op.node_index);
      fused_any = true;
    }
    return fused_any;
  }

  // The pattern kernel's knobs for this layer at its now-known geometry:
  // from the tuning cache, or tuned now (tune=on), or the built-in default.
  void ChooseTuning(OpPlan* op) {
    ChooseTuningKnobs(op);
    // A split conv's input is phase-split straight into the whole-image
    // padded planes (PackPhaseSplitInput), not into row bands or a small
    // map's vectors.
    if (op->phase_split) {
      op->tuning.jit_band_rows = -1;
      op->tuning.static_small_map = -1;
    }
  }

  void ChooseTuningKnobs(OpPlan* op) {
    const DelegateOptions& o = delegate_->options;
    op->tuning = PatternTuning();
    op->tuning.jit = delegate_->jit;
    op->tuning_source = "default";
    if (o.tune == "off" || delegate_->kernels == nullptr) return;
    if (delegate_->tuning_cache == nullptr)
      delegate_->tuning_cache.reset(
          new TuningCache(o.tune_cache.empty() ? DefaultTuningCachePath() : o.tune_cache));
    const std::string key = TuningKey(delegate_->kernels, delegate_->num_threads, op->shape,
                                      op->pattern, delegate_->jit);
    if (delegate_->tuning_cache->Lookup(key, &op->tuning)) {
      op->tuning_source = "cached";
      return;
    }
    if (o.tune != "on") return;
    const TuneResult r = TunePatternConv(delegate_->kernels, op->shape, op->pattern,
                                         delegate_->pool.get(), o.tune_budget_ms, delegate_->jit);
    op->tuning = r.tuning;
    op->tuning_source = "tuned";
    delegate_->tuning_cache->Put(key, r.tuning, r.best_ms);
    cache_dirty_ = true;
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "node %d: tuned jit=%s jit_filters=%d jit_vectors=%d chunk_channels=%d "
                  "tile_vectors=%d: %.3f ms (default %.3f ms, %d candidates)",
                  op->node_index, JitIsaName(r.tuning.jit), r.tuning.jit_filters,
                  r.tuning.jit_vectors, r.tuning.chunk_channels, r.tuning.tile_vectors, r.best_ms,
                  r.default_ms, r.candidates);
    delegate_->Log(buf);
  }

  TfLiteStatus InvokeGpu(TfLiteContext* ctx) {
    const bool profile = delegate_->options.profile;
    std::map<int, double> ms;
    const std::string why = gpu_->Invoke(delegate_, ctx, ops_, profile ? &ms : nullptr);
    if (!why.empty()) {
      ctx->ReportError(ctx, "cocopie: backend=gpu: %s", why.c_str());
      return kTfLiteError;
    }
    if (profile) {
      std::lock_guard<std::mutex> lock(delegate_->report_mu);
      for (auto& kv : ms) {
        ReportEntry& e = delegate_->report[kv.first];
        e.invokes += 1;
        e.total_ms += kv.second;  // device time from OpenCL profiling events
      }
    }
    return kTfLiteOk;
  }

  TfLiteStatus Invoke(TfLiteContext* ctx) {
    if (gpu_ != nullptr) return InvokeGpu(ctx);
    const bool profile = delegate_->options.profile;
    // Set when a chained split conv met Inf/NaN and ran the dense kernel: it
    // wrote its NHWC output, so the next op packs its own input this time.
    bool wrote_nhwc = false;
    for (size_t k = 0; k < ops_.size(); ++k) {
      OpPlan& op = ops_[k];
      if (op.fused) continue;  // a PAD the next pool reads through
      const bool prev_wrote_nhwc = wrote_nhwc;
      wrote_nhwc = false;
      const auto t0 = std::chrono::steady_clock::now();
      const float* in = Data(ctx, op.input);
      float* out = Data(ctx, op.write_to >= 0 ? op.write_to : op.output);
      if (in == nullptr || out == nullptr) {
        ctx->ReportError(ctx, "cocopie: node %d: tensor has no data", op.node_index);
        return kTfLiteError;
      }
      ThreadPool* pool = delegate_->pool.get();
      const KernelSet* set = delegate_->kernels;
      switch (op.kind) {
        case OpKind::kConv2D:
          if (op.use_pattern) {
            PatternNext next{};
            if (op.chain_next) {
              OpPlan& n = ops_[k + 1];
              next = PatternNext{&n.shape, &n.pattern, &n.tuning, &n.pattern_scratch};
            }
            const float* src = in;
            bool packed = op.input_packed && !prev_wrote_nhwc;
            if (op.phase_split) {
              // Batch 1 splits straight into the engine's padded planes,
              // larger batches into a buffer the engine then packs.
              const bool into_planes = op.shape.batch == 1;
              if (into_planes)
                PreparePatternConv(set, op.shape, op.pattern, &op.pattern_scratch, op.tuning);
              const bool non_finite =
                  into_planes
                      ? PackPhaseSplitInput(set, op.strided_shape, in, &op.pattern_scratch, pool)
                      : PhaseSplitInput(op.strided_shape, in, op.split_input.data(), pool);
              if (non_finite) {
                // Inf or NaN in the input: the unsplit dense kernel keeps
                // stock TFLite's 0 x Inf products window by window.
                const ConvShape& ss = op.strided_shape;
                if (op.planar_output) {
                  RunConv2D(set, ss, op.conv, op.filter_data, in, op.layout_tmp.data(), pool);
                  NhwcToPlanar(set, ss.out_h, ss.out_w, ss.out_c, op.layout_tmp.data(), out, pool);
                  break;
                }
                RunConv2D(set, ss, op.conv, op.filter_data, in, out, pool);
                wrote_nhwc = true;
                break;
              }
              if (into_planes) packed = true;
              else src = op.split_input.data();
            }
            if (op.subsample) {
              // Every stride-th pixel, in the input's own layout.
              SubsampleInput(op.strided_shape, op.planar_input, in, op.subsampled.data(), pool);
              src = op.subsampled.data();
            }
            PatternIo io;
            io.input_packed = packed;
            io.next = op.chain_next ? &next : nullptr;
            if (op.planar_input && !packed) io.planar_input = src;
            if (op.planar_output) io.planar_output = out;
            io.output_leaves = op.output_leaves;
            if (op.residual >= 0) {  // a fused ADD (AddFusions)
              io.residual = Data(ctx, op.residual);
              if (io.residual == nullptr) {
                ctx->ReportError(ctx, "cocopie: node %d: tensor has no data", op.node_index);
                return kTfLiteError;
              }
            }
            RunPatternConv(set, op.shape, op.pattern, &op.pattern_scratch, src, out, pool,
                           op.tuning, io);
          } else
            RunConv2D(set, op.shape, op.conv, op.filter_data, in, out, pool);
          break;
        case OpKind::kDepthwiseConv2D:
          if (op.planar_input) {  // between planar neighbours (AssignPlanar)
            float* dst = op.planar_output ? out : op.layout_tmp.data();
            RunDepthwisePlanar(set, op.shape, op.depthwise, in, dst, pool);
            if (!op.planar_output)
              PlanarToNhwc(set, op.shape.out_h, op.shape.out_w, op.shape.out_c, dst, out, pool,
                           op.output_leaves);
          } else {
            RunDepthwise(set, op.shape, op.depthwise, in, out, pool);
          }
          break;
        case OpKind::kFullyConnected:
          RunFullyConnected(set, op.fc_batch, op.fc, op.act_min, op.act_max, in, out, pool);
          break;
        case OpKind::kAdd: {
          const float* a = in;
          const float* b = Data(ctx, op.input2);
          if (b == nullptr) {
            ctx->ReportError(ctx, "cocopie: node %d: tensor has no data", op.node_index);
            return kTfLiteError;
          }
          // An operand in the other layout is converted first (the
          // partition's first block: its shortcut comes in as NHWC).
          const std::vector<int>& d = op.output_dims;
          const auto convert = [&](const float* x, bool planar, std::vector<float>* tmp) {
            if (planar == op.planar_output) return x;
            if (op.planar_output) NhwcToPlanar(set, d[1], d[2], d[3], x, tmp->data(), pool);
            else PlanarToNhwc(set, d[1], d[2], d[3], x, tmp->data(), pool);
            return static_cast<const float*>(tmp->data());
          };
          int64_t n = 1;
          for (int v : d) n *= v;
          if (op.planar_input && op.planar_input2 && !op.planar_output) {
            // Both operands planar (a stage's last block): add the planes,
            // then one transpose instead of one per operand (ResNet-50 224,
            // 1 thread: 1.1-1.6 -> 0.6 ms at 56x56x256, 0.5 -> 0.3 ms at
            // 28x28x512).
            RunAdd(n, a, b, op.act_min, op.act_max, op.layout_tmp.data(), pool);
            PlanarToNhwc(set, d[1], d[2], d[3], op.layout_tmp.data(), out, pool,
                         op.output_leaves);
            break;
          }
          a = convert(a, op.planar_input, &op.layout_tmp);
          b = convert(b, op.planar_input2, &op.layout_tmp2);
          RunAdd(n, a, b, op.act_min, op.act_max, out, pool);
          break;
        }
        case OpKind::kMean:  // planar input: batch 1, a plane per channel
          RunSpatialMean(op.shape.batch, int64_t(op.shape.in_h) * op.shape.in_w, op.shape.in_c,
                         op.planar_input, in, out, pool);
          break;
        case OpKind::kMaxPool:
        case OpKind::kAvgPool: {
          const bool max = op.kind == OpKind::kMaxPool;
          if (set == nullptr) {  // kernels=reference
            Pool2DReference(max, op.shape, in, out);
          } else if (op.planar_input) {  // keeps the layout it is given (AssignPlanar)
            float* dst = op.planar_output ? out : op.layout_tmp.data();
            RunPool2D(set, max, op.shape, true, op.zero_border, in, dst, pool);
            if (!op.planar_output)
              PlanarToNhwc(set, op.shape.out_h, op.shape.out_w, op.shape.out_c, dst, out, pool,
                           op.output_leaves);
          } else {
            RunPool2D(set, max, op.shape, false, op.zero_border, in, out, pool);
          }
          break;
        }
        case OpKind::kPad:
          if (op.planar_input) {  // keeps the layout it is given (AssignPlanar)
            float* dst = op.planar_output ? out : op.layout_tmp.data();
            RunSpatialPad(op.pad, true, in, dst, pool);
            if (!op.planar_output)
              PlanarToNhwc(set, op.pad.out_h(), op.pad.out_w(), op.pad.channels, dst, out, pool,
                           op.output_leaves);
          } else {
            RunSpatialPad(op.pad, false, in, out, pool);
          }
          break;
      }
      if (profile) {
        const double ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count();
        std::lock_guard<std::mutex> lock(delegate_->report_mu);
        ReportEntry& e = delegate_->report[op.node_index];
        e.invokes += 1;
        e.total_ms += ms;
      }
    }
    return kTfLiteOk;
  }

 private:
  float* Data(TfLiteContext* ctx, int tensor) {
    const auto it = internal_.find(tensor);
    if (it != internal_.end()) return it->second;
    return ctx->tensors[tensor].data.f;
  }

  // Whether ops_[k], a conv with a fused ADD, may write the ADD's output over
  // its residual: each output value replaces the residual value its epilogue
  // has just read, so no line is fetched only to be overwritten.  Not when
  // anything reads the residual later, when it is the conv's input (other
  // filter blocks still read it), or when the map's last partial tile runs
  // in a call of its own (it reads the residual again at positions already
  // written; the same-pass tail masks those lanes out).
  bool OverwritesResidual(size_t k, const std::unordered_map<int, size_t>& last_read) const {
    const OpPlan& op = ops_[k];
    if (op.residual < 0 || op.write_to < 0 || op.residual == op.input || outputs_.count(op.residual))
      return false;
    const auto r = last_read.find(op.residual);
    if (r == last_read.end() || r->second <= k || ops_[r->second].kind != OpKind::kAdd ||
        !ops_[r->second].fused || ops_[r->second].output != op.write_to)
      return false;
    const JitKernel* code = op.pattern_scratch.jit.get();
    return code != nullptr && code->layout().residual_first &&
           (code->FusesTail() || op.pattern_scratch.geometry.direct_tail == 0);
  }

  // Gives each internal tensor (floats per tensor in `floats`) a buffer that
  // it shares with tensors not alive at the same time, as the runtime's own
  // arena does for the tensors it owns.  A tensor is alive from the op that
  // writes it to its last reader; an op's output never shares its inputs'
  // buffer.  One buffer per tensor made MobileNetV2's intermediate tensors
  // alone about as large as the L3 cache, so every inference fetched the
  // generated code and the activations from DRAM.
  void ShareInternalBuffers(const std::unordered_map<int, size_t>& floats,
                            std::map<int, ReportEntry>* entries) {
    std::unordered_map<int, size_t> last_read;
    for (size_t k = 0; k < ops_.size(); ++k) {
      last_read[ops_[k].input] = k;
      if (ops_[k].kind == OpKind::kAdd) last_read[ops_[k].input2] = k;
    }
    std::vector<size_t> capacity;       // floats per slot
    std::vector<int> free_slots;        // slots no live tensor holds
    std::unordered_map<int, int> slot;  // tensor -> slot
    std::set<int> handed_on;            // residuals whose slot a fused conv's output took
    for (size_t k = 0; k < ops_.size(); ++k) {
      // A conv with a fused ADD writes the ADD's output (AddFusions).
      const int written = ops_[k].write_to >= 0 ? ops_[k].write_to : ops_[k].output;
      const auto f = floats.find(written);
      if (f != floats.end() && !slot.count(f->first) && OverwritesResidual(k, last_read) &&
          slot.count(ops_[k].residual)) {
        slot[written] = slot[ops_[k].residual];
        capacity[slot[written]] = std::max(capacity[slot[written]], f->second);
        handed_on.insert(ops_[k].residual);
        (*entries)[ops_[last_read[ops_[k].residual]].node_index].layout +=
            ", its output written over the residual";
      } else if (f != floats.end() && !slot.count(f->first)) {
        // Best fit: the smallest free slot that holds it, else the largest
        // free one grown, else a new one.
        int fit = -1, largest = -1;
        for (int s : free_slots) {
          if (capacity[s] >= f->second && (fit < 0 || capacity[s] < capacity[fit])) fit = s;
          if (largest < 0 || capacity[s] > capacity[largest]) largest = s;
        }
        int best = fit >= 0 ? fit : largest;
        if (best < 0) {
          best = static_cast<int>(capacity.size());
          capacity.push_back(0);
        } else {
          free_slots.erase(std::find(free_slots.begin(), free_slots.end(), best));
        }
        capacity[best] = std::max(capacity[best], f->second);
        slot[f->first] = best;
      }
      // Free what this op read for the last time (and its output, if
      // nothing reads it), now that its output holds a slot.
      for (int t : {ops_[k].input, ops_[k].kind == OpKind::kAdd ? ops_[k].input2 : -1, written}) {
        const auto s = slot.find(t);
        const auto r = last_read.find(t);
        const bool done = r == last_read.end() ? t == written : r->second == k;
        if (s != slot.end() && done && !handed_on.count(t) &&
            std::find(free_slots.begin(), free_slots.end(), s->second) == free_slots.end())
          free_slots.push_back(s->second);
      }
    }
    slots_.assign(capacity.size(), LineFloats());
    for (size_t s = 0; s < capacity.size(); ++s) slots_[s].assign(capacity[s], 0.f);
    internal_.clear();
    for (const auto& kv : slot) internal_[kv.first] = slots_[kv.second].data();
    for (const OpPlan& op : ops_) {
      const auto it = slot.find(op.write_to >= 0 ? op.write_to : op.output);
      if (it == slot.end()) continue;
      ReportEntry& e = (*entries)[op.node_index];
      e.buffer_slot = it->second;
      e.buffer_bytes = static_cast<int64_t>(capacity[it->second] * sizeof(float));
    }
  }

  Delegate* delegate_;
  std::vector<OpPlan> ops_;
  std::vector<int> node_input_;  // per op: its node's input tensor (ops_[k].input may be rewired)
  std::set<int> outputs_;
  // Line-aligned: generated 1x1 code reads and writes planar tensors here in
  // place, in whole 64-byte lines (docs/engine.md section 21).
  std::vector<LineFloats> slots_;
  std::unordered_map<int, float*> internal_;  // internal tensor -> its slot
  bool cache_dirty_ = false;
  std::unique_ptr<GpuPartition> gpu_;  // backend=gpu
};

// No C++ exception may cross into the runtime's C callbacks: a hostile file
// can ask for tensors larger than memory, so std::bad_alloc becomes an error
// status with a message (and the runtime's Python layer a RuntimeError).
template <typename F>
TfLiteStatus Guarded(TfLiteContext* ctx, const char* what, F&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    ctx->ReportError(ctx, "cocopie: %s: out of memory (a tensor or scratch buffer is larger "
                     "than this process can allocate)", what);
  } catch (const std::exception& e) {
    ctx->ReportError(ctx, "cocopie: %s: %s", what, e.what());
  }
  return kTfLiteError;
}

void* PartitionInitUnguarded(TfLiteContext* ctx, const char* buffer) {
  const auto* params = reinterpret_cast<const TfLiteDelegateParams*>(buffer);
  Delegate* delegate = FromTfLite(params->delegate);
  std::vector<OpPlan> ops;
  for (int node_index : Dims(params->nodes_to_replace)) {
    TfLiteNode* node = nullptr;
    TfLiteRegistration* reg = nullptr;
    if (ctx->GetNodeAndRegistration(ctx, node_index, &node, &reg) != kTfLiteOk) return nullptr;
    const PatternRecord* record =
        node->inputs->size > 1 ? delegate->RecordFor(node_index, node->inputs->data[1]) : nullptr;
    // The GPU backend builds its own plans from the weights (any stride,
    // no phase split); the CPU's pattern plans would be unused memory.
    ops.push_back(BuildPlan(ctx, node_index, node, reg, delegate->kernels,
                            delegate->options.pattern_kernels && delegate->gpu == nullptr,
                            record, delegate->jit_isa()));
    // An FC fed by a ReLU: half its inputs are zero, whose weights the
    // by-input kernel never reads (PackFullyConnected).  kernels=reference
    // reads the model's rows: nothing to pack there.
    OpPlan& op = ops.back();
    if (op.kind == OpKind::kFullyConnected && delegate->gpu == nullptr &&
        delegate->kernels != nullptr && delegate->fcs_after_relu.count(node_index))
      op.fc = PackFullyConnected(op.filter_data, op.out_c, op.in_c, op.bias_data, true);
    if (record != nullptr)
      delegate->Log("node " + std::to_string(node_index) + ": metadata " + ops.back().metadata);
  }
  return new Partition(delegate, std::move(ops), params->output_tensors);
}

void* PartitionInit(TfLiteContext* ctx, const char* buffer, size_t) {
  void* partition = nullptr;
  Guarded(ctx, "building the node plans", [&] {
    partition = PartitionInitUnguarded(ctx, buffer);
    return kTfLiteOk;
  });
  return partition;  // null: PartitionPrepare reports the failure
}

void PartitionFree(TfLiteContext*, void* buffer) { delete static_cast<Partition*>(buffer); }

TfLiteStatus PartitionPrepare(TfLiteContext* ctx, TfLiteNode* node) {
  if (node->user_data == nullptr) {
    ctx->ReportError(ctx, "cocopie: delegate partition failed to initialise");
    return kTfLiteError;
  }
  return Guarded(ctx, "prepare", [&] { return static_cast<Partition*>(node->user_data)->Prepare(ctx); });
}

TfLiteStatus PartitionInvoke(TfLiteContext* ctx, TfLiteNode* node) {
  return Guarded(ctx, "invoke", [&] { return static_cast<Partition*>(node->user_data)->Invoke(ctx); });
}

TfLiteStatus DelegatePrepareUnguarded(TfLiteContext* ctx, TfLiteDelegate* base);

TfLiteStatus DelegatePrepare(TfLiteContext* ctx, TfLiteDelegate* base) {
  return Guarded(ctx, "choosing nodes", [&] { return DelegatePrepareUnguarded(ctx, base); });
}

TfLiteStatus DelegatePrepareUnguarded(TfLiteContext* ctx, TfLiteDelegate* base) {
  Delegate* d = FromTfLite(base);
  if (d->pool == nullptr) {
    d->num_threads = d->options.num_threads > 0        ? d->options.num_threads
                     : ctx->recommended_num_threads > 0 ? ctx->recommended_num_threads
                                                        : 1;
    d->pool.reset(new ThreadPool(
        d->num_threads,
        d->options.spin_us >= 0 ? d->options.spin_us : ThreadPool::kDefaultSpinUs,
        d->options.pin_threads));
  }
  {
    std::lock_guard<std::mutex> lock(d->report_mu);
    d->report.clear();
  }
  d->records.clear();
  const char* meta = nullptr;
  size_t meta_size = 0;
  if (ctx->GetModelMetadata != nullptr &&
      ctx->GetModelMetadata(ctx, "cocopie", &meta, &meta_size) == kTfLiteOk && meta != nullptr) {
    std::string why;
    if (ParseMetadata(reinterpret_cast<const uint8_t*>(meta), meta_size, &d->records, &why))
      d->Log("cocopie metadata: " + std::to_string(d->records.size()) + " records");
    else
      d->Log("ignoring cocopie metadata: " + why);  // fall back to the weights
  }
  TfLiteIntArray* plan = nullptr;
  if (ctx->GetExecutionPlan(ctx, &plan) != kTfLiteOk) return kTfLiteError;
  std::vector<int> supported;
  std::map<int, std::string> why_not;
  std::map<int, int> builtin;  // node -> builtin code
  for (int node_index : Dims(plan)) {
    TfLiteNode* node = nullptr;
    TfLiteRegistration* reg = nullptr;
    if (ctx->GetNodeAndRegistration(ctx, node_index, &node, &reg) != kTfLiteOk) return kTfLiteError;
    builtin[node_index] = reg->builtin_code;
    const std::string why = d->gpu != nullptr ? CheckSupportedOnGpu(ctx, node, reg)
                                               : CheckSupported(ctx, node, reg);
    if (why.empty()) supported.push_back(node_index);
    else why_not[node_index] = why;
  }
  supported = SupportedIfShapesAgree(ctx, Dims(plan), supported, &why_not);
  d->fcs_after_relu = FcsAfterRelu(ctx, Dims(plan));
  // The GPU backend takes every node it supports: the point is to run the
  // model on the device, and each node left to TFLite's CPU kernels would
  // cut the partition and cost two transfers.  claim=auto on the CPU weighs
  // the graph (ops.h: ChooseClaims).
  const std::vector<int> claimed =
      d->options.claim_all || d->gpu != nullptr
          ? supported
          : ChooseClaims(ctx, Dims(plan), supported,
                         d->options.pattern_kernels ? d->kernels : nullptr, d->jit_isa(),
                         &why_not);
  const std::set<int> claimed_set(claimed.begin(), claimed.end());
  for (int node_index : Dims(plan)) {
    const int code = builtin[node_index];
    if (claimed_set.count(node_index))
      d->Log("claims node " + std::to_string(node_index));
    else if (code == kTfLiteBuiltinConv2d || code == kTfLiteBuiltinDepthwiseConv2d ||
             code == kTfLiteBuiltinFullyConnected || code == kTfLiteBuiltinAdd)
      d->Log("leaves node " + std::to_string(node_index) + " to TFLite: " + why_not[node_index]);
  }
  d->Log("claimed " + std::to_string(claimed.size()) + " nodes, " +
         (d->gpu != nullptr ? "on " + d->gpu->info().ToString()
                            : std::to_string(d->num_threads) + " threads, kernels " +
                                  KernelName(d->kernels, "*")));
  if (claimed.empty()) return kTfLiteOk;

  TfLiteRegistration reg{};
  reg.init = PartitionInit;
  reg.free = PartitionFree;
  reg.prepare = PartitionPrepare;
  reg.invoke = PartitionInvoke;
  reg.builtin_code = kBuiltinDelegate;
  reg.custom_name = "CocopieDelegate";
  reg.version = 1;
  TfLiteIntArray* nodes = NewIntArray(claimed);
  if (nodes == nullptr) return kTfLiteError;
  const TfLiteStatus status = ctx->ReplaceNodeSubsetsWithDelegateKernels(ctx, reg, nodes, base);
  std::free(nodes);
  return status;
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

void Delegate::Log(const std::string& msg) const {
  if (options.verbose) std::fprintf(stderr, "cocopie: %s\n", msg.c_str());
}

std::string Delegate::ReportJson() {
  std::lock_guard<std::mutex> lock(report_mu);
  std::string s = "[";
  for (const auto& kv : report) {
    const ReportEntry& e = kv.second;
    if (s.size() > 1) s += ",";
    s += "{\"node_index\":" + std::to_string(e.node_index) + ",\"op\":\"" + JsonEscape(e.op) +
         "\",\"kernel\":\"" + JsonEscape(e.kernel) +
         "\",\"dense_macs\":" + std::to_string(e.dense_macs) +
         ",\"executed_macs\":" + std::to_string(e.executed_macs) +
         ",\"patterns\":" + std::to_string(e.patterns) + ",\"metadata\":\"" +
         JsonEscape(e.metadata) + "\",\"device\":\"" + e.device + "\"";
    if (e.device == "cpu")
      s += ",\"layout\":\"" + e.layout + "\",\"buffer_slot\":" + std::to_string(e.buffer_slot) +
           ",\"buffer_bytes\":" + std::to_string(e.buffer_bytes) +
           ",\"streamed_output\":" + (e.streamed_output ? "true" : "false") +
           ",\"prefetch\":" + (e.prefetch ? "true" : "false");
    if (!e.gpu_device.empty()) s += ",\"gpu_device\":\"" + JsonEscape(e.gpu_device) + "\"";
    if (e.device == "gpu") {
      char buf[64];
      std::snprintf(buf, sizeof buf, ",\"build_ms\":%.6g", e.build_ms);
      s += ",\"engine\":\"" + e.engine + "\",\"program_cache\":\"" + JsonEscape(e.program_cache) +
           "\",\"code_bytes\":" + std::to_string(e.code_bytes) + buf;
    } else if (e.op == "CONV_2D" && e.kernel.find("pattern") != std::string::npos)
      s += ",\"tuning\":\"" + e.tuning + "\",\"chunk_channels\":" +
           std::to_string(e.chunk_channels) + ",\"tile_vectors\":" +
           std::to_string(e.tile_vectors) +
           ",\"keeps_layout\":" + (e.keeps_layout ? "true" : "false") + ",\"engine\":\"" +
           JsonEscape(e.engine) + "\",\"jit_error\":\"" + JsonEscape(e.jit_error) +
           "\",\"code_bytes\":" + std::to_string(e.code_bytes) +
           ",\"generate_ms\":" + std::to_string(e.generate_ms) +
           ",\"jit_filters\":" + std::to_string(e.jit_filters) +
           ",\"jit_vectors\":" + std::to_string(e.jit_vectors) +
           ",\"jit_segments\":" + std::to_string(e.jit_segments) +
           ",\"jit_channel_parts\":" + std::to_string(e.jit_channel_parts) +
           ",\"band_rows\":" + std::to_string(e.band_rows) +
           ",\"small_map\":" + (e.small_map ? "true" : "false") +
           ",\"pair_map\":" + (e.pair_map ? "true" : "false") +
           ",\"in_place\":" + (e.in_place ? "true" : "false");
    if (options.profile) {
      char buf[96];
      std::snprintf(buf, sizeof buf, ",\"invokes\":%lld,\"mean_ms\":%.6g",
                    static_cast<long long>(e.invokes),
                    e.invokes ? e.total_ms / static_cast<double>(e.invokes) : 0.0);
      s += buf;
    }
    s += "}";
  }
  return s + "]";
}

const PatternRecord* Delegate::RecordFor(int node_index, int filter_tensor) const {
  for (const PatternRecord& r : records)
    if (r.subgraph == 0 && int64_t(r.op_index) == node_index &&
        int64_t(r.filter_tensor) == filter_tensor)
      return &r;
  return nullptr;
}

Delegate* FromTfLite(TfLiteDelegate* d) { return static_cast<Delegate*>(d->data_); }

namespace {
// Live delegates, so the C API can refuse a handle that is not one of ours
// (another runtime's delegate passed to CocopieDelegateReport) instead of
// reading it as ours.
std::mutex live_mu;
std::set<const TfLiteDelegate*>& Live() {
  static auto* live = new std::set<const TfLiteDelegate*>;
  return *live;
}
}  // namespace

bool IsCocopieDelegate(const TfLiteDelegate* d) {
  std::lock_guard<std::mutex> lock(live_mu);
  return d != nullptr && Live().count(d) != 0;
}

Delegate* CreateDelegate(const DelegateOptions& options, std::string* error) {
  std::string why;
  const KernelSet* kernels = SelectKernelSet(options.kernel, &why);
  if (!why.empty()) {
    *error = "option 'kernel': " + why;
    return nullptr;
  }
  std::unique_ptr<gpu::Runtime> gpu;
  std::string gpu_why;
  if (options.backend == "gpu") {
    gpu = gpu::Runtime::Create(options.gpu_device, options.profile, &gpu_why);
    if (gpu == nullptr && options.gpu_fallback != "cpu") {
      *error = "backend=gpu: " + gpu_why + " (set gpu_fallback=cpu to run on the CPU instead)";
      return nullptr;
    }
  }
  auto* d = new Delegate();
  d->options = options;
  d->gpu = std::move(gpu);
  if (options.backend == "gpu" && d->gpu == nullptr) {
    d->gpu_fallback_reason = gpu_why;
    d->Log("backend=gpu unavailable, running on the CPU (gpu_fallback=cpu): " + gpu_why);
  }
  d->kernels = kernels;
  ParseJitIsa(options.jit, &d->jit);  // validated by ParseDelegateOptions
  d->base.data_ = d;
  d->base.Prepare = DelegatePrepare;
  // Prepare re-derives shapes, so inputs may be resized after delegation.
  d->base.flags = kTfLiteDelegateFlagsAllowDynamicTensors;
  std::lock_guard<std::mutex> lock(live_mu);
  Live().insert(&d->base);
  return d;
}

void DestroyDelegate(Delegate* delegate) {
  if (delegate == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(live_mu);
    Live().erase(&delegate->base);
  }
  delete delegate;
}

}  // namespace cocopie
