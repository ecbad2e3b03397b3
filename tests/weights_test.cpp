// Base weights (models/weights.h): one layout of a layer's tensors serves loading, the checkpoint
// audit, random init and saving; the audit runs once per load.
#include "models/weights.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "models/model_source.h"
#include "tests/hostile.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

std::string fresh_dir(const std::string& name) { return test::fresh_temp_dir("weights_test_" + name); }

void expect_same_layers(const ModelWeights& a, const ModelWeights& b) {
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    const LayerWeights &x = a.layers[l], &y = b.layers[l];
    for (int t = 0; t < 7; ++t) EXPECT_EQ(*projection(x, t), *projection(y, t)) << "layer " << l << " target " << t;
    EXPECT_EQ(x.ln1, y.ln1);
    EXPECT_EQ(x.ln2, y.ln2);
    EXPECT_EQ(x.q_bias, y.q_bias);
    EXPECT_EQ(x.k_bias, y.k_bias);
    EXPECT_EQ(x.v_bias, y.v_bias);
    EXPECT_EQ(x.o_bias, y.o_bias);
    EXPECT_EQ(x.gate_bias, y.gate_bias);
    EXPECT_EQ(x.up_bias, y.up_bias);
    EXPECT_EQ(x.down_bias, y.down_bias);
    EXPECT_EQ(x.q_norm, y.q_norm);
    EXPECT_EQ(x.k_norm, y.k_norm);
  }
}

// Every optional tensor on (Llama's attention and MLP biases, Qwen3's q/k norms with attention
// biases): random weights saved in fp32 and loaded back are the same numbers, as random init,
// save, the audit and load all walk the same tensor list.
TEST(Weights, EveryOptionalTensorSavesAndLoadsBack) {
  ModelConfig llama = preset_model_config("tiny");
  llama.qkv_bias = llama.o_bias = llama.mlp_bias = true;
  ModelConfig qwen3 = preset_model_config("tiny");
  qwen3.arch = "qwen3";
  qwen3.qkv_bias = qwen3.o_bias = qwen3.qk_norm = true;
  for (const ModelConfig& m : {llama, qwen3}) {
    SCOPED_TRACE(m.arch);
    const ModelWeights w = random_weights(m, 7);
    const LayerWeights& first = w.layers[0];
    EXPECT_EQ(first.o_bias, std::vector<float>(size_t(m.C), 0.f));  // biases 0, norms 1
    EXPECT_EQ(first.down_bias.size(), m.mlp_bias ? size_t(m.C) : 0u);
    EXPECT_EQ(first.k_norm, m.qk_norm ? std::vector<float>(size_t(m.D), 1.f) : std::vector<float>());
    const std::string dir = fresh_dir("round_trip_" + m.arch);
    save_weights(dir, m, w, DType::F32);
    const ModelConfig back_cfg = load_model_config(dir);
    const ModelWeights back = load_weights(dir, back_cfg);
    EXPECT_EQ(back.embed, w.embed);
    EXPECT_EQ(back.final_norm, w.final_norm);
    expect_same_layers(w, back);
  }
}

// resolve_model_config audits the checkpoint and the loader takes that opened checkpoint instead
// of parsing the headers and auditing again: a file replaced after the audit is not reopened. The
// next load, with nothing kept, opens the folder afresh and sees the replacement.
TEST(Weights, CheckpointAuditedOnceIsReusedByTheLoader) {
  const std::string dir = fresh_dir("audit_once");
  fs::copy(test::fixtures_dir() + "/hf/llama/model", dir, fs::copy_options::recursive);
  ModelOptions section;
  section.path = dir;
  const ModelConfig cfg = resolve_model_config(section);
  // A new file in its place (rename: the audited mapping keeps the old one).
  test::write_file(dir, "replacement", "not a safetensors file");
  fs::rename(dir + "/replacement", dir + "/model.safetensors");
  EXPECT_EQ(load_weights(dir, cfg).layers.size(), size_t(cfg.L));
  test::expect_error([&] { load_weights(dir, cfg); }, {"model.safetensors", "this is not a safetensors file"});
}

// A kept checkpoint is used only for the folder and tensor list it was audited for.
TEST(Weights, AuditedCheckpointIsNotUsedForAnotherConfig) {
  const std::string dir = fresh_dir("audit_other");
  fs::copy(test::fixtures_dir() + "/hf/llama/model", dir, fs::copy_options::recursive);
  const ModelConfig cfg = load_model_config(dir);
  audit_checkpoint(dir, cfg);
  ModelConfig fewer = cfg;
  fewer.L = 1;
  fewer.window.resize(1);
  test::expect_error([&] { WeightSource::checkpoint(dir, fewer); },
                     {"the model does not use", "num_hidden_layers is 1 but the checkpoint has 2 layers"});
}

}  // namespace
}  // namespace loom
