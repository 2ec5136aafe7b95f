// Checks the smooth max's vectorisable exp (csrc/cpu/exp_nonpositive.h) against long double: every kStride-th float
// in [-104, 0] plus the edge cases, in ulps of the float result (2^-149 for subnormal results). With kStride = 1
// (every one of the 1.12e9 floats) it must pass too, with the same bound, when exp_nonpositive.h changes.
#include "../cpu/exp_nonpositive.h"
#include "expect.h"

#include <c10/util/bit_cast.h>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>

namespace {

using mimo_ext::cpu::exp_nonpositive;
using ld = long double;

constexpr uint32_t kStride = 61;  // odd, so every residue of the low mantissa bits is visited
constexpr ld kMaxUlp = 1.0L;      // normal and subnormal results alike

ld ulp_of(ld value) {
  if (value < std::ldexp(1.0L, -126)) {
    return std::ldexp(1.0L, -149);
  }
  int exponent = 0;
  std::frexp(value, &exponent);  // value = f * 2^exponent, f in [0.5, 1)
  return std::ldexp(1.0L, exponent - 24);
}

struct Worst {
  ld ulp = 0;
  float x = 0;
};

void check_one(float x, Worst& worst) {
  const ld expected = std::exp(static_cast<ld>(x));
  const ld got = exp_nonpositive(x);
  const ld err = std::fabs(got - expected) / ulp_of(expected);
  if (!(err <= worst.ulp)) {  // a NaN result lands here too
    worst.ulp = std::isnan(err) ? std::numeric_limits<ld>::infinity() : err;
    worst.x = x;
  }
}

void check_range() {
  Worst worst;
  const uint32_t lowest = c10::bit_cast<uint32_t>(-104.0f);
  for (uint64_t u = 0x80000000u; u <= lowest; u += kStride) {
    check_one(c10::bit_cast<float>(static_cast<uint32_t>(u)), worst);
  }
  // Near the ends of the reduction intervals (x = (n + 1/2) ln2) and of the normal range, where 2^n is split.
  for (int n = -150; n <= 0; ++n) {
    const float mid = static_cast<float>((n - 0.5L) * std::log(2.0L));
    float x = mid;
    for (int step = 0; step < 64; ++step) {
      if (x <= 0 && x >= -104) {
        check_one(x, worst);
      }
      x = std::nextafter(x, 0.0f);
    }
    x = mid;
    for (int step = 0; step < 64; ++step) {
      if (x <= 0 && x >= -104) {
        check_one(x, worst);
      }
      x = std::nextafter(x, -1e9f);
    }
  }
  std::printf("exp_nonpositive: worst error %.3Lf ulp at x = %.9g\n", worst.ulp, static_cast<double>(worst.x));
  EXPECT(worst.ulp <= kMaxUlp, "error %.3Lf ulp at x = %.9g (bound %.2Lf)", worst.ulp, static_cast<double>(worst.x),
         kMaxUlp);
}

void check_edges() {
  EXPECT(exp_nonpositive(0.0f) == 1.0f, "exp(0) = %.9g", exp_nonpositive(0.0f));
  EXPECT(exp_nonpositive(-0.0f) == 1.0f, "exp(-0) = %.9g", exp_nonpositive(-0.0f));
  const float denorm_min = std::numeric_limits<float>::denorm_min();
  EXPECT(exp_nonpositive(-103.0f) > 0.0f && exp_nonpositive(-103.0f) < 1e-44f, "exp(-103) = %.9g",
         exp_nonpositive(-103.0f));
  EXPECT(exp_nonpositive(-103.2789f) == denorm_min, "exp(-103.2789) = %.9g, not the smallest subnormal",
         exp_nonpositive(-103.2789f));
  for (const float x : {-104.0f, -105.0f, -1e30f, -std::numeric_limits<float>::max(),
                        -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    EXPECT(exp_nonpositive(x) == 0.0f, "exp(%.9g) = %.9g, expected 0", static_cast<double>(x), exp_nonpositive(x));
  }
  // Monotone over a fine grid (a weight must not grow as its loss falls further behind the max).
  float previous = 1.0f;
  bool monotone = true;
  for (int i = 1; i <= 1040000; ++i) {
    const float y = exp_nonpositive(-static_cast<float>(i) * 1e-4f);
    monotone = monotone && y <= previous;
    previous = y;
  }
  EXPECT(monotone, "exp_nonpositive is not monotone on the 1e-4 grid over [-104, 0]");
}

}  // namespace

int main() {
  check_range();
  check_edges();
  return mimo_ext_test::finish("test_exp_nonpositive");
}
