#include "models/cuda_model.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <map>
#include <sstream>
#include <utility>

#include "models/device_weights.h"
#include "models/moe_layer.h"
#include "ops/attention.h"
#include "ops/attention_decode.h"
#include "ops/cross_entropy.h"
#include "ops/device.h"
#include "ops/embedding.h"
#include "ops/error.h"
#include "ops/gemm.h"
#include "ops/kv_cache.h"
#include "ops/lora_linear.h"
#include "ops/lora_gemv.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/sampling.h"
#include "ops/swiglu.h"

namespace loom {
namespace {

constexpr size_t kGemmWorkspace = size_t(32) << 20;     // cuBLASLt's Hopper kernels want 32 MiB
constexpr size_t kContextReserve = size_t(1) << 30;     // CUDA context, cuBLASLt and NCCL outside the plan
// fp32 logits scratch of the chunked LM head. Scoring takes a quarter: at V = 128K a chunk of 261
// tokens still keeps the head's GEMM large (M = 261, N = 128K, K = 4096), and the forward plan of
// an 8B model stays well under 2 GiB beyond its weights.
constexpr size_t kTrainLogitsBudget = size_t(512) << 20;
constexpr size_t kForwardLogitsBudget = size_t(128) << 20;
// Rows of one MLP tile when scoring: gate and up of an 8B model (F = 14336) take 56 MiB each per
// 2048 rows instead of 448 MiB at 16K tokens, at no measurable cost (the GEMMs stay 2048 rows tall).
constexpr int64_t kForwardMlpTile = 2048;
// Host memory train.offload leaves to the rest of the process (the data, pinned staging, the runtime).
constexpr size_t kHostReserve = size_t(4) << 30;

// The value of `key` (in kB) in a /proc file, in bytes.
size_t proc_kib_field(const char* path, const std::string& key) {
  std::ifstream file(path);
  std::string k, unit;
  size_t kib = 0;
  for (std::string line; std::getline(file, line);) {
    std::istringstream fields(line);
    if (fields >> k >> kib >> unit && k == key) return kib * 1024;
  }
  fail("cannot read ", key, " from ", path, ", which train.offload: activations checks host memory against");
}

// Host memory for train.offload: MemAvailable (what the host can still give without swapping) and this
// process's resident memory (VmRSS), which it holds already.
struct HostMemory {
  size_t available = 0, resident = 0;
  static HostMemory now() {
    return {proc_kib_field("/proc/meminfo", "MemAvailable:"), proc_kib_field("/proc/self/status", "VmRSS:")};
  }
  // Whether `offloaded` pinned bytes fit beside the rest of the process (kHostReserve, or what it holds
  // now when that is more). Counting what the process holds on both sides gives the same answer
  // before the weights are loaded (the plan, build/bench --long-search) as after (start_offload); with
  // MemAvailable alone, the weights loaded in between were counted twice and a length the search had
  // admitted was refused at the start (527,360 tokens, llama-3.1-8b, H100 machine, 2026-12-06).
  bool fits(size_t offloaded) const { return offloaded + std::max(kHostReserve, resident) <= available + resident; }
};

}  // namespace

int lm_head_chunk_rows(int V, int64_t token_budget, bool training) {
  const size_t logits_budget = training ? kTrainLogitsBudget : kForwardLogitsBudget;
  return int(std::clamp<int64_t>(int64_t(logits_budget / (size_t(V) * 4)), 16, token_budget));
}

struct CudaModel::Impl {
  ModelConfig cfg;
  LoraLayout lora;
  CudaModelOptions opt;
  MemoryPlan plan;
  DeviceWeights weights;
  DeviceAdapters adapters;
  std::unique_ptr<MoeLayers> moe;  // the sparse MLPs of a mixture-of-experts model, null for a dense one
  std::unique_ptr<GemmContext> gemm_ctx;
  std::unique_ptr<GemmContext> tile_gemm;  // row-invariant, for the MLP in sequence tiles (opt.mlp_tile)
  cudaStream_t stream = nullptr;
  bool train_mode = true;
  bool generate_mode = false;
  int64_t Tmax = 0;   // token budget
  int64_t T = 0;      // this micro-batch
  int64_t mlp_tile = 0;
  int ce_chunk = 0;

  // Micro-batch inputs: tokens, targets, positions (Tmax) and cu_seqlens (Tmax + 1), one block;
  // per-token weights of the backward (Tmax). Pinned staging, double-buffered.
  int32_t* inputs = nullptr;
  float* token_weight = nullptr;
  int32_t* host_inputs[2] = {nullptr, nullptr};
  float* host_weights[2] = {nullptr, nullptr};
  cudaEvent_t uploaded[2] = {nullptr, nullptr}, weights_uploaded[2] = {nullptr, nullptr};
  int upload_slot = 0, weight_slot = 0;
  int32_t *tokens = nullptr, *targets = nullptr, *positions = nullptr, *cu_seqlens = nullptr;
  int ndoc = 0;

  // Activations (stride 0 = one shared slice, rewritten per layer).
  LayerBuf<bf16> resid;  // (L + 1, T, C): input of every layer, then the final residual (see resid_at)
  LayerBuf<float> rstd1, rstd2, rstd_q, rstd_k, lse;
  LayerBuf<bf16> xn1, xn2, q, k, v, q_pre, k_pre, attn, h, gate, up, act;
  LayerBuf<bf16> u[kNumTargets];  // x·Aᵀ (T, R) per projection
  bf16 *xf = nullptr, *tmp_c = nullptr;
  float* rstdf = nullptr;

  // Backward scratch (one layer; kTrain only).
  bf16 *d_resid = nullptr, *dxn = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr, *dattn = nullptr,
       *dact = nullptr, *du = nullptr, *dxf = nullptr;
  float* attn_scratch = nullptr;
  bf16* w_scratch = nullptr;  // the dequantized projection of the current GEMM
  bf16* x_dropped = nullptr;  // LoRA input after dropout (T, in), then du·A in backward; lora.dropout > 0
  void* logits = nullptr;
  float *token_loss = nullptr, *loss_sum = nullptr, *forward_sum = nullptr;
  void* workspace = nullptr;
  float* host_sum = nullptr;  // pinned
  std::function<void(int)> layer_grads_hook;
  bool last_micro = true;
  PassOptions pass;          // of the forward in flight
  bool backward_ready = false;  // a training forward whose backward has not run
  bool recomputing = false;     // the backward reruns a layer's forward (the MoE load-balancing sums count once,
                                // the dense MLP's down projection computes only its u)

  // kGenerate: the KV cache (L, B, context, KVH, D) ×2, each row's (slot, position) of the pass, the
  // lengths a decode step attends to, the decode attention's scratch, the last positions' hidden
  // states and logits.
  int B = 0;
  int64_t context = 0;
  int decode_splits = 0;
  bool caching = false;   // the pass in flight is a prefill or a decode step: its K and V rows go to the cache
  bool decoding = false;  // the pass in flight is a decode step
  int64_t decode_max_len = 0;
  bf16 *cache_k = nullptr, *cache_v = nullptr, *x_last = nullptr;
  // A row's cache position is its token position (the pass's `positions`); its slot is cache_slot.
  int32_t *cache_slot = nullptr, *cache_len = nullptr, *token_codes = nullptr;
  int32_t* context_ids = nullptr;  // (B, context): each sequence's token ids, for the repetition penalty
  uint64_t *draw_sequence = nullptr, *draw_step = nullptr;  // (B): sample_token_ref's sequence and step per row
  uint8_t* sample_scratch = nullptr;
  float *decode_scratch = nullptr, *decode_logits = nullptr;
  // A decode step (embedding, layers, final norm, LM head) is ~20 small kernels per layer, whose
  // launches rather than the GPU bound a step at small batches; it runs as a CUDA graph per
  // (adapters on, length bucket), captured at first use and replayed after. The bucket, a power of
  // two at least the longest sequence (≥ kMinDecodeBucket, ≤ context), is the max_len that sizes the
  // decode attention's splits, so one graph serves every step up to it; every pointer a step reads is
  // fixed and its per-step inputs (tokens, positions, lengths) are uploaded before the launch.
  static constexpr int64_t kMinDecodeBucket = 256;
  std::map<std::pair<bool, int64_t>, cudaGraphExec_t> decode_graphs;
  // CudaModelOptions::step_graphs: forward_backward's graph per token bucket (T rounded up to
  // kStepGraphBucket, at most Tmax), captured at the bucket's first micro-batch.
  static constexpr int64_t kStepGraphBucket = 256;
  std::map<int64_t, cudaGraphExec_t> step_graphs;

  // train.offload: activations. The inputs of the first device_layers layers keep a device slot each
  // (as many as the device's free memory holds: CudaModelOptions::offload_device_layers); the others
  // take turns in kInputSlots ring slots (layer l in ring slot (l - device_layers) % kInputSlots).
  // Every ring layer's input but the last kInputSlots' (still in their slots when the backward starts)
  // is copied to host_inputs_of_layers on copy_stream as soon as the layer has run, and copied back
  // into its slot while the backward of the layer above it runs. slot_done[s]: the compute stream is
  // done with ring slot s's layer; slot_copied[s]: the copy stream is done with it (its layer stored,
  // or the next one loaded). resid: the ring slots, the final residual, the device layers' slots.
  static constexpr int kInputSlots = 2;
  bool offload = false;
  int device_layers = 0;
  bf16* host_inputs_of_layers = nullptr;  // (offloaded_layers(), Tmax, C) pinned
  cudaStream_t copy_stream = nullptr;
  cudaEvent_t slot_done[kInputSlots] = {}, slot_copied[kInputSlots] = {};
  // How long the compute stream stood still waiting for copies (offload_wait_seconds): each wait is
  // bracketed by two timing events, the first pending_brackets of wait_brackets, summed and reused
  // once the device has passed them (the step's end waits for it anyway); the pool grows to the most
  // waits a step has, in the first step, so the step loop creates no events after it and never waits.
  struct WaitBracket {
    cudaEvent_t before = nullptr, after = nullptr;
  };
  std::vector<WaitBracket> wait_brackets;
  size_t pending_brackets = 0;
  double waited_seconds = 0;

  Impl(const ModelConfig& c, const LoraLayout& l, const CudaModelOptions& o)
      : cfg(c),
        lora(l),
        opt(o),
        weights(c, o.quant, o.double_quant),
        adapters(l, o.mode == ModelMode::kTrain, o.reference_adapter),
        train_mode(o.mode == ModelMode::kTrain),
        generate_mode(o.mode == ModelMode::kGenerate),
        Tmax(o.token_budget),
        B(o.decode_batch),
        context(o.decode_context),
        offload(o.mode == ModelMode::kTrain && o.offload == Offload::kActivations),
        device_layers(offload ? std::clamp(o.offload_device_layers, 0, std::max(c.L - kInputSlots, 0)) : 0) {
    LOOM_CHECK(!generate_mode || B >= 1, "generation needs a batch >= 1 (found ", B, ")");
    LOOM_CHECK(!offload || o.recompute == Recompute::kFull, "train.offload: activations needs train.recompute: full "
               "(found ", recompute_name(o.recompute), ")");
    LOOM_CHECK(o.offload != Offload::kAuto, "CudaModel: train.offload auto must be resolved before the model is built "
               "(engine/backend.h choose_offload)");
    if (B > 0) {
      LOOM_CHECK(context >= 2, "generation needs a context >= 2 (found ", context, ")");
      Tmax = std::max<int64_t>(Tmax, B);  // a decode step is B rows
      decode_splits = attention_decode_max_splits(B, c.KVH, context);  // planned before any device call
    }
    LOOM_CHECK(o.mlp_tile >= 0 && o.mlp_tile % kMlpRowChunk == 0, "CudaModel: the MLP's tile (", o.mlp_tile,
               " rows) must be a multiple of ", kMlpRowChunk);
    LOOM_CHECK(o.mlp_tile == 0 || !train_mode || o.recompute == Recompute::kFull, "train.mlp_tile needs "
               "train.recompute: full (found ", recompute_name(o.recompute), "): the other policies keep every "
               "layer's MLP activations whole");
    if (!train_mode)
      mlp_tile = std::min(Tmax, kForwardMlpTile);
    else
      mlp_tile = o.mlp_tile > 0 ? std::min(Tmax, o.mlp_tile) : Tmax;
    if (cfg.is_moe())
      moe = std::make_unique<MoeLayers>(c, l,
                                        MoeOptions{o.quant, o.double_quant, train_mode, o.recompute, B > 0, Tmax});
  }

  // --- planning --------------------------------------------------------------------------------
  template <class T>
  void add(const std::string& group, const std::string& name, T** p, size_t n, const std::string& shape) {
    plan_buffer(plan, group, name, p, n, shape);
  }
  template <class T>
  void add_layers(const std::string& name, LayerBuf<T>& b, size_t n, bool per_layer, const std::string& shape) {
    plan_layers(plan, cfg.L, "activations", name, b, n, per_layer, shape);
  }

  // The width of the dense MLP's buffers: F, or 0 for a mixture of experts whose every layer is
  // sparse (its MLPs keep their buffers in models/moe_layer.h).
  size_t dense_mlp_width() const {
    for (int l = 0; l < cfg.L; ++l)
      if (!cfg.is_moe_layer(l)) return size_t(cfg.F);
    return 0;
  }

  // Training keeps per layer what the recompute policy does not rebuild; scoring keeps nothing.
  void plan_activations() {
    const ModelConfig& m = cfg;
    const size_t T = size_t(Tmax), C = m.C, F = dense_mlp_width(), HD = size_t(m.H) * m.D, KD = size_t(m.KVH) * m.D;
    const size_t mlp_rows = size_t(mlp_tile);
    const bool keep = train_mode && opt.recompute != Recompute::kFull;
    const bool keep_cheap = train_mode && opt.recompute == Recompute::kNone;  // norm outputs, SwiGLU product
    if (offload) {
      resid.stride = padded<bf16>(T * C);
      add("activations", cat("residual stream: 2 ring slots, the final residual, ", device_layers, " layers' inputs"),
          &resid.base, resid.stride * (kInputSlots + 1 + device_layers), cat("(", kInputSlots + 1 + device_layers,
          ", T, C)"));
    } else if (train_mode) {
      resid.stride = padded<bf16>(T * C);
      add("activations", "residual stream", &resid.base, resid.stride * (m.L + 1), "(L+1, T, C)");
    } else {
      add_layers("layer input", resid, T * C, false, "(T, C)");
    }
    add_layers("rstd1", rstd1, T, train_mode, "(T)");
    add_layers("rstd2", rstd2, T, train_mode, "(T)");
    add_layers("rms1 out", xn1, T * C, keep_cheap, "(T, C)");
    if (train_mode) add_layers("rms2 out", xn2, T * C, keep_cheap, "(T, C)");  // scoring: alias_dead_buffers
    add_layers("q (roped)", q, T * HD, keep, "(T, H·D)");
    add_layers("k (roped)", k, T * KD, keep, "(T, KVH·D)");
    add_layers("v", v, T * KD, keep, "(T, KVH·D)");
    if (m.qk_norm) {
      add_layers("q before q_norm", q_pre, T * HD, keep, "(T, H·D)");
      add_layers("k before k_norm", k_pre, T * KD, keep, "(T, KVH·D)");
      add_layers("rstd q_norm", rstd_q, T * m.H, train_mode, "(T, H)");
      add_layers("rstd k_norm", rstd_k, T * m.KVH, train_mode, "(T, KVH)");
    }
    add_layers("attention out", attn, T * HD, keep, "(T, H·D)");
    add_layers("attention lse", lse, T * m.H, keep, "(T, H)");
    add_layers("h (residual after attention)", h, T * C, keep, "(T, C)");
    const std::string mlp_shape = mlp_rows < T ? "(tile, F)" : "(T, F)";
    add_layers("gate", gate, mlp_rows * F, keep, mlp_shape);
    add_layers("up", up, mlp_rows * F, keep, mlp_shape);
    if (train_mode) add_layers("silu(gate)·up", act, mlp_rows * F, keep_cheap, mlp_shape);  // scoring: aliased
    for (int t = 0; t < kNumTargets; ++t)
      if (lora.targeted[t])
        add_layers(std::string("LoRA x·Aᵀ ") + kLoraTargetNames[t], u[t], T * lora.R, keep, "(T, R)");
    if (keep_cheap) add("activations", "final norm out", &xf, T * C, "(T, C)");  // else rms1 out's (alias_dead_buffers)
    add("activations", "final rstd", &rstdf, T, "(T)");
    if (B > 0) plan_kv_cache();
  }

  void plan_kv_cache() {
    const ModelConfig& m = cfg;
    const size_t cells = size_t(m.L) * B * context * m.KVH * m.D;
    const std::string shape = cat("(L, ", B, ", ", context, ", KVH·D)");
    add("kv cache", "keys", &cache_k, cells, shape);
    add("kv cache", "values", &cache_v, cells, shape);
    add("scratch", "cache slot of each row", &cache_slot, size_t(Tmax), "(T)");
    add("scratch", "decode lengths", &cache_len, size_t(B), "(B)");
    add("scratch", "decode attention", &decode_scratch,
        size_t(attention_decode_scratch_floats(B, m.H, m.D, decode_splits)), "(B, H, splits, D+2)");
    add("scratch", "last positions' hidden states", &x_last, size_t(B) * m.C, "(B, C)");
    add("scratch", "decode logits", &decode_logits, size_t(B) * m.V, "(B, V)");
    add("scratch", "next-token codes", &token_codes, size_t(B), "(B)");
    add("kv cache", "token ids", &context_ids, size_t(B) * context, cat("(", B, ", ", context, ")"));
    add("scratch", "draw sequence", &draw_sequence, size_t(B), "(B)");
    add("scratch", "draw step", &draw_step, size_t(B), "(B)");
    add("scratch", "sampling", &sample_scratch, size_t(sample_tokens_scratch_bytes(B, m.V)), "bytes");
  }

  void plan_scratch() {
    const ModelConfig& m = cfg;
    const size_t T = size_t(Tmax), C = m.C, F = dense_mlp_width(), HD = size_t(m.H) * m.D, KD = size_t(m.KVH) * m.D;
    if (weights.nf4()) add("scratch", "dequantized projection", &w_scratch, weights.largest_projection(), "(out, in) max");
    const size_t mlp_rows = size_t(mlp_tile);
    if (train_mode && lora.dropout > 0)
      add("scratch", "LoRA input after dropout", &x_dropped, std::max(T * std::max(C, HD), mlp_rows * F),
          "(T, in) max");
    add("scratch", "sublayer out", &tmp_c, T * C, "(T, C)");
    if (train_mode) {
      add("scratch", "d residual", &d_resid, T * C, "(T, C)");
      add("scratch", "d norm out", &dxn, T * C, "(T, C)");
      add("scratch", "dq", &dq, T * HD, "(T, H·D)");
      add("scratch", "dk", &dk, T * KD, "(T, KVH·D)");
      add("scratch", "dv", &dv, T * KD, "(T, KVH·D)");
      add("scratch", "d attention out", &dattn, T * HD, "(T, H·D)");
      add("scratch", "d silu(gate)·up", &dact, mlp_rows * F, mlp_rows < T ? "(tile, F)" : "(T, F)");
      add("scratch", "LoRA du", &du, T * std::max(lora.R, 1), "(T, R)");
      add("scratch", "attention backward", &attn_scratch, size_t(attention_backward_scratch_floats(Tmax, m.H, m.D)),
          "(T, H, D+1)");
      add("scratch", "token weights", &token_weight, T, "(T)");
    }
    ce_chunk = lm_head_chunk_rows(m.V, Tmax, train_mode);
    plan.add_raw("scratch", "LM head logits chunk", &logits, lm_head_logits_bytes(ce_chunk, m.V, GemmOut::kFp32),
                 cat("(", ce_chunk, ", V)"), "f32");
    add("scratch", "token losses", &token_loss, T, "(T)");
    add("scratch", "loss sums", &loss_sum, 2, "(2)");
    add("scratch", "inputs", &inputs, 4 * T + 1, "(4T+1)");
    plan.add_raw("scratch", "cuBLASLt workspace", &workspace, kGemmWorkspace, "(32 MiB)", "u8");
  }

  // Buffers whose contents are dead by the time they are written again share memory. Set once the
  // plan has given the buffers their addresses.
  //   The final norm's output goes where rms1's was, unless rms1's outputs are kept per layer
  //   (recompute none): the last layer's q, k, v are computed before it is written, and the backward
  //   rebuilds rms1's output only after the LM head has read it (llama-3.1-8b: 8 KB a token).
  //   Training: d final norm out goes where d norm out is (dxn): the final norm's backward reads it
  //   before the last layer's backward writes dxn (another 8 KB a token).
  //   Scoring: rms2's output goes where rms1's was (dead once q, k, v are computed), and the SwiGLU
  //   product overwrites gate in place (elementwise).
  void alias_dead_buffers() {
    if (!xf) xf = xn1.base;  // not planned on its own
    if (train_mode) {
      dxf = dxn;
      return;
    }
    xn2 = xn1;
    act = gate;
  }

  // --- one micro-batch ---------------------------------------------------------------------------
  void upload_inputs(const MicroBatch& mb) {
    T = mb.T();
    ndoc = mb.ndoc();
    LOOM_CHECK(T > 0 && T <= Tmax, "micro-batch of ", T, " tokens exceeds the token budget ", Tmax);
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

  void upload_token_weights(const std::vector<float>& w) {
    LOOM_CHECK(int64_t(w.size()) == T, "token weights: ", w.size(), " values for a micro-batch of ", T, " tokens");
    const int slot = weight_slot;
    weight_slot ^= 1;
    CUDA_CHECK(cudaEventSynchronize(weights_uploaded[slot]));
    std::copy(w.begin(), w.end(), host_weights[slot]);
    CUDA_CHECK(cudaMemcpyAsync(token_weight, host_weights[slot], size_t(T) * 4, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(weights_uploaded[slot], stream));
  }

  const bf16* weight(int l, LoraTarget t) { return weights.projection(l, t, w_scratch, stream); }

  // Every expert's adapter of t in sparse layer l (models/moe_layer.h); no dropout (the layout refuses it there).
  ExpertLoraDevice expert_adapters(int l, ExpertTarget t, bool grads) const {
    return adapters.expert_slots(l, t, pass.adapters, grads, pass.reference_adapter);
  }

  LoraDevice adapter(int l, LoraTarget t, bool grads) const {
    return adapters.slot(l, t, pass.adapters, grads, pass.train ? lora.dropout : 0.f, pass.dropout_seed,
                         pass.reference_adapter);
  }

  // rows (from row r0) of projection t: y = x·Wᵀ + b + LoRA; u[t] of those rows. The adapter stays
  // unmerged also outside training: folded into the bf16 weight (W + s·B·A) evaluation ran 5% faster
  // on an 8B model but the rounding of the folded weight put the llama fixture's per-token losses
  // 2.4x beyond their tolerance (tools/perf_notes.md).
  void linear_forward(int l, LoraTarget t, const bf16* x, bf16* y, int64_t rows = -1, int64_t r0 = 0) {
    linear_forward_shared(l, {{t, y}}, x, rows, r0);
  }

  // Projections of layer l that share their input x (q, k, v; gate, up), each as linear_forward. A
  // decode step of a few sequences takes them as GEMVs (ops/lora_gemv.h: every weight read once, NF4
  // from its codes, the bias and adapter in the same pass; two launches for all of them).
  void linear_forward_shared(int l, std::initializer_list<std::pair<LoraTarget, bf16*>> outputs, const bf16* x,
                             int64_t rows = -1, int64_t r0 = 0) {
    if (rows < 0) rows = T;
    bool gemv = outputs.size() <= size_t(kLoraGemvMaxProjections);
    for (const auto& [t, y] : outputs) gemv = gemv && gemv_fits(l, t, rows);
    GemvProjection p[kLoraGemvMaxProjections];
    int count = 0;
    for (const auto& [t, y] : outputs) {
      auto [in, out] = projection_shape(cfg, t);
      bf16* ul = u[t].base ? u[t].at(l) + r0 * lora.R : nullptr;
      const LoraDevice a = adapter_of_rows(l, t, false, r0);
      if (!gemv) {
        lora_linear_forward(gemm_for(t), y, ul, x, weight(l, t), weights.bias(l, t), a, x_dropped, rows, in, out,
                            stream);
        continue;
      }
      GemvProjection& g = p[count++];
      if (weights.nf4())
        g.nf4 = weights.nf4_projection(l, t);
      else
        g.W = weight(l, t);
      g.bias = weights.bias(l, t);
      g.A = a.A, g.B = a.B, g.R = a.R, g.scale = a.scale, g.u = ul;
      g.y = y, g.N = out;
    }
    if (gemv) lora_gemv(p, count, x, rows, projection_shape(cfg, outputs.begin()->first).first, stream);
  }

  bool gemv_fits(int l, LoraTarget t, int64_t rows) const {
    const int in = projection_shape(cfg, t).first;
    return decoding && rows >= 1 && rows <= kLoraGemvMaxRows && in % 8 == 0 && adapter(l, t, false).dropout == 0.f &&
           (!weights.nf4() || weights.nf4_projection(l, t).blocksize % 8 == 0);
  }

  // The backward of rows [r0, r0 + rows) of projection t (all T by default): dy, x and dx those rows'.
  void linear_backward(int l, LoraTarget t, const bf16* dy, const bf16* x, bf16* dx, bool accumulate,
                       int64_t rows = -1, int64_t r0 = 0) {
    if (rows < 0) rows = T;
    auto [in, out] = projection_shape(cfg, t);
    lora_linear_backward(gemm_for(t), dx, accumulate, dy, x, u[t].base ? u[t].at(l) + r0 * lora.R : nullptr,
                         weight(l, t), adapter_of_rows(l, t, true, r0), du, x_dropped, rows, in, out, stream);
  }

  // The adapter of rows r0.. of projection t: its dropout mask starts at their first element.
  LoraDevice adapter_of_rows(int l, LoraTarget t, bool grads, int64_t r0) const {
    LoraDevice a = adapter(l, t, grads);
    a.dropout_first = uint64_t(r0) * uint64_t(projection_shape(cfg, t).first);
    return a;
  }

  // The MLP's projections in sequence tiles run in the row-invariant context: any tile size, the same bits.
  // Decode steps (sampling during training) need no such invariance: the fastest algorithm for their rows.
  GemmContext& gemm_for(LoraTarget t) {
    return tile_gemm && !decoding && (t == kGate || t == kUp || t == kDown) ? *tile_gemm : *gemm_ctx;
  }

  AttentionShape attention_shape(int l) const {
    return {cu_seqlens, ndoc, cfg.H, cfg.KVH, cfg.D, cfg.window[l], 1.f / std::sqrt(float(cfg.D))};
  }

  // gate, up, SwiGLU and down over rows [r0, r0 + rows) (a tile: gate, up and act hold mlp_tile rows
  // from their start); the down projection into tmp_c, or, recomputing for a backward, only its u: the
  // backward never reads the layer's output.
  void mlp_forward(int l, int64_t r0, int64_t rows) {
    mlp_activation(l, r0, rows);
    if (recomputing)
      down_input_product(l, r0, rows);
    else
      linear_forward(l, kDown, act.at(l), tmp_c + r0 * cfg.C, rows, r0);
  }

  // gate, up and silu(gate)·up of rows [r0, r0 + rows), with the u of gate and up.
  void mlp_activation(int l, int64_t r0, int64_t rows) {
    const ModelConfig& m = cfg;
    linear_forward_shared(l, {{kGate, gate.at(l)}, {kUp, up.at(l)}}, xn2.at(l) + r0 * m.C, rows, r0);
    swiglu_forward(act.at(l), gate.at(l), up.at(l), rows * m.F, stream);
  }

  // The down projection's u of rows [r0, r0 + rows) alone (its input in act).
  void down_input_product(int l, int64_t r0, int64_t rows) {
    if (!u[kDown].base) return;
    lora_linear_input_product(gemm_for(kDown), u[kDown].at(l) + r0 * lora.R, act.at(l),
                              adapter_of_rows(l, kDown, false, r0), x_dropped, rows, cfg.F, stream);
  }

  // The MLP's backward, a tile at a time (opt.mlp_tile): each tile's gate, up and act rebuilt from xn2,
  // then its down, SwiGLU, gate and up backward; dxn's rows written, the LoRA gradients summed.
  void mlp_backward_in_tiles(int l) {
    for (int64_t r0 = 0; r0 < T; r0 += mlp_tile) {
      const int64_t rows = std::min(mlp_tile, T - r0);
      mlp_activation(l, r0, rows);
      down_input_product(l, r0, rows);
      mlp_backward_rows(l, r0, rows);
    }
  }

  // The MLP's backward of rows [r0, r0 + rows) from their gate, up and act (held from the buffers'
  // start) and the down projection's u: dxn's rows written, the LoRA gradients summed.
  void mlp_backward_rows(int l, int64_t r0, int64_t rows) {
    const ModelConfig& m = cfg;
    linear_backward(l, kDown, d_resid + r0 * m.C, act.at(l), dact, false, rows, r0);
    swiglu_backward(gate.at(l), up.at(l), dact, gate.at(l), up.at(l), rows * m.F, stream);  // dgate, dup in place
    linear_backward(l, kGate, gate.at(l), xn2.at(l) + r0 * m.C, dxn + r0 * m.C, false, rows, r0);
    linear_backward(l, kUp, up.at(l), xn2.at(l) + r0 * m.C, dxn + r0 * m.C, true, rows, r0);
  }

  // Layer l from its input resid[l] (already written, or written here as prev_h + prev_out).
  void layer_forward(int l, const bf16* prev_h, const bf16* prev_out) {
    const ModelConfig& m = cfg;
    if (prev_h)
      residual_rmsnorm_forward(resid_at(l), xn1.at(l), rstd1.at(l), prev_h, prev_out, weights.ln1(l), T, m.C,
                               m.rms_eps, stream);
    else
      rmsnorm_forward(xn1.at(l), rstd1.at(l), resid_at(l), weights.ln1(l), T, m.C, m.rms_eps, stream);
    bf16* qo = m.qk_norm ? q_pre.at(l) : q.at(l);
    bf16* ko = m.qk_norm ? k_pre.at(l) : k.at(l);
    linear_forward_shared(l, {{kQ, qo}, {kK, ko}, {kV, v.at(l)}}, xn1.at(l));
    if (m.qk_norm) {
      rmsnorm_forward(q.at(l), rstd_q.at(l), qo, weights.q_norm(l), T * m.H, m.D, m.rms_eps, stream);
      rmsnorm_forward(k.at(l), rstd_k.at(l), ko, weights.k_norm(l), T * m.KVH, m.D, m.rms_eps, stream);
    }
    bf16* ck = caching ? cache_k + int64_t(l) * B * context * m.KVH * m.D : nullptr;
    bf16* cv = caching ? cache_v + int64_t(l) * B * context * m.KVH * m.D : nullptr;
    if (decoding) {  // q roped in place, k roped into the cache, v copied there: one launch
      rope_forward_into_cache(q.at(l), k.at(l), v.at(l), ck, cv, cache_slot, positions, weights.inv_freq(), T, m.H,
                              m.KVH, m.D, context, stream);
      attention_decode(attn.at(l), q.at(l), DecodeCache{ck, cv, context}, cache_len, B, decode_max_len,
                       attention_shape(l), decode_splits_for(decode_max_len), decode_scratch, stream);
    } else {
      rope_forward(q.at(l), positions, weights.inv_freq(), T, m.H, m.D, int64_t(m.H) * m.D, stream);
      rope_forward(k.at(l), positions, weights.inv_freq(), T, m.KVH, m.D, int64_t(m.KVH) * m.D, stream);
      if (caching) kv_cache_write(ck, cv, k.at(l), v.at(l), cache_slot, positions, T, m.KVH, m.D, context, stream);
    }
    if (!decoding)
      attention_forward(attn.at(l), lse.at(l), q.at(l), k.at(l), v.at(l),
                        AttentionStrides::contiguous(m.H, m.KVH, m.D), attention_shape(l), T, stream);
    linear_forward(l, kO, attn.at(l), tmp_c);
    residual_rmsnorm_forward(h.at(l), xn2.at(l), rstd2.at(l), resid_at(l), tmp_c, weights.ln2(l), T, m.C, m.rms_eps,
                             stream);
    if (cfg.is_moe_layer(l))
      moe->forward(*gemm_ctx, l, xn2.at(l), tmp_c, T, expert_adapters(l, kExpertGateUp, false),
                   expert_adapters(l, kExpertDown, false), pass.train && !recomputing, stream);
    else if (!(recomputing && tile_gemm))  // a tiled backward rebuilds each tile's MLP itself
      for (int64_t r0 = 0; r0 < T; r0 += mlp_tile) mlp_forward(l, r0, std::min(mlp_tile, T - r0));
    // the layer's output is h + tmp_c (added by the next norm)
  }

  // What the recompute policy did not keep, rebuilt from what it kept.
  void recompute(int l) {
    const ModelConfig& m = cfg;
    if (opt.recompute == Recompute::kFull) {
      recomputing = true;
      layer_forward(l, nullptr, nullptr);
      recomputing = false;
      return;
    }
    if (opt.recompute == Recompute::kSelective) {
      rmsnorm_forward(xn1.at(l), rstd1.at(l), resid_at(l), weights.ln1(l), T, m.C, m.rms_eps, stream);
      rmsnorm_forward(xn2.at(l), rstd2.at(l), h.at(l), weights.ln2(l), T, m.C, m.rms_eps, stream);
      swiglu_forward(act.at(l), gate.at(l), up.at(l), T * m.F, stream);
    }
  }

  // d_resid: gradient w.r.t. the layer's output on entry, w.r.t. its input on return.
  void layer_backward(int l) {
    const ModelConfig& m = cfg;
    recompute(l);
    if (m.is_moe_layer(l)) {
      moe->backward(*gemm_ctx, l, d_resid, dxn, T, expert_adapters(l, kExpertGateUp, true),
                    expert_adapters(l, kExpertDown, true), stream);
    } else if (tile_gemm) {
      mlp_backward_in_tiles(l);
    } else {
      mlp_backward_rows(l, 0, T);
    }
    rmsnorm_backward(d_resid, dxn, d_resid, h.at(l), weights.ln2(l), rstd2.at(l), T, m.C, stream);

    linear_backward(l, kO, d_resid, attn.at(l), dattn, false);
    attention_backward(dq, dk, dv, attn_scratch, dattn, q.at(l), k.at(l), v.at(l), attn.at(l), lse.at(l),
                       AttentionStrides::contiguous(m.H, m.KVH, m.D), attention_shape(l), T, stream);
    rope_backward(dq, positions, weights.inv_freq(), T, m.H, m.D, int64_t(m.H) * m.D, stream);
    rope_backward(dk, positions, weights.inv_freq(), T, m.KVH, m.D, int64_t(m.KVH) * m.D, stream);
    if (m.qk_norm) {
      rmsnorm_backward(dq, dq, nullptr, q_pre.at(l), weights.q_norm(l), rstd_q.at(l), T * m.H, m.D, stream);
      rmsnorm_backward(dk, dk, nullptr, k_pre.at(l), weights.k_norm(l), rstd_k.at(l), T * m.KVH, m.D, stream);
    }
    linear_backward(l, kQ, dq, xn1.at(l), dxn, false);
    linear_backward(l, kK, dk, xn1.at(l), dxn, true);
    linear_backward(l, kV, dv, xn1.at(l), dxn, true);
    if (last_micro && layer_grads_hook) layer_grads_hook(l);
    rmsnorm_backward(d_resid, dxn, d_resid, resid_at(l), weights.ln1(l), rstd1.at(l), T, m.C, stream);
  }

  // Embedding, the layers and the final norm; the LM head + cross-entropy follows.
  void forward_layers() {
    const ModelConfig& m = cfg;
    const bool offloading = offload && pass.train;  // a training forward stores its layer inputs
    if (offloading) wait_for_copies();
    embedding_forward(resid_at(0), tokens, weights.embed(), T, m.C, stream);
    if (moe && pass.train) moe->begin_forward(stream);
    for (int l = 0; l < m.L; ++l) {
      if (offloading) wait_slot_stored(l);
      layer_forward(l, l ? h.at(l - 1) : nullptr, tmp_c);
      if (offloading) store_layer_input(l);
    }
    if (moe && pass.train) moe->end_forward(stream);
    const int L = m.L;
    residual_rmsnorm_forward(resid_at(L), xf, rstdf, h.at(L - 1), tmp_c, weights.final_norm(), T, m.C, m.rms_eps,
                             stream);
  }

  // Layer l's input (l < L), or the final residual (l == L).
  bf16* resid_at(int l) const {
    if (!offload) return resid.at(l);
    const int slot = l == cfg.L ? kInputSlots : l < device_layers ? kInputSlots + 1 + l : ring_slot(l);
    return resid.base + size_t(slot) * resid.stride;
  }

  int ring_slot(int l) const { return (l - device_layers) % kInputSlots; }
  // Whether layer l's input goes to the host: a ring layer's but the last kInputSlots'.
  bool offloaded(int l) const { return l >= device_layers && l < cfg.L - kInputSlots; }
  int offloaded_layers() const { return std::max(cfg.L - kInputSlots - device_layers, 0); }

  // Offload: once layer l has run, its input goes to the host on copy_stream. Layer l + 1 writes the
  // other ring slot; layer l + kInputSlots, which overwrites this one, first waits for the copy.
  void store_layer_input(int l) {
    if (offloaded(l)) copy_slot(ring_slot(l), host_input(l), resid_at(l), cudaMemcpyDeviceToHost);
  }

  bf16* host_input(int l) const { return host_inputs_of_layers + size_t(l - device_layers) * Tmax * cfg.C; }

  // T rows of a layer input between slot s and the host on copy_stream, once the compute stream is done
  // with the slot; slot_copied[s] marks the copy's end.
  void copy_slot(int s, bf16* dst, const bf16* src, cudaMemcpyKind kind) {
    CUDA_CHECK(cudaEventRecord(slot_done[s], stream));
    CUDA_CHECK(cudaStreamWaitEvent(copy_stream, slot_done[s], 0));
    CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(T) * cfg.C * sizeof(bf16), kind, copy_stream));
    CUDA_CHECK(cudaEventRecord(slot_copied[s], copy_stream));
  }

  // Before ring layer l writes its slot in a storing forward: the slot's previous layer (an offloaded
  // one, l - kInputSlots) has reached the host.
  void wait_slot_stored(int l) {
    if (l >= device_layers + kInputSlots) wait_for_copy(slot_copied[ring_slot(l)]);
  }

  // Offload, backward: once ring layer l's backward has run, layer l - kInputSlots's input (when it is
  // a ring layer's: offloaded) comes back into the same slot; its backward waits for it (wait_slot_loaded).
  void load_layer_input_below(int l) {
    const int below = l - kInputSlots;
    if (below >= device_layers) copy_slot(ring_slot(l), resid_at(below), host_input(below), cudaMemcpyHostToDevice);
  }

  // The device layers' and the last kInputSlots layers' inputs are in their slots; the others were loaded.
  void wait_slot_loaded(int l) {
    if (offloaded(l)) wait_for_copy(slot_copied[ring_slot(l)]);
  }

  // LM head + cross-entropy: token losses always; with `backward`, dxf from the uploaded token
  // weights. Σ target losses into `sum` (may be null).
  void head(bool backward, float* sum) {
    const ModelConfig& m = cfg;
    lm_head_cross_entropy(*gemm_ctx, backward ? dxf : nullptr, token_loss, sum, logits, GemmOut::kFp32, xf,
                          weights.head(), targets, backward ? token_weight : nullptr, T, m.C, m.V, ce_chunk, stream);
  }

  void backward_layers() {
    const ModelConfig& m = cfg;
    rmsnorm_backward(d_resid, dxf, nullptr, resid_at(m.L), weights.final_norm(), rstdf, T, m.C, stream);
    for (int l = m.L - 1; l >= 0; --l) {
      if (offload) wait_slot_loaded(l);
      layer_backward(l);
      if (offload) load_layer_input_below(l);
    }
    if (offload) wait_for_copies();  // a later pass (an eval, a sampling graph) writes the slots freely
    backward_ready = false;
  }

  // The compute stream waits for every copy enqueued so far (never inside a graph capture: the events
  // belong to copy_stream).
  void wait_for_copies() {
    for (cudaEvent_t copied : slot_copied) wait_for_copy(copied);
  }

  // The compute stream waits for a copy, the wait bracketed by timing events.
  void wait_for_copy(cudaEvent_t copied) {
    if (pending_brackets == wait_brackets.size()) {
      WaitBracket& added = wait_brackets.emplace_back();
      CUDA_CHECK(cudaEventCreate(&added.before));
      CUDA_CHECK(cudaEventCreate(&added.after));
    }
    const WaitBracket& b = wait_brackets[pending_brackets];
    CUDA_CHECK(cudaEventRecord(b.before, stream));
    CUDA_CHECK(cudaStreamWaitEvent(stream, copied, 0));
    CUDA_CHECK(cudaEventRecord(b.after, stream));
    ++pending_brackets;  // counted once both events are recorded
  }

  // Adds the pending brackets' waits to waited_seconds (waits for the device to pass them).
  void sum_wait_brackets() {
    for (size_t i = 0; i < pending_brackets; ++i) {
      CUDA_CHECK(cudaEventSynchronize(wait_brackets[i].after));
      float ms = 0.f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, wait_brackets[i].before, wait_brackets[i].after));
      waited_seconds += double(ms) / 1e3;
    }
    pending_brackets = 0;
  }

  int decode_splits_for(int64_t max_len) const {
    return std::min(decode_splits, attention_decode_splits(B, cfg.KVH, max_len, cuda_multiprocessors()));
  }

  // The LM head on `rows` final hidden states: logits (rows, V) fp32 into decode_logits.
  void head_logits(const bf16* x, int rows) {
    gemm(*gemm_ctx, decode_logits, x, weights.head(), rows, cfg.V, cfg.C, false, true, 1.f, 0.f, GemmOut::kFp32,
         stream);
  }

  // The first `rows` rows of decode_logits, copied into out (waits).
  void take_logits(int rows, std::vector<float>& out) {
    out.resize(size_t(rows) * cfg.V);
    CUDA_CHECK(cudaMemcpyAsync(out.data(), decode_logits, out.size() * 4, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  // The next token of each of the first `rows` rows of decode_logits (waits): plain greedy without
  // any context; otherwise over each row's ids so far (context_ids, cache_len of them).
  void take_tokens(int rows, const TokenChoice& c, std::vector<int32_t>& ids) {
    const SamplingParams& p = c.sampling;
    if (p.plain_greedy()) {
      greedy_tokens(token_codes, decode_logits, rows, cfg.V, stream);
    } else {
      LOOM_CHECK(c.sequence.size() >= size_t(rows) && c.step.size() >= size_t(rows), "next tokens: sequence and step "
                 "for ", rows, " rows, got ", c.sequence.size(), " and ", c.step.size());
      CUDA_CHECK(cudaMemcpyAsync(draw_sequence, c.sequence.data(), size_t(rows) * 8, cudaMemcpyHostToDevice, stream));
      CUDA_CHECK(cudaMemcpyAsync(draw_step, c.step.data(), size_t(rows) * 8, cudaMemcpyHostToDevice, stream));
      sample_tokens(token_codes, decode_logits, rows, cfg.V, p, context_ids, cache_len, context, draw_sequence,
                    draw_step, sample_scratch, sample_tokens_scratch_bytes(B, cfg.V), stream);
    }
    ids.resize(size_t(rows));
    CUDA_CHECK(cudaMemcpyAsync(ids.data(), token_codes, ids.size() * 4, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int32_t& id : ids) id = p.plain_greedy() ? greedy_token_of_code(id, cfg.V) : sampled_token_of_code(id, cfg.V, p);
  }

  // The rows of a prefill or decode step (after begin_pass uploaded their tokens and positions): their
  // cache slots, their token ids into context_ids at their positions, lengths (per cache row) into cache_len.
  void upload_cache_rows(const std::vector<int32_t>& slot, const std::vector<int32_t>& lengths) {
    CUDA_CHECK(cudaMemcpyAsync(cache_slot, slot.data(), slot.size() * 4, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaMemcpyAsync(cache_len, lengths.data(), lengths.size() * 4, cudaMemcpyHostToDevice, stream));
    token_cache_write(context_ids, tokens, cache_slot, positions, T, context, stream);
  }

  void check_can_generate(const char* what) const {
    LOOM_CHECK(B > 0, what, " needs a model planned with a KV cache (ModelMode::kGenerate, or a decode batch)");
    LOOM_CHECK(!backward_ready, what, " between a training forward and its backward would overwrite what the "
                                      "backward needs");
  }

  // Marks the passes of one prefill() or decode() call as writing the KV cache.
  struct CachingScope {
    Impl& d;
    explicit CachingScope(Impl& impl) : d(impl) { d.caching = true; }
    ~CachingScope() { d.caching = false; }
  };

  // kGenerate: the forwards of prefill() and decode(); the logits are left in decode_logits.
  void prefill_forward(const std::vector<std::vector<int32_t>>& prompts, bool adapters);
  void decode_forward(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions, bool adapters);

  int64_t decode_bucket(int64_t max_len) const {
    int64_t bucket = kMinDecodeBucket;
    while (bucket < max_len) bucket *= 2;
    return std::min(bucket, context);
  }

  // The decode step's GPU work after its inputs are uploaded: the graph of (pass.adapters, the bucket
  // of max_len), captured now if it is the first step of that bucket. Logits in decode_logits.
  void run_decode_step(int64_t max_len) {
    decode_max_len = decode_bucket(max_len);
    const std::pair<bool, int64_t> key(pass.adapters, decode_max_len);
    auto it = decode_graphs.find(key);
    if (it == decode_graphs.end()) it = decode_graphs.emplace(key, capture_decode_step()).first;
    CUDA_CHECK(cudaGraphLaunch(it->second, stream));
  }

  cudaGraphExec_t capture_decode_step() {
    return capture([&] {
      decoding = true;
      forward_layers();
      head_logits(xf, B);
    }, [&] { decoding = false; });
  }

  // The work of `pass` on the stream as an instantiated graph; `done` runs after it, thrown or not
  // (the stream is left out of capture mode, so an error can be reported and the model freed).
  template <class Pass, class Done>
  cudaGraphExec_t capture(Pass&& pass, Done&& done) {
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      pass();
      done();
    } catch (...) {
      done();
      if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    CUDA_CHECK(made);
    return exec;
  }

  // Whether forward_backward runs as a step graph (CudaModelOptions::step_graphs says when it can).
  bool graphs_step() const {
    return opt.step_graphs && train_mode && !offload && !moe && lora.dropout == 0.f && !layer_grads_hook;
  }

  // forward_backward as a graph: the micro-batch padded to its bucket (its padding tokens ignored,
  // their weights 0), uploaded, then the bucket's graph of the forward, the LM head and the backward.
  void graphed_forward_backward(const MicroBatch& mb, const std::vector<float>& token_weight) {
    const int64_t bucket = std::min(Tmax, (mb.T() + kStepGraphBucket - 1) / kStepGraphBucket * kStepGraphBucket);
    std::vector<float> weights_padded = token_weight;
    weights_padded.resize(size_t(bucket), 0.f);
    begin_pass(pad_micro_batch(mb, bucket), PassOptions{true, true, 0});
    upload_token_weights(weights_padded);
    auto it = step_graphs.find(bucket);
    if (it == step_graphs.end()) {
      const auto t0 = std::chrono::steady_clock::now();
      const cudaGraphExec_t exec = capture([&] {
        forward_layers();
        head(true, loss_sum);
        backward_layers();
      }, [] {});
      it = step_graphs.emplace(bucket, exec).first;
      // A capture is host time inside a step; say so, so a slow step can be told from a slow replay.
      if (opt.print_plan)
        std::fprintf(stderr, "step graph: captured the %lld-token bucket (%zu so far) in %.1f ms\n",
                     static_cast<long long>(bucket), step_graphs.size(),
                     std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    CUDA_CHECK(cudaGraphLaunch(it->second, stream));
    backward_ready = false;
    T = mb.T();  // token_losses() returns the micro-batch's rows, not its padding's
  }

  // Bytes of pinned host memory the offloaded layer inputs take.
  size_t offload_host_bytes() const { return size_t(offloaded_layers()) * size_t(Tmax) * size_t(cfg.C) * sizeof(bf16); }

  // The host side of train.offload: activations, checked against the host's available memory first.
  void start_offload() {
    const size_t bytes = offload_host_bytes();
    const HostMemory host = HostMemory::now();
    if (opt.print_plan)
      std::fprintf(stderr, "host (pinned): %d layers' inputs (T, C) bf16 %s; the other %d stay on the GPU\n",
                   offloaded_layers(), format_bytes(bytes).c_str(), cfg.L - offloaded_layers());
    LOOM_CHECK(host.fits(bytes), "train.offload: activations needs ", format_bytes(bytes),
               " of pinned host memory for the layer inputs (", offloaded_layers(), " layers x ", Tmax,
               " tokens x ", cfg.C, " x 2 bytes) plus ", format_bytes(std::max(kHostReserve, host.resident)),
               " for the rest of the process, which holds ", format_bytes(host.resident), " now, and the host has ",
               format_bytes(host.available), " more available; lower train.token_budget (now ", Tmax, ")");
    if (bytes > 0) CUDA_CHECK(cudaMallocHost(&host_inputs_of_layers, bytes));
    CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking));
    for (int s = 0; s < kInputSlots; ++s) {
      CUDA_CHECK(cudaEventCreateWithFlags(&slot_done[s], cudaEventDisableTiming));
      CUDA_CHECK(cudaEventCreateWithFlags(&slot_copied[s], cudaEventDisableTiming));
    }
  }

  void begin_pass(const MicroBatch& mb, const PassOptions& p) {
    LOOM_CHECK(!p.train || train_mode, "a training pass needs a model planned for training (ModelMode::kTrain)");
    LOOM_CHECK(!p.train || (p.adapters && !p.reference_adapter), "a training pass needs the trained adapters on");
    pass = p;
    upload_inputs(mb);
  }
};

CudaModel::CudaModel(const ModelConfig& cfg, const LoraLayout& lora, const CudaModelOptions& opt)
    : impl_(std::make_unique<Impl>(cfg, lora, opt)) {
  Impl& d = *impl_;
  d.weights.plan(d.plan);
  if (d.moe) d.moe->plan(d.plan);
  d.adapters.plan(d.plan);
  d.plan_activations();
  d.plan_scratch();
}

MemoryPlan& CudaModel::plan() { return impl_->plan; }

void CudaModel::load(const WeightSource& src, const std::vector<float>& lora, const std::string& hint) {
  Impl& d = *impl_;
  LOOM_CHECK(cuda_available(), "no CUDA device: ", cuda_device_summary());
  if (d.opt.print_plan) std::fprintf(stderr, "%s", d.plan.table(false).c_str());
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const std::string shrink =
      d.train_mode
          ? cat("lower train.token_budget (now ", d.opt.token_budget, ")",
                d.opt.recompute == Recompute::kFull
                    ? (d.offload ? "" : ", or set train.offload: activations")
                    : cat(", or set train.recompute=full (now ", recompute_name(d.opt.recompute), ")"),
                d.weights.nf4() ? "" : ", or use model.quant=nf4")
          : cat("score fewer tokens per document (now ", d.opt.token_budget, ")",
                d.weights.nf4() ? "" : " or use nf4 weights");
  d.plan.check_fits(free_b, kContextReserve, hint.empty() ? shrink : hint);
  d.plan.allocate();
  d.alias_dead_buffers();
  CUDA_CHECK(cudaStreamCreateWithFlags(&d.stream, cudaStreamNonBlocking));
  d.gemm_ctx = std::make_unique<GemmContext>(d.workspace, kGemmWorkspace);
  if (d.opt.mlp_tile > 0 && d.train_mode)  // the same workspace: both run on the one stream
    d.tile_gemm = std::make_unique<GemmContext>(d.workspace, kGemmWorkspace, kMlpRowChunk);
  for (int i = 0; i < 2; ++i) {
    CUDA_CHECK(cudaMallocHost(&d.host_inputs[i], size_t(4 * d.Tmax + 1) * 4));
    CUDA_CHECK(cudaMallocHost(&d.host_weights[i], size_t(d.Tmax) * 4));
    CUDA_CHECK(cudaEventCreateWithFlags(&d.uploaded[i], cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&d.weights_uploaded[i], cudaEventDisableTiming));
  }
  CUDA_CHECK(cudaMallocHost(&d.host_sum, sizeof(float)));
  if (d.offload) d.start_offload();
  d.forward_sum = d.loss_sum + 1;
  DeviceWeights::LayerHook sparse_layers;
  if (d.moe) sparse_layers = [&d](int l, const LayerWeights& lw) { d.moe->load_layer(l, lw); };
  d.weights.load(src, sparse_layers);
  d.adapters.set(lora, d.stream);
  CUDA_CHECK(cudaMemset(d.loss_sum, 0, 2 * sizeof(float)));
}

CudaModel::~CudaModel() {
  Impl& d = *impl_;
  if (d.stream) cudaStreamSynchronize(d.stream);
  for (int i = 0; i < 2; ++i) {
    if (d.host_inputs[i]) cudaFreeHost(d.host_inputs[i]);
    if (d.host_weights[i]) cudaFreeHost(d.host_weights[i]);
    if (d.uploaded[i]) cudaEventDestroy(d.uploaded[i]);
    if (d.weights_uploaded[i]) cudaEventDestroy(d.weights_uploaded[i]);
  }
  if (d.host_sum) cudaFreeHost(d.host_sum);
  if (d.copy_stream) cudaStreamSynchronize(d.copy_stream);
  for (int s = 0; s < Impl::kInputSlots; ++s) {
    if (d.slot_done[s]) cudaEventDestroy(d.slot_done[s]);
    if (d.slot_copied[s]) cudaEventDestroy(d.slot_copied[s]);
  }
  for (Impl::WaitBracket& b : d.wait_brackets) {
    if (b.before) cudaEventDestroy(b.before);
    if (b.after) cudaEventDestroy(b.after);
  }
  if (d.copy_stream) cudaStreamDestroy(d.copy_stream);
  if (d.host_inputs_of_layers) cudaFreeHost(d.host_inputs_of_layers);
  for (auto& [key, exec] : d.decode_graphs) cudaGraphExecDestroy(exec);
  for (auto& [bucket, exec] : d.step_graphs) cudaGraphExecDestroy(exec);
  d.gemm_ctx.reset();
  if (d.stream) cudaStreamDestroy(d.stream);
}

void CudaModel::forward(const MicroBatch& mb, const PassOptions& pass) {
  Impl& d = *impl_;
  d.begin_pass(mb, pass);
  d.forward_layers();
  d.head(false, pass.train ? d.loss_sum : d.forward_sum);
  d.backward_ready = pass.train;
}

void CudaModel::backward(const std::vector<float>& token_weight, bool last) {
  Impl& d = *impl_;
  LOOM_CHECK(d.backward_ready, "backward needs a training forward first (and runs once per forward)");
  d.last_micro = last;
  d.upload_token_weights(token_weight);
  d.head(true, nullptr);  // the forward counted the loss already
  d.backward_layers();
}

void CudaModel::forward_backward(const MicroBatch& mb, const std::vector<float>& token_weight, uint64_t dropout_seed,
                                 bool last) {
  Impl& d = *impl_;
  d.last_micro = last;
  if (d.graphs_step()) {  // no dropout there: the seed is moot
    LOOM_CHECK(int64_t(token_weight.size()) == mb.T(), "token weights: ", token_weight.size(),
               " values for a micro-batch of ", mb.T(), " tokens");
    return d.graphed_forward_backward(mb, token_weight);
  }
  d.begin_pass(mb, PassOptions{true, true, dropout_seed});
  d.upload_token_weights(token_weight);
  d.forward_layers();
  d.head(true, d.loss_sum);
  d.backward_layers();
}

void CudaModel::prefill(const std::vector<std::vector<int32_t>>& prompts, bool adapters, std::vector<float>& logits) {
  impl_->prefill_forward(prompts, adapters);
  impl_->take_logits(int(prompts.size()), logits);
}

void CudaModel::prefill_tokens(const std::vector<std::vector<int32_t>>& prompts, bool adapters,
                               const TokenChoice& choice, std::vector<int32_t>& ids) {
  impl_->prefill_forward(prompts, adapters);
  impl_->take_tokens(int(prompts.size()), choice, ids);
}

void CudaModel::decode(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions, bool adapters,
                       std::vector<float>& logits) {
  impl_->decode_forward(tokens, positions, adapters);
  impl_->take_logits(impl_->B, logits);
}

void CudaModel::decode_tokens(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions, bool adapters,
                              const TokenChoice& choice, std::vector<int32_t>& ids) {
  impl_->decode_forward(tokens, positions, adapters);
  impl_->take_tokens(impl_->B, choice, ids);
}

void CudaModel::Impl::prefill_forward(const std::vector<std::vector<int32_t>>& prompts, bool adapters) {
  Impl& d = *this;
  d.check_can_generate("prefill");
  LOOM_CHECK(!prompts.empty() && int(prompts.size()) <= d.B, "prefill: ", prompts.size(),
             " prompts for a cache of ", d.B, " sequences");
  MicroBatch mb;
  std::vector<int32_t> slot, lengths;
  mb.cu_seqlens.push_back(0);
  for (size_t b = 0; b < prompts.size(); ++b) {
    const std::vector<int32_t>& p = prompts[b];
    LOOM_CHECK(!p.empty() && int64_t(p.size()) < d.context, "prefill: prompt ", b, " has ", p.size(),
               " tokens; the cache holds ", d.context, " positions per sequence");
    for (size_t i = 0; i < p.size(); ++i) {
      LOOM_CHECK(p[i] >= 0 && p[i] < d.cfg.V, "prefill: token id ", p[i], " is outside the vocabulary (", d.cfg.V, ")");
      mb.tokens.push_back(p[i]);
      mb.targets.push_back(kIgnoreIndex);
      mb.positions.push_back(int32_t(i));
      slot.push_back(int32_t(b));
    }
    mb.cu_seqlens.push_back(int32_t(mb.tokens.size()));
    lengths.push_back(int32_t(p.size()));
  }
  const CachingScope caching(d);
  d.begin_pass(mb, PassOptions{adapters, false, 0});
  d.upload_cache_rows(slot, lengths);
  d.forward_layers();
  for (size_t b = 0; b < prompts.size(); ++b)  // each prompt's last position
    CUDA_CHECK(cudaMemcpyAsync(d.x_last + b * d.cfg.C, d.xf + int64_t(mb.cu_seqlens[b + 1] - 1) * d.cfg.C,
                               size_t(d.cfg.C) * sizeof(bf16), cudaMemcpyDeviceToDevice, d.stream));
  d.head_logits(d.x_last, int(prompts.size()));
}

void CudaModel::Impl::decode_forward(const std::vector<int32_t>& tokens, const std::vector<int32_t>& positions,
                                     bool adapters) {
  Impl& d = *this;
  d.check_can_generate("decode");
  LOOM_CHECK(int(tokens.size()) == d.B && positions.size() == tokens.size(), "decode: ", tokens.size(), " tokens and ",
             positions.size(), " positions for a cache of ", d.B, " sequences");
  MicroBatch mb;
  mb.tokens = tokens;
  mb.targets.assign(tokens.size(), kIgnoreIndex);
  mb.positions = positions;
  mb.cu_seqlens = {0, int32_t(tokens.size())};  // unused by the decode attention
  std::vector<int32_t> slot(tokens.size()), length(tokens.size());
  int64_t max_len = 0;
  for (size_t b = 0; b < tokens.size(); ++b) {
    LOOM_CHECK(positions[b] >= 0 && positions[b] < d.context, "decode: position ", positions[b], " of sequence ", b,
               " is outside the cache's ", d.context, " positions");
    LOOM_CHECK(tokens[b] >= 0 && tokens[b] < d.cfg.V, "decode: token id ", tokens[b], " is outside the vocabulary");
    slot[b] = int32_t(b);
    length[b] = positions[b] + 1;
    max_len = std::max<int64_t>(max_len, length[b]);
  }
  const CachingScope caching(d);
  d.begin_pass(mb, PassOptions{adapters, false, 0});
  d.upload_cache_rows(slot, length);
  d.run_decode_step(max_len);
}

std::vector<float> CudaModel::token_losses() {
  Impl& d = *impl_;
  std::vector<float> out(d.T);
  CUDA_CHECK(cudaMemcpyAsync(out.data(), d.token_loss, size_t(d.T) * 4, cudaMemcpyDeviceToHost, d.stream));
  CUDA_CHECK(cudaStreamSynchronize(d.stream));
  return out;
}

double CudaModel::take_forward_loss_sum() {
  Impl& d = *impl_;
  CUDA_CHECK(cudaMemcpyAsync(d.host_sum, d.forward_sum, 4, cudaMemcpyDeviceToHost, d.stream));
  CUDA_CHECK(cudaMemsetAsync(d.forward_sum, 0, 4, d.stream));
  CUDA_CHECK(cudaStreamSynchronize(d.stream));
  return double(*d.host_sum);
}

void CudaModel::set_layer_grads_hook(std::function<void(int)> hook) { impl_->layer_grads_hook = std::move(hook); }
float* CudaModel::device_loss_sum() { return impl_->loss_sum; }
void CudaModel::zero_loss_sum() { CUDA_CHECK(cudaMemsetAsync(impl_->loss_sum, 0, 4, impl_->stream)); }
DeviceAdapters& CudaModel::adapters() { return impl_->adapters; }
cudaStream_t CudaModel::stream() const { return impl_->stream; }
std::vector<float> CudaModel::lora_params() const { return impl_->adapters.params(impl_->stream); }
std::vector<float> CudaModel::lora_grads() const { return impl_->adapters.grads(impl_->stream); }
void CudaModel::set_lora(const std::vector<float>& params) { impl_->adapters.set(params, impl_->stream); }
size_t CudaModel::planned_bytes() const { return impl_->plan.total_bytes(); }

bool CudaModel::plan_fits_device() const {
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return planned_bytes() + kContextReserve <= free_b;
}

double CudaModel::offload_wait_seconds() {
  Impl& d = *impl_;
  d.sum_wait_brackets();
  return d.waited_seconds;
}

size_t CudaModel::planned_host_bytes() const { return impl_->offload ? impl_->offload_host_bytes() : 0; }
bool CudaModel::plan_fits_host() const {
  return !impl_->offload || HostMemory::now().fits(planned_host_bytes());
}

std::string CudaModel::describe() const {
  const Impl& d = *impl_;
  return cat("cuda: ", cuda_device_summary(), " | ", quant_name(d.opt.quant),
             d.train_mode      ? cat(" | recompute ", recompute_name(d.opt.recompute),
                                     d.offload ? cat(", ", d.offloaded_layers(), " layers' inputs offloaded (",
                                                     format_bytes(d.offload_host_bytes()), " pinned), ",
                                                     d.cfg.L - d.offloaded_layers(), " kept on the GPU")
                                               : std::string())
             : d.generate_mode ? cat(" | generation, KV cache ", d.B, " × ", d.context)
                               : std::string(" | forward only"),
             d.train_mode && d.B > 0 ? cat(" | samples' KV cache ", d.B, " × ", d.context) : std::string(),
             " | plan ", format_bytes(planned_bytes()));
}

}  // namespace loom
