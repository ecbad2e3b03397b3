#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>

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

LoraOptions section(int r, float alpha, std::vector<std::string> targets = {"q_proj", "v_proj", "down_proj"}) {
  LoraOptions s;
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
  LoraOptions back = read_peft_lora_options(dir);
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

// A rank above min(in, out) of a projection is rank-deficient but legal: PEFT trains and loads it
// (r = 256 on Qwen2.5-0.5B's 128-wide k/v projections). A rank outside [1, 4096] is refused before
// anything is sized by it (lora.r: 2147483647 used to reach lora_init and die of bad_alloc), with
// targets or without.
TEST(Lora, RankAboveAProjectionSideIsLegalAndTheRankIsBounded) {
  ModelConfig m = preset_model_config("tiny");  // k_proj / v_proj: 128 -> 64
  const LoraLayout wide = make_lora_layout(m, section(65, 8, {"k_proj"}));
  ASSERT_EQ(wide.R, 65);
  EXPECT_EQ(wide.total, int64_t(m.L) * 65 * (128 + 64));
  const std::string dir = temp_dir("wide");
  const std::vector<float> params = lora_init(wide, 1);
  save_peft_adapter(dir, wide, params, "x");
  EXPECT_EQ(load_peft_adapter(dir, make_lora_layout(m, read_peft_lora_options(dir))), params);
  EXPECT_EQ(make_lora_layout(m, section(4096, 8, {})).R, 4096);
  for (int r : {0, -1, 4097, 2147483647}) {
    test::expect_error([&] { make_lora_layout(m, section(r, 8)); }, {cat("lora.r must be in [1, 4096], found ", r)});
    test::expect_error([&] { make_lora_layout(m, section(r, 8, {})); }, {"lora.r must be in [1, 4096]"});
  }
}

// adapter_config.json keys are typed; errors name the file and the key instead of a JSON exception.
TEST(Lora, AdapterConfigWithWrongTypesNamesFileAndKey) {
  ModelConfig m = preset_model_config("tiny");
  LoraLayout lay = make_lora_layout(m, section(4, 8));
  const std::string dir = temp_dir("types");
  save_peft_adapter(dir, lay, lora_init(lay, 1), "x");
  const std::string good = [&] {
    std::ifstream f(dir + "/adapter_config.json");
    return std::string(std::istreambuf_iterator<char>(f), {});
  }();
  auto with = [&](const std::string& key, const std::string& value) {
    nlohmann::json j = nlohmann::json::parse(good);
    if (value.empty())
      j.erase(key);
    else
      j[key] = nlohmann::json::parse(value);
    std::ofstream(dir + "/adapter_config.json") << j.dump();
  };
  const std::string file = dir + "/adapter_config.json: ";
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"r", "\"4\"", file + "r: expected an integer, found \"4\""},
      {"lora_alpha", "null", ""},  // PEFT default 8 = the layout's alpha: accepted
      {"lora_alpha", "[8]", file + "lora_alpha: expected a number, found [8]"},
      {"use_rslora", "\"false\"", file + "use_rslora: expected true or false"},
      {"target_modules", "", file + "target_modules is missing"},
      {"use_dora", "1", file + "use_dora: expected true or false, found 1"},
  };
  for (const auto& [key, value, want] : cases) {
    SCOPED_TRACE(key + " = " + value);
    with(key, value);
    if (want.empty())
      EXPECT_EQ(load_peft_adapter(dir, lay).size(), size_t(lay.total));
    else
      test::expect_error([&] { load_peft_adapter(dir, lay); }, {want});
  }
}

TEST(Lora, AdapterTensorsTheLayoutDoesNotUseAreNamed) {
  ModelConfig m = preset_model_config("tiny");
  LoraLayout all = make_lora_layout(m, section(4, 8, {"all-linear"}));
  LoraLayout qv = make_lora_layout(m, section(4, 8, {"q_proj", "v_proj"}));
  const std::string dir = temp_dir("extra");
  save_peft_adapter(dir, all, lora_init(all, 1), "x");
  // adapter_config.json says q_proj, v_proj; the tensors cover every projection.
  const std::string qv_dir = temp_dir("extra_qv");
  save_peft_adapter(qv_dir, qv, lora_init(qv, 1), "x");
  fs::copy_file(qv_dir + "/adapter_config.json", dir + "/adapter_config.json", fs::copy_options::overwrite_existing);
  test::expect_error([&] { load_peft_adapter(dir, qv); },
                     {"adapter_model.safetensors: tensor 'base_model.model.model.layers.0.mlp.down_proj.lora_A.weight' "
                      "is not an adapter of this model"});
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
  ReferenceModel(m, w, lay).forward(mb, p.data(), {}, nullptr, &with_adapter);
  merge_lora(w, lay, p);
  LoraLayout none = make_lora_layout(m, section(4, 8, {}));
  ReferenceModel(m, w, none).forward(mb, nullptr, {}, nullptr, &merged_logits);
  // Logits are O(1): the floor of 1 measures error against that scale (fp32 summation order, ~1e-6).
  test::expect_close(merged_logits, with_adapter, 1e-4, "merged vs adapter logits", 1.0);
}

// A weight source with the adapter merged as it reads each layer (what build/generate --lora merged
// loads) gives merge_lora's weights bit for bit: the same products, in the same order.
TEST(Lora, MergedWeightSourceIsMergeLora) {
  ModelConfig m = preset_model_config("tiny");
  LoraLayout lay = make_lora_layout(m, section(4, 8, {"all-linear"}));
  const std::vector<float> p = test::random_floats(lay.total, 5, -0.2f, 0.2f);
  ModelWeights want = random_weights(m, 11);
  merge_lora(want, lay, p);
  const WeightSource merged = WeightSource::random(m, 11).with_merged_adapter(lay, p);
  for (int l = 0; l < m.L; ++l) {
    const LayerWeights got = merged.layer(l);
    for (int t = 0; t < kNumTargets; ++t)
      EXPECT_EQ(*projection(got, t), *projection(want.layers[size_t(l)], t)) << "layer " << l << " " << kLoraTargetNames[t];
  }
  EXPECT_NE(*projection(WeightSource::random(m, 11).layer(0), kQ), *projection(want.layers[0], kQ));  // it merged
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
  ck.loader.global_batch = 4;  // what a real run records; a checkpoint with none is refused
  ck.loader.documents = 40;
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
