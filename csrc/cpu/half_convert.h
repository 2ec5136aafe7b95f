// Conversions between the storage types and the math type (acc_t) in the CPU loops, written so that the
// compiler can vectorise them.
//
// c10::Half and c10::BFloat16 convert through functions with a branch each (the clamp of the exponent bias and
// the NaN test), which GCC 12 does not if-convert in our loops without AVX-512's masked instructions ("control
// flow in loop"): with them, the float16 loops of the baseline and AVX2 builds and the half-type step loops would
// run scalar. These are c10's portable algorithms (fp16_ieee_to_fp32_value, fp16_ieee_from_fp32_value,
// round_to_nearest_even) with the branches written as masks and std::max, and they must give c10's bits for every
// input: test_half_convert.cpp checks every half and bfloat16 and a strided sample of the floats (all 2^32 of them
// with its kStride = 1).
// Like c10's, they need IEEE arithmetic on denormals (no flush-to-zero), which the CPU kernels never enable.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/bit_cast.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace mimo_ext::cpu {

// All ones where `condition`, else zero.
C10_ALWAYS_INLINE uint32_t mask_if(bool condition) {
  return uint32_t(0) - static_cast<uint32_t>(condition);
}

C10_ALWAYS_INLINE float half_bits_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  // Normal, Inf and NaN: re-bias the exponent by 0xE0 (so that 0x1F maps to 0xFF), then scale by 2^-112.
  const float normalized = c10::bit_cast<float>((two_w >> 4) + (0xE0u << 23)) * c10::bit_cast<float>(15u << 23);
  // Zero and subnormal: the mantissa under exponent 126 is 0.5 + m * 2^-24; subtract the 0.5.
  const float denormalized = c10::bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t tiny = mask_if(two_w < (1u << 27));
  return c10::bit_cast<float>(sign | (c10::bit_cast<uint32_t>(denormalized) & tiny) |
                              (c10::bit_cast<uint32_t>(normalized) & ~tiny));
}

C10_ALWAYS_INLINE uint16_t float_to_half_bits(float f) {
  const uint32_t w = c10::bit_cast<uint32_t>(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  // |f| scaled up by 2^112 and down by 2^-110: overflows to Inf where the half would, keeps the rest exact.
  float base = (c10::bit_cast<float>(w & 0x7FFFFFFFu) * c10::bit_cast<float>(239u << 23)) *
               c10::bit_cast<float>(17u << 23);
  // Adding 2^(e - 10) (at least 2^-14) rounds the mantissa to the half's precision, to nearest even.
  const uint32_t bias = std::max(shl1_w & 0xFF000000u, 0x71000000u);
  base = c10::bit_cast<float>((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = c10::bit_cast<uint32_t>(base);
  const uint32_t nonsign = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
  const uint32_t nan = mask_if(shl1_w > 0xFF000000u);
  return static_cast<uint16_t>((sign >> 16) | (0x7E00u & nan) | (nonsign & ~nan));
}

C10_ALWAYS_INLINE float bfloat16_bits_to_float(uint16_t b) {
  return c10::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

C10_ALWAYS_INLINE uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t u = c10::bit_cast<uint32_t>(f);
  const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;  // to nearest even
  const uint32_t nan = mask_if(f != f);
  return static_cast<uint16_t>((0x7FC0u & nan) | (rounded & ~nan));
}

// to_acc(x): a stored value in the math type (float for the half types, itself otherwise).
C10_ALWAYS_INLINE float to_acc(float x) {
  return x;
}
C10_ALWAYS_INLINE double to_acc(double x) {
  return x;
}
C10_ALWAYS_INLINE float to_acc(c10::Half x) {
  return half_bits_to_float(x.x);
}
C10_ALWAYS_INLINE float to_acc(c10::BFloat16 x) {
  return bfloat16_bits_to_float(x.x);
}

// from_acc<scalar_t>(v): a math-type value rounded to the storage type, as static_cast<scalar_t> does.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE scalar_t from_acc(acc_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return c10::Half(float_to_half_bits(v), c10::Half::from_bits());
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return c10::BFloat16(float_to_bfloat16_bits(v), c10::BFloat16::from_bits());
  } else {
    return static_cast<scalar_t>(v);
  }
}

// The conversions as policies, for loops that pick them per instruction set (blend_cpu.cpp).
struct MaskedConversions {  // the functions above
  template <typename scalar_t>
  static C10_ALWAYS_INLINE auto to_acc(scalar_t x) {
    return cpu::to_acc(x);
  }
  template <typename scalar_t, typename acc_t>
  static C10_ALWAYS_INLINE scalar_t from_acc(acc_t v) {
    return cpu::from_acc<scalar_t>(v);
  }
};

struct C10Conversions {  // c10's own: with AVX-512's masked instructions GCC vectorises them, and they are faster
  template <typename scalar_t>
  static C10_ALWAYS_INLINE auto to_acc(scalar_t x) {
    if constexpr (std::is_same_v<scalar_t, c10::Half> || std::is_same_v<scalar_t, c10::BFloat16>) {
      return static_cast<float>(x);
    } else {
      return x;
    }
  }
  template <typename scalar_t, typename acc_t>
  static C10_ALWAYS_INLINE scalar_t from_acc(acc_t v) {
    return static_cast<scalar_t>(v);
  }
};

}  // namespace mimo_ext::cpu
