// Public C API of the cocopie delegate, for C/C++ applications that build
// their own tflite::Interpreter.  Python users go through load_delegate().
#ifndef COCOPIE_DELEGATE_COCOPIE_DELEGATE_H_
#define COCOPIE_DELEGATE_COCOPIE_DELEGATE_H_

#include <stddef.h>

#include "delegate/tflite_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

#define COCOPIE_EXPORT __attribute__((visibility("default")))

typedef struct CocopieDelegateOptions {
  int num_threads;     // 0: use the interpreter's thread count
  const char* kernel;  // "auto", "reference" or an ISA name; NULL = "auto"
  int verbose;         // non-zero: log claims to stderr
} CocopieDelegateOptions;

COCOPIE_EXPORT CocopieDelegateOptions CocopieDelegateOptionsDefault(void);
// Returns NULL on invalid options (the reason goes to stderr).
COCOPIE_EXPORT TfLiteDelegate* CocopieDelegateCreate(const CocopieDelegateOptions* options);
COCOPIE_EXPORT void CocopieDelegateDelete(TfLiteDelegate* delegate);

// Writes the claim report as JSON (a list of objects with node_index, op,
// kernel, dense_macs, executed_macs) into buf; returns the length the full
// text needs (excluding the terminating NUL), like snprintf.  Returns 0 (and
// writes an empty string) for a handle that is not a live cocopie delegate.
COCOPIE_EXPORT size_t CocopieDelegateReport(TfLiteDelegate* delegate, char* buf, size_t size);

// The external-delegate plugin interface.
COCOPIE_EXPORT TfLiteDelegate* tflite_plugin_create_delegate(
    char** options_keys, char** options_values, size_t num_options,
    void (*report_error)(const char*));
COCOPIE_EXPORT void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // COCOPIE_DELEGATE_COCOPIE_DELEGATE_H_
