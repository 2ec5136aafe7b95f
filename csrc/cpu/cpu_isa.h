// Which x86 vector instruction set the CPU kernels run with, chosen at run time.
//
// The extension is compiled for baseline x86-64 (SSE2, 4 floats per instruction) so that one build runs
// everywhere. The hot loops are therefore compiled three times: as is, and in functions marked with
// MIMO_EXT_TARGET_AVX2 / MIMO_EXT_TARGET_AVX512 (GCC/Clang function attributes; everything such a function inlines
// is compiled for its target too, while out-of-line code stays baseline, so no AVX instruction can leak into a
// path that a baseline CPU runs). cpu_isa() picks the widest set this CPU supports, once per process;
// MIMO_EXT_CPU_ISA=baseline|avx2|avx512 in the environment lowers the choice (to compare or to rule a set out).
//
// The variants give bit-identical results: the loops are element-wise, -ffp-contract=off (csrc/build_flags.txt)
// keeps the compiler from contracting a * b + c into FMA, and the statistics' sums are not vectorised (no
// -ffast-math), so their order is the same in every variant.
#pragma once

namespace mimo_ext {

enum class CpuIsa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

CpuIsa cpu_isa();

const char* cpu_isa_name(CpuIsa isa);

// Of a loop's three compiled variants, the one for this process's instruction set.
template <typename Fn>
Fn pick_for_cpu_isa(Fn baseline, Fn avx2, Fn avx512) {
  switch (cpu_isa()) {
    case CpuIsa::kAvx512:
      return avx512;
    case CpuIsa::kAvx2:
      return avx2;
    case CpuIsa::kBaseline:
      break;
  }
  return baseline;
}

}  // namespace mimo_ext

// MIMO_EXT_FLATTEN on a per-ISA entry function inlines every call in its loops, c10's BFloat16 / Half conversions
// included: once an entry function holds all the always-inlined loop variants, GCC's large-function growth limit
// stops it inlining those plain-inline constructors, which leaves one call per element and the bfloat16 loops
// scalar. (The float16 loops and the steps' half-type loops need more to vectorise: half_convert.h, and [cxx_gcc]
// in csrc/build_flags.txt.)
#if defined(__GNUC__) || defined(__clang__)
#define MIMO_EXT_FLATTEN __attribute__((flatten))
#else
#define MIMO_EXT_FLATTEN
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MIMO_EXT_HAS_ISA_VARIANTS 1
#define MIMO_EXT_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define MIMO_EXT_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")))
#else
#define MIMO_EXT_HAS_ISA_VARIANTS 0
#define MIMO_EXT_TARGET_AVX2
#define MIMO_EXT_TARGET_AVX512
#endif
