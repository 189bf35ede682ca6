#include "cc/gpu/runtime.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace cocopie {
namespace gpu {
namespace {

std::string Fail(const char* what, cl::Int code) {
  return std::string(what) + " failed: " + cl::ErrorName(code);
}

std::string PlatformString(const cl::Api& api, cl::Platform p, cl::Uint what) {
  size_t n = 0;
  if (api.GetPlatformInfo(p, what, 0, nullptr, &n) != cl::kSuccess || n == 0) return "";
  std::string s(n, '\0');
  if (api.GetPlatformInfo(p, what, n, &s[0], nullptr) != cl::kSuccess) return "";
  return s.c_str();
}

std::string DeviceString(const cl::Api& api, cl::Device d, cl::Uint what) {
  size_t n = 0;
  if (api.GetDeviceInfo(d, what, 0, nullptr, &n) != cl::kSuccess || n == 0) return "";
  std::string s(n, '\0');
  if (api.GetDeviceInfo(d, what, n, &s[0], nullptr) != cl::kSuccess) return "";
  return s.c_str();
}

template <typename T>
T DeviceValue(const cl::Api& api, cl::Device d, cl::Uint what) {
  T v{};
  api.GetDeviceInfo(d, what, sizeof v, &v, nullptr);
  return v;
}

uint64_t Fnv1a(const std::string& s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// Cache entry: magic, payload size, payload checksum (all little-endian
// 64-bit), then the driver's binary.
constexpr char kMagic[8] = {'C', 'C', 'P', 'C', 'L', 'B', '0', '1'};
constexpr size_t kHeaderBytes = 24;
constexpr size_t kMaxEntryBytes = size_t(256) << 20;

// The binary stored for `path`, or "" with *why set when the entry is
// missing (why = "") or corrupt.
std::string ReadEntry(const std::string& path, std::string* why) {
  why->clear();
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "";
  if (!S_ISREG(st.st_mode) || st.st_size < static_cast<off_t>(kHeaderBytes) ||
      static_cast<size_t>(st.st_size) > kMaxEntryBytes) {
    *why = "cache entry is not a regular file of a valid size";
    return "";
  }
  std::ifstream f(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (data.size() < kHeaderBytes || std::memcmp(data.data(), kMagic, 8) != 0) {
    *why = "cache entry has no valid header";
    return "";
  }
  uint64_t size = 0, sum = 0;
  std::memcpy(&size, data.data() + 8, 8);
  std::memcpy(&sum, data.data() + 16, 8);
  std::string payload = data.substr(kHeaderBytes);
  if (size != payload.size() || size == 0 || Fnv1a(payload) != sum) {
    *why = "cache entry is truncated or its checksum does not match";
    return "";
  }
  return payload;
}

std::string WriteEntry(const std::string& dir, const std::string& path,
                       const std::string& payload) {
  // mkdir -p, one level at a time.
  for (size_t pos = 1; pos <= dir.size(); ++pos)
    if (pos == dir.size() || dir[pos] == '/') ::mkdir(dir.substr(0, pos).c_str(), 0755);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return "cannot write " + tmp;
    const uint64_t size = payload.size(), sum = Fnv1a(payload);
    f.write(kMagic, 8);
    f.write(reinterpret_cast<const char*>(&size), 8);
    f.write(reinterpret_cast<const char*>(&sum), 8);
    f.write(payload.data(), static_cast<std::streamsize>(payload.size()));
    if (!f.flush()) {
      f.close();
      std::remove(tmp.c_str());
      return "cannot write " + tmp;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return "cannot rename " + tmp + " to " + path;
  }
  return "";
}

}  // namespace

std::string DeviceInfo::ToString() const {
  return name + (is_gpu ? " (GPU)" : " (not a GPU)") + ", " + version + ", driver " + driver +
         ", platform " + platform;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    if (mem_ != nullptr) api_->ReleaseMemObject(mem_);
    api_ = o.api_;
    mem_ = o.mem_;
    bytes_ = o.bytes_;
    o.mem_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

Buffer::~Buffer() {
  if (mem_ != nullptr) api_->ReleaseMemObject(mem_);
}

Kernel& Kernel::operator=(Kernel&& o) noexcept {
  if (this != &o) {
    if (k_ != nullptr) api_->ReleaseKernel(k_);
    api_ = o.api_;
    k_ = o.k_;
    o.k_ = nullptr;
  }
  return *this;
}

Kernel::~Kernel() {
  if (k_ != nullptr) api_->ReleaseKernel(k_);
}

std::unique_ptr<Runtime> Runtime::Create(int device, bool profiling, std::string* error) {
  const cl::Api* api = cl::Load(error);
  if (api == nullptr) return nullptr;
  cl::Uint np = 0;
  cl::Int rc = api->GetPlatformIDs(0, nullptr, &np);
  if (rc == cl::kPlatformNotFoundKhr || (rc == cl::kSuccess && np == 0)) {
    *error = "no OpenCL platform (the loader found no driver: no ICD file in "
             "/etc/OpenCL/vendors, or $OCL_ICD_VENDORS points elsewhere)";
    return nullptr;
  }
  if (rc != cl::kSuccess) {
    *error = Fail("clGetPlatformIDs", rc);
    return nullptr;
  }
  std::vector<cl::Platform> platforms(np);
  api->GetPlatformIDs(np, platforms.data(), nullptr);
  std::vector<std::pair<cl::Platform, cl::Device>> all;
  for (cl::Platform p : platforms) {
    cl::Uint nd = 0;
    if (api->GetDeviceIDs(p, cl::kDeviceTypeAll, 0, nullptr, &nd) != cl::kSuccess || nd == 0)
      continue;
    std::vector<cl::Device> ds(nd);
    if (api->GetDeviceIDs(p, cl::kDeviceTypeAll, nd, ds.data(), nullptr) != cl::kSuccess) continue;
    for (cl::Device d : ds) all.emplace_back(p, d);
  }
  if (all.empty()) {
    *error = "OpenCL platforms found, but no device";
    return nullptr;
  }
  size_t pick = 0;
  if (device >= 0) {
    if (static_cast<size_t>(device) >= all.size()) {
      *error = "option 'gpu_device': device " + std::to_string(device) + " does not exist (" +
               std::to_string(all.size()) + " OpenCL device(s): 0.." +
               std::to_string(all.size() - 1) + ")";
      return nullptr;
    }
    pick = static_cast<size_t>(device);
  } else {
    for (size_t i = 0; i < all.size(); ++i)
      if (DeviceValue<cl::Ulong>(*api, all[i].second, cl::kDeviceType) & (1u << 2)) {
        pick = i;
        break;
      }
  }
  std::unique_ptr<Runtime> r(new Runtime());
  r->api_ = api;
  r->profiling_ = profiling;
  r->device_ = all[pick].second;
  DeviceInfo& info = r->info_;
  info.platform = PlatformString(*api, all[pick].first, cl::kPlatformName);
  info.name = DeviceString(*api, r->device_, cl::kDeviceName);
  info.driver = DeviceString(*api, r->device_, cl::kDriverVersion);
  info.version = DeviceString(*api, r->device_, cl::kDeviceVersion);
  info.is_gpu = (DeviceValue<cl::Ulong>(*api, r->device_, cl::kDeviceType) & (1u << 2)) != 0;
  info.max_alloc_bytes = DeviceValue<cl::Ulong>(*api, r->device_, cl::kDeviceMaxMemAllocSize);
  info.global_mem_bytes = DeviceValue<cl::Ulong>(*api, r->device_, cl::kDeviceGlobalMemSize);
  info.max_work_group = DeviceValue<size_t>(*api, r->device_, cl::kDeviceMaxWorkGroupSize);
  if (info.max_work_group == 0) info.max_work_group = 1;
  r->context_ = api->CreateContext(nullptr, 1, &r->device_, nullptr, nullptr, &rc);
  if (r->context_ == nullptr || rc != cl::kSuccess) {
    *error = Fail("clCreateContext", rc) + " on " + info.name;
    return nullptr;
  }
  r->queue_ = api->CreateCommandQueue(r->context_, r->device_,
                                      profiling ? cl::kQueueProfilingEnable : 0, &rc);
  if (r->queue_ == nullptr || rc != cl::kSuccess) {
    *error = Fail("clCreateCommandQueue", rc) + " on " + info.name;
    return nullptr;
  }
  return r;
}

Runtime::~Runtime() {
  if (queue_ != nullptr) {
    api_->Finish(queue_);
    api_->ReleaseCommandQueue(queue_);
  }
  if (context_ != nullptr) api_->ReleaseContext(context_);
}

bool Runtime::Alloc(size_t bytes, const void* host, Buffer* out, std::string* error) {
  if (bytes == 0) bytes = 4;
  if (bytes > info_.max_alloc_bytes && info_.max_alloc_bytes != 0) {
    *error = "device buffer of " + std::to_string(bytes) + " bytes exceeds the device's largest "
             "allocation (" + std::to_string(info_.max_alloc_bytes) + " bytes) on " + info_.name;
    return false;
  }
  cl::Int rc = cl::kSuccess;
  cl::Mem m = api_->CreateBuffer(
      context_, cl::kMemReadWrite | (host != nullptr ? cl::kMemCopyHostPtr : 0), bytes,
      const_cast<void*>(host), &rc);
  if (m == nullptr || rc != cl::kSuccess) {
    *error = "allocating a device buffer of " + std::to_string(bytes) + " bytes on " +
             info_.name + ": " + Fail("clCreateBuffer", rc);
    return false;
  }
  Buffer b;
  b.api_ = api_;
  b.mem_ = m;
  b.bytes_ = bytes;
  *out = std::move(b);
  return true;
}

bool Runtime::Upload(const Buffer& b, const void* host, size_t bytes, std::string* error) {
  if (bytes > b.bytes()) {
    *error = "upload larger than its device buffer";
    return false;
  }
  const cl::Int rc = api_->EnqueueWriteBuffer(queue_, b.mem(), 1, 0, bytes, host, 0, nullptr,
                                              nullptr);
  if (rc != cl::kSuccess) *error = Fail("clEnqueueWriteBuffer", rc);
  return rc == cl::kSuccess;
}

bool Runtime::Download(const Buffer& b, void* host, size_t bytes, std::string* error) {
  if (bytes > b.bytes()) {
    *error = "download larger than its device buffer";
    return false;
  }
  const cl::Int rc =
      api_->EnqueueReadBuffer(queue_, b.mem(), 1, 0, bytes, host, 0, nullptr, nullptr);
  if (rc != cl::kSuccess) *error = Fail("clEnqueueReadBuffer", rc);
  return rc == cl::kSuccess;
}

bool Runtime::BuildFrom(cl::Program program, std::string* error) {
  const cl::Int rc = api_->BuildProgram(program, 1, &device_, "-cl-std=CL1.2", nullptr, nullptr);
  if (rc == cl::kSuccess) return true;
  size_t n = 0;
  std::string log;
  if (api_->GetProgramBuildInfo(program, device_, cl::kProgramBuildLog, 0, nullptr, &n) ==
          cl::kSuccess && n > 1) {
    log.assign(n, '\0');
    api_->GetProgramBuildInfo(program, device_, cl::kProgramBuildLog, n, &log[0], nullptr);
    log = log.c_str();
    if (log.size() > 2000) log = log.substr(0, 2000) + "...";
  }
  *error = Fail("clBuildProgram", rc) + (log.empty() ? "" : "; compiler log: " + log);
  return false;
}

bool Runtime::MakeKernels(cl::Program program, const std::vector<std::string>& names,
                          std::vector<Kernel>* kernels, std::string* error) {
  kernels->clear();
  for (const std::string& name : names) {
    cl::Int rc = cl::kSuccess;
    cl::Kernel k = api_->CreateKernel(program, name.c_str(), &rc);
    if (k == nullptr || rc != cl::kSuccess) {
      *error = Fail(("clCreateKernel(" + name + ")").c_str(), rc);
      return false;
    }
    Kernel wrapped;
    wrapped.api_ = api_;
    wrapped.k_ = k;
    kernels->push_back(std::move(wrapped));
  }
  return true;
}

bool Runtime::Build(const std::string& source, const std::string& cache_dir,
                    const std::vector<std::string>& kernel_names, std::vector<Kernel>* kernels,
                    BuildInfo* info, std::string* error) {
  const auto t0 = std::chrono::steady_clock::now();
  *info = BuildInfo();
  info->source_bytes = source.size();
  info->cache = "off";
  std::string path;
  if (!cache_dir.empty()) {
    const uint64_t key = Fnv1a(source, Fnv1a(info_.platform + '\n' + info_.name + '\n' +
                                             info_.driver + '\n' + info_.version + '\n'));
    char name[32];
    std::snprintf(name, sizeof name, "/%016llx.clbin", static_cast<unsigned long long>(key));
    path = cache_dir + name;
    std::string why;
    const std::string binary = ReadEntry(path, &why);
    if (!binary.empty()) {
      const unsigned char* bin = reinterpret_cast<const unsigned char*>(binary.data());
      const size_t len = binary.size();
      cl::Int status = cl::kSuccess, rc = cl::kSuccess;
      cl::Program p = api_->CreateProgramWithBinary(context_, 1, &device_, &len, &bin, &status, &rc);
      std::string build_error;
      if (p != nullptr && rc == cl::kSuccess && status == cl::kSuccess &&
          BuildFrom(p, &build_error) && MakeKernels(p, kernel_names, kernels, &build_error)) {
        api_->ReleaseProgram(p);
        info->cache = "hit";
        info->binary_bytes = len;
        info->build_ms = std::chrono::duration<double, std::milli>(
                             std::chrono::steady_clock::now() - t0).count();
        return true;
      }
      if (p != nullptr) api_->ReleaseProgram(p);
      why = "the driver refused the cached binary";
    }
    info->cache = why.empty() ? "stored" : "rebuilt (" + why + ")";
  }
  const char* src = source.c_str();
  const size_t len = source.size();
  cl::Int rc = cl::kSuccess;
  cl::Program p = api_->CreateProgramWithSource(context_, 1, &src, &len, &rc);
  if (p == nullptr || rc != cl::kSuccess) {
    *error = Fail("clCreateProgramWithSource", rc);
    return false;
  }
  if (!BuildFrom(p, error) || !MakeKernels(p, kernel_names, kernels, error)) {
    api_->ReleaseProgram(p);
    return false;
  }
  if (!path.empty()) {
    size_t size = 0;
    std::string why;
    if (api_->GetProgramInfo(p, cl::kProgramBinarySizes, sizeof size, &size, nullptr) ==
            cl::kSuccess && size > 0 && size <= kMaxEntryBytes) {
      std::string binary(size, '\0');
      unsigned char* ptr = reinterpret_cast<unsigned char*>(&binary[0]);
      if (api_->GetProgramInfo(p, cl::kProgramBinaries, sizeof ptr, &ptr, nullptr) ==
          cl::kSuccess) {
        why = WriteEntry(cache_dir, path, binary);
        info->binary_bytes = size;
      } else {
        why = "the driver gave no binary";
      }
    } else {
      why = "the driver gave no binary";
    }
    if (!why.empty()) info->cache = "not stored (" + why + ")";
  }
  api_->ReleaseProgram(p);
  info->build_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return true;
}

bool Runtime::EnqueueKernel(const Kernel& k, const std::vector<Arg>& args, int dims,
                            const size_t* global, const size_t* local, double* ms,
                            std::string* error) {
  for (size_t i = 0; i < args.size(); ++i) {
    const cl::Int rc = api_->SetKernelArg(k.get(), static_cast<cl::Uint>(i), args[i].size,
                                          args[i].value);
    if (rc != cl::kSuccess) {
      *error = Fail(("clSetKernelArg(" + std::to_string(i) + ")").c_str(), rc);
      return false;
    }
  }
  cl::Event ev = nullptr;
  const bool timed = profiling_ && ms != nullptr;
  const cl::Int rc = api_->EnqueueNDRangeKernel(queue_, k.get(), static_cast<cl::Uint>(dims),
                                                nullptr, global, local, 0, nullptr,
                                                timed ? &ev : nullptr);
  if (rc != cl::kSuccess) {
    *error = Fail("clEnqueueNDRangeKernel", rc);
    return false;
  }
  if (timed) {
    api_->Finish(queue_);
    cl::Ulong start = 0, end = 0;
    if (api_->GetEventProfilingInfo(ev, cl::kProfilingCommandStart, sizeof start, &start,
                                    nullptr) == cl::kSuccess &&
        api_->GetEventProfilingInfo(ev, cl::kProfilingCommandEnd, sizeof end, &end, nullptr) ==
            cl::kSuccess && end >= start)
      *ms += double(end - start) * 1e-6;
    api_->ReleaseEvent(ev);
  }
  return true;
}

bool Runtime::Finish(std::string* error) {
  const cl::Int rc = api_->Finish(queue_);
  if (rc != cl::kSuccess) *error = Fail("clFinish", rc);
  return rc == cl::kSuccess;
}

size_t Runtime::KernelWorkGroupLimit(const Kernel& k) const {
  size_t n = 0;
  if (api_->GetKernelWorkGroupInfo(k.get(), device_, cl::kKernelWorkGroupSize, sizeof n, &n,
                                   nullptr) != cl::kSuccess || n == 0)
    n = info_.max_work_group;
  return n;
}

std::string DefaultProgramCacheDir() {
  if (const char* p = std::getenv("COCOPIE_OPENCL_CACHE"); p && *p) return p;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x)
    return std::string(x) + "/cocopie_tf/opencl";
  if (const char* home = std::getenv("HOME"); home && *home)
    return std::string(home) + "/.cache/cocopie_tf/opencl";
  return "";
}

}  // namespace gpu
}  // namespace cocopie
