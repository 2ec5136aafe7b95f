// Argument validation for every op, shared by the CPU and CUDA entry points so that each bad input gets the same
// message on every device, and is rejected before anything is allocated or written.
#pragma once

#include <ATen/core/Tensor.h>

namespace mimo_ext {

void check_smooth_max_args(const at::Tensor& losses, double mu);

void check_smooth_max_backward_args(const at::Tensor& grad_value, const at::Tensor& weights);

// in_place: base is also the output, so no grads buffer may partially overlap it.
void check_blend_args(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma,
                      bool in_place);

// The smooth-max temperature as the kernels use it: mu clamped to acc_t's largest finite value, so that a finite
// double mu never becomes Inf in float math (it may underflow to 0: the kernels then give the hard max).
template <typename acc_t>
acc_t temperature_as(double mu);

}  // namespace mimo_ext
