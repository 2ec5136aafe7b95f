// CPU kernel of mimo_ext::blend and mimo_ext::blend_: the buffer is split between threads, and each thread walks
// its share in blocks that fit in L1, accumulating in acc_t. The inner loops are plain unit-stride loops over
// arrays, which the compiler vectorises, once per instruction set (cpu_isa.h); the output is written once and
// every input read once.
#include "../blend_math.h"
#include "../op_entry.h"
#include "cpu_isa.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace mimo_ext {
namespace {

constexpr int64_t kBlock = 1024;          // elements per block: acc_t[kBlock] stays in L1
constexpr int64_t kGrain = 16 * kBlock;  // elements per parallel task

// The work of one thread: [begin, end) in L1-sized blocks. Always inlined into the per-ISA functions below, so
// that each compiles these loops for its own vector width.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void blend_range(const scalar_t* b, const scalar_t* const* grads, const acc_t* coefficients,
                                   int64_t k_count, scalar_t* o, int64_t begin, int64_t end) {
  acc_t acc[kBlock];
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t len = std::min(kBlock, end - start);
    for (int64_t i = 0; i < len; ++i) {
      acc[i] = static_cast<acc_t>(b[start + i]);
    }
    for (int64_t k = 0; k < k_count; ++k) {
      const scalar_t* g = grads[k] + start;
      const acc_t c = coefficients[k];
      for (int64_t i = 0; i < len; ++i) {
        acc[i] = math::blend_accumulate(acc[i], c, g[i]);
      }
    }
    for (int64_t i = 0; i < len; ++i) {
      o[start + i] = static_cast<scalar_t>(acc[i]);
    }
  }
}

template <typename scalar_t, typename acc_t>
using BlendRange = void (*)(const scalar_t*, const scalar_t* const*, const acc_t*, int64_t, scalar_t*, int64_t,
                            int64_t);

template <typename scalar_t, typename acc_t>
void blend_range_baseline(const scalar_t* b, const scalar_t* const* grads, const acc_t* coefficients,
                          int64_t k_count, scalar_t* o, int64_t begin, int64_t end) {
  blend_range(b, grads, coefficients, k_count, o, begin, end);
}

template <typename scalar_t, typename acc_t>
MIMO_EXT_TARGET_AVX2 void blend_range_avx2(const scalar_t* b, const scalar_t* const* grads,
                                           const acc_t* coefficients, int64_t k_count, scalar_t* o, int64_t begin,
                                           int64_t end) {
  blend_range(b, grads, coefficients, k_count, o, begin, end);
}

template <typename scalar_t, typename acc_t>
MIMO_EXT_TARGET_AVX512 void blend_range_avx512(const scalar_t* b, const scalar_t* const* grads,
                                               const acc_t* coefficients, int64_t k_count, scalar_t* o,
                                               int64_t begin, int64_t end) {
  blend_range(b, grads, coefficients, k_count, o, begin, end);
}

template <typename scalar_t, typename acc_t>
BlendRange<scalar_t, acc_t> blend_range_for(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return &blend_range_avx512<scalar_t, acc_t>;
    case CpuIsa::kAvx2:
      return &blend_range_avx2<scalar_t, acc_t>;
    case CpuIsa::kBaseline:
      break;
  }
  return &blend_range_baseline<scalar_t, acc_t>;
}

template <typename scalar_t>
void blend_cpu_typed(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma,
                     const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = base.numel();
  const int64_t k_count = static_cast<int64_t>(grads.size());
  std::vector<acc_t> coefficients(k_count);
  std::vector<const scalar_t*> grad_ptrs(k_count);
  const acc_t* w = weights.const_data_ptr<acc_t>();
  for (int64_t k = 0; k < k_count; ++k) {
    coefficients[k] = math::blend_coefficient(static_cast<acc_t>(gamma), w[k]);
    grad_ptrs[k] = grads[k].const_data_ptr<scalar_t>();
  }
  // base may be out itself (blend_): each block is read in full before it is written.
  const scalar_t* b = base.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const BlendRange<scalar_t, acc_t> range = blend_range_for<scalar_t, acc_t>(cpu_isa());
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    range(b, grad_ptrs.data(), coefficients.data(), k_count, o, begin, end);
  });
}

void blend_cpu_kernel(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma,
                      const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base.scalar_type(), "blend_cpu",
                                  [&] { blend_cpu_typed<scalar_t>(base, grads, weights, gamma, out); });
}

}  // namespace

TORCH_LIBRARY_IMPL(mimo_ext, CPU, m) {
  m.impl("blend", &blend_op<blend_cpu_kernel>);
  m.impl("blend_", &blend_in_place_op<blend_cpu_kernel>);
}

}  // namespace mimo_ext
