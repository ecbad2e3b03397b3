#include "models/weights.h"

#include <cmath>
#include <filesystem>

#include "ops/error.h"
#include "models/bnb_nf4.h"
#include "ops/random.h"
#include "models/lora.h"
#include "models/safetensors.h"
#include "ops/cuda_common.h"
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

ModelWeights collect(const WeightSource& src, const ModelConfig& m) {
  ModelWeights w;
  w.embed = src.embed();
  w.final_norm = src.final_norm();
  w.lm_head = src.lm_head();
  w.layers.resize(m.L);
  for (int l = 0; l < m.L; ++l) w.layers[l] = src.layer(l);
  return w;
}

}  // namespace

WeightSource WeightSource::checkpoint(const std::string& model_dir, const ModelConfig& cfg) {
  WeightSource s;
  s.cfg_ = cfg;
  s.ck_ = std::make_shared<const Checkpoint>(Checkpoint::open(model_dir));
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

void save_weights(const std::string& dir, const ModelConfig& m, const ModelWeights& w) {
  std::filesystem::create_directories(dir);
  std::vector<std::vector<uint16_t>> store;  // keeps the bf16 copies alive until written
  std::vector<TensorToWrite> out;
  auto add = [&](const std::string& name, const std::vector<float>& v, std::vector<int64_t> shape) {
    if (v.empty()) return;
    std::vector<uint16_t> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = float_to_bf16_bits(v[i]);
    store.push_back(std::move(b));
    out.push_back({name, DType::BF16, std::move(shape), store.back().data()});
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
