// Argument validation for every op, shared by the CPU and CUDA entry points so that each bad input gets the same
// message on every device, and is rejected before anything is allocated or written.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

namespace mimo_ext {

// A Tensor argument given as None reaches the kernels as an undefined tensor: refused by name (TypeError), first,
// since every other check would fail on it with a message that names nothing ("tensor does not have a device").
void check_given(const char* op, const std::string& name, const at::Tensor& t);

// blend, blend_ and the optimizer steps have no derivative: with grad mode on, an input that requires grad is
// refused by name (ValueError). Under torch.no_grad(), where optimizers step, such tensors are fine.
void check_no_grad_needed(const char* op, const std::string& name, const at::Tensor& t);

void check_smooth_max_args(const at::Tensor& losses, double mu);

void check_smooth_max_backward_args(const at::Tensor& grad_value, const at::Tensor& weights);

// in_place: base is also the output, so no grads buffer may partially overlap it.
void check_blend_args(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma,
                      bool in_place);

// A named optimizer state buffer, for messages ("exp_avg must ...").
struct NamedBuffer {
  const char* name;
  const at::Tensor* tensor;
};

// Whether a step's grads are given in pieces: not K flat buffers of param's length (K = coefficients.numel()).
// Pieces are the gradients of consecutive slices of param, in order, each dense and contiguous, of any shape
// (autograd's own .grad tensors of the parameters that param's slices are), objective-major: grads[k * P + j] is
// objective k's gradient of piece j, an empty tensor where objective k has none (zero) for that piece.
bool is_segmented(at::TensorList grads, const at::Tensor& coefficients, const at::Tensor& param);

// The buffers and per-step tensors of a fused optimizer step (sgd_step_, adamw_step_): param and every state
// buffer in use 1-D, contiguous, of one dtype, device and length, overlapping nothing; 1..kMaxStepGrads grads
// like param (or, when is_segmented, in pieces), overlapping neither param nor state;
// coefficients 1-D with one value per grads buffer; lr, step, grad_scale and found_inf single values; every
// tensor on param's device.
void check_step_buffers(const char* op, const at::Tensor& param, const std::vector<NamedBuffer>& states,
                        at::TensorList grads, const at::Tensor& coefficients, const at::Tensor& lr,
                        const at::Tensor& step, const std::optional<at::Tensor>& grad_scale,
                        const std::optional<at::Tensor>& found_inf);

void check_sgd_hyperparameters(double weight_decay, double momentum, double dampening, bool nesterov);

void check_adamw_hyperparameters(double beta1, double beta2, double eps, double weight_decay);

// Gradient buffers one fused step reads (their pointers travel in the CUDA kernel's parameters).
constexpr int64_t kMaxStepGrads = 16;

// The smooth-max temperature as the kernels use it: mu clamped to acc_t's largest finite value, so that a finite
// double mu never becomes Inf in float math (it may underflow to 0: the kernels then give the hard max).
template <typename acc_t>
acc_t temperature_as(double mu);

}  // namespace mimo_ext
