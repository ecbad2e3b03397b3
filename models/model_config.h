// Architecture of a decoder, read from an HF config.json (or a BENCHMARK.md preset).
// Shape letters: C hidden, F intermediate, L layers, H heads, KVH kv heads, D head dim, V vocab;
// mixture of experts: E experts, K experts per token, FE one expert's intermediate size.
#pragma once
#include <string>
#include <vector>

#include "ops/rope.h"

namespace loom {

struct ModelConfig {
  std::string arch;  // "llama" | "mistral" | "qwen2" | "qwen3" | "qwen3_moe" | "mixtral"
  int V = 0, C = 0, F = 0, L = 0, H = 0, KVH = 0, D = 0;
  float rms_eps = 1e-6f;
  bool tie_embeddings = false;
  bool qkv_bias = false;  // q/k/v projections have a bias (Qwen2 always; Llama attention_bias)
  bool o_bias = false;    // o_proj bias (Llama attention_bias)
  bool mlp_bias = false;  // gate/up/down biases (Llama mlp_bias)
  bool qk_norm = false;   // Qwen3 q_norm / k_norm (weight (D), per head, before RoPE)
  std::vector<int> window;  // (L) sliding window per layer, 0 = full causal attention
  RopeParams rope;
  int max_position = 0;
  double initializer_range = 0.02;  // std of random matrix weights (HF initializer_range)
  std::string torch_dtype;  // "bfloat16" | "float16" | "float32" as written in config.json
  std::vector<int> eos_ids;
  int bos_id = -1;
  // quantization_config of a pre-quantized bitsandbytes checkpoint (load_in_4bit); the per-tensor
  // quant_state JSON is authoritative, these only announce it.
  bool bnb_4bit = false;
  bool bnb_double_quant = false;
  std::string bnb_quant_type;  // "nf4" (fp4 is rejected)

  // Mixture of experts ("qwen3_moe", "mixtral"; zero / empty for the dense families). The MLP of a
  // sparse layer is a router, a bias-free (E, C) matmul whose softmax picks K experts per token, and E
  // SwiGLU experts of width FE; the output is the chosen experts' outputs weighted by their router
  // probabilities. The other layers keep the dense MLP of width F (FE = F in Mixtral).
  int num_experts = 0;        // E: Qwen3-MoE num_experts (transformers 5 writes num_local_experts),
                              // Mixtral num_local_experts
  int experts_per_token = 0;  // K: num_experts_per_tok
  int expert_F = 0;           // FE: Qwen3-MoE moe_intermediate_size, Mixtral intermediate_size
  // The K chosen probabilities are divided by their sum: Qwen3-MoE's norm_topk_prob; Mixtral's
  // router always does it (MixtralTopKRouter), whatever the file says.
  bool norm_topk_prob = false;
  // (L) layer l's MLP is the sparse block. Mixtral: every layer. Qwen3-MoE: layers whose l + 1 is a
  // multiple of decoder_sparse_step and that mlp_only_layers does not list. Empty for dense models.
  std::vector<bool> moe_layers;
  // The load-balancing loss (HF load_balancing_loss_func): HF adds router_aux_loss_coef times it to
  // the loss of a forward with labels when output_router_logits is true.
  double router_aux_loss_coef = 0;
  bool output_router_logits = false;

  bool is_moe() const { return num_experts > 0; }
  bool is_moe_layer(int l) const { return size_t(l) < moe_layers.size() && moe_layers[size_t(l)]; }

  // Parameters of all matmuls including the LM head (BENCHMARK.md's P; embedding lookup excluded);
  // every expert of an MoE model, and its routers.
  double matmul_params() const;
  // The matmul parameters one token goes through: the K chosen experts of each sparse layer and its
  // router (what MFU counts for an MoE model); matmul_params() for a dense one.
  double active_matmul_params() const;
  // Every parameter: matmuls, the embedding (unless tied to the head), norms and biases.
  double total_params() const;
};

// Reads DIR/config.json (or the file itself). Errors name the file and the key.
ModelConfig load_model_config(const std::string& path);
// What HF's generate takes from DIR/generation_config.json when the caller does not say otherwise
// (GenerationConfig's defaults for keys the file lacks, and for a folder without the file).
struct GenerationDefaults {
  std::vector<int> eos_ids;  // eos_token_id (an id or a list: instruct models list their end-of-turn
                             // tokens), else config.json's
  bool do_sample = false;
  double temperature = 1.0, top_p = 1.0, min_p = 0.0, repetition_penalty = 1.0;
  int top_k = 50;
};
// Errors name the file and the key.
GenerationDefaults load_generation_defaults(const std::string& dir, const ModelConfig& cfg);
// BENCHMARK.md presets: qwen3-0.6b, llama-3.2-1b, mistral-7b, llama-3.1-8b, qwen3-8b, and the MoE
// qwen3-30b-a3b and mixtral-8x7b; plus "tiny" (the demo's model). Unknown names list the valid ones.
ModelConfig preset_model_config(const std::string& name);
std::vector<std::string> preset_names();
// Writes an HF-compatible config.json for cfg (used for exports and the demo model).
void save_model_config(const ModelConfig& cfg, const std::string& path);

}  // namespace loom
