// CPU kernel of mimo_ext::smooth_max: rows in parallel, each row folded by the shared math.
#include "../op_entry.h"
#include "../smooth_max_math.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace mimo_ext {
namespace {

void smooth_max_cpu_kernel(const at::Tensor& losses, double mu, const at::Tensor& value, const at::Tensor& weights) {
  const int64_t rows = losses.size(0);
  const int64_t m = losses.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, losses.scalar_type(), "smooth_max_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t t = temperature_as<acc_t>(mu);
    const scalar_t* l = losses.const_data_ptr<scalar_t>();
    scalar_t* v = value.mutable_data_ptr<scalar_t>();
    scalar_t* w = weights.mutable_data_ptr<scalar_t>();
    // Aim for about 32k losses per task so that tiny inputs (the usual [M]) stay on the calling thread.
    const int64_t grain = std::max<int64_t>(1, 32768 / m);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        math::smooth_max_row<scalar_t, acc_t>(l + r * m, m, t, v + r, w + r * m);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mimo_ext, CPU, m) {
  m.impl("smooth_max", &smooth_max_op<smooth_max_cpu_kernel>);
}

}  // namespace mimo_ext
