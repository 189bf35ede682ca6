// A minimal test harness for the C++ tests (no external test framework, so
// the Bazel and CMake builds work offline).
#ifndef COCOPIE_TESTS_CC_CHECK_H_
#define COCOPIE_TESTS_CC_CHECK_H_

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace cocopie_test {

struct Case {
  std::string name;
  std::function<void()> fn;
};
inline std::vector<Case>& Cases() {
  static std::vector<Case> cases;
  return cases;
}
inline int& Failures() {
  static int failures = 0;
  return failures;
}
struct Register {
  Register(const char* name, std::function<void()> fn) { Cases().push_back({name, fn}); }
};

inline int RunAll() {
  int passed = 0, failed = 0;
  for (const Case& c : Cases()) {
    const int before = Failures();
    c.fn();
    if (Failures() == before) {
      ++passed;
    } else {
      ++failed;
      std::printf("FAILED %s\n", c.name.c_str());
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace cocopie_test

#define TEST_CASE(name)                                               \
  static void name();                                                 \
  static cocopie_test::Register name##_registered(#name, name);       \
  static void name()

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++cocopie_test::Failures();                                          \
    }                                                                      \
  } while (0)

#endif  // COCOPIE_TESTS_CC_CHECK_H_
