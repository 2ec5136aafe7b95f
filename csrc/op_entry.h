// Device-independent bodies of the ops: validate, allocate, then hand the work to a device kernel. Each device
// file instantiates these with its own kernel and registers the result for its dispatch key, so validation and
// allocation are written once.
#pragma once

#include "checks.h"

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <tuple>

namespace mimo_ext {

// losses: contiguous [rows, M] view of the input, numel > 0; value [rows]; weights like losses.
using SmoothMaxKernel = void (*)(const at::Tensor& losses, double mu, const at::Tensor& value,
                                 const at::Tensor& weights);

// All buffers validated, 1-D, contiguous and non-empty; weights already in the math type of base
// (float64 for float64 buffers, float32 otherwise) and contiguous. out may be base itself.
using BlendKernel = void (*)(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights,
                             double gamma, const at::Tensor& out);

template <SmoothMaxKernel kernel>
std::tuple<at::Tensor, at::Tensor> smooth_max_op(const at::Tensor& losses, double mu) {
  check_smooth_max_args(losses, mu);
  const at::Tensor contiguous = losses.contiguous();
  at::Tensor value = at::empty(contiguous.sizes().slice(0, contiguous.dim() - 1), contiguous.options());
  at::Tensor weights = at::empty_like(contiguous);
  if (contiguous.numel() > 0) {
    kernel(contiguous.view({-1, contiguous.size(-1)}), mu, value.view({-1}), weights.view({-1, contiguous.size(-1)}));
  }
  return {value, weights};
}

inline at::Tensor weights_in_math_type(const at::Tensor& weights, const at::Tensor& base) {
  // A device-side cast when needed: the weights are never read on the host.
  return weights.to(at::toOpMathType(base.scalar_type())).contiguous();
}

template <BlendKernel kernel>
at::Tensor blend_op(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma) {
  check_blend_args(base, grads, weights, gamma, /*in_place=*/false);
  at::Tensor out = at::empty_like(base);
  if (base.numel() > 0) {
    kernel(base, grads, weights_in_math_type(weights, base), gamma, out);
  }
  return out;
}

template <BlendKernel kernel>
void blend_in_place_op(at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma) {
  check_blend_args(base, grads, weights, gamma, /*in_place=*/true);
  if (base.numel() > 0) {
    kernel(base, grads, weights_in_math_type(weights, base), gamma, base);
  }
}

}  // namespace mimo_ext
