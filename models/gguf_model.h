// A model as a GGUF file llama.cpp loads, laid out as llama.cpp's convert_hf_to_gguf.py lays out
// an HF checkpoint of the same model:
//   architecture  llama (Llama, Mistral), qwen2, qwen3;
//   metadata      general.{architecture, type, name, file_type, quantization_version},
//                 <arch>.{context_length, embedding_length, block_count, feed_forward_length,
//                 attention.head_count, attention.head_count_kv, attention.key_length,
//                 attention.value_length, attention.layer_norm_rms_epsilon, rope.freq_base},
//                 llama: vocab_size, rope.dimension_count; linear rope scaling: rope.scaling.*;
//                 the tokenizer (models/gguf_vocab.h);
//   tensors       token_embd, output_norm, output (absent when tied), rope_freqs (llama3 rope
//                 scaling: the per-frequency divisors), blk.N.{attn_norm, attn_q, attn_k, attn_v,
//                 attn_output, attn_q_norm, attn_k_norm, ffn_norm, ffn_gate, ffn_up, ffn_down}
//                 (+ .bias where the model has biases).
// llama.cpp's llama architecture rotates interleaved pairs (x[2i], x[2i+1]) where HF rotates
// (x[i], x[i + D/2]), so the q and k rows (weights and biases) of each head are permuted as the
// converter's LlamaModel.permute does; qwen2/qwen3 use HF's layout (NEOX rope) unchanged.
// Types: matrices in the chosen type (Q8_0 falls back to F16 for rows that are not whole blocks of
// 32, as the converter does); norms, biases and rope_freqs stay F32.
#pragma once
#include <string>
#include <vector>

#include "models/gguf.h"
#include "models/model_config.h"
#include "models/weights.h"

namespace loom {

// "bf16" | "f16" | "q8_0" (output.gguf_type, build/export --gguf-type) -> the GGUF type.
GgmlType gguf_type_from_name(const std::string& name);
// The names above, for messages and config checks.
const std::vector<std::string>& gguf_type_names();

struct GgufModelSource {
  std::string name;          // general.name
  std::string tokenizer;     // tokenizer file or folder (models/gguf_vocab.h); "": none (a preset)
  std::string config_json;   // the base's config.json for special token ids, or "" (a preset)
};

// Writes `w` (fp32, merged) as a GGUF file at path. Returns notes for the user (what llama.cpp will
// not reproduce, e.g. a sliding window its architecture does not implement), one line each.
std::vector<std::string> write_gguf_model(const std::string& path, const ModelConfig& mc, const ModelWeights& w,
                                          GgmlType type, const GgufModelSource& source);

// The converter's LlamaModel.permute on a (n_head·D, cols) matrix or (n_head·D) bias: within each
// head, rows (0, D/2, 1, D/2 + 1, ...) move to (0, 1, 2, 3, ...).
std::vector<float> permute_rope_rows(const std::vector<float>& w, int n_head, int64_t cols);

}  // namespace loom
