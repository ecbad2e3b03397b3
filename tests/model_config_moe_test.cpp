// config.json -> ModelConfig for the mixture-of-experts families (Qwen3MoeForCausalLM,
// MixtralForCausalLM): the published configs, class defaults for missing keys, which layers are
// sparse, each rejection, parameter counts (total and active) against hand counts, the presets, the
// save/load round trip (the GPU path's limits: tests/gpu_moe_step_test.cpp).
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/model_config.h"
#include "models/weights.h"
#include "ops/error.h"
#include "tests/model_config_util.h"
#include "tests/test_util.h"

using loom::ModelConfig;

namespace {

// Qwen/Qwen3-30B-A3B config.json as published (transformers 4.51 wrote it).
const char* kQwen3_30B_A3B = R"({
  "architectures": ["Qwen3MoeForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "decoder_sparse_step": 1,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 6144,
  "max_position_embeddings": 40960,
  "max_window_layers": 48,
  "mlp_only_layers": [],
  "model_type": "qwen3_moe",
  "moe_intermediate_size": 768,
  "norm_topk_prob": true,
  "num_attention_heads": 32,
  "num_experts": 128,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 48,
  "num_key_value_heads": 4,
  "output_router_logits": false,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.001,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// Qwen/Qwen3-30B-A3B-Thinking-2507 as transformers 5 saves it: num_local_experts instead of
// num_experts, rope_parameters instead of rope_theta, dtype instead of torch_dtype.
const char* kQwen3_30B_A3B_Thinking_Transformers5 = R"({
  "architectures": ["Qwen3MoeForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "decoder_sparse_step": 1,
  "dtype": "bfloat16",
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 6144,
  "max_position_embeddings": 262144,
  "max_window_layers": 48,
  "mlp_only_layers": [],
  "model_type": "qwen3_moe",
  "moe_intermediate_size": 768,
  "norm_topk_prob": true,
  "num_attention_heads": 32,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 48,
  "num_key_value_heads": 4,
  "num_local_experts": 128,
  "output_router_logits": false,
  "pad_token_id": null,
  "rms_norm_eps": 1e-06,
  "rope_parameters": {"rope_theta": 10000000, "rope_type": "default"},
  "router_aux_loss_coef": 0.001,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "transformers_version": "5.7.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// mistralai/Mixtral-8x7B-v0.1 config.json as published (no head_dim: 4096 / 32).
const char* kMixtral_8x7B = R"({
  "architectures": ["MixtralForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mixtral",
  "num_attention_heads": 32,
  "num_experts_per_tok": 2,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "num_local_experts": 8,
  "output_router_logits": false,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.02,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
})";

class MoeConfigFile : public loom::test::ConfigFileTest {};

// A small config of the given class; `extra` ("key": value, ...) adds or replaces keys.
std::string minimal(const std::string& cls, const std::string& extra = "") {
  nlohmann::json j = {{"architectures", nlohmann::json::array({cls})},
                      {"hidden_size", 64},
                      {"intermediate_size", 96},
                      {"num_hidden_layers", 4},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},
                      {"vocab_size", 100}};
  if (cls == "Qwen3MoeForCausalLM") j.update({{"num_experts", 8}, {"num_experts_per_tok", 2}, {"moe_intermediate_size", 32}});
  if (cls == "MixtralForCausalLM") j.update({{"num_local_experts", 8}, {"num_experts_per_tok", 2}});
  j.update(nlohmann::json::parse("{" + extra + "}"));
  return j.dump();
}

std::vector<bool> layers(std::initializer_list<int> sparse) {
  std::vector<bool> v;
  for (int s : sparse) v.push_back(s != 0);
  return v;
}

void expect_no_window(const ModelConfig& c) {
  ASSERT_EQ(int(c.window.size()), c.L);
  for (int w : c.window) EXPECT_EQ(w, 0);
}


}  // namespace

TEST_F(MoeConfigFile, Qwen3_30B_A3B) {
  ModelConfig c = load(kQwen3_30B_A3B);
  EXPECT_EQ(c.arch, "qwen3_moe");
  EXPECT_TRUE(c.is_moe());
  EXPECT_EQ(c.V, 151936);
  EXPECT_EQ(c.C, 2048);
  EXPECT_EQ(c.F, 6144);
  EXPECT_EQ(c.L, 48);
  EXPECT_EQ(c.H, 32);
  EXPECT_EQ(c.KVH, 4);
  EXPECT_EQ(c.D, 128);
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.experts_per_token, 8);
  EXPECT_EQ(c.expert_F, 768);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.moe_layers, std::vector<bool>(48, true));
  EXPECT_EQ(c.router_aux_loss_coef, 0.001);
  EXPECT_FALSE(c.output_router_logits);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias || c.tie_embeddings);
  expect_no_window(c);  // max_window_layers 48 is not a Qwen3MoeConfig key; use_sliding_window is false
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rms_eps, 1e-6f);
  EXPECT_EQ(c.max_position, 40960);
  EXPECT_EQ(c.bos_id, 151643);
  EXPECT_EQ(c.eos_ids, std::vector<int>{151645});
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST_F(MoeConfigFile, Qwen3_30B_A3B_SavedByTransformers5) {
  ModelConfig c = load(kQwen3_30B_A3B_Thinking_Transformers5);
  EXPECT_EQ(c.num_experts, 128);  // from num_local_experts
  EXPECT_EQ(c.experts_per_token, 8);
  EXPECT_EQ(c.rope.theta, 1e7);
  EXPECT_EQ(c.max_position, 262144);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.D, 128);
}

TEST_F(MoeConfigFile, Mixtral_8x7B) {
  ModelConfig c = load(kMixtral_8x7B);
  EXPECT_EQ(c.arch, "mixtral");
  EXPECT_EQ(c.V, 32000);
  EXPECT_EQ(c.C, 4096);
  EXPECT_EQ(c.F, 14336);
  EXPECT_EQ(c.L, 32);
  EXPECT_EQ(c.H, 32);
  EXPECT_EQ(c.KVH, 8);
  EXPECT_EQ(c.D, 128);  // hidden_size / num_attention_heads
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.experts_per_token, 2);
  EXPECT_EQ(c.expert_F, 14336);  // Mixtral's experts are intermediate_size wide
  EXPECT_TRUE(c.norm_topk_prob);  // MixtralTopKRouter always renormalises
  EXPECT_EQ(c.moe_layers, std::vector<bool>(32, true));
  EXPECT_EQ(c.router_aux_loss_coef, 0.02);
  EXPECT_FALSE(c.output_router_logits);
  EXPECT_FALSE(c.qk_norm || c.qkv_bias || c.o_bias || c.mlp_bias || c.tie_embeddings);
  expect_no_window(c);  // sliding_window null
  EXPECT_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rms_eps, 1e-5f);
  EXPECT_EQ(c.max_position, 32768);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_ids, std::vector<int>{2});
}

// Qwen3MoeConfig() of transformers 5.23: it has no head_dim, so Qwen3MoeAttention's
// getattr(config, "head_dim", hidden_size // num_attention_heads) gives 2048 / 32.
TEST_F(MoeConfigFile, Qwen3MoeDefaultsForMissingKeys) {
  ModelConfig c = load(R"({"model_type": "qwen3_moe"})");
  EXPECT_EQ(c.arch, "qwen3_moe");
  EXPECT_EQ(c.V, 151936);
  EXPECT_EQ(c.C, 2048);
  EXPECT_EQ(c.F, 6144);
  EXPECT_EQ(c.L, 24);
  EXPECT_EQ(c.H, 32);
  EXPECT_EQ(c.KVH, 4);
  EXPECT_EQ(c.D, 64);
  EXPECT_EQ(c.max_position, 32768);
  EXPECT_EQ(c.bos_id, -1);
  EXPECT_TRUE(c.eos_ids.empty());
  EXPECT_EQ(c.rms_eps, 1e-6f);
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.experts_per_token, 8);
  EXPECT_EQ(c.expert_F, 768);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.moe_layers, std::vector<bool>(24, true));
  EXPECT_EQ(c.router_aux_loss_coef, 0.001);
  EXPECT_FALSE(c.output_router_logits);
  EXPECT_TRUE(c.qk_norm);
  expect_no_window(c);
}

// MixtralConfig() of transformers 5.23 (default_theta 1e6, rms_norm_eps 1e-5, sliding_window None).
TEST_F(MoeConfigFile, MixtralDefaultsForMissingKeys) {
  ModelConfig c = load(R"({"model_type": "mixtral"})");
  EXPECT_EQ(c.arch, "mixtral");
  EXPECT_EQ(c.V, 32000);
  EXPECT_EQ(c.C, 4096);
  EXPECT_EQ(c.F, 14336);
  EXPECT_EQ(c.L, 32);
  EXPECT_EQ(c.H, 32);
  EXPECT_EQ(c.KVH, 8);
  EXPECT_EQ(c.D, 128);
  EXPECT_EQ(c.max_position, 131072);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_ids, std::vector<int>{2});
  EXPECT_EQ(c.rms_eps, 1e-5f);
  EXPECT_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.experts_per_token, 2);
  EXPECT_EQ(c.expert_F, 14336);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.router_aux_loss_coef, 0.001);
  expect_no_window(c);
  EXPECT_EQ(load(minimal("MixtralForCausalLM", R"("head_dim": null)")).D, 16);  // null: hidden / heads
}

// Both classes read num_experts and num_local_experts (attribute_map); with both,
// num_local_experts wins (checked with Qwen3MoeConfig.from_dict / MixtralConfig.from_dict).
TEST_F(MoeConfigFile, EitherExpertCountKey) {
  for (const char* cls : {"Qwen3MoeForCausalLM", "MixtralForCausalLM"}) {
    SCOPED_TRACE(cls);
    nlohmann::json j = nlohmann::json::parse(minimal(cls));
    j.erase("num_experts");
    j.erase("num_local_experts");
    j["num_experts"] = 4;
    EXPECT_EQ(load(j.dump()).num_experts, 4);
    j.erase("num_experts");
    j["num_local_experts"] = 6;
    EXPECT_EQ(load(j.dump()).num_experts, 6);
    j["num_experts"] = 4;
    EXPECT_EQ(load(j.dump()).num_experts, 6);
  }
}

// Qwen3MoeDecoderLayer: sparse when (l + 1) % decoder_sparse_step == 0 and l not in
// mlp_only_layers. Each expectation below is what transformers 5.23 builds for the same keys.
TEST_F(MoeConfigFile, WhichLayersAreSparse) {
  const std::string q = "Qwen3MoeForCausalLM";
  EXPECT_EQ(load(minimal(q, R"("decoder_sparse_step": 1)")).moe_layers, layers({1, 1, 1, 1}));
  EXPECT_EQ(load(minimal(q, R"("decoder_sparse_step": 2)")).moe_layers, layers({0, 1, 0, 1}));
  EXPECT_EQ(load(minimal(q, R"("decoder_sparse_step": 3, "num_hidden_layers": 6)")).moe_layers,
            layers({0, 0, 1, 0, 0, 1}));
  EXPECT_EQ(load(minimal(q, R"("mlp_only_layers": [0, 3])")).moe_layers, layers({0, 1, 1, 0}));
  EXPECT_EQ(load(minimal(q, R"("decoder_sparse_step": 2, "mlp_only_layers": [1])")).moe_layers, layers({0, 0, 0, 1}));
  // Entries that name no layer are ignored, as transformers ignores them.
  EXPECT_EQ(load(minimal(q, R"("mlp_only_layers": [7, -1])")).moe_layers, layers({1, 1, 1, 1}));
  // A step longer than the model: no sparse layer at all, still a Qwen3-MoE model.
  ModelConfig none = load(minimal(q, R"("decoder_sparse_step": 5)"));
  EXPECT_EQ(none.moe_layers, layers({0, 0, 0, 0}));
  EXPECT_TRUE(none.is_moe());
  EXPECT_FALSE(none.is_moe_layer(3));
  // Mixtral: every layer; the Qwen3-MoE keys mean nothing to MixtralConfig.
  EXPECT_EQ(load(minimal("MixtralForCausalLM", R"("decoder_sparse_step": 2, "mlp_only_layers": [0])")).moe_layers,
            layers({1, 1, 1, 1}));
}

TEST_F(MoeConfigFile, RouterKeys) {
  ModelConfig q = load(minimal("Qwen3MoeForCausalLM", R"("norm_topk_prob": true, "router_aux_loss_coef": 0.05,
                                                        "output_router_logits": true, "router_jitter_noise": 0.5)"));
  EXPECT_TRUE(q.norm_topk_prob);
  EXPECT_EQ(q.router_aux_loss_coef, 0.05);
  EXPECT_TRUE(q.output_router_logits);  // router_jitter_noise is not a Qwen3MoeConfig key: ignored
  ModelConfig m = load(minimal("MixtralForCausalLM", R"("norm_topk_prob": false, "router_jitter_noise": 0.0,
                                                       "output_router_logits": true, "router_aux_loss_coef": 0)"));
  EXPECT_TRUE(m.norm_topk_prob);  // MixtralTopKRouter renormalises whatever the file says
  EXPECT_TRUE(m.output_router_logits);
  EXPECT_EQ(m.router_aux_loss_coef, 0.0);
}

TEST_F(MoeConfigFile, SlidingWindowOnEveryLayerOrNone) {
  EXPECT_EQ(load(minimal("MixtralForCausalLM", R"("sliding_window": 4096)")).window, std::vector<int>(4, 4096));
  // Qwen3MoeConfig has neither layer_types nor max_window_layers: every layer slides.
  EXPECT_EQ(load(minimal("Qwen3MoeForCausalLM", R"("use_sliding_window": true, "sliding_window": 512,
                                                  "max_window_layers": 2,
                                                  "layer_types": ["full_attention", "full_attention",
                                                                  "full_attention", "full_attention"])"))
                .window,
            std::vector<int>(4, 512));
  EXPECT_EQ(load(minimal("Qwen3MoeForCausalLM", R"("use_sliding_window": true)")).window,
            std::vector<int>(4, 4096));  // class default sliding_window
  expect_no_window(load(minimal("Qwen3MoeForCausalLM", R"("sliding_window": 0)")));  // use_sliding_window false
  expect_no_window(load(minimal("Qwen3MoeForCausalLM", R"("use_sliding_window": true, "sliding_window": null)")));
  expect_error(minimal("MixtralForCausalLM", R"("sliding_window": 0)"),
               {"config.json: sliding_window must be a positive number of tokens or null"});
}

TEST_F(MoeConfigFile, AttentionBiasOnlyWhereTheClassHasIt) {
  ModelConfig q = load(minimal("Qwen3MoeForCausalLM", R"("attention_bias": true)"));
  EXPECT_TRUE(q.qkv_bias && q.o_bias);
  EXPECT_FALSE(q.mlp_bias);
  ModelConfig m = load(minimal("MixtralForCausalLM", R"("attention_bias": true)"));  // MixtralAttention: bias=False
  EXPECT_FALSE(m.qkv_bias || m.o_bias || m.mlp_bias);
}

TEST_F(MoeConfigFile, RejectsBadExpertKeys) {
  const std::string q = "Qwen3MoeForCausalLM", m = "MixtralForCausalLM";
  expect_error(minimal(q, R"("num_experts": 0)"),
               {"config.json: num_experts must be positive, found 0", "use Qwen3ForCausalLM"});
  expect_error(minimal(m, R"("num_local_experts": -2)"), {"config.json: num_local_experts must be positive, found -2"});
  expect_error(minimal(q, R"("num_experts": "8")"), {"config.json: num_experts: expected an integer, found \"8\""});
  expect_error(minimal(q, R"("num_experts": null)"), {"config.json: num_experts: expected an integer, found null"});
  expect_error(minimal(m, R"("num_local_experts": 1000000)"),
               {"config.json: num_local_experts = 1000000 is more than the 65536 experts"});
  expect_error(minimal(q, R"("num_experts_per_tok": 9)"),
               {"config.json: num_experts_per_tok (9) must be between 1 and the number of experts (8)"});
  expect_error(minimal(m, R"("num_experts_per_tok": 0)"), {"config.json: num_experts_per_tok (0) must be between 1"});
  expect_error(minimal(q, R"("moe_intermediate_size": 0)"), {"config.json: moe_intermediate_size must be positive"});
  expect_error(minimal(m, R"("intermediate_size": 0)"), {"config.json: intermediate_size must be positive"});
  expect_error(minimal(q, R"("decoder_sparse_step": 0)"), {"config.json: decoder_sparse_step must be >= 1"});
  expect_error(minimal(q, R"("mlp_only_layers": "0")"), {"config.json: mlp_only_layers: expected a list"});
  expect_error(minimal(q, R"("mlp_only_layers": [0, 1.5])"), {"config.json: mlp_only_layers[1]: expected a layer index"});
  expect_error(minimal(q, R"("norm_topk_prob": 1)"), {"config.json: norm_topk_prob: expected true or false"});
  expect_error(minimal(m, R"("output_router_logits": "yes")"), {"config.json: output_router_logits: expected true"});
  expect_error(minimal(q, R"("router_aux_loss_coef": -0.1)"),
               {"config.json: router_aux_loss_coef must be a finite number >= 0, found -0.1"});
  expect_error(minimal(m, R"("router_jitter_noise": 0.01)"),
               {"config.json: router_jitter_noise = 0.01", "random noise", "set it to 0"});
}

// transformers 5's strict config classes refuse a null num_key_value_heads (the dense families map
// it to num_attention_heads); Qwen3MoeAttention would use a null head_dim as it is and fail.
TEST_F(MoeConfigFile, RejectsNullsTransformersRefuses) {
  for (const char* cls : {"Qwen3MoeForCausalLM", "MixtralForCausalLM"})
    expect_error(minimal(cls, R"("num_key_value_heads": null)"),
                 {"config.json: num_key_value_heads: expected an integer, found null", cls});
  expect_error(minimal("Qwen3MoeForCausalLM", R"("head_dim": null)"),
               {"config.json: head_dim: expected an integer, found null", "Qwen3MoeAttention"});
}

TEST_F(MoeConfigFile, UnknownArchitectureListsTheMoeFamilies) {
  expect_error(minimal("DeepseekV3ForCausalLM"), {"\"DeepseekV3ForCausalLM\" is not supported", "Qwen3MoeForCausalLM",
                                                  "MixtralForCausalLM"});
  expect_error(R"({"model_type": "qwen2_moe"})", {"\"qwen2_moe\" is not supported", "qwen3_moe or mixtral"});
}

// Hand counts (C hidden, F dense MLP, FE expert, E experts, K per token):
//   attention per layer = C·H·D + 2·C·KVH·D + H·D·C
//   sparse layer MLP    = E·3·C·FE (K·3·C·FE active) + E·C (router)
//   dense layer MLP     = 3·C·F
TEST(MoeParams, Qwen3_30B_A3B) {
  ModelConfig c = loom::preset_model_config("qwen3-30b-a3b");
  // attention 2048·4096 + 2·2048·512 + 4096·2048 = 18,874,368; experts 128·3·2048·768 = 603,979,776;
  // router 128·2048 = 262,144: 48 · 623,116,288 = 29,909,581,824, + lm_head 151936·2048 = 311,164,928.
  EXPECT_EQ(c.matmul_params(), 30220746752.0);
  // 48 · (18,874,368 + 8·3·2048·768 + 262,144) + 311,164,928.
  EXPECT_EQ(c.active_matmul_params(), 3041656832.0);
  // + 48 · (2·2048 norms + 2·128 q/k norms) + embedding 311,164,928 + final norm 2048: Qwen's "30.5B" ...
  EXPECT_EQ(c.total_params(), 30532122624.0);
  // ... and "3.3B activated": the active matmuls plus what every token reads besides.
  EXPECT_EQ(c.active_matmul_params() + (c.total_params() - c.matmul_params()), 3353032704.0);
}

TEST(MoeParams, Mixtral_8x7B) {
  ModelConfig c = loom::preset_model_config("mixtral-8x7b");
  // attention 2·4096·4096 + 2·4096·1024 = 41,943,040; experts 8·3·4096·14336 = 1,409,286,144; router
  // 8·4096: 32 · 1,451,261,952 = 46,440,382,464, + lm_head 32000·4096 = 131,072,000.
  EXPECT_EQ(c.matmul_params(), 46571454464.0);
  // 32 · (41,943,040 + 2·3·4096·14336 + 32,768) + 131,072,000.
  EXPECT_EQ(c.active_matmul_params(), 12748587008.0);
  // + 32 · 2·4096 norms + embedding 131,072,000 + final norm 4096: Mistral AI's "46.7B" ...
  EXPECT_EQ(c.total_params(), 46702792704.0);
  // ... and "12.9B active": the active matmuls plus what every token reads besides.
  EXPECT_EQ(c.active_matmul_params() + (c.total_params() - c.matmul_params()), 12879925248.0);
}

TEST_F(MoeConfigFile, ParamsOfMixedLayersCountEachKind) {
  // C 64, H 4, KVH 2, D 16, F 96, E 8, K 2, FE 32, V 100, layers 1 and 3 sparse (step 2).
  ModelConfig c = load(minimal("Qwen3MoeForCausalLM", R"("decoder_sparse_step": 2)"));
  const double attention = 64.0 * 64 + 2.0 * 64 * 32 + 64.0 * 64;  // 12,288
  const double dense = 3.0 * 64 * 96;                               // 18,432
  const double experts = 8 * 3.0 * 64 * 32, active = 2 * 3.0 * 64 * 32, router = 8.0 * 64;
  EXPECT_EQ(c.matmul_params(), 4 * attention + 2 * dense + 2 * (experts + router) + 100.0 * 64);
  EXPECT_EQ(c.active_matmul_params(), 4 * attention + 2 * dense + 2 * (active + router) + 100.0 * 64);
  EXPECT_EQ(c.total_params(), c.matmul_params() + 4 * (2 * 64.0 + 2 * 16.0) + 100.0 * 64 + 64);
  // A dense model is all active.
  ModelConfig d = loom::preset_model_config("qwen3-8b");
  EXPECT_EQ(d.active_matmul_params(), d.matmul_params());
}

TEST_F(MoeConfigFile, PresetsAreThePublishedConfigs) {
  loom::test::expect_same_config(loom::preset_model_config("qwen3-30b-a3b"), load(kQwen3_30B_A3B));
  loom::test::expect_same_config(loom::preset_model_config("mixtral-8x7b"), load(kMixtral_8x7B));
}

TEST_F(MoeConfigFile, SaveThenLoadGivesTheSameConfig) {
  std::vector<ModelConfig> configs = {loom::preset_model_config("qwen3-30b-a3b"),
                                      loom::preset_model_config("mixtral-8x7b"), load(kQwen3_30B_A3B),
                                      load(kMixtral_8x7B)};
  ModelConfig mixed = load(minimal("Qwen3MoeForCausalLM", R"("decoder_sparse_step": 2, "mlp_only_layers": [3],
      "use_sliding_window": true, "sliding_window": 128, "attention_bias": true, "output_router_logits": true,
      "norm_topk_prob": true, "router_aux_loss_coef": 0.25)"));
  EXPECT_EQ(mixed.moe_layers, layers({0, 1, 0, 0}));
  configs.push_back(mixed);
  configs.push_back(load(minimal("MixtralForCausalLM", R"("sliding_window": 64)")));
  for (size_t i = 0; i < configs.size(); ++i) {
    SCOPED_TRACE("config " + std::to_string(i) + " (" + configs[i].arch + ")");
    loom::save_model_config(configs[i], dir_);
    loom::test::expect_same_config(loom::load_model_config(dir_), configs[i]);
  }
}

TEST_F(MoeConfigFile, SaveRejectsWhatConfigJsonCannotSay) {
  ModelConfig m = loom::preset_model_config("mixtral-8x7b");
  m.moe_layers[3] = false;  // Mixtral has no dense layer
  loom::test::expect_error([&] { loom::save_model_config(m, dir_); }, {"every layer is sparse"});
  ModelConfig q = loom::preset_model_config("qwen3-30b-a3b");
  q.window[0] = 1024;  // Qwen3-MoE slides on every layer or on none
  loom::test::expect_error([&] { loom::save_model_config(q, dir_); }, {"every layer or to none"});
  ModelConfig d = loom::preset_model_config("qwen3-8b");
  d.num_experts = 8;  // a dense family has no expert keys
  loom::test::expect_error([&] { loom::save_model_config(d, dir_); }, {"qwen3 has no experts"});
}

// tests/fixtures/moe (tools/make_moe_fixtures.py): config.json as transformers 5.23 writes them
// (num_local_experts, rope_parameters, dtype).
TEST(MoeFixtures, ConfigsAsTransformers5WritesThem) {
  const std::string dir = loom::test::fixtures_dir() + "/moe/";
  ModelConfig q = loom::load_model_config(dir + "qwen3_moe/model");
  EXPECT_EQ(q.arch, "qwen3_moe");
  EXPECT_EQ(q.num_experts, 4);
  EXPECT_EQ(q.experts_per_token, 2);
  EXPECT_EQ(q.expert_F, 48);
  EXPECT_EQ(q.F, 96);
  EXPECT_EQ(q.moe_layers, layers({1, 0, 1}));  // mlp_only_layers [1]
  EXPECT_FALSE(q.norm_topk_prob);
  EXPECT_TRUE(q.output_router_logits);
  EXPECT_EQ(q.router_aux_loss_coef, 0.05);
  EXPECT_EQ(q.D, 64);
  EXPECT_EQ(q.rope.theta, 1e6);
  expect_no_window(q);
  for (const char* model : {"mixtral/model", "mixtral/model_fused"}) {
    SCOPED_TRACE(model);
    ModelConfig m = loom::load_model_config(dir + model);
    EXPECT_EQ(m.arch, "mixtral");
    EXPECT_EQ(m.num_experts, 4);
    EXPECT_EQ(m.experts_per_token, 2);
    EXPECT_EQ(m.expert_F, 48);
    EXPECT_EQ(m.moe_layers, layers({1, 1}));
    EXPECT_TRUE(m.norm_topk_prob);
    EXPECT_TRUE(m.output_router_logits);
    EXPECT_EQ(m.window, (std::vector<int>{8, 8}));
    EXPECT_EQ(m.rms_eps, 1e-5f);
  }
}

