// CUDA kernel of mimo_ext::sgd_step_: the shared kernel of step_kernels.cuh, instantiated for SGD.
#include "../step_entry.h"
#include "step_kernels.cuh"

#include <torch/library.h>

namespace mimo_ext {

TORCH_LIBRARY_IMPL(mimo_ext, CUDA, m) {
  m.impl("sgd_step_", &sgd_step_op<step_cuda_kernel<SgdOptions>>);
}

}  // namespace mimo_ext
