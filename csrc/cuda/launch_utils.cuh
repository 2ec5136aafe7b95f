// Small helpers shared by the CUDA kernels: launch shape and wide (16-byte) vector access.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace mimo_ext::cuda {

constexpr int kThreadsPerBlock = 256;

// Blocks for a grid-stride loop over `units` work items: enough to fill every SM several times, no more.
inline int64_t grid_for(int64_t units) {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t wanted = (units + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t{sms} * 8));
}

inline bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T val[N];
};

}  // namespace mimo_ext::cuda
