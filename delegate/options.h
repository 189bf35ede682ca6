// Delegate options as they arrive through the external-delegate interface:
// string keys and values.  Parsing is strict: an unknown key or a bad value is
// an error that names the option, never silently ignored.
#ifndef COCOPIE_DELEGATE_OPTIONS_H_
#define COCOPIE_DELEGATE_OPTIONS_H_

#include <cstddef>
#include <string>
#include <vector>

namespace cocopie {

struct DelegateOptions {
  int num_threads = 0;          // 0: the interpreter's thread count
  std::string backend = "cpu";  // cpu | gpu
  bool verbose = false;
  bool profile = false;  // time every claimed node; times appear in the report
  std::string kernel = "auto";  // auto | reference | <isa>, see dispatch.h
  // Pattern convs: code generated per layer (auto: the best ISA this CPU and
  // build have), or static (the kernel set's fixed kernels), or one ISA.
  std::string jit = "auto";  // auto | static | avx2_fma | avx512 | neon
  bool pattern_kernels = true;  // use pattern kernels for pattern-pruned convs
  // auto: claim only nodes the cost model predicts faster than TFLite's own
  // (XNNPACK) kernels; all: every supported node (tests, runtimes without XNNPACK).
  bool claim_all = false;
  // Pattern-kernel auto-tuning: off (built-in heuristics), cached (use the
  // tuning cache's entries, never tune), on (tune layers missing from the
  // cache during Prepare and add them to it).
  std::string tune = "cached";
  std::string tune_cache;        // empty: DefaultTuningCachePath()
  double tune_budget_ms = 400;   // per layer
  // How long the delegate's threads spin (yielding) between jobs before
  // sleeping; see cc/kernels/thread_pool.h.  0: sleep at once.
  int spin_us = -1;  // -1: ThreadPool::kDefaultSpinUs
  // Pin each worker thread to a CPU other than the caller's (see
  // cc/kernels/thread_pool.h); false leaves placement to the OS.
  bool pin_threads = true;
  // backend=gpu (OpenCL): which device (-1: the first GPU, else the first
  // device; N: the N-th over all platforms), what to do when OpenCL or the
  // device is missing ("none": refuse to create the delegate; "cpu": run on
  // the CPU backend and say so in the report), the compiled-program cache
  // directory ("": the default, "off": none) and work-items per work-group
  // of the conv kernels (0: chosen per device).
  int gpu_device = -1;
  std::string gpu_fallback = "none";
  std::string gpu_cache;
  int gpu_work_group = 0;
  // fp32, or fp16: weights stored as half on the device (docs/gpu.md).
  std::string gpu_precision = "fp32";
};

// Known option keys, for error messages and documentation.
const std::vector<std::string>& DelegateOptionKeys();

// Returns true on success; on failure returns false and sets *error.
bool ParseDelegateOptions(const char* const* keys, const char* const* values,
                          size_t num_options, DelegateOptions* options,
                          std::string* error);

}  // namespace cocopie

#endif  // COCOPIE_DELEGATE_OPTIONS_H_
