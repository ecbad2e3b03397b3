#include "models/reference_model.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "ops/error.h"
#include "ops/dropout.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/lora_linear.h"
#include "ops/matmul.h"
#include "ops/moe_router.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

namespace loom {


// State of one pass: the micro-batch, LoRA pointers (lora null: adapters off), the dropout of a
// training pass.
struct ReferenceModel::Pass {
  const MicroBatch& mb;
  const float* lora;
  float* dlora;
  float dropout;  // lora dropout p of this pass: 0 unless training
  uint64_t dropout_seed;
  int64_t T;
  KvCache* cache = nullptr;  // generation: earlier tokens' keys and values
  MoeAuxSums* aux = nullptr;         // forward of an MoE model: the load-balancing loss's sums
  const float* aux_dprob = nullptr;  // backward: aux_coef() · d aux / d p_e (E), null when off
};


ReferenceModel::ReferenceModel(const ModelConfig& cfg, ModelWeights weights, const LoraLayout& lora)
    : cfg_(cfg), w_(std::move(weights)), lora_(lora), inv_freq_(rope_inv_freq(cfg.D, cfg.rope)) {}

namespace {

std::vector<float> zeros(int64_t n) { return std::vector<float>(size_t(n), 0.f); }

void add_into(std::vector<float>& acc, const std::vector<float>& v) {
  for (size_t i = 0; i < acc.size(); ++i) acc[i] += v[i];
}

const float* bias_of(const LayerWeights& lw, int t) {
  const std::vector<float>* b[kNumTargets] = {&lw.q_bias, &lw.k_bias,  &lw.v_bias,   &lw.o_bias,
                                              &lw.gate_bias, &lw.up_bias, &lw.down_bias};
  return b[t]->empty() ? nullptr : b[t]->data();
}

}  // namespace

void ReferenceModel::linear_forward(int l, int t, Pass& p, LayerActs& a, const float* x, float* y) const {
  const LoraSlot& s = lora_.slot(l, LoraTarget(t));
  auto [in, out] = projection_shape(cfg_, LoraTarget(t));
  const LayerWeights& lw = w_.layers[l];
  LoraRef ref;
  const float* xl = x;
  const bool adapted = s.enabled && p.lora;
  if (adapted) {
    ref = {p.lora + s.a_offset, p.lora + s.b_offset, lora_.R, lora_.scale};
    a.u[t] = zeros(p.T * lora_.R);
    if (p.dropout > 0) {  // PEFT's nn.Dropout on the LoRA input (ops/dropout.h)
      a.xl[t].resize(size_t(p.T) * in);
      dropout_forward_ref(a.xl[t].data(), x, p.T * in, p.dropout_seed, lora_dropout_stream(l, LoraTarget(t)),
                          p.dropout);
      xl = a.xl[t].data();
    }
  }
  lora_linear_forward_ref(y, adapted ? a.u[t].data() : nullptr, x, xl, projection(lw, t)->data(), bias_of(lw, t),
                          ref, p.T, in, out);
}

// dx (T, in) written; x (T, in) is the projection's forward input.
void ReferenceModel::linear_backward(int l, int t, Pass& p, const LayerActs& a, const float* x, const float* dy,
                                     float* dx) const {
  const LoraSlot& s = lora_.slot(l, LoraTarget(t));
  auto [in, out] = projection_shape(cfg_, LoraTarget(t));
  const float* W = projection(w_.layers[l], t)->data();
  if (!s.enabled) {
    lora_linear_backward_ref(dx, nullptr, nullptr, nullptr, nullptr, dy, nullptr, nullptr, W, LoraRef{}, p.T, in, out);
    return;
  }
  LoraRef ref{p.lora + s.a_offset, p.lora + s.b_offset, lora_.R, lora_.scale};
  std::vector<float> du = zeros(p.T * lora_.R);
  const bool dropout = p.dropout > 0;
  std::vector<float> dxl = dropout ? zeros(p.T * in) : std::vector<float>();
  const float* xl = dropout ? a.xl[t].data() : x;
  lora_linear_backward_ref(dx, dropout ? dxl.data() : nullptr, p.dlora + s.a_offset, p.dlora + s.b_offset,
                           du.data(), dy, xl, a.u[t].data(), W, ref, p.T, in, out);
  if (dropout)
    dropout_backward_ref(dx, dxl.data(), p.T * in, p.dropout_seed, lora_dropout_stream(l, LoraTarget(t)),
                         p.dropout);
}

namespace {

// Expert e's slot of target t in layer l; a disabled one where the layout has no experts there.
const LoraSlot& expert_slot(const LoraLayout& lay, int l, int e, ExpertTarget t) {
  static const LoraSlot kNone;
  return size_t(l) < lay.experts.size() && !lay.experts[size_t(l)].empty() ? lay.expert_slot(l, e, t) : kNone;
}

}  // namespace

void ReferenceModel::expert_forward(int l, int e, ExpertTarget t, Pass& p, const float* x, float* y,
                                    std::vector<float>& u, int64_t n) const {
  const LoraSlot& s = expert_slot(lora_, l, e, t);
  const ModelConfig& m = cfg_;
  const LayerWeights& lw = w_.layers[l];
  const int in = t == kExpertGateUp ? m.C : m.expert_F, out = t == kExpertGateUp ? 2 * m.expert_F : m.C;
  const float* W = (t == kExpertGateUp ? lw.experts_gate_up.data() : lw.experts_down.data()) + int64_t(e) * in * out;
  const bool adapted = s.enabled && p.lora;
  LoraRef ref;
  if (adapted) {
    ref = {p.lora + s.a_offset, p.lora + s.b_offset, s.r, s.scale};
    u = zeros(n * s.r);
  }
  lora_linear_forward_ref(y, adapted ? u.data() : nullptr, x, x, W, nullptr, ref, n, in, out);
}

void ReferenceModel::expert_backward(int l, int e, ExpertTarget t, Pass& p, const float* x,
                                     const std::vector<float>& u, const float* dy, float* dx, int64_t n) const {
  const LoraSlot& s = expert_slot(lora_, l, e, t);
  const ModelConfig& m = cfg_;
  const LayerWeights& lw = w_.layers[l];
  const int in = t == kExpertGateUp ? m.C : m.expert_F, out = t == kExpertGateUp ? 2 * m.expert_F : m.C;
  const float* W = (t == kExpertGateUp ? lw.experts_gate_up.data() : lw.experts_down.data()) + int64_t(e) * in * out;
  if (!s.enabled) {
    lora_linear_backward_ref(dx, nullptr, nullptr, nullptr, nullptr, dy, nullptr, nullptr, W, LoraRef{}, n, in, out);
    return;
  }
  std::vector<float> du = zeros(n * s.r);
  lora_linear_backward_ref(dx, nullptr, p.dlora + s.a_offset, p.dlora + s.b_offset, du.data(), dy, x, u.data(), W,
                           LoraRef{p.lora + s.a_offset, p.lora + s.b_offset, s.r, s.scale}, n, in, out);
}

void ReferenceModel::moe_forward(int l, Pass& p, LayerActs& a, float* out) const {
  const ModelConfig& m = cfg_;
  const int64_t T = p.T, C = m.C, FE = m.expert_F;
  const int E = m.num_experts, K = m.experts_per_token;
  a.router_logits = zeros(T * E);
  matmul_ref(a.router_logits.data(), a.xn2.data(), w_.layers[l].router.data(), T, E, C, false, true);
  a.probs = zeros(T * E);
  a.route_weights = zeros(T * K);
  a.route_experts.assign(size_t(T * K), 0);
  moe_route_ref(a.route_experts.data(), a.route_weights.data(), a.probs.data(), a.router_logits.data(), T, E, K,
                m.norm_topk_prob);
  if (p.aux) moe_aux_accumulate_ref(*p.aux, a.route_experts.data(), a.probs.data(), T, K);
  a.experts.assign(size_t(E), LayerActs::Expert());
  for (int64_t t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) {
      LayerActs::Expert& ex = a.experts[size_t(a.route_experts[size_t(t * K + k)])];
      ex.tokens.push_back(int32_t(t));
      ex.picks.push_back(k);
    }
  // Expert by expert in increasing order, each adding w · its output to its tokens' rows (the order
  // transformers sums them in).
  for (int e = 0; e < E; ++e) {
    LayerActs::Expert& ex = a.experts[size_t(e)];
    const int64_t n = int64_t(ex.tokens.size());
    if (n == 0) continue;
    ex.x = zeros(n * C);
    for (int64_t i = 0; i < n; ++i)
      std::copy_n(&a.xn2[size_t(ex.tokens[size_t(i)] * C)], C, &ex.x[size_t(i * C)]);
    std::vector<float> gate_up = zeros(n * 2 * FE);
    expert_forward(l, e, kExpertGateUp, p, ex.x.data(), gate_up.data(), ex.u_gate_up, n);
    ex.gate = zeros(n * FE);
    ex.up = zeros(n * FE);
    for (int64_t i = 0; i < n; ++i) {  // each row: its FE gate values, then its FE up values
      std::copy_n(&gate_up[size_t(i * 2 * FE)], FE, &ex.gate[size_t(i * FE)]);
      std::copy_n(&gate_up[size_t(i * 2 * FE + FE)], FE, &ex.up[size_t(i * FE)]);
    }
    ex.act = zeros(n * FE);
    swiglu_forward_ref(ex.act.data(), ex.gate.data(), ex.up.data(), n * FE);
    ex.y = zeros(n * C);
    expert_forward(l, e, kExpertDown, p, ex.act.data(), ex.y.data(), ex.u_down, n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = ex.tokens[size_t(i)];
      const float w = a.route_weights[size_t(t * K + ex.picks[size_t(i)])];
      for (int64_t c = 0; c < C; ++c) out[t * C + c] += w * ex.y[size_t(i * C + c)];
    }
  }
}

void ReferenceModel::moe_backward(int l, Pass& p, const LayerActs& a, const float* dout, float* dxn2) const {
  const ModelConfig& m = cfg_;
  const int64_t T = p.T, C = m.C, FE = m.expert_F;
  const int E = m.num_experts, K = m.experts_per_token;
  std::vector<float> dweights = zeros(T * K);
  for (int e = 0; e < E; ++e) {
    const LayerActs::Expert& ex = a.experts[size_t(e)];
    const int64_t n = int64_t(ex.tokens.size());
    if (n == 0) continue;
    // out_t += w · y: dy = w · dout_t, dw = dout_t · y.
    std::vector<float> dy = zeros(n * C);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = ex.tokens[size_t(i)], wk = t * K + ex.picks[size_t(i)];
      const float w = a.route_weights[size_t(wk)];
      double dw = 0;
      for (int64_t c = 0; c < C; ++c) {
        dy[size_t(i * C + c)] = w * dout[t * C + c];
        dw += double(dout[t * C + c]) * ex.y[size_t(i * C + c)];
      }
      dweights[size_t(wk)] = float(dw);
    }
    std::vector<float> dact = zeros(n * FE), dgate = zeros(n * FE), dup = zeros(n * FE);
    expert_backward(l, e, kExpertDown, p, ex.act.data(), ex.u_down, dy.data(), dact.data(), n);
    swiglu_backward_ref(dgate.data(), dup.data(), dact.data(), ex.gate.data(), ex.up.data(), n * FE);
    std::vector<float> dgate_up = zeros(n * 2 * FE), dx = zeros(n * C);
    for (int64_t i = 0; i < n; ++i) {
      std::copy_n(&dgate[size_t(i * FE)], FE, &dgate_up[size_t(i * 2 * FE)]);
      std::copy_n(&dup[size_t(i * FE)], FE, &dgate_up[size_t(i * 2 * FE + FE)]);
    }
    expert_backward(l, e, kExpertGateUp, p, ex.x.data(), ex.u_gate_up, dgate_up.data(), dx.data(), n);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < C; ++c) dxn2[ex.tokens[size_t(i)] * C + c] += dx[size_t(i * C + c)];
  }
  // Through the routing weights (and the load-balancing loss's d aux / d p) into the router logits,
  // then through the frozen router: dxn2 += dz · Wr.
  std::vector<float> dprobs;
  if (p.aux_dprob) {
    dprobs = zeros(T * E);
    for (int64_t t = 0; t < T; ++t) std::copy_n(p.aux_dprob, E, &dprobs[size_t(t * E)]);
  }
  std::vector<float> dlogits = zeros(T * E);
  moe_route_backward_ref(dlogits.data(), dweights.data(), p.aux_dprob ? dprobs.data() : nullptr, a.probs.data(),
                         a.route_experts.data(), a.route_weights.data(), T, E, K, m.norm_topk_prob);
  matmul_ref(dxn2, dlogits.data(), w_.layers[l].router.data(), T, C, E, false, false, 1.f, 1.f);
}

void ReferenceModel::layer_forward(int l, Pass& p, LayerActs& a, std::vector<float>& x) const {
  const ModelConfig& m = cfg_;
  const LayerWeights& lw = w_.layers[l];
  const int64_t T = p.T;
  a.x = x;
  a.xn1 = zeros(T * m.C);
  a.rstd1 = zeros(T);
  rmsnorm_forward_ref(a.xn1.data(), a.rstd1.data(), a.x.data(), lw.ln1.data(), T, m.C, m.rms_eps);

  a.q = zeros(T * m.H * m.D);
  a.k = zeros(T * m.KVH * m.D);
  a.v = zeros(T * m.KVH * m.D);
  linear_forward(l, kQ, p, a, a.xn1.data(), a.q.data());
  linear_forward(l, kK, p, a, a.xn1.data(), a.k.data());
  linear_forward(l, kV, p, a, a.xn1.data(), a.v.data());
  if (m.qk_norm) {
    a.q_pre = a.q;
    a.k_pre = a.k;
    a.rstd_q = zeros(T * m.H);
    a.rstd_k = zeros(T * m.KVH);
    rmsnorm_forward_ref(a.q.data(), a.rstd_q.data(), a.q_pre.data(), lw.q_norm.data(), T * m.H, m.D, m.rms_eps);
    rmsnorm_forward_ref(a.k.data(), a.rstd_k.data(), a.k_pre.data(), lw.k_norm.data(), T * m.KVH, m.D, m.rms_eps);
  }
  rope_forward_ref(a.q.data(), p.mb.positions.data(), inv_freq_.data(), T, m.H, m.D);
  rope_forward_ref(a.k.data(), p.mb.positions.data(), inv_freq_.data(), T, m.KVH, m.D);

  AttentionShape s{p.mb.cu_seqlens.data(), p.mb.ndoc(), m.H, m.KVH, m.D, m.window[l], 1.f / std::sqrt(float(m.D))};
  a.attn = zeros(T * m.H * m.D);
  if (p.cache) {  // generation: the new tokens join the cache, then attend to all of it
    std::vector<float>& k = p.cache->k[size_t(l)];
    std::vector<float>& v = p.cache->v[size_t(l)];
    k.insert(k.end(), a.k.begin(), a.k.end());
    v.insert(v.end(), a.v.begin(), a.v.end());
    attention_cached_ref(a.attn.data(), a.q.data(), k.data(), v.data(), T, p.cache->length, s);
  } else {
    a.lse = zeros(T * m.H);
    attention_forward_ref(a.attn.data(), a.lse.data(), a.q.data(), a.k.data(), a.v.data(), s);
  }

  std::vector<float> o = zeros(T * m.C);
  linear_forward(l, kO, p, a, a.attn.data(), o.data());
  a.h = a.x;
  add_into(a.h, o);

  a.xn2 = zeros(T * m.C);
  a.rstd2 = zeros(T);
  rmsnorm_forward_ref(a.xn2.data(), a.rstd2.data(), a.h.data(), lw.ln2.data(), T, m.C, m.rms_eps);
  if (m.is_moe_layer(l)) {
    std::vector<float> mlp = zeros(T * m.C);
    moe_forward(l, p, a, mlp.data());
    x = a.h;
    add_into(x, mlp);
    return;
  }
  a.gate = zeros(T * m.F);
  a.up = zeros(T * m.F);
  a.act = zeros(T * m.F);
  linear_forward(l, kGate, p, a, a.xn2.data(), a.gate.data());
  linear_forward(l, kUp, p, a, a.xn2.data(), a.up.data());
  swiglu_forward_ref(a.act.data(), a.gate.data(), a.up.data(), T * m.F);
  std::vector<float> down = zeros(T * m.C);
  linear_forward(l, kDown, p, a, a.act.data(), down.data());
  x = a.h;
  add_into(x, down);
}

// dx (T, C): gradient w.r.t. the layer output on entry, w.r.t. the layer input on return.
void ReferenceModel::layer_backward(int l, Pass& p, const LayerActs& a, std::vector<float>& dx) const {
  const ModelConfig& m = cfg_;
  const LayerWeights& lw = w_.layers[l];
  const int64_t T = p.T;

  // MLP: x_out = h + mlp(rms2(h)); dh starts as the residual gradient.
  std::vector<float> dxn2 = zeros(T * m.C), tmp = zeros(T * m.C);
  if (m.is_moe_layer(l)) {
    moe_backward(l, p, a, dx.data(), dxn2.data());
  } else {
    std::vector<float> dact = zeros(T * m.F), dgate = zeros(T * m.F), dup = zeros(T * m.F);
    linear_backward(l, kDown, p, a, a.act.data(), dx.data(), dact.data());
    swiglu_backward_ref(dgate.data(), dup.data(), dact.data(), a.gate.data(), a.up.data(), T * m.F);
    linear_backward(l, kGate, p, a, a.xn2.data(), dgate.data(), dxn2.data());
    linear_backward(l, kUp, p, a, a.xn2.data(), dup.data(), tmp.data());
    add_into(dxn2, tmp);
  }
  std::vector<float>& dh = dx;
  rmsnorm_backward_ref(tmp.data(), dxn2.data(), a.h.data(), lw.ln2.data(), a.rstd2.data(), T, m.C);
  add_into(dh, tmp);

  // Attention: h = x + o(attn).
  std::vector<float> dattn = zeros(T * m.H * m.D);
  linear_backward(l, kO, p, a, a.attn.data(), dh.data(), dattn.data());
  std::vector<float> dq = zeros(T * m.H * m.D), dk = zeros(T * m.KVH * m.D), dv = zeros(T * m.KVH * m.D);
  AttentionShape s{p.mb.cu_seqlens.data(), p.mb.ndoc(), m.H, m.KVH, m.D, m.window[l], 1.f / std::sqrt(float(m.D))};
  attention_backward_ref(dq.data(), dk.data(), dv.data(), dattn.data(), a.q.data(), a.k.data(), a.v.data(),
                         a.attn.data(), a.lse.data(), s);
  rope_backward_ref(dq.data(), p.mb.positions.data(), inv_freq_.data(), T, m.H, m.D);
  rope_backward_ref(dk.data(), p.mb.positions.data(), inv_freq_.data(), T, m.KVH, m.D);
  if (m.qk_norm) {
    std::vector<float> dq_pre = zeros(T * m.H * m.D), dk_pre = zeros(T * m.KVH * m.D);
    rmsnorm_backward_ref(dq_pre.data(), dq.data(), a.q_pre.data(), lw.q_norm.data(), a.rstd_q.data(), T * m.H, m.D);
    rmsnorm_backward_ref(dk_pre.data(), dk.data(), a.k_pre.data(), lw.k_norm.data(), a.rstd_k.data(), T * m.KVH, m.D);
    dq.swap(dq_pre);
    dk.swap(dk_pre);
  }
  std::vector<float> dxn1 = zeros(T * m.C);
  linear_backward(l, kQ, p, a, a.xn1.data(), dq.data(), dxn1.data());
  linear_backward(l, kK, p, a, a.xn1.data(), dk.data(), tmp.data());
  add_into(dxn1, tmp);
  linear_backward(l, kV, p, a, a.xn1.data(), dv.data(), tmp.data());
  add_into(dxn1, tmp);
  rmsnorm_backward_ref(tmp.data(), dxn1.data(), a.x.data(), lw.ln1.data(), a.rstd1.data(), T, m.C);
  add_into(dx, tmp);
}

CrossEntropyOut ReferenceModel::forward(const MicroBatch& mb, const float* lora, const PassOptions& pass,
                                        float* token_loss, std::vector<float>* logits, ReferencePass* keep) const {
  ReferencePass local;
  ReferencePass& kept = keep ? *keep : local;
  run_layers(mb, lora, pass, kept);
  const ModelConfig& m = cfg_;
  const int64_t T = mb.T();
  if (logits) {
    logits->assign(size_t(T) * m.V, 0.f);
    matmul_ref(logits->data(), kept.xf.data(), w_.head(), T, m.V, m.C, false, true);
  }
  return lm_head_cross_entropy_ref(nullptr, token_loss, kept.xf.data(), w_.head(), mb.targets.data(), nullptr, T, m.C,
                                   m.V);
}

void ReferenceModel::extend(KvCache& cache, const std::vector<int32_t>& tokens, const float* lora, bool adapters,
                            std::vector<float>& logits) const {
  const ModelConfig& m = cfg_;
  const int64_t n = int64_t(tokens.size());
  LOOM_CHECK(n > 0, "extend: no tokens to append");
  LOOM_CHECK(m.max_position <= 0 || cache.length + n <= m.max_position, "generation: ", cache.length + n,
             " tokens exceed the model's max_position_embeddings (", m.max_position, ")");
  cache.k.resize(size_t(m.L));
  cache.v.resize(size_t(m.L));
  MicroBatch mb;
  mb.tokens = tokens;
  mb.targets.assign(size_t(n), kIgnoreIndex);
  for (int64_t i = 0; i < n; ++i) mb.positions.push_back(int32_t(cache.length + i));
  mb.cu_seqlens = {0, int32_t(n)};
  ReferencePass kept;
  run_layers(mb, lora, PassOptions{adapters, false, 0}, kept, &cache);
  cache.length += n;
  logits.assign(size_t(n) * m.V, 0.f);
  matmul_ref(logits.data(), kept.xf.data(), w_.head(), n, m.V, m.C, false, true);
}

void ReferenceModel::run_layers(const MicroBatch& mb, const float* lora, const PassOptions& pass,
                                ReferencePass& kept, KvCache* cache) const {
  const ModelConfig& m = cfg_;
  const int64_t T = mb.T();
  LOOM_CHECK(T > 0 && int64_t(mb.targets.size()) == T && int64_t(mb.positions.size()) == T &&
                 !mb.cu_seqlens.empty() && mb.cu_seqlens.back() == T,
             "malformed micro-batch (T = ", T, ")");
  for (int32_t id : mb.tokens) LOOM_CHECK(id >= 0 && id < m.V, "token id ", id, " is outside the vocabulary (", m.V, ")");
  LOOM_CHECK(!pass.adapters || lora || lora_.total == 0, "forward with adapters on needs the LoRA vector");
  Pass p{mb, pass.adapters ? lora : nullptr, nullptr, pass.train ? lora_.dropout : 0.f, pass.dropout_seed, T, cache};
  kept.mb = mb;
  kept.lora = p.lora;
  kept.options = pass;
  kept.x = zeros(T * m.C);
  embedding_forward_ref(kept.x.data(), mb.tokens.data(), w_.embed.data(), T, m.C);
  kept.acts.assign(m.L, LayerActs());
  MoeAuxSums aux(m.num_experts);
  if (m.is_moe()) p.aux = &aux;
  for (int l = 0; l < m.L; ++l) layer_forward(l, p, kept.acts[l], kept.x);
  kept.aux_loss = moe_aux_loss_ref(aux);
  kept.aux_dprob.clear();
  if (m.is_moe() && aux_coef() != 0) {
    kept.aux_dprob = zeros(m.num_experts);
    moe_aux_dprob_ref(kept.aux_dprob.data(), aux);
    for (float& d : kept.aux_dprob) d *= aux_coef();
  }
  kept.xf = zeros(T * m.C);
  kept.rstdf = zeros(T);
  rmsnorm_forward_ref(kept.xf.data(), kept.rstdf.data(), kept.x.data(), w_.final_norm.data(), T, m.C, m.rms_eps);
}

// The LM head + cross-entropy with its gradient: loss_t (token_loss, optional) and dxf of the
// weights; then the layers' backward.
CrossEntropyOut ReferenceModel::head_and_backward(const ReferencePass& kept, const float* token_weight,
                                                  float* token_loss, float* dlora) const {
  const ModelConfig& m = cfg_;
  const MicroBatch& mb = kept.mb;
  const int64_t T = mb.T();
  LOOM_CHECK(kept.options.adapters && (kept.lora || lora_.total == 0) && int64_t(kept.acts.size()) == m.L,
             "backward needs a kept forward with the adapters on");
  Pass p{mb, kept.lora, dlora, kept.options.train ? lora_.dropout : 0.f, kept.options.dropout_seed, T};
  p.aux_dprob = kept.aux_dprob.empty() ? nullptr : kept.aux_dprob.data();
  std::vector<float> dxf = zeros(T * m.C);
  const CrossEntropyOut ce = lm_head_cross_entropy_ref(dxf.data(), token_loss, kept.xf.data(), w_.head(),
                                                       mb.targets.data(), token_weight, T, m.C, m.V);
  std::vector<float> dx = zeros(T * m.C);
  rmsnorm_backward_ref(dx.data(), dxf.data(), kept.x.data(), w_.final_norm.data(), kept.rstdf.data(), T, m.C);
  for (int l = m.L - 1; l >= 0; --l) layer_backward(l, p, kept.acts[l], dx);
  return ce;
}

void ReferenceModel::backward(const ReferencePass& kept, const float* token_weight, float* dlora) const {
  head_and_backward(kept, token_weight, nullptr, dlora);
}

CrossEntropyOut ReferenceModel::forward_backward(const MicroBatch& mb, const float* lora, float* dlora,
                                                 const float* token_weight, const PassOptions& pass,
                                                 float* token_loss) const {
  ReferencePass kept;
  run_layers(mb, lora, pass, kept);
  return head_and_backward(kept, token_weight, token_loss, dlora);
}

}  // namespace loom
