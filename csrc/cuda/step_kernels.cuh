// The CUDA step kernel and its launcher, shared by sgd_step_cuda.cu and adamw_step_cuda.cu: one pass over the flat
// buffers. Grid-stride loop in which each thread takes one 16-byte vector of the parameter, of every state buffer
// and of every gradient buffer per step (falling back to one element when any buffer is not 16-byte aligned),
// blends the gradients, applies the update and stores parameter and state once. lr, the step count, the
// coefficients and found_inf are read on the device, so the launch needs no host synchronisation and can be
// captured in a CUDA graph. The optional statistics are reduced per block (warp shuffles, then shared memory) into
// per-block partials, summed afterwards in a fixed order: no atomics, so the results are reproducible.
//
// Templates in an unnamed namespace: each op's file instantiates step_cuda_kernel for its own algorithm only, so no
// kernel is compiled twice, and the kernels keep their names (.ci/codegen_guard.py).
#pragma once

#include "../blend_math.h"
#include "../step_entry.h"
#include "launch_utils.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>

namespace mimo_ext {
namespace {

constexpr int kWarps = cuda::kThreadsPerBlock / 32;

template <typename scalar_t>
struct StepPtrs {
  scalar_t* param;
  scalar_t* states[math::kMaxStates];
  const scalar_t* grads[kMaxStepGrads];
  int num_grads;
};

template <typename acc_t>
struct StepScalars {
  const acc_t* coefficients;
  const acc_t* lr;
  const float* step;
  const acc_t* found_inf;  // nullptr when not given
};

// A thread's statistics, kept in registers: every index is a compile-time constant once the loops over
// k < kMaxK are unrolled (a runtime index would put the array in local memory, one read-modify-write per element
// and gradient). kMaxK = 0: no statistics.
template <typename acc_t, int kMaxK>
struct ThreadStats {
  acc_t sq[kMaxK > 0 ? kMaxK : 1];   // |g_k|^2
  acc_t dot[kMaxK > 0 ? kMaxK : 1];  // <g_0, g_k> for k >= 1 (dot[0] unused)
  acc_t blended;                     // |g|^2
};

// Blends and updates kWidth consecutive elements starting at element `first` (kWidth > 1: one aligned vector of
// each buffer). With statistics (kMaxK > 0, K <= kMaxK) adds the elements' contributions to them. kStates (the
// state buffers in use) is a compile-time constant so that the loops over them unroll and stay in registers.
template <int kWidth, int kMaxK, int kStates, typename scalar_t, typename acc_t, typename Update>
__device__ __forceinline__ void step_elements(const StepPtrs<scalar_t>& p, const acc_t* coefficients,
                                              const Update& update, const typename Update::PerStep& per_step,
                                              int64_t first, ThreadStats<acc_t, kMaxK>& stats) {
  using VecT = cuda::Vec<scalar_t, kWidth>;
  acc_t g[kWidth];
#pragma unroll
  for (int j = 0; j < kWidth; ++j) {
    g[j] = acc_t(0);
  }
  if constexpr (kMaxK > 0) {
    acc_t g0[kWidth];
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      if (k < p.num_grads) {
        const VecT gk = *reinterpret_cast<const VecT*>(p.grads[k] + first);
        const acc_t c = coefficients[k];
#pragma unroll
        for (int j = 0; j < kWidth; ++j) {
          g[j] = math::blend_accumulate(g[j], c, gk.val[j]);
          const acc_t v = static_cast<acc_t>(gk.val[j]);
          stats.sq[k] += v * v;
          if (k == 0) {
            g0[j] = v;
          } else {
            stats.dot[k] += g0[j] * v;
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kWidth; ++j) {
      stats.blended += g[j] * g[j];
    }
  } else {
    for (int k = 0; k < p.num_grads; ++k) {
      const VecT gk = *reinterpret_cast<const VecT*>(p.grads[k] + first);
      const acc_t c = coefficients[k];
#pragma unroll
      for (int j = 0; j < kWidth; ++j) {
        g[j] = math::blend_accumulate(g[j], c, gk.val[j]);
      }
    }
  }
  VecT param = *reinterpret_cast<const VecT*>(p.param + first);
  VecT states[kStates > 0 ? kStates : 1];
#pragma unroll
  for (int s = 0; s < kStates; ++s) {
    states[s] = *reinterpret_cast<const VecT*>(p.states[s] + first);
  }
#pragma unroll
  for (int j = 0; j < kWidth; ++j) {
    acc_t value = static_cast<acc_t>(param.val[j]);
    acc_t st[math::kMaxStates] = {};
#pragma unroll
    for (int s = 0; s < kStates; ++s) {
      st[s] = static_cast<acc_t>(states[s].val[j]);
    }
    update.template apply<kStates>(per_step, value, st, g[j]);
    param.val[j] = static_cast<scalar_t>(value);
#pragma unroll
    for (int s = 0; s < kStates; ++s) {
      states[s].val[j] = static_cast<scalar_t>(st[s]);
    }
  }
  *reinterpret_cast<VecT*>(p.param + first) = param;
#pragma unroll
  for (int s = 0; s < kStates; ++s) {
    *reinterpret_cast<VecT*>(p.states[s] + first) = states[s];
  }
}

// Sums x over the block into warp_sums[.][slot] (warp shuffles, then one value per warp in shared memory).
template <typename acc_t, int kSlots>
__device__ __forceinline__ void warp_reduce_into(acc_t x, int slot, acc_t (&warp_sums)[kWarps][kSlots]) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    x += __shfl_down_sync(0xffffffffu, x, offset);
  }
  if (threadIdx.x % 32 == 0) {
    warp_sums[threadIdx.x / 32][slot] = x;
  }
}

// kMaxK > 0: statistics for up to kMaxK gradients, written per block into partials[block][2K] in the layout of
// StepBuffers::stats. No __launch_bounds__: with it ptxas capped the registers of the K <= 16 statistics variants
// below what they need and spilled them; the grid is sized from the occupancy the registers allow instead.
// __grid_constant__: p.grads[k] indexed at run time reads the parameter space, not a local copy of it.
template <typename scalar_t, typename acc_t, int kVec, int kMaxK, int kStates, typename Update>
__global__ void step_kernel(const __grid_constant__ StepPtrs<scalar_t> p, StepScalars<acc_t> scalars, Update update,
                            int64_t n, acc_t* partials) {
  if (scalars.found_inf != nullptr && *scalars.found_inf != acc_t(0)) {
    return;  // a skipped step writes nothing (the partials stay zero); uniform over the grid
  }
  const auto per_step = update.prepare(*scalars.lr, *scalars.step);
  ThreadStats<acc_t, kMaxK> stats;
  if constexpr (kMaxK > 0) {
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      stats.sq[k] = acc_t(0);
      stats.dot[k] = acc_t(0);
    }
    stats.blended = acc_t(0);
  }
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t n_vec = n / kVec;
  for (int64_t v = tid; v < n_vec; v += stride) {
    step_elements<kVec, kMaxK, kStates>(p, scalars.coefficients, update, per_step, v * kVec, stats);
  }
  // Tail: the last n % kVec elements, one per thread.
  const int64_t i = n_vec * kVec + tid;
  if (i < n) {
    step_elements<1, kMaxK, kStates>(p, scalars.coefficients, update, per_step, i, stats);
  }
  if constexpr (kMaxK > 0) {
    __shared__ acc_t warp_sums[kWarps][2 * kMaxK];
    const int k_count = p.num_grads;
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) {
      if (k < k_count) {
        warp_reduce_into(stats.sq[k], k, warp_sums);
        if (k > 0) {
          warp_reduce_into(stats.dot[k], k_count + k - 1, warp_sums);
        }
      }
    }
    warp_reduce_into(stats.blended, 2 * k_count - 1, warp_sums);
    __syncthreads();
    if (threadIdx.x < 2 * k_count) {
      acc_t total = 0;
      for (int w = 0; w < kWarps; ++w) {
        total += warp_sums[w][threadIdx.x];
      }
      partials[int64_t{blockIdx.x} * 2 * k_count + threadIdx.x] = total;
    }
  }
}

// Statistics for K <= 4 (up to three modalities, the common case) with fewer registers than for K <= 16.
constexpr int kFewGrads = 4;

template <typename scalar_t, int kStates, typename Update>
void step_cuda_typed(const StepBuffers& b, const Update& update) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = b.param.device().index();
  const int64_t n = b.param.numel();

  StepPtrs<scalar_t> p{};
  p.param = b.param.mutable_data_ptr<scalar_t>();
  p.num_grads = static_cast<int>(b.grads.size());
  bool aligned = cuda::aligned_to(p.param, 16);
  TORCH_INTERNAL_ASSERT(static_cast<int>(b.states.size()) == kStates);
  for (int s = 0; s < kStates; ++s) {
    p.states[s] = b.states[s].mutable_data_ptr<scalar_t>();
    aligned = aligned && cuda::aligned_to(p.states[s], 16);
  }
  for (int k = 0; k < p.num_grads; ++k) {
    p.grads[k] = b.grads[k].const_data_ptr<scalar_t>();
    aligned = aligned && cuda::aligned_to(p.grads[k], 16);
  }
  const StepScalars<acc_t> scalars{b.coefficients.const_data_ptr<acc_t>(), b.lr.const_data_ptr<acc_t>(),
                                   b.step.const_data_ptr<float>(),
                                   b.found_inf.defined() ? b.found_inf.const_data_ptr<acc_t>() : nullptr};
  const int64_t units = aligned ? n / kVec + kVec : n;  // + kVec: threads for the tail

  // Launches the variant for (vector width, statistics bound); with statistics, the per-block partials are
  // summed afterwards in a fixed order into the caller's stats tensor.
  const auto launch = [&](auto vec_width, auto max_k) {
    constexpr int kWidth = decltype(vec_width)::value;
    constexpr int kMaxK = decltype(max_k)::value;
    constexpr auto kernel = &step_kernel<scalar_t, acc_t, kWidth, kMaxK, kStates, Update>;
    const int64_t blocks = cuda::grid_for<kernel>(units, device);
    at::Tensor partials;
    acc_t* partials_ptr = nullptr;
    if constexpr (kMaxK > 0) {
      partials = at::zeros({blocks, 2 * p.num_grads}, b.stats.options());
      partials_ptr = partials.mutable_data_ptr<acc_t>();
    }
    kernel<<<blocks, cuda::kThreadsPerBlock, 0, stream>>>(p, scalars, update, n, partials_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if constexpr (kMaxK > 0) {
      at::Tensor stats = b.stats;  // shares storage: the caller's tensor receives the sum
      const int64_t dims[] = {0};
      at::sum_out(stats, partials, at::OptionalIntArrayRef(dims));
    }
  };
  const auto with_width = [&](auto max_k) {
    if (aligned) {
      launch(std::integral_constant<int, kVec>{}, max_k);
    } else {
      launch(std::integral_constant<int, 1>{}, max_k);
    }
  };
  if (!b.stats.defined()) {
    with_width(std::integral_constant<int, 0>{});
  } else if (p.num_grads <= kFewGrads) {
    with_width(std::integral_constant<int, kFewGrads>{});
  } else {
    with_width(std::integral_constant<int, static_cast<int>(kMaxStepGrads)>{});
  }
}

template <typename Options>
void step_cuda_kernel(const StepBuffers& b, const Options& options) {
  const c10::cuda::CUDAGuard guard(b.param.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.param.scalar_type(), "optim_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto update = make_update<acc_t>(options);
    constexpr int kFew = std::decay_t<decltype(update)>::kStatesWithout;
    if (static_cast<int>(b.states.size()) == kFew) {
      step_cuda_typed<scalar_t, kFew>(b, update);
    } else {
      step_cuda_typed<scalar_t, kFew + 1>(b, update);
    }
  });
}

}  // namespace

}  // namespace mimo_ext
