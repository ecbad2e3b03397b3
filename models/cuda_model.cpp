#include "models/cuda_model.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/device.h"
#include "ops/error.h"
#include "engine/memory_plan.h"
#include "ops/adamw.h"
#include "ops/attention.h"
#include "ops/bias.h"
#include "ops/cast.h"
#include "ops/cross_entropy.h"
#include "ops/dropout.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/grad_norm.h"
#include "ops/nf4.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

namespace loom {
namespace {

constexpr int kNf4Blocksize = 64;                        // bitsandbytes' default, FORMATS.md §3
constexpr size_t kGemmWorkspace = size_t(32) << 20;      // cuBLASLt's Hopper kernels want 32 MiB
constexpr size_t kLogitsBudget = size_t(512) << 20;      // fp32 logits scratch of the chunked LM head
constexpr size_t kContextReserve = size_t(1) << 30;      // CUDA context, cuBLASLt and NCCL outside the plan

// Elements per layer rounded up so that every layer's slice starts 256-byte aligned.
template <class T>
size_t padded(size_t n) {
  const size_t bytes = (n * sizeof(T) + 255) / 256 * 256;
  return bytes / sizeof(T);
}

// A buffer with one slice per layer, or one slice shared by every layer (recomputed per layer).
template <class T>
struct LayerBuf {
  T* base = nullptr;
  size_t stride = 0;  // elements between layers' slices; 0 when shared
  T* at(int l) const { return base + size_t(l) * stride; }
};

template <class T>
const char* dtype_of();
template <>
const char* dtype_of<bf16>() { return "bf16"; }
template <>
const char* dtype_of<float>() { return "f32"; }
template <>
const char* dtype_of<uint8_t>() { return "u8"; }
template <>
const char* dtype_of<int32_t>() { return "i32"; }

std::vector<uint16_t> to_bf16_bits(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < int64_t(v.size()); ++i) b[i] = float_to_bf16_bits(v[i]);
  return b;
}

void upload_bf16(bf16* dst, const std::vector<float>& v) {
  std::vector<uint16_t> b = to_bf16_bits(v);
  CUDA_CHECK(cudaMemcpy(dst, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
}

template <class T>
void upload(T* dst, const std::vector<T>& v) {
  CUDA_CHECK(cudaMemcpy(dst, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
}

}  // namespace

struct CudaModel::Impl {
  ModelConfig cfg;
  LoraLayout lora;
  CudaModelOptions opt;
  bool nf4 = true;
  int64_t T = 0;      // this micro-batch
  int64_t Tmax = 0;   // token budget
  int ce_chunk = 0;
  cudaStream_t stream = nullptr;
  MemoryPlan plan;
  std::unique_ptr<GemmContext> gemm_ctx;

  // Frozen weights. Projections: bf16 (out, in), or NF4 codes + absmax (double-quantized or not).
  bf16 *embed = nullptr, *lm_head = nullptr, *final_norm = nullptr;
  LayerBuf<bf16> ln1, ln2, q_norm, k_norm;
  LayerBuf<bf16> bias[kNumTargets], w[kNumTargets];
  LayerBuf<uint8_t> codes[kNumTargets], absmax_q[kNumTargets];
  LayerBuf<float> absmax[kNumTargets], nested_absmax[kNumTargets];
  std::vector<std::array<Nf4Device, kNumTargets>> nf4_desc;  // (L)
  float *nf4_table = nullptr, *nested_map = nullptr, *inv_freq = nullptr;

  // LoRA: fp32 master + grads + AdamW moments, bf16 copy for the GEMMs (models/lora.h layout).
  float *lora_master = nullptr, *lora_grad = nullptr, *adam_m = nullptr, *adam_v = nullptr;
  bf16* lora_bf16 = nullptr;

  // Micro-batch inputs: tokens, targets, positions (Tmax) and cu_seqlens (Tmax + 1), one block.
  int32_t* inputs = nullptr;
  int32_t* host_inputs[2] = {nullptr, nullptr};  // pinned staging, double-buffered
  cudaEvent_t uploaded[2] = {nullptr, nullptr};
  int upload_slot = 0;
  int32_t *tokens = nullptr, *targets = nullptr, *positions = nullptr, *cu_seqlens = nullptr;
  int ndoc = 0;

  // Activations kept for backward (stride 0 = one shared slice, recomputed per layer).
  LayerBuf<bf16> resid;  // (L + 1, T, C): input of every layer, then the final residual
  LayerBuf<float> rstd1, rstd2, rstd_q, rstd_k, lse;
  LayerBuf<bf16> xn1, xn2, q, k, v, q_pre, k_pre, attn, h, gate, up, act;
  LayerBuf<bf16> u[kNumTargets];  // x·Aᵀ (T, R) per projection
  bf16 *xf = nullptr, *tmp_c = nullptr;
  float* rstdf = nullptr;

  // Backward scratch (one layer).
  bf16 *d_resid = nullptr, *dxn = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr, *dattn = nullptr,
       *dact = nullptr, *du = nullptr, *dxf = nullptr;
  float* attn_scratch = nullptr;
  bf16* w_scratch = nullptr;  // the dequantized projection of the current GEMM
  bf16* x_dropped = nullptr;  // LoRA input after dropout (T, in), then du·A in backward; lora.dropout > 0
  void* logits = nullptr;
  float *token_loss = nullptr, *loss_sum = nullptr, *norm = nullptr, *coef = nullptr, *partials = nullptr;
  void* workspace = nullptr;
  float* host_scalars = nullptr;  // pinned: loss_sum, norm
  std::function<void(int)> layer_grads_hook;
  bool last_micro = true;
  // LoRA dropout in this pass: lora.dropout while training (forward_backward), 0 when scoring.
  float dropout = 0;
  uint64_t dropout_seed = 0;

  Impl(const ModelConfig& c, const LoraLayout& l, const CudaModelOptions& o) : cfg(c), lora(l), opt(o) {}

  // --- planning --------------------------------------------------------------------------------
  template <class T>
  void add(const std::string& group, const std::string& name, T** p, size_t n, const std::string& shape) {
    plan.add(group, name, p, n, shape, dtype_of<T>());
  }
  template <class T>
  void add_layers(const std::string& group, const std::string& name, LayerBuf<T>& b, size_t n, bool per_layer,
                  const std::string& shape) {
    b.stride = per_layer ? padded<T>(n) : 0;
    add(group, name, &b.base, per_layer ? b.stride * cfg.L : n, per_layer ? "(L, " + shape.substr(1) : shape);
  }

  void plan_weights() {
    const ModelConfig& m = cfg;
    add("weights", "embed_tokens", &embed, size_t(m.V) * m.C, "(V, C)");
    if (!m.tie_embeddings) add("weights", "lm_head", &lm_head, size_t(m.V) * m.C, "(V, C)");
    add("weights", "norm", &final_norm, m.C, "(C)");
    add_layers("weights", "input_layernorm", ln1, m.C, true, "(C)");
    add_layers("weights", "post_attention_layernorm", ln2, m.C, true, "(C)");
    if (m.qk_norm) {
      add_layers("weights", "q_norm", q_norm, m.D, true, "(D)");
      add_layers("weights", "k_norm", k_norm, m.D, true, "(D)");
    }
    add("weights", "nf4 code table", &nf4_table, 16, "(16)");
    add("weights", "nf4 nested map", &nested_map, 256, "(256)");
    add("weights", "rope inv_freq", &inv_freq, m.D / 2, "(D/2)");
    for (int t = 0; t < kNumTargets; ++t) plan_projection(LoraTarget(t));
  }

  void plan_projection(LoraTarget t) {
    auto [in, out] = projection_shape(cfg, t);
    const std::string name = kLoraTargetNames[t];
    const size_t n = size_t(in) * out;
    if (nf4) {
      const size_t nb = (n + kNf4Blocksize - 1) / kNf4Blocksize;
      add_layers("weights", name + " nf4 codes", codes[t], (n + 1) / 2, true, "(out·in/2)");
      if (opt.double_quant) {
        add_layers("weights", name + " absmax codes", absmax_q[t], nb, true, "(out·in/64)");
        add_layers("weights", name + " nested absmax", nested_absmax[t], (nb + 255) / 256, true, "(out·in/16384)");
      } else {
        add_layers("weights", name + " absmax", absmax[t], nb, true, "(out·in/64)");
      }
    } else {
      add_layers("weights", name, w[t], n, true, "(out, in)");
    }
    const bool has_bias = ((t <= kV) && cfg.qkv_bias) || (t == kO && cfg.o_bias) || (t >= kGate && cfg.mlp_bias);
    if (has_bias) add_layers("weights", name + " bias", bias[t], out, true, "(out)");
  }

  void plan_lora() {
    const size_t n = size_t(lora.total);
    add("lora", "LoRA params (fp32 master)", &lora_master, n, "(P)");
    add("lora", "LoRA params (bf16 copy)", &lora_bf16, n, "(P)");
    add("lora", "LoRA grads", &lora_grad, n, "(P)");
    add("lora", "AdamW exp_avg", &adam_m, n, "(P)");
    add("lora", "AdamW exp_avg_sq", &adam_v, n, "(P)");
  }

  void plan_activations() {
    const ModelConfig& m = cfg;
    const size_t T = size_t(Tmax), C = m.C, F = m.F, HD = size_t(m.H) * m.D, KD = size_t(m.KVH) * m.D;
    const std::string& rc = opt.recompute;
    const bool keep = rc != "full";           // kept per layer unless everything is recomputed
    const bool keep_cheap = rc == "none";     // norm outputs and the SwiGLU product
    resid.stride = padded<bf16>(T * C);
    add("activations", "residual stream", &resid.base, resid.stride * (m.L + 1), "(L+1, T, C)");
    add_layers("activations", "rstd1", rstd1, T, true, "(T)");
    add_layers("activations", "rstd2", rstd2, T, true, "(T)");
    add_layers("activations", "rms1 out", xn1, T * C, keep_cheap, "(T, C)");
    add_layers("activations", "rms2 out", xn2, T * C, keep_cheap, "(T, C)");
    add_layers("activations", "q (roped)", q, T * HD, keep, "(T, H·D)");
    add_layers("activations", "k (roped)", k, T * KD, keep, "(T, KVH·D)");
    add_layers("activations", "v", v, T * KD, keep, "(T, KVH·D)");
    if (m.qk_norm) {
      add_layers("activations", "q before q_norm", q_pre, T * HD, keep, "(T, H·D)");
      add_layers("activations", "k before k_norm", k_pre, T * KD, keep, "(T, KVH·D)");
      add_layers("activations", "rstd q_norm", rstd_q, T * m.H, true, "(T, H)");
      add_layers("activations", "rstd k_norm", rstd_k, T * m.KVH, true, "(T, KVH)");
    }
    add_layers("activations", "attention out", attn, T * HD, keep, "(T, H·D)");
    add_layers("activations", "attention lse", lse, T * m.H, keep, "(T, H)");
    add_layers("activations", "h (residual after attention)", h, T * C, keep, "(T, C)");
    add_layers("activations", "gate", gate, T * F, keep, "(T, F)");
    add_layers("activations", "up", up, T * F, keep, "(T, F)");
    add_layers("activations", "silu(gate)·up", act, T * F, keep_cheap, "(T, F)");
    for (int t = 0; t < kNumTargets; ++t)
      if (lora.targeted[t])
        add_layers("activations", std::string("LoRA x·Aᵀ ") + kLoraTargetNames[t], u[t], T * lora.R, keep, "(T, R)");
    add("activations", "final norm out", &xf, T * C, "(T, C)");
    add("activations", "final rstd", &rstdf, T, "(T)");
  }

  void plan_scratch() {
    const ModelConfig& m = cfg;
    const size_t T = size_t(Tmax), C = m.C, F = m.F, HD = size_t(m.H) * m.D, KD = size_t(m.KVH) * m.D;
    size_t wmax = 0;
    for (int t = 0; t < kNumTargets; ++t) {
      auto [in, out] = projection_shape(m, LoraTarget(t));
      wmax = std::max(wmax, size_t(in) * out);
    }
    if (nf4) add("scratch", "dequantized projection", &w_scratch, wmax, "(out, in) max");
    if (lora.dropout > 0) add("scratch", "LoRA input after dropout", &x_dropped, T * std::max({C, F, HD}), "(T, in) max");
    add("scratch", "sublayer out", &tmp_c, T * C, "(T, C)");
    add("scratch", "d residual", &d_resid, T * C, "(T, C)");
    add("scratch", "d norm out", &dxn, T * C, "(T, C)");
    add("scratch", "d final norm out", &dxf, T * C, "(T, C)");
    add("scratch", "dq", &dq, T * HD, "(T, H·D)");
    add("scratch", "dk", &dk, T * KD, "(T, KVH·D)");
    add("scratch", "dv", &dv, T * KD, "(T, KVH·D)");
    add("scratch", "d attention out", &dattn, T * HD, "(T, H·D)");
    add("scratch", "d silu(gate)·up", &dact, T * F, "(T, F)");
    add("scratch", "LoRA du", &du, T * std::max(lora.R, 1), "(T, R)");
    add("scratch", "attention backward", &attn_scratch, size_t(attention_backward_scratch_floats(Tmax, m.H, m.D)),
        "(T, H, D+1)");
    ce_chunk = int(std::clamp<int64_t>(int64_t(kLogitsBudget / (size_t(m.V) * 4)), 16, Tmax));
    plan.add_raw("scratch", "LM head logits chunk", &logits, lm_head_logits_bytes(ce_chunk, m.V, GemmOut::kFp32),
                 cat("(", ce_chunk, ", V)"), "f32");
    add("scratch", "token losses", &token_loss, T, "(T)");
    add("scratch", "loss sum", &loss_sum, 1, "(1)");
    add("scratch", "grad norm", &norm, 1, "(1)");
    add("scratch", "clip coefficient", &coef, 1, "(1)");
    add("scratch", "grad-norm partials", &partials, kGradNormPartials, "(1024)");
    add("scratch", "inputs", &inputs, 4 * T + 1, "(4T+1)");
    plan.add_raw("scratch", "cuBLASLt workspace", &workspace, kGemmWorkspace, "(32 MiB)", "u8");
  }

  // --- loading ---------------------------------------------------------------------------------
  void upload_projection(int l, LoraTarget t, std::vector<float>& wt) {
    auto [in, out] = projection_shape(cfg, t);
    if (!nf4) {
      upload_bf16(w[t].at(l), wt);
      return;
    }
    // bitsandbytes sees the bf16 weight.
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < wt.size(); ++i) wt[i] = bf16_bits_to_float(float_to_bf16_bits(wt[i]));
    Nf4Host qh = nf4_quantize_ref(wt.data(), out, in, kNf4Blocksize, opt.double_quant);
    upload(codes[t].at(l), qh.codes);
    Nf4Device& d = nf4_desc[l][t];
    d.numel = qh.numel();
    d.blocksize = qh.blocksize;
    d.codes = codes[t].at(l);
    d.quant_map = nf4_table;
    if (qh.nested) {
      upload(absmax_q[t].at(l), qh.absmax_q);
      upload(nested_absmax[t].at(l), qh.nested_absmax);
      d.absmax_q = absmax_q[t].at(l);
      d.nested_absmax = nested_absmax[t].at(l);
      d.nested_map = nested_map;
      d.nested_offset = qh.nested_offset;
      d.nested_blocksize = qh.nested_blocksize;
    } else {
      upload(absmax[t].at(l), qh.absmax);
      d.absmax = absmax[t].at(l);
    }
  }

  void upload_layer(int l, LayerWeights lw) {
    upload_bf16(ln1.at(l), lw.ln1);
    upload_bf16(ln2.at(l), lw.ln2);
    if (cfg.qk_norm) {
      upload_bf16(q_norm.at(l), lw.q_norm);
      upload_bf16(k_norm.at(l), lw.k_norm);
    }
    const std::vector<float>* biases[kNumTargets] = {&lw.q_bias,    &lw.k_bias,  &lw.v_bias,   &lw.o_bias,
                                                     &lw.gate_bias, &lw.up_bias, &lw.down_bias};
    for (int t = 0; t < kNumTargets; ++t) {
      if (bias[t].base) upload_bf16(bias[t].at(l), *biases[t]);
      upload_projection(l, LoraTarget(t), *projection(lw, t));
    }
  }

  void load(const WeightSource& src, const std::vector<float>& lora_init) {
    upload_bf16(embed, src.embed());
    if (lm_head) upload_bf16(lm_head, src.lm_head());
    upload_bf16(final_norm, src.final_norm());
    upload(nf4_table, std::vector<float>(kNf4Table, kNf4Table + 16));
    upload(nested_map, dynamic_map_signed());
    upload(inv_freq, rope_inv_freq(cfg.D, cfg.rope));
    nf4_desc.resize(cfg.L);
    for (int l = 0; l < cfg.L; ++l) upload_layer(l, src.layer(l));
    set_lora(lora_init);
    CUDA_CHECK(cudaMemset(lora_grad, 0, size_t(lora.total) * 4));
    CUDA_CHECK(cudaMemset(adam_m, 0, size_t(lora.total) * 4));
    CUDA_CHECK(cudaMemset(adam_v, 0, size_t(lora.total) * 4));
    CUDA_CHECK(cudaMemset(loss_sum, 0, 4));
  }

  void set_lora(const std::vector<float>& p) {
    LOOM_CHECK(int64_t(p.size()) == lora.total, "LoRA vector has ", p.size(), " floats, expected ", lora.total);
    if (p.empty()) return;
    upload(lora_master, p);
    cast_fp32_to_bf16(lora_bf16, lora_master, lora.total, stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  // --- one micro-batch ---------------------------------------------------------------------------
  void upload_inputs(const MicroBatch& mb) {
    T = mb.T();
    ndoc = mb.ndoc();
    LOOM_CHECK(T > 0 && T <= Tmax, "micro-batch of ", T, " tokens exceeds train.token_budget = ", Tmax);
    const int slot = upload_slot;
    upload_slot ^= 1;
    CUDA_CHECK(cudaEventSynchronize(uploaded[slot]));  // the copy that last read this staging buffer is done
    int32_t* hb = host_inputs[slot];
    std::copy(mb.tokens.begin(), mb.tokens.end(), hb);
    std::copy(mb.targets.begin(), mb.targets.end(), hb + T);
    std::copy(mb.positions.begin(), mb.positions.end(), hb + 2 * T);
    std::copy(mb.cu_seqlens.begin(), mb.cu_seqlens.end(), hb + 3 * T);
    CUDA_CHECK(cudaMemcpyAsync(inputs, hb, size_t(3 * T + ndoc + 1) * 4, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(uploaded[slot], stream));
    tokens = inputs;
    targets = inputs + T;
    positions = inputs + 2 * T;
    cu_seqlens = inputs + 3 * T;
  }

  const bf16* weight(int l, LoraTarget t) {
    if (!nf4) return w[t].at(l);
    nf4_dequantize(w_scratch, nf4_desc[l][t], stream);
    return w_scratch;
  }

  // The LoRA branch's input: x, or x after this projection's dropout mask (ops/dropout.h; the mask
  // is regenerated in backward and under recompute, never stored).
  const bf16* lora_input(int l, LoraTarget t, const bf16* x, int in) {
    if (dropout == 0) return x;
    dropout_forward(x_dropped, x, T * in, dropout_seed, lora_dropout_stream(l, t), dropout, stream);
    return x_dropped;
  }

  // y (T, out) = x·Wᵀ + b + s·(xl·Aᵀ)·Bᵀ, xl = dropout(x) ; saves xl·Aᵀ in u[t].
  void linear_forward(int l, LoraTarget t, const bf16* x, bf16* y) {
    auto [in, out] = projection_shape(cfg, t);
    gemm_(y, x, weight(l, t), T, out, in, false, true, 1.f, 0.f, GemmOut::kBf16);
    if (bias[t].base) bias_add(y, bias[t].at(l), T, out, stream);
    const LoraSlot& s = lora.slot(l, t);
    if (!s.enabled) return;
    bf16* ul = u[t].at(l);
    gemm_(ul, lora_input(l, t, x, in), lora_bf16 + s.a_offset, T, lora.R, in, false, true, 1.f, 0.f, GemmOut::kBf16);
    gemm_(y, ul, lora_bf16 + s.b_offset, T, out, lora.R, false, true, lora.scale, 1.f, GemmOut::kBf16);
  }

  // dx (T, in) = dy·W (+ dx when accumulate) + mask·(du·A) ; dB += s·dyᵀ·u ; dA += duᵀ·xl,
  // du = s·dy·B, xl = dropout(x) (mask = 1 without dropout).
  void linear_backward(int l, LoraTarget t, const bf16* dy, const bf16* x, bf16* dx, bool accumulate) {
    auto [in, out] = projection_shape(cfg, t);
    gemm_(dx, dy, weight(l, t), T, in, out, false, false, 1.f, accumulate ? 1.f : 0.f, GemmOut::kBf16);
    const LoraSlot& s = lora.slot(l, t);
    if (!s.enabled) return;
    const int R = lora.R;
    gemm_(du, dy, lora_bf16 + s.b_offset, T, R, out, false, false, lora.scale, 0.f, GemmOut::kBf16);
    gemm_(lora_grad + s.b_offset, dy, u[t].at(l), out, R, T, true, false, lora.scale, 1.f, GemmOut::kFp32);
    gemm_(lora_grad + s.a_offset, du, lora_input(l, t, x, in), R, in, T, true, false, 1.f, 1.f, GemmOut::kFp32);
    if (dropout == 0) return gemm_(dx, du, lora_bf16 + s.a_offset, T, in, R, false, false, 1.f, 1.f, GemmOut::kBf16);
    gemm_(x_dropped, du, lora_bf16 + s.a_offset, T, in, R, false, false, 1.f, 0.f, GemmOut::kBf16);
    dropout_backward(dx, x_dropped, T * in, dropout_seed, lora_dropout_stream(l, t), dropout, stream);
  }

  void gemm_(void* D, const bf16* A, const bf16* B, int64_t M, int64_t N, int64_t K, bool ta, bool tb, float alpha,
             float beta, GemmOut out) {
    loom::gemm(*gemm_ctx, D, A, B, M, N, K, ta, tb, alpha, beta, out, stream);
  }

  AttentionShape attention_shape(int l) const {
    return {cu_seqlens, ndoc, cfg.H, cfg.KVH, cfg.D, cfg.window[l], 1.f / std::sqrt(float(cfg.D))};
  }

  // Layer l from its input resid[l] (already written, or written here as prev_h + prev_out).
  void layer_forward(int l, const bf16* prev_h, const bf16* prev_out) {
    const ModelConfig& m = cfg;
    if (prev_h)
      residual_rmsnorm_forward(resid.at(l), xn1.at(l), rstd1.at(l), prev_h, prev_out, ln1.at(l), T, m.C, m.rms_eps,
                               stream);
    else
      rmsnorm_forward(xn1.at(l), rstd1.at(l), resid.at(l), ln1.at(l), T, m.C, m.rms_eps, stream);
    bf16* qo = m.qk_norm ? q_pre.at(l) : q.at(l);
    bf16* ko = m.qk_norm ? k_pre.at(l) : k.at(l);
    linear_forward(l, kQ, xn1.at(l), qo);
    linear_forward(l, kK, xn1.at(l), ko);
    linear_forward(l, kV, xn1.at(l), v.at(l));
    if (m.qk_norm) {
      rmsnorm_forward(q.at(l), rstd_q.at(l), qo, q_norm.at(l), T * m.H, m.D, m.rms_eps, stream);
      rmsnorm_forward(k.at(l), rstd_k.at(l), ko, k_norm.at(l), T * m.KVH, m.D, m.rms_eps, stream);
    }
    rope_forward(q.at(l), positions, inv_freq, T, m.H, m.D, int64_t(m.H) * m.D, stream);
    rope_forward(k.at(l), positions, inv_freq, T, m.KVH, m.D, int64_t(m.KVH) * m.D, stream);
    attention_forward(attn.at(l), lse.at(l), q.at(l), k.at(l), v.at(l), AttentionStrides::contiguous(m.H, m.KVH, m.D),
                      attention_shape(l), T, stream);
    linear_forward(l, kO, attn.at(l), tmp_c);
    residual_rmsnorm_forward(h.at(l), xn2.at(l), rstd2.at(l), resid.at(l), tmp_c, ln2.at(l), T, m.C, m.rms_eps,
                             stream);
    linear_forward(l, kGate, xn2.at(l), gate.at(l));
    linear_forward(l, kUp, xn2.at(l), up.at(l));
    swiglu_forward(act.at(l), gate.at(l), up.at(l), T * m.F, stream);
    linear_forward(l, kDown, act.at(l), tmp_c);  // the layer's output is h + tmp_c (added by the next norm)
  }

  // What the recompute policy did not keep, rebuilt from what it kept.
  void recompute(int l) {
    const ModelConfig& m = cfg;
    if (opt.recompute == "full") {
      layer_forward(l, nullptr, nullptr);
      return;
    }
    if (opt.recompute == "selective") {
      rmsnorm_forward(xn1.at(l), rstd1.at(l), resid.at(l), ln1.at(l), T, m.C, m.rms_eps, stream);
      rmsnorm_forward(xn2.at(l), rstd2.at(l), h.at(l), ln2.at(l), T, m.C, m.rms_eps, stream);
      swiglu_forward(act.at(l), gate.at(l), up.at(l), T * m.F, stream);
    }
  }

  // d_resid: gradient w.r.t. the layer's output on entry, w.r.t. its input on return.
  void layer_backward(int l) {
    const ModelConfig& m = cfg;
    recompute(l);
    linear_backward(l, kDown, d_resid, act.at(l), dact, false);
    swiglu_backward(gate.at(l), up.at(l), dact, gate.at(l), up.at(l), T * m.F, stream);  // dgate, dup in place
    linear_backward(l, kGate, gate.at(l), xn2.at(l), dxn, false);
    linear_backward(l, kUp, up.at(l), xn2.at(l), dxn, true);
    rmsnorm_backward(d_resid, dxn, d_resid, h.at(l), ln2.at(l), rstd2.at(l), T, m.C, stream);

    linear_backward(l, kO, d_resid, attn.at(l), dattn, false);
    attention_backward(dq, dk, dv, attn_scratch, dattn, q.at(l), k.at(l), v.at(l), attn.at(l), lse.at(l),
                       AttentionStrides::contiguous(m.H, m.KVH, m.D), attention_shape(l), T, stream);
    rope_backward(dq, positions, inv_freq, T, m.H, m.D, int64_t(m.H) * m.D, stream);
    rope_backward(dk, positions, inv_freq, T, m.KVH, m.D, int64_t(m.KVH) * m.D, stream);
    if (m.qk_norm) {
      rmsnorm_backward(dq, dq, nullptr, q_pre.at(l), q_norm.at(l), rstd_q.at(l), T * m.H, m.D, stream);
      rmsnorm_backward(dk, dk, nullptr, k_pre.at(l), k_norm.at(l), rstd_k.at(l), T * m.KVH, m.D, stream);
    }
    linear_backward(l, kQ, dq, xn1.at(l), dxn, false);
    linear_backward(l, kK, dk, xn1.at(l), dxn, true);
    linear_backward(l, kV, dv, xn1.at(l), dxn, true);
    if (last_micro && layer_grads_hook) layer_grads_hook(l);
    rmsnorm_backward(d_resid, dxn, d_resid, resid.at(l), ln1.at(l), rstd1.at(l), T, m.C, stream);
  }

  const bf16* head() const { return lm_head ? lm_head : embed; }

  // Forward through the final norm; the CE (with or without backward) follows.
  void forward() {
    const ModelConfig& m = cfg;
    embedding_forward(resid.at(0), tokens, embed, T, m.C, stream);
    for (int l = 0; l < m.L; ++l)
      layer_forward(l, l ? h.at(l - 1) : nullptr, tmp_c);
    const int L = m.L;
    residual_rmsnorm_forward(resid.at(L), xf, rstdf, h.at(L - 1), tmp_c, final_norm, T, m.C, m.rms_eps, stream);
  }

  void forward_backward(float grad_scale) {
    const ModelConfig& m = cfg;
    forward();
    lm_head_cross_entropy(*gemm_ctx, dxf, token_loss, loss_sum, logits, GemmOut::kFp32, xf, head(), targets, T, m.C, m.V,
                          grad_scale, ce_chunk, stream);
    rmsnorm_backward(d_resid, dxf, nullptr, resid.at(m.L), final_norm, rstdf, T, m.C, stream);
    for (int l = m.L - 1; l >= 0; --l) layer_backward(l);
  }
};

CudaModel::CudaModel(const ModelConfig& cfg, const WeightSource& src, const LoraLayout& lora,
                     const std::vector<float>& lora_init, const CudaModelOptions& opt)
    : impl_(std::make_unique<Impl>(cfg, lora, opt)) {
  Impl& d = *impl_;
  LOOM_CHECK(cuda_available(), "no CUDA device: ", cuda_device_summary());
  LOOM_CHECK(opt.quant == "nf4" || opt.quant == "bf16", "model.quant must be nf4 or bf16");
  d.nf4 = opt.quant == "nf4";
  d.Tmax = opt.token_budget;
  d.plan_weights();
  d.plan_lora();
  d.plan_activations();
  d.plan_scratch();
  if (opt.print_plan) std::fprintf(stderr, "%s", d.plan.table(false).c_str());
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  d.plan.check_fits(free_b, kContextReserve,
                    cat("lower train.token_budget (now ", opt.token_budget, ") or set train.recompute=full (now ",
                        opt.recompute, ")", d.nf4 ? "" : ", or use model.quant=nf4"));
  d.plan.allocate();
  CUDA_CHECK(cudaStreamCreateWithFlags(&d.stream, cudaStreamNonBlocking));
  d.gemm_ctx = std::make_unique<GemmContext>(d.workspace, kGemmWorkspace);
  for (int i = 0; i < 2; ++i) {
    CUDA_CHECK(cudaMallocHost(&d.host_inputs[i], size_t(4 * d.Tmax + 1) * 4));
    CUDA_CHECK(cudaEventCreateWithFlags(&d.uploaded[i], cudaEventDisableTiming));
  }
  CUDA_CHECK(cudaMallocHost(&d.host_scalars, 2 * sizeof(float)));
  d.load(src, lora_init);
}

CudaModel::~CudaModel() {
  Impl& d = *impl_;
  if (d.stream) cudaStreamSynchronize(d.stream);
  for (int i = 0; i < 2; ++i) {
    if (d.host_inputs[i]) cudaFreeHost(d.host_inputs[i]);
    if (d.uploaded[i]) cudaEventDestroy(d.uploaded[i]);
  }
  if (d.host_scalars) cudaFreeHost(d.host_scalars);
  d.gemm_ctx.reset();
  if (d.stream) cudaStreamDestroy(d.stream);
}

void CudaModel::forward_backward(const MicroBatch& mb, float grad_scale, uint64_t dropout_seed, bool last) {
  impl_->last_micro = last;
  impl_->dropout = impl_->lora.dropout;
  impl_->dropout_seed = dropout_seed;
  impl_->upload_inputs(mb);
  impl_->forward_backward(grad_scale);
}

void CudaModel::set_layer_grads_hook(std::function<void(int)> hook) { impl_->layer_grads_hook = std::move(hook); }
float* CudaModel::device_grads() { return impl_->lora_grad; }
float* CudaModel::device_loss_sum() { return impl_->loss_sum; }
cudaStream_t CudaModel::stream() const { return impl_->stream; }

std::vector<float> CudaModel::token_losses(const MicroBatch& mb) {
  Impl& d = *impl_;
  d.dropout = 0;  // eval mode
  d.upload_inputs(mb);
  d.forward();
  lm_head_cross_entropy(*d.gemm_ctx, nullptr, d.token_loss, nullptr, d.logits, GemmOut::kFp32, d.xf, d.head(), d.targets,
                        d.T, d.cfg.C, d.cfg.V, 1.f, d.ce_chunk, d.stream);
  std::vector<float> out(d.T);
  CUDA_CHECK(cudaMemcpyAsync(out.data(), d.token_loss, size_t(d.T) * 4, cudaMemcpyDeviceToHost, d.stream));
  CUDA_CHECK(cudaStreamSynchronize(d.stream));
  return out;
}

CudaModel::StepResult CudaModel::end_step(float lr) {
  Impl& d = *impl_;
  const int64_t n = d.lora.total;
  const TrainSection& t = d.opt.train;
  grad_norm_clip(d.norm, d.coef, d.partials, d.lora_grad, n, t.max_grad_norm, d.stream);
  AdamWParams a{lr, t.beta1, t.beta2, t.eps, t.weight_decay, ++adam_step_};
  adamw_update(d.lora_master, d.adam_m, d.adam_v, d.lora_grad, d.coef, n, a, d.stream);
  cast_fp32_to_bf16(d.lora_bf16, d.lora_master, n, d.stream);
  CUDA_CHECK(cudaMemcpyAsync(d.host_scalars, d.loss_sum, 4, cudaMemcpyDeviceToHost, d.stream));
  CUDA_CHECK(cudaMemcpyAsync(d.host_scalars + 1, d.norm, 4, cudaMemcpyDeviceToHost, d.stream));
  CUDA_CHECK(cudaMemsetAsync(d.lora_grad, 0, size_t(n) * 4, d.stream));
  CUDA_CHECK(cudaMemsetAsync(d.loss_sum, 0, 4, d.stream));
  CUDA_CHECK(cudaStreamSynchronize(d.stream));
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  peak_gib_ = std::max(peak_gib_, double(total_b - free_b) / double(size_t(1) << 30));
  return {double(d.host_scalars[0]), double(d.host_scalars[1])};
}

std::vector<float> CudaModel::lora_params() const {
  std::vector<float> p(impl_->lora.total);
  CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  CUDA_CHECK(cudaMemcpy(p.data(), impl_->lora_master, p.size() * 4, cudaMemcpyDeviceToHost));
  return p;
}

std::vector<float> CudaModel::lora_grads() const {
  std::vector<float> g(impl_->lora.total);
  CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  CUDA_CHECK(cudaMemcpy(g.data(), impl_->lora_grad, g.size() * 4, cudaMemcpyDeviceToHost));
  return g;
}

void CudaModel::get_optimizer_state(std::vector<float>& m, std::vector<float>& v) const {
  m.resize(impl_->lora.total);
  v.resize(impl_->lora.total);
  CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  CUDA_CHECK(cudaMemcpy(m.data(), impl_->adam_m, m.size() * 4, cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(v.data(), impl_->adam_v, v.size() * 4, cudaMemcpyDeviceToHost));
}

void CudaModel::set_state(const std::vector<float>& params, const std::vector<float>& m, const std::vector<float>& v,
                          int step) {
  Impl& d = *impl_;
  d.set_lora(params);
  LOOM_CHECK(int64_t(m.size()) == d.lora.total && int64_t(v.size()) == d.lora.total, "optimizer state size mismatch");
  upload(d.adam_m, m);
  upload(d.adam_v, v);
  adam_step_ = step;
}

size_t CudaModel::planned_bytes() const { return impl_->plan.total_bytes(); }

std::string CudaModel::describe() const {
  return cat("cuda: ", cuda_device_summary(), " | ", impl_->opt.quant, " | recompute ", impl_->opt.recompute,
             " | plan ", format_bytes(planned_bytes()));
}

}  // namespace loom
