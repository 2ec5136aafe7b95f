// Math of the gradient blend, shared by the CPU and CUDA kernels (host/device inline functions).
//
// out = base + gamma * sum_k w_k * g_k is evaluated per element as
//   acc = base;  acc += c_k * g_k for k = 0..K-1;  out = acc,   with c_k = gamma * w_k,
// in acc_t (float for float/half/bfloat16 storage, double for double), rounding once at the store.
#pragma once

#include <c10/macros/Macros.h>

namespace mimo_ext::math {

template <typename acc_t>
C10_HOST_DEVICE inline acc_t blend_coefficient(acc_t gamma, acc_t weight) {
  return gamma * weight;
}

template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline acc_t blend_accumulate(acc_t acc, acc_t coefficient, scalar_t grad) {
  return acc + coefficient * static_cast<acc_t>(grad);
}

}  // namespace mimo_ext::math
