// Every mimo_ext operator is declared here, once, as a schema. Device kernels register themselves for their
// dispatch key in cpu/ and cuda/; the Python layer (mimo_ext/ops.py) adds fake implementations and autograd.
#include <torch/library.h>

TORCH_LIBRARY(mimo_ext, m) {
  // value = mu * logsumexp(losses / mu, dim=-1), weights = softmax(losses / mu, dim=-1); losses [..., M].
  m.def("smooth_max(Tensor losses, float mu) -> (Tensor value, Tensor weights)", {at::Tag::pt2_compliant_tag});
  // d value / d losses applied to grad_value: grad_value[..., None] * weights.
  m.def("smooth_max_backward(Tensor grad_value, Tensor weights) -> Tensor", {at::Tag::pt2_compliant_tag});
  // base + gamma * sum_k weights[k] * grads[k] over 1-D buffers; blend_ writes the result into base.
  m.def("blend(Tensor base, Tensor[] grads, Tensor weights, float gamma) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("blend_(Tensor(a!) base, Tensor[] grads, Tensor weights, float gamma) -> ()",
        {at::Tag::pt2_compliant_tag});
}
