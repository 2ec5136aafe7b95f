// Small helpers shared by the CUDA kernels: launch shape and wide (16-byte) vector access.
#pragma once

#include <c10/core/Device.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

namespace mimo_ext::cuda {

constexpr int kThreadsPerBlock = 256;
// Devices per process the launch-shape caches hold (a larger index is refused, never mis-sized).
constexpr int kMaxDevices = 64;

// Streaming multiprocessors of a device, queried once per device: a launch then needs no driver call for it.
inline int sm_count(c10::DeviceIndex device) {
  static std::array<std::atomic<int>, kMaxDevices> cache{};
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "mimo_ext: CUDA device index ", int{device}, " out of range");
  int sms = cache[device].load(std::memory_order_relaxed);
  if (sms == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

// Blocks for a grid-stride loop of kKernel over `units` work items: one full wave, i.e. as many blocks as the
// kernel's registers and shared memory let run at once on every SM (a fixed blocks-per-SM guess would leave a
// partial second wave for a kernel whose registers fit fewer), and no more than the work needs. The occupancy
// is queried once per kernel and device (each kKernel has its own cache); the caller has made `device` current.
template <auto kKernel>
int64_t grid_for(int64_t units, c10::DeviceIndex device) {
  static std::array<std::atomic<int>, kMaxDevices> blocks_per_sm_cache{};
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "mimo_ext: CUDA device index ", int{device}, " out of range");
  int blocks_per_sm = blocks_per_sm_cache[device].load(std::memory_order_relaxed);
  if (blocks_per_sm == 0) {
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kKernel, kThreadsPerBlock, 0));
    blocks_per_sm = std::max(blocks_per_sm, 1);
    blocks_per_sm_cache[device].store(blocks_per_sm, std::memory_order_relaxed);
  }
  const int64_t wanted = (units + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return std::max<int64_t>(1, std::min<int64_t>(wanted, int64_t{sm_count(device)} * blocks_per_sm));
}

inline bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T val[N];
};

}  // namespace mimo_ext::cuda
