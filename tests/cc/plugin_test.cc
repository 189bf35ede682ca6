// The external-delegate entry points and the C API, without a TFLite runtime:
// option errors reach the error callback, good options give a delegate whose
// fields the runtime relies on are set.
#include <cstring>
#include <string>

#include "delegate/cocopie_delegate.h"
#include "tests/cc/check.h"

namespace {

std::string g_reported;
void Capture(const char* msg) { g_reported += msg; }

TfLiteDelegate* Create(std::initializer_list<std::pair<const char*, const char*>> opts) {
  char* keys[8];
  char* values[8];
  size_t n = 0;
  for (const auto& kv : opts) {
    keys[n] = const_cast<char*>(kv.first);
    values[n] = const_cast<char*>(kv.second);
    ++n;
  }
  g_reported.clear();
  return tflite_plugin_create_delegate(keys, values, n, Capture);
}

}  // namespace

TEST_CASE(GoodOptionsCreateADelegate) {
  TfLiteDelegate* d = Create({{"num_threads", "2"}, {"verbose", "false"}});
  CHECK(d != nullptr);
  CHECK(g_reported.empty());
  if (d != nullptr) {
    CHECK(d->Prepare != nullptr);
    CHECK(d->data_ != nullptr);
    CHECK(d->opaque_delegate_builder == nullptr);
    CHECK((d->flags & kTfLiteDelegateFlagsAllowDynamicTensors) != 0);
    char buf[8];
    CHECK(CocopieDelegateReport(d, buf, sizeof buf) == 2);  // "[]" before any graph
    CHECK(std::strcmp(buf, "[]") == 0);
  }
  tflite_plugin_destroy_delegate(d);
}

TEST_CASE(BadOptionsReportAndReturnNull) {
  CHECK(Create({{"num_threads", "abc"}}) == nullptr);
  CHECK(g_reported.find("num_threads") != std::string::npos);
  CHECK(Create({{"colour", "blue"}}) == nullptr);
  CHECK(g_reported.find("unknown option 'colour'") != std::string::npos);
}

TEST_CASE(CApiDefaults) {
  CocopieDelegateOptions o = CocopieDelegateOptionsDefault();
  CHECK(o.num_threads == 0 && o.kernel == nullptr && o.verbose == 0);
  TfLiteDelegate* d = CocopieDelegateCreate(&o);
  CHECK(d != nullptr);
  CocopieDelegateDelete(d);
  o.kernel = "no-such-isa";
  CHECK(CocopieDelegateCreate(&o) == nullptr);
  o.kernel = "reference";
  o.num_threads = -1;
  CHECK(CocopieDelegateCreate(&o) == nullptr);
}

int main() { return cocopie_test::RunAll(); }
