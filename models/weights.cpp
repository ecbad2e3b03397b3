#include "models/weights.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <set>

#include "ops/error.h"
#include "models/bnb_nf4.h"
#include "ops/random.h"
#include "models/lora.h"
#include "models/safetensors.h"
#include "ops/cuda_common.h"
#include "ops/fp16.h"
#include "ops/nf4.h"

namespace loom {

std::vector<float>* projection(LayerWeights& lw, int t) {
  std::vector<float>* p[kNumTargets] = {&lw.q, &lw.k, &lw.v, &lw.o, &lw.gate, &lw.up, &lw.down};
  return p[t];
}
const std::vector<float>* projection(const LayerWeights& lw, int t) {
  return projection(const_cast<LayerWeights&>(lw), t);
}

namespace {

std::string layer_prefix(int l) { return cat("model.layers.", l, "."); }

// A projection weight: plain (bf16/fp16/fp32) or bitsandbytes NF4 (dequantized to fp32).
std::vector<float> read_matrix(const Checkpoint& ck, const std::string& name, int64_t rows, int64_t cols) {
  if (is_bnb_nf4(ck, name)) {
    Nf4Host q = read_bnb_nf4(ck, name, rows, cols);
    std::vector<float> w(rows * cols);
    nf4_dequantize_ref(w.data(), q);
    return w;
  }
  return ck.read_f32(name, {rows, cols});
}

void load_layer(const Checkpoint& ck, const ModelConfig& m, int l, LayerWeights& lw) {
  const std::string p = layer_prefix(l);
  lw.ln1 = ck.read_f32(p + "input_layernorm.weight", {m.C});
  lw.ln2 = ck.read_f32(p + "post_attention_layernorm.weight", {m.C});
  for (int t = 0; t < kNumTargets; ++t) {
    auto [in, out] = projection_shape(m, LoraTarget(t));
    *projection(lw, t) = read_matrix(ck, p + lora_module_path(LoraTarget(t)) + ".weight", out, in);
  }
  if (m.qkv_bias) {
    lw.q_bias = ck.read_f32(p + "self_attn.q_proj.bias", {int64_t(m.H) * m.D});
    lw.k_bias = ck.read_f32(p + "self_attn.k_proj.bias", {int64_t(m.KVH) * m.D});
    lw.v_bias = ck.read_f32(p + "self_attn.v_proj.bias", {int64_t(m.KVH) * m.D});
  }
  if (m.o_bias) lw.o_bias = ck.read_f32(p + "self_attn.o_proj.bias", {m.C});
  if (m.mlp_bias) {
    lw.gate_bias = ck.read_f32(p + "mlp.gate_proj.bias", {m.F});
    lw.up_bias = ck.read_f32(p + "mlp.up_proj.bias", {m.F});
    lw.down_bias = ck.read_f32(p + "mlp.down_proj.bias", {m.C});
  }
  if (m.qk_norm) {
    lw.q_norm = ck.read_f32(p + "self_attn.q_norm.weight", {m.D});
    lw.k_norm = ck.read_f32(p + "self_attn.k_norm.weight", {m.D});
  }
}

// Companions bitsandbytes stores beside an NF4 weight (bnb_nf4.h); read_bnb_nf4 validates them.
const char* const kNf4Parts[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                 ".quant_state.bitsandbytes__nf4"};

// "563 TB", "1.2 GB", "0.293 MB": sizes for messages.
std::string size_str(double bytes) {
  if (bytes >= 1e12) return cat(std::setprecision(3), bytes / 1e12, " TB");
  if (bytes >= 1e9) return cat(std::setprecision(3), bytes / 1e9, " GB");
  return cat(std::setprecision(3), bytes / 1e6, " MB");
}

// Compares a checkpoint's tensor list with the tensors a config implies, from the headers alone:
// nothing is read or allocated by the config's sizes, so a config.json describing a model of
// terabytes is refused here, with its size, before anything tries to hold it.
class TensorAudit {
 public:
  TensorAudit(const Checkpoint& ck, const ModelConfig& m) : ck_(ck), m_(m) {}

  // A bf16/fp16/fp32 tensor; `keys` names the config.json keys its shape comes from.
  void plain(const std::string& name, const std::vector<int64_t>& shape, const char* keys) {
    const TensorView& t = need(name);
    LOOM_CHECK(t.dtype == DType::F32 || t.dtype == DType::F16 || t.dtype == DType::BF16, "tensor '", name, "' in ",
               t.file, " has dtype ", t.dtype_str, "; expected F32, F16 or BF16");
    if (t.shape != shape)
      fail("tensor '", name, "' in ", t.file, " has shape ", shape_str(t.shape), ", but config.json (", keys,
           ") makes it ", shape_str(shape), mismatch_hint());
  }

  // A projection weight (rows, cols): plain, or bitsandbytes NF4 with its companion tensors.
  void matrix(const std::string& name, int64_t rows, int64_t cols, const char* keys) {
    if (!is_bnb_nf4(ck_, name)) return plain(name, {rows, cols}, keys);
    const TensorView& t = need(name);
    const uint64_t want = (uint64_t(rows) * uint64_t(cols) + 1) / 2;
    if (t.nbytes != want)
      fail("tensor '", name, "' in ", t.file, " holds ", t.nbytes, " bytes of NF4 codes, but config.json (", keys,
           ") makes it [", rows, ", ", cols, "], ", want, " bytes", mismatch_hint());
    for (const char* part : kNf4Parts)
      if (ck_.has(name + part)) used_.insert(name + part);
  }

  // A tied model's lm_head.weight is accepted only as a copy of the embedding (transformers ties
  // it and never reads it); a different one means tie_word_embeddings is wrong.
  void tied_head() {
    if (!ck_.has("lm_head.weight")) return;
    const TensorView& head = need("lm_head.weight");
    const TensorView& embed = ck_.get("model.embed_tokens.weight");
    LOOM_CHECK(head.dtype == embed.dtype && head.shape == embed.shape &&
                   std::memcmp(head.data, embed.data, head.nbytes) == 0,
               "config.json sets tie_word_embeddings: true, but ", ck_.path(),
               " holds an lm_head.weight different from model.embed_tokens.weight; set tie_word_embeddings: false");
  }

  // Older checkpoints carry RoPE's inv_freq buffers; loom computes them from config.json, as
  // transformers does.
  void optional_buffer(const std::string& name) {
    if (ck_.has(name)) used_.insert(name);
  }

  // Every tensor the walk did not claim is an error: ignoring weights would run another model.
  void check_all_used() const {
    std::vector<std::string> unused;
    for (const std::string& name : ck_.names())
      if (!used_.count(name)) unused.push_back(name);
    if (unused.empty()) return;
    std::string list;
    for (size_t i = 0; i < unused.size() && i < 5; ++i) list += cat(i ? ", " : "", "'", unused[i], "'");
    if (unused.size() > 5) list += cat(" and ", unused.size() - 5, " more");
    const int layers = checkpoint_layers();
    fail(ck_.path(), " holds ", unused.size(), " tensor", unused.size() > 1 ? "s" : "", " the model does not use: ",
         list, "; ",
         layers > m_.L ? cat("config.json's num_hidden_layers is ", m_.L, " but the checkpoint has ", layers, " layers")
                       : std::string("config.json (architectures, attention_bias, mlp_bias, tie_word_embeddings) does "
                                     "not describe them"),
         ": is it the checkpoint's own config.json?");
  }

 private:
  const TensorView& need(const std::string& name) {
    if (!ck_.has(name)) {
      const int layers = checkpoint_layers();
      fail("tensor '", name, "' not found in ", ck_.path(), " (", ck_.names().size(), " tensors); ",
           layers < m_.L ? cat("config.json's num_hidden_layers is ", m_.L, " but the checkpoint has ", layers,
                               " layers")
                         : std::string("config.json (architectures, attention_bias, mlp_bias, tie_word_embeddings) "
                                       "expects it"),
           ": is it the checkpoint's own config.json?");
    }
    used_.insert(name);
    return ck_.get(name);
  }

  // 1 + the highest N of a "model.layers.N." tensor.
  int checkpoint_layers() const {
    const std::string prefix = "model.layers.";
    int layers = 0;
    for (const std::string& name : ck_.names())
      if (name.compare(0, prefix.size(), prefix) == 0)
        layers = std::max(layers, 1 + std::atoi(name.c_str() + prefix.size()));
    return layers;
  }

  // What the config asks for against what the files hold, so a config.json of another model
  // (or a typo adding zeros) shows at once.
  std::string mismatch_hint() const {
    double stored = 0;
    for (const std::string& name : ck_.names()) stored += double(ck_.get(name).nbytes);
    return cat("; config.json describes ", std::setprecision(3), m_.total_params(), " parameters (",
               size_str(2 * m_.total_params()), " in bf16) while the checkpoint holds ", size_str(stored),
               ": is it the checkpoint's own config.json?");
  }

  const Checkpoint& ck_;
  const ModelConfig& m_;
  std::set<std::string> used_;
};

float bf16_round(float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); }

// Matrix values: U(-a, a) with a = std·√3, rounded to bf16.
std::vector<float> random_matrix(uint64_t seed, uint64_t stream, int64_t n, double std) {
  const float a = float(std * std::sqrt(3.0));
  std::vector<float> v(n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) v[i] = bf16_round(a * random_symmetric(seed, stream, i));
  return v;
}

// Norms 1, biases 0, matrices random (see random_weights).
void random_layer(const ModelConfig& m, uint64_t seed, int l, LayerWeights& lw) {
  lw.ln1.assign(m.C, 1.f);
  lw.ln2.assign(m.C, 1.f);
  for (int t = 0; t < kNumTargets; ++t) {
    auto [in, out] = projection_shape(m, LoraTarget(t));
    *projection(lw, t) = random_matrix(seed, 16 + uint64_t(l) * kNumTargets + t, int64_t(in) * out, m.initializer_range);
  }
  if (m.qkv_bias) {
    lw.q_bias.assign(size_t(m.H) * m.D, 0.f);
    lw.k_bias.assign(size_t(m.KVH) * m.D, 0.f);
    lw.v_bias.assign(size_t(m.KVH) * m.D, 0.f);
  }
  if (m.o_bias) lw.o_bias.assign(m.C, 0.f);
  if (m.mlp_bias) {
    lw.gate_bias.assign(m.F, 0.f);
    lw.up_bias.assign(m.F, 0.f);
    lw.down_bias.assign(m.C, 0.f);
  }
  if (m.qk_norm) {
    lw.q_norm.assign(m.D, 1.f);
    lw.k_norm.assign(m.D, 1.f);
  }
}

// Refuses, before allocating, an fp32 host copy larger than this machine's memory: it would end in
// bad_alloc or, with overcommit, in the OOM killer's SIGKILL halfway through loading.
void check_host_memory(const ModelConfig& m) {
  const double bytes = 4 * m.total_params();
  const double physical = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  LOOM_CHECK(physical <= 0 || bytes <= physical, "the CPU reference path holds the model in fp32: ",
             std::setprecision(3), m.total_params(), " parameters need ", size_str(bytes),
             " of host memory, more than this machine's ", size_str(physical),
             "; use a GPU (train.device=cuda, score --device cuda) or a smaller model");
}

ModelWeights collect(const WeightSource& src, const ModelConfig& m) {
  check_host_memory(m);
  ModelWeights w;
  w.embed = src.embed();
  w.final_norm = src.final_norm();
  w.lm_head = src.lm_head();
  w.layers.resize(m.L);
  for (int l = 0; l < m.L; ++l) w.layers[l] = src.layer(l);
  return w;
}

}  // namespace

void check_checkpoint_tensors(const Checkpoint& ck, const ModelConfig& m) {
  TensorAudit audit(ck, m);
  audit.plain("model.embed_tokens.weight", {m.V, m.C}, "vocab_size, hidden_size");
  audit.plain("model.norm.weight", {m.C}, "hidden_size");
  if (m.tie_embeddings)
    audit.tied_head();
  else
    audit.plain("lm_head.weight", {m.V, m.C}, "vocab_size, hidden_size");
  const char* keys[kNumTargets] = {"hidden_size, num_attention_heads, head_dim",
                                   "hidden_size, num_key_value_heads, head_dim",
                                   "hidden_size, num_key_value_heads, head_dim",
                                   "hidden_size, num_attention_heads, head_dim",
                                   "hidden_size, intermediate_size",
                                   "hidden_size, intermediate_size",
                                   "hidden_size, intermediate_size"};
  for (int l = 0; l < m.L; ++l) {
    const std::string p = layer_prefix(l);
    audit.plain(p + "input_layernorm.weight", {m.C}, "hidden_size");
    audit.plain(p + "post_attention_layernorm.weight", {m.C}, "hidden_size");
    for (int t = 0; t < kNumTargets; ++t) {
      auto [in, out] = projection_shape(m, LoraTarget(t));
      audit.matrix(p + lora_module_path(LoraTarget(t)) + ".weight", out, in, keys[t]);
    }
    if (m.qkv_bias) {
      audit.plain(p + "self_attn.q_proj.bias", {int64_t(m.H) * m.D}, "num_attention_heads, head_dim");
      audit.plain(p + "self_attn.k_proj.bias", {int64_t(m.KVH) * m.D}, "num_key_value_heads, head_dim");
      audit.plain(p + "self_attn.v_proj.bias", {int64_t(m.KVH) * m.D}, "num_key_value_heads, head_dim");
    }
    if (m.o_bias) audit.plain(p + "self_attn.o_proj.bias", {m.C}, "hidden_size");
    if (m.mlp_bias) {
      audit.plain(p + "mlp.gate_proj.bias", {m.F}, "intermediate_size");
      audit.plain(p + "mlp.up_proj.bias", {m.F}, "intermediate_size");
      audit.plain(p + "mlp.down_proj.bias", {m.C}, "hidden_size");
    }
    if (m.qk_norm) {
      audit.plain(p + "self_attn.q_norm.weight", {m.D}, "head_dim");
      audit.plain(p + "self_attn.k_norm.weight", {m.D}, "head_dim");
    }
    audit.optional_buffer(p + "self_attn.rotary_emb.inv_freq");
  }
  audit.check_all_used();
}

WeightSource WeightSource::checkpoint(const std::string& model_dir, const ModelConfig& cfg) {
  WeightSource s;
  s.cfg_ = cfg;
  s.ck_ = std::make_shared<const Checkpoint>(Checkpoint::open(model_dir));
  check_checkpoint_tensors(*s.ck_, cfg);
  return s;
}

WeightSource WeightSource::random(const ModelConfig& cfg, uint64_t seed) {
  WeightSource s;
  s.cfg_ = cfg;
  s.seed_ = seed;
  return s;
}

std::vector<float> WeightSource::embed() const {
  const ModelConfig& m = cfg_;
  return ck_ ? ck_->read_f32("model.embed_tokens.weight", {m.V, m.C}) : random_matrix(seed_, 0, int64_t(m.V) * m.C, m.initializer_range);
}

std::vector<float> WeightSource::final_norm() const {
  return ck_ ? ck_->read_f32("model.norm.weight", {cfg_.C}) : std::vector<float>(cfg_.C, 1.f);
}

std::vector<float> WeightSource::lm_head() const {
  const ModelConfig& m = cfg_;
  if (m.tie_embeddings) return {};
  return ck_ ? ck_->read_f32("lm_head.weight", {m.V, m.C}) : random_matrix(seed_, 1, int64_t(m.V) * m.C, m.initializer_range);
}

LayerWeights WeightSource::layer(int l) const {
  LayerWeights lw;
  if (ck_)
    load_layer(*ck_, cfg_, l, lw);
  else
    random_layer(cfg_, seed_, l, lw);
  return lw;
}

ModelWeights load_weights(const std::string& model_dir, const ModelConfig& m) {
  return collect(WeightSource::checkpoint(model_dir, m), m);
}

ModelWeights random_weights(const ModelConfig& m, uint64_t seed) { return collect(WeightSource::random(m, seed), m); }

void apply_nf4_roundtrip(ModelWeights& w, int blocksize, bool double_quant) {
  for (LayerWeights& lw : w.layers)
    for (int t = 0; t < kNumTargets; ++t) {
      std::vector<float>& m = *projection(lw, t);
      for (float& x : m) x = bf16_round(x);  // bitsandbytes quantizes the bf16 weight
      Nf4Host q = nf4_quantize_ref(m.data(), 1, int64_t(m.size()), blocksize, double_quant);
      nf4_dequantize_ref(m.data(), q);
    }
}

void save_weights(const std::string& dir, const ModelConfig& m, const ModelWeights& w, DType dtype) {
  LOOM_CHECK(dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::F32, "save_weights: dtype ",
             dtype_name(dtype), " (BF16, F16 or F32)");
  std::filesystem::create_directories(dir);
  std::vector<std::vector<uint16_t>> store;  // keeps the 16-bit copies alive until written
  std::vector<TensorToWrite> out;
  auto add = [&](const std::string& name, const std::vector<float>& v, std::vector<int64_t> shape) {
    if (v.empty()) return;
    if (dtype == DType::F32) return out.push_back({name, dtype, std::move(shape), v.data()});
    std::vector<uint16_t> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = dtype == DType::BF16 ? float_to_bf16_bits(v[i]) : float_to_f16_bits(v[i]);
    store.push_back(std::move(b));
    out.push_back({name, dtype, std::move(shape), store.back().data()});
  };
  store.reserve(8 + w.layers.size() * 20);
  add("model.embed_tokens.weight", w.embed, {m.V, m.C});
  add("model.norm.weight", w.final_norm, {m.C});
  add("lm_head.weight", w.lm_head, {m.V, m.C});
  for (int l = 0; l < m.L; ++l) {
    const LayerWeights& lw = w.layers[l];
    const std::string p = layer_prefix(l);
    add(p + "input_layernorm.weight", lw.ln1, {m.C});
    add(p + "post_attention_layernorm.weight", lw.ln2, {m.C});
    for (int t = 0; t < kNumTargets; ++t) {
      auto [in, out_dim] = projection_shape(m, LoraTarget(t));
      add(p + lora_module_path(LoraTarget(t)) + ".weight", *projection(lw, t), {out_dim, in});
    }
    add(p + "self_attn.q_proj.bias", lw.q_bias, {int64_t(lw.q_bias.size())});
    add(p + "self_attn.k_proj.bias", lw.k_bias, {int64_t(lw.k_bias.size())});
    add(p + "self_attn.v_proj.bias", lw.v_bias, {int64_t(lw.v_bias.size())});
    add(p + "self_attn.o_proj.bias", lw.o_bias, {int64_t(lw.o_bias.size())});
    add(p + "mlp.gate_proj.bias", lw.gate_bias, {int64_t(lw.gate_bias.size())});
    add(p + "mlp.up_proj.bias", lw.up_bias, {int64_t(lw.up_bias.size())});
    add(p + "mlp.down_proj.bias", lw.down_bias, {int64_t(lw.down_bias.size())});
    add(p + "self_attn.q_norm.weight", lw.q_norm, {m.D});
    add(p + "self_attn.k_norm.weight", lw.k_norm, {m.D});
  }
  write_safetensors(dir + "/model.safetensors", out);
  save_model_config(m, dir + "/config.json");
}

}  // namespace loom
