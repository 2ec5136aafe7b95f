// CUDA kernels of mimo_ext::smooth_max. Short rows (the usual M = a handful of modalities) take one thread per
// row; long rows one warp per row, whose lanes fold strided slices and merge their states with shuffles.
#include "../op_entry.h"
#include "../smooth_max_math.h"
#include "launch_utils.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace mimo_ext {
namespace {

constexpr int64_t kWarp = 32;
constexpr int64_t kLongRow = 32;  // rows longer than this get a warp each

template <typename scalar_t, typename acc_t>
__global__ void smooth_max_thread_per_row(const scalar_t* losses, int64_t rows, int64_t m, acc_t mu,
                                          scalar_t* value, scalar_t* weights) {
  for (int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; r < rows; r += int64_t{gridDim.x} * blockDim.x) {
    math::smooth_max_row<scalar_t, acc_t>(losses + r * m, m, mu, value + r, weights + r * m);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void smooth_max_warp_per_row(const scalar_t* losses, int64_t rows, int64_t m, acc_t mu,
                                        scalar_t* value, scalar_t* weights) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_grid = int64_t{gridDim.x} * blockDim.x / kWarp;
  for (int64_t r = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / kWarp; r < rows; r += warps_per_grid) {
    const scalar_t* l = losses + r * m;
    math::LseState<acc_t> s = math::lse_empty<acc_t>();
    for (int64_t i = lane; i < m; i += kWarp) {
      math::lse_push(s, static_cast<acc_t>(l[i]), mu);
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const math::LseState<acc_t> other{__shfl_xor_sync(0xffffffff, s.max, offset),
                                        __shfl_xor_sync(0xffffffff, s.sum, offset),
                                        static_cast<bool>(__shfl_xor_sync(0xffffffff, int{s.finite}, offset))};
      s = math::lse_merge(s, other, mu);
    }
    if (lane == 0) {
      value[r] = static_cast<scalar_t>(math::lse_value(s, mu));
    }
    for (int64_t i = lane; i < m; i += kWarp) {
      weights[r * m + i] = static_cast<scalar_t>(math::lse_weight(s, static_cast<acc_t>(l[i]), mu));
    }
  }
}

void smooth_max_cuda_kernel(const at::Tensor& losses, double mu, const at::Tensor& value,
                            const at::Tensor& weights) {
  const c10::cuda::CUDAGuard guard(losses.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t rows = losses.size(0);
  const int64_t m = losses.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, losses.scalar_type(), "smooth_max_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t t = temperature_as<acc_t>(mu);
    const scalar_t* l = losses.const_data_ptr<scalar_t>();
    scalar_t* v = value.mutable_data_ptr<scalar_t>();
    scalar_t* w = weights.mutable_data_ptr<scalar_t>();
    const c10::DeviceIndex device = losses.device().index();
    if (m > kLongRow) {
      constexpr auto kernel = &smooth_max_warp_per_row<scalar_t, acc_t>;
      kernel<<<cuda::grid_for<kernel>(rows * kWarp, device), cuda::kThreadsPerBlock, 0, stream>>>(l, rows, m, t, v, w);
    } else {
      constexpr auto kernel = &smooth_max_thread_per_row<scalar_t, acc_t>;
      kernel<<<cuda::grid_for<kernel>(rows, device), cuda::kThreadsPerBlock, 0, stream>>>(l, rows, m, t, v, w);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mimo_ext, CUDA, m) {
  m.impl("smooth_max", &smooth_max_op<smooth_max_cuda_kernel>);
}

}  // namespace mimo_ext
