// The subset of the TensorFlow Lite C ABI that the cocopie delegate uses.
//
// Neither the tensorflow nor the ai-edge-litert wheel ships TFLite's C headers
// or exports TfLite* symbols to link against, so the delegate declares the
// structs itself.  They are written for this project from the public
// description of the ABI (tensorflow/lite/core/c/common.h, "semi-ABI stable":
// fields are only ever appended) and must match the runtime's layout byte for
// byte.  The static_asserts below pin the sizes measured on x86-64/aarch64 with
// ai-edge-litert 2.3.0 and tensorflow 2.21 (see docs/abi.md); a runtime that
// appends fields to a struct we only *read* stays compatible, one that changes
// a struct passed by value (TfLiteRegistration) does not.
//
// Rule: never call runtime helper functions (TfLiteIntArrayCreate, ...): none
// are exported.  Arrays handed to the runtime are built with malloc(), which the
// runtime releases with free().
#ifndef COCOPIE_DELEGATE_TFLITE_ABI_H_
#define COCOPIE_DELEGATE_TFLITE_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum TfLiteStatus {
  kTfLiteOk = 0,
  kTfLiteError = 1,
  kTfLiteDelegateError = 2,
  kTfLiteApplicationError = 3,
  kTfLiteDelegateDataNotFound = 4,
  kTfLiteDelegateDataWriteError = 5,
  kTfLiteDelegateDataReadError = 6,
  kTfLiteUnresolvedOps = 7,
  kTfLiteCancelled = 8,
} TfLiteStatus;

typedef enum TfLiteType {
  kTfLiteNoType = 0,
  kTfLiteFloat32 = 1,
  kTfLiteInt32 = 2,
  kTfLiteUInt8 = 3,
  kTfLiteInt64 = 4,
  kTfLiteString = 5,
  kTfLiteBool = 6,
  kTfLiteInt16 = 7,
  kTfLiteComplex64 = 8,
  kTfLiteInt8 = 9,
  kTfLiteFloat16 = 10,
} TfLiteType;

typedef enum TfLiteAllocationType {
  kTfLiteMemNone = 0,
  kTfLiteMmapRo = 1,
  kTfLiteArenaRw = 2,
  kTfLiteArenaRwPersistent = 3,
  kTfLiteDynamic = 4,
  kTfLitePersistentRo = 5,
  kTfLiteCustom = 6,
  kTfLiteVariantObject = 7,
} TfLiteAllocationType;

// Builtin operator codes used by the delegate (schema BuiltinOperator).
enum {
  kTfLiteBuiltinAdd = 0,
  kTfLiteBuiltinAveragePool2d = 1,
  kTfLiteBuiltinConv2d = 3,
  kTfLiteBuiltinDepthwiseConv2d = 4,
  kTfLiteBuiltinFullyConnected = 9,
  kTfLiteBuiltinMaxPool2d = 17,
  kTfLiteBuiltinRelu = 19,
  kTfLiteBuiltinRelu6 = 21,
  kTfLiteBuiltinReshape = 22,
  kTfLiteBuiltinPad = 34,
  kTfLiteBuiltinMean = 40,
};

typedef enum TfLitePadding {
  kTfLitePaddingUnknown = 0,
  kTfLitePaddingSame = 1,
  kTfLitePaddingValid = 2,
} TfLitePadding;

typedef enum TfLiteFusedActivation {
  kTfLiteActNone = 0,
  kTfLiteActRelu = 1,
  kTfLiteActReluN1To1 = 2,
  kTfLiteActRelu6 = 3,
  kTfLiteActTanh = 4,
  kTfLiteActSignBit = 5,
  kTfLiteActSigmoid = 6,
} TfLiteFusedActivation;

typedef enum TfLiteFullyConnectedWeightsFormat {
  kTfLiteFullyConnectedWeightsFormatDefault = 0,
  kTfLiteFullyConnectedWeightsFormatShuffled4x16Int8 = 1,
} TfLiteFullyConnectedWeightsFormat;

enum {
  kTfLiteDelegateFlagsNone = 0,
  kTfLiteDelegateFlagsAllowDynamicTensors = 1,
  kTfLiteDelegateFlagsRequirePropagatedShapes = 2,
  kTfLiteDelegateFlagsPerOperatorProfiling = 4,
};

// A tensor index meaning "no tensor" (e.g. a convolution without bias).
enum { kTfLiteOptionalTensor = -1 };

typedef struct TfLiteIntArray {
  int size;
  int data[];  // flexible array member, as in the runtime
} TfLiteIntArray;

typedef struct TfLiteQuantizationParams {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;

typedef struct TfLiteQuantization {
  int type;  // TfLiteQuantizationType
  void* params;
} TfLiteQuantization;

typedef union TfLitePtrUnion {
  int32_t* i32;
  int64_t* i64;
  float* f;
  char* raw;
  const char* raw_const;
  uint8_t* uint8;
  int8_t* int8;
  void* data;
} TfLitePtrUnion;

struct TfLiteContext;
struct TfLiteDelegate;
struct TfLiteNode;

typedef struct TfLiteTensor {
  TfLiteType type;
  TfLitePtrUnion data;
  TfLiteIntArray* dims;
  TfLiteQuantizationParams params;
  TfLiteAllocationType allocation_type;
  size_t bytes;
  const void* allocation;
  const char* name;
  struct TfLiteDelegate* delegate;
  int buffer_handle;
  bool data_is_stale;
  bool is_variable;
  TfLiteQuantization quantization;
  void* sparsity;  // TfLiteSparsity*, never dereferenced here
  const TfLiteIntArray* dims_signature;
} TfLiteTensor;

typedef struct TfLiteNode {
  TfLiteIntArray* inputs;
  TfLiteIntArray* outputs;
  TfLiteIntArray* intermediates;
  TfLiteIntArray* temporaries;
  void* user_data;
  void* builtin_data;
  const void* custom_initial_data;
  int custom_initial_data_size;
  struct TfLiteDelegate* delegate;
  bool might_have_side_effect;
} TfLiteNode;

typedef struct TfLiteRegistration {
  void* (*init)(struct TfLiteContext* context, const char* buffer,
                size_t length);
  void (*free)(struct TfLiteContext* context, void* buffer);
  TfLiteStatus (*prepare)(struct TfLiteContext* context, TfLiteNode* node);
  TfLiteStatus (*invoke)(struct TfLiteContext* context, TfLiteNode* node);
  const char* (*profiling_string)(const struct TfLiteContext* context,
                                  const TfLiteNode* node);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external;  // TfLiteOperator*, unused (must be NULL)
  void* (*async_kernel)(struct TfLiteContext* context, TfLiteNode* node);
  uint64_t inplace_operator;  // 0 = kTfLiteInplaceOpNone
} TfLiteRegistration;

// What a delegate kernel's init() receives as `buffer` (length 0).
typedef struct TfLiteDelegateParams {
  struct TfLiteDelegate* delegate;
  TfLiteIntArray* nodes_to_replace;
  TfLiteIntArray* input_tensors;
  TfLiteIntArray* output_tensors;
} TfLiteDelegateParams;

typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext* context,
                                   TfLiteIntArray** execution_plan);
  TfLiteTensor* tensors;
  void* impl_;
  TfLiteStatus (*ResizeTensor)(struct TfLiteContext*, TfLiteTensor* tensor,
                               TfLiteIntArray* new_size);
  void (*ReportError)(struct TfLiteContext*, const char* msg, ...);
  TfLiteStatus (*AddTensors)(struct TfLiteContext*, int tensors_to_add,
                             int* first_new_tensor_index);
  TfLiteStatus (*GetNodeAndRegistration)(struct TfLiteContext*, int node_index,
                                         TfLiteNode** node,
                                         TfLiteRegistration** registration);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(
      struct TfLiteContext*, TfLiteRegistration registration,
      const TfLiteIntArray* nodes_to_replace, struct TfLiteDelegate* delegate);
  int recommended_num_threads;
  void* (*GetExternalContext)(struct TfLiteContext*, int type);
  void (*SetExternalContext)(struct TfLiteContext*, int type, void* ctx);
  bool allow_fp32_relax_to_fp16;
  void* profiler;
  void* (*AllocatePersistentBuffer)(struct TfLiteContext* ctx, size_t bytes);
  TfLiteStatus (*AllocateBufferForEval)(struct TfLiteContext* ctx, size_t bytes,
                                        void** ptr);
  TfLiteStatus (*RequestScratchBufferInArena)(struct TfLiteContext* ctx,
                                              size_t bytes, int* buffer_idx);
  void* (*GetScratchBuffer)(struct TfLiteContext* ctx, int buffer_idx);
  TfLiteStatus (*ResizeTensorExplicit)(struct TfLiteContext* ctx,
                                       TfLiteTensor* tensor, int dims,
                                       const int* shape);
  TfLiteStatus (*PreviewDelegatePartitioning)(
      struct TfLiteContext* context, const TfLiteIntArray* nodes_to_replace,
      TfLiteDelegateParams** partition_params_array, int* num_partitions);
  TfLiteTensor* (*GetTensor)(const struct TfLiteContext* context,
                             int tensor_idx);
  void* (*GetEvalTensor)(const struct TfLiteContext* context, int tensor_idx);
  TfLiteStatus (*GetModelMetadata)(const struct TfLiteContext* context,
                                   const char* name, const char** ptr,
                                   size_t* bytes);
  TfLiteStatus (*AcquireSubgraphContext)(struct TfLiteContext* context,
                                         int subgraph_index,
                                         struct TfLiteContext** acquired);
  TfLiteStatus (*ReleaseSubgraphContext)(struct TfLiteContext* context,
                                         int subgraph_index);
} TfLiteContext;

typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext* context,
                          struct TfLiteDelegate* delegate);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext* context,
                                       struct TfLiteDelegate* delegate,
                                       int buffer_handle, TfLiteTensor* tensor);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext* context,
                                     struct TfLiteDelegate* delegate,
                                     int buffer_handle, TfLiteTensor* tensor);
  void (*FreeBufferHandle)(TfLiteContext* context,
                           struct TfLiteDelegate* delegate, int* handle);
  int64_t flags;
  void* opaque_delegate_builder;  // TfLiteOpaqueDelegateBuilder*, must be NULL
} TfLiteDelegate;

// Builtin option structs (node->builtin_data) of the claimed operators.
typedef struct TfLiteConvParams {
  TfLitePadding padding;
  int stride_width;
  int stride_height;
  TfLiteFusedActivation activation;
  int dilation_width_factor;
  int dilation_height_factor;
  TfLiteType quantized_bias_type;
} TfLiteConvParams;

typedef struct TfLiteDepthwiseConvParams {
  TfLitePadding padding;
  int stride_width;
  int stride_height;
  int depth_multiplier;
  TfLiteFusedActivation activation;
  int dilation_width_factor;
  int dilation_height_factor;
} TfLiteDepthwiseConvParams;

typedef struct TfLiteFullyConnectedParams {
  TfLiteFusedActivation activation;
  TfLiteFullyConnectedWeightsFormat weights_format;
  bool keep_num_dims;
  bool asymmetric_quantize_inputs;
  TfLiteType quantized_bias_type;
} TfLiteFullyConnectedParams;

typedef struct TfLitePaddingValues {
  int width;
  int height;
  int width_offset;
  int height_offset;
} TfLitePaddingValues;

typedef struct TfLitePoolParams {
  TfLitePadding padding;
  int stride_width;
  int stride_height;
  int filter_width;
  int filter_height;
  TfLiteFusedActivation activation;
  struct {
    TfLitePaddingValues padding;
  } computed;
} TfLitePoolParams;

typedef struct TfLiteAddParams {
  TfLiteFusedActivation activation;
  bool pot_scale_int16;
} TfLiteAddParams;

typedef struct TfLiteReducerParams {  // MEAN and the other reductions
  bool keep_dims;
} TfLiteReducerParams;

// The external-delegate plugin interface (what load_delegate() and
// benchmark_model --external_delegate_path look up with dlsym).
typedef void (*TfLiteReportErrorCallback)(const char* message);

#ifdef __cplusplus
}  // extern "C"

// Layout checks for LP64 targets (x86-64, aarch64), the supported platforms.
static_assert(sizeof(void*) == 8, "cocopie delegate supports 64-bit targets");
static_assert(sizeof(TfLiteTensor) == 112, "TfLiteTensor layout");
static_assert(offsetof(TfLiteTensor, data) == 8, "TfLiteTensor.data");
static_assert(offsetof(TfLiteTensor, dims) == 16, "TfLiteTensor.dims");
static_assert(offsetof(TfLiteTensor, allocation_type) == 32,
              "TfLiteTensor.allocation_type");
static_assert(offsetof(TfLiteTensor, bytes) == 40, "TfLiteTensor.bytes");
static_assert(offsetof(TfLiteTensor, name) == 56, "TfLiteTensor.name");
static_assert(offsetof(TfLiteTensor, quantization) == 80,
              "TfLiteTensor.quantization");
static_assert(offsetof(TfLiteTensor, dims_signature) == 104,
              "TfLiteTensor.dims_signature");
static_assert(sizeof(TfLiteNode) == 80, "TfLiteNode layout");
static_assert(offsetof(TfLiteNode, builtin_data) == 40,
              "TfLiteNode.builtin_data");
static_assert(offsetof(TfLiteNode, delegate) == 64, "TfLiteNode.delegate");
static_assert(sizeof(TfLiteRegistration) == 88, "TfLiteRegistration layout");
static_assert(offsetof(TfLiteRegistration, builtin_code) == 40,
              "TfLiteRegistration.builtin_code");
static_assert(offsetof(TfLiteRegistration, custom_name) == 48,
              "TfLiteRegistration.custom_name");
static_assert(offsetof(TfLiteRegistration, inplace_operator) == 80,
              "TfLiteRegistration.inplace_operator");
static_assert(sizeof(TfLiteContext) == 200, "TfLiteContext layout");
static_assert(offsetof(TfLiteContext, ReplaceNodeSubsetsWithDelegateKernels) ==
                  64,
              "TfLiteContext.ReplaceNodeSubsetsWithDelegateKernels");
static_assert(offsetof(TfLiteContext, recommended_num_threads) == 72,
              "TfLiteContext.recommended_num_threads");
static_assert(offsetof(TfLiteContext, GetModelMetadata) == 176,
              "TfLiteContext.GetModelMetadata");
static_assert(sizeof(TfLiteDelegate) == 56, "TfLiteDelegate layout");
static_assert(offsetof(TfLiteDelegate, flags) == 40, "TfLiteDelegate.flags");
static_assert(sizeof(TfLiteDelegateParams) == 32, "TfLiteDelegateParams");
static_assert(sizeof(TfLiteConvParams) == 28, "TfLiteConvParams");
static_assert(sizeof(TfLiteDepthwiseConvParams) == 28,
              "TfLiteDepthwiseConvParams");
static_assert(sizeof(TfLiteFullyConnectedParams) == 16,
              "TfLiteFullyConnectedParams");
#endif

#endif  // COCOPIE_DELEGATE_TFLITE_ABI_H_
