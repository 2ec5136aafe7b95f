#include "cpu_isa.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

namespace mimo_ext {
namespace {

CpuIsa detect() {
#if MIMO_EXT_HAS_ISA_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")) {
    return CpuIsa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return CpuIsa::kAvx2;
  }
#endif
  return CpuIsa::kBaseline;
}

CpuIsa choose() {
  const CpuIsa supported = detect();
  const char* requested = std::getenv("MIMO_EXT_CPU_ISA");
  if (requested == nullptr || *requested == '\0') {
    return supported;
  }
  const std::string name(requested);
  CpuIsa wanted;
  if (name == "baseline") {
    wanted = CpuIsa::kBaseline;
  } else if (name == "avx2") {
    wanted = CpuIsa::kAvx2;
  } else if (name == "avx512") {
    wanted = CpuIsa::kAvx512;
  } else {
    TORCH_CHECK_VALUE(false, "MIMO_EXT_CPU_ISA must be baseline, avx2 or avx512, got '", name, "'");
  }
  // Lowering only: asking for a set this CPU lacks would crash on the first vector instruction.
  TORCH_CHECK_VALUE(static_cast<int>(wanted) <= static_cast<int>(supported), "MIMO_EXT_CPU_ISA=", name,
                    " asks for an instruction set this CPU does not support (it supports ", cpu_isa_name(supported),
                    ")");
  return wanted;
}

}  // namespace

CpuIsa cpu_isa() {
  static const CpuIsa isa = choose();
  return isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kBaseline:
      break;
  }
  return "baseline";
}

TORCH_LIBRARY_FRAGMENT(mimo_ext, m) {
  // For benchmarks and tests: the instruction set the CPU kernels use in this process.
  m.def("cpu_isa() -> str", [] { return std::string(cpu_isa_name(cpu_isa())); });
}

}  // namespace mimo_ext
