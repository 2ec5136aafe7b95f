// mimo_ext::smooth_max_backward for every device: one broadcast multiply, which ATen already does at memory
// speed on every backend. Registered as CompositeImplicitAutograd so that tracing, fake tensors and autograd see
// the aten::mul it decomposes into.
#include "checks.h"

#include <ATen/ops/mul.h>
#include <torch/library.h>

namespace mimo_ext {
namespace {

at::Tensor smooth_max_backward(const at::Tensor& grad_value, const at::Tensor& weights) {
  check_smooth_max_backward_args(grad_value, weights);
  return at::mul(weights, grad_value.unsqueeze(-1));
}

}  // namespace

TORCH_LIBRARY_IMPL(mimo_ext, CompositeImplicitAutograd, m) {
  m.impl("smooth_max_backward", &smooth_max_backward);
}

}  // namespace mimo_ext
