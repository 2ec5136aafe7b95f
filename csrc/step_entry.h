// Device-independent bodies of the fused optimizer steps (sgd_step_, adamw_step_): validate everything, bring
// the small per-step tensors to the math dtype, call the device kernel, then advance the step count. Each device
// file instantiates these with its kernels and registers them for its dispatch key.
//
// The step count is advanced after the kernel, by ordinary tensor ops on the same stream, because every thread
// of the kernel reads it: step += 1, or step += (found_inf == 0) when found_inf is given, so a skipped step
// (found_inf set: nothing is written) leaves the count unchanged too.
#pragma once

#include "checks.h"
#include "optim_math.h"

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace mimo_ext {

struct SgdOptions {
  double weight_decay;
  double momentum;
  double dampening;
  bool nesterov;
  bool maximize;
};

struct AdamWOptions {
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  bool amsgrad;
  bool maximize;
};

// What a device kernel receives: validated, non-empty buffers; the state buffers in use (in the order of the
// algorithm's math::*Update); coefficients (already divided by grad_scale), lr and found_inf in the math dtype of
// param and contiguous; step float32; found_inf undefined when not given; stats undefined when not requested,
// otherwise zeros of the math dtype and length 2K, to be filled with
//   [|g_0|^2, ..., |g_{K-1}|^2, <g_0, g_1>, ..., <g_0, g_{K-1}>, |g|^2]
// over the raw gradient buffers g_k and the blended gradient g (nothing when found_inf is set).
struct StepBuffers {
  at::Tensor param;
  std::vector<at::Tensor> states;
  std::vector<at::Tensor> grads;
  at::Tensor coefficients;
  at::Tensor lr;
  at::Tensor step;
  at::Tensor found_inf;
  at::Tensor stats;
};

using SgdKernel = void (*)(const StepBuffers& buffers, const SgdOptions& options);
using AdamWKernel = void (*)(const StepBuffers& buffers, const AdamWOptions& options);

namespace detail {

// The gradients given in pieces (is_segmented): the kernel runs once per piece, on the matching slices of param and
// state, with the objectives that have a gradient there (and their coefficients); the pieces' statistics are summed
// (then every objective takes part: a missing gradient is read as zeros, so each entry keeps its meaning). Each
// element is computed exactly as in one call over flat buffers (the update is element-wise; the blend adds the same
// terms in the same order, a missing one being an exact zero); the statistics' sums run in the order of the pieces.
template <typename Options, void (*kernel)(const StepBuffers&, const Options&)>
void run_pieces(const StepBuffers& b, const Options& options) {
  const std::vector<at::Tensor> grads = b.grads;
  const int64_t k_count = b.coefficients.numel();
  const int64_t pieces = static_cast<int64_t>(grads.size()) / k_count;
  const bool stats = b.stats.defined();
  int64_t offset = 0;
  for (int64_t j = 0; j < pieces; ++j) {
    int64_t n = 0;
    std::vector<int64_t> present;
    for (int64_t k = 0; k < k_count; ++k) {
      if (grads[k * pieces + j].numel() > 0) {
        n = grads[k * pieces + j].numel();
        present.push_back(k);
      }
    }
    if (n == 0) {
      continue;
    }
    StepBuffers piece = b;
    piece.param = b.param.narrow(0, offset, n);
    for (at::Tensor& state : piece.states) {
      state = state.narrow(0, offset, n);
    }
    piece.grads.clear();
    if (stats || static_cast<int64_t>(present.size()) == k_count) {
      for (int64_t k = 0; k < k_count; ++k) {
        const at::Tensor& g = grads[k * pieces + j];
        piece.grads.push_back(g.numel() > 0 ? g.view({n}) : at::zeros({n}, b.param.options()));
      }
    } else {
      // The present objectives' coefficients selected on their device (slices joined): a host index copied to a
      // CUDA device would synchronise with the host at every step and could not be captured in a CUDA graph.
      std::vector<at::Tensor> chosen;
      chosen.reserve(present.size());
      for (int64_t k : present) {
        piece.grads.push_back(grads[k * pieces + j].view({n}));
        chosen.push_back(b.coefficients.narrow(0, k, 1));
      }
      piece.coefficients = at::cat(chosen);
    }
    if (stats) {
      piece.stats = at::zeros_like(b.stats);
    }
    kernel(piece, options);
    if (stats) {
      b.stats.add_(piece.stats);
    }
    offset += n;
  }
}

// Builds the kernel's view of the call (after validation), runs it, and advances the step count.
template <typename Options, void (*kernel)(const StepBuffers&, const Options&)>
at::Tensor run_step(const at::Tensor& param, std::vector<at::Tensor> states, at::TensorList grads,
                    const at::Tensor& coefficients, const at::Tensor& lr, at::Tensor& step,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                    const Options& options, bool compute_stats) {
  const at::ScalarType acc = at::toOpMathType(param.scalar_type());
  const auto in_acc = [&](const at::Tensor& t) { return t.to(acc).contiguous(); };
  StepBuffers b;
  b.param = param;
  b.states = std::move(states);
  b.grads = grads.vec();
  b.coefficients = in_acc(coefficients);
  at::Tensor inv_scale;
  if (grad_scale.has_value()) {
    inv_scale = in_acc(*grad_scale).reshape({1}).reciprocal();
    b.coefficients = b.coefficients.mul(inv_scale);  // unscales the gradients inside the single pass
  }
  b.lr = in_acc(lr);
  b.step = step;
  if (found_inf.has_value()) {
    // A 0/1 flag, not found_inf converted: a float64 1e-301 (or any value below the math dtype's smallest
    // subnormal) would convert to 0 and the kernel would step while the count below skipped. Nonzero means skip,
    // in found_inf's own dtype, for the kernel and the step count alike.
    b.found_inf = found_inf->ne(0).to(acc).contiguous();
  }
  const int64_t k_count = coefficients.numel();  // the number of gradients, also when given in pieces
  at::Tensor stats = at::empty({0}, param.options().dtype(acc));
  if (compute_stats) {
    stats = at::zeros({2 * k_count}, param.options().dtype(acc));
    b.stats = stats;
  }
  if (param.numel() > 0 && is_segmented(grads, coefficients, param)) {
    run_pieces<Options, kernel>(b, options);
  } else if (param.numel() > 0) {
    kernel(b, options);
  }
  if (compute_stats && inv_scale.defined()) {
    // The kernel measures the raw (scaled) buffers g_k; the blended gradient is already unscaled.
    at::Tensor factor = inv_scale.square();
    if (b.found_inf.defined()) {
      // A skipped step's statistics stay zero even where 1 / grad_scale^2 is not finite (0 * Inf would be NaN).
      factor = factor.masked_fill(b.found_inf.reshape({1}).ne(0), 0);
    }
    stats.narrow(0, 0, 2 * k_count - 1).mul_(factor);
  }
  if (found_inf.has_value()) {
    step.add_(found_inf->eq(0).reshape(step.sizes()));
  } else {
    step.add_(1);
  }
  return stats;
}

}  // namespace detail

template <SgdKernel kernel>
at::Tensor sgd_step_op(at::Tensor& param, at::Tensor& momentum_buffer, at::TensorList grads,
                       const at::Tensor& coefficients, const at::Tensor& lr, at::Tensor& step,
                       const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                       double weight_decay, double momentum, double dampening, bool nesterov, bool maximize,
                       bool compute_stats) {
  check_given("mimo_ext.sgd_step_", "momentum_buffer", momentum_buffer);  // even when momentum == 0 leaves it unused
  check_sgd_hyperparameters(weight_decay, momentum, dampening, nesterov);
  std::vector<NamedBuffer> named;
  if (momentum != 0) {
    named.push_back({"momentum_buffer", &momentum_buffer});
  }
  check_step_buffers("mimo_ext.sgd_step_", param, named, grads, coefficients, lr, step, grad_scale, found_inf);
  std::vector<at::Tensor> states;
  for (const NamedBuffer& s : named) {
    states.push_back(*s.tensor);
  }
  return detail::run_step<SgdOptions, kernel>(param, std::move(states), grads, coefficients, lr, step, grad_scale,
                                              found_inf,
                                              SgdOptions{weight_decay, momentum, dampening, nesterov, maximize},
                                              compute_stats);
}

template <AdamWKernel kernel>
at::Tensor adamw_step_op(at::Tensor& param, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor& max_exp_avg_sq,
                         at::TensorList grads, const at::Tensor& coefficients, const at::Tensor& lr, at::Tensor& step,
                         const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                         double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                         bool compute_stats) {
  check_given("mimo_ext.adamw_step_", "max_exp_avg_sq", max_exp_avg_sq);  // even when amsgrad leaves it unused
  check_adamw_hyperparameters(beta1, beta2, eps, weight_decay);
  std::vector<NamedBuffer> named{{"exp_avg", &exp_avg}, {"exp_avg_sq", &exp_avg_sq}};
  if (amsgrad) {
    named.push_back({"max_exp_avg_sq", &max_exp_avg_sq});
  }
  check_step_buffers("mimo_ext.adamw_step_", param, named, grads, coefficients, lr, step, grad_scale, found_inf);
  std::vector<at::Tensor> states;
  for (const NamedBuffer& s : named) {
    states.push_back(*s.tensor);
  }
  return detail::run_step<AdamWOptions, kernel>(
      param, std::move(states), grads, coefficients, lr, step, grad_scale, found_inf,
      AdamWOptions{beta1, beta2, eps, weight_decay, amsgrad, maximize}, compute_stats);
}

// The math::*Update of an algorithm in acc_t, from its options.
template <typename acc_t>
math::SgdUpdate<acc_t> make_update(const SgdOptions& o) {
  return {static_cast<acc_t>(o.weight_decay), static_cast<acc_t>(o.momentum), static_cast<acc_t>(o.dampening),
          o.nesterov, o.maximize, o.weight_decay != 0};
}

template <typename acc_t>
math::AdamWUpdate<acc_t> make_update(const AdamWOptions& o) {
  return {static_cast<acc_t>(o.beta1), static_cast<acc_t>(o.beta2), static_cast<acc_t>(1.0 - o.beta1),
          static_cast<acc_t>(1.0 - o.beta2), static_cast<acc_t>(o.eps), o.amsgrad, o.maximize, o.weight_decay,
          o.beta1, o.beta2};
}

}  // namespace mimo_ext
