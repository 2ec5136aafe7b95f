// CPU kernel of mimo_ext::blend and mimo_ext::blend_: the buffer is split between threads; each thread runs one
// loop over base and up to 8 gradients (more: groups of 4 over blocks that fit in L1), accumulating in acc_t. The
// loops are plain unit-stride loops, which the compiler vectorises, once per instruction set (cpu_isa.h); the
// output is written once and every input read once.
#include "../blend_math.h"
#include "../op_entry.h"
#include "cpu_isa.h"
#include "half_convert.h"

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
constexpr int kDirect = 8;               // up to this many gradients: one loop over every buffer
constexpr int kGroup = 4;                // beyond it: gradients read together per pass over an L1 block

// One element through G gradients in order, acc + c_0 g_0 + c_1 g_1 + ...: the rounding order of one gradient
// at a time, whatever the grouping.
template <int G, typename Cv, typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE acc_t accumulate(acc_t acc, const scalar_t* const* g, const acc_t* c, int64_t i) {
  for (int j = 0; j < G; ++j) {
    acc = math::blend_accumulate(acc, c[j], Cv::to_acc(g[j][i]));
  }
  return acc;
}

// K <= kDirect: base and every gradient stream through one loop, each element written once. Reading all streams
// in the same loop keeps every hardware prefetch stream running, which blocked loops (a loop per gradient or per
// group over L1-sized blocks) do not: they restart each stream at every 4 KB page and fall short of the copy
// bandwidth (benchmarks/NOTES.md). Up to 9 streams stay within the compiler's run-time aliasing checks (out against
// base and each gradient), so the loop is still vectorised.
template <int G, typename Cv, typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void blend_direct(const scalar_t* b, const scalar_t* const* grads, const acc_t* coefficients,
                                    scalar_t* o, int64_t begin, int64_t end) {
  const scalar_t* g[G];
  acc_t c[G];
  for (int j = 0; j < G; ++j) {
    g[j] = grads[j];
    c[j] = coefficients[j];
  }
  if (o == b) {  // in place: one pointer, so the compiler needs no aliasing check between base and out
    for (int64_t i = begin; i < end; ++i) {
      o[i] = Cv::template from_acc<scalar_t>(accumulate<G, Cv>(Cv::to_acc(o[i]), g, c, i));
    }
  } else {
    for (int64_t i = begin; i < end; ++i) {
      o[i] = Cv::template from_acc<scalar_t>(accumulate<G, Cv>(Cv::to_acc(b[i]), g, c, i));
    }
  }
}

// acc[0, len) through G more gradients (K > kDirect: groups of kGroup over an L1 block).
template <int G, typename Cv, typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void accumulate_block(acc_t* acc, const scalar_t* const* grads, const acc_t* coefficients,
                                        int64_t start, int64_t len) {
  const scalar_t* g[G];
  acc_t c[G];
  for (int j = 0; j < G; ++j) {
    g[j] = grads[j] + start;
    c[j] = coefficients[j];
  }
  for (int64_t i = 0; i < len; ++i) {
    acc[i] = accumulate<G, Cv>(acc[i], g, c, i);
  }
}

// The work of one thread: [begin, end). Always inlined into the per-ISA functions below, so that each compiles
// these loops for its own vector width.
template <typename Cv, typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void blend_range(const scalar_t* b, const scalar_t* const* grads, const acc_t* coefficients,
                                   int64_t k_count, scalar_t* o, int64_t begin, int64_t end) {
  switch (k_count) {
    case 1:
      return blend_direct<1, Cv>(b, grads, coefficients, o, begin, end);
    case 2:
      return blend_direct<2, Cv>(b, grads, coefficients, o, begin, end);
    case 3:
      return blend_direct<3, Cv>(b, grads, coefficients, o, begin, end);
    case 4:
      return blend_direct<4, Cv>(b, grads, coefficients, o, begin, end);
    case 5:
      return blend_direct<5, Cv>(b, grads, coefficients, o, begin, end);
    case 6:
      return blend_direct<6, Cv>(b, grads, coefficients, o, begin, end);
    case 7:
      return blend_direct<7, Cv>(b, grads, coefficients, o, begin, end);
    case 8:
      return blend_direct<8, Cv>(b, grads, coefficients, o, begin, end);
    default:
      static_assert(kDirect == 8, "one case per gradient count up to kDirect");
      break;
  }
  acc_t acc[kBlock];
  for (int64_t start = begin; start < end; start += kBlock) {
    const int64_t len = std::min(kBlock, end - start);
    for (int64_t i = 0; i < len; ++i) {
      acc[i] = Cv::to_acc(b[start + i]);
    }
    for (int64_t k = 0; k < k_count; k += kGroup) {
      switch (std::min<int64_t>(kGroup, k_count - k)) {
        case 1:
          accumulate_block<1, Cv>(acc, grads + k, coefficients + k, start, len);
          break;
        case 2:
          accumulate_block<2, Cv>(acc, grads + k, coefficients + k, start, len);
          break;
        case 3:
          accumulate_block<3, Cv>(acc, grads + k, coefficients + k, start, len);
          break;
        default:
          accumulate_block<4, Cv>(acc, grads + k, coefficients + k, start, len);
          break;
      }
    }
    for (int64_t i = 0; i < len; ++i) {
      o[start + i] = Cv::template from_acc<scalar_t>(acc[i]);
    }
  }
}

template <typename scalar_t, typename acc_t>
using BlendRange = void (*)(const scalar_t*, const scalar_t* const*, const acc_t*, int64_t, scalar_t*, int64_t,
                            int64_t);

template <typename scalar_t, typename acc_t>
MIMO_EXT_FLATTEN void blend_range_baseline(const scalar_t* b, const scalar_t* const* grads,
                                           const acc_t* coefficients, int64_t k_count, scalar_t* o, int64_t begin,
                                           int64_t end) {
  blend_range<cpu::MaskedConversions>(b, grads, coefficients, k_count, o, begin, end);
}

template <typename scalar_t, typename acc_t>
MIMO_EXT_FLATTEN MIMO_EXT_TARGET_AVX2 void blend_range_avx2(const scalar_t* b, const scalar_t* const* grads,
                                                            const acc_t* coefficients, int64_t k_count, scalar_t* o,
                                                            int64_t begin, int64_t end) {
  blend_range<cpu::MaskedConversions>(b, grads, coefficients, k_count, o, begin, end);
}

// The AVX-512 loops keep c10's conversions: with masked instructions GCC vectorises their branches, and there they
// are faster than half_convert.h's (benchmarks/NOTES.md); without AVX-512 c10's float16 conversions stay scalar.
// Both give c10's bits (test_half_convert.cpp), so the choice changes the speed only.
template <typename scalar_t, typename acc_t>
MIMO_EXT_FLATTEN MIMO_EXT_TARGET_AVX512 void blend_range_avx512(const scalar_t* b, const scalar_t* const* grads,
                                                                const acc_t* coefficients, int64_t k_count,
                                                                scalar_t* o, int64_t begin, int64_t end) {
  blend_range<cpu::C10Conversions>(b, grads, coefficients, k_count, o, begin, end);
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
  // base may be out itself (blend_): each element (each block, for K > kDirect) is read before it is written.
  const scalar_t* b = base.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const BlendRange<scalar_t, acc_t> range = pick_for_cpu_isa<BlendRange<scalar_t, acc_t>>(
      &blend_range_baseline<scalar_t, acc_t>, &blend_range_avx2<scalar_t, acc_t>, &blend_range_avx512<scalar_t, acc_t>);
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
