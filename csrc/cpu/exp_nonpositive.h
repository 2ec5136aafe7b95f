// exp(x) in float for x <= 0, written so that GCC vectorises a loop of it: no branch and no call.
//
// The smooth max's CPU kernel needs one exp per loss, and a call to glibc's expf keeps its loops scalar (rows of
// M = 2..8 losses: slower than logsumexp's vectorised exp). The algorithm is the
// textbook one of Cephes' expf.c (Moshier), written out here: x = n ln2 + r with n = round(x / ln2) and a two-part
// ln2 (Cody-Waite), so that |r| <= ln2 / 2 exactly; exp(r) by Cephes' degree-7 polynomial; then 2^n from the
// exponent bits. For n below float's normal range the power is applied in two factors, so a subnormal result
// is rounded once. Error against long double, every float in [-104, 0]: see test_exp_nonpositive.cpp (at most
// 1 ulp for normal results). The same IEEE operations in every instruction set (no FMA: -ffp-contract=off), so
// the baseline, AVX2 and AVX-512 loops give the same bits.
#pragma once

#include <c10/util/bit_cast.h>
#include <cstdint>

namespace mimo_ext::cpu {

// Defined for x <= 0 and x = -Inf (-> 0); e^-104 < 2^-150 rounds to 0, so anything below -104 is -104. A NaN is
// also mapped to -104 (-> 0): callers answer NaN rows apart. x > 0 is outside the contract.
inline float exp_nonpositive(float x) {
  x = x > -104.0f ? x : -104.0f;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding then subtracting it rounds to nearest (even)
  const float n = (x * kLog2e + kRound) - kRound;
  // ln2 = kLn2Hi + kLn2Lo; kLn2Hi has 9 significant bits, so n * kLn2Hi is exact for |n| <= 150.
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float exp_r = (p * (r * r) + r) + 1.0f;
  // n is in [-150, 0]. 2^n is a normal float for n >= -126; below, scale by 2^(n + 100) and then by 2^-100.
  const int32_t ni = static_cast<int32_t>(n);
  const bool subnormal_range = ni < -125;
  const int32_t e = subnormal_range ? ni + 100 : ni;
  const float scale = c10::bit_cast<float>(static_cast<int32_t>((e + 127) << 23));
  const float post = subnormal_range ? 0x1p-100f : 1.0f;
  return (exp_r * scale) * post;
}

}  // namespace mimo_ext::cpu
