#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "engine/checkpoint.h"
#include "ops/error.h"
#include "engine/export.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/reference_model.h"
#include "models/weights.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

std::string temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("loom_lora_test_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

LoraSection section(int r, float alpha, std::vector<std::string> targets = {"q_proj", "v_proj", "down_proj"}) {
  LoraSection s;
  s.r = r;
  s.alpha = alpha;
  s.targets = std::move(targets);
  return s;
}

TEST(Lora, LayoutCoversEveryTargetedProjectionOnce) {
  ModelConfig m = preset_model_config("tiny");
  LoraLayout lay = make_lora_layout(m, section(4, 8));
  int64_t expect = 0;
  for (int t : {kQ, kV, kDown}) {
    auto [in, out] = projection_shape(m, LoraTarget(t));
    expect += int64_t(4) * (in + out) * m.L;
  }
  EXPECT_EQ(lay.total, expect);
  EXPECT_FALSE(lay.slot(0, kK).enabled);
  EXPECT_FLOAT_EQ(lay.scale, 2.f);
  EXPECT_FLOAT_EQ(make_lora_layout(m, [] { auto s = section(4, 8); s.rslora = true; return s; }()).scale, 4.f);
}

TEST(Lora, InitIsPeftDefault) {
  ModelConfig m = preset_model_config("tiny");
  LoraLayout lay = make_lora_layout(m, section(4, 8));
  std::vector<float> p = lora_init(lay, 7);
  const LoraSlot& s = lay.slot(1, kDown);
  const float bound = 1.f / std::sqrt(float(s.in));
  float max_a = 0;
  for (int64_t i = 0; i < int64_t(lay.R) * s.in; ++i) max_a = std::max(max_a, std::fabs(p[s.a_offset + i]));
  EXPECT_LE(max_a, bound);
  EXPECT_GT(max_a, 0.9f * bound);  // the draws fill the range
  for (int64_t i = 0; i < int64_t(s.out) * lay.R; ++i) ASSERT_EQ(p[s.b_offset + i], 0.f);
  EXPECT_EQ(p, lora_init(lay, 7));
  EXPECT_NE(p, lora_init(lay, 8));
}

TEST(Lora, PeftAdapterRoundTrips) {
  ModelConfig m = preset_model_config("tiny");
  LoraLayout lay = make_lora_layout(m, section(4, 8));
  std::vector<float> p = test::random_floats(lay.total, 3);
  const std::string dir = temp_dir("roundtrip");
  save_peft_adapter(dir, lay, p, "preset:tiny");
  EXPECT_EQ(load_peft_adapter(dir, lay), p);
  LoraSection back = read_peft_lora_section(dir);
  EXPECT_EQ(back.r, 4);
  EXPECT_EQ(back.alpha, 8.f);
  EXPECT_EQ(back.targets, (std::vector<std::string>{"q_proj", "v_proj", "down_proj"}));
}

TEST(Lora, LoadRejectsAMismatchedRank) {
  ModelConfig m = preset_model_config("tiny");
  LoraLayout lay4 = make_lora_layout(m, section(4, 8)), lay8 = make_lora_layout(m, section(8, 8));
  const std::string dir = temp_dir("mismatch");
  save_peft_adapter(dir, lay4, lora_init(lay4, 1), "x");
  try {
    load_peft_adapter(dir, lay8);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("r = 4 but the run uses lora.r = 8"), std::string::npos) << e.what();
  }
}

// W' = W + s·B·A with no adapter computes what W with the adapter computes.
TEST(Lora, MergedWeightsMatchTheAdapter) {
  ModelConfig m = preset_model_config("tiny");
  LoraLayout lay = make_lora_layout(m, section(4, 8, {"all-linear"}));
  std::vector<float> p = test::random_floats(lay.total, 5, -0.2f, 0.2f);
  ModelWeights w = random_weights(m, 11);
  Document d;
  for (int i = 0; i < 20; ++i) d.ids.push_back((i * 37) % m.V), d.mask.push_back(1);
  MicroBatch mb = pack_documents({&d});
  std::vector<float> with_adapter, merged_logits;
  ReferenceModel(m, w, lay).run(mb, p.data(), nullptr, 1.f, nullptr, &with_adapter);
  merge_lora(w, lay, p);
  LoraLayout none = make_lora_layout(m, section(4, 8, {}));
  ReferenceModel(m, w, none).run(mb, nullptr, nullptr, 1.f, nullptr, &merged_logits);
  // Logits are O(1): the floor of 1 measures error against that scale (fp32 summation order, ~1e-6).
  test::expect_close(merged_logits, with_adapter, 1e-4, "merged vs adapter logits", 1.0);
}

TEST(Checkpoint, SavesAtomicallyKeepsTheNewestAndRestores) {
  ModelConfig m = preset_model_config("tiny");
  LoraLayout lay = make_lora_layout(m, section(4, 8));
  const std::string run = temp_dir("ckpt");
  TrainCheckpoint ck;
  ck.params = test::random_floats(lay.total, 1);
  ck.opt.m = test::random_floats(lay.total, 2);
  ck.opt.v = test::random_floats(lay.total, 3, 0.f, 1.f);
  ck.opt.step = 7;
  ck.loader.epoch = 1;
  ck.loader.step_in_epoch = 2;
  for (int64_t step : {10, 20, 30}) {
    ck.step = step;
    save_checkpoint(run, ck, lay, "preset:tiny", 2);
  }
  fs::create_directories(run + "/checkpoints/.step-000040.tmp");  // a crash mid-write
  auto latest = latest_checkpoint(run);
  ASSERT_TRUE(latest);
  EXPECT_EQ(fs::path(*latest).filename(), "step-000030");
  EXPECT_FALSE(fs::exists(run + "/checkpoints/step-000010"));
  EXPECT_TRUE(fs::exists(run + "/checkpoints/step-000020"));
  TrainCheckpoint back = load_checkpoint(*latest, lay);
  EXPECT_EQ(back.step, 30);
  EXPECT_EQ(back.params, ck.params);
  EXPECT_EQ(back.opt.m, ck.opt.m);
  EXPECT_EQ(back.opt.v, ck.opt.v);
  EXPECT_EQ(back.opt.step, 7);
  EXPECT_EQ(back.loader.epoch, 1);
  EXPECT_EQ(back.loader.step_in_epoch, 2);
}

}  // namespace
}  // namespace loom
