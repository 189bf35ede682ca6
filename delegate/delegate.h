// The cocopie TFLite delegate: claims supported nodes, groups them into
// partitions and runs them with the kernels from cc/.
#ifndef COCOPIE_DELEGATE_DELEGATE_H_
#define COCOPIE_DELEGATE_DELEGATE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "cc/gpu/runtime.h"
#include "cc/kernels/dispatch.h"
#include "cc/kernels/jit_pattern.h"
#include "cc/kernels/tuning.h"
#include "delegate/metadata.h"
#include "delegate/options.h"
#include "delegate/tflite_abi.h"

namespace cocopie {

// One claimed node, as shown by delegate_report().
struct ReportEntry {
  int node_index = -1;
  std::string op;
  std::string kernel;
  int64_t dense_macs = 0;
  int64_t executed_macs = 0;
  int patterns = 0;  // distinct non-zero kernel masks (conv only)
  std::string metadata = "none";
  std::string tuning = "default";  // pattern kernel knobs: default | cached | tuned
  int chunk_channels = 0, tile_vectors = 0;
  bool keeps_layout = false;  // a pattern conv's output stays in channel planes
  // The output's layout on the CPU: "nhwc", "chained" (written into the next
  // pattern conv's padded input) or "planar" (plain CHW planes, dispatch.h).
  std::string layout = "nhwc";
  // CPU: the partition buffer its output lives in (-1: a tensor the runtime
  // owns, such as the partition's outputs) and that buffer's size.  Tensors
  // whose lifetimes do not overlap share a buffer.
  int buffer_slot = -1;
  int64_t buffer_bytes = 0;
  // Pattern convs: what runs them ("jit_avx512", "jit_avx2_fma" or the static
  // set's ISA), and for generated code its size, generation time and tile.
  std::string engine;
  std::string jit_error;  // why code was not generated, if it was wanted
  int64_t code_bytes = 0;
  double generate_ms = 0;
  int jit_filters = 0, jit_vectors = 0;
  int64_t jit_segments = 0;  // code segments over all filter blocks
  int jit_channel_parts = 0; // ranges of output channels its blocks keep apart (JitLayout)
  int band_rows = 0;         // output rows per band (0: the whole image at once)
  bool small_map = false;    // the static small-map kernel runs (maps of <= 16 positions)
  bool pair_map = false;     // the static pair-map kernel runs (8-wide maps up to 8x8)
  // A 1x1 conv's generated code reads its planar input and writes its
  // planar output in place, no copies (PatternGeometry::direct).
  bool in_place = false;
  // The kernel asks for a tensor of at least 1 MiB ahead of use: a depthwise
  // conv for the next channel's planes, generated code for its output lines
  // (cc/kernels/dispatch.cc, kFarTensorBytes).  A banded conv's own
  // read-ahead of its next band (PrefetchQueue) is not this.
  bool prefetch = false;
  // The node's NHWC output leaves the partition through streaming stores
  // (large outputs only; cc/kernels/dispatch.h, StreamsNhwcImage).
  bool streamed_output = false;
  // Where the node ran: "cpu" or "gpu"; for the GPU backend the device, the
  // program cache's answer ("hit", "stored", "rebuilt (...)", "off"), the
  // build time and the generated source's size (code_bytes).
  std::string device = "cpu";
  std::string gpu_device, program_cache;
  double build_ms = 0;
  int64_t invokes = 0;    // with profile=true: runs timed so far
  double total_ms = 0.0;  // and their summed wall time
};

struct Delegate {
  TfLiteDelegate base{};  // handed to the runtime; base.data_ points here
  DelegateOptions options;
  const KernelSet* kernels = nullptr;  // null: reference kernels
  JitIsa jit = JitIsa::kAuto;          // requested pattern-conv engine (options.jit)
  // The generator that will run pattern convs (kNone: static kernels).
  JitIsa jit_isa() const {
    std::string why;
    return ResolveJitIsa(kernels, jit, &why);
  }
  std::unique_ptr<ThreadPool> pool;
  int num_threads = 1;
  // backend=gpu: the OpenCL device (null: CPU backend, or the GPU was
  // unavailable and gpu_fallback=cpu, then gpu_fallback_reason says why).
  std::unique_ptr<gpu::Runtime> gpu;
  std::string gpu_fallback_reason;

  // The converter's records for the graph being delegated (empty if none or
  // if they failed to parse).
  std::vector<PatternRecord> records;
  const PatternRecord* RecordFor(int node_index, int filter_tensor) const;

  // FULLY_CONNECTED nodes whose input a ReLU wrote (FcsAfterRelu): their
  // weights are packed by input.
  std::set<int> fcs_after_relu;

  // Loaded on first use when options.tune != off.
  std::unique_ptr<TuningCache> tuning_cache;

  std::mutex report_mu;
  std::map<int, ReportEntry> report;  // by node index, last applied graph

  void Log(const std::string& msg) const;
  std::string ReportJson();
};

// Returns null and sets *error if the options are invalid.
Delegate* CreateDelegate(const DelegateOptions& options, std::string* error);
void DestroyDelegate(Delegate* delegate);
Delegate* FromTfLite(TfLiteDelegate* d);
// True for a delegate CreateDelegate made and DestroyDelegate has not freed.
bool IsCocopieDelegate(const TfLiteDelegate* d);

}  // namespace cocopie

#endif  // COCOPIE_DELEGATE_DELEGATE_H_
