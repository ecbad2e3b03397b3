// config.json -> ModelConfig: the published configs of four families (tests/fixtures/configs),
// class defaults for missing keys, both RoPE forms, sliding windows, quantization_config, each
// rejection, the BENCHMARK.md presets and the save/load round trip.
#include "models/model_config.h"

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "ops/error.h"
#include "tests/model_config_util.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using loom::ModelConfig;

namespace {

std::string fixture(const std::string& name) { return loom::test::fixtures_dir() + "/configs/" + name; }

class ModelConfigFile : public loom::test::ConfigFileTest {};

// A minimal config of the given class; `extra` ("key": value, ...) adds or replaces keys.
std::string minimal(const std::string& cls, const std::string& extra = "") {
  nlohmann::json j = {{"architectures", nlohmann::json::array({cls})}, {"hidden_size", 256}, {"intermediate_size", 512},
                      {"num_hidden_layers", 4}, {"num_attention_heads", 32}, {"vocab_size", 1000}};
  j.update(nlohmann::json::parse("{" + extra + "}"));
  return j.dump();
}

void expect_no_window(const ModelConfig& c) {
  ASSERT_EQ(int(c.window.size()), c.L);
  for (int w : c.window) EXPECT_EQ(w, 0);
}

}  // namespace

TEST(ModelConfig, Llama31_8B) {
  ModelConfig c = loom::load_model_config(fixture("llama-3.1-8b.json"));
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.V, 128256);
  EXPECT_EQ(c.C, 4096);
  EXPECT_EQ(c.F, 14336);
  EXPECT_EQ(c.L, 32);
  EXPECT_EQ(c.H, 32);
  EXPECT_EQ(c.KVH, 8);
  EXPECT_EQ(c.D, 128);
  EXPECT_EQ(c.rms_eps, 1e-5f);
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias || c.qk_norm);
  expect_no_window(c);
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.factor, 8.0);
  EXPECT_EQ(c.rope.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position, 8192);
  EXPECT_EQ(c.max_position, 131072);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.eos_ids, std::vector<int>{128001});
  EXPECT_EQ(c.bos_id, 128000);
  EXPECT_FALSE(c.bnb_4bit);
  // 32 * (2*4096*4096 + 2*4096*1024 + 3*4096*14336) + 128256*4096
  EXPECT_EQ(c.matmul_params(), 7504658432.0);
}

TEST(ModelConfig, Mistral7Bv01SlidesEveryLayer) {
  ModelConfig c = loom::load_model_config(fixture("mistral-7b-v0.1.json"));
  EXPECT_EQ(c.arch, "mistral");
  EXPECT_EQ(c.V, 32000);
  EXPECT_EQ(c.C, 4096);
  EXPECT_EQ(c.F, 14336);
  EXPECT_EQ(c.L, 32);
  EXPECT_EQ(c.H, 32);
  EXPECT_EQ(c.KVH, 8);
  EXPECT_EQ(c.D, 128);
  EXPECT_EQ(c.rms_eps, 1e-5f);
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias || c.qk_norm);
  EXPECT_EQ(c.window, std::vector<int>(32, 4096));
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.max_position, 32768);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.eos_ids, std::vector<int>{2});
  EXPECT_EQ(c.bos_id, 1);
}

TEST(ModelConfig, Qwen25_7B_InstructHasQkvBiasAndNoWindow) {
  ModelConfig c = loom::load_model_config(fixture("qwen2.5-7b-instruct.json"));
  EXPECT_EQ(c.arch, "qwen2");
  EXPECT_EQ(c.V, 152064);
  EXPECT_EQ(c.C, 3584);
  EXPECT_EQ(c.F, 18944);
  EXPECT_EQ(c.L, 28);
  EXPECT_EQ(c.H, 28);
  EXPECT_EQ(c.KVH, 4);
  EXPECT_EQ(c.D, 128);
  EXPECT_EQ(c.rms_eps, 1e-6f);
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias || c.mlp_bias || c.qk_norm);
  expect_no_window(c);  // sliding_window 131072 is ignored: use_sliding_window is false
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.max_position, 32768);
  EXPECT_EQ(c.eos_ids, std::vector<int>{151645});
  EXPECT_EQ(c.bos_id, 151643);
}

TEST(ModelConfig, Qwen3_8BHasQkNorm) {
  ModelConfig c = loom::load_model_config(fixture("qwen3-8b.json"));
  EXPECT_EQ(c.arch, "qwen3");
  EXPECT_EQ(c.V, 151936);
  EXPECT_EQ(c.C, 4096);
  EXPECT_EQ(c.F, 12288);
  EXPECT_EQ(c.L, 36);
  EXPECT_EQ(c.H, 32);
  EXPECT_EQ(c.KVH, 8);
  EXPECT_EQ(c.D, 128);
  EXPECT_EQ(c.rms_eps, 1e-6f);
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias);
  expect_no_window(c);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.max_position, 40960);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.eos_ids, std::vector<int>{151645});
  EXPECT_EQ(c.bos_id, 151643);
}

TEST(ModelConfig, RopeParametersFormOfTransformers5) {
  ModelConfig c = loom::load_model_config(fixture("llama-3.2-1b-transformers5.json"));
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.V, 128256);
  EXPECT_EQ(c.C, 2048);
  EXPECT_EQ(c.F, 8192);
  EXPECT_EQ(c.L, 16);
  EXPECT_EQ(c.H, 32);
  EXPECT_EQ(c.KVH, 8);
  EXPECT_EQ(c.D, 64);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.factor, 32.0);
  EXPECT_EQ(c.rope.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position, 8192);
  EXPECT_EQ(c.torch_dtype, "bfloat16");  // from "dtype"
  EXPECT_EQ(c.rms_eps, 1e-5f);
}

TEST_F(ModelConfigFile, LlamaDefaultsForMissingKeys) {
  ModelConfig c = load(R"({"model_type": "llama"})");
  EXPECT_EQ(c.V, 32000);
  EXPECT_EQ(c.C, 4096);
  EXPECT_EQ(c.F, 11008);
  EXPECT_EQ(c.L, 32);
  EXPECT_EQ(c.H, 32);
  EXPECT_EQ(c.KVH, 32);  // = H
  EXPECT_EQ(c.D, 128);   // = C / H
  EXPECT_EQ(c.rms_eps, 1e-6f);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.max_position, 2048);
  EXPECT_EQ(c.bos_id, 1);
  EXPECT_EQ(c.eos_ids, std::vector<int>{2});
  EXPECT_FALSE(c.tie_embeddings);
  EXPECT_EQ(c.torch_dtype, "");
  expect_no_window(c);
}

TEST_F(ModelConfigFile, MistralDefaultsForMissingKeys) {
  ModelConfig c = load(minimal("MistralForCausalLM", R"("num_attention_heads": 16)"));
  EXPECT_EQ(c.KVH, 8);
  EXPECT_EQ(c.D, 16);
  EXPECT_EQ(c.max_position, 131072);
  EXPECT_EQ(c.window, std::vector<int>(4, 4096));  // class default sliding_window
  EXPECT_EQ(c.bos_id, 1);
  expect_no_window(load(minimal("MistralForCausalLM", R"("sliding_window": null)")));
  EXPECT_EQ(load(minimal("MistralForCausalLM", R"("num_attention_heads": 16, "num_key_value_heads": null)")).KVH, 16);
}

TEST_F(ModelConfigFile, QwenDefaultsForMissingKeys) {
  ModelConfig q2 = load(minimal("Qwen2ForCausalLM"));
  EXPECT_EQ(q2.KVH, 32);
  EXPECT_EQ(q2.D, 8);  // C / H: Qwen2 has no head_dim default
  EXPECT_EQ(q2.max_position, 32768);
  EXPECT_EQ(q2.bos_id, -1);
  EXPECT_TRUE(q2.eos_ids.empty());
  EXPECT_TRUE(q2.qkv_bias);
  ModelConfig q3 = load(minimal("Qwen3ForCausalLM", R"("head_dim": null)"));
  EXPECT_EQ(q3.KVH, 32);
  EXPECT_EQ(q3.D, 128);  // class default, not C / H
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_FALSE(q3.qkv_bias);
  EXPECT_EQ(load(minimal("Qwen3ForCausalLM", R"("num_attention_heads": 16, "num_key_value_heads": null)")).KVH,
            16);  // null -> H
}

TEST_F(ModelConfigFile, ExplicitHeadDimNeedNotDivideHidden) {
  ModelConfig c = load(minimal("LlamaForCausalLM", R"("head_dim": 48, "num_key_value_heads": 2)"));
  EXPECT_EQ(c.D, 48);
  EXPECT_EQ(c.KVH, 2);
  EXPECT_EQ(c.matmul_params(), 4.0 * (256.0 * 32 * 48 * 2 + 2.0 * 256 * 2 * 48 + 3.0 * 256 * 512) + 1000.0 * 256);
}

TEST_F(ModelConfigFile, LlamaAttentionAndMlpBias) {
  ModelConfig c = load(minimal("LlamaForCausalLM", R"("attention_bias": true, "mlp_bias": true)"));
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_TRUE(c.o_bias);
  EXPECT_TRUE(c.mlp_bias);
  ModelConfig q3 = load(minimal("Qwen3ForCausalLM", R"("attention_bias": true)"));
  EXPECT_TRUE(q3.qkv_bias);
  EXPECT_TRUE(q3.o_bias);
  EXPECT_FALSE(q3.mlp_bias);
}

TEST_F(ModelConfigFile, QwenSlidingWindowFromMaxWindowLayers) {
  ModelConfig c = load(minimal("Qwen2ForCausalLM",
                               R"("use_sliding_window": true, "sliding_window": 1024, "max_window_layers": 2)"));
  EXPECT_EQ(c.window, (std::vector<int>{0, 0, 1024, 1024}));
  // Class defaults: window 4096 from layer 28 on, so none of 4 layers slides.
  expect_no_window(load(minimal("Qwen3ForCausalLM", R"("use_sliding_window": true)")));
}

TEST_F(ModelConfigFile, QwenSlidingWindowFromLayerTypes) {
  const std::string types =
      R"("layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"])";
  ModelConfig c = load(minimal("Qwen3ForCausalLM", R"("use_sliding_window": true, "sliding_window": 512, )" + types));
  EXPECT_EQ(c.window, (std::vector<int>{512, 0, 512, 0}));
  // layer_types says sliding, but use_sliding_window false turns the window off (Qwen2Config).
  expect_no_window(load(minimal("Qwen3ForCausalLM", R"("sliding_window": 512, )" + types)));
}

TEST_F(ModelConfigFile, LegacyRopeScalingTypeKeyAndLinear) {
  ModelConfig c = load(minimal("LlamaForCausalLM", R"("rope_theta": 20000.0, "rope_scaling": {"type": "linear", "factor": 2.0})"));
  EXPECT_EQ(c.rope.type, "linear");
  EXPECT_EQ(c.rope.factor, 2.0);
  EXPECT_EQ(c.rope.theta, 20000.0);
}

TEST_F(ModelConfigFile, Llama3RopeDefaultsOriginalContextToMaxPosition) {
  ModelConfig c = load(minimal("LlamaForCausalLM", R"("max_position_embeddings": 4096, "rope_parameters":
      {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 2.0})"));
  EXPECT_EQ(c.rope.original_max_position, 4096);
  EXPECT_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.high_freq_factor, 2.0);
}

TEST_F(ModelConfigFile, RopeThetaInsideDictWinsOverTopLevel) {
  ModelConfig c = load(minimal("Qwen3ForCausalLM", R"("rope_theta": 5.0, "rope_parameters": {"rope_theta": 7.0})"));
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_EQ(c.rope.theta, 7.0);
  EXPECT_EQ(load(minimal("Qwen3ForCausalLM", R"("rope_theta": 5.0, "rope_parameters": {"rope_type": "default"})")).rope.theta, 5.0);
}

TEST_F(ModelConfigFile, EosListBosNullAndDtypeKeys) {
  ModelConfig c = load(minimal("LlamaForCausalLM",
                               R"("eos_token_id": [128001, 128008, 128009], "bos_token_id": null, "torch_dtype": "float16")"));
  EXPECT_EQ(c.eos_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_EQ(c.bos_id, -1);
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_EQ(load(minimal("LlamaForCausalLM", R"("torch_dtype": "float16", "dtype": "float32")")).torch_dtype, "float32");
}

TEST_F(ModelConfigFile, RecordsBitsandbytes4bit) {
  ModelConfig c = load(minimal("LlamaForCausalLM", R"("quantization_config": {"_load_in_4bit": true,
      "_load_in_8bit": false, "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8",
      "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true, "llm_int8_enable_fp32_cpu_offload": false,
      "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": null, "llm_int8_threshold": 6.0,
      "load_in_4bit": true, "load_in_8bit": false, "quant_method": "bitsandbytes"})"));
  EXPECT_TRUE(c.bnb_4bit);
  EXPECT_TRUE(c.bnb_double_quant);
  EXPECT_EQ(c.bnb_quant_type, "nf4");
}

TEST_F(ModelConfigFile, RejectsUnsupportedRope) {
  for (const char* type : {"yarn", "dynamic", "longrope", "su"})
    expect_error(minimal("Qwen2ForCausalLM", std::string(R"("rope_scaling": {"rope_type": ")") + type +
                                                 R"(", "factor": 4.0, "original_max_position_embeddings": 32768})"),
                 {"config.json: rope_scaling.rope_type", std::string("\"") + type + "\" is not supported", "llama3"});
  expect_error(minimal("LlamaForCausalLM", R"("rope_parameters": {"rope_type": "llama3", "factor": 8.0})"),
               {"rope_parameters.low_freq_factor is missing"});
  expect_error(minimal("LlamaForCausalLM", R"("rope_parameters": {"partial_rotary_factor": 0.5})"),
               {"rope_parameters.partial_rotary_factor", "not supported"});
}

TEST_F(ModelConfigFile, RejectsUnknownArchitecture) {
  expect_error(minimal("DeepseekV3ForCausalLM"), {"config.json: architectures", "\"DeepseekV3ForCausalLM\" is not supported",
                                                 "LlamaForCausalLM"});
  expect_error(R"({"model_type": "gemma"})", {"model_type", "\"gemma\""});
  expect_error(R"({"hidden_size": 4})", {"neither architectures nor model_type"});
}

TEST_F(ModelConfigFile, RejectsInconsistentSizes) {
  expect_error(minimal("LlamaForCausalLM", R"("hidden_size": 4000, "num_attention_heads": 48)"),
               {"config.json: num_attention_heads (48) must divide hidden_size (4000) when head_dim is absent"});
  expect_error(minimal("LlamaForCausalLM", R"("num_key_value_heads": 5)"),
               {"num_key_value_heads (5) must divide num_attention_heads (32)"});
  expect_error(minimal("LlamaForCausalLM", R"("vocab_size": 0)"), {"vocab_size must be positive, found 0"});
  expect_error(minimal("LlamaForCausalLM", R"("head_dim": 33)"), {"head_dim (33) must be even"});
  expect_error(minimal("LlamaForCausalLM", R"("hidden_size": "big")"), {"config.json: hidden_size: expected an integer, found \"big\""});
}

TEST_F(ModelConfigFile, RejectsOtherActivationsAndQuantizations) {
  expect_error(minimal("LlamaForCausalLM", R"("hidden_act": "gelu")"), {"hidden_act", "\"gelu\" is not supported"});
  expect_error(minimal("LlamaForCausalLM", R"("quantization_config": {"quant_method": "gptq", "bits": 4})"),
               {"quantization_config.quant_method", "\"gptq\" is not supported"});
  expect_error(minimal("LlamaForCausalLM", R"("quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": true})"),
               {"quantization_config.load_in_8bit", "8-bit"});
  expect_error(minimal("LlamaForCausalLM", R"("quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": true})"),
               {"quantization_config.bnb_4bit_quant_type", "\"fp4\" is not supported"});
}

TEST_F(ModelConfigFile, RejectsBadLayerTypesAndJson) {
  expect_error(minimal("Qwen2ForCausalLM", R"("use_sliding_window": true, "layer_types": ["full_attention"])"),
               {"config.json: layer_types", "list of 4 entries"});
  expect_error(minimal("Qwen2ForCausalLM", R"("use_sliding_window": true,
                       "layer_types": ["full_attention", "chunked", "full_attention", "full_attention"])"),
               {"layer_types[1]", "\"chunked\""});
  expect_error("{\"model_type\": ", {"config.json: invalid JSON"});
  loom::test::expect_error([&] { loom::load_model_config(dir_ + "/missing"); },
                           {"model config", dir_ + "/missing", "no such file"});
}

// transformers: a null sliding_window is full causal attention; 0 or a negative window on a layer
// that slides would mask every key (kv_idx > q_idx - W with causality): refused. Where no layer
// slides the keys are not read, as transformers does not read them: Qwen2Config/Qwen3Config set
// sliding_window to None when use_sliding_window is false.
TEST_F(ModelConfigFile, SlidingWindowNullIsFullAttentionAndNonPositiveIsRefusedWhereUsed) {
  expect_no_window(load(minimal("MistralForCausalLM", R"("sliding_window": null)")));
  EXPECT_EQ(load(minimal("MistralForCausalLM")).window, std::vector<int>(4, 4096));  // class default
  for (const std::string w : {"0", "-1"}) {
    SCOPED_TRACE("sliding_window " + w);
    expect_error(minimal("MistralForCausalLM", R"("sliding_window": )" + w),
                 {"config.json: sliding_window must be a positive number of tokens or null", "found " + w});
    expect_error(minimal("Qwen2ForCausalLM", R"("use_sliding_window": true, "max_window_layers": 2, "sliding_window": )" + w),
                 {"config.json: sliding_window must be a positive number", "found " + w});
    expect_no_window(load(minimal("Qwen2ForCausalLM", R"("use_sliding_window": false, "sliding_window": )" + w)));
    // The window on, but max_window_layers (class default 28) leaves all 4 layers full.
    expect_no_window(load(minimal("Qwen3ForCausalLM", R"("use_sliding_window": true, "sliding_window": )" + w)));
  }
  expect_no_window(load(minimal("Qwen2ForCausalLM", R"("sliding_window": "x", "max_window_layers": "y")")));
  expect_error(minimal("Qwen2ForCausalLM", R"("use_sliding_window": true, "max_window_layers": "y")"),
               {"config.json: max_window_layers: expected an integer, found \"y\""});
  // LlamaConfig has no sliding_window: transformers ignores the key, so does loom.
  expect_no_window(load(minimal("LlamaForCausalLM", R"("sliding_window": 0)")));
}

TEST_F(ModelConfigFile, NumbersMustBePositiveAndFiniteAsFloats) {
  expect_error(minimal("LlamaForCausalLM", R"("rms_norm_eps": 0)"),
               {"config.json: rms_norm_eps must be a positive finite number, found 0"});
  // 1e-50 is positive as a double but 0 as the float the kernels use.
  expect_error(minimal("LlamaForCausalLM", R"("rms_norm_eps": 1e-50)"), {"rms_norm_eps must be a positive finite"});
  expect_error(minimal("LlamaForCausalLM", R"("rope_theta": -10000)"), {"config.json: rope_theta must be a positive"});
  expect_error(minimal("LlamaForCausalLM", R"("rope_scaling": {"rope_type": "linear", "factor": 0})"),
               {"config.json: rope_scaling.factor must be a positive finite number, found 0"});
  expect_error(minimal("LlamaForCausalLM", R"("rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1,
                                              "high_freq_factor": 4, "original_max_position_embeddings": 0})"),
               {"config.json: rope_scaling.original_max_position_embeddings must be positive, found 0"});
  expect_error(minimal("LlamaForCausalLM", R"("initializer_range": -0.02)"), {"config.json: initializer_range must be >= 0"});
  expect_error(R"({"model_type": "llama", "hidden_size": 1e400})", {"config.json: invalid JSON", "number overflow"});
}

TEST_F(ModelConfigFile, TokenIdsAreNonNegativeInt32) {
  EXPECT_EQ(load(minimal("LlamaForCausalLM", R"("eos_token_id": [2, 2147483647])")).eos_ids,
            (std::vector<int>{2, 2147483647}));
  for (const char* id : {"-1", "2147483648", "1099511627776", "1.5", "\"2\"", "[1, -3]"})
    expect_error(minimal("LlamaForCausalLM", std::string(R"("eos_token_id": )") + id),
                 {"config.json: eos_token_id: expected token ids (integers >= 0)"});
}

TEST_F(ModelConfigFile, SizesBoundedBeforeAnythingIsSizedByThem) {
  expect_error(minimal("LlamaForCausalLM", R"("num_hidden_layers": 2147483647)"),
               {"config.json: num_hidden_layers = 2147483647 is more than the 65536 layers"});
  expect_error(minimal("LlamaForCausalLM", R"("head_dim": 1073741824)"),
               {"config.json: num_attention_heads × head_dim (32 × 1073741824) overflows 32 bits"});
  expect_error(minimal("LlamaForCausalLM", R"("vocab_size": 4294967296)"), {"config.json: vocab_size: 4294967296 is out of range"});
}

TEST_F(ModelConfigFile, ConfigThatIsNotARegularFileOrNestsTooDeep) {
  std::filesystem::create_directories(dir_ + "/config.json");
  loom::test::expect_error([&] { loom::load_model_config(dir_); }, {dir_ + "/config.json", "is a folder"});
  std::filesystem::remove(dir_ + "/config.json");
  ASSERT_EQ(mkfifo((dir_ + "/config.json").c_str(), 0600), 0);
  loom::test::expect_error([&] { loom::load_model_config(dir_); }, {"config.json", "FIFO"});  // no hang
  std::filesystem::remove(dir_ + "/config.json");
  expect_error(std::string(100000, '[') + std::string(100000, ']'), {"config.json: JSON nested deeper than 64 levels"});
}

// Every parameter: Llama-3.1-8B's published count is 8,030,261,248.
TEST(ModelConfig, TotalParamsCountsEmbeddingNormsAndBiases) {
  EXPECT_EQ(loom::load_model_config(fixture("llama-3.1-8b.json")).total_params(), 8030261248.0);
  // Tied: the embedding is the head, counted once (Llama-3.2-1B: 1,235,814,400).
  EXPECT_EQ(loom::load_model_config(fixture("llama-3.2-1b-transformers5.json")).total_params(), 1235814400.0);
}

TEST(ModelConfig, PresetsMatchBenchmarkTable) {
  struct Row {
    const char* name;
    const char* arch;
    int C, F, L, H, KVH, D, V;
    bool tied;
  };
  const Row rows[] = {{"qwen3-0.6b", "qwen3", 1024, 3072, 28, 16, 8, 128, 151936, true},
                      {"llama-3.2-1b", "llama", 2048, 8192, 16, 32, 8, 64, 128256, true},
                      {"mistral-7b", "mistral", 4096, 14336, 32, 32, 8, 128, 32768, false},
                      {"llama-3.1-8b", "llama", 4096, 14336, 32, 32, 8, 128, 128256, false},
                      {"qwen3-8b", "qwen3", 4096, 12288, 36, 32, 8, 128, 151936, false},
                      {"qwen3-30b-a3b", "qwen3_moe", 2048, 6144, 48, 32, 4, 128, 151936, false},
                      {"mixtral-8x7b", "mixtral", 4096, 14336, 32, 32, 8, 128, 32000, false},
                      {"tiny", "llama", 128, 352, 4, 2, 1, 64, 512, true}};
  for (const Row& r : rows) {
    ModelConfig c = loom::preset_model_config(r.name);
    SCOPED_TRACE(r.name);
    EXPECT_EQ(c.arch, r.arch);
    EXPECT_EQ(c.C, r.C);
    EXPECT_EQ(c.F, r.F);
    EXPECT_EQ(c.L, r.L);
    EXPECT_EQ(c.H, r.H);
    EXPECT_EQ(c.KVH, r.KVH);
    EXPECT_EQ(c.D, r.D);
    EXPECT_EQ(c.V, r.V);
    EXPECT_EQ(c.tie_embeddings, r.tied);
    EXPECT_EQ(c.qk_norm, c.arch == "qwen3" || c.arch == "qwen3_moe");
    EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias);
    expect_no_window(c);
  }
  EXPECT_EQ(loom::preset_names().size(), std::size(rows));
}

TEST(ModelConfig, PresetRopeAndNorms) {
  ModelConfig l8 = loom::preset_model_config("llama-3.1-8b");
  EXPECT_EQ(l8.rope.type, "llama3");
  EXPECT_EQ(l8.rope.theta, 500000.0);
  EXPECT_EQ(l8.rope.factor, 8.0);
  EXPECT_EQ(l8.rope.original_max_position, 8192);
  EXPECT_EQ(l8.rms_eps, 1e-5f);
  ModelConfig l1 = loom::preset_model_config("llama-3.2-1b");
  EXPECT_EQ(l1.rope.type, "llama3");
  EXPECT_EQ(l1.rope.factor, 32.0);
  EXPECT_EQ(l1.rope.low_freq_factor, 1.0);
  EXPECT_EQ(l1.rope.high_freq_factor, 4.0);
  for (const char* q : {"qwen3-0.6b", "qwen3-8b"}) {
    EXPECT_EQ(loom::preset_model_config(q).rope.theta, 1e6) << q;
    EXPECT_EQ(loom::preset_model_config(q).rms_eps, 1e-6f) << q;
  }
  ModelConfig m = loom::preset_model_config("mistral-7b");
  EXPECT_EQ(m.rope.type, "default");
  EXPECT_EQ(m.rope.theta, 1e6);  // Mistral-7B-v0.3
  EXPECT_EQ(m.rms_eps, 1e-5f);
  ModelConfig t = loom::preset_model_config("tiny");
  EXPECT_EQ(t.rope.theta, 1e4);
  EXPECT_EQ(t.rms_eps, 1e-5f);
  // The fixture and the preset describe the same model.
  EXPECT_EQ(l8.matmul_params(), loom::load_model_config(fixture("llama-3.1-8b.json")).matmul_params());
}

TEST(ModelConfig, UnknownPresetListsValidNames) {
  try {
    loom::preset_model_config("llama-70b");
    FAIL() << "no error";
  } catch (const loom::Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("\"llama-70b\""), std::string::npos) << msg;
    for (const std::string& n : loom::preset_names()) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
}

TEST_F(ModelConfigFile, SaveThenLoadGivesTheSameConfig) {
  std::vector<ModelConfig> configs;
  for (const std::string& n : loom::preset_names()) configs.push_back(loom::preset_model_config(n));
  for (const char* f : {"llama-3.1-8b.json", "mistral-7b-v0.1.json", "qwen2.5-7b-instruct.json", "qwen3-8b.json",
                        "llama-3.2-1b-transformers5.json"})
    configs.push_back(loom::load_model_config(fixture(f)));
  ModelConfig sliding = loom::preset_model_config("qwen3-0.6b");
  sliding.window[20] = sliding.window[27] = 2048;
  sliding.eos_ids = {151645, 151643};
  sliding.bnb_4bit = sliding.bnb_double_quant = true;
  sliding.bnb_quant_type = "nf4";
  configs.push_back(sliding);
  ModelConfig biased = loom::preset_model_config("tiny");
  biased.qkv_bias = biased.o_bias = biased.mlp_bias = true;
  biased.rope.type = "linear";
  biased.rope.factor = 4.0;
  configs.push_back(biased);
  for (size_t i = 0; i < configs.size(); ++i) {
    SCOPED_TRACE("config " + std::to_string(i) + " (" + configs[i].arch + ")");
    loom::save_model_config(configs[i], dir_);
    loom::test::expect_same_config(loom::load_model_config(dir_ + "/config.json"), configs[i]);
  }
  EXPECT_FALSE(fs::exists(dir_ + "/config.json.tmp"));
}

TEST_F(ModelConfigFile, SaveRejectsWhatConfigJsonCannotSay) {
  ModelConfig c = loom::preset_model_config("tiny");
  c.window[1] = 64;  // llama has no sliding window
  EXPECT_THROW(loom::save_model_config(c, dir_), loom::Error);
  ModelConfig m = loom::preset_model_config("mistral-7b");
  m.window[0] = 4096;  // mistral slides on every layer or none
  EXPECT_THROW(loom::save_model_config(m, dir_), loom::Error);
  ModelConfig q = loom::preset_model_config("qwen3-8b");
  q.qk_norm = false;
  EXPECT_THROW(loom::save_model_config(q, dir_), loom::Error);
}
