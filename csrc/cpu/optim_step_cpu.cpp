// CPU kernels of mimo_ext::sgd_step_ and mimo_ext::adamw_step_: one pass over the flat buffers. The buffers are
// cut into fixed chunks spread over the threads; each chunk is walked in L1-sized blocks: the K gradients are
// blended into an acc_t block (unit-stride loops the compiler vectorises), then the update reads and writes
// parameter and state once. The optional statistics are summed per chunk and then over chunks in a fixed order,
// so they do not depend on the number of threads.
#include "../blend_math.h"
#include "../step_entry.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace mimo_ext {
namespace {

constexpr int64_t kBlock = 1024;          // elements per block: a few acc_t[kBlock] arrays stay in L1
constexpr int64_t kChunk = 16 * kBlock;   // elements per parallel task, and per partial sum of the statistics

// kStates (the state buffers in use) is a compile-time constant so that the update loop is a plain loop over
// arrays, which the compiler vectorises (the option branches inside the update become selects).
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
  for (int s = 0; s < kStates; ++s) {
    states[s] = b.states[s].mutable_data_ptr<scalar_t>();
  }
  const acc_t* coefficients = b.coefficients.const_data_ptr<acc_t>();
  scalar_t* param = b.param.mutable_data_ptr<scalar_t>();
  const auto per_step = update.prepare(*b.lr.const_data_ptr<acc_t>(), *b.step.const_data_ptr<float>());

  const bool stats = b.stats.defined();
  const int stat_count = 2 * k_count;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<acc_t> partials(stats ? chunks * stat_count : 0, acc_t(0));

  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    acc_t g[kBlock];
    acc_t g0[kBlock];
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      acc_t* partial = stats ? partials.data() + chunk * stat_count : nullptr;
      const int64_t chunk_stop = std::min(n, (chunk + 1) * kChunk);
      for (int64_t start = chunk * kChunk; start < chunk_stop; start += kBlock) {
        const int64_t len = std::min(kBlock, chunk_stop - start);
        for (int64_t i = 0; i < len; ++i) {
          g[i] = acc_t(0);
        }
        for (int k = 0; k < k_count; ++k) {
          const scalar_t* gk = grads[k] + start;
          const acc_t c = coefficients[k];
          for (int64_t i = 0; i < len; ++i) {
            g[i] = math::blend_accumulate(g[i], c, gk[i]);
          }
          if (stats) {
            acc_t sq = 0;
            acc_t dot = 0;
            for (int64_t i = 0; i < len; ++i) {
              const acc_t v = static_cast<acc_t>(gk[i]);
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
        if (stats) {
          acc_t sq = 0;
          for (int64_t i = 0; i < len; ++i) {
            sq += g[i] * g[i];
          }
          partial[stat_count - 1] += sq;
        }
        scalar_t* const p_block = param + start;
        for (int64_t i = 0; i < len; ++i) {
          acc_t p = static_cast<acc_t>(p_block[i]);
          acc_t st[math::kMaxStates] = {};
          for (int s = 0; s < kStates; ++s) {
            st[s] = static_cast<acc_t>(states[s][start + i]);
          }
          update.template apply<kStates>(per_step, p, st, g[i]);
          p_block[i] = static_cast<scalar_t>(p);
          for (int s = 0; s < kStates; ++s) {
            states[s][start + i] = static_cast<scalar_t>(st[s]);
          }
        }
      }
    }
  });

  if (stats) {
    acc_t* out = b.stats.mutable_data_ptr<acc_t>();
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      for (int s = 0; s < stat_count; ++s) {
        out[s] += partials[chunk * stat_count + s];
      }
    }
  }
}

template <typename Options>
void step_cpu_kernel(const StepBuffers& b, const Options& options) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.param.scalar_type(), "optim_step_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto update = make_update<acc_t>(options);
    constexpr int kFew = std::remove_cvref_t<decltype(update)>::kStatesWithout;
    if (static_cast<int>(b.states.size()) == kFew) {
      step_cpu_typed<scalar_t, kFew>(b, update);
    } else {
      step_cpu_typed<scalar_t, kFew + 1>(b, update);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mimo_ext, CPU, m) {
  m.impl("sgd_step_", &sgd_step_op<step_cpu_kernel<SgdOptions>>);
  m.impl("adamw_step_", &adamw_step_op<step_cpu_kernel<AdamWOptions>>);
}

}  // namespace mimo_ext
