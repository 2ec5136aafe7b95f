#include "checks.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <limits>
#include <string>

namespace mimo_ext {
namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

bool overlaps(const at::Tensor& a, const at::Tensor& b) {
  const at::MemOverlapStatus status = at::get_overlap_status(a, b);
  return status == at::MemOverlapStatus::Full || status == at::MemOverlapStatus::Partial;
}

}  // namespace

void check_given(const char* op, const std::string& name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.defined(), op, ": ", name, " must be a tensor, got None");
}

// Called for every tensor argument by the Autograd-key kernel of blend, blend_ and the steps
// (non_differentiable_autograd.cpp), the one layer every call with grad mode on passes through. With grad mode
// on, an input that requires grad is refused: blend's result would get no gradient (PyTorch only warns, at
// backward time), and the in-place ops would write into tensors autograd tracks (a leaf that requires grad, which
// PyTorch's own in-place ops refuse).
void check_no_grad_needed(const char* op, const std::string& name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(!(t.requires_grad() && at::GradMode::is_enabled()), op, ": ", name,
                    " requires grad, but this op is not differentiable; call it under torch.no_grad() or on detached "
                    "tensors");
}

void check_smooth_max_args(const at::Tensor& losses, double mu) {
  check_given("mimo_ext.smooth_max", "losses", losses);
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
  check_given("mimo_ext.smooth_max_backward", "grad_value", grad_value);
  check_given("mimo_ext.smooth_max_backward", "weights", weights);
  TORCH_CHECK_TYPE(is_supported_float(weights.scalar_type()),
                   "mimo_ext.smooth_max_backward: weights must be float32, float64, float16 or bfloat16, got ",
                   weights.scalar_type());
  TORCH_CHECK_TYPE(is_supported_float(grad_value.scalar_type()),
                   "mimo_ext.smooth_max_backward: grad_value must be float32, float64, float16 or bfloat16, got ",
                   grad_value.scalar_type());
  TORCH_CHECK_VALUE(weights.dim() >= 1 && grad_value.sizes() == weights.sizes().slice(0, weights.dim() - 1),
                    "mimo_ext.smooth_max_backward: grad_value must have the shape of weights without its last ",
                    "dimension, got grad_value ", grad_value.sizes(), " and weights ", weights.sizes());
  TORCH_CHECK_VALUE(grad_value.device() == weights.device(), "mimo_ext.smooth_max_backward: grad_value is on ",
                    grad_value.device(), " but weights is on ", weights.device());
}

void check_blend_args(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma,
                      bool in_place) {
  const char* op = in_place ? "mimo_ext.blend_" : "mimo_ext.blend";
  check_given(op, "base", base);
  for (size_t k = 0; k < grads.size(); ++k) {
    check_given(op, "grads[" + std::to_string(k) + "]", grads[k]);
  }
  check_given(op, "weights", weights);
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
  if (in_place) {
    // Read by every thread while base is written.
    TORCH_CHECK_VALUE(!overlaps(weights, base), op, ": weights overlaps base, which is written in place");
  }
}

namespace {

void check_single_value(const char* op, const char* name, const at::Tensor& t, const at::Tensor& param) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.numel() == 1, op, ": ", name, " must hold a single value, got shape ", t.sizes());
  // Read by the kernel on the device, never on the host (no synchronisation, CUDA-graph capturable).
  TORCH_CHECK_VALUE(t.device() == param.device(), op, ": ", name, " must be on the device of param (",
                    param.device(), "), got ", t.device());
}

void check_like_param(const char* op, const std::string& name, const at::Tensor& t, const at::Tensor& param) {
  TORCH_CHECK_TYPE(t.scalar_type() == param.scalar_type(), op, ": ", name, " must have the dtype of param (",
                   param.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == param.device(), op, ": ", name, " must be on the device of param (",
                    param.device(), "), got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == 1, op, ": ", name, " must be a 1-D buffer, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.numel() == param.numel(), op, ": ", name, " must have the length of param (", param.numel(),
                    "), got ", t.numel());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

}  // namespace

bool is_segmented(at::TensorList grads, const at::Tensor& coefficients, const at::Tensor& param) {
  if (!coefficients.defined() || coefficients.dim() != 1 || !param.defined()) {
    return false;
  }
  if (static_cast<int64_t>(grads.size()) != coefficients.numel()) {
    return true;
  }
  for (const at::Tensor& g : grads) {
    if (g.defined() && (g.dim() != 1 || g.numel() != param.numel())) {
      return true;
    }
  }
  return false;
}

void check_step_buffers(const char* op, const at::Tensor& param, const std::vector<NamedBuffer>& states,
                        at::TensorList grads, const at::Tensor& coefficients, const at::Tensor& lr,
                        const at::Tensor& step, const std::optional<at::Tensor>& grad_scale,
                        const std::optional<at::Tensor>& found_inf) {
  std::vector<std::string> grad_names;
  for (size_t k = 0; k < grads.size(); ++k) {
    grad_names.push_back("grads[" + std::to_string(k) + "]");
  }
  check_given(op, "param", param);
  for (const NamedBuffer& s : states) {
    check_given(op, s.name, *s.tensor);
  }
  for (size_t k = 0; k < grads.size(); ++k) {
    check_given(op, grad_names[k], grads[k]);
  }
  check_given(op, "coefficients", coefficients);
  check_given(op, "lr", lr);
  check_given(op, "step", step);
  TORCH_CHECK_TYPE(is_supported_float(param.scalar_type()), op,
                   ": param must be float32, float64, float16 or bfloat16, got ", param.scalar_type());
  TORCH_CHECK_VALUE(param.dim() == 1, op, ": param must be a 1-D buffer, got shape ", param.sizes());
  TORCH_CHECK_VALUE(param.is_contiguous(), op, ": param must be contiguous, got strides ", param.strides());
  for (size_t s = 0; s < states.size(); ++s) {
    const at::Tensor& t = *states[s].tensor;
    check_like_param(op, states[s].name, t, param);
    TORCH_CHECK_VALUE(!overlaps(t, param), op, ": ", states[s].name, " overlaps param");
    for (size_t r = 0; r < s; ++r) {
      TORCH_CHECK_VALUE(!overlaps(t, *states[r].tensor), op, ": ", states[s].name, " overlaps ", states[r].name);
    }
  }
  TORCH_CHECK_VALUE(!grads.empty(), op, ": grads must hold at least one buffer, got an empty list");
  TORCH_CHECK_TYPE(is_supported_float(coefficients.scalar_type()), op,
                   ": coefficients must be a floating-point tensor, got ", coefficients.scalar_type());
  if (is_segmented(grads, coefficients, param)) {
    // K gradients, each given as the tensors of consecutive pieces of param (autograd's own .grad tensors),
    // objective-major: grads[k * P + j] is objective k's gradient of piece j; an empty tensor means none (zero).
    const int64_t k_count = coefficients.numel();
    TORCH_CHECK_VALUE(coefficients.dim() == 1 && k_count >= 1 && k_count <= kMaxStepGrads, op,
                      ": coefficients must be 1-D with 1 to ", kMaxStepGrads, " entries, got shape ",
                      coefficients.sizes());
    const int64_t count = static_cast<int64_t>(grads.size());
    TORCH_CHECK_VALUE(count % k_count == 0, op, ": grads must hold one buffer of param's length per coefficient, or ",
                      "the same number of pieces for each of the ", k_count, " coefficients; got ", count,
                      " tensors for ", k_count, " coefficients");
    const int64_t pieces = count / k_count;
    int64_t total = 0;
    for (int64_t j = 0; j < pieces; ++j) {
      int64_t length = -1;
      for (int64_t k = 0; k < k_count; ++k) {
        const at::Tensor& g = grads[k * pieces + j];
        const std::string& name = grad_names[k * pieces + j];
        TORCH_CHECK_TYPE(g.scalar_type() == param.scalar_type(), op, ": ", name, " must have the dtype of param (",
                         param.scalar_type(), "), got ", g.scalar_type());
        TORCH_CHECK_VALUE(g.device() == param.device(), op, ": ", name, " must be on the device of param (",
                          param.device(), "), got ", g.device());
        TORCH_CHECK_VALUE(!g.is_sparse() && g.is_contiguous(), op, ": ", name,
                          " must be a dense contiguous tensor, got strides ", g.strides());
        if (g.numel() == 0) {
          continue;  // no gradient of this objective for this piece
        }
        TORCH_CHECK_VALUE(length < 0 || g.numel() == length, op, ": ", name, " has ", g.numel(),
                          " elements but another objective's gradient of the same piece has ", length,
                          " (grads: one buffer of param's length per coefficient, or pieces)");
        length = g.numel();
      }
      total += length < 0 ? 0 : length;
    }
    TORCH_CHECK_VALUE(total == param.numel(), op, ": grads must be one buffer of param's length per coefficient, ",
                      "or pieces that cover param: the pieces' lengths sum to ", total, ", param has ", param.numel());
  } else {
    TORCH_CHECK_VALUE(static_cast<int64_t>(grads.size()) <= kMaxStepGrads, op, ": grads may hold at most ",
                      kMaxStepGrads, " buffers (the fusion objective and up to ", kMaxStepGrads - 1,
                      " modalities), got ", grads.size());
    for (size_t k = 0; k < grads.size(); ++k) {
      check_like_param(op, grad_names[k], grads[k], param);
    }
    TORCH_CHECK_VALUE(coefficients.dim() == 1 && coefficients.numel() == static_cast<int64_t>(grads.size()), op,
                      ": coefficients must be 1-D with one entry per grads buffer (", grads.size(), "), got shape ",
                      coefficients.sizes());
  }
  TORCH_CHECK_VALUE(coefficients.device() == param.device(), op, ": coefficients must be on the device of param (",
                    param.device(), "), got ", coefficients.device());
  check_single_value(op, "lr", lr, param);
  TORCH_CHECK_TYPE(step.scalar_type() == at::kFloat, op, ": step must be a float32 tensor, got ", step.scalar_type());
  check_single_value(op, "step", step, param);
  if (grad_scale.has_value()) {
    check_single_value(op, "grad_scale", *grad_scale, param);
  }
  if (found_inf.has_value()) {
    check_single_value(op, "found_inf", *found_inf, param);
  }
  // grads and the per-step tensors are read (the per-step ones by every thread) while param, state and step are
  // written (on CUDA by other blocks at the same time): any shared memory there would make the result depend on
  // the order of the writes.
  std::vector<NamedBuffer> written{{"param", &param}};
  written.insert(written.end(), states.begin(), states.end());
  written.push_back({"step", &step});
  std::vector<NamedBuffer> read;
  for (size_t k = 0; k < grads.size(); ++k) {
    read.push_back({grad_names[k].c_str(), &grads[k]});
  }
  read.push_back({"coefficients", &coefficients});
  read.push_back({"lr", &lr});
  if (grad_scale.has_value()) {
    read.push_back({"grad_scale", &*grad_scale});
  }
  if (found_inf.has_value()) {
    read.push_back({"found_inf", &*found_inf});
  }
  for (const NamedBuffer& r : read) {
    for (const NamedBuffer& w : written) {
      TORCH_CHECK_VALUE(!overlaps(*r.tensor, *w.tensor), op, ": ", r.name, " overlaps ", w.name,
                        ", which is written in place");
    }
  }
  for (const NamedBuffer& w : written) {
    if (w.tensor != &step) {
      TORCH_CHECK_VALUE(!overlaps(step, *w.tensor), op, ": step overlaps ", w.name, ", which is written in place");
    }
  }
}

void check_sgd_hyperparameters(double weight_decay, double momentum, double dampening, bool nesterov) {
  const char* op = "mimo_ext.sgd_step_";
  TORCH_CHECK_VALUE(std::isfinite(weight_decay) && weight_decay >= 0, op,
                    ": weight_decay must be finite and >= 0, got ", weight_decay);
  TORCH_CHECK_VALUE(std::isfinite(momentum) && momentum >= 0, op, ": momentum must be finite and >= 0, got ",
                    momentum);
  TORCH_CHECK_VALUE(std::isfinite(dampening), op, ": dampening must be finite, got ", dampening);
  TORCH_CHECK_VALUE(!nesterov || (momentum > 0 && dampening == 0), op,
                    ": nesterov requires momentum > 0 and dampening == 0, got momentum ", momentum,
                    " and dampening ", dampening);
}

void check_adamw_hyperparameters(double beta1, double beta2, double eps, double weight_decay) {
  const char* op = "mimo_ext.adamw_step_";
  TORCH_CHECK_VALUE(beta1 >= 0 && beta1 < 1, op, ": beta1 must be in [0, 1), got ", beta1);
  TORCH_CHECK_VALUE(beta2 >= 0 && beta2 < 1, op, ": beta2 must be in [0, 1), got ", beta2);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
  TORCH_CHECK_VALUE(std::isfinite(weight_decay) && weight_decay >= 0, op,
                    ": weight_decay must be finite and >= 0, got ", weight_decay);
}

template <typename acc_t>
acc_t temperature_as(double mu) {
  const double largest = static_cast<double>(std::numeric_limits<acc_t>::max());
  return static_cast<acc_t>(mu < largest ? mu : largest);
}

template float temperature_as<float>(double);
template double temperature_as<double>(double);

}  // namespace mimo_ext
