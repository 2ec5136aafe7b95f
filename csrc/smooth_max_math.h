// Math of the smoothed max, host/device inline functions used by the CUDA kernels (the CPU kernel,
// cpu/smooth_max_cpu.cpp, follows the same rules in passes that vectorise, with scaled_exp's rule for each
// exponential; test_math checks these functions).
//
// S_mu(l) = mu * log(sum_i exp(l_i / mu)) and w = softmax(l / mu) are evaluated relative to the row's largest
// loss m:  S_mu = m + mu * log(sum_i exp((l_i - m) / mu)),  w_i = exp((l_i - m) / mu) / sum.
// Every exponent is <= 0, so nothing overflows however large |l / mu| is, and the sum lies in [1, M].
//
// The state is built online (one pass, order-free merge) so that a CUDA warp can split a long row between lanes
// and combine the partial states with shuffles, while the one-thread-per-row CUDA kernel folds a row element by
// element. A row holding any NaN or +-Inf yields NaN for the value and every weight.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <limits>

namespace mimo_ext::math {

// Device code calls CUDA's math functions, host code the <cmath> overloads; both pick float or double by acc_t.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t exp_(acc_t x) {
#ifdef __CUDA_ARCH__
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t log_(acc_t x) {
#ifdef __CUDA_ARCH__
  return ::log(x);
#else
  return std::log(x);
#endif
}

template <typename acc_t>
C10_HOST_DEVICE inline bool is_finite(acc_t x) {
#ifdef __CUDA_ARCH__
  return ::isfinite(x);
#else
  return std::isfinite(x);
#endif
}

// exp(diff / mu) for diff <= 0, given an exponential for arguments <= 0 (exp_, or the CPU kernel's vectorised
// one). diff == 0 is answered apart: a temperature that underflows to 0 in acc_t then gives the hard max (ties share
// the weight equally) instead of 0 / 0. The quotient is guarded too, so that a loop that evaluates both sides of
// the select (the vectorised CPU loop) never forms 0 / 0 either.
template <typename acc_t, typename Exp>
C10_HOST_DEVICE inline acc_t scaled_exp(acc_t diff, acc_t mu, Exp exp_nonpositive) {
  const acc_t scaled = diff == acc_t(0) ? acc_t(0) : diff / mu;
  return diff == acc_t(0) ? acc_t(1) : exp_nonpositive(scaled);
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t scaled_exp(acc_t diff, acc_t mu) {
  return scaled_exp(diff, mu, [](acc_t x) { return exp_(x); });
}

template <typename acc_t>
struct LseState {
  acc_t max;    // largest loss seen so far
  acc_t sum;    // sum_i exp((l_i - max) / mu) over the losses seen
  bool finite;  // false once a NaN or +-Inf was seen
};

template <typename acc_t>
C10_HOST_DEVICE inline LseState<acc_t> lse_empty() {
  return {-std::numeric_limits<acc_t>::infinity(), acc_t(0), true};
}

template <typename acc_t>
C10_HOST_DEVICE inline void lse_push(LseState<acc_t>& s, acc_t loss, acc_t mu) {
  if (!is_finite(loss)) {
    s.finite = false;
    return;
  }
  if (loss > s.max) {
    // Rescale what was summed to the new maximum; an empty state has sum 0 and stays 0.
    s.sum = s.sum * scaled_exp(s.max - loss, mu) + acc_t(1);
    s.max = loss;
  } else {
    s.sum += scaled_exp(loss - s.max, mu);
  }
}

template <typename acc_t>
C10_HOST_DEVICE inline LseState<acc_t> lse_merge(const LseState<acc_t>& a, const LseState<acc_t>& b, acc_t mu) {
  const bool finite = a.finite && b.finite;
  if (b.sum == acc_t(0)) {
    return {a.max, a.sum, finite};
  }
  if (a.sum == acc_t(0)) {
    return {b.max, b.sum, finite};
  }
  const acc_t m = a.max > b.max ? a.max : b.max;
  return {m, a.sum * scaled_exp(a.max - m, mu) + b.sum * scaled_exp(b.max - m, mu), finite};
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t lse_value(const LseState<acc_t>& s, acc_t mu) {
  return s.finite ? s.max + mu * log_(s.sum) : std::numeric_limits<acc_t>::quiet_NaN();
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t lse_weight(const LseState<acc_t>& s, acc_t loss, acc_t mu) {
  return s.finite ? scaled_exp(loss - s.max, mu) / s.sum : std::numeric_limits<acc_t>::quiet_NaN();
}

// One row of M losses: writes the smoothed max to *value and the M softmax weights to weights.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void smooth_max_row(const scalar_t* losses, int64_t m, acc_t mu, scalar_t* value,
                                           scalar_t* weights) {
  LseState<acc_t> s = lse_empty<acc_t>();
  for (int64_t i = 0; i < m; ++i) {
    lse_push(s, static_cast<acc_t>(losses[i]), mu);
  }
  *value = static_cast<scalar_t>(lse_value(s, mu));
  for (int64_t i = 0; i < m; ++i) {
    weights[i] = static_cast<scalar_t>(lse_weight(s, static_cast<acc_t>(losses[i]), mu));
  }
}

}  // namespace mimo_ext::math
