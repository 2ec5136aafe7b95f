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
  // make the count a compile-time constant, so that their inner loops over the buffers unroll.
  static constexpr int kStatesWithout = 0;

  acc_t weight_decay;
  acc_t momentum;
  acc_t dampening;
  bool nesterov;
  bool maximize;

  struct PerStep {
    acc_t lr;
    bool first;
  };

  C10_HOST_DEVICE PerStep prepare(acc_t lr, float step) const {
    return {lr, step == 0.0f};
  }

  // Written as selects rather than branches, so that the CPU compiler vectorises the loop around it.
  C10_HOST_DEVICE void operator()(const PerStep& s, acc_t& param, acc_t* state, acc_t grad) const {
    grad = maximize ? -grad : grad;
    grad = weight_decay != acc_t(0) ? grad + weight_decay * param : grad;
    const bool with_momentum = momentum != acc_t(0);
    const acc_t buf = s.first ? grad : momentum * state[0] + (acc_t(1) - dampening) * grad;
    state[0] = with_momentum ? buf : state[0];
    grad = with_momentum ? (nesterov ? grad + momentum * buf : buf) : grad;
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
  acc_t eps;
  acc_t weight_decay;
  bool amsgrad;
  bool maximize;

  struct PerStep {
    acc_t decay;      // 1 - lr * weight_decay
    acc_t step_size;  // lr / (1 - beta1^t)
    acc_t bias_correction2_sqrt;
  };

  C10_HOST_DEVICE PerStep prepare(acc_t lr, float step) const {
    const acc_t t = static_cast<acc_t>(step) + acc_t(1);
    return {acc_t(1) - lr * weight_decay, lr / (acc_t(1) - pow_(beta1, t)), sqrt_(acc_t(1) - pow_(beta2, t))};
  }

  C10_HOST_DEVICE void operator()(const PerStep& s, acc_t& param, acc_t* state, acc_t grad) const {
    if (maximize) {
      grad = -grad;
    }
    acc_t& exp_avg = state[0];
    acc_t& exp_avg_sq = state[1];
    param *= s.decay;
    exp_avg = beta1 * exp_avg + (acc_t(1) - beta1) * grad;
    exp_avg_sq = beta2 * exp_avg_sq + (acc_t(1) - beta2) * grad * grad;
    acc_t second = exp_avg_sq;
    if (amsgrad) {
      acc_t& max_exp_avg_sq = state[2];
      max_exp_avg_sq = max_exp_avg_sq > exp_avg_sq ? max_exp_avg_sq : exp_avg_sq;
      second = max_exp_avg_sq;
    }
    param -= s.step_size * exp_avg / (sqrt_(second) / s.bias_correction2_sqrt + eps);
  }
};

}  // namespace mimo_ext::math
