// Checks the optimizer-update math shared by the CPU and CUDA kernels (optim_math.h) on the CPU: several steps of
// each algorithm and option set, in float and double, against long-double transcriptions of the update rules as
// torch.optim.SGD and torch.optim.AdamW document them. Exits non-zero on any failure.
#include "../optim_math.h"  // first: the header must compile on its own
#include "expect.h"

#include <cmath>
#include <string>

namespace {

using ld = long double;
using mimo_ext::math::AdamWUpdate;
using mimo_ext::math::kMaxStates;
using mimo_ext::math::SgdUpdate;

constexpr int kSteps = 9;

template <typename acc_t>
ld tolerance();
template <> ld tolerance<float>() { return 1e-5L; }  // a few float roundings per step, over kSteps steps
template <> ld tolerance<double>() { return 1e-13L; }

template <typename acc_t>
const char* type_name();
template <> const char* type_name<float>() { return "float"; }
template <> const char* type_name<double>() { return "double"; }

bool close(ld actual, ld expected, ld rel) {
  return std::fabs(actual - expected) <= rel * std::fmax(std::fabs(expected), 1.0L);
}

// Gradient of step t for a parameter: deterministic, of both signs and several magnitudes.
ld gradient(int t, int element) {
  return std::sin(0.7L * t + 1.3L * element + 0.3L) * (1 + element);  // never exactly 0
}

template <typename acc_t>
void test_sgd() {
  struct Case {
    ld lr, weight_decay, momentum, dampening;
    bool nesterov, maximize;
  };
  const Case cases[] = {
      {0.1L, 0, 0, 0, false, false},      {0.05L, 0.01L, 0.9L, 0, false, false}, {0.05L, 0.01L, 0.9L, 0, true, false},
      {0.2L, 0, 0.5L, 0.3L, false, true}, {0.01L, 0.1L, 0.99L, 0.1L, false, false},
  };
  for (const Case& c : cases) {
    for (int element = 0; element < 3; ++element) {
      const SgdUpdate<acc_t> update{static_cast<acc_t>(c.weight_decay), static_cast<acc_t>(c.momentum),
                                    static_cast<acc_t>(c.dampening), c.nesterov, c.maximize, c.weight_decay != 0};
      const auto apply = [&](auto&&... args) {
        if (c.momentum != 0) {
          update.template apply<1>(args...);
        } else {
          update.template apply<0>(args...);
        }
      };
      acc_t param = static_cast<acc_t>(0.5L - element);
      acc_t state[kMaxStates] = {};
      ld ref_param = param;
      ld ref_buf = 0;
      for (int t = 0; t < kSteps; ++t) {
        const ld g_in = static_cast<acc_t>(gradient(t, element));
        apply(update.prepare(static_cast<acc_t>(c.lr), static_cast<float>(t)), param, state, static_cast<acc_t>(g_in));
        // torch.optim.SGD, written out.
        ld g = c.maximize ? -g_in : g_in;
        g += static_cast<ld>(static_cast<acc_t>(c.weight_decay)) * ref_param;
        if (c.momentum != 0) {
          const ld momentum = static_cast<acc_t>(c.momentum);
          const ld dampening = static_cast<acc_t>(c.dampening);
          ref_buf = t == 0 ? g : momentum * ref_buf + (1 - dampening) * g;
          g = c.nesterov ? g + momentum * ref_buf : ref_buf;
        }
        ref_param -= static_cast<ld>(static_cast<acc_t>(c.lr)) * g;
        EXPECT(close(param, ref_param, tolerance<acc_t>()), "%s sgd lr=%Lg wd=%Lg m=%Lg d=%Lg n=%d max=%d step %d: %.17Lg, expected %.17Lg",
               type_name<acc_t>(), c.lr, c.weight_decay, c.momentum, c.dampening, int(c.nesterov), int(c.maximize),
               t, ld(param), ref_param);
        if (c.momentum != 0) {
          EXPECT(close(state[0], ref_buf, tolerance<acc_t>()), "%s sgd momentum buffer step %d: %.17Lg, expected %.17Lg",
                 type_name<acc_t>(), t, ld(state[0]), ref_buf);
        }
      }
    }
  }
}

template <typename acc_t>
void test_adamw() {
  struct Case {
    ld lr, beta1, beta2, eps, weight_decay;
    bool amsgrad, maximize;
  };
  const Case cases[] = {
      {1e-3L, 0.9L, 0.999L, 1e-8L, 0.01L, false, false},
      {1e-2L, 0.8L, 0.99L, 1e-6L, 0, true, false},
      {5e-3L, 0, 0.5L, 1e-3L, 0.1L, false, true},
      {1e-1L, 0.9L, 0.999L, 0, 0.01L, true, true},
  };
  for (const Case& c : cases) {
    for (int element = 0; element < 3; ++element) {
      const AdamWUpdate<acc_t> update{static_cast<acc_t>(c.beta1),
                                      static_cast<acc_t>(c.beta2),
                                      static_cast<acc_t>(1 - static_cast<double>(c.beta1)),
                                      static_cast<acc_t>(1 - static_cast<double>(c.beta2)),
                                      static_cast<acc_t>(c.eps),
                                      c.amsgrad,
                                      c.maximize,
                                      static_cast<double>(c.weight_decay),
                                      static_cast<double>(c.beta1),
                                      static_cast<double>(c.beta2)};
      acc_t param = static_cast<acc_t>(0.5L - element);
      acc_t state[kMaxStates] = {};
      ld p = param, m = 0, v = 0, v_max = 0;
      const ld lr = static_cast<acc_t>(c.lr), b1 = static_cast<double>(c.beta1), b2 = static_cast<double>(c.beta2);
      const ld eps = static_cast<acc_t>(c.eps), wd = static_cast<double>(c.weight_decay);
      for (int t = 0; t < kSteps; ++t) {
        const ld g_in = static_cast<acc_t>(gradient(t, element));
        const auto per_step = update.prepare(static_cast<acc_t>(c.lr), static_cast<float>(t));
        if (c.amsgrad) {
          update.template apply<3>(per_step, param, state, static_cast<acc_t>(g_in));
        } else {
          update.template apply<2>(per_step, param, state, static_cast<acc_t>(g_in));
        }
        // torch.optim.AdamW, written out (step t + 1 in its 1-based count).
        const ld g = c.maximize ? -g_in : g_in;
        p *= 1 - lr * wd;
        m = b1 * m + (1 - b1) * g;
        v = b2 * v + (1 - b2) * g * g;
        v_max = std::fmax(v_max, v);
        const ld second = c.amsgrad ? v_max : v;
        const ld bc1 = 1 - std::pow(b1, ld(t + 1));
        const ld bc2 = 1 - std::pow(b2, ld(t + 1));
        p -= lr / bc1 * m / (std::sqrt(second) / std::sqrt(bc2) + eps);
        const std::string what = std::string(type_name<acc_t>()) + (c.amsgrad ? " adamw amsgrad" : " adamw");
        EXPECT(close(param, p, tolerance<acc_t>()), "%s lr=%Lg step %d: param %.17Lg, expected %.17Lg", what.c_str(),
               c.lr, t, ld(param), p);
        EXPECT(close(state[0], m, tolerance<acc_t>()), "%s step %d: exp_avg %.17Lg, expected %.17Lg", what.c_str(), t,
               ld(state[0]), m);
        EXPECT(close(state[1], v, tolerance<acc_t>()), "%s step %d: exp_avg_sq %.17Lg, expected %.17Lg", what.c_str(),
               t, ld(state[1]), v);
        if (c.amsgrad) {
          EXPECT(close(state[2], v_max, tolerance<acc_t>()), "%s step %d: max_exp_avg_sq %.17Lg, expected %.17Lg",
                 what.c_str(), t, ld(state[2]), v_max);
        }
      }
    }
  }
}

}  // namespace

int main() {
  test_sgd<float>();
  test_sgd<double>();
  test_adamw<float>();
  test_adamw<double>();
  return mimo_ext_test::finish("test_optim_math");
}
