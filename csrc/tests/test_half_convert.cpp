// Checks the CPU loops' half-type conversions (csrc/cpu/half_convert.h) against c10's portable conversions, bit
// for bit: every float16 and bfloat16 value to float, and floats to both types over every 2^32 / kStride-th bit
// pattern plus the edge cases (zeros, subnormals, rounding ties, the overflow threshold, Inf, NaN with payloads).
// This program is compiled for baseline x86-64 (no F16C), so c10 takes its portable path here, the one whose
// algorithm half_convert.h restates; on machines where c10 uses F16C the results are the same (IEEE rounding).
// With kStride = 1 the run covers all 2^32 floats (about a minute); it must pass too when half_convert.h changes.
#include "../cpu/half_convert.h"
#include "expect.h"

#include <c10/util/bit_cast.h>
#include <cstdint>
#include <vector>

namespace {

using namespace mimo_ext::cpu;

constexpr uint64_t kStride = 251;  // odd, so every residue of the low bits is visited

std::vector<uint32_t> edge_floats() {
  std::vector<uint32_t> out;
  const uint32_t bases[] = {
      0x00000000u, 0x00000001u, 0x007FFFFFu, 0x00800000u,  // zero, float subnormals, smallest normal
      0x33000000u, 0x33000001u, 0x337FFFFFu, 0x33800000u,  // around half of the smallest half subnormal
      0x387FC000u, 0x387FE000u, 0x38800000u,              // around the smallest normal half
      0x3F801000u, 0x3F803000u, 0x3F800FFFu,              // half rounding ties (even and odd) and below
      0x3F808000u, 0x3F818000u, 0x3F807FFFu,              // bfloat16 rounding ties and below
      0x477FE000u, 0x477FEFFFu, 0x477FF000u, 0x47800000u,  // half max, its tie to Inf, overflow
      0x7F7FFFFFu, 0x7F800000u, 0x7F800001u, 0x7FC00000u, 0x7FFFFFFFu, 0x7FA00001u,  // max, Inf, NaNs
  };
  for (const uint32_t b : bases) {
    out.push_back(b);
    out.push_back(b | 0x80000000u);
  }
  return out;
}

void check_to_float() {
  int half_bad = 0;
  int bf16_bad = 0;
  uint32_t first_half = 0;
  uint32_t first_bf16 = 0;
  for (uint32_t h = 0; h <= 0xFFFFu; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    if (c10::bit_cast<uint32_t>(half_bits_to_float(bits)) !=
        c10::bit_cast<uint32_t>(c10::detail::fp16_ieee_to_fp32_value(bits))) {
      first_half = half_bad++ == 0 ? h : first_half;
    }
    if (c10::bit_cast<uint32_t>(bfloat16_bits_to_float(bits)) !=
        c10::bit_cast<uint32_t>(static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits())))) {
      first_bf16 = bf16_bad++ == 0 ? h : first_bf16;
    }
  }
  EXPECT(half_bad == 0, "%d of 65536 float16 values differ from c10's, first 0x%04x\n", half_bad, first_half);
  EXPECT(bf16_bad == 0, "%d of 65536 bfloat16 values differ from c10's, first 0x%04x\n", bf16_bad, first_bf16);
}

// Counts the float bit patterns u whose conversions differ from c10's; remembers the first of each.
struct FromFloat {
  int64_t checked = 0;
  int64_t half_bad = 0;
  int64_t bf16_bad = 0;
  uint32_t first_half = 0;
  uint32_t first_bf16 = 0;

  void check(uint32_t u) {
    const float f = c10::bit_cast<float>(u);
    ++checked;
    if (float_to_half_bits(f) != c10::detail::fp16_ieee_from_fp32_value(f)) {
      first_half = half_bad++ == 0 ? u : first_half;
    }
    if (float_to_bfloat16_bits(f) != c10::detail::round_to_nearest_even(f)) {
      first_bf16 = bf16_bad++ == 0 ? u : first_bf16;
    }
  }
};

void check_from_float() {
  FromFloat c;
  for (const uint32_t u : edge_floats()) {
    c.check(u);
  }
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += kStride) {
    c.check(static_cast<uint32_t>(u));
  }
  EXPECT(c.half_bad == 0, "%lld of %lld floats round to float16 unlike c10, first 0x%08x\n",
         static_cast<long long>(c.half_bad), static_cast<long long>(c.checked), c.first_half);
  EXPECT(c.bf16_bad == 0, "%lld of %lld floats round to bfloat16 unlike c10, first 0x%08x\n",
         static_cast<long long>(c.bf16_bad), static_cast<long long>(c.checked), c.first_bf16);
}

void check_wrappers() {
  const float x = 1.0f / 3.0f;
  EXPECT(to_acc(from_acc<c10::Half>(x)) == static_cast<float>(c10::Half(x)), "Half round trip of 1/3\n");
  EXPECT(to_acc(from_acc<c10::BFloat16>(x)) == static_cast<float>(c10::BFloat16(x)), "BFloat16 round trip of 1/3\n");
  EXPECT(from_acc<float>(x) == x && to_acc(x) == x, "float passes through\n");
  EXPECT(from_acc<double>(0.1) == 0.1 && to_acc(0.1) == 0.1, "double passes through\n");
}

}  // namespace

int main() {
  check_to_float();
  check_from_float();
  check_wrappers();
  return mimo_ext_test::finish("test_half_convert");
}
