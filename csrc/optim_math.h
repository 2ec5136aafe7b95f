// Math of the fused MIMO optimizer steps, shared by the CPU and CUDA kernels (host/device inline functions).
//
// Each step reads one element of the parameter, of its optimizer state and of the K per-objective gradients,
// blends the gradients (g = sum_k c_k * g_k with c = [1, gamma * w_1, ..., gamma * w_M] / grad_scale) and
// applies the update in acc_t (float for float/half/bfloat16 storage, double for double). The per-step scalars
// (lr, step count) are read from device tensors by the kernel; `prepare` turns them into what every element
// needs, once per thread. The updates follow torch.optim.SGD and torch.optim.AdamW (its fused form:
// p *= 1 - lr * wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace mimo_ext::math {

// Optimizer state buffers per algorithm: at most this many, each laid out like the parameter.
constexpr int kMaxStates = 3;

template <typename acc_t>
C10_HOST_DEVICE inline acc_t pow_(acc_t base, acc_t exponent) {
#ifdef __CUDA_ARCH__
  return ::pow(base, exponent);
#else
  return std::pow(base, exponent);
#endif
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t sqrt_(acc_t x) {
#ifdef __CUDA_ARCH__
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// SGD with momentum, dampening, Nesterov and L2 weight decay, as torch.optim.SGD. State: [momentum_buffer] when
// momentum != 0, none otherwise. The first step (step count 0) starts the buffer at the gradient.
template <typename acc_t>
struct SgdUpdate {
  // The state buffers in use: kStatesWithout without momentum, one more (the momentum buffer) with it. Kernels
  // pass the count as a compile-time constant (apply<kStates>), so their inner loops unroll and the option tests
  // are resolved outside the element loop.
  static constexpr int kStatesWithout = 0;

  acc_t weight_decay;
  acc_t momentum;
  acc_t dampening;
  bool nesterov;
  bool maximize;
  bool with_weight_decay;  // weight_decay != 0, decided once (a float test per element keeps the loop scalar)

  struct PerStep {
    acc_t lr;
    acc_t keep;  // factor of the old momentum buffer: momentum (unused on the first step)
    acc_t take;  // factor of the gradient: 1 on the first step (the buffer starts at g), 1 - dampening after
    bool first;  // step 0: the buffer is set to g, its old content never read (an Inf left there stays out)
  };

  C10_HOST_DEVICE PerStep prepare(acc_t lr, float step) const {
    const bool first = step == 0.0f;
    return {lr, momentum, first ? acc_t(1) : acc_t(1) - dampening, first};
  }

  // Selects on booleans rather than branches, so that the CPU compiler vectorises the loop around it.
  template <int kStates>
  C10_HOST_DEVICE void apply(const PerStep& s, acc_t& param, acc_t* state, acc_t grad) const {
    grad = maximize ? -grad : grad;
    grad = with_weight_decay ? grad + weight_decay * param : grad;
    if constexpr (kStates > 0) {
      // A select, not 0 * buf: 0 * Inf would be NaN (torch.optim.SGD sets the buffer to g on its first step).
      const acc_t buf = s.first ? s.take * grad : s.keep * state[0] + s.take * grad;
      state[0] = buf;
      grad = nesterov ? grad + momentum * buf : buf;
    }
    param -= s.lr * grad;
  }
};

// AdamW (decoupled weight decay), optionally AMSGrad, as torch.optim.AdamW. State: [exp_avg, exp_avg_sq] and
// max_exp_avg_sq third when amsgrad. The step count read is the one before this step (t = step + 1).
template <typename acc_t>
struct AdamWUpdate {
  // The state buffers in use: exp_avg and exp_avg_sq, and max_exp_avg_sq after them with amsgrad.
  static constexpr int kStatesWithout = 2;

  acc_t beta1;
  acc_t beta2;
  // 1 - beta computed in double on the host: in float, 1 - 0.999f is off by 1e-5 relative (torch.optim computes
  // it in double too).
  acc_t one_minus_beta1;
  acc_t one_minus_beta2;
  acc_t eps;
  bool amsgrad;
  bool maximize;
  // The per-step factors are computed in double once per thread, as torch.optim does on the host.
  double weight_decay;
  double beta1_exact;
  double beta2_exact;

  struct PerStep {
    acc_t decay;      // 1 - lr * weight_decay
    acc_t step_size;  // lr / (1 - beta1^t)
    acc_t bias_correction2_sqrt;
  };

  C10_HOST_DEVICE PerStep prepare(acc_t lr, float step) const {
    const double t = static_cast<double>(step) + 1.0;
    const double lr_d = static_cast<double>(lr);
    return {static_cast<acc_t>(1.0 - lr_d * weight_decay),
            static_cast<acc_t>(lr_d / (1.0 - pow_(beta1_exact, t))),
            static_cast<acc_t>(sqrt_(1.0 - pow_(beta2_exact, t)))};
  }

  // kStates: 3 with amsgrad (max_exp_avg_sq third), 2 without.
  template <int kStates>
  C10_HOST_DEVICE void apply(const PerStep& s, acc_t& param, acc_t* state, acc_t grad) const {
    grad = maximize ? -grad : grad;
    acc_t& exp_avg = state[0];
    acc_t& exp_avg_sq = state[1];
    param *= s.decay;
    exp_avg = beta1 * exp_avg + one_minus_beta1 * grad;
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * grad * grad;
    acc_t second = exp_avg_sq;
    if constexpr (kStates > 2) {
      acc_t& max_exp_avg_sq = state[2];
      // NaN propagates as in torch.maximum (a > b ? a : b alone would drop a NaN in the running maximum).
      const bool keep_max = max_exp_avg_sq > exp_avg_sq || max_exp_avg_sq != max_exp_avg_sq;
      max_exp_avg_sq = keep_max ? max_exp_avg_sq : exp_avg_sq;
      second = max_exp_avg_sq;
    }
    param -= s.step_size * exp_avg / (sqrt_(second) / s.bias_correction2_sqrt + eps);
  }
};

}  // namespace mimo_ext::math
