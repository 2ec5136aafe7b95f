// Calls the fused optimizer steps (mimo_ext::sgd_step_, mimo_ext::adamw_step_) and the C++ autograd of
// mimo_ext::smooth_max through the dispatcher on CPU tensors: the code test_ops does not reach. Lengths sit on and
// around the CPU kernel's block (1024) and chunk (16 * 1024) boundaries, K runs up to the limit of 16 buffers, and
// every buffer is a tensor of its own, so that under the sanitizer build (MIMO_EXT_SANITIZE) a read or write past
// the end of any buffer hits an ASan redzone. Results are compared with ATen float64 transcriptions of
// mimo_ext/optim/reference.py; rejected calls must leave every buffer bit-identical. Exits non-zero on failure.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/autograd.h>

#include "expect.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

using OptTensor = std::optional<at::Tensor>;

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

at::Tensor sgd_step_(at::Tensor& param, at::Tensor& momentum_buffer, at::TensorList grads, const at::Tensor& coefficients,
                     const at::Tensor& lr, at::Tensor& step, const OptTensor& grad_scale, const OptTensor& found_inf,
                     double weight_decay, double momentum, double dampening, bool nesterov, bool maximize,
                     bool compute_stats) {
  static const auto h =
      op("mimo_ext::sgd_step_")
          .typed<at::Tensor(at::Tensor&, at::Tensor&, at::TensorList, const at::Tensor&, const at::Tensor&,
                            at::Tensor&, const OptTensor&, const OptTensor&, double, double, double, bool, bool,
                            bool)>();
  return h.call(param, momentum_buffer, grads, coefficients, lr, step, grad_scale, found_inf, weight_decay, momentum,
                dampening, nesterov, maximize, compute_stats);
}

at::Tensor adamw_step_(at::Tensor& param, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor& max_exp_avg_sq,
                       at::TensorList grads, const at::Tensor& coefficients, const at::Tensor& lr, at::Tensor& step,
                       const OptTensor& grad_scale, const OptTensor& found_inf, double beta1, double beta2,
                       double eps, double weight_decay, bool amsgrad, bool maximize, bool compute_stats) {
  static const auto h =
      op("mimo_ext::adamw_step_")
          .typed<at::Tensor(at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::TensorList, const at::Tensor&,
                            const at::Tensor&, at::Tensor&, const OptTensor&, const OptTensor&, double, double,
                            double, double, bool, bool, bool)>();
  return h.call(param, exp_avg, exp_avg_sq, max_exp_avg_sq, grads, coefficients, lr, step, grad_scale, found_inf,
                beta1, beta2, eps, weight_decay, amsgrad, maximize, compute_stats);
}

double rel_tol(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return 1e-12;
    case at::kFloat: return 1e-5;
    case at::kHalf: return 4e-3;
    default: return 3e-2;  // bfloat16
  }
}

// max |actual - expected| <= rel * max(max |expected|, 1), compared in float64; NaN nowhere.
bool close(const at::Tensor& actual, const at::Tensor& expected, double rel) {
  const at::Tensor a = actual.to(at::kDouble);
  const at::Tensor e = expected.to(at::kDouble);
  if (a.sizes() != e.sizes() || !a.isfinite().all().item<bool>()) {
    return false;
  }
  if (a.numel() == 0) {
    return true;
  }
  const double scale = std::max(e.abs().max().item<double>(), 1.0);
  return (a - e).abs().max().item<double>() <= rel * scale;
}

bool bit_identical(const std::vector<at::Tensor>& before, const std::vector<at::Tensor>& after) {
  for (size_t i = 0; i < before.size(); ++i) {
    // Compared as raw bytes, so that NaN payloads and signed zeros count too.
    if (!at::equal(before[i].contiguous().view(at::kByte), after[i].contiguous().view(at::kByte))) {
      return false;
    }
  }
  return true;
}

std::vector<at::Tensor> clones(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : ts) {
    out.push_back(t.clone());
  }
  return out;
}

// One call's buffers: param, three state buffers (exp_avg_sq and max_exp_avg_sq positive), K grads (scaled by
// grad_scale when given), coefficients [1, ...], lr, step.
struct Buffers {
  at::Tensor param;
  std::vector<at::Tensor> states;
  std::vector<at::Tensor> grads;
  at::Tensor coefficients;
  at::Tensor lr;
  at::Tensor step;
  OptTensor grad_scale;
  OptTensor found_inf;

  std::vector<at::Tensor> all() const {
    std::vector<at::Tensor> out{param, states[0], states[1], states[2], coefficients, lr, step};
    out.insert(out.end(), grads.begin(), grads.end());
    return out;
  }
};

Buffers make_buffers(int64_t n, int k_count, at::ScalarType dtype, std::optional<double> grad_scale,
                     std::optional<double> found_inf, double step) {
  Buffers b;
  b.param = at::randn({n}, at::kDouble).to(dtype);
  b.states = {at::randn({n}, at::kDouble).mul(0.1).to(dtype), at::rand({n}, at::kDouble).to(dtype),
              at::rand({n}, at::kDouble).mul(1.5).to(dtype)};
  for (int k = 0; k < k_count; ++k) {
    b.grads.push_back(at::randn({n}, at::kDouble).mul(grad_scale.value_or(1.0)).to(dtype));
  }
  b.coefficients = at::rand({k_count}, at::kDouble).add(0.1);
  b.coefficients[0] = 1.0;
  b.coefficients = b.coefficients.to(at::kFloat);
  b.lr = at::tensor(0.05, at::TensorOptions().dtype(at::toOpMathType(dtype)));
  b.step = at::tensor(static_cast<float>(step));
  if (grad_scale) {
    b.grad_scale = at::tensor(static_cast<float>(*grad_scale));
  }
  if (found_inf) {
    b.found_inf = at::tensor({static_cast<float>(*found_inf)});
  }
  return b;
}

// The blended (and unscaled) gradient and the statistics in float64, as mimo_ext/optim/reference.py.
struct Blended {
  at::Tensor g;
  at::Tensor stats;
};

Blended blend_reference(const Buffers& b) {
  const double inv = b.grad_scale ? 1.0 / b.grad_scale->item<double>() : 1.0;
  const at::Tensor c = b.coefficients.to(at::kDouble) * inv;
  std::vector<at::Tensor> raw;
  at::Tensor g = at::zeros({b.param.numel()}, at::kDouble);
  for (size_t k = 0; k < b.grads.size(); ++k) {
    raw.push_back(b.grads[k].to(at::kDouble));
    g = g + c[k] * raw.back();
  }
  std::vector<at::Tensor> stats;
  for (const at::Tensor& r : raw) {
    stats.push_back(r.dot(r) * inv * inv);
  }
  for (size_t k = 1; k < raw.size(); ++k) {
    stats.push_back(raw[0].dot(raw[k]) * inv * inv);
  }
  stats.push_back(g.dot(g));
  return {g, at::stack(stats)};
}

struct SgdCase {
  double weight_decay, momentum, dampening;
  bool nesterov, maximize;
  double step;
};

struct AdamWCase {
  double beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize;
  double step;
};

const std::vector<int64_t> kLengths = {0, 1, 1023, 1024, 1025, 16 * 1024 - 1, 16 * 1024 + 1, 3 * 16 * 1024 + 7};

// Two threads for the buffers longer than one chunk, so that they are split between OpenMP threads (and ASan
// watches both); one otherwise, which keeps the test quick on a loaded machine.
void threads_for(int64_t n) {
  at::set_num_threads(n > 16 * 1024 ? 2 : 1);
}

struct Scaling {
  std::optional<double> grad_scale;
  std::optional<double> found_inf;
};
const std::vector<Scaling> kScalings = {{std::nullopt, std::nullopt}, {1024.0, 0.0}, {std::nullopt, 1.0}};

// Statistics: the error of summing n products in float, relative to the size of the sums (every term here is
// O(1) and the sums grow with n).
bool stats_close(const at::Tensor& stats, const at::Tensor& expected, at::ScalarType dtype, int64_t n) {
  const double eps = dtype == at::kDouble ? 1e-15 : 1e-6;
  const double allowed = eps * 8 * static_cast<double>(n + 16) * 2;
  return (stats.to(at::kDouble) - expected).abs().max().item<double>() <=
         allowed * std::max(expected.abs().max().item<double>() / static_cast<double>(n + 1), 1.0);
}

void test_sgd() {
  const std::vector<SgdCase> cases = {
      {0.01, 0.9, 0.1, false, true, 3.0},  // momentum, dampening, weight decay, maximize
      {0.0, 0.9, 0.0, true, false, 0.0},   // nesterov, first step
      {0.05, 0.0, 0.0, false, false, 5.0},  // no momentum: the momentum buffer is neither read nor written
  };
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    for (const int64_t n : kLengths) {
      threads_for(n);
      for (const int k_count : {1, 3, 16}) {
        for (const Scaling& s : kScalings) {
          for (const SgdCase& c : cases) {
            for (const bool stats_on : {true, false}) {
              Buffers b = make_buffers(n, k_count, dtype, s.grad_scale, s.found_inf, c.step);
              const std::vector<at::Tensor> before = clones(b.all());
              const at::Tensor stats =
                  sgd_step_(b.param, b.states[0], b.grads, b.coefficients, b.lr, b.step, b.grad_scale, b.found_inf,
                            c.weight_decay, c.momentum, c.dampening, c.nesterov, c.maximize, stats_on);
              const std::string what = std::string("sgd ") + c10::toString(dtype) + " n=" + std::to_string(n) +
                                       " K=" + std::to_string(k_count) + " momentum=" + std::to_string(c.momentum);
              const std::vector<at::Tensor> after = b.all();
              // exp_avg_sq, max_exp_avg_sq (not SGD's), coefficients and lr are only read.
              EXPECT(bit_identical({before.begin() + 2, before.begin() + 6}, {after.begin() + 2, after.begin() + 6}),
                     "%s: a read-only buffer was written", what.c_str());
              EXPECT(bit_identical({before.begin() + 7, before.end()}, {after.begin() + 7, after.end()}),
                     "%s: a gradient buffer was written", what.c_str());
              if (s.found_inf.value_or(0.0) != 0.0) {
                EXPECT(bit_identical(before, after), "%s: found_inf set but something was written", what.c_str());
                continue;
              }
              EXPECT(b.step.item<double>() == c.step + 1, "%s: step %g", what.c_str(), b.step.item<double>());
              const Blended r = blend_reference(b);
              at::Tensor g = c.maximize ? -r.g : r.g;
              const at::Tensor p = before[0].to(at::kDouble);
              if (c.weight_decay != 0) {
                g = g + c.weight_decay * p;
              }
              if (c.momentum != 0) {
                const at::Tensor buf =
                    c.step == 0 ? g : c.momentum * before[1].to(at::kDouble) + (1 - c.dampening) * g;
                EXPECT(close(b.states[0], buf, rel_tol(dtype)), "%s: momentum_buffer", what.c_str());
                g = c.nesterov ? g + c.momentum * buf : buf;
              } else {
                EXPECT(at::equal(b.states[0], before[1]), "%s: unused momentum_buffer written", what.c_str());
              }
              EXPECT(close(b.param, p - 0.05 * g, rel_tol(dtype)), "%s: param", what.c_str());
              if (stats_on) {
                EXPECT(stats.numel() == 2 * k_count && stats_close(stats, r.stats, dtype, n), "%s: stats",
                       what.c_str());
              } else {
                EXPECT(stats.numel() == 0, "%s: stats not empty", what.c_str());
              }
            }
          }
        }
      }
    }
  }
}

void test_adamw() {
  const std::vector<AdamWCase> cases = {
      {0.875, 0.9990234375, 1e-8, 0.01, false, false, 0.0},
      {0.5, 0.75, 1e-3, 0.0, true, true, 4.0},
  };
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    for (const int64_t n : kLengths) {
      threads_for(n);
      for (const int k_count : {1, 3, 16}) {
        for (const Scaling& s : kScalings) {
          for (const AdamWCase& c : cases) {
            Buffers b = make_buffers(n, k_count, dtype, s.grad_scale, s.found_inf, c.step);
            const std::vector<at::Tensor> before = clones(b.all());
            const at::Tensor stats =
                adamw_step_(b.param, b.states[0], b.states[1], b.states[2], b.grads, b.coefficients, b.lr, b.step,
                            b.grad_scale, b.found_inf, c.beta1, c.beta2, c.eps, c.weight_decay, c.amsgrad, c.maximize,
                            true);
            const std::string what = std::string("adamw ") + c10::toString(dtype) + " n=" + std::to_string(n) +
                                     " K=" + std::to_string(k_count) + " amsgrad=" + std::to_string(c.amsgrad);
            const std::vector<at::Tensor> after = b.all();
            // Coefficients, lr and the grads are only read.
            EXPECT(bit_identical({before.begin() + 4, before.begin() + 6}, {after.begin() + 4, after.begin() + 6}) &&
                       bit_identical({before.begin() + 7, before.end()}, {after.begin() + 7, after.end()}),
                   "%s: a read-only buffer was written", what.c_str());
            if (s.found_inf.value_or(0.0) != 0.0) {
              EXPECT(bit_identical(before, after), "%s: found_inf set but something was written", what.c_str());
              continue;
            }
            const Blended r = blend_reference(b);
            const at::Tensor g = c.maximize ? -r.g : r.g;
            const double t = c.step + 1;
            const at::Tensor p = before[0].to(at::kDouble) * (1 - 0.05 * c.weight_decay);
            const at::Tensor m = c.beta1 * before[1].to(at::kDouble) + (1 - c.beta1) * g;
            const at::Tensor v = c.beta2 * before[2].to(at::kDouble) + (1 - c.beta2) * g * g;
            at::Tensor second = v;
            if (c.amsgrad) {
              second = at::maximum(before[3].to(at::kDouble), v);
              EXPECT(close(b.states[2], second, rel_tol(dtype)), "%s: max_exp_avg_sq", what.c_str());
            } else {
              EXPECT(at::equal(b.states[2], before[3]), "%s: unused max_exp_avg_sq written", what.c_str());
            }
            const at::Tensor expected =
                p - 0.05 / (1 - std::pow(c.beta1, t)) * m / (second.sqrt() / std::sqrt(1 - std::pow(c.beta2, t)) + c.eps);
            EXPECT(close(b.param, expected, rel_tol(dtype)), "%s: param", what.c_str());
            EXPECT(close(b.states[0], m, rel_tol(dtype)), "%s: exp_avg", what.c_str());
            EXPECT(close(b.states[1], v, rel_tol(dtype)), "%s: exp_avg_sq", what.c_str());
            EXPECT(b.step.item<double>() == c.step + 1, "%s: step", what.c_str());
            EXPECT(stats.numel() == 2 * k_count && stats_close(stats, r.stats, dtype, n), "%s: stats", what.c_str());
          }
        }
      }
    }
  }
}

// Rejected calls: the error names the argument, and nothing is written (validation comes before any write).
void test_rejected_steps_write_nothing() {
  Buffers b = make_buffers(64, 2, at::kFloat, std::nullopt, std::nullopt, 1.0);
  const std::vector<at::Tensor> before = clones(b.all());
  auto expect_rejected = [&](auto&& call, const char* needle, const char* what) {
    std::string message;
    try {
      call();
    } catch (const c10::Error& e) {
      message = e.what_without_backtrace();
    }
    EXPECT(message.find(needle) != std::string::npos, "%s: message '%s' lacks '%s'", what, message.c_str(), needle);
    EXPECT(bit_identical(before, b.all()), "%s: a rejected call wrote a buffer", what);
  };
  std::vector<at::Tensor> seventeen(17, b.grads[0]);
  expect_rejected([&] {
    sgd_step_(b.param, b.states[0], seventeen, at::ones({17}), b.lr, b.step, {}, {}, 0, 0.9, 0, false, false, true);
  }, "at most 16", "17 grads");
  expect_rejected([&] {
    at::Tensor view = b.param.narrow(0, 0, 32);
    at::Tensor shifted = b.param.narrow(0, 16, 32);
    sgd_step_(view, shifted, {b.grads[0].narrow(0, 0, 32)}, at::ones({1}), b.lr, b.step, {}, {}, 0, 0.9, 0, false,
              false, true);
  }, "momentum_buffer overlaps param", "momentum_buffer a shifted view of param");
  expect_rejected([&] {
    sgd_step_(b.param, b.states[0], {b.param}, at::ones({1}), b.lr, b.step, {}, {}, 0, 0.9, 0, false, false, true);
  }, "grads[0] overlaps param", "grad aliasing param");
  expect_rejected([&] {
    adamw_step_(b.param, b.states[0], b.states[0], b.states[2], b.grads, b.coefficients, b.lr, b.step, {}, {}, 0.9,
                0.999, 1e-8, 0, false, false, true);
  }, "exp_avg_sq overlaps exp_avg", "exp_avg_sq aliasing exp_avg");
  expect_rejected([&] {
    adamw_step_(b.param, b.states[0], b.states[1], b.states[2], b.grads, b.coefficients, b.lr, b.step, {}, {},
                std::numeric_limits<double>::quiet_NaN(), 0.999, 1e-8, 0, false, false, true);
  }, "beta1 must be in [0, 1)", "beta1 NaN");
  expect_rejected([&] {
    at::Tensor step64 = b.step.to(at::kDouble);
    adamw_step_(b.param, b.states[0], b.states[1], b.states[2], b.grads, b.coefficients, b.lr, step64, {}, {}, 0.9,
                0.999, 1e-8, 0, false, false, true);
  }, "step must be a float32 tensor", "float64 step");
  expect_rejected([&] {
    adamw_step_(b.param, b.states[0], b.states[1], b.states[2], b.grads, at::ones({3}), b.lr, b.step, {}, {}, 0.9,
                0.999, 1e-8, 0, false, false, true);
  }, "got 2 tensors for 3 coefficients", "3 coefficients for 2 grads");
  expect_rejected([&] {
    adamw_step_(b.param, b.states[0], b.states[1], b.states[2], {b.grads[0], b.grads[1].narrow(0, 0, 63)},
                b.coefficients, b.lr, b.step, {}, {}, 0.9, 0.999, 1e-8, 0, false, false, true);
  }, "grads[1] has 63 elements but another objective's gradient", "short grad");
}

// smooth_max through its C++ autograd kernel: the gradient is weights * grad, a second derivative raises.
void test_smooth_max_autograd() {
  static const auto smooth_max =
      op("mimo_ext::smooth_max").typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double)>();
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    const at::Tensor losses = at::randn({5, 3}, at::kDouble).to(dtype).requires_grad_();
    auto [value, weights] = smooth_max.call(losses, 0.5);
    EXPECT(value.requires_grad() && !weights.requires_grad(), "smooth_max %s: requires_grad of the outputs",
           c10::toString(dtype));
    const at::Tensor grad_out = at::randn({5}, at::kDouble).to(dtype);
    const at::Tensor grad =
        torch::autograd::grad({value}, {losses}, {grad_out}, /*retain_graph=*/true, /*create_graph=*/true)[0];
    EXPECT(close(grad.detach(), grad_out.unsqueeze(-1) * weights, rel_tol(dtype)), "smooth_max %s: gradient",
           c10::toString(dtype));
    std::string message;
    try {
      grad.sum().backward();
    } catch (const c10::Error& e) {
      message = e.what_without_backtrace();
    }
    EXPECT(message.find("first-order gradients only") != std::string::npos, "smooth_max %s: double backward: '%s'",
           c10::toString(dtype), message.c_str());
  }
}

}  // namespace

int main() {
  at::manual_seed(7);
  try {
    test_sgd();
    test_adamw();
    test_rejected_steps_write_nothing();
    test_smooth_max_autograd();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_step_ops: unexpected exception: %s\n", e.what());
    return 1;
  }
  return mimo_ext_test::finish("test_step_ops");
}
