#include "cc/gpu/opencl_api.h"

#include <dlfcn.h>

#include <dirent.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <vector>

namespace cocopie {
namespace cl {
namespace {

struct Loaded {
  Api api{};
  std::string error;  // empty: api is complete
};

template <typename F>
bool Resolve(void* lib, const char* name, F* out, std::string* error) {
  *out = reinterpret_cast<F>(::dlsym(lib, name));
  if (*out == nullptr) *error = std::string("OpenCL library lacks ") + name;
  return *out != nullptr;
}

// OpenCL drivers built on LLVM (PoCL, Mesa's) break when the process also
// exports another LLVM into the global symbol scope, as TensorFlow's
// libtensorflow_framework does: loaded after it, the driver's libclang
// registers its options in TensorFlow's LLVM and crashes; loaded before it,
// lazily bound calls later land in TensorFlow's LLVM ("unknown target
// CPU").  So the vendor libraries named by the ICD files are loaded first,
// every symbol bound now (RTLD_NOW) and to their own libraries first
// (RTLD_DEEPBIND); the ICD loader then finds them already loaded.
// AddressSanitizer refuses RTLD_DEEPBIND, so under it only RTLD_NOW.
void PreloadDrivers() {
  const bool asan = ::dlsym(RTLD_DEFAULT, "__asan_init") != nullptr;
  const int flags = RTLD_NOW | RTLD_LOCAL | (asan ? 0 : RTLD_DEEPBIND);
  std::vector<std::string> files;
  const char* env = std::getenv("OCL_ICD_VENDORS");
  const std::string dir = env != nullptr && *env ? env : "/etc/OpenCL/vendors";
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".icd") == 0)
        files.push_back(dir + "/" + name);
    }
    ::closedir(d);
  } else if (env != nullptr && *env) {
    files.push_back(env);  // ocl-icd also takes a single .icd file
  }
  for (const std::string& f : files) {
    std::ifstream in(f);
    std::string lib;
    std::getline(in, lib);
    while (!lib.empty() && (lib.back() == '\r' || lib.back() == ' ')) lib.pop_back();
    if (!lib.empty()) ::dlopen(lib.c_str(), flags);  // failures: the ICD loader reports
  }
}

Loaded LoadOnce() {
  Loaded r;
  const char* forced = std::getenv("COCOPIE_OPENCL_LIBRARY");
  void* lib = nullptr;
  std::string tried;
  if (forced != nullptr && *forced) {
    lib = ::dlopen(forced, RTLD_NOW | RTLD_LOCAL);
    tried = forced;
  } else {
    for (const char* name : {"libOpenCL.so.1", "libOpenCL.so"}) {
      lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL);
      tried += (tried.empty() ? "" : ", ") + std::string(name);
      if (lib != nullptr) break;
    }
  }
  if (lib == nullptr) {
    r.error = "no OpenCL library (tried " + tried +
              "); install the GPU's OpenCL driver and an ICD loader (Debian: "
              "ocl-icd-libopencl1; for OpenCL on the CPU, pocl-opencl-icd)";
    return r;
  }
  PreloadDrivers();
  // Kept loaded for the life of the process: drivers do not survive dlclose.
  Api& a = r.api;
  std::string& e = r.error;
  Resolve(lib, "clGetPlatformIDs", &a.GetPlatformIDs, &e) &&
      Resolve(lib, "clGetPlatformInfo", &a.GetPlatformInfo, &e) &&
      Resolve(lib, "clGetDeviceIDs", &a.GetDeviceIDs, &e) &&
      Resolve(lib, "clGetDeviceInfo", &a.GetDeviceInfo, &e) &&
      Resolve(lib, "clCreateContext", &a.CreateContext, &e) &&
      Resolve(lib, "clCreateCommandQueue", &a.CreateCommandQueue, &e) &&
      Resolve(lib, "clCreateBuffer", &a.CreateBuffer, &e) &&
      Resolve(lib, "clEnqueueWriteBuffer", &a.EnqueueWriteBuffer, &e) &&
      Resolve(lib, "clEnqueueReadBuffer", &a.EnqueueReadBuffer, &e) &&
      Resolve(lib, "clCreateProgramWithSource", &a.CreateProgramWithSource, &e) &&
      Resolve(lib, "clCreateProgramWithBinary", &a.CreateProgramWithBinary, &e) &&
      Resolve(lib, "clBuildProgram", &a.BuildProgram, &e) &&
      Resolve(lib, "clGetProgramBuildInfo", &a.GetProgramBuildInfo, &e) &&
      Resolve(lib, "clGetProgramInfo", &a.GetProgramInfo, &e) &&
      Resolve(lib, "clCreateKernel", &a.CreateKernel, &e) &&
      Resolve(lib, "clSetKernelArg", &a.SetKernelArg, &e) &&
      Resolve(lib, "clGetKernelWorkGroupInfo", &a.GetKernelWorkGroupInfo, &e) &&
      Resolve(lib, "clEnqueueNDRangeKernel", &a.EnqueueNDRangeKernel, &e) &&
      Resolve(lib, "clFinish", &a.Finish, &e) &&
      Resolve(lib, "clGetEventProfilingInfo", &a.GetEventProfilingInfo, &e) &&
      Resolve(lib, "clReleaseEvent", &a.ReleaseEvent, &e) &&
      Resolve(lib, "clReleaseKernel", &a.ReleaseKernel, &e) &&
      Resolve(lib, "clReleaseProgram", &a.ReleaseProgram, &e) &&
      Resolve(lib, "clReleaseMemObject", &a.ReleaseMemObject, &e) &&
      Resolve(lib, "clReleaseCommandQueue", &a.ReleaseCommandQueue, &e) &&
      Resolve(lib, "clReleaseContext", &a.ReleaseContext, &e);
  if (!e.empty()) e += " (" + tried + ")";
  return r;
}

}  // namespace

const Api* Load(std::string* error) {
  static std::once_flag once;
  static Loaded* loaded = nullptr;
  std::call_once(once, [] { loaded = new Loaded(LoadOnce()); });
  if (!loaded->error.empty()) {
    *error = loaded->error;
    return nullptr;
  }
  return &loaded->api;
}

std::string ErrorName(Int code) {
  const char* name = "OpenCL error";
  switch (code) {
    case kDeviceNotFound: name = "CL_DEVICE_NOT_FOUND"; break;
    case kMemObjectAllocationFailure: name = "CL_MEM_OBJECT_ALLOCATION_FAILURE"; break;
    case kOutOfResources: name = "CL_OUT_OF_RESOURCES"; break;
    case kOutOfHostMemory: name = "CL_OUT_OF_HOST_MEMORY"; break;
    case kBuildProgramFailure: name = "CL_BUILD_PROGRAM_FAILURE"; break;
    case -30: name = "CL_INVALID_VALUE"; break;
    case -42: name = "CL_INVALID_BINARY"; break;
    case -54: name = "CL_INVALID_WORK_GROUP_SIZE"; break;
    case kInvalidBufferSize: name = "CL_INVALID_BUFFER_SIZE"; break;
    case kPlatformNotFoundKhr: name = "CL_PLATFORM_NOT_FOUND_KHR"; break;
    default: break;
  }
  return std::string(name) + " (" + std::to_string(code) + ")";
}

}  // namespace cl
}  // namespace cocopie
