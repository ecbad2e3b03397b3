#include "models/device_weights.h"

#include <algorithm>
#include <utility>

#include "ops/rope.h"

namespace loom {
namespace {
constexpr int kNf4Blocksize = 64;  // bitsandbytes' default, FORMATS.md §3
}  // namespace

void upload_bf16(bf16* dst, const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < int64_t(v.size()); ++i) b[i] = float_to_bf16_bits(v[i]);
  CUDA_CHECK(cudaMemcpy(dst, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
}

DeviceWeights::DeviceWeights(const ModelConfig& cfg, Quant quant, bool double_quant)
    : cfg_(cfg), quant_(quant), double_quant_(double_quant) {}

// An MoE model plans the dense MLP's buffers for every layer when any layer is dense (a Qwen3-MoE's
// mlp_only_layers: the sparse layers' slices go unused), and not at all when every layer is sparse.
bool DeviceWeights::planned(LoraTarget t) const {
  if (t < kGate || !cfg_.is_moe()) return true;
  for (int l = 0; l < cfg_.L; ++l)
    if (!cfg_.is_moe_layer(l)) return true;
  return false;
}

void DeviceWeights::plan(MemoryPlan& p) {
  const ModelConfig& m = cfg_;
  plan_buffer(p, "weights", "embed_tokens", &embed_, size_t(m.V) * m.C, "(V, C)");
  if (!m.tie_embeddings) plan_buffer(p, "weights", "lm_head", &lm_head_, size_t(m.V) * m.C, "(V, C)");
  plan_buffer(p, "weights", "norm", &final_norm_, m.C, "(C)");
  plan_layers(p, m.L, "weights", "input_layernorm", ln1_, m.C, true, "(C)");
  plan_layers(p, m.L, "weights", "post_attention_layernorm", ln2_, m.C, true, "(C)");
  if (m.qk_norm) {
    plan_layers(p, m.L, "weights", "q_norm", q_norm_, m.D, true, "(D)");
    plan_layers(p, m.L, "weights", "k_norm", k_norm_, m.D, true, "(D)");
  }
  plan_buffer(p, "weights", "nf4 code table", &nf4_table_, 16, "(16)");
  plan_buffer(p, "weights", "nf4 nested map", &nested_map_, 256, "(256)");
  plan_buffer(p, "weights", "rope inv_freq", &inv_freq_, m.D / 2, "(D/2)");
  for (int t = 0; t < kNumTargets; ++t)
    if (planned(LoraTarget(t))) plan_projection(p, LoraTarget(t));
}

void DeviceWeights::plan_projection(MemoryPlan& p, LoraTarget t) {
  auto [in, out] = projection_shape(cfg_, t);
  const std::string name = kLoraTargetNames[t];
  const size_t n = size_t(in) * out;
  const int L = cfg_.L;
  if (nf4()) {
    const size_t nb = (n + kNf4Blocksize - 1) / kNf4Blocksize;
    plan_layers(p, L, "weights", name + " nf4 codes", codes_[t], (n + 1) / 2, true, "(out·in/2)");
    if (double_quant_) {
      plan_layers(p, L, "weights", name + " absmax codes", absmax_q_[t], nb, true, "(out·in/64)");
      plan_layers(p, L, "weights", name + " nested absmax", nested_absmax_[t], (nb + 255) / 256, true,
                  "(out·in/16384)");
    } else {
      plan_layers(p, L, "weights", name + " absmax", absmax_[t], nb, true, "(out·in/64)");
    }
  } else {
    plan_layers(p, L, "weights", name, w_[t], n, true, "(out, in)");
  }
  const bool has_bias = ((t <= kV) && cfg_.qkv_bias) || (t == kO && cfg_.o_bias) || (t >= kGate && cfg_.mlp_bias);
  if (has_bias) plan_layers(p, L, "weights", name + " bias", bias_[t], out, true, "(out)");
}

size_t DeviceWeights::largest_projection() const {
  size_t most = 0;
  for (int t = 0; t < kNumTargets; ++t) {
    auto [in, out] = projection_shape(cfg_, LoraTarget(t));
    most = std::max(most, size_t(in) * out);
  }
  return most;
}

void DeviceWeights::upload_projection(int l, LoraTarget t, std::vector<float>& wt) {
  auto [in, out] = projection_shape(cfg_, t);
  if (!nf4()) {
    upload_bf16(w_[t].at(l), wt);
    return;
  }
  // bitsandbytes sees the bf16 weight.
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < wt.size(); ++i) wt[i] = bf16_bits_to_float(float_to_bf16_bits(wt[i]));
  Nf4Host qh = nf4_quantize_ref(wt.data(), out, in, kNf4Blocksize, double_quant_);
  upload(codes_[t].at(l), qh.codes);
  Nf4Device& d = nf4_[l][t];
  d.numel = qh.numel();
  d.blocksize = qh.blocksize;
  d.codes = codes_[t].at(l);
  d.quant_map = nf4_table_;
  if (qh.nested) {
    upload(absmax_q_[t].at(l), qh.absmax_q);
    upload(nested_absmax_[t].at(l), qh.nested_absmax);
    d.absmax_q = absmax_q_[t].at(l);
    d.nested_absmax = nested_absmax_[t].at(l);
    d.nested_map = nested_map_;
    d.nested_offset = qh.nested_offset;
    d.nested_blocksize = qh.nested_blocksize;
  } else {
    upload(absmax_[t].at(l), qh.absmax);
    d.absmax = absmax_[t].at(l);
  }
}

void DeviceWeights::upload_layer(int l, LayerWeights lw) {
  upload_bf16(ln1_.at(l), lw.ln1);
  upload_bf16(ln2_.at(l), lw.ln2);
  if (cfg_.qk_norm) {
    upload_bf16(q_norm_.at(l), lw.q_norm);
    upload_bf16(k_norm_.at(l), lw.k_norm);
  }
  const std::vector<float>* biases[kNumTargets] = {&lw.q_bias,    &lw.k_bias,  &lw.v_bias,   &lw.o_bias,
                                                   &lw.gate_bias, &lw.up_bias, &lw.down_bias};
  for (int t = 0; t < kNumTargets; ++t) {
    if (t >= kGate && cfg_.is_moe_layer(l)) continue;  // a sparse layer's MLP: models/moe_layer.h
    if (bias_[t].base) upload_bf16(bias_[t].at(l), *biases[t]);
    upload_projection(l, LoraTarget(t), *loom::projection(lw, t));
  }
}

void DeviceWeights::load(const WeightSource& src, const LayerHook& also) {
  upload_bf16(embed_, src.embed());
  if (lm_head_) upload_bf16(lm_head_, src.lm_head());
  upload_bf16(final_norm_, src.final_norm());
  upload(nf4_table_, std::vector<float>(kNf4Table, kNf4Table + 16));
  upload(nested_map_, dynamic_map_signed());
  upload(inv_freq_, rope_inv_freq(cfg_.D, cfg_.rope));
  nf4_.resize(cfg_.L);
  for (int l = 0; l < cfg_.L; ++l) {
    LayerWeights lw = src.layer(l);
    if (also) also(l, lw);
    upload_layer(l, std::move(lw));
  }
}

const bf16* DeviceWeights::projection(int l, LoraTarget t, bf16* scratch, cudaStream_t stream) const {
  if (!nf4()) return w_[t].at(l);
  nf4_dequantize(scratch, nf4_[l][t], stream);
  return scratch;
}

}  // namespace loom
