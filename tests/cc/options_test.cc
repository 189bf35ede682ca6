// Delegate option parsing: strict keys, validated values, messages that name
// the option.
#include <string>

#include "delegate/options.h"
#include "tests/cc/check.h"

using cocopie::DelegateOptions;
using cocopie::ParseDelegateOptions;

namespace {

std::string Parse(const char* key, const char* value, DelegateOptions* out) {
  const char* keys[] = {key};
  const char* values[] = {value};
  std::string err;
  ParseDelegateOptions(keys, values, 1, out, &err);
  return err;
}

}  // namespace

TEST_CASE(AcceptsKnownOptions) {
  DelegateOptions o;
  CHECK(Parse("num_threads", "4", &o).empty() && o.num_threads == 4);
  CHECK(Parse("backend", "cpu", &o).empty() && o.backend == "cpu");
  CHECK(Parse("verbose", "true", &o).empty() && o.verbose);
  CHECK(Parse("kernel", "reference", &o).empty() && o.kernel == "reference");
}

TEST_CASE(RejectsUnknownKey) {
  DelegateOptions o;
  const std::string err = Parse("num_thread", "2", &o);
  CHECK(err.find("unknown option 'num_thread'") != std::string::npos);
  CHECK(err.find("num_threads") != std::string::npos);  // lists the known keys
}

TEST_CASE(RejectsBadValues) {
  DelegateOptions o;
  CHECK(Parse("num_threads", "abc", &o).find("'num_threads'") != std::string::npos);
  CHECK(Parse("num_threads", "0", &o).find("'num_threads'") != std::string::npos);
  CHECK(Parse("num_threads", "3x", &o).find("'num_threads'") != std::string::npos);
  CHECK(Parse("num_threads", "99999999999", &o).find("'num_threads'") != std::string::npos);
  CHECK(Parse("backend", "tpu", &o).find("'backend'") != std::string::npos);
  CHECK(Parse("verbose", "maybe", &o).find("'verbose'") != std::string::npos);
  CHECK(Parse("profile", "1", &o).empty() && o.profile);
  CHECK(Parse("profile", "often", &o).find("'profile'") != std::string::npos);
  CHECK(o.pin_threads && Parse("pin_threads", "false", &o).empty() && !o.pin_threads);
  CHECK(Parse("pin_threads", "2", &o).find("'pin_threads'") != std::string::npos);
  CHECK(Parse("kernel", "nope", &o).find("'kernel'") != std::string::npos);
}

TEST_CASE(FailedParseLeavesOptionsUntouched) {
  DelegateOptions o;
  o.num_threads = 7;
  const char* keys[] = {"num_threads", "bogus"};
  const char* values[] = {"2", "1"};
  std::string err;
  CHECK(!ParseDelegateOptions(keys, values, 2, &o, &err));
  CHECK(o.num_threads == 7);
}

int main() { return cocopie_test::RunAll(); }
