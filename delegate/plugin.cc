// C entry points: the external-delegate plugin interface and the C API.
#include <cstdio>
#include <cstring>
#include <string>

#include "delegate/cocopie_delegate.h"
#include "delegate/delegate.h"

using cocopie::CreateDelegate;
using cocopie::Delegate;
using cocopie::DelegateOptions;

extern "C" {

CocopieDelegateOptions CocopieDelegateOptionsDefault(void) {
  CocopieDelegateOptions o;
  o.num_threads = 0;
  o.kernel = nullptr;
  o.verbose = 0;
  return o;
}

TfLiteDelegate* CocopieDelegateCreate(const CocopieDelegateOptions* options) {
  DelegateOptions opts;
  if (options != nullptr) {
    opts.num_threads = options->num_threads;
    if (options->kernel != nullptr) opts.kernel = options->kernel;
    opts.verbose = options->verbose != 0;
  }
  std::string error;
  if (opts.num_threads < 0) error = "num_threads must be >= 0";
  Delegate* d = error.empty() ? CreateDelegate(opts, &error) : nullptr;
  if (d == nullptr) {
    std::fprintf(stderr, "cocopie: %s\n", error.c_str());
    return nullptr;
  }
  return &d->base;
}

void CocopieDelegateDelete(TfLiteDelegate* delegate) {
  if (delegate != nullptr) cocopie::DestroyDelegate(cocopie::FromTfLite(delegate));
}

size_t CocopieDelegateReport(TfLiteDelegate* delegate, char* buf, size_t size) {
  if (buf != nullptr && size > 0) buf[0] = '\0';
  if (!cocopie::IsCocopieDelegate(delegate)) return 0;  // never a valid report ("[]" at least)
  const std::string json = cocopie::FromTfLite(delegate)->ReportJson();
  if (buf != nullptr && size > 0) {
    const size_t n = json.size() < size - 1 ? json.size() : size - 1;
    std::memcpy(buf, json.data(), n);
    buf[n] = '\0';
  }
  return json.size();
}

TfLiteDelegate* tflite_plugin_create_delegate(char** options_keys, char** options_values,
                                              size_t num_options,
                                              void (*report_error)(const char*)) {
  DelegateOptions opts;
  std::string error;
  Delegate* d = nullptr;
  if (cocopie::ParseDelegateOptions(options_keys, options_values, num_options, &opts, &error))
    d = CreateDelegate(opts, &error);
  if (d == nullptr) {
    const std::string msg = "cocopie delegate: " + error;
    if (report_error != nullptr)
      report_error(msg.c_str());
    else
      std::fprintf(stderr, "%s\n", msg.c_str());
    return nullptr;
  }
  return &d->base;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) { CocopieDelegateDelete(delegate); }

}  // extern "C"
