#include "models/moe_layer.h"

#include <algorithm>
#include <limits>
#include <type_traits>

#include "ops/cast.h"
#include "ops/error.h"
#include "ops/grouped_gemm.h"
#include "ops/moe_permute.h"
#include "ops/moe_route.h"
#include "ops/swiglu.h"

namespace loom {
namespace {

constexpr int kNf4Blocksize = 64;  // as the dense projections (models/device_weights.cpp) and apply_nf4_roundtrip

// Whether any sparse layer's experts carry adapters of target t.
bool any_expert_adapted(const LoraLayout& lora, ExpertTarget t) {
  for (const auto& layer : lora.experts)
    if (!layer.empty() && layer[0][t].enabled) return true;
  return false;
}

}  // namespace

MoeLayers::MoeLayers(const ModelConfig& cfg, const LoraLayout& lora, const MoeOptions& opt)
    : cfg_(cfg),
      opt_(opt),
      E_(cfg.num_experts),
      K_(cfg.experts_per_token),
      C_(cfg.C),
      FE_(cfg.expert_F),
      r_(lora.R),
      Tmax_(opt.token_budget) {
  const std::string what = cat("the GPU path (", cfg.arch, ", ", E_, " experts, ", K_, " per token)");
  LOOM_CHECK(!opt.generation, what, ": generation (ModelMode::kGenerate, or train.sample_every's samples) is "
             "not implemented for mixture-of-experts models; turn samples off (train.sample_every: 0)");
  LOOM_CHECK(!opt.training || opt.recompute == Recompute::kFull, what, ": training a mixture-of-experts model needs "
             "train.recompute=full (now ", recompute_name(opt.recompute), "): its sparse layers keep no activations "
             "and rerun their forward in backward");
  LOOM_CHECK(E_ >= 1 && E_ <= kMoeMaxExperts && K_ >= 1 && K_ <= std::min(E_, kMoeMaxTopK), what,
             ": the router kernels take 1..", kMoeMaxExperts, " experts and 1..", kMoeMaxTopK,
             " per token (at most E)");
  LOOM_CHECK(C_ % 8 == 0 && FE_ % 8 == 0, what, ": hidden size ", C_, " and expert width ", FE_,
             " must be multiples of 8 (the grouped GEMMs and the token permutation move 16-byte rows)");
  LOOM_CHECK(Tmax_ >= 1 && Tmax_ * K_ <= std::numeric_limits<int32_t>::max(), what, ": token budget ", Tmax_,
             " times ", K_, " experts per token must fit the permutation's int32 rows");
  gate_up_adapted_ = any_expert_adapted(lora, kExpertGateUp);
  down_adapted_ = any_expert_adapted(lora, kExpertDown);
  LOOM_CHECK(!(gate_up_adapted_ || down_adapted_) || r_ % 8 == 0, what, ": lora.r must be a multiple of 8 for "
             "LoRA on the experts (found ", r_, "; the grouped GEMMs take ranks in steps of 8), or adapt the "
             "attention only");
  sparse_index_.assign(size_t(cfg.L), -1);
  for (int l = 0; l < cfg.L; ++l)
    if (cfg.is_moe_layer(l)) sparse_index_[size_t(l)] = sparse_layers_++;
}

void MoeLayers::plan(MemoryPlan& plan) {
  plan_weights(plan);
  plan_scratch(plan);
}

void MoeLayers::plan_weights(MemoryPlan& p) {
  const size_t S = size_t(sparse_layers_), E = E_, C = C_, FE = FE_, n = FE * C;
  auto per_layer = [&](const std::string& name, auto& buf, size_t count, const std::string& shape) {
    using T = std::remove_pointer_t<decltype(buf.base)>;
    buf.stride = padded<T>(count);
    plan_buffer(p, "weights", name, &buf.base, buf.stride * S, cat("(", S, " sparse layers, ", shape.substr(1)));
  };
  per_layer("router", router_, E * C, "(E, C)");
  if (!nf4()) {
    per_layer("experts gate_up", gate_up_, E * 2 * n, "(E, 2·FE, C)");
    per_layer("experts down", down_, E * n, "(E, C, FE)");
    return;
  }
  // 3·E tensors of n values per layer, each in its own 256-byte-aligned slot.
  const size_t blocks = (n + kNf4Blocksize - 1) / kNf4Blocksize;
  codes_per_piece_ = padded<uint8_t>((n + 1) / 2);
  per_layer("experts nf4 codes", codes_, 3 * E * codes_per_piece_, "(3·E, FE·C/2)");
  if (opt_.double_quant) {
    blocks_per_piece_ = padded<uint8_t>(blocks);
    nested_per_piece_ = padded<float>((blocks + 255) / 256);
    per_layer("experts absmax codes", absmax_q_, 3 * E * blocks_per_piece_, "(3·E, FE·C/64)");
    per_layer("experts nested absmax", nested_absmax_, 3 * E * nested_per_piece_, "(3·E, FE·C/16384)");
  } else {
    blocks_per_piece_ = padded<float>(blocks);
    per_layer("experts absmax", absmax_, 3 * E * blocks_per_piece_, "(3·E, FE·C/64)");
  }
  plan_buffer(p, "weights", "experts nf4 code table", &nf4_table_, 16, "(16)");
  p.add_raw("weights", "experts nf4 descriptors", reinterpret_cast<void**>(&device_nf4_), S * 3 * E * sizeof(Nf4Device),
            cat("(", S, " sparse layers, 3·E)"), "u8");
  plan_buffer(p, "weights", "experts nf4 nested map", &nested_map_, 256, "(256)");
  plan_buffer(p, "moe", "dequantized experts", &dequantized_, 3 * E * n, "(E, 3·FE, C)");
}

void MoeLayers::plan_scratch(MemoryPlan& p) {
  const size_t T = size_t(Tmax_), E = E_, K = K_, C = C_, FE = FE_, R = T * K;
  plan_buffer(p, "moe", "router logits", &logits_, T * E, "(T, E)");
  plan_buffer(p, "moe", "router probs", &probs_, T * E, "(T, E)");
  plan_buffer(p, "moe", "chosen experts", &experts_, T * K, "(T, K)");
  plan_buffer(p, "moe", "routing weights", &weights_, T * K, "(T, K)");
  plan_buffer(p, "moe", "expert counts", &counts_, E, "(E)");
  plan_buffer(p, "moe", "expert offsets", &offsets_, E + 1, "(E+1)");
  plan_buffer(p, "moe", "row of slot", &row_of_, R, "(T·K)");
  plan_buffer(p, "moe", "slot of row", &slot_of_, R, "(T·K)");
  p.add_raw("moe", "permutation workspace", &permute_workspace_, moe_permute_workspace_bytes(Tmax_, E_, K_), "bytes",
            "u8");
  plan_buffer(p, "moe", "sorted inputs xs", &xs_, R * C, "(T·K, C)");
  plan_buffer(p, "moe", "expert outputs ys", &ys_, R * C, "(T·K, C)");
  plan_buffer(p, "moe", "expert gate | up", &gate_up_rows_, R * 2 * FE, "(T·K, 2·FE)");
  plan_buffer(p, "moe", "expert silu(gate)·up", &act_, R * FE, "(T·K, FE)");
  const size_t r = size_t(r_);
  if (gate_up_adapted_) plan_buffer(p, "moe", "LoRA x·Aᵀ gate_up", &u_gate_up_, R * 2 * r, "(T·K, 2r)");
  if (down_adapted_) plan_buffer(p, "moe", "LoRA x·Aᵀ down", &u_down_, R * r, "(T·K, r)");
  if (!opt_.training) return;
  plan_buffer(p, "moe", "d router logits", &dlogits_, T * E, "(T, E)");
  plan_buffer(p, "moe", "d router logits bf16", &dlogits_bf16_, T * E, "(T, E)");
  plan_buffer(p, "moe", "d routing weights", &dweights_, T * K, "(T, K)");
  plan_buffer(p, "moe", "dys / dxs", &dxs_, R * C, "(T·K, C)");
  if (gate_up_adapted_ || down_adapted_) plan_buffer(p, "moe", "LoRA du", &du_, R * 2 * r, "(T·K, 2r)");
  if (!aux_on()) return;
  p.add_raw("moe", "aux expert counts", reinterpret_cast<void**>(&aux_counts_), E * sizeof(double), "(E)", "f64");
  p.add_raw("moe", "aux probability sums", reinterpret_cast<void**>(&aux_prob_sum_), E * sizeof(double), "(E)", "f64");
  plan_buffer(p, "moe", "aux d/dp", &aux_dprob_, E, "(E)");
  p.add_raw("moe", "aux workspace", &aux_workspace_, moe_aux_workspace_bytes(E_), "bytes", "u8");
}

void MoeLayers::load_layer(int l, const LayerWeights& lw) {
  const int s = sparse_index_[size_t(l)];
  if (s < 0) return;
  const size_t E = E_, n = size_t(FE_) * C_;
  LOOM_CHECK(lw.router.size() == E * C_ && lw.experts_gate_up.size() == 2 * E * n && lw.experts_down.size() == E * n,
             "layer ", l, ": the router and expert stacks have ", lw.router.size(), ", ", lw.experts_gate_up.size(),
             " and ", lw.experts_down.size(), " values; the config says (E, C), (E, 2·FE, C) and (E, C, FE)");
  upload_bf16(router_.at(s), lw.router);
  if (!nf4()) {
    upload_bf16(gate_up_.at(s), lw.experts_gate_up);
    upload_bf16(down_.at(s), lw.experts_down);
    return;
  }
  if (nf4_.empty()) {
    nf4_.resize(size_t(sparse_layers_) * 3 * E);
    upload(nf4_table_, std::vector<float>(kNf4Table, kNf4Table + 16));
    upload(nested_map_, dynamic_map_signed());
  }
  std::vector<float> rounded(n);  // one expert matrix in bf16, reused by the layer's 3·E pieces
  for (size_t i = 0; i < 2 * E; ++i)  // gate_e, up_e: the halves of expert e's gate_up rows
    upload_nf4(s, int(i), lw.experts_gate_up.data() + i * n, rounded);
  for (size_t e = 0; e < E; ++e) upload_nf4(s, int(2 * E + e), lw.experts_down.data() + e * n, rounded);
  const size_t first = size_t(s) * 3 * E;  // the layer's descriptors, for nf4_dequantize_pieces
  CUDA_CHECK(cudaMemcpy(device_nf4_ + first, &nf4_[first], 3 * E * sizeof(Nf4Device), cudaMemcpyHostToDevice));
  dequantized_layer_ = -1;
}

// One expert matrix of n = FE·C values at w quantized as DeviceWeights::upload_projection quantizes a
// dense one: bitsandbytes sees the bf16 weight. Rounded on every thread into `rounded` (n values): a serial
// copy and rounding per matrix (≈ 0.9 ns a weight) cost as much as quantizing it on 16 threads, for
// each of qwen3-30b-a3b's 18,432 expert matrices (tools/perf_notes.md).
void MoeLayers::upload_nf4(int s, int piece, const float* w, std::vector<float>& rounded) {
  const int64_t n = int64_t(rounded.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) rounded[size_t(i)] = bf16_bits_to_float(float_to_bf16_bits(w[i]));
  const bool down = piece >= 2 * E_;
  const Nf4Host qh = nf4_quantize_ref(rounded.data(), down ? C_ : FE_, down ? FE_ : C_, kNf4Blocksize,
                                      opt_.double_quant);
  uint8_t* codes = codes_.at(s) + size_t(piece) * codes_per_piece_;
  upload(codes, qh.codes);
  Nf4Device& d = nf4_[size_t(s) * 3 * E_ + size_t(piece)];
  d.numel = qh.numel();
  d.blocksize = qh.blocksize;
  d.codes = codes;
  d.quant_map = nf4_table_;
  if (qh.nested) {
    uint8_t* absmax_q = absmax_q_.at(s) + size_t(piece) * blocks_per_piece_;
    float* nested = nested_absmax_.at(s) + size_t(piece) * nested_per_piece_;
    upload(absmax_q, qh.absmax_q);
    upload(nested, qh.nested_absmax);
    d.absmax_q = absmax_q;
    d.nested_absmax = nested;
    d.nested_map = nested_map_;
    d.nested_offset = qh.nested_offset;
    d.nested_blocksize = qh.nested_blocksize;
  } else {
    float* absmax = absmax_.at(s) + size_t(piece) * blocks_per_piece_;
    upload(absmax, qh.absmax);
    d.absmax = absmax;
  }
}

// Sparse layer s's expert stacks in bf16: stored, or its 3·E NF4 tensors dequantized into one
// scratch in one launch (skipped when the scratch holds them already: the weights are frozen).
MoeLayers::Stack MoeLayers::experts(int s, cudaStream_t stream) {
  if (!nf4()) return {gate_up_.at(s), down_.at(s)};
  const int64_t n = int64_t(FE_) * C_;
  if (dequantized_layer_ != s) {
    const size_t first = size_t(s) * 3 * E_;
    nf4_dequantize_pieces(dequantized_, n, &nf4_[first], device_nf4_ + first, 3 * E_, stream);
    dequantized_layer_ = s;
  }
  return {dequantized_, dequantized_ + 2 * E_ * n};
}

void MoeLayers::begin_forward(cudaStream_t stream) {
  if (!aux_on()) return;
  CUDA_CHECK(cudaMemsetAsync(aux_counts_, 0, size_t(E_) * sizeof(double), stream));
  CUDA_CHECK(cudaMemsetAsync(aux_prob_sum_, 0, size_t(E_) * sizeof(double), stream));
  aux_rows_ = 0;
  aux_ready_ = false;
}

void MoeLayers::end_forward(cudaStream_t stream) {
  if (!aux_on()) return;
  moe_aux_loss(nullptr, aux_dprob_, aux_counts_, aux_prob_sum_, E_, aux_rows_, float(cfg_.router_aux_loss_coef),
               stream);
  aux_ready_ = true;
}

void MoeLayers::forward(GemmContext& ctx, int l, const bf16* xn2, bf16* out, int64_t T,
                        const ExpertLoraDevice& gate_up, const ExpertLoraDevice& down, bool count_aux,
                        cudaStream_t stream) {
  const int s = sparse_index_[size_t(l)];
  LOOM_CHECK(s >= 0 && T >= 1 && T <= Tmax_, "MoE forward: layer ", l, " (sparse: ", s >= 0, "), ", T,
             " tokens for a budget of ", Tmax_);
  gemm(ctx, logits_, xn2, router_.at(s), T, E_, C_, false, true, 1.f, 0.f, GemmOut::kFp32, stream);
  moe_route(experts_, weights_, probs_, logits_, T, E_, K_, cfg_.norm_topk_prob, stream);
  if (count_aux && aux_on()) {
    moe_aux_accumulate(aux_counts_, aux_prob_sum_, aux_workspace_, experts_, probs_, T, E_, K_, stream);
    aux_rows_ += T;
  }
  moe_permute_plan(counts_, offsets_, row_of_, slot_of_, permute_workspace_, experts_, T, E_, K_, stream);
  moe_gather(xs_, xn2, slot_of_, T, K_, C_, stream);
  experts_forward(experts(s, stream), T * K_, gate_up, down, stream);
  moe_combine(out, ys_, weights_, row_of_, T, K_, C_, stream);
}

// Every expert's SwiGLU MLP over its sorted rows: ys from xs, with [gate | up], act and the LoRA u kept
// for the backward. gate and up are one product of N = 2·FE (the expert's gate_up matrix is (2·FE, C)),
// as is gate_up's adapter: u = xs·Aᵀ (rank 2r), [gate | up] += s·u·Bᵀ, B (2·FE, 2r). Two products
// of FE each ran the Hopper kernel at ≈ 170-200 TFLOP/s in the step (tools/perf_notes.md).
void MoeLayers::experts_forward(const Stack& w, int64_t rows, const ExpertLoraDevice& gu,
                                const ExpertLoraDevice& dn, cudaStream_t stream) {
  const int C = C_, FE = FE_;
  const int64_t wgu = 2 * int64_t(FE) * C, wdn = int64_t(C) * FE;
  linear_forward(gate_up_rows_, {xs_, w.gate_up, wgu, C}, gu, u_gate_up_, rows, 2 * FE, stream);
  swiglu_forward_fused(act_, gate_up_rows_, rows, FE, stream);
  linear_forward(ys_, {act_, w.down, wdn, FE}, dn, u_down_, rows, C, stream);
}

// One expert linear over the sorted rows, y = x·Wᵀ (+ s·u·Bᵀ with u = x·Aᵀ kept for the backward):
// the adapter's B product is summed into the own product's launch (ops/grouped_gemm.h's _sum), so y
// is written once.
void MoeLayers::linear_forward(bf16* y, const GroupedTerm& own, const ExpertLoraDevice& lora, bf16* u, int64_t rows,
                               int N, cudaStream_t stream) {
  if (!lora.A) {
    grouped_gemm_nt(y, own.X, own.W, own.w_stride, offsets_, E_, rows, N, own.K, 1.f, false, stream);
    return;
  }
  grouped_gemm_nt(u, own.X, lora.A, lora.stride, offsets_, E_, rows, lora.r, own.K, 1.f, false, stream);
  grouped_gemm_nt_sum(y, own, {u, lora.B, lora.stride, lora.r, lora.scale}, offsets_, E_, rows, N, false, stream);
}

// The forward's products backwards, per linear du = s·dy·B; dB += s·dyᵀ·u; dA += duᵀ·x; then
// dx = dy·W + du·A in one launch (ops/lora_linear.h's products, du first), then the permutation and
// the router.
void MoeLayers::backward(GemmContext& ctx, int l, const bf16* dout, bf16* dxn2, int64_t T,
                         const ExpertLoraDevice& gu, const ExpertLoraDevice& dn, cudaStream_t stream) {
  const int s = sparse_index_[size_t(l)];
  LOOM_CHECK(opt_.training && s >= 0 && T >= 1 && T <= Tmax_, "MoE backward: layer ", l, " needs a training model's "
             "sparse layer and at most ", Tmax_, " tokens");
  const int E = E_, C = C_, FE = FE_;
  const int64_t rows = T * K_, wgu = 2 * int64_t(FE) * C, wdn = int64_t(C) * FE;
  const Stack w = experts(s, stream);
  bf16* dys = dxs_;  // dys is dead once dact and down's adapter gradients are formed; dxs reuses it
  moe_combine_backward(dys, dweights_, dout, ys_, weights_, slot_of_, T, K_, C, stream);
  // down: du = s·dys·B; dB += s·dysᵀ·u; dA += duᵀ·act; then act's buffer takes dact = dys·W (+ du·A).
  if (dn.A) {
    grouped_gemm_nn(du_, dys, dn.B, dn.stride, offsets_, E, rows, dn.r, C, dn.scale, false, stream);
    grouped_gemm_tn(dn.dB, dn.stride, dys, u_down_, offsets_, E, C, dn.r, dn.scale, stream);
    grouped_gemm_tn(dn.dA, dn.stride, du_, act_, offsets_, E, dn.r, FE, 1.f, stream);
  }
  bf16* dact = act_;
  input_gradient(dact, {dys, w.down, wdn, C}, dn, rows, FE, stream);
  // [dgate | dup] over [gate | up] in place, as the dense MLP overwrites its activations.
  swiglu_backward_fused(gate_up_rows_, dact, gate_up_rows_, rows, FE, stream);
  // gate_up, one product each of K or M = 2·FE: du = s·[dgate | dup]·B; dB += s·[dgate | dup]ᵀ·u;
  // dA += duᵀ·xs; then dxs = [dgate | dup]·W_gate_up + du·A.
  if (gu.A) {
    grouped_gemm_nn(du_, gate_up_rows_, gu.B, gu.stride, offsets_, E, rows, gu.r, 2 * FE, gu.scale, false, stream);
    grouped_gemm_tn(gu.dB, gu.stride, gate_up_rows_, u_gate_up_, offsets_, E, 2 * FE, gu.r, gu.scale, stream);
    grouped_gemm_tn(gu.dA, gu.stride, du_, xs_, offsets_, E, gu.r, C, 1.f, stream);
  }
  input_gradient(dxs_, {gate_up_rows_, w.gate_up, wgu, 2 * FE}, gu, rows, C, stream);
  moe_gather_backward(dxn2, dxs_, row_of_, T, K_, C, stream);
  // Through the routing weights (and the aux loss's d aux / d p) into the logits, then the frozen
  // router: dxn2 += dlogits·Wr, dlogits rounded to bf16 for the GEMM (ops/gemm.h takes bf16 inputs).
  moe_route_backward(dlogits_, dweights_, aux_ready_ ? aux_dprob_ : nullptr, probs_, experts_, weights_, T, E, K_,
                     cfg_.norm_topk_prob, stream);
  cast_fp32_to_bf16(dlogits_bf16_, dlogits_, T * E, stream);
  gemm(ctx, dxn2, dlogits_bf16_, router_.at(s), T, C, E, false, false, 1.f, 1.f, GemmOut::kBf16, stream);
}

// An expert linear's input gradient, dx = dy·W (+ du·A, du formed before): one launch with the
// adapter's term summed in (ops/grouped_gemm.h's _sum).
void MoeLayers::input_gradient(bf16* dx, const GroupedTerm& own, const ExpertLoraDevice& lora, int64_t rows, int N,
                               cudaStream_t stream) {
  if (!lora.A) {
    grouped_gemm_nn(dx, own.X, own.W, own.w_stride, offsets_, E_, rows, N, own.K, 1.f, false, stream);
    return;
  }
  grouped_gemm_nn_sum(dx, own, {du_, lora.A, lora.stride, lora.r, 1.f}, offsets_, E_, rows, N, false, stream);
}

}  // namespace loom
