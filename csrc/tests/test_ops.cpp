// Calls the registered mimo_ext ops through the dispatcher on CPU tensors and compares them with ATen reference
// math in float64: argument handling (shapes, strides, dtypes, the temperature clamp, in-place aliasing) and the
// CPU kernels' threading, which test_math does not reach. Exits non-zero on any failure.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include "expect.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

// Expects the call to throw a c10::Error whose message contains `needle`.
#define EXPECT_THROWS(call, needle, ...)                                        \
  do {                                                                         \
    std::string message_;                                                      \
    try {                                                                      \
      call;                                                                    \
    } catch (const c10::Error& e_) {                                           \
      message_ = e_.what_without_backtrace();                                  \
    }                                                                          \
    EXPECT(message_.find(needle) != std::string::npos, __VA_ARGS__);            \
    if (message_.find(needle) == std::string::npos) {                          \
      std::fprintf(stderr, "  message was: '%s'\n", message_.c_str());         \
    }                                                                          \
  } while (0)

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

std::tuple<at::Tensor, at::Tensor> smooth_max(const at::Tensor& losses, double mu) {
  static const auto h =
      op("mimo_ext::smooth_max").typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double)>();
  return h.call(losses, mu);
}

at::Tensor smooth_max_backward(const at::Tensor& grad_value, const at::Tensor& weights) {
  static const auto h = op("mimo_ext::smooth_max_backward").typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return h.call(grad_value, weights);
}

at::Tensor blend(const at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma) {
  static const auto h =
      op("mimo_ext::blend").typed<at::Tensor(const at::Tensor&, at::TensorList, const at::Tensor&, double)>();
  return h.call(base, grads, weights, gamma);
}

void blend_(at::Tensor& base, at::TensorList grads, const at::Tensor& weights, double gamma) {
  static const auto h = op("mimo_ext::blend_").typed<void(at::Tensor&, at::TensorList, const at::Tensor&, double)>();
  h.call(base, grads, weights, gamma);
}

double rel_tol(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return 1e-12;
    case at::kFloat: return 1e-6;
    case at::kHalf: return 2e-3;
    default: return 1e-2;  // bfloat16
  }
}

// |actual - expected| <= rel * max(|expected|, scale) elementwise, NaN where expected is NaN; compared in float64.
bool close(const at::Tensor& actual, const at::Tensor& expected, double rel, double scale) {
  const at::Tensor a = actual.to(at::kDouble);
  const at::Tensor e = expected.to(at::kDouble);
  if (a.sizes() != e.sizes()) {
    return false;
  }
  const at::Tensor both_nan = a.isnan().logical_and(e.isnan());
  const at::Tensor ok = (a - e).abs().le(e.abs().clamp_min(scale) * rel).logical_or(both_nan);
  return ok.all().item<bool>();
}

template <typename T>
std::string str(const T& t) {
  std::ostringstream s;
  s << t;
  return s.str();
}

void test_smooth_max() {
  const std::vector<at::ScalarType> dtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  at::manual_seed(0);
  for (const at::ScalarType dtype : dtypes) {
    const double rel = rel_tol(dtype);
    // [2, 5, 4] with a non-contiguous view, a long row (warp path on CUDA), and a single loss; then, for the CPU
    // kernel's 2048-loss blocks, so that the sanitizer build walks its scratch to the edges: rows over several
    // blocks (M = 3: 682 rows, 2046 losses a block), M = 1 (2048 rows a block: the per-row scratch full), a row of
    // exactly a block, and rows longer than a block (a scratch of their own).
    std::vector<at::Tensor> inputs = {
        at::randn({2, 5, 4}, at::kDouble).to(dtype),
        at::randn({4, 5}, at::kDouble).to(dtype).t(),
        at::randn({3, 100}, at::kDouble).mul(10).to(dtype),
        at::randn({1}, at::kDouble).to(dtype),
        at::randn({64, 3}, at::kDouble).to(dtype),
        at::randn({5001, 3}, at::kDouble).to(dtype),
        at::randn({5000, 1}, at::kDouble).to(dtype),
        at::randn({3, 2048}, at::kDouble).to(dtype),
        at::randn({2, 2049}, at::kDouble).to(dtype),
    };
    for (const at::Tensor& losses : inputs) {
      for (const double mu : {1.0, 0.1, 1e-3}) {
        auto [value, weights] = smooth_max(losses, mu);
        const at::Tensor l = losses.to(at::kDouble);
        const at::Tensor ref_value = at::logsumexp(l / mu, -1) * mu;
        const at::Tensor ref_weights = at::softmax(l / mu, -1);
        EXPECT(value.scalar_type() == dtype && weights.scalar_type() == dtype, "smooth_max %s: output dtype",
              c10::toString(dtype));
        EXPECT(close(value, ref_value, rel, l.abs().max().item<double>() + mu * std::log(l.size(-1))),
              "smooth_max %s %s mu=%g: value\n%s\nexpected\n%s", c10::toString(dtype), str(losses.sizes()).c_str(),
              mu, str(value).c_str(), str(ref_value).c_str());
        EXPECT(close(weights, ref_weights, rel, 1), "smooth_max %s %s mu=%g: weights", c10::toString(dtype),
              str(losses.sizes()).c_str(), mu);

        const at::Tensor grad = at::randn(value.sizes(), at::kDouble).to(dtype);
        EXPECT(close(smooth_max_backward(grad, weights), grad.unsqueeze(-1) * weights, rel, 0),
              "smooth_max_backward %s", c10::toString(dtype));
      }
    }
    // A temperature below the smallest float becomes 0 in float math: the hard max, ties sharing the weight.
    const at::Tensor ties = at::tensor({2.0, 5.0, 5.0, 1.0}, at::kDouble).to(dtype);
    auto [value, weights] = smooth_max(ties, 1e-320);
    EXPECT(value.item<double>() == 5.0, "smooth_max %s mu=1e-320: value %g", c10::toString(dtype),
          value.item<double>());
    EXPECT(close(weights, at::tensor({0.0, 0.5, 0.5, 0.0}, at::kDouble), 0, 0), "smooth_max %s mu=1e-320: weights %s",
          c10::toString(dtype), str(weights).c_str());
    // A non-finite loss poisons its own row only.
    at::Tensor rows = at::zeros({2, 3}, dtype);
    rows[0][1] = std::numeric_limits<double>::infinity();
    std::tie(value, weights) = smooth_max(rows, 1.0);
    EXPECT(value[0].isnan().item<bool>() && weights[0].isnan().all().item<bool>(), "smooth_max %s: Inf row not NaN",
          c10::toString(dtype));
    EXPECT(!value[1].isnan().item<bool>() && !weights[1].isnan().any().item<bool>(),
          "smooth_max %s: a finite row became NaN", c10::toString(dtype));
  }
  // A huge finite temperature is clamped to float's largest value, not turned into Inf: uniform weights.
  {
    auto [value, weights] = smooth_max(at::tensor({1.0f, 2.0f}), 1e300);
    EXPECT(close(weights, at::tensor({0.5, 0.5}, at::kDouble), 1e-6, 1), "smooth_max mu=1e300: weights %s",
          str(weights).c_str());
  }
  // Empty batch: shapes only.
  {
    auto [value, weights] = smooth_max(at::zeros({0, 3}), 1.0);
    EXPECT(value.sizes() == at::IntArrayRef({0}) && weights.sizes() == at::IntArrayRef({0, 3}),
          "smooth_max empty batch: shapes");
  }
  EXPECT_THROWS(smooth_max(at::zeros({3}), 0.0), "mu must be finite and > 0", "smooth_max mu=0 accepted");
  EXPECT_THROWS(smooth_max(at::zeros({3}), -1.0), "mu must be finite and > 0", "smooth_max mu<0 accepted");
  EXPECT_THROWS(smooth_max(at::zeros({3}, at::kLong), 1.0), "must be float32", "smooth_max int64 accepted");
  EXPECT_THROWS(smooth_max(at::zeros({}), 1.0), "at least 1 dimension", "smooth_max 0-dim accepted");
  EXPECT_THROWS(smooth_max(at::zeros({2, 0}), 1.0), "M >= 1", "smooth_max M=0 accepted");
}

void test_blend() {
  at::manual_seed(1);
  for (const at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    const double rel = rel_tol(dtype);
    // Lengths around the CPU kernel's block (1024) and parallel grain (16 * 1024), not multiples of either.
    for (const int64_t n : {int64_t{1}, int64_t{1000}, int64_t{1025}, int64_t{100003}}) {
      const int k_count = 3;
      const at::Tensor base = at::randn({n}, at::kDouble).to(dtype);
      std::vector<at::Tensor> grads;
      for (int k = 0; k < k_count; ++k) {
        grads.push_back(at::randn({n}, at::kDouble).to(dtype));
      }
      for (const at::ScalarType wtype : {at::kFloat, at::kDouble, at::kHalf}) {
        const at::Tensor weights = at::softmax(at::randn({k_count}, at::kDouble), 0).to(wtype);
        const double gamma = -0.7;
        at::Tensor expected = base.to(at::kDouble);
        at::Tensor scale = base.to(at::kDouble).abs();
        for (int k = 0; k < k_count; ++k) {
          const at::Tensor term =
              grads[k].to(at::kDouble) * weights[k].to(at::toOpMathType(dtype)).to(at::kDouble) * gamma;
          expected = expected + term;
          scale = scale + term.abs();
        }
        const at::Tensor out = blend(base, grads, weights, gamma);
        const double s = scale.max().item<double>();
        EXPECT(out.scalar_type() == dtype, "blend %s: output dtype", c10::toString(dtype));
        EXPECT(close(out, expected, rel, s), "blend %s n=%lld weights %s", c10::toString(dtype),
              static_cast<long long>(n), c10::toString(wtype));

        at::Tensor in_place = base.clone();
        blend_(in_place, grads, weights, gamma);
        EXPECT(at::equal(in_place, out), "blend_ %s n=%lld differs from blend", c10::toString(dtype),
              static_cast<long long>(n));

        // In place with base itself among the grads: every element is read before it is written.
        at::Tensor aliased = base.clone();
        blend_(aliased, {grads[0], aliased, grads[2]}, weights, gamma);
        const at::Tensor expected_aliased = blend(base, {grads[0], base, grads[2]}, weights, gamma);
        EXPECT(at::equal(aliased, expected_aliased), "blend_ %s n=%lld with base among grads", c10::toString(dtype),
              static_cast<long long>(n));
      }
    }
  }
  const at::Tensor b = at::zeros({8});
  const at::Tensor w = at::ones({1});
  EXPECT_THROWS(blend(b, {}, at::zeros({0}), 1.0), "at least one buffer", "blend with no grads accepted");
  EXPECT_THROWS(blend(b, {at::zeros({8}, at::kDouble)}, w, 1.0), "must have the dtype of base",
               "blend with a float64 grad for a float32 base accepted");
  EXPECT_THROWS(blend(b, {at::zeros({7})}, w, 1.0), "must have the length of base", "blend with a short grad accepted");
  EXPECT_THROWS(blend(b, {at::zeros({16}).slice(0, 0, 16, 2)}, w, 1.0), "must be contiguous",
               "blend with a strided grad accepted");
  EXPECT_THROWS(blend(b, {at::zeros({8})}, at::ones({2}), 1.0), "one entry per grads buffer",
               "blend with two weights for one grad accepted");
  EXPECT_THROWS(blend(b, {at::zeros({8})}, w, std::numeric_limits<double>::infinity()), "gamma must be finite",
               "blend with gamma=inf accepted");
  at::Tensor storage = at::zeros({9});
  at::Tensor shifted_base = storage.slice(0, 0, 8);
  EXPECT_THROWS(blend_(shifted_base, {storage.slice(0, 1, 9)}, w, 1.0), "partially overlaps",
               "blend_ with a shifted view of base accepted");
}

// Every op has its kernels for the device keys this build was configured with (MIMO_EXT_TEST_EXPECT_CUDA comes
// from CMake), so that a .cu file left out of the build is caught without a GPU.
void test_registrations() {
  for (const char* name : {"mimo_ext::smooth_max", "mimo_ext::blend", "mimo_ext::blend_", "mimo_ext::sgd_step_",
                           "mimo_ext::adamw_step_"}) {
    const c10::OperatorHandle h = op(name);
    EXPECT(h.hasKernelForDispatchKey(c10::DispatchKey::CPU), "%s has no CPU kernel", name);
    EXPECT(h.hasKernelForDispatchKey(c10::DispatchKey::CUDA) == bool(MIMO_EXT_TEST_EXPECT_CUDA),
           "%s: CUDA kernel registered = %d, expected %d", name,
           int(h.hasKernelForDispatchKey(c10::DispatchKey::CUDA)), int(MIMO_EXT_TEST_EXPECT_CUDA));
  }
  EXPECT(op("mimo_ext::smooth_max_backward").hasKernelForDispatchKey(c10::DispatchKey::CompositeImplicitAutograd),
         "smooth_max_backward has no CompositeImplicitAutograd kernel");
}

}  // namespace

int main() {
  try {
    test_registrations();
    test_smooth_max();
    test_blend();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_ops: unexpected exception: %s\n", e.what());
    return 1;
  }
  return mimo_ext_test::finish("test_ops");
}
