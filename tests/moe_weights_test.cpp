// Base weights of mixture-of-experts models (models/weights.h): both checkpoint forms transformers
// 5.23 loads (per-expert, fused) into one in-memory layout, the audit of their tensors, random init,
// saving and the NF4 round trip of the experts. Fixtures: tests/fixtures/moe (tools/make_moe_fixtures.py).
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include "models/lora.h"
#include "models/model_config.h"
#include "models/safetensors.h"
#include "models/weights.h"
#include "ops/nf4.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

std::string moe_dir(const std::string& which) { return test::fixtures_dir() + "/moe/" + which; }

void expect_same_weights(const ModelWeights& a, const ModelWeights& b) {
  EXPECT_EQ(a.embed, b.embed);
  EXPECT_EQ(a.final_norm, b.final_norm);
  EXPECT_EQ(a.lm_head, b.lm_head);
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    SCOPED_TRACE(cat("layer ", l));
    const LayerWeights &x = a.layers[l], &y = b.layers[l];
    for (int t = 0; t < kNumTargets; ++t) EXPECT_EQ(*projection(x, t), *projection(y, t)) << kLoraTargetNames[t];
    EXPECT_EQ(x.ln1, y.ln1);
    EXPECT_EQ(x.ln2, y.ln2);
    EXPECT_EQ(x.q_norm, y.q_norm);
    EXPECT_EQ(x.k_norm, y.k_norm);
    EXPECT_EQ(x.router, y.router);
    EXPECT_EQ(x.experts_gate_up, y.experts_gate_up);
    EXPECT_EQ(x.experts_down, y.experts_down);
  }
}

// A copy of a fixture checkpoint with its tensors edited: `edit` may add, drop or replace entries
// of name -> (shape, fp32 values). Written in fp32 beside the fixture's config.json.
using Tensors = std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>;
std::string edited_copy(const std::string& from, const std::string& name, const std::function<void(Tensors&)>& edit) {
  const Checkpoint ck = Checkpoint::open(from);
  Tensors t;
  for (const std::string& n : ck.names()) t[n] = {ck.get(n).shape, ck.read_f32(n, ck.get(n).shape)};
  edit(t);
  const std::string dir = test::fresh_temp_dir("moe_weights_" + name);
  fs::create_directories(dir);
  std::vector<TensorToWrite> out;
  for (const auto& [n, v] : t) out.push_back({n, DType::F32, v.first, v.second.data()});
  write_safetensors(dir + "/model.safetensors", out);
  fs::copy_file(from + "/config.json", dir + "/config.json");
  return dir;
}

// The two forms of the Mixtral fixture hold the same bf16 values: loaded, they are the same weights,
// down to the layout of the expert stacks.
TEST(MoeWeights, PerExpertAndFusedCheckpointsLoadTheSame) {
  const ModelConfig per_cfg = load_model_config(moe_dir("mixtral/model"));
  const ModelConfig fused_cfg = load_model_config(moe_dir("mixtral/model_fused"));
  const ModelWeights per = load_weights(moe_dir("mixtral/model"), per_cfg);
  const ModelWeights fused = load_weights(moe_dir("mixtral/model_fused"), fused_cfg);
  expect_same_weights(per, fused);
  // Expert 2 of layer 1 sits where the fused tensors put it: gate rows, then up rows; down (C, FE).
  const Checkpoint ck = Checkpoint::open(moe_dir("mixtral/model"));
  const int64_t C = per_cfg.C, FE = per_cfg.expert_F;
  const std::string x = "model.layers.1.block_sparse_moe.experts.2.";
  const std::vector<float> w1 = ck.read_f32(x + "w1.weight", {FE, C}), w3 = ck.read_f32(x + "w3.weight", {FE, C}),
                           w2 = ck.read_f32(x + "w2.weight", {C, FE});
  const LayerWeights& l1 = per.layers[1];
  EXPECT_TRUE(std::equal(w1.begin(), w1.end(), l1.experts_gate_up.begin() + 2 * 2 * FE * C));
  EXPECT_TRUE(std::equal(w3.begin(), w3.end(), l1.experts_gate_up.begin() + (2 * 2 + 1) * FE * C));
  EXPECT_TRUE(std::equal(w2.begin(), w2.end(), l1.experts_down.begin() + 2 * C * FE));
  EXPECT_EQ(l1.router, ck.read_f32("model.layers.1.block_sparse_moe.gate.weight", {per_cfg.num_experts, C}));
  EXPECT_TRUE(l1.gate.empty() && l1.up.empty() && l1.down.empty());
}

// Qwen3-MoE with mlp_only_layers: [1]: layers 0 and 2 hold a router and experts of width FE = 48,
// layer 1 the dense MLP of width F = 96 and nothing else.
TEST(MoeWeights, DenseLayersOfAnMoeModelKeepTheirMlp) {
  const ModelConfig cfg = load_model_config(moe_dir("qwen3_moe/model"));
  const ModelWeights w = load_weights(moe_dir("qwen3_moe/model"), cfg);
  const size_t E = size_t(cfg.num_experts), C = size_t(cfg.C), FE = size_t(cfg.expert_F), F = size_t(cfg.F);
  for (int l : {0, 2}) {
    SCOPED_TRACE(l);
    EXPECT_EQ(w.layers[l].router.size(), E * C);
    EXPECT_EQ(w.layers[l].experts_gate_up.size(), E * 2 * FE * C);
    EXPECT_EQ(w.layers[l].experts_down.size(), E * C * FE);
    EXPECT_TRUE(w.layers[l].gate.empty());
  }
  const LayerWeights& dense = w.layers[1];
  EXPECT_EQ(dense.gate.size(), F * C);
  EXPECT_EQ(dense.down.size(), C * F);
  EXPECT_TRUE(dense.router.empty() && dense.experts_gate_up.empty() && dense.experts_down.empty());
  const Checkpoint ck = Checkpoint::open(moe_dir("qwen3_moe/model"));
  EXPECT_EQ(w.layers[2].experts_down,
            [&] {
              std::vector<float> v;
              for (size_t e = 0; e < E; ++e) {
                auto d = ck.read_f32(cat("model.layers.2.mlp.experts.", e, ".down_proj.weight"),
                                     {int64_t(C), int64_t(FE)});
                v.insert(v.end(), d.begin(), d.end());
              }
              return v;
            }());
}

// The audit names a missing, a mis-shaped and an unused expert tensor, with the config.json keys
// behind the shape, in both forms.
TEST(MoeWeights, AuditNamesMissingMisshapedAndUnusedExpertTensors) {
  const std::string qwen = moe_dir("qwen3_moe/model");
  const ModelConfig q = load_model_config(qwen);
  std::string dir = edited_copy(qwen, "missing", [](Tensors& t) { t.erase("model.layers.2.mlp.experts.3.up_proj.weight"); });
  test::expect_error([&] { audit_checkpoint(dir, q); }, {"tensor 'model.layers.2.mlp.experts.3.up_proj.weight' not found"});
  dir = edited_copy(qwen, "misshaped", [](Tensors& t) {
    t["model.layers.0.mlp.experts.1.down_proj.weight"].first = {48, 64};  // transposed
  });
  test::expect_error([&] { load_weights(dir, q); },
                     {"'model.layers.0.mlp.experts.1.down_proj.weight'", "has shape [48, 64]",
                      "num_experts, moe_intermediate_size, hidden_size", "[64, 48]"});
  dir = edited_copy(qwen, "router", [](Tensors& t) {
    t["model.layers.0.mlp.gate.weight"] = {{5, 64}, std::vector<float>(5 * 64, 0.f)};
  });
  test::expect_error([&] { audit_checkpoint(dir, q); }, {"'model.layers.0.mlp.gate.weight'", "num_experts, hidden_size"});
  dir = edited_copy(qwen, "unused", [](Tensors& t) {  // a dense MLP beside the experts of a sparse layer
    t["model.layers.0.mlp.gate_proj.weight"] = {{96, 64}, std::vector<float>(96 * 64, 0.f)};
  });
  test::expect_error([&] { audit_checkpoint(dir, q); },
                     {"1 tensor the model does not use: 'model.layers.0.mlp.gate_proj.weight'", "mlp_only_layers"});
  dir = edited_copy(qwen, "expert4", [](Tensors& t) {  // a fifth expert: num_experts is 4
    t["model.layers.0.mlp.experts.4.up_proj.weight"] = {{48, 64}, std::vector<float>(48 * 64, 0.f)};
  });
  test::expect_error([&] { audit_checkpoint(dir, q); }, {"'model.layers.0.mlp.experts.4.up_proj.weight'"});

  const std::string fused = moe_dir("mixtral/model_fused");
  const ModelConfig m = load_model_config(fused);
  dir = edited_copy(fused, "fused_missing", [](Tensors& t) { t.erase("model.layers.1.mlp.experts.down_proj"); });
  test::expect_error([&] { audit_checkpoint(dir, m); }, {"tensor 'model.layers.1.mlp.experts.down_proj' not found"});
  dir = edited_copy(fused, "fused_misshaped", [](Tensors& t) {
    t["model.layers.0.mlp.experts.gate_up_proj"].first = {4, 48, 128};
  });
  test::expect_error([&] { audit_checkpoint(dir, m); },
                     {"'model.layers.0.mlp.experts.gate_up_proj'", "[4, 48, 128]",
                      "num_local_experts, intermediate_size, hidden_size", "[4, 96, 64]"});
}

// A preset-sized MoE config at toy sizes: random weights (every expert its own random stream) saved
// in fp32 (the per-expert form) load back as the same numbers.
TEST(MoeWeights, RandomWeightsSaveAndLoadBack) {
  for (const char* which : {"qwen3_moe/model", "mixtral/model"}) {
    SCOPED_TRACE(which);
    const ModelConfig cfg = load_model_config(moe_dir(which));
    const ModelWeights w = random_weights(cfg, 11);
    const LayerWeights& l0 = w.layers[0];
    const size_t n = size_t(cfg.C) * cfg.expert_F;
    EXPECT_FALSE(std::equal(l0.experts_down.begin(), l0.experts_down.begin() + n, l0.experts_down.begin() + n));
    EXPECT_FALSE(std::equal(l0.experts_gate_up.begin(), l0.experts_gate_up.begin() + n, l0.experts_gate_up.begin() + n));
    const std::string dir = test::fresh_temp_dir(cat("moe_weights_random_", cfg.arch));
    save_weights(dir, cfg, w, DType::F32);
    EXPECT_TRUE(Checkpoint::open(dir).has(cfg.arch == "mixtral" ? "model.layers.1.block_sparse_moe.experts.3.w2.weight"
                                                                 : "model.layers.2.mlp.experts.3.down_proj.weight"));
    expect_same_weights(w, load_weights(dir, load_model_config(dir)));
  }
}

// QLoRA: each expert's gate, up and down go through NF4 as three matrices of their own; the router
// is left as it is.
TEST(MoeWeights, Nf4RoundTripQuantizesEachExpertMatrix) {
  const ModelConfig cfg = load_model_config(moe_dir("mixtral/model"));
  const ModelWeights w = load_weights(moe_dir("mixtral/model"), cfg);
  ModelWeights q = w;
  apply_nf4_roundtrip(q, 64, true);
  const LayerWeights &before = w.layers[1], &after = q.layers[1];
  EXPECT_EQ(after.router, before.router);
  const int64_t n = int64_t(cfg.C) * cfg.expert_F;
  auto alone = [&](const float* src) {  // one matrix quantized by itself
    std::vector<float> m(src, src + n);
    Nf4Host h = nf4_quantize_ref(m.data(), 1, n, 64, true);
    nf4_dequantize_ref(m.data(), h);
    return m;
  };
  for (int e = 0; e < cfg.num_experts; ++e) {
    SCOPED_TRACE(e);
    for (int half = 0; half < 2; ++half) {
      const std::vector<float> want = alone(&before.experts_gate_up[size_t((2 * e + half) * n)]);
      EXPECT_TRUE(std::equal(want.begin(), want.end(), after.experts_gate_up.begin() + (2 * e + half) * n));
    }
    const std::vector<float> want = alone(&before.experts_down[size_t(e * n)]);
    EXPECT_TRUE(std::equal(want.begin(), want.end(), after.experts_down.begin() + e * n));
  }
  EXPECT_NE(after.experts_down, before.experts_down);
}

}  // namespace
}  // namespace loom
