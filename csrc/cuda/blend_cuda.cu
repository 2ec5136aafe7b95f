// CUDA kernel of mimo_ext::blend and mimo_ext::blend_. Grid-stride loop in which each thread handles one
// 16-byte vector of every buffer per step (4 floats, 8 halves), falling back to one element per step when any
// buffer is not 16-byte aligned; the n % width tail is handled after the loop. The weights are read on the
// device, so the launch needs no host synchronisation and can be captured in a CUDA graph. No atomics: each
// output element is written by one thread, after it has read that element of every input.
#include "../blend_math.h"
#include "../op_entry.h"
#include "launch_utils.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

namespace mimo_ext {
namespace {

// Gradient pointers travel in the kernel's parameters; K above this is done in several passes.
constexpr int kMaxGradsPerLaunch = 16;

template <typename scalar_t>
struct GradPtrs {
  const scalar_t* ptr[kMaxGradsPerLaunch];
  int weight_index[kMaxGradsPerLaunch];  // position of ptr[k]'s weight in the weights tensor
};

// out[i] = base[i] + sum_k gamma * weights[grads.weight_index[k]] * grads.ptr[k][i] for k < num_grads.
// base may equal out.
template <typename scalar_t, typename acc_t, int kVec>
__global__ void blend_kernel(const scalar_t* base, scalar_t* out, GradPtrs<scalar_t> grads, int num_grads,
                             const acc_t* __restrict__ weights, acc_t gamma, int64_t n) {
  using VecT = cuda::Vec<scalar_t, kVec>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t n_vec = n / kVec;
  for (int64_t v = tid; v < n_vec; v += stride) {
    const VecT b = reinterpret_cast<const VecT*>(base)[v];
    acc_t acc[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      acc[j] = static_cast<acc_t>(b.val[j]);
    }
    for (int k = 0; k < num_grads; ++k) {
      const acc_t c = math::blend_coefficient(gamma, weights[grads.weight_index[k]]);
      const VecT g = reinterpret_cast<const VecT*>(grads.ptr[k])[v];
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        acc[j] = math::blend_accumulate(acc[j], c, g.val[j]);
      }
    }
    VecT o;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      o.val[j] = static_cast<scalar_t>(acc[j]);
    }
    reinterpret_cast<VecT*>(out)[v] = o;
  }
  // Tail: the last n % kVec elements, one per thread.
  const int64_t i = n_vec * kVec + tid;
  if (i < n) {
    acc_t acc = static_cast<acc_t>(base[i]);
    for (int k = 0; k < num_grads; ++k) {
      acc = math::blend_accumulate(acc, math::blend_coefficient(gamma, weights[grads.weight_index[k]]), grads.ptr[k][i]);
    }
    out[i] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
void blend_cuda_typed(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma,
                      const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = base.numel();
  const acc_t* w = weights.const_data_ptr<acc_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();

  bool aligned = cuda::aligned_to(base.const_data_ptr(), 16) && cuda::aligned_to(o, 16);
  for (const at::Tensor& g : grads) {
    aligned = aligned && cuda::aligned_to(g.const_data_ptr(), 16);
  }
  const int64_t units = aligned ? n / kVec + kVec : n;  // + kVec: threads for the tail
  const int64_t blocks = cuda::grid_for(units);

  // Up to kMaxGradsPerLaunch buffers per pass; each pass adds its buffers to what the last one wrote (the first
  // starts from base). In place, a grads buffer that is base itself must be read before base is first written,
  // so such buffers go into the first pass.
  const int64_t k_count = static_cast<int64_t>(grads.size());
  std::vector<int> order(k_count);
  std::iota(order.begin(), order.end(), 0);
  std::stable_partition(order.begin(), order.end(),
                        [&](int k) { return grads[k].const_data_ptr() == static_cast<const void*>(o); });
  TORCH_CHECK_VALUE(k_count <= kMaxGradsPerLaunch || grads[order[kMaxGradsPerLaunch]].const_data_ptr() != o,
                    "mimo_ext.blend_: at most ", kMaxGradsPerLaunch, " grads buffers may be base itself");
  for (int64_t first = 0; first < k_count; first += kMaxGradsPerLaunch) {
    const int num = static_cast<int>(std::min<int64_t>(kMaxGradsPerLaunch, k_count - first));
    GradPtrs<scalar_t> ptrs{};
    for (int k = 0; k < num; ++k) {
      ptrs.weight_index[k] = order[first + k];
      ptrs.ptr[k] = grads[order[first + k]].const_data_ptr<scalar_t>();
    }
    const scalar_t* in = first == 0 ? base.const_data_ptr<scalar_t>() : o;
    if (aligned) {
      blend_kernel<scalar_t, acc_t, kVec><<<blocks, cuda::kThreadsPerBlock, 0, stream>>>(
          in, o, ptrs, num, w, static_cast<acc_t>(gamma), n);
    } else {
      blend_kernel<scalar_t, acc_t, 1><<<blocks, cuda::kThreadsPerBlock, 0, stream>>>(
          in, o, ptrs, num, w, static_cast<acc_t>(gamma), n);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void blend_cuda_kernel(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma,
                       const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(base.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base.scalar_type(), "blend_cuda",
                                  [&] { blend_cuda_typed<scalar_t>(base, grads, weights, gamma, out); });
}

}  // namespace

TORCH_LIBRARY_IMPL(mimo_ext, CUDA, m) {
  m.impl("blend", &blend_op<blend_cuda_kernel>);
  m.impl("blend_", &blend_in_place_op<blend_cuda_kernel>);
}

}  // namespace mimo_ext
