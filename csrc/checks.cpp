#include "checks.h"

#include <ATen/MemoryOverlap.h>

#include <cmath>
#include <limits>

namespace mimo_ext {
namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

void check_smooth_max_args(const at::Tensor& losses, double mu) {
  TORCH_CHECK_VALUE(std::isfinite(mu) && mu > 0, "mimo_ext.smooth_max: mu must be finite and > 0, got ", mu);
  TORCH_CHECK_TYPE(is_supported_float(losses.scalar_type()),
                   "mimo_ext.smooth_max: losses must be float32, float64, float16 or bfloat16, got ",
                   losses.scalar_type());
  TORCH_CHECK_VALUE(losses.dim() >= 1, "mimo_ext.smooth_max: losses must have at least 1 dimension [..., M], got a ",
                    "0-dim tensor");
  TORCH_CHECK_VALUE(losses.size(-1) >= 1, "mimo_ext.smooth_max: losses must have M >= 1 entries in its last ",
                    "dimension, got shape ", losses.sizes());
}

void check_smooth_max_backward_args(const at::Tensor& grad_value, const at::Tensor& weights) {
  TORCH_CHECK_VALUE(weights.dim() >= 1 && grad_value.sizes() == weights.sizes().slice(0, weights.dim() - 1),
                    "mimo_ext.smooth_max_backward: grad_value must have the shape of weights without its last ",
                    "dimension, got grad_value ", grad_value.sizes(), " and weights ", weights.sizes());
  TORCH_CHECK_VALUE(grad_value.device() == weights.device(), "mimo_ext.smooth_max_backward: grad_value is on ",
                    grad_value.device(), " but weights is on ", weights.device());
}

void check_blend_args(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma,
                      bool in_place) {
  const char* op = in_place ? "mimo_ext.blend_" : "mimo_ext.blend";
  TORCH_CHECK_VALUE(std::isfinite(gamma), op, ": gamma must be finite, got ", gamma);
  TORCH_CHECK_TYPE(is_supported_float(base.scalar_type()), op, ": base must be float32, float64, float16 or bfloat16, got ", base.scalar_type());
  TORCH_CHECK_VALUE(base.dim() == 1, op, ": base must be a 1-D buffer, got shape ", base.sizes());
  TORCH_CHECK_VALUE(base.is_contiguous(), op, ": base must be contiguous, got strides ", base.strides());
  TORCH_CHECK_VALUE(!grads.empty(), op, ": grads must hold at least one buffer, got an empty list");
  for (size_t k = 0; k < grads.size(); ++k) {
    const at::Tensor& g = grads[k];
    TORCH_CHECK_TYPE(g.scalar_type() == base.scalar_type(), op, ": grads[", k, "] must have the dtype of base (",
                     base.scalar_type(), "), got ", g.scalar_type());
    TORCH_CHECK_VALUE(g.device() == base.device(), op, ": grads[", k, "] must be on the device of base (",
                      base.device(), "), got ", g.device());
    TORCH_CHECK_VALUE(g.dim() == 1, op, ": grads[", k, "] must be a 1-D buffer, got shape ", g.sizes());
    TORCH_CHECK_VALUE(g.numel() == base.numel(), op, ": grads[", k, "] must have the length of base (",
                      base.numel(), "), got ", g.numel());
    TORCH_CHECK_VALUE(g.is_contiguous(), op, ": grads[", k, "] must be contiguous, got strides ", g.strides());
    if (in_place) {
      // The same buffer as base is fine (each element is read before it is written); a shifted view is not.
      TORCH_CHECK_VALUE(at::get_overlap_status(base, g) != at::MemOverlapStatus::Partial, op, ": grads[", k,
                        "] partially overlaps base, which is written in place");
    }
  }
  TORCH_CHECK_TYPE(is_supported_float(weights.scalar_type()), op,
                   ": weights must be a floating-point tensor, got ", weights.scalar_type());
  TORCH_CHECK_VALUE(weights.dim() == 1 && weights.numel() == static_cast<int64_t>(grads.size()), op,
                    ": weights must be 1-D with one entry per grads buffer (", grads.size(), "), got shape ",
                    weights.sizes());
  // The weights are read by the kernel itself, never on the host: they must live where the buffers live.
  TORCH_CHECK_VALUE(weights.device() == base.device(), op, ": weights must be on the device of base (",
                    base.device(), "), got ", weights.device());
}

template <typename acc_t>
acc_t temperature_as(double mu) {
  const double largest = static_cast<double>(std::numeric_limits<acc_t>::max());
  return static_cast<acc_t>(mu < largest ? mu : largest);
}

template float temperature_as<float>(double);
template double temperature_as<double>(double);

}  // namespace mimo_ext
