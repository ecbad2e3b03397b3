// The comparison helpers of tests/test_util.h and tests/lora_compare.h must be able to fail: a NaN
// or an Inf on either side, a size mismatch and a wrong tensor hidden behind a larger one all fail,
// while equal inputs pass.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "models/lora.h"
#include "models/model_config.h"
#include "tests/lora_compare.h"
#include "tests/test_util.h"

namespace loom {
namespace {

using test::scaled_error;
using Vec = std::vector<float>;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(ScaledError, IsTheLargestDifferenceOverTheLargestReference) {
  EXPECT_DOUBLE_EQ(scaled_error(Vec{1.f, 2.f, -4.f}, Vec{1.f, 2.f, -4.f}), 0.0);
  EXPECT_DOUBLE_EQ(scaled_error(Vec{1.5f, 2.f, -4.f}, Vec{1.f, 2.f, -4.f}), 0.5 / 4);
}

TEST(ScaledError, NanOrInfOnEitherSideIsInfinite) {
  for (float bad : {kNaN, kInf, -kInf}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(scaled_error(Vec{1.f, bad, 3.f}, Vec{1.f, 2.f, 3.f}), INFINITY) << "bad value in a";
    EXPECT_EQ(scaled_error(Vec{1.f, 2.f, 3.f}, Vec{1.f, bad, 3.f}), INFINITY) << "bad value in b";
    EXPECT_EQ(scaled_error(Vec{bad}, Vec{bad}), INFINITY) << "the same bad value on both sides";
    // Every tolerance fails on it.
    EXPECT_FALSE(scaled_error(Vec{bad, 1.f}, Vec{0.f, 1.f}) <= 1e30);
  }
}

TEST(ScaledError, SizeMismatchIsInfinite) {
  EXPECT_EQ(scaled_error(Vec{1.f, 2.f}, Vec{1.f, 2.f, 3.f}), INFINITY);
  EXPECT_EQ(scaled_error(Vec{1.f, 2.f, 3.f}, Vec{1.f, 2.f}), INFINITY);
  EXPECT_EQ(scaled_error(Vec{}, Vec{1.f}), INFINITY);
}

TEST(ScaledError, EmptyVectorsAreEqual) { EXPECT_EQ(scaled_error(Vec{}, Vec{}), 0.0); }

TEST(ScaledError, AllZeroReferencePassesOnlyAnAllZeroResult) {
  EXPECT_EQ(scaled_error(Vec{0.f, 0.f}, Vec{0.f, 0.f}), 0.0);
  EXPECT_EQ(scaled_error(Vec{0.f, 1e-30f}, Vec{0.f, 0.f}), INFINITY);
}

TEST(ErrorHelpers, RelativeAndAbsoluteErrorAreInfiniteOnNanAndInf) {
  EXPECT_NEAR(test::relative_error(1.1, 1.0), 0.1, 1e-12);
  EXPECT_EQ(test::relative_error(0.0, 0.0), 0.0);
  EXPECT_EQ(test::relative_error(1.0, 0.0), INFINITY);
  EXPECT_DOUBLE_EQ(test::absolute_error(-1.0, 2.0), 3.0);
  for (double bad : {double(kNaN), double(kInf), -double(kInf)}) {
    EXPECT_EQ(test::relative_error(bad, 1.0), INFINITY);
    EXPECT_EQ(test::relative_error(1.0, bad), INFINITY);
    EXPECT_EQ(test::relative_error(bad, bad), INFINITY);
    EXPECT_EQ(test::absolute_error(bad, 1.0), INFINITY);
    EXPECT_EQ(test::absolute_error(1.0, bad), INFINITY);
  }
}

// std::max(x, NaN) returns x: a "worst error" kept with std::max forgets a NaN.
TEST(ErrorHelpers, MaxKeepingNanKeepsTheNan) {
  EXPECT_EQ(test::max_keeping_nan(1.0, 2.0), 2.0);
  EXPECT_EQ(test::max_keeping_nan(3.0, 2.0), 3.0);
  EXPECT_TRUE(std::isnan(test::max_keeping_nan(1.0, kNaN)));
  EXPECT_TRUE(std::isnan(test::max_keeping_nan(kNaN, 1.0)));
  double worst = 0;
  for (double e : {0.1, double(kNaN), 0.2}) worst = test::max_keeping_nan(worst, e);
  EXPECT_TRUE(std::isnan(worst)) << "a NaN in the middle of a series is forgotten";
}

void expect_close_sized(size_t n_got, size_t n_want) {
  test::expect_close(Vec(n_got, 1.f), Vec(n_want, 1.f), 1e-3, "sizes");
}

TEST(ExpectClose, FailsOnNanInfAndSizeMismatch) {
  EXPECT_NONFATAL_FAILURE(test::expect_close(Vec{1.f, kNaN}, Vec{1.f, 2.f}, 1e-3, "nan in a"), "non-finite");
  EXPECT_NONFATAL_FAILURE(test::expect_close(Vec{1.f, 2.f}, Vec{kNaN, 2.f}, 1e-3, "nan in b"), "non-finite");
  EXPECT_NONFATAL_FAILURE(test::expect_close(Vec{kInf, 2.f}, Vec{1.f, 2.f}, 1e-3, "inf in a"), "non-finite");
  EXPECT_NONFATAL_FAILURE(test::expect_close(Vec{1.1f, 2.f}, Vec{1.f, 2.f}, 1e-3, "too far"), "max rel err");
  EXPECT_FATAL_FAILURE(expect_close_sized(2, 3), "size");
  test::expect_close(Vec{1.f, 2.f}, Vec{1.f, 2.f}, 0.0, "equal");  // and passes on equal inputs
  test::expect_close(Vec{}, Vec{}, 0.0, "empty");
}

// A small model: the 0.5x gradient of one small tensor must show against that tensor's own scale,
// even when another tensor of the vector is 1000 times larger.
class LoraCompare : public testing::Test {
 protected:
  LoraCompare() {
    LoraOptions s;
    s.r = 2;
    s.alpha = 4;
    layout_ = make_lora_layout(preset_model_config("tiny"), s);
    want_ = test::random_floats(size_t(layout_.total), 5);
    const LoraSlot& big = layout_.slot(0, kQ);
    for (int64_t i = 0; i < int64_t(s.r) * big.in; ++i) want_[big.a_offset + i] *= 1000.f;
  }
  LoraLayout layout_;
  Vec want_;
};

TEST_F(LoraCompare, HalfOfOneSmallTensorFailsAndNamesIt) {
  Vec got = want_;
  const LoraSlot& o = layout_.slot(1, kO);
  for (int64_t i = 0; i < int64_t(o.out) * layout_.R; ++i) got[o.b_offset + i] *= 0.5f;
  EXPECT_LT(scaled_error(got, want_), 1e-3) << "the flat-vector measure hides it (why tensors are compared alone)";
  const test::TensorError worst = test::worst_tensor(test::lora_tensor_errors(layout_, got, want_));
  EXPECT_EQ(worst.name, "layers.1.o_proj.lora_B");
  EXPECT_NEAR(worst.error, 0.5, 1e-6);
  EXPECT_NONFATAL_FAILURE(test::expect_lora_tensors_close(layout_, got, want_, 0.1, "grads"), "layers.1.o_proj.lora_B");
}

// A mixture-of-experts layout: each expert's A and B are tensors of their own, named by layer and expert.
TEST(LoraCompareMoe, OneExpertsTensorIsComparedAlone) {
  LoraOptions o;
  o.r = 4;
  o.alpha = 8;
  o.targets = {"q_proj", "gate_proj", "up_proj", "down_proj"};
  const LoraLayout layout =
      make_lora_layout(load_model_config(test::fixtures_dir() + "/moe/qwen3_moe/model"), o);
  const Vec want = test::random_floats(size_t(layout.total), 9);
  Vec got = want;
  const LoraSlot& down = layout.experts[2][1][1];  // layer 2 (sparse), expert 1, down_proj
  ASSERT_TRUE(down.enabled);
  got[size_t(down.b_offset)] += 1.f;
  const test::TensorError worst = test::worst_tensor(test::lora_tensor_errors(layout, got, want));
  EXPECT_EQ(worst.name, "layers.2.experts.1.down_proj.lora_B");
  EXPECT_GT(worst.error, 0.5);
}

TEST_F(LoraCompare, EqualVectorsPassAndNanOrSizeMismatchFail) {
  EXPECT_EQ(test::worst_tensor(test::lora_tensor_errors(layout_, want_, want_)).error, 0.0);
  test::expect_lora_tensors_close(layout_, want_, want_, 0.0, "equal");
  Vec nan = want_;
  nan[layout_.slot(0, kDown).a_offset + 3] = kNaN;
  const test::TensorError worst = test::worst_tensor(test::lora_tensor_errors(layout_, nan, want_));
  EXPECT_EQ(worst.name, "layers.0.down_proj.lora_A");
  EXPECT_EQ(worst.error, INFINITY);
  Vec shorter(want_.begin(), want_.end() - 1);
  EXPECT_NONFATAL_FAILURE(test::expect_lora_tensors_close(layout_, shorter, want_, 1.0, "truncated"), "sizes");
}

TEST(LoraCompareWorst, ANanErrorStaysTheWorst) {
  const std::vector<test::TensorError> errors = {{"a", 0.1}, {"b", double(kNaN)}, {"c", 5.0}};
  EXPECT_EQ(test::worst_tensor(errors).name, "b");
}

}  // namespace
}  // namespace loom
