// Checks the host/device math shared by the CPU and CUDA kernels (smooth_max_math.h, blend_math.h) on the CPU,
// against straightforward two-pass long-double references. No GPU and no test framework: a failed check prints
// where and why, and the program exits non-zero.
//
// Tolerances are relative to the natural scale of each quantity: for the smoothed max, max|l| + mu * log(M) (the
// size of the terms it is computed from); for weights, 1 (they are probabilities summing to 1); for a blend, the
// sum of the magnitudes of its terms. The relative size is 1e-6 for float, 1e-12 for double, and the output
// type's own rounding for half types. References are computed from the inputs and temperature as the kernel sees
// them (rounded to scalar_t and acc_t), so that only the kernel's arithmetic is measured.
#include "../smooth_max_math.h"  // first: the header must compile on its own
#include "../blend_math.h"
#include "expect.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace {

using ld = long double;
using mimo_ext::math::LseState;

// |actual - expected| <= rel * max(|expected|, scale); NaN matches only NaN.
bool close(ld actual, ld expected, ld rel, ld scale) {
  if (std::isnan(expected) || std::isnan(actual)) {
    return std::isnan(expected) && std::isnan(actual);
  }
  return std::fabs(actual - expected) <= rel * std::fmax(std::fabs(expected), scale);
}

template <typename T>
const char* type_name();
template <> const char* type_name<float>() { return "float"; }
template <> const char* type_name<double>() { return "double"; }
template <> const char* type_name<c10::Half>() { return "half"; }
template <> const char* type_name<c10::BFloat16>() { return "bfloat16"; }

template <typename T>
ld tolerance();
template <> ld tolerance<float>() { return 1e-6L; }
template <> ld tolerance<double>() { return 1e-12L; }
template <> ld tolerance<c10::Half>() { return 2e-3L; }      // 2^-11 rounding, with margin
template <> ld tolerance<c10::BFloat16>() { return 1e-2L; }  // 2^-8 rounding, with margin

std::string row_string(const std::vector<ld>& row) {
  std::string s = "[";
  for (size_t i = 0; i < row.size(); ++i) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%s%.6Lg", i ? ", " : "", row[i]);
    s += buf;
  }
  return s + "]";
}

// ---- smoothed max ------------------------------------------------------------------------------------------------

struct SmoothMaxRef {
  ld value;
  std::vector<ld> weights;
  ld scale;  // max|l| + mu * log(M)
};

// Two passes: max first, then the sum. exp(0 / mu) is 1 even for mu == 0, as in the kernels (hard max).
SmoothMaxRef smooth_max_reference(const std::vector<ld>& l, ld mu) {
  const size_t m = l.size();
  SmoothMaxRef r{std::numeric_limits<ld>::quiet_NaN(), std::vector<ld>(m, std::numeric_limits<ld>::quiet_NaN()),
                 0};
  ld mx = -std::numeric_limits<ld>::infinity();
  for (ld x : l) {
    if (!std::isfinite(x)) {
      return r;
    }
    mx = std::fmax(mx, x);
    r.scale = std::fmax(r.scale, std::fabs(x));
  }
  r.scale += mu * std::log(static_cast<ld>(m));
  ld sum = 0;
  std::vector<ld> e(m);
  for (size_t i = 0; i < m; ++i) {
    e[i] = l[i] == mx ? 1.0L : std::exp((l[i] - mx) / mu);
    sum += e[i];
  }
  r.value = mx + mu * std::log(sum);
  for (size_t i = 0; i < m; ++i) {
    r.weights[i] = e[i] / sum;
  }
  return r;
}

template <typename scalar_t, typename acc_t>
void check_smooth_max_row(const std::vector<ld>& row, ld mu_in, const char* what) {
  const int64_t m = static_cast<int64_t>(row.size());
  std::vector<scalar_t> losses(row.size());
  std::vector<ld> seen(row.size());  // the losses as the kernel sees them
  for (size_t i = 0; i < row.size(); ++i) {
    losses[i] = static_cast<scalar_t>(row[i]);
    seen[i] = static_cast<ld>(static_cast<acc_t>(losses[i]));
  }
  const acc_t mu = static_cast<acc_t>(mu_in);
  const SmoothMaxRef ref = smooth_max_reference(seen, static_cast<ld>(mu));

  scalar_t value;
  std::vector<scalar_t> weights(row.size());
  mimo_ext::math::smooth_max_row<scalar_t, acc_t>(losses.data(), m, mu, &value, weights.data());

  const ld rel = tolerance<scalar_t>();
  const std::string ctx = std::string(type_name<scalar_t>()) + " " + what + " row " + row_string(seen);
  const ld v = static_cast<ld>(static_cast<acc_t>(value));
  EXPECT(close(v, ref.value, rel, ref.scale), "%s mu=%Lg: value %.17Lg, expected %.17Lg", ctx.c_str(),
        static_cast<ld>(mu), v, ref.value);
  ld sum = 0;
  for (int64_t i = 0; i < m; ++i) {
    const ld w = static_cast<ld>(static_cast<acc_t>(weights[i]));
    sum += w;
    EXPECT(close(w, ref.weights[i], rel, 1), "%s mu=%Lg: weight[%lld] %.17Lg, expected %.17Lg", ctx.c_str(),
          static_cast<ld>(mu), static_cast<long long>(i), w, ref.weights[i]);
  }
  if (!std::isnan(ref.value)) {
    EXPECT(close(sum, 1, rel * m, 1), "%s mu=%Lg: weights sum to %.17Lg", ctx.c_str(), static_cast<ld>(mu), sum);
  }
}

template <typename scalar_t, typename acc_t>
void test_smooth_max_rows() {
  const ld nan = std::numeric_limits<ld>::quiet_NaN();
  const ld inf = std::numeric_limits<ld>::infinity();
  struct Case {
    const char* what;
    std::vector<ld> row;
    std::vector<ld> mus;
  };
  std::vector<Case> cases = {
      {"M=1", {3.5L}, {0.7L, 1e-3L, 100.0L}},
      {"M=1 negative", {-2.25L}, {1.0L}},
      {"M=2", {0.25L, -1.5L}, {0.5L, 1.0L, 4.0L}},
      {"M=7", {0.3L, -1.2L, 2.7L, 2.69L, -0.05L, 1.1L, 0.0L}, {0.37L, 0.05L, 1.0L, 30.0L}},
      {"M=7 ascending", {-3, -2, -1, 0, 1, 2, 3}, {0.5L, 2.0L}},  // every push raises the max: the rescale path
      {"ties", {1.5L, 1.5L, 1.5L, 0.5L}, {0.2L, 1.0L}},
      {"all equal", {2, 2, 2, 2, 2}, {1e-3L, 1.0L}},
      {"1e4 apart", {0.0L, 1e4L, -1e4L, 5e3L}, {1.0L, 1e-3L}},
      {"1e4 apart, max first", {1e4L, 0.0L, -1e4L}, {1.0L, 1e-3L}},
      {"steep", {1.0L, 1.5L, 0.75L, 1.4L, 1.499L}, {1e-3L, 1e-2L}},
      {"tiny mu, ties", {2, 5, 5, 1}, {1e-30L}},
      {"mu 0, ties", {2, 5, 5, 1}, {0.0L}},
      {"mu 0, one max", {2, -5, 7, 1}, {0.0L}},
      {"NaN", {1, nan, 2}, {1.0L}},
      {"NaN first", {nan, 1, 2}, {1.0L}},
      {"+Inf", {1, 2, inf}, {1.0L}},
      {"-Inf", {-inf, 1, 2}, {1.0L}},
      {"-Inf alone", {-inf}, {1.0L}},
      {"NaN and mu 0", {1, nan}, {0.0L}},
  };
  if (static_cast<double>(std::numeric_limits<scalar_t>::max()) > 1e30) {
    // Far outside half's range: differences near the float limit must not overflow to Inf - Inf.
    cases.push_back({"huge", {3e37L, -3e37L, 1e37L}, {1.0L, 1e-30L}});
  }
  if (sizeof(acc_t) == sizeof(double)) {
    cases.push_back({"tiny double mu, ties", {2, 5, 5, 1}, {1e-300L}});
  }
  for (const Case& c : cases) {
    for (ld mu : c.mus) {
      check_smooth_max_row<scalar_t, acc_t>(c.row, mu, c.what);
    }
  }
}

// The limiting cases by hand as well, so that the reference's own rules are not the only judge.
template <typename scalar_t, typename acc_t>
void test_smooth_max_exact() {
  const std::string t = type_name<scalar_t>();
  for (const acc_t mu : {acc_t(0), acc_t(1e-30)}) {
    const scalar_t l[4] = {scalar_t(2), scalar_t(5), scalar_t(5), scalar_t(1)};
    scalar_t v;
    scalar_t w[4];
    mimo_ext::math::smooth_max_row<scalar_t, acc_t>(l, 4, mu, &v, w);
    EXPECT(static_cast<acc_t>(v) == acc_t(5), "%s hard max: value %g", t.c_str(), double(static_cast<acc_t>(v)));
    const acc_t expected[4] = {0, 0.5, 0.5, 0};
    for (int i = 0; i < 4; ++i) {
      EXPECT(static_cast<acc_t>(w[i]) == expected[i], "%s hard max mu=%g: weight[%d] %g", t.c_str(), double(mu), i,
            double(static_cast<acc_t>(w[i])));
    }
  }
  {
    const scalar_t l[3] = {scalar_t(1), scalar_t(std::numeric_limits<float>::infinity()), scalar_t(2)};
    scalar_t v;
    scalar_t w[3];
    mimo_ext::math::smooth_max_row<scalar_t, acc_t>(l, 3, acc_t(1), &v, w);
    EXPECT(std::isnan(static_cast<acc_t>(v)), "%s +Inf row: value %g", t.c_str(), double(static_cast<acc_t>(v)));
    for (int i = 0; i < 3; ++i) {
      EXPECT(std::isnan(static_cast<acc_t>(w[i])), "%s +Inf row: weight[%d] not NaN", t.c_str(), i);
    }
  }
}

// ---- online state: lse_push / lse_merge --------------------------------------------------------------------------

template <typename acc_t>
LseState<acc_t> fold(const std::vector<acc_t>& l, acc_t mu, size_t begin, size_t end, size_t step = 1) {
  LseState<acc_t> s = mimo_ext::math::lse_empty<acc_t>();
  for (size_t i = begin; i < end; i += step) {
    mimo_ext::math::lse_push(s, l[i], mu);
  }
  return s;
}

template <typename acc_t>
bool same_state(const LseState<acc_t>& a, const LseState<acc_t>& b) {
  return a.max == b.max && a.sum == b.sum && a.finite == b.finite;
}

template <typename acc_t>
bool close_state(const LseState<acc_t>& a, const LseState<acc_t>& b, acc_t mu) {
  const ld rel = tolerance<acc_t>();
  return a.finite == b.finite && a.max == b.max && close(a.sum, b.sum, rel, 1) &&
         close(mimo_ext::math::lse_value(a, mu), mimo_ext::math::lse_value(b, mu), rel,
               std::fabs(static_cast<ld>(a.max)) + 1);
}

template <typename acc_t>
void test_lse_merge() {
  using namespace mimo_ext::math;
  const std::string t = type_name<acc_t>();
  // A deterministic pseudo-random row in [-4, 4], with a repeated maximum.
  std::vector<acc_t> l(37);
  uint32_t x = 12345;
  for (acc_t& v : l) {
    x = x * 1664525u + 1013904223u;
    v = static_cast<acc_t>((x >> 8) / static_cast<double>(1u << 24) * 8.0 - 4.0);
  }
  l[30] = l[5] = acc_t(4.5);
  const LseState<acc_t> empty = lse_empty<acc_t>();

  for (const acc_t mu : {acc_t(0.3), acc_t(1), acc_t(1e-3), acc_t(0)}) {
    const LseState<acc_t> whole = fold(l, mu, 0, l.size());
    std::vector<ld> seen(l.begin(), l.end());
    const SmoothMaxRef ref = smooth_max_reference(seen, mu);
    EXPECT(close(lse_value(whole, mu), ref.value, tolerance<acc_t>(), ref.scale), "%s whole fold mu=%g: %.17g vs %.17Lg",
          t.c_str(), double(mu), double(lse_value(whole, mu)), ref.value);

    // Every split into a prefix and a suffix (either may be empty), merged in both orders.
    for (size_t p = 0; p <= l.size(); ++p) {
      const LseState<acc_t> a = fold(l, mu, 0, p);
      const LseState<acc_t> b = fold(l, mu, p, l.size());
      EXPECT(close_state(lse_merge(a, b, mu), whole, mu), "%s split at %zu mu=%g", t.c_str(), p, double(mu));
      EXPECT(close_state(lse_merge(b, a, mu), whole, mu), "%s split at %zu (b, a) mu=%g", t.c_str(), p, double(mu));
    }
    // Strided slices merged in a butterfly, as the warp-per-row CUDA kernel does with 32 lanes.
    for (size_t lanes : {2, 8, 32}) {
      std::vector<LseState<acc_t>> s(lanes);
      for (size_t lane = 0; lane < lanes; ++lane) {
        s[lane] = fold(l, mu, lane, l.size(), lanes);
      }
      for (size_t offset = lanes / 2; offset > 0; offset /= 2) {
        std::vector<LseState<acc_t>> next(lanes);
        for (size_t lane = 0; lane < lanes; ++lane) {
          next[lane] = lse_merge(s[lane], s[lane ^ offset], mu);
        }
        s = next;
      }
      for (size_t lane = 0; lane < lanes; ++lane) {
        EXPECT(close_state(s[lane], whole, mu), "%s butterfly of %zu lanes, lane %zu, mu=%g", t.c_str(), lanes, lane,
              double(mu));
      }
    }
    // The empty state is the identity, on both sides, exactly.
    for (size_t p : {size_t(1), size_t(7), l.size()}) {
      const LseState<acc_t> a = fold(l, mu, 0, p);
      EXPECT(same_state(lse_merge(a, empty, mu), a), "%s merge(s, empty) != s (p=%zu, mu=%g)", t.c_str(), p,
            double(mu));
      EXPECT(same_state(lse_merge(empty, a, mu), a), "%s merge(empty, s) != s (p=%zu, mu=%g)", t.c_str(), p,
            double(mu));
    }
    const LseState<acc_t> ee = lse_merge(empty, empty, mu);
    EXPECT(ee.sum == acc_t(0) && ee.finite && ee.max == empty.max, "%s merge(empty, empty) is not empty", t.c_str());
  }

  // A non-finite loss on one side makes the merge non-finite, and the value and weights NaN.
  for (const acc_t bad : {std::numeric_limits<acc_t>::quiet_NaN(), std::numeric_limits<acc_t>::infinity(),
                          -std::numeric_limits<acc_t>::infinity()}) {
    LseState<acc_t> a = fold(l, acc_t(1), 0, 10);
    LseState<acc_t> b = fold(l, acc_t(1), 10, 20);
    lse_push(b, bad, acc_t(1));
    for (const LseState<acc_t>& s : {lse_merge(a, b, acc_t(1)), lse_merge(b, a, acc_t(1))}) {
      EXPECT(!s.finite, "%s merge with %g is finite", t.c_str(), double(bad));
      EXPECT(std::isnan(lse_value(s, acc_t(1))), "%s merge with %g: value not NaN", t.c_str(), double(bad));
      EXPECT(std::isnan(lse_weight(s, l[0], acc_t(1))), "%s merge with %g: weight not NaN", t.c_str(), double(bad));
    }
    // A lane that saw only the non-finite loss is still "empty" by its sum; its flag must survive the merge.
    LseState<acc_t> only_bad = lse_empty<acc_t>();
    lse_push(only_bad, bad, acc_t(1));
    EXPECT(!lse_merge(a, only_bad, acc_t(1)).finite && !lse_merge(only_bad, a, acc_t(1)).finite,
          "%s merge with a lane holding only %g is finite", t.c_str(), double(bad));
  }
}

// ---- blend -------------------------------------------------------------------------------------------------------

template <typename scalar_t, typename acc_t>
void test_blend() {
  using namespace mimo_ext::math;
  const std::string t = type_name<scalar_t>();
  constexpr int K = 3;
  constexpr int N = 11;
  const ld weights[K] = {0.5L, -0.25L, 0.125L + 1.0L / 3.0L};
  for (const ld gamma_in : {1.0L, -0.7L, 3.3L, 0.0L}) {
    const acc_t gamma = static_cast<acc_t>(gamma_in);
    acc_t c[K];
    for (int k = 0; k < K; ++k) {
      const acc_t w = static_cast<acc_t>(weights[k]);
      c[k] = blend_coefficient(gamma, w);
      EXPECT(close(c[k], static_cast<ld>(gamma) * static_cast<ld>(w), tolerance<acc_t>(), 0),
            "%s blend_coefficient(%g, %g) = %g", t.c_str(), double(gamma), double(w), double(c[k]));
    }
    for (int i = 0; i < N; ++i) {
      const scalar_t base = static_cast<scalar_t>(0.1L * i - 0.4L);
      scalar_t g[K];
      for (int k = 0; k < K; ++k) {
        g[k] = static_cast<scalar_t>(std::sin(1.0L + i + 3.0L * k) * (k + 1));
      }
      acc_t acc = static_cast<acc_t>(base);
      for (int k = 0; k < K; ++k) {
        acc = blend_accumulate(acc, c[k], g[k]);
      }
      const scalar_t out = static_cast<scalar_t>(acc);

      ld expected = static_cast<acc_t>(base);
      ld scale = std::fabs(expected);
      for (int k = 0; k < K; ++k) {
        const ld term = static_cast<ld>(gamma) * static_cast<ld>(static_cast<acc_t>(weights[k])) *
                        static_cast<ld>(static_cast<acc_t>(g[k]));
        expected += term;
        scale += std::fabs(term);
      }
      const ld got = static_cast<acc_t>(out);
      EXPECT(close(got, expected, tolerance<scalar_t>(), scale), "%s blend gamma=%g element %d: %.17Lg, expected %.17Lg",
            t.c_str(), double(gamma), i, got, expected);
    }
  }
}

}  // namespace

int main() {
  test_smooth_max_rows<float, float>();
  test_smooth_max_rows<double, double>();
  test_smooth_max_rows<c10::Half, float>();
  test_smooth_max_rows<c10::BFloat16, float>();
  test_smooth_max_exact<float, float>();
  test_smooth_max_exact<double, double>();
  test_smooth_max_exact<c10::Half, float>();
  test_smooth_max_exact<c10::BFloat16, float>();
  test_lse_merge<float>();
  test_lse_merge<double>();
  test_blend<float, float>();
  test_blend<double, double>();
  test_blend<c10::Half, float>();
  test_blend<c10::BFloat16, float>();
  return mimo_ext_test::finish("test_math");
}
