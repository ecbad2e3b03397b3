// Frozen base weights on the host in fp32, for the CPU reference path (and as the source the GPU
// path uploads/quantizes). Names and shapes follow the HF checkpoint (FORMATS.md §2); weights are
// (out, in) as torch nn.Linear.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/model_config.h"
#include "models/safetensors.h"

namespace loom {

struct LayerWeights {
  std::vector<float> ln1, ln2;                 // (C) input_layernorm, post_attention_layernorm
  std::vector<float> q, k, v, o;               // (H·D, C), (KVH·D, C) ×2, (C, H·D)
  std::vector<float> gate, up, down;           // (F, C) ×2, (C, F); empty in a sparse (MoE) layer
  std::vector<float> q_bias, k_bias, v_bias;   // (H·D), (KVH·D) — empty when absent
  std::vector<float> o_bias;                   // (C) — Llama attention_bias only
  std::vector<float> gate_bias, up_bias, down_bias;  // Llama mlp_bias only
  std::vector<float> q_norm, k_norm;           // (D) — Qwen3 only
  // A sparse layer of an MoE model (cfg.is_moe_layer(l)), in transformers 5's in-memory layout
  // whatever the checkpoint's: empty in a dense layer.
  std::vector<float> router;           // (E, C) mlp.gate.weight (frozen)
  std::vector<float> experts_gate_up;  // (E, 2·FE, C): expert e's gate rows (FE), then its up rows (FE)
  std::vector<float> experts_down;     // (E, C, FE)
};

struct ModelWeights {
  std::vector<float> embed;       // (V, C)
  std::vector<float> final_norm;  // (C)
  std::vector<float> lm_head;     // (V, C); empty when tied (use embed)
  std::vector<LayerWeights> layers;
  const float* head() const { return lm_head.empty() ? embed.data() : lm_head.data(); }
};

// A model's weights one group at a time (embedding, final norm, head, one layer), so that the GPU
// loader can upload layer by layer without holding the whole fp32 model in host memory.
class Checkpoint;
struct LoraLayout;  // models/lora.h
class WeightSource {
 public:
  // The checkpoint of model_dir checked against cfg (check_checkpoint_tensors): the one the last
  // audit_checkpoint of this folder and tensor list opened, else opened and audited now.
  static WeightSource checkpoint(const std::string& model_dir, const ModelConfig& cfg);
  // See random_weights().
  static WeightSource random(const ModelConfig& cfg, uint64_t seed);
  // The same weights with a LoRA adapter merged into every layer as it is read (merge_lora_layer):
  // the base a GPU decodes with the adapter off, one GEMM per projection instead of three.
  WeightSource with_merged_adapter(const LoraLayout& layout, std::vector<float> lora) const;
  std::vector<float> embed() const;       // (V, C)
  std::vector<float> final_norm() const;  // (C)
  std::vector<float> lm_head() const;     // (V, C); empty when the embeddings are tied
  LayerWeights layer(int l) const;

 private:
  ModelConfig cfg_;
  std::shared_ptr<const Checkpoint> ck_;  // null for random weights
  bool fused_experts_ = false;             // ck_ holds an MoE's experts in the fused form
  uint64_t seed_ = 0;
  struct MergedAdapter;
  std::shared_ptr<const MergedAdapter> merged_;  // null: the weights as stored
};

// The expert tensors of an MoE checkpoint, both of which transformers 5.23 loads:
//   per-expert (the published checkpoints, save_pretrained's default): model.layers.L.mlp.experts.N.
//     {gate_proj,up_proj,down_proj}.weight (Qwen3-MoE) / model.layers.L.block_sparse_moe.experts.N.{w1,w3,w2}.weight
//     (Mixtral), router mlp.gate.weight / block_sparse_moe.gate.weight; each may be bitsandbytes NF4;
//   fused (save_original_format=False): model.layers.L.mlp.experts.gate_up_proj (E, 2·FE, C) and
//     .down_proj (E, C, FE), no ".weight", router mlp.gate.weight, for both families; plain dtypes only.
// A checkpoint is one or the other (the first fused tensor found decides, then every sparse layer must
// follow it). Weights are saved in the per-expert form.
// Throws unless ck holds exactly the tensors cfg describes, with cfg's shapes, from the headers alone
// (nothing is allocated by the config's sizes): a missing or mis-shaped tensor names itself, the
// config.json keys behind its shape and the model sizes; a tensor the model would not use (a
// config with fewer layers than the checkpoint) is an error too. WeightSource::checkpoint runs it.
void check_checkpoint_tensors(const Checkpoint& ck, const ModelConfig& cfg);
// Opens the checkpoint of model_dir and checks it against cfg, as soon as cfg is read and before
// anything is sized by it (LoRA, data, weights). The checkpoint is kept for the next
// WeightSource::checkpoint (load_weights) of the same folder, so that a run parses the headers and
// audits once: the audit compares a tied lm_head byte for byte with the embedding (up to ~1 GB).
void audit_checkpoint(const std::string& model_dir, const ModelConfig& cfg);
// Every tensor of an HF checkpoint (bf16/fp16/fp32, or pre-quantized bitsandbytes NF4, which is
// dequantized). Errors name the tensor and the file.
ModelWeights load_weights(const std::string& model_dir, const ModelConfig& cfg);
// Random weights for a preset (no checkpoint): matrices U(-a, a) with std cfg.initializer_range (HF.s
// initializer_range), norms 1, biases 0; every value rounded to bf16 so that every path sees the
// same numbers. Deterministic from seed (ops/random.h), identical to the GPU initialiser.
ModelWeights random_weights(const ModelConfig& cfg, uint64_t seed);
// QLoRA on the reference path: every projection matrix replaced by dequantize(quantize_nf4(W)),
// exactly what the GPU computes with (embedding, norms, biases and LM head stay as they are). Each
// expert's gate, up and down are quantized as three matrices of their own, as the Linear4bit modules of
// a per-expert checkpoint; the router stays unquantized (transformers 5 holds it as a plain parameter).
void apply_nf4_roundtrip(ModelWeights& w, int blocksize, bool double_quant);
// Writes the weights as an HF checkpoint (config.json + model.safetensors with every tensor in `dtype`:
// BF16, F16 or F32; no lm_head.weight when the embeddings are tied), e.g. a merged export.
void save_weights(const std::string& dir, const ModelConfig& cfg, const ModelWeights& w, DType dtype = DType::BF16);

// Pointers to the seven projection matrices of a layer in LoraTarget order (q k v o gate up down);
// gate, up and down are empty in a sparse layer.
std::vector<float>* projection(LayerWeights& lw, int target);
const std::vector<float>* projection(const LayerWeights& lw, int target);

}  // namespace loom
