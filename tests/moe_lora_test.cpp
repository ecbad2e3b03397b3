// LoRA on mixture-of-experts models (models/lora.h): the layout PEFT 0.21.2 implies (experts'
// gate_up at rank 2R, no adapter on a Qwen3-MoE dense MLP layer), and the adapters and options it
// refuses, each with a message naming the key or tensor. Fixtures: tests/fixtures/moe.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <filesystem>
#include <fstream>
#include <map>

#include "models/lora.h"
#include "models/model_config.h"
#include "models/safetensors.h"
#include "tests/hf_fixture.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

using json = nlohmann::json;

std::string moe(const std::string& which) { return test::fixtures_dir() + "/moe/" + which; }

LoraOptions options(std::vector<std::string> targets, float dropout = 0, bool rslora = false) {
  LoraOptions o;
  o.r = 4;
  o.alpha = 8;
  o.targets = std::move(targets);
  o.dropout = dropout;
  o.rslora = rslora;
  return o;
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

const std::vector<std::string> kAll = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

// A copy of a fixture adapter with its config edited and tensors added.
std::string edited_adapter(const std::string& from, const std::string& name, const std::function<void(json&)>& edit_config,
                           const std::map<std::string, std::vector<int64_t>>& extra = {}) {
  const std::string dir = test::fresh_temp_dir("moe_lora_" + name);
  fs::create_directories(dir);
  json cfg = test::read_json(from + "/adapter_config.json");
  edit_config(cfg);
  std::ofstream(dir + "/adapter_config.json") << cfg.dump(2);
  const Checkpoint ck = Checkpoint::open(from + "/adapter_model.safetensors");
  std::vector<std::vector<float>> keep;
  std::vector<TensorToWrite> out;
  for (const std::string& n : ck.names()) {
    keep.push_back(ck.read_f32(n, ck.get(n).shape));
    out.push_back({n, DType::F32, ck.get(n).shape, keep.back().data()});
  }
  for (const auto& [n, shape] : extra) {
    keep.emplace_back(size_t(shape[0] * shape[1]), 0.1f);
    out.push_back({n, DType::F32, shape, keep.back().data()});
  }
  write_safetensors(dir + "/adapter_model.safetensors", out);
  return dir;
}

// Qwen3-MoE with mlp_only_layers [1]: the MLP targets become E expert slots in layers 0 and 2
// (gate_up C -> 2·FE at rank 2R, down FE -> C at rank R), and nothing in dense layer 1, as PEFT.
TEST(MoeLora, LayoutFollowsPeft) {
  const ModelConfig cfg = load_model_config(moe("qwen3_moe/model"));
  for (const bool rslora : {false, true}) {
    const LoraLayout lay = make_lora_layout(cfg, options(kAll, 0, rslora));
    EXPECT_TRUE(lay.experts[1].empty());
    for (int t = kGate; t <= kDown; ++t)
      for (int l = 0; l < cfg.L; ++l) EXPECT_FALSE(lay.slot(l, LoraTarget(t)).enabled) << l << " " << t;
    const LoraSlot& gu = lay.expert_slot(2, 3, kExpertGateUp);
    const LoraSlot& down = lay.expert_slot(2, 3, kExpertDown);
    EXPECT_EQ(lay.experts[2].size(), size_t(cfg.num_experts));
    EXPECT_EQ(std::make_tuple(gu.in, gu.out, gu.r), std::make_tuple(cfg.C, 2 * cfg.expert_F, 8));
    EXPECT_EQ(std::make_tuple(down.in, down.out, down.r), std::make_tuple(cfg.expert_F, cfg.C, 4));
    // alpha_pattern 2·alpha over rank_pattern 2r: alpha / r plain, 2·alpha / √(2r) with rsLoRA.
    EXPECT_FLOAT_EQ(gu.scale, rslora ? 16 / std::sqrt(8.f) : 2.f);
    EXPECT_FLOAT_EQ(down.scale, lay.scale);
    // Layer by layer, contiguous: lora_layer_bounds covers the experts.
    const std::vector<size_t> b = lora_layer_bounds(lay);
    EXPECT_LT(size_t(lay.expert_slot(0, 3, kExpertDown).b_offset), b[1]);
    EXPECT_GE(size_t(gu.a_offset), b[2]);
    EXPECT_EQ(b[3], size_t(lay.total));
  }
}

TEST(MoeLora, RefusesWhatPeftRefuses) {
  const ModelConfig cfg = load_model_config(moe("mixtral/model"));
  test::expect_error([&] { make_lora_layout(cfg, options({"q_proj", "gate_proj"})); },
                     {"LoRA targets gate_proj without up_proj", "one fused weight"});
  test::expect_error([&] { make_lora_layout(cfg, options({"up_proj", "down_proj"})); },
                     {"LoRA targets up_proj without gate_proj"});
  test::expect_error([&] { make_lora_layout(cfg, options(kAll, 0.1f)); },
                     {"lora.dropout = 0.1 with expert targets", "ParamWrapper"});
  EXPECT_NO_THROW(make_lora_layout(cfg, options({"q_proj", "v_proj"}, 0.1f)));  // attention only: dropout is fine
  EXPECT_NO_THROW(make_lora_layout(preset_model_config("tiny"), options({"gate_proj"})));  // a dense model's own MLP
}

// A LoRA on a dense MLP layer of an MoE model (a transformers-4 adapter can hold one; PEFT 0.21.2
// drops it on load) is refused, naming the tensor.
TEST(MoeLora, AdapterOnADenseMlpLayerIsRefused) {
  const std::string dir = edited_adapter(moe("qwen3_moe/adapter_per_expert"), "dense_mlp", [](json&) {},
                                         {{"base_model.model.model.layers.1.mlp.up_proj.lora_A.weight", {4, 64}}});
  const ModelConfig cfg = load_model_config(moe("qwen3_moe/model"));
  test::expect_error([&] { load_peft_adapter(dir, make_lora_layout(cfg, read_peft_lora_options(dir))); },
                     {"'base_model.model.model.layers.1.mlp.up_proj.lora_A.weight'", "dense MLP of layer 1",
                      "PEFT 0.21.2 cannot adapt"});
}

// The fused form's config: target_parameters only gate_up_proj / down_proj, with exactly the
// rank_pattern and alpha_pattern PEFT writes beside gate_up_proj; its tensors all there.
TEST(MoeLora, FusedAdapterConfigIsCheckedKeyByKey) {
  const std::string fixture = moe("mixtral/adapter");
  const std::string where = "adapter_config.json: ";
  auto read = [](const std::string& dir) { return read_peft_lora_options(dir); };
  std::string dir = edited_adapter(fixture, "rank_pattern", [](json& c) { c["rank_pattern"][".*\\.gate_up_proj"] = 4; });
  test::expect_error([&] { read(dir); }, {where + "rank_pattern must be {\".*\\.gate_up_proj\": 8}", "found"});
  dir = edited_adapter(fixture, "alpha_pattern", [](json& c) { c.erase("alpha_pattern"); });
  test::expect_error([&] { read(dir); }, {where + "alpha_pattern must be", "found nothing"});
  dir = edited_adapter(fixture, "router", [](json& c) { c["target_parameters"].push_back("gate.weight"); });
  test::expect_error([&] { read(dir); }, {where + "target_parameters: \"gate.weight\" is not supported"});
  dir = edited_adapter(fixture, "no_gate_up", [](json& c) { c["target_parameters"] = {"down_proj"}; });
  test::expect_error([&] { read(dir); }, {where + "rank_pattern (per-module r/alpha) is not supported"});
  // The attention from target_modules, the experts from target_parameters.
  EXPECT_EQ(sorted(read(fixture).targets), sorted(kAll));

  const ModelConfig cfg = load_model_config(moe("mixtral/model"));
  dir = edited_adapter(fixture, "extra", [](json&) {},
                       {{"base_model.model.model.layers.0.mlp.gate.lora_A.weight", {4, 64}}});
  test::expect_error([&] { load_peft_adapter(dir, make_lora_layout(cfg, read(dir))); },
                     {"tensor 'base_model.model.model.layers.0.mlp.gate.lora_A.weight' is not an adapter of this model",
                      "target_parameters"});
  // The same weights read with attention-only options: the file's targets differ from the run's.
  test::expect_error([&] { load_peft_adapter(fixture, make_lora_layout(cfg, options({"q_proj", "k_proj", "v_proj", "o_proj"}))); },
                     {"target_modules differ from lora.targets"});
}

// The per-expert (transformers 4) form names Mixtral's experts w1 / w3 / w2 under block_sparse_moe.
TEST(MoeLora, MixtralPerExpertNamesReadAsGateUpDown) {
  EXPECT_EQ(sorted(read_peft_lora_options(moe("mixtral/adapter_per_expert")).targets), sorted(kAll));
}

}  // namespace
}  // namespace loom
