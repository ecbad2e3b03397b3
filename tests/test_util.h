// Helpers shared by the test suites: paths, random inputs, comparisons that report the worst
// element, and the GPU skip.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ops/device.h"
#include "ops/error.h"

namespace loom::test {

// ../shared beside the checkout (CI and developers); LOOM_SHARED overrides.
inline std::string shared_dir() {
  const char* env = std::getenv("LOOM_SHARED");
  return env ? env : "../shared";
}
inline std::string fixtures_dir() { return "tests/fixtures"; }

// The loom::Error message of f, or "" when it does not throw.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// EXPECT that f throws loom::Error whose message contains every part.
inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << parts.front() << "'";
  } catch (const Error& e) {
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "message: " << e.what() << "\nmissing: " << p;
  }
}

inline std::vector<float> random_floats(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

struct Diff {
  double max_abs = 0, max_rel = 0;
  size_t worst = 0;  // index of the largest |a-b| / (|b| + floor)
  bool finite = true;
};
// Relative error per element is |a-b| / max(|b|, floor): floor keeps near-zero references
// from dominating.
inline Diff compare(const float* a, const float* b, size_t n, double floor = 1e-3) {
  Diff d;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) {
      if (d.finite) d.worst = i;
      d.finite = false;
      continue;
    }
    double abs = std::fabs(double(a[i]) - double(b[i]));
    double rel = abs / std::max(std::fabs(double(b[i])), floor);
    if (abs > d.max_abs) d.max_abs = abs;
    if (rel > d.max_rel) {
      d.max_rel = rel;
      if (d.finite) d.worst = i;
    }
  }
  return d;
}

// EXPECT that a matches b within rel_tol (relative, with floor); prints the worst index on failure.
inline void expect_close(const std::vector<float>& a, const std::vector<float>& b, double rel_tol,
                         const std::string& what, double floor = 1e-3) {
  ASSERT_EQ(a.size(), b.size()) << what << ": size";
  Diff d = compare(a.data(), b.data(), a.size(), floor);
  EXPECT_TRUE(d.finite) << what << ": non-finite value at index " << d.worst;
  EXPECT_LE(d.max_rel, rel_tol) << what << ": max rel err " << d.max_rel << " (max abs " << d.max_abs
                                << ") at index " << d.worst << ": got " << a[d.worst] << ", want "
                                << b[d.worst];
}

// Runs a shell command; returns its stdout and stderr together and sets *code to its exit status
// (-1 when it did not exit normally).
inline std::string shell(const std::string& cmd, int* code) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  for (size_t n; p && (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int status = p ? pclose(p) : -1;
  *code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// An emptied folder under the temp dir named for one test; the process id keeps two suites run at
// once on one machine (a sanitizer build beside a plain one) out of each other's folders.
inline std::string fresh_temp_dir(const std::string& name) {
  const std::filesystem::path p =
      std::filesystem::temp_directory_path() / ("loom_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  return p.string();
}

// A fresh folder for each test (dir_), removed afterwards.
class TempDirTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::path(testing::TempDir()) / "loom_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

// max(acc, x) that keeps a NaN: std::max(acc, NaN) returns acc, so a "worst error so far" built
// with std::max silently drops a NaN error and the test passes on garbage.
inline double max_keeping_nan(double acc, double x) {
  return std::isnan(acc) || std::isnan(x) ? NAN : std::max(acc, x);
}

// |got - want| / |want|, +inf when either is not finite (or want is 0 while got is not), so that
// every EXPECT_LE(relative_error(...), tol) fails on NaN or Inf.
inline double relative_error(double got, double want) {
  if (!std::isfinite(got) || !std::isfinite(want)) return INFINITY;
  if (got == want) return 0;
  return want == 0 ? INFINITY : std::fabs(got - want) / std::fabs(want);
}

// |got - want|, +inf when either is not finite.
inline double absolute_error(double got, double want) {
  if (!std::isfinite(got) || !std::isfinite(want)) return INFINITY;
  return std::fabs(got - want);
}

// max |a - b| / max |b|: the error relative to the tensor's scale, so that near-zero elements do
// not dominate (used for LoRA gradients and weights). +inf when any element of either side is not
// finite, so that EXPECT_LE(scaled_error(...), tol) fails on NaN and Inf. An all-zero reference
// gives 0 when a is all zero too, +inf otherwise.
inline double scaled_error(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    num = std::max(num, std::fabs(double(a[i]) - double(b[i])));
    den = std::max(den, std::fabs(double(b[i])));
  }
  if (num == 0) return 0;
  return den == 0 ? INFINITY : num / den;
}
// +inf when the sizes differ: comparing only the common prefix would pass a truncated result.
inline double scaled_error(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  return scaled_error(a.data(), b.data(), a.size());
}

}  // namespace loom::test

// First line of every GPU test: skips with a reason on machines without a device.
#define REQUIRE_GPU()                                                            \
  do {                                                                           \
    if (!::loom::cuda_available()) GTEST_SKIP() << "no CUDA device";             \
  } while (0)
