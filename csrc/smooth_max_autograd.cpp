// Autograd of mimo_ext::smooth_max, in C++ so that a training step pays no Python for it (the Python-level
// registration cost about as much as the rest of mimo_loss on small models). d value / d losses = weights; the
// weights output is not differentiable. First order only: the saved weights depend on the losses too and that
// term is not modelled, so a second derivative raises instead of being silently wrong.
#include "checks.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include <tuple>

namespace mimo_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_smooth_max(const at::Tensor& losses, double mu) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mimo_ext::smooth_max", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double)>();
  return op.call(losses, mu);
}

at::Tensor call_smooth_max_backward(const at::Tensor& grad_value, const at::Tensor& weights) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mimo_ext::smooth_max_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(grad_value, weights);
}

class SmoothMaxFunction : public torch::autograd::Function<SmoothMaxFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& losses, double mu) {
    // Below autograd, so that the call reaches the device kernel instead of coming back here.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [value, weights] = call_smooth_max(losses, mu);
    ctx->mark_non_differentiable({weights});
    ctx->save_for_backward({weights});
    return {value, weights};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor weights = ctx->get_saved_variables()[0];
    at::Tensor grad;
    {
      const at::AutoGradMode no_grad(false);
      grad = call_smooth_max_backward(grad_outputs[0], weights);
    }
    if (at::GradMode::is_enabled()) {
      // create_graph=True: the gradient may take part in a further backward; make that backward fail clearly
      // (what torch.autograd.function.once_differentiable does for Python functions).
      // DelayedError passes its input through with an Error node as grad_fn, which raises on backward.
      torch::autograd::DelayedError error("mimo_ext.smooth_max supports first-order gradients only (no double backward)",
                                          1);
      grad = error.apply({grad.detach().requires_grad_()})[0];
    }
    return {grad, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> smooth_max_autograd(const at::Tensor& losses, double mu) {
  check_given("mimo_ext.smooth_max", "losses", losses);  // before autograd reads its device
  variable_list out = SmoothMaxFunction::apply(losses, mu);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(mimo_ext, Autograd, m) {
  m.impl("smooth_max", &smooth_max_autograd);
}

}  // namespace mimo_ext
