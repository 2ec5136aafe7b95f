// CUDA kernel of mimo_ext::blend and mimo_ext::blend_. Grid-stride loop in which each thread handles one
// 16-byte vector of every buffer per step (4 floats, 8 halves), falling back to one element per step when any
// buffer is not 16-byte aligned; the n % width tail is handled after the loop. The weights are read on the
// device, so the launch needs no host synchronisation and can be captured in a CUDA graph. No atomics: each
// output element is written by one thread, after it has read that element of every input.
#include "../blend_math.h"
#include "../op_entry.h"
#include "launch_utils.cuh"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace mimo_ext {
namespace {

// Gradient pointers travel in the kernel's parameters; K above this is done in several passes.
constexpr int kMaxGradsPerLaunch = 16;

template <typename scalar_t>
struct GradPtrs {
  const scalar_t* ptr[kMaxGradsPerLaunch];
};

// out[i] = base[i] + sum_k gamma * weights[k] * grads.ptr[k][i] for k < num_grads, summed in k's order in acc_t.
// base may equal out. in_t / out_t are the storage type, or acc_t for the partial sums of a multi-pass blend.
// __grid_constant__: grads.ptr[k] indexed at run time reads the parameter space, not a local copy of it.
template <typename in_t, typename out_t, typename scalar_t, typename acc_t, int kVec>
__global__ void blend_kernel(const in_t* base, out_t* out, const __grid_constant__ GradPtrs<scalar_t> grads,
                             int num_grads, const acc_t* __restrict__ weights, acc_t gamma, int64_t n) {
  using InVec = cuda::Vec<in_t, kVec>;
  using OutVec = cuda::Vec<out_t, kVec>;
  using GradVec = cuda::Vec<scalar_t, kVec>;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t n_vec = n / kVec;
  for (int64_t v = tid; v < n_vec; v += stride) {
    const InVec b = reinterpret_cast<const InVec*>(base)[v];
    acc_t acc[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      acc[j] = static_cast<acc_t>(b.val[j]);
    }
    for (int k = 0; k < num_grads; ++k) {
      const acc_t c = math::blend_coefficient(gamma, weights[k]);
      const GradVec g = reinterpret_cast<const GradVec*>(grads.ptr[k])[v];
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        acc[j] = math::blend_accumulate(acc[j], c, g.val[j]);
      }
    }
    OutVec o;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      o.val[j] = static_cast<out_t>(acc[j]);
    }
    reinterpret_cast<OutVec*>(out)[v] = o;
  }
  // Tail: the last n % kVec elements, one per thread.
  const int64_t i = n_vec * kVec + tid;
  if (i < n) {
    acc_t acc = static_cast<acc_t>(base[i]);
    for (int k = 0; k < num_grads; ++k) {
      acc = math::blend_accumulate(acc, math::blend_coefficient(gamma, weights[k]), grads.ptr[k][i]);
    }
    out[i] = static_cast<out_t>(acc);
  }
}

// One launch over at most kMaxGradsPerLaunch gradient buffers, weights[0..num) being theirs.
template <typename in_t, typename out_t, typename scalar_t, typename acc_t>
void launch_blend(const in_t* in, out_t* out, const GradPtrs<scalar_t>& grads, int num_grads, const acc_t* weights,
                  acc_t gamma, int64_t n, bool aligned, c10::DeviceIndex device, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  if (aligned) {
    constexpr auto kernel = &blend_kernel<in_t, out_t, scalar_t, acc_t, kVec>;
    const int64_t blocks = cuda::grid_for<kernel>(n / kVec + kVec, device);  // + kVec: threads for the tail
    kernel<<<blocks, cuda::kThreadsPerBlock, 0, stream>>>(in, out, grads, num_grads, weights, gamma, n);
  } else {
    constexpr auto kernel = &blend_kernel<in_t, out_t, scalar_t, acc_t, 1>;
    kernel<<<cuda::grid_for<kernel>(n, device), cuda::kThreadsPerBlock, 0, stream>>>(in, out, grads, num_grads,
                                                                                      weights, gamma, n);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void blend_cuda_typed(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma,
                      const at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const c10::DeviceIndex device = base.device().index();
  const int64_t n = base.numel();
  const acc_t* w = weights.const_data_ptr<acc_t>();
  const acc_t g = static_cast<acc_t>(gamma);
  const scalar_t* b = base.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();

  bool aligned = cuda::aligned_to(b, 16) && cuda::aligned_to(o, 16);
  for (const at::Tensor& grad : grads) {
    aligned = aligned && cuda::aligned_to(grad.const_data_ptr(), 16);
  }
  const int k_count = static_cast<int>(grads.size());
  const auto pointers = [&](int first, int num) {
    GradPtrs<scalar_t> ptrs{};
    for (int k = 0; k < num; ++k) {
      ptrs.ptr[k] = grads[first + k].const_data_ptr<scalar_t>();
    }
    return ptrs;
  };
  if (k_count <= kMaxGradsPerLaunch) {
    launch_blend(b, o, pointers(0, k_count), k_count, w, g, n, aligned, device, stream);
    return;
  }
  // More buffers than one launch takes: the passes carry the partial sum in acc_t through a scratch buffer, so
  // the sum runs in the given order and is rounded once, as on the CPU. out is written by the last pass only, so
  // grads that are base itself (in place) read the original base in every pass: each thread reads its elements
  // of every input before writing them.
  at::Tensor scratch = at::empty({n}, base.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* s = scratch.mutable_data_ptr<acc_t>();
  launch_blend(b, s, pointers(0, kMaxGradsPerLaunch), kMaxGradsPerLaunch, w, g, n, aligned, device, stream);
  int first = kMaxGradsPerLaunch;
  for (; k_count - first > kMaxGradsPerLaunch; first += kMaxGradsPerLaunch) {
    launch_blend<acc_t, acc_t>(s, s, pointers(first, kMaxGradsPerLaunch), kMaxGradsPerLaunch, w + first, g, n, aligned,
                               device, stream);
  }
  launch_blend<acc_t, scalar_t>(s, o, pointers(first, k_count - first), k_count - first, w + first, g, n, aligned,
                                device, stream);
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
