// The whole test framework of the C++ tests: EXPECT counts checks and failures, and on failure prints where, the
// condition and a printf-style context. Each test program includes it once and ends with finish().
#pragma once

#include <cstdio>

namespace mimo_ext_test {

inline int g_checks = 0;
inline int g_failures = 0;

// Prints the summary; the process exit status (non-zero on any failure) is what ctest reads.
inline int finish(const char* program) {
  if (g_failures != 0) {
    std::fprintf(stderr, "%s: %d of %d checks FAILED\n", program, g_failures, g_checks);
    return 1;
  }
  std::printf("%s: all %d checks passed\n", program, g_checks);
  return 0;
}

}  // namespace mimo_ext_test

#define EXPECT(cond, ...)                                                             \
  do {                                                                               \
    ++::mimo_ext_test::g_checks;                                                     \
    if (!(cond)) {                                                                   \
      ++::mimo_ext_test::g_failures;                                                 \
      std::fprintf(stderr, "%s:%d: EXPECT(%s) failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                             \
      std::fprintf(stderr, "\n");                                                    \
    }                                                                                \
  } while (0)
