// CUDA kernel of mimo_ext::adamw_step_: the shared kernel of step_kernels.cuh, instantiated for AdamW.
#include "../step_entry.h"
#include "step_kernels.cuh"

#include <torch/library.h>

namespace mimo_ext {

TORCH_LIBRARY_IMPL(mimo_ext, CUDA, m) {
  m.impl("adamw_step_", &adamw_step_op<step_cuda_kernel<AdamWOptions>>);
}

}  // namespace mimo_ext
