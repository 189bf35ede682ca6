// One OpenCL device, its context and in-order queue; device buffers; program
// builds with an on-disk cache of compiled binaries.  No TFLite dependency:
// the delegate (delegate/gpu_partition.cc) and the tests drive it.
#ifndef COCOPIE_CC_GPU_RUNTIME_H_
#define COCOPIE_CC_GPU_RUNTIME_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cc/gpu/opencl_api.h"

namespace cocopie {
namespace gpu {

struct DeviceInfo {
  std::string platform, name, driver, version;
  bool is_gpu = false;  // CL_DEVICE_TYPE_GPU; PoCL's device is a CPU
  uint64_t max_alloc_bytes = 0, global_mem_bytes = 0;
  size_t max_work_group = 1;
  std::string ToString() const;  // "NVIDIA H200 (GPU), OpenCL 3.0 CUDA, driver 550.x"
};

class Runtime;

// Device memory; released with the object.
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept;
  ~Buffer();
  cl::Mem mem() const { return mem_; }
  const cl::Mem* mem_ptr() const { return &mem_; }
  size_t bytes() const { return bytes_; }

 private:
  friend class Runtime;
  const cl::Api* api_ = nullptr;
  cl::Mem mem_ = nullptr;
  size_t bytes_ = 0;
};

// A kernel of a built program; released with the object.
class Kernel {
 public:
  Kernel() = default;
  Kernel(const Kernel&) = delete;
  Kernel& operator=(const Kernel&) = delete;
  Kernel(Kernel&& o) noexcept { *this = std::move(o); }
  Kernel& operator=(Kernel&& o) noexcept;
  ~Kernel();
  cl::Kernel get() const { return k_; }

 private:
  friend class Runtime;
  const cl::Api* api_ = nullptr;
  cl::Kernel k_ = nullptr;
};

// A kernel argument: a buffer, or a plain value of `size` bytes.
struct Arg {
  size_t size;
  const void* value;
  static Arg Of(const Buffer& b) { return Arg{sizeof(cl::Mem), b.mem_ptr()}; }
  template <typename T>
  static Arg Value(const T& v) { return Arg{sizeof(T), &v}; }
};

// How the program for a source came to be, for delegate_report().
struct BuildInfo {
  std::string cache;  // "off", "hit", "stored", "rebuilt (<why>)", "not stored (<why>)"
  double build_ms = 0;
  size_t source_bytes = 0, binary_bytes = 0;
};

class Runtime {
 public:
  // `device`: -1 picks the first GPU device of any platform, else the first
  // device; N >= 0 the N-th device over all platforms in enumeration order.
  // `profiling`: events carry timestamps (EnqueueKernel's *ms).  Returns
  // null and sets *error (no library, no platform, no such device, ...).
  static std::unique_ptr<Runtime> Create(int device, bool profiling, std::string* error);
  ~Runtime();

  const DeviceInfo& info() const { return info_; }
  const cl::Api& api() const { return *api_; }

  // A buffer of `bytes` (>= 1), filled from `host` if not null.
  bool Alloc(size_t bytes, const void* host, Buffer* out, std::string* error);
  bool Upload(const Buffer& b, const void* host, size_t bytes, std::string* error);
  bool Download(const Buffer& b, void* host, size_t bytes, std::string* error);

  // Compiles `source`, or loads its binary from `cache_dir` (empty: no disk
  // cache).  Entries are keyed by device, driver and source; they carry a
  // checksum, are written atomically, and a corrupt or refused entry is
  // rebuilt and replaced, never trusted.  On failure *error holds the
  // compiler's log.
  bool Build(const std::string& source, const std::string& cache_dir,
             const std::vector<std::string>& kernel_names, std::vector<Kernel>* kernels,
             BuildInfo* info, std::string* error);

  // Enqueues `k` over `global` (work-groups of `local`; global is a
  // multiple of it).  With profiling on and `ms` not null, waits for the
  // kernel and adds its device time to *ms.
  bool EnqueueKernel(const Kernel& k, const std::vector<Arg>& args, int dims,
                     const size_t* global, const size_t* local, double* ms,
                     std::string* error);
  bool Finish(std::string* error);
  // Largest work-group `k` can run with on this device.
  size_t KernelWorkGroupLimit(const Kernel& k) const;

 private:
  Runtime() = default;
  bool BuildFrom(cl::Program program, std::string* error);
  bool MakeKernels(cl::Program program, const std::vector<std::string>& names,
                   std::vector<Kernel>* kernels, std::string* error);
  const cl::Api* api_ = nullptr;
  cl::Device device_ = nullptr;
  cl::Context context_ = nullptr;
  cl::Queue queue_ = nullptr;
  bool profiling_ = false;
  DeviceInfo info_;
};

// The default program cache directory: $COCOPIE_OPENCL_CACHE, else
// $XDG_CACHE_HOME/cocopie_tf/opencl, else ~/.cache/cocopie_tf/opencl.
std::string DefaultProgramCacheDir();

}  // namespace gpu
}  // namespace cocopie

#endif  // COCOPIE_CC_GPU_RUNTIME_H_
