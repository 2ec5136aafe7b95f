// Autograd kernel of the ops that have no derivative: blend, blend_, sgd_step_ and adamw_step_. One boxed function
// for all four, doing what PyTorch does for its own ops at this layer, then handing the call to the device kernel:
//
// - With grad mode on, a tensor argument that requires grad is refused by name (ValueError). Without this kernel,
//   PyTorch's autograd fallback would answer first for some arguments, with "a leaf Variable that requires grad
//   is being used in an in-place operation" (no argument named), and let others through to the kernel.
// - Every tensor the schema marks as written (Tensor(a!)) has its version counter bumped, as an in-place ATen op
//   does, so that autograd notices a saved tensor that blend_ or a step later overwrote instead of silently
//   computing a wrong gradient.
//
// The requires-grad check is made here only, once per argument; the rest of the validation stays in checks.cpp,
// run by the device kernels before anything is written. Under
// torch.inference_mode() autograd keys are excluded and grad mode is off: this never runs, and nothing needs it.
#include "checks.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/stack.h>
#include <c10/core/DispatchKeySet.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace mimo_ext {
namespace {

// "mimo_ext::blend_" -> "mimo_ext.blend_", as the checks spell op names.
std::string op_name(const c10::OperatorHandle& op) {
  std::string name = op.schema().name();
  const size_t colons = name.find("::");
  return colons == std::string::npos ? name : name.replace(colons, 2, ".");
}

void refuse_grad_bump_versions_redispatch(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                          torch::jit::Stack* stack) {
  const std::vector<c10::Argument>& arguments = op.schema().arguments();
  const size_t first = stack->size() - arguments.size();
  std::vector<at::Tensor> written;
  const bool grad_mode = at::GradMode::is_enabled();
  const std::string name = grad_mode ? op_name(op) : std::string();
  for (size_t i = 0; i < arguments.size(); ++i) {
    const c10::IValue& value = (*stack)[first + i];
    if (value.isTensor()) {
      const at::Tensor& t = value.toTensor();
      if (grad_mode && t.defined()) {
        check_no_grad_needed(name.c_str(), arguments[i].name(), t);
      }
      const c10::AliasInfo* alias = arguments[i].alias_info();
      // An inference tensor has no version counter (bumping it would throw, after the kernel wrote): it stays
      // unversioned.
      if (alias != nullptr && alias->isWrite() && t.defined() && !t.is_inference()) {
        written.push_back(t);
      }
    } else if (grad_mode && value.isTensorList()) {
      const c10::List<at::Tensor> list = value.toTensorList();
      for (size_t k = 0; k < list.size(); ++k) {
        const at::Tensor t = list[k];
        if (t.defined()) {
          check_no_grad_needed(name.c_str(), arguments[i].name() + "[" + std::to_string(k) + "]", t);
        }
      }
    }
  }
  {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  // After the kernel: a rejected call (the kernel validates before writing) leaves the versions as they were.
  for (const at::Tensor& t : written) {
    t.unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(mimo_ext, Autograd, m) {
  for (const char* op : {"blend", "blend_", "sgd_step_", "adamw_step_"}) {
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&refuse_grad_bump_versions_redispatch>());
  }
}

}  // namespace mimo_ext
