// engine/schedule: lr_at against transformers' schedulers.
//
// Reference values: transformers 5.23, torch SGD with lr 2e-4 on one parameter, 20 steps; the lr
// in param_groups[0] read before each optimizer.step() / scheduler.step() pair, i.e. the lr of
// update s = 0..19:
//   get_cosine_schedule_with_warmup(opt, 5, 20)
//   get_linear_schedule_with_warmup(opt, 5, 20)
//   get_constant_schedule_with_warmup(opt, 3)
//   get_cosine_schedule_with_warmup(opt, 0, 20)
//   get_cosine_with_min_lr_schedule_with_warmup(opt, 5, 20, min_lr_rate=0.1)
#include <gtest/gtest.h>

#include "engine/schedule.h"
#include "tests/test_util.h"

namespace loom {
namespace {

constexpr int kTotal = 20;

TrainSection schedule(Schedule name, int warmup, float min_lr_ratio = 0.f) {
  TrainSection t;
  t.lr = 2e-4f;
  t.schedule = name;
  t.warmup_steps = warmup;
  t.min_lr_ratio = min_lr_ratio;
  return t;
}

std::vector<float> all_steps(const TrainSection& t) {
  std::vector<float> lrs;
  for (int s = 0; s < kTotal; ++s) lrs.push_back(lr_at(t, s, kTotal));
  return lrs;
}

// float lr (2e-4f is not 2e-4) times a double lambda: a few float ulps from the python doubles.
constexpr double kTol = 1e-6;

TEST(Schedule, CosineWithWarmupMatchesTransformers) {
  std::vector<float> want = {0.0, 4e-05, 8e-05, 0.00012, 0.00016, 0.0002, 0.00019781476007338058,
                             0.0001913545457642601, 0.00018090169943749476, 0.00016691306063588583,
                             0.00015000000000000001, 0.00013090169943749476, 0.00011045284632676536,
                             8.954715367323468e-05, 6.909830056250527e-05, 5.000000000000002e-05,
                             3.308693936411421e-05, 1.9098300562505266e-05, 8.645454235739903e-06,
                             2.1852399266194314e-06};
  test::expect_close(all_steps(schedule(Schedule::kCosine, 5)), want, kTol, "cosine, warmup 5", 1e-12);
}

TEST(Schedule, CosineWithoutWarmupStartsAtFullLr) {
  std::vector<float> want = {0.0002, 0.00019876883405951377, 0.00019510565162951537, 0.0001891006524188368,
                             0.00018090169943749476, 0.00017071067811865476, 0.00015877852522924732,
                             0.00014539904997395468, 0.00013090169943749476, 0.0001156434465040231, 0.0001,
                             8.435655349597689e-05, 6.909830056250527e-05, 5.4600950026045326e-05,
                             4.12214747707527e-05, 2.9289321881345254e-05, 1.9098300562505266e-05,
                             1.0899347581163221e-05, 4.8943483704846475e-06, 1.231165940486234e-06};
  test::expect_close(all_steps(schedule(Schedule::kCosine, 0)), want, kTol, "cosine, no warmup", 1e-12);
}

TEST(Schedule, LinearWithWarmupMatchesTransformers) {
  std::vector<float> want = {0.0, 4e-05, 8e-05, 0.00012, 0.00016, 0.0002, 0.0001866666666666667,
                             0.00017333333333333334, 0.00016, 0.00014666666666666666, 0.00013333333333333334,
                             0.00012, 0.00010666666666666667, 9.333333333333334e-05, 8e-05,
                             6.666666666666667e-05, 5.333333333333333e-05, 4e-05, 2.6666666666666667e-05,
                             1.3333333333333333e-05};
  test::expect_close(all_steps(schedule(Schedule::kLinear, 5)), want, kTol, "linear, warmup 5", 1e-12);
}

TEST(Schedule, ConstantWithWarmupMatchesTransformers) {
  std::vector<float> want(kTotal, 0.0002f);
  want[0] = 0.0;
  want[1] = 6.666666666666667e-05;
  want[2] = 0.00013333333333333334;
  test::expect_close(all_steps(schedule(Schedule::kConstant, 3)), want, kTol, "constant, warmup 3", 1e-12);
  test::expect_close(all_steps(schedule(Schedule::kConstant, 0)), std::vector<float>(kTotal, 2e-4f), kTol, "constant");
}

TEST(Schedule, MinLrRatioMatchesTransformersCosineWithMinLr) {
  std::vector<float> want = {0.0, 4e-05, 8e-05, 0.00012, 0.00016, 0.0002, 0.00019803328406604252,
                             0.00019221909118783407, 0.00018281152949374527, 0.00017022175457229725, 0.000155,
                             0.00013781152949374526, 0.00011940756169408881, 0.00010059243830591121,
                             8.218847050625476e-05, 6.500000000000002e-05, 4.977824542770279e-05,
                             3.718847050625475e-05, 2.778090881216592e-05, 2.196671593395749e-05};
  test::expect_close(all_steps(schedule(Schedule::kCosine, 5, 0.1f)), want, kTol, "cosine, min_lr_ratio 0.1", 1e-12);
}

TEST(Schedule, MinLrRatioIsTheFloorOfLinearDecay) {
  TrainSection t = schedule(Schedule::kLinear, 0, 0.25f);
  EXPECT_FLOAT_EQ(lr_at(t, 0, 10), 2e-4f);
  EXPECT_FLOAT_EQ(lr_at(t, 5, 10), 2e-4f * (0.25f + 0.75f * 0.5f));
  EXPECT_FLOAT_EQ(lr_at(t, 10, 10), 2e-4f * 0.25f);
}

TEST(Schedule, StepsPastTheEndKeepTheFinalLr) {
  TrainSection t = schedule(Schedule::kCosine, 2, 0.1f);
  EXPECT_FLOAT_EQ(lr_at(t, 10, 10), 2e-5f);
  EXPECT_FLOAT_EQ(lr_at(t, 15, 10), 2e-5f);
  EXPECT_FLOAT_EQ(lr_at(schedule(Schedule::kLinear, 2), 15, 10), 0.f);
}

}  // namespace
}  // namespace loom
