#include "delegate/options.h"

#include <cerrno>
#include <cstdlib>

#include "cc/kernels/dispatch.h"
#include "cc/kernels/thread_pool.h"

namespace cocopie {
namespace {

constexpr int kMaxThreads = 256;

std::string Quote(const std::string& s) { return "'" + s + "'"; }

bool ParseBool(const std::string& v, bool* out) {
  if (v == "1" || v == "true" || v == "True" || v == "yes" || v == "on") {
    *out = true;
    return true;
  }
  if (v == "0" || v == "false" || v == "False" || v == "no" || v == "off") {
    *out = false;
    return true;
  }
  return false;
}

bool ParseThreads(const std::string& v, int* out) {
  if (v.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const long n = std::strtol(v.c_str(), &end, 10);
  if (errno != 0 || end == v.c_str() || *end != '\0') return false;
  if (n < 1 || n > kMaxThreads) return false;
  *out = static_cast<int>(n);
  return true;
}

}  // namespace

const std::vector<std::string>& DelegateOptionKeys() {
  static const std::vector<std::string> keys = {"num_threads", "backend", "verbose",
                                                "profile", "kernel", "pattern_kernels",
                                                "claim", "tune", "tune_cache",
                                                "tune_budget_ms", "jit", "spin_us", "pin_threads",
                                                "gpu_device", "gpu_fallback", "gpu_cache",
                                                "gpu_work_group", "precision"};
  return keys;
}

bool ParseDelegateOptions(const char* const* keys, const char* const* values,
                          size_t num_options, DelegateOptions* options,
                          std::string* error) {
  DelegateOptions parsed;
  std::string gpu_key;  // a gpu_* option given, which needs backend=gpu
  for (size_t i = 0; i < num_options; ++i) {
    if (keys[i] == nullptr || values[i] == nullptr) {
      *error = "option " + std::to_string(i) + " has a null key or value";
      return false;
    }
    const std::string key = keys[i], value = values[i];
    if (key.rfind("gpu_", 0) == 0 || key == "precision") gpu_key = key;
    if (key == "num_threads") {
      if (!ParseThreads(value, &parsed.num_threads)) {
        *error = "option 'num_threads': expected an integer from 1 to " +
                 std::to_string(kMaxThreads) + ", got " + Quote(value);
        return false;
      }
    } else if (key == "backend") {
      if (value != "cpu" && value != "gpu") {
        *error = "option 'backend': expected 'cpu' or 'gpu', got " + Quote(value);
        return false;
      }
      parsed.backend = value;
    } else if (key == "verbose") {
      if (!ParseBool(value, &parsed.verbose)) {
        *error = "option 'verbose': expected true/false or 1/0, got " + Quote(value);
        return false;
      }
    } else if (key == "pin_threads") {
      if (!ParseBool(value, &parsed.pin_threads)) {
        *error = "option 'pin_threads': expected true/false or 1/0, got " + Quote(value);
        return false;
      }
    } else if (key == "profile") {
      if (!ParseBool(value, &parsed.profile)) {
        *error = "option 'profile': expected true/false or 1/0, got " + Quote(value);
        return false;
      }
    } else if (key == "tune") {
      if (value != "off" && value != "cached" && value != "on") {
        *error = "option 'tune': expected 'off', 'cached' or 'on', got " + Quote(value);
        return false;
      }
      parsed.tune = value;
    } else if (key == "tune_cache") {
      if (value.empty() || value.find('\0') != std::string::npos) {
        *error = "option 'tune_cache': expected a file path, got " + Quote(value);
        return false;
      }
      parsed.tune_cache = value;
    } else if (key == "tune_budget_ms") {
      char* end = nullptr;
      const double ms = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(ms >= 1 && ms <= 600000)) {
        *error = "option 'tune_budget_ms': expected a number from 1 to 600000, got " + Quote(value);
        return false;
      }
      parsed.tune_budget_ms = ms;
    } else if (key == "spin_us") {
      char* end = nullptr;
      errno = 0;
      const long us = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || errno != 0 || *end != '\0' || us < 0 || us > ThreadPool::kMaxSpinUs) {
        *error = "option 'spin_us': expected an integer from 0 to " +
                 std::to_string(ThreadPool::kMaxSpinUs) + ", got " + Quote(value);
        return false;
      }
      parsed.spin_us = static_cast<int>(us);
    } else if (key == "gpu_device") {
      if (value == "auto") {
        parsed.gpu_device = -1;
      } else if (int n = 0; ParseThreads(value == "0" ? "1" : value, &n)) {
        parsed.gpu_device = value == "0" ? 0 : n;
      } else {
        *error = "option 'gpu_device': expected 'auto' or a device number from 0 to " +
                 std::to_string(kMaxThreads) + ", got " + Quote(value);
        return false;
      }
    } else if (key == "gpu_fallback") {
      if (value != "none" && value != "cpu") {
        *error = "option 'gpu_fallback': expected 'none' or 'cpu', got " + Quote(value);
        return false;
      }
      parsed.gpu_fallback = value;
    } else if (key == "gpu_cache") {
      if (value.empty()) {
        *error = "option 'gpu_cache': expected a directory or 'off', got ''";
        return false;
      }
      parsed.gpu_cache = value;
    } else if (key == "gpu_work_group") {
      int n = 0;
      if (!ParseThreads(value, &n)) {
        *error = "option 'gpu_work_group': expected an integer from 1 to " +
                 std::to_string(kMaxThreads) + ", got " + Quote(value);
        return false;
      }
      parsed.gpu_work_group = n;
    } else if (key == "precision") {
      if (value != "fp32" && value != "fp16") {
        *error = "option 'precision': expected 'fp32' or 'fp16', got " + Quote(value);
        return false;
      }
      parsed.gpu_precision = value;
    } else if (key == "claim") {
      if (value != "auto" && value != "all") {
        *error = "option 'claim': expected 'auto' or 'all', got " + Quote(value);
        return false;
      }
      parsed.claim_all = value == "all";
    } else if (key == "pattern_kernels") {
      if (value == "auto") {
        parsed.pattern_kernels = true;
      } else if (value == "off") {
        parsed.pattern_kernels = false;
      } else {
        *error = "option 'pattern_kernels': expected 'auto' or 'off', got " + Quote(value);
        return false;
      }
    } else if (key == "jit") {
      JitIsa isa;
      if (!ParseJitIsa(value, &isa)) {
        *error = "option 'jit': expected 'auto', 'static', 'avx2_fma', 'avx512' or 'neon', got " +
                 Quote(value);
        return false;
      }
      std::string why;
      ResolveJitIsa(SelectKernelSet("auto", &why), isa, &why);
      if (!why.empty()) {
        *error = "option 'jit': " + why;
        return false;
      }
      parsed.jit = value;
    } else if (key == "kernel") {
      std::string why;
      SelectKernelSet(value, &why);
      if (!why.empty()) {
        *error = "option 'kernel': " + why;
        return false;
      }
      parsed.kernel = value;
    } else {
      std::string known;
      for (const auto& k : DelegateOptionKeys()) known += (known.empty() ? "" : ", ") + k;
      *error = "unknown option " + Quote(key) + " (known options: " + known + ")";
      return false;
    }
  }
  if (!gpu_key.empty() && parsed.backend != "gpu") {
    *error = "option '" + gpu_key + "' applies to backend=gpu only (backend is '" +
             parsed.backend + "')";
    return false;
  }
  *options = parsed;
  error->clear();
  return true;
}

}  // namespace cocopie
