// CPU kernel of mimo_ext::adamw_step_: the shared loops of step_loops_cpu.h, instantiated for AdamW.
#include "../step_entry.h"
#include "step_loops_cpu.h"

#include <torch/library.h>

namespace mimo_ext {

TORCH_LIBRARY_IMPL(mimo_ext, CPU, m) {
  m.impl("adamw_step_", &adamw_step_op<step_cpu_kernel<AdamWOptions>>);
}

}  // namespace mimo_ext
