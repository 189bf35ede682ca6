// The OpenCL 1.2 entry points the GPU backend uses, resolved at run time from
// the system's loader (dlopen of libOpenCL.so.1), so the delegate builds
// without OpenCL headers and loads on machines without any OpenCL: only
// backend=gpu asks for the library.  Types and constants are the Khronos
// ABI's (values as in CL/cl.h); only what the backend needs is declared.
#ifndef COCOPIE_CC_GPU_OPENCL_API_H_
#define COCOPIE_CC_GPU_OPENCL_API_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace cocopie {
namespace cl {

using Int = int32_t;
using Uint = uint32_t;
using Ulong = uint64_t;
using Platform = struct _cl_platform_id*;
using Device = struct _cl_device_id*;
using Context = struct _cl_context*;
using Queue = struct _cl_command_queue*;
using Mem = struct _cl_mem*;
using Program = struct _cl_program*;
using Kernel = struct _cl_kernel*;
using Event = struct _cl_event*;

constexpr Int kSuccess = 0;
constexpr Int kDeviceNotFound = -1;
constexpr Int kMemObjectAllocationFailure = -4;
constexpr Int kOutOfResources = -5;
constexpr Int kOutOfHostMemory = -6;
constexpr Int kBuildProgramFailure = -11;
constexpr Int kInvalidBufferSize = -61;
constexpr Int kPlatformNotFoundKhr = -1001;

constexpr Ulong kDeviceTypeAll = 0xFFFFFFFF;
constexpr Uint kPlatformVersion = 0x0901, kPlatformName = 0x0902;
constexpr Uint kDeviceType = 0x1000, kDeviceMaxWorkGroupSize = 0x1004,
               kDeviceMaxMemAllocSize = 0x1010, kDeviceGlobalMemSize = 0x101F,
               kDeviceName = 0x102B, kDriverVersion = 0x102D, kDeviceVersion = 0x102F;
constexpr Ulong kQueueProfilingEnable = 1 << 1;
constexpr Ulong kMemReadWrite = 1 << 0, kMemReadOnly = 1 << 2, kMemCopyHostPtr = 1 << 5;
constexpr Uint kProgramBinarySizes = 0x1165, kProgramBinaries = 0x1166;
constexpr Uint kProgramBuildLog = 0x1183;
constexpr Uint kKernelWorkGroupSize = 0x11B0;
constexpr Uint kProfilingCommandStart = 0x1282, kProfilingCommandEnd = 0x1283;

// Function table; every pointer is non-null once Load() succeeded.
struct Api {
  Int (*GetPlatformIDs)(Uint, Platform*, Uint*);
  Int (*GetPlatformInfo)(Platform, Uint, size_t, void*, size_t*);
  Int (*GetDeviceIDs)(Platform, Ulong, Uint, Device*, Uint*);
  Int (*GetDeviceInfo)(Device, Uint, size_t, void*, size_t*);
  Context (*CreateContext)(const intptr_t*, Uint, const Device*,
                           void (*)(const char*, const void*, size_t, void*), void*, Int*);
  Queue (*CreateCommandQueue)(Context, Device, Ulong, Int*);
  Mem (*CreateBuffer)(Context, Ulong, size_t, void*, Int*);
  Int (*EnqueueWriteBuffer)(Queue, Mem, Uint, size_t, size_t, const void*, Uint, const Event*,
                            Event*);
  Int (*EnqueueReadBuffer)(Queue, Mem, Uint, size_t, size_t, void*, Uint, const Event*, Event*);
  Program (*CreateProgramWithSource)(Context, Uint, const char**, const size_t*, Int*);
  Program (*CreateProgramWithBinary)(Context, Uint, const Device*, const size_t*,
                                     const unsigned char**, Int*, Int*);
  Int (*BuildProgram)(Program, Uint, const Device*, const char*,
                      void (*)(Program, void*), void*);
  Int (*GetProgramBuildInfo)(Program, Device, Uint, size_t, void*, size_t*);
  Int (*GetProgramInfo)(Program, Uint, size_t, void*, size_t*);
  Kernel (*CreateKernel)(Program, const char*, Int*);
  Int (*SetKernelArg)(Kernel, Uint, size_t, const void*);
  Int (*GetKernelWorkGroupInfo)(Kernel, Device, Uint, size_t, void*, size_t*);
  Int (*EnqueueNDRangeKernel)(Queue, Kernel, Uint, const size_t*, const size_t*, const size_t*,
                              Uint, const Event*, Event*);
  Int (*Finish)(Queue);
  Int (*GetEventProfilingInfo)(Event, Uint, size_t, void*, size_t*);
  Int (*ReleaseEvent)(Event);
  Int (*ReleaseKernel)(Kernel);
  Int (*ReleaseProgram)(Program);
  Int (*ReleaseMemObject)(Mem);
  Int (*ReleaseCommandQueue)(Queue);
  Int (*ReleaseContext)(Context);
};

// The process-wide table, loaded on first call: from $COCOPIE_OPENCL_LIBRARY
// if set (tests point it at a missing file to hide OpenCL), else
// libOpenCL.so.1, then libOpenCL.so.  Returns null and sets *error (naming
// the library and what to install) when it or a symbol is missing.
const Api* Load(std::string* error);

// "CL_OUT_OF_RESOURCES (-5)" and the like, for messages.
std::string ErrorName(Int code);

}  // namespace cl
}  // namespace cocopie

#endif  // COCOPIE_CC_GPU_OPENCL_API_H_
