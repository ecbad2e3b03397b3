// Model FLOPs, the two ceilings of the device, and MFU (BENCHMARK.md, "Figures").
//
// FLOPs per trained token:
//   flops_per_token = 4·P + 12·L·H·D·ℓ̄
//   P   every matmul weight a token goes through, LM head included, embedding lookup excluded
//       (ModelConfig::active_matmul_params(): all of them in a dense model; in a mixture of
//       experts the router and the K experts a token is sent to, issue 16's "MFU on active
//       parameters"). The weights cost 2·P per token forward and 2·P for the
//       activation gradient in backward; the base weights are frozen, so there is no weight
//       gradient. The rank-16 LoRA matmuls are left out, as BENCHMARK.md's formula does.
//   ℓ̄   mean number of keys a query attends to: causal within its document, so the i-th token
//       (0-based) of a document sees i + 1 keys, or min(i + 1, W) under a sliding window W.
//       Per (query, key) pair and head: QKᵀ and PV forward are 2·D FLOPs each (4·D); backward
//       has four such products (dV = Pᵀ·dO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q; 8·D): 12·D per
//       pair, head and layer.
//   Recomputation is not counted: it is work the schedule chose, not work the model needs.
//
// MFU = tokens_per_s · flops_per_token / peak, peak measured in the same run:
//   matmul ceiling  D (8192, 8192) = A (8192, 8192)·Bᵀ in bf16 with fp32 accumulation on cuBLASLt
//                   (ops/gemm.h), random operands, median of 20 timings after 3 warm-ups:
//                   2·8192³ FLOPs / time.
//   copy ceiling    a 2 GiB device-to-device cudaMemcpy, median of 10 after 2 warm-ups:
//                   (bytes read + bytes written) / time.
#pragma once
#include <vector>

#include "data/batch.h"
#include "models/model_config.h"

namespace loom {

// 4·P + 12·L·H·D·ℓ̄ (above).
double flops_per_token(const ModelConfig& cfg, double mean_attended_keys);
// 2·P + 4·L·H·D·ℓ̄: a forward alone (DPO's reference pass, evaluation), the forward terms above.
double forward_flops_per_token(const ModelConfig& cfg, double mean_attended_keys);

// ℓ̄ over every token of the micro-batches (each document from its cu_seqlens); window 0 = full
// causal attention. 0 when there are no tokens.
double mean_attended_keys(const std::vector<MicroBatch>& micro, int window = 0);
// ℓ̄ of a model: its per-layer windows (cfg.window) averaged over layers. Exact for the formula,
// since attention FLOPs add up over layers: 12·H·D·Σ_l ℓ̄_l = 12·L·H·D·mean_l ℓ̄_l.
double mean_attended_keys(const ModelConfig& cfg, const std::vector<MicroBatch>& micro);

// Model FLOPs utilisation in [0, 1]: tokens_per_s · flops_per_token / (peak_tflops · 10¹²).
double mfu(double tokens_per_s, double flops_per_token, double peak_tflops);

// The ceilings of CUDA device 0 (the current device), measured now with CUDA events. Each
// allocates what it needs (≈ 416 MiB, 4 GiB) and frees it before returning, so run them before
// a model claims the memory. Errors (loom::Error) when there is no device or too little free memory.
double measure_matmul_tflops();  // dense bf16 TFLOP/s
double measure_copy_tbps();      // TB/s, bytes read + written

}  // namespace loom
