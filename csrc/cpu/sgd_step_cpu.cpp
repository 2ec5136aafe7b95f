// CPU kernel of mimo_ext::sgd_step_: the shared loops of step_loops_cpu.h, instantiated for SGD.
#include "../step_entry.h"
#include "step_loops_cpu.h"

#include <torch/library.h>

namespace mimo_ext {

TORCH_LIBRARY_IMPL(mimo_ext, CPU, m) {
  m.impl("sgd_step_", &sgd_step_op<step_cpu_kernel<SgdOptions>>);
}

}  // namespace mimo_ext
