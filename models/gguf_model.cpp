#include "models/gguf_model.h"

#include <cmath>

#include "models/gguf_vocab.h"
#include "models/lora.h"
#include "ops/error.h"

namespace loom {

namespace {

// general.file_type (llama.cpp's LlamaFileType) of each tensor type loom writes.
uint32_t file_type(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 0;
    case GgmlType::F16: return 1;
    case GgmlType::Q8_0: return 7;
    case GgmlType::BF16: return 32;
  }
  return 0;
}

std::string gguf_arch(const ModelConfig& mc) {
  if (mc.arch == "llama" || mc.arch == "mistral") return "llama";  // the converter maps Mistral to llama
  if (mc.arch == "qwen2" || mc.arch == "qwen3") return mc.arch;
  fail("GGUF export: architecture '", mc.arch, "' has no llama.cpp mapping in loom (llama, mistral, qwen2, qwen3)");
}

// The converter's llama3 rope_freqs: for each rotary frequency the divisor llama.cpp applies, in
// fp32 as the converter's torch code computes it.
std::vector<float> llama3_rope_factors(const RopeParams& p, int D) {
  std::vector<float> factors;
  const float low_wavelen = float(p.original_max_position) / float(p.low_freq_factor);
  const float high_wavelen = float(p.original_max_position) / float(p.high_freq_factor);
  for (int i = 0; i < D; i += 2) {
    const float freq = 1.f / std::pow(float(p.theta), float(i) / float(D));
    const float wavelen = 2.f * float(M_PI) / freq;
    if (wavelen < high_wavelen) {
      factors.push_back(1.f);
    } else if (wavelen > low_wavelen) {
      factors.push_back(float(p.factor));
    } else {
      const float smooth = (float(p.original_max_position) / wavelen - float(p.low_freq_factor)) /
                           float(p.high_freq_factor - p.low_freq_factor);
      factors.push_back(1.f / ((1.f - smooth) / float(p.factor) + smooth));
    }
  }
  return factors;
}

class TensorSink {
 public:
  TensorSink(GgufWriter& out, GgmlType type) : out_(out), type_(type) {}

  // A matrix (rows, cols) in the file's type; Q8_0 rows that are not whole blocks fall back to F16.
  void matrix(const std::string& name, const std::vector<float>& v, int64_t rows, int64_t cols) {
    const GgmlType t = type_ == GgmlType::Q8_0 && cols % kQ8Block != 0 ? GgmlType::F16 : type_;
    out_.add_tensor({name, t, {rows, cols}, encode_values(v, t)});
  }
  // Norms, biases and rope factors: F32, as the converter keeps every 1-D tensor.
  void vector(const std::string& name, const std::vector<float>& v) {
    if (v.empty()) return;
    out_.add_tensor({name, GgmlType::F32, {int64_t(v.size())}, encode_values(v, GgmlType::F32)});
  }

 private:
  GgufWriter& out_;
  GgmlType type_;
};

void add_hparams(GgufWriter& g, const std::string& arch, const ModelConfig& mc) {
  const std::string a = arch + ".";
  g.set(a + "block_count", uint32_t(mc.L));
  g.set(a + "context_length", uint32_t(mc.max_position));
  g.set(a + "embedding_length", uint32_t(mc.C));
  g.set(a + "feed_forward_length", uint32_t(mc.F));
  g.set(a + "attention.head_count", uint32_t(mc.H));
  g.set(a + "attention.head_count_kv", uint32_t(mc.KVH));
  g.set(a + "rope.freq_base", float(mc.rope.theta));
  g.set(a + "attention.layer_norm_rms_epsilon", mc.rms_eps);
  g.set(a + "attention.key_length", uint32_t(mc.D));
  g.set(a + "attention.value_length", uint32_t(mc.D));
  if (mc.rope.type == "linear") {
    g.set(a + "rope.scaling.type", std::string("linear"));
    g.set(a + "rope.scaling.factor", float(mc.rope.factor));
  }
  if (arch == "llama") {
    g.set(a + "vocab_size", uint32_t(mc.V));
    g.set(a + "rope.dimension_count", uint32_t(mc.D));
  }
}

void add_layer(TensorSink& s, const ModelConfig& mc, const LayerWeights& lw, int l, bool permute) {
  const std::string p = "blk." + std::to_string(l) + ".";
  auto rope_rows = [&](const std::vector<float>& v, int heads, int64_t cols) {
    return permute && !v.empty() ? permute_rope_rows(v, heads, cols) : v;
  };
  const int64_t qd = int64_t(mc.H) * mc.D, kvd = int64_t(mc.KVH) * mc.D;
  s.vector(p + "attn_norm.weight", lw.ln1);
  s.matrix(p + "attn_q.weight", rope_rows(lw.q, mc.H, mc.C), qd, mc.C);
  s.matrix(p + "attn_k.weight", rope_rows(lw.k, mc.KVH, mc.C), kvd, mc.C);
  s.matrix(p + "attn_v.weight", lw.v, kvd, mc.C);
  s.matrix(p + "attn_output.weight", lw.o, mc.C, qd);
  s.vector(p + "attn_q.bias", rope_rows(lw.q_bias, mc.H, 1));
  s.vector(p + "attn_k.bias", rope_rows(lw.k_bias, mc.KVH, 1));
  s.vector(p + "attn_v.bias", lw.v_bias);
  s.vector(p + "attn_output.bias", lw.o_bias);
  s.vector(p + "attn_q_norm.weight", lw.q_norm);
  s.vector(p + "attn_k_norm.weight", lw.k_norm);
  s.vector(p + "ffn_norm.weight", lw.ln2);
  s.matrix(p + "ffn_gate.weight", lw.gate, mc.F, mc.C);
  s.matrix(p + "ffn_up.weight", lw.up, mc.F, mc.C);
  s.matrix(p + "ffn_down.weight", lw.down, mc.C, mc.F);
  s.vector(p + "ffn_gate.bias", lw.gate_bias);
  s.vector(p + "ffn_up.bias", lw.up_bias);
  s.vector(p + "ffn_down.bias", lw.down_bias);
}

}  // namespace

const std::vector<std::string>& gguf_type_names() {
  static const std::vector<std::string> names = {"bf16", "f16", "q8_0"};
  return names;
}

GgmlType gguf_type_from_name(const std::string& name) {
  if (name == "bf16") return GgmlType::BF16;
  if (name == "f16") return GgmlType::F16;
  if (name == "q8_0") return GgmlType::Q8_0;
  fail("unknown GGUF type '", name.substr(0, 40), "'; use bf16, f16 or q8_0");
}

std::vector<float> permute_rope_rows(const std::vector<float>& w, int n_head, int64_t cols) {
  const int64_t rows = int64_t(w.size()) / cols;
  LOOM_CHECK(rows % (2 * n_head) == 0, "permute_rope_rows: ", rows, " rows are not ", n_head, " heads of even size");
  const int64_t half = rows / n_head / 2;
  std::vector<float> out(w.size());
  for (int h = 0; h < n_head; ++h)
    for (int64_t j = 0; j < half; ++j)
      for (int part = 0; part < 2; ++part) {
        const float* from = &w[((h * 2 + part) * half + j) * cols];
        std::copy(from, from + cols, &out[((h * half + j) * 2 + part) * cols]);
      }
  return out;
}

std::vector<std::string> write_gguf_model(const std::string& path, const ModelConfig& mc, const ModelWeights& w,
                                          GgmlType type, const GgufModelSource& source) {
  const std::string arch = gguf_arch(mc);
  LOOM_CHECK(arch != "qwen2" || int64_t(mc.H) * mc.D == mc.C, "GGUF export: llama.cpp's qwen2 needs "
             "num_attention_heads x head_dim == hidden_size (", mc.H, " x ", mc.D, " != ", mc.C, ")");
  LOOM_CHECK(mc.rope.type == "default" || mc.rope.type == "llama3" || mc.rope.type == "linear",
             "GGUF export: rope type '", mc.rope.type, "' has no GGUF form in loom");
  std::vector<std::string> notes;
  GgufWriter g;
  g.set("general.architecture", arch);
  g.set("general.type", std::string("model"));
  g.set("general.name", source.name);
  add_hparams(g, arch, mc);
  g.set("general.file_type", file_type(type));
  g.set("general.quantization_version", uint32_t(2));  // GGML_QNT_VERSION
  if (source.tokenizer.empty()) {
    // llama.cpp loads a vocab-less model ("none") and runs it on token ids.
    g.set("tokenizer.ggml.model", std::string("none"));
    notes.push_back("no tokenizer in " + path + " (a preset has none; set data.tokenizer to the one the run trains "
                    "with): llama.cpp runs it on token ids only");
  } else {
    for (auto& [key, value] : gguf_vocab(source.tokenizer, source.config_json, mc.V, arch == "llama").kv)
      g.set(key, std::move(value));
  }

  TensorSink s(g, type);
  if (mc.rope.type == "llama3") s.vector("rope_freqs.weight", llama3_rope_factors(mc.rope, mc.D));
  s.matrix("token_embd.weight", w.embed, mc.V, mc.C);
  s.vector("output_norm.weight", w.final_norm);
  if (!w.lm_head.empty()) s.matrix("output.weight", w.lm_head, mc.V, mc.C);
  for (int l = 0; l < mc.L; ++l) add_layer(s, mc, w.layers[l], l, arch == "llama");
  g.write(path);

  int window = 0;
  for (int x : mc.window) window = std::max(window, x);
  if (window > 0)
    notes.push_back("llama.cpp runs the " + arch + " architecture with full attention: this model's sliding window of " +
                    std::to_string(window) + " tokens is not applied there, so its outputs differ from loom's for "
                    "sequences longer than the window (the same holds for llama.cpp's own converter)");
  if (type == GgmlType::Q8_0)
    for (int64_t cols : {int64_t(mc.C), int64_t(mc.F), int64_t(mc.H) * mc.D})
      if (cols % kQ8Block != 0) {
        notes.push_back("matrices with rows of " + std::to_string(cols) + " values are stored as F16: Q8_0 needs " +
                        "multiples of 32 (llama.cpp's converter does the same)");
        break;
      }
  return notes;
}

}  // namespace loom
