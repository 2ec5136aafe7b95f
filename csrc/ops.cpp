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
  // Fused MIMO optimizer steps over one flat parameter buffer and its flat state (csrc/optim_math.h): blend
  // g = sum_k coefficients[k] * grads[k] / grad_scale, update param and state in place, then step += 1 (unless
  // found_inf is set, in which case nothing is written). Returns the gradient statistics when compute_stats
  // ([|g_k|^2 for each k, <g_0, g_k> for k >= 1, |g|^2]), else an empty tensor. State buffers that the options
  // do not use (momentum_buffer when momentum == 0, max_exp_avg_sq without amsgrad) are neither read nor written.
  // Keyword-only from grad_scale on, as in aten::_fused_adamw_, the hyperparameters with torch.optim.SGD's / AdamW's
  // defaults.
  m.def("sgd_step_(Tensor(a!) param, Tensor(b!) momentum_buffer, Tensor[] grads, Tensor coefficients, Tensor lr, "
        "Tensor(c!) step, *, Tensor? grad_scale=None, Tensor? found_inf=None, float weight_decay=0.0, "
        "float momentum=0.0, float dampening=0.0, bool nesterov=False, bool maximize=False, "
        "bool compute_stats=False) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("adamw_step_(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor(d!) max_exp_avg_sq, "
        "Tensor[] grads, Tensor coefficients, Tensor lr, Tensor(e!) step, *, Tensor? grad_scale=None, "
        "Tensor? found_inf=None, float beta1=0.9, float beta2=0.999, float eps=1e-8, float weight_decay=0.01, "
        "bool amsgrad=False, bool maximize=False, bool compute_stats=False) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}
