// The loops of the CPU step kernels (sgd_step_cpu.cpp, adamw_step_cpu.cpp): one pass over the flat buffers, cut
// into fixed chunks spread over the threads. Without statistics and with K <= 4 gradients, one loop blends and
// updates every element (all buffers stream together); otherwise each chunk is walked in L1-sized blocks: the K
// gradients are blended into an acc_t block, then the update reads and writes parameter and state once. Both give
// the same bits; the loops are vectorised once per instruction set (cpu_isa.h). The optional statistics are summed
// per chunk and then over chunks in a fixed order, so they do not depend on the number of threads.
//
// Templates in an unnamed namespace: each op's file instantiates step_cpu_kernel for its own algorithm only, so
// nothing is compiled twice and the instantiations keep internal linkage.
#pragma once

#include "../blend_math.h"
#include "../step_entry.h"
#include "cpu_isa.h"
#include "half_convert.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace mimo_ext {
namespace {

constexpr int64_t kBlock = 1024;          // elements per block: a few acc_t[kBlock] arrays stay in L1
constexpr int64_t kChunk = 16 * kBlock;   // elements per parallel task, and per partial sum of the statistics

// The raw pointers and per-step values of one step, shared by the threads.
template <typename scalar_t, typename Update>
struct StepPointers {
  using acc_t = at::opmath_type<scalar_t>;
  const Update* update;
  typename Update::PerStep per_step;
  const scalar_t* const* grads;
  int k_count;
  scalar_t* const* states;
  const acc_t* coefficients;
  scalar_t* param;
  int64_t n;
  acc_t* partials;  // [chunks, 2K] per-chunk statistics, or nullptr
};

// Without statistics and with K <= 4 gradients: blend and update in one loop over [begin, end), every buffer
// streaming together (a loop per gradient over L1-sized blocks restarts each prefetch stream at every 4 KB page;
// benchmarks/NOTES.md). The same operations in the same order as the blocked loop below, so the same bits. The
// pointers are __restrict__ (the entry checks that param, states and grads do not overlap): with up to eight
// streams the compiler would otherwise give up on its run-time aliasing checks and leave the loop scalar.
template <int G, typename scalar_t, int kStates, typename Update>
C10_ALWAYS_INLINE void step_fused_loop(const Update& update, const typename Update::PerStep& per_step,
                                       const at::opmath_type<scalar_t>* coefficients,
                                       const scalar_t* __restrict__ g0, const scalar_t* __restrict__ g1,
                                       const scalar_t* __restrict__ g2, const scalar_t* __restrict__ g3,
                                       scalar_t* __restrict__ param, scalar_t* __restrict__ s0,
                                       scalar_t* __restrict__ s1, scalar_t* __restrict__ s2, int64_t begin,
                                       int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t c[4] = {};
  for (int j = 0; j < G; ++j) {
    c[j] = coefficients[j];
  }
  // Local copies: the loop's stores cannot change them, so their option flags are loop-invariant and the
  // compiler turns the selects on them into vector blends (read through the references, they are not, and
  // AdamW's loop stays scalar: "control flow in loop").
  const Update u = update;
  const typename Update::PerStep ps = per_step;
  for (int64_t i = begin; i < end; ++i) {
    acc_t g = math::blend_accumulate(acc_t(0), c[0], cpu::to_acc(g0[i]));
    if constexpr (G > 1) {
      g = math::blend_accumulate(g, c[1], cpu::to_acc(g1[i]));
    }
    if constexpr (G > 2) {
      g = math::blend_accumulate(g, c[2], cpu::to_acc(g2[i]));
    }
    if constexpr (G > 3) {
      g = math::blend_accumulate(g, c[3], cpu::to_acc(g3[i]));
    }
    acc_t p = cpu::to_acc(param[i]);
    acc_t st[math::kMaxStates] = {};
    if constexpr (kStates > 0) {
      st[0] = cpu::to_acc(s0[i]);
    }
    if constexpr (kStates > 1) {
      st[1] = cpu::to_acc(s1[i]);
    }
    if constexpr (kStates > 2) {
      st[2] = cpu::to_acc(s2[i]);
    }
    u.template apply<kStates>(ps, p, st, g);
    param[i] = cpu::from_acc<scalar_t>(p);
    if constexpr (kStates > 0) {
      s0[i] = cpu::from_acc<scalar_t>(st[0]);
    }
    if constexpr (kStates > 1) {
      s1[i] = cpu::from_acc<scalar_t>(st[1]);
    }
    if constexpr (kStates > 2) {
      s2[i] = cpu::from_acc<scalar_t>(st[2]);
    }
  }
}

template <int G, typename scalar_t, int kStates, typename Update>
C10_ALWAYS_INLINE void step_fused(const StepPointers<scalar_t, Update>& s, int64_t chunk_begin, int64_t chunk_end) {
  static_assert(kStates <= 3, "step_fused_loop takes at most three state buffers");
  const scalar_t* g[4] = {};
  for (int j = 0; j < G; ++j) {
    g[j] = s.grads[j];
  }
  scalar_t* st[3] = {};
  for (int j = 0; j < kStates; ++j) {
    st[j] = s.states[j];
  }
  step_fused_loop<G, scalar_t, kStates>(*s.update, s.per_step, s.coefficients, g[0], g[1], g[2], g[3], s.param,
                                        st[0], st[1], st[2], chunk_begin * kChunk,
                                        std::min(s.n, chunk_end * kChunk));
}

// The work of one thread: chunks [chunk_begin, chunk_end). kStates (the state buffers in use) is a compile-time
// constant so that the update loop is a plain loop over arrays, which the compiler vectorises (the option branches
// inside the update become selects). Always inlined into the per-ISA functions below, so that each compiles these
// loops for its own vector width (cpu_isa.h).
template <typename scalar_t, int kStates, typename Update>
C10_ALWAYS_INLINE void step_chunks(const StepPointers<scalar_t, Update>& s, int64_t chunk_begin, int64_t chunk_end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int k_count = s.k_count;
  if (s.partials == nullptr) {
    switch (k_count) {
      case 1:
        return step_fused<1, scalar_t, kStates>(s, chunk_begin, chunk_end);
      case 2:
        return step_fused<2, scalar_t, kStates>(s, chunk_begin, chunk_end);
      case 3:
        return step_fused<3, scalar_t, kStates>(s, chunk_begin, chunk_end);
      case 4:
        return step_fused<4, scalar_t, kStates>(s, chunk_begin, chunk_end);
      default:
        break;
    }
  }
  const int stat_count = 2 * k_count;
  acc_t g[kBlock];
  acc_t g0[kBlock];
  for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
    acc_t* partial = s.partials != nullptr ? s.partials + chunk * stat_count : nullptr;
    const int64_t chunk_stop = std::min(s.n, (chunk + 1) * kChunk);
    for (int64_t start = chunk * kChunk; start < chunk_stop; start += kBlock) {
      const int64_t len = std::min(kBlock, chunk_stop - start);
      for (int64_t i = 0; i < len; ++i) {
        g[i] = acc_t(0);
      }
      for (int k = 0; k < k_count; ++k) {
        const scalar_t* gk = s.grads[k] + start;
        const acc_t c = s.coefficients[k];
        for (int64_t i = 0; i < len; ++i) {
          g[i] = math::blend_accumulate(g[i], c, cpu::to_acc(gk[i]));
        }
        if (partial != nullptr) {
          // Plain in-order sums (not vectorised without -ffast-math): the same order in every ISA variant.
          acc_t sq = 0;
          acc_t dot = 0;
          for (int64_t i = 0; i < len; ++i) {
            const acc_t v = cpu::to_acc(gk[i]);
            sq += v * v;
            if (k == 0) {
              g0[i] = v;
            } else {
              dot += g0[i] * v;
            }
          }
          partial[k] += sq;
          if (k > 0) {
            partial[k_count + k - 1] += dot;
          }
        }
      }
      if (partial != nullptr) {
        acc_t sq = 0;
        for (int64_t i = 0; i < len; ++i) {
          sq += g[i] * g[i];
        }
        partial[stat_count - 1] += sq;
      }
      scalar_t* const p_block = s.param + start;
      for (int64_t i = 0; i < len; ++i) {
        acc_t p = cpu::to_acc(p_block[i]);
        acc_t st[math::kMaxStates] = {};
        for (int j = 0; j < kStates; ++j) {
          st[j] = cpu::to_acc(s.states[j][start + i]);
        }
        s.update->template apply<kStates>(s.per_step, p, st, g[i]);
        p_block[i] = cpu::from_acc<scalar_t>(p);
        for (int j = 0; j < kStates; ++j) {
          s.states[j][start + i] = cpu::from_acc<scalar_t>(st[j]);
        }
      }
    }
  }
}

template <typename scalar_t, int kStates, typename Update>
void step_chunks_baseline(const StepPointers<scalar_t, Update>& s, int64_t chunk_begin, int64_t chunk_end) {
  step_chunks<scalar_t, kStates, Update>(s, chunk_begin, chunk_end);
}

template <typename scalar_t, int kStates, typename Update>
MIMO_EXT_TARGET_AVX2 void step_chunks_avx2(const StepPointers<scalar_t, Update>& s, int64_t chunk_begin,
                                           int64_t chunk_end) {
  step_chunks<scalar_t, kStates, Update>(s, chunk_begin, chunk_end);
}

template <typename scalar_t, int kStates, typename Update>
auto step_chunks_for_cpu_isa() {
  // AVX2 at most: GCC's AVX-512 build of these memory-bound loops is no faster than the AVX2 one
  // (benchmarks/NOTES.md) and would double their code. (The blend, blend_cpu.cpp, gains from AVX-512 in bfloat16.)
  constexpr auto baseline = &step_chunks_baseline<scalar_t, kStates, Update>;
  constexpr auto avx2 = &step_chunks_avx2<scalar_t, kStates, Update>;
  return pick_for_cpu_isa(baseline, avx2, avx2);
}

template <typename scalar_t, int kStates, typename Update>
void step_cpu_typed(const StepBuffers& b, const Update& update) {
  using acc_t = at::opmath_type<scalar_t>;
  if (b.found_inf.defined() && *b.found_inf.const_data_ptr<acc_t>() != acc_t(0)) {
    return;  // a skipped step writes nothing
  }
  const int64_t n = b.param.numel();
  const int k_count = static_cast<int>(b.grads.size());
  std::vector<const scalar_t*> grads(k_count);
  for (int k = 0; k < k_count; ++k) {
    grads[k] = b.grads[k].const_data_ptr<scalar_t>();
  }
  TORCH_INTERNAL_ASSERT(static_cast<int>(b.states.size()) == kStates);
  scalar_t* states[kStates > 0 ? kStates : 1] = {};
  for (int j = 0; j < kStates; ++j) {
    states[j] = b.states[j].mutable_data_ptr<scalar_t>();
  }
  const bool stats = b.stats.defined();
  const int stat_count = 2 * k_count;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<acc_t> partials(stats ? chunks * stat_count : 0, acc_t(0));
  const StepPointers<scalar_t, Update> pointers{
      &update,
      update.prepare(*b.lr.const_data_ptr<acc_t>(), *b.step.const_data_ptr<float>()),
      grads.data(),
      k_count,
      states,
      b.coefficients.const_data_ptr<acc_t>(),
      b.param.mutable_data_ptr<scalar_t>(),
      n,
      stats ? partials.data() : nullptr};
  const auto chunk_fn = step_chunks_for_cpu_isa<scalar_t, kStates, Update>();
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    chunk_fn(pointers, chunk_begin, chunk_end);
  });

  if (stats) {
    acc_t* out = b.stats.mutable_data_ptr<acc_t>();
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      for (int j = 0; j < stat_count; ++j) {
        out[j] += partials[chunk * stat_count + j];
      }
    }
  }
}

template <typename Options>
void step_cpu_kernel(const StepBuffers& b, const Options& options) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.param.scalar_type(), "optim_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto update = make_update<acc_t>(options);
    constexpr int kFew = std::decay_t<decltype(update)>::kStatesWithout;
    if (static_cast<int>(b.states.size()) == kFew) {
      step_cpu_typed<scalar_t, kFew>(b, update);
    } else {
      step_cpu_typed<scalar_t, kFew + 1>(b, update);
    }
  });
}

}  // namespace

}  // namespace mimo_ext
