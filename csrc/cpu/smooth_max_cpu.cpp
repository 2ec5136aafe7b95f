// CPU kernel of mimo_ext::smooth_max: rows in parallel, each task's rows in blocks that fit in L1, and each block
// in passes that vectorise.
//
// Folding a row online (smooth_max_math.h, as the CUDA kernel does) costs an exp call per loss plus one per
// weight and a data-dependent branch per loss, and a row of M = 2..8 losses is too short for vector code: slower
// than logsumexp + autograd for [B, M] with large B. Here, per block:
//   1. each row's max and finiteness, and the differences l_i - max into a scratch block;
//   2. exp(difference / mu) over the whole block in one loop (exp_nonpositive.h: one vectorised exp per loss);
//   3. each row's sum (in order), its value max + mu * log(sum) (a libm call per row), its weights exp / sum.
// Rows of M = 2..8 (the usual numbers of modalities) get copies compiled with M known, so the per-row loops of
// passes 1 and 3 unroll and vectorise across rows (each lane one row, its sum still in order: the same bits).
// What the passes and the fixed widths gain: benchmarks/NOTES.md.
// The math is smooth_max_math.h's (relative to the row's max; a zero difference is weight 1 exactly, so a
// temperature that underflows to 0 gives the hard max; a row with any NaN or +-Inf is NaN throughout); only the
// sum is formed once the max is known instead of being rescaled as it grows, and the exp is ours (<= 1 ulp).
// float64 keeps std::exp (scalar: float64 losses are rare, and the polynomial would need twice the degree).
#include "../op_entry.h"
#include "../smooth_max_math.h"
#include "cpu_isa.h"
#include "exp_nonpositive.h"
#include "half_convert.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace mimo_ext {
namespace {

// Losses per block: the scratch (and the block's losses) stay in L1.
constexpr int64_t kBlock = 2048;

inline float exp_of_nonpositive(float x) {
  return cpu::exp_nonpositive(x);
}

inline double exp_of_nonpositive(double x) {
  return std::exp(x);
}

// Scratch for one task: the differences (then exps) of a block's losses, and per row its max (NaN: the row is not
// finite) and its sum.
template <typename acc_t>
struct Scratch {
  acc_t* diff;
  acc_t* row_max;
  acc_t* row_sum;
};

// Width is int64_t, or std::integral_constant<int64_t, M> for the fixed-width copies.
template <typename scalar_t, typename acc_t, typename Width>
inline void smooth_max_block(const scalar_t* l, int64_t rows, Width width, acc_t mu, scalar_t* v, scalar_t* w,
                             Scratch<acc_t> s) {
  constexpr acc_t kNaN = std::numeric_limits<acc_t>::quiet_NaN();
  const int64_t m = width;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* lr = l + r * m;
    acc_t mx = -std::numeric_limits<acc_t>::infinity();
    bool finite = true;
    for (int64_t i = 0; i < m; ++i) {
      const acc_t x = cpu::to_acc(lr[i]);
      finite = finite & std::isfinite(x);  // & and a select, not && and a branch: the row loop may vectorise
      mx = x > mx ? x : mx;
    }
    s.row_max[r] = finite ? mx : kNaN;
    for (int64_t i = 0; i < m; ++i) {
      s.diff[r * m + i] = finite ? cpu::to_acc(lr[i]) - mx : acc_t(0);  // a non-finite row's exps are not used
    }
  }
  const int64_t count = rows * m;
  for (int64_t j = 0; j < count; ++j) {
    // diff / mu <= 0, -Inf when mu underflowed to 0 (exp: 0); a zero difference is weight 1 whatever mu.
    s.diff[j] = math::scaled_exp(s.diff[j], mu, [](acc_t x) { return exp_of_nonpositive(x); });
  }
  for (int64_t r = 0; r < rows; ++r) {
    acc_t sum = 0;
    for (int64_t i = 0; i < m; ++i) {
      sum += s.diff[r * m + i];  // in [1, M]: the max contributes exactly 1
    }
    s.row_sum[r] = sum;
  }
  for (int64_t r = 0; r < rows; ++r) {  // a call per row (log): kept out of the loops that vectorise
    v[r] = cpu::from_acc<scalar_t>(s.row_max[r] + mu * std::log(s.row_sum[r]));  // NaN for a non-finite row
  }
  for (int64_t r = 0; r < rows; ++r) {
    const acc_t mx = s.row_max[r];
    const acc_t sum = s.row_sum[r];
    for (int64_t i = 0; i < m; ++i) {
      w[r * m + i] = cpu::from_acc<scalar_t>(mx == mx ? s.diff[r * m + i] / sum : kNaN);
    }
  }
}

template <typename scalar_t, typename acc_t, typename Width>
inline void smooth_max_blocks(const scalar_t* l, Width width, acc_t mu, scalar_t* v, scalar_t* w, int64_t begin,
                              int64_t end, Scratch<acc_t> s) {
  const int64_t m = width;
  const int64_t rows_per_block = std::max<int64_t>(1, kBlock / m);
  for (int64_t r0 = begin; r0 < end; r0 += rows_per_block) {
    const int64_t rows = std::min(rows_per_block, end - r0);
    smooth_max_block(l + r0 * m, rows, width, mu, v + r0, w + r0 * m, s);
  }
}

template <int64_t kWidth>
using FixedWidth = std::integral_constant<int64_t, kWidth>;

template <typename scalar_t, typename acc_t>
inline void smooth_max_rows(const scalar_t* l, int64_t m, acc_t mu, scalar_t* v, scalar_t* w, int64_t begin,
                            int64_t end, Scratch<acc_t> s) {
  // M = 1 and M > 8 take the generic loops.
  switch (m) {
    case 2:
      return smooth_max_blocks(l, FixedWidth<2>{}, mu, v, w, begin, end, s);
    case 3:
      return smooth_max_blocks(l, FixedWidth<3>{}, mu, v, w, begin, end, s);
    case 4:
      return smooth_max_blocks(l, FixedWidth<4>{}, mu, v, w, begin, end, s);
    case 5:
      return smooth_max_blocks(l, FixedWidth<5>{}, mu, v, w, begin, end, s);
    case 6:
      return smooth_max_blocks(l, FixedWidth<6>{}, mu, v, w, begin, end, s);
    case 7:
      return smooth_max_blocks(l, FixedWidth<7>{}, mu, v, w, begin, end, s);
    case 8:
      return smooth_max_blocks(l, FixedWidth<8>{}, mu, v, w, begin, end, s);
    default:
      return smooth_max_blocks(l, m, mu, v, w, begin, end, s);
  }
}

// The same loops compiled per instruction set (cpu_isa.h); results are bit-identical across them.
template <typename scalar_t, typename acc_t>
using RowsFn = void (*)(const scalar_t*, int64_t, acc_t, scalar_t*, scalar_t*, int64_t, int64_t, Scratch<acc_t>);

template <typename scalar_t, typename acc_t>
MIMO_EXT_FLATTEN void rows_baseline(const scalar_t* l, int64_t m, acc_t mu, scalar_t* v, scalar_t* w, int64_t begin,
                                    int64_t end, Scratch<acc_t> s) {
  smooth_max_rows(l, m, mu, v, w, begin, end, s);
}

template <typename scalar_t, typename acc_t>
MIMO_EXT_FLATTEN MIMO_EXT_TARGET_AVX2 void rows_avx2(const scalar_t* l, int64_t m, acc_t mu, scalar_t* v, scalar_t* w,
                                                     int64_t begin, int64_t end, Scratch<acc_t> s) {
  smooth_max_rows(l, m, mu, v, w, begin, end, s);
}

template <typename scalar_t, typename acc_t>
MIMO_EXT_FLATTEN MIMO_EXT_TARGET_AVX512 void rows_avx512(const scalar_t* l, int64_t m, acc_t mu, scalar_t* v,
                                                         scalar_t* w, int64_t begin, int64_t end, Scratch<acc_t> s) {
  smooth_max_rows(l, m, mu, v, w, begin, end, s);
}

void smooth_max_cpu_kernel(const at::Tensor& losses, double mu, const at::Tensor& value, const at::Tensor& weights) {
  const int64_t rows = losses.size(0);
  const int64_t m = losses.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, losses.scalar_type(), "smooth_max_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t t = temperature_as<acc_t>(mu);
    const scalar_t* l = losses.const_data_ptr<scalar_t>();
    scalar_t* v = value.mutable_data_ptr<scalar_t>();
    scalar_t* w = weights.mutable_data_ptr<scalar_t>();
    const RowsFn<scalar_t, acc_t> run = pick_for_cpu_isa<RowsFn<scalar_t, acc_t>>(
        &rows_baseline<scalar_t, acc_t>, &rows_avx2<scalar_t, acc_t>, &rows_avx512<scalar_t, acc_t>);
    // Aim for about 32k losses per task so that tiny inputs (the usual [M]) stay on the calling thread.
    const int64_t grain = std::max<int64_t>(1, 32768 / m);
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      acc_t diff[kBlock];
      acc_t row_max[kBlock];
      acc_t row_sum[kBlock];
      std::vector<acc_t> long_row;  // a row longer than a block gets a block of its own length
      Scratch<acc_t> s{diff, row_max, row_sum};
      if (m > kBlock) {
        long_row.resize(m);
        s.diff = long_row.data();
      }
      run(l, m, t, v, w, begin, end, s);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mimo_ext, CPU, m) {
  m.impl("smooth_max", &smooth_max_op<smooth_max_cpu_kernel>);
}

}  // namespace mimo_ext
