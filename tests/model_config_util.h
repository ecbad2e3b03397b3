// What the config.json tests share: a fixture that writes text as config.json and loads it, and
// field-by-field equality of two ModelConfigs (every field a config.json sets).
#pragma once
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "models/model_config.h"
#include "tests/test_util.h"

namespace loom::test {

class ConfigFileTest : public TempDirTest {
 protected:
  // Writes text as DIR/config.json and loads it.
  ModelConfig load(const std::string& text) {
    std::ofstream(dir_ + "/config.json") << text;
    return load_model_config(dir_);
  }
  void expect_error(const std::string& text, const std::vector<std::string>& parts) {
    SCOPED_TRACE(text);
    test::expect_error([&] { load(text); }, parts);
  }
};

inline void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.V, b.V);
  EXPECT_EQ(a.C, b.C);
  EXPECT_EQ(a.F, b.F);
  EXPECT_EQ(a.L, b.L);
  EXPECT_EQ(a.H, b.H);
  EXPECT_EQ(a.KVH, b.KVH);
  EXPECT_EQ(a.D, b.D);
  EXPECT_EQ(a.rms_eps, b.rms_eps);
  EXPECT_EQ(a.tie_embeddings, b.tie_embeddings);
  EXPECT_EQ(a.qkv_bias, b.qkv_bias);
  EXPECT_EQ(a.o_bias, b.o_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.qk_norm, b.qk_norm);
  EXPECT_EQ(a.window, b.window);
  EXPECT_EQ(a.rope.type, b.rope.type);
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.rope.factor, b.rope.factor);
  EXPECT_EQ(a.rope.low_freq_factor, b.rope.low_freq_factor);
  EXPECT_EQ(a.rope.high_freq_factor, b.rope.high_freq_factor);
  EXPECT_EQ(a.rope.original_max_position, b.rope.original_max_position);
  EXPECT_EQ(a.max_position, b.max_position);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(a.eos_ids, b.eos_ids);
  EXPECT_EQ(a.bos_id, b.bos_id);
  EXPECT_EQ(a.bnb_4bit, b.bnb_4bit);
  EXPECT_EQ(a.bnb_double_quant, b.bnb_double_quant);
  EXPECT_EQ(a.bnb_quant_type, b.bnb_quant_type);
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_EQ(a.experts_per_token, b.experts_per_token);
  EXPECT_EQ(a.expert_F, b.expert_F);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_EQ(a.moe_layers, b.moe_layers);
  EXPECT_EQ(a.router_aux_loss_coef, b.router_aux_loss_coef);
  EXPECT_EQ(a.output_router_logits, b.output_router_logits);
}

}  // namespace loom::test
