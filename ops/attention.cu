// Flash attention launchers (math in ops/attention.h, kernels in ops/attention_kernels.cuh and its
// two families). Every check on shapes, strides and alignment happens here; the kernels trust their
// inputs. Forward: one launch. Backward: prep (delta, zero dq_accum, row_lo), the main kernel, dq
// conversion.
#include <climits>
#include <cmath>

#include "ops/attention.h"
#include "ops/attention_hopper_kernels.cuh"
#include "ops/attention_long_kernels.cuh"
#include "ops/attention_short_kernels.cuh"

namespace loom {
namespace {

using attn::BwdParams;
using attn::FwdParams;

bool aligned_16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void check_shape(const AttentionShape& s, int64_t T) {
  LOOM_CHECK(s.D == 64 || s.D == 128, "attention: head_dim ", s.D,
             " is not supported by the CUDA kernels (supported: 64, 128); use the reference path for this model");
  LOOM_CHECK(s.H > 0 && s.KVH > 0 && s.H % s.KVH == 0, "attention: num_attention_heads (", s.H,
             ") must be a positive multiple of num_key_value_heads (", s.KVH, "); check config.json");
  LOOM_CHECK(s.window >= 0, "attention: sliding window must be >= 0 (found ", s.window, "; 0 = no window)");
  LOOM_CHECK(s.ndoc >= 1 && s.cu_seqlens != nullptr, "attention: need at least one document and cu_seqlens (found ndoc = ",
             s.ndoc, ")");
  // Token indices are int in the kernels (element offsets are int64); the backward's key tile is the
  // widest step past a token index.
  LOOM_CHECK(T >= 0 && T <= INT_MAX - attn::long_docs::BwdTile<128>::kKeys, "attention: T = ", T,
             " tokens does not fit the kernels' 32-bit token index; lower the token budget");
  LOOM_CHECK(std::isfinite(s.scale) && s.scale > 0, "attention: scale must be finite and > 0 (found ", s.scale, ")");
}

// A (T, heads, D) view: stride covers the heads, is a multiple of 8 (16-byte rows), pointer aligned.
void check_view(const char* name, const void* p, int64_t row_stride, int heads, int D) {
  LOOM_CHECK(p != nullptr, "attention: ", name, " is null");
  LOOM_CHECK(row_stride >= int64_t{heads} * D && row_stride % 8 == 0, "attention: ", name, " row stride ", row_stride,
             " must be >= heads * D = ", int64_t{heads} * D, " and a multiple of 8");
  LOOM_CHECK(aligned_16(p), "attention: ", name, " must be 16-byte aligned (found address ", p, ")");
}

attn::AttnParams common_params(const bf16* q, const bf16* k, const bf16* v, const AttentionStrides& st,
                               const AttentionShape& s, int64_t T) {
  attn::AttnParams p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.q_row_stride = st.q;
  p.k_row_stride = st.k;
  p.v_row_stride = st.v;
  p.cu_seqlens = s.cu_seqlens;
  p.ndoc = s.ndoc;
  p.T = static_cast<int>(T);
  p.H = s.H;
  p.KVH = s.KVH;
  p.window = s.window;
  p.scale = s.scale;
  p.scale_log2 = s.scale * attn::kLog2e;
  return p;
}

// Mean document length from which the long-document kernels run. Measured on an H100 (2026-12-06,
// tools/perf_notes.md): at ~240 tokens the short kernels are faster (forward 0.35 vs 0.43 ms, D 64
// backward 0.77 vs 1.04 ms), at ~2048 and 16K the long ones (backward 1.26x and 1.20x). 512 lies
// between the two measured points; the crossing itself is not yet measured.
constexpr int64_t kLongDocMeanTokens = 512;
// In GPU_ARCH=90 builds (H200, 2026-12-07, build/attention_bench, tools/perf_notes.md): the Hopper
// backward is the fastest at every document length measured (~240 tokens to 16K, D 64 and 128: 1.1x
// to 1.6x the fastest other family), and the Hopper forward from a mean of ~1024 tokens at D 128 (230 vs
// 209 TFLOP/s; 16K 334 vs 275) but not at ~512 (170 vs 177) nor at D 64 (16K: 217 vs 240). The
// backward reads only the forward's out and lse, which every family writes alike.
constexpr int64_t kHopperForwardMeanTokens = 1024;

enum class Pass { kForward, kBackward };

// The family that runs: `kernels` unless kAuto.
AttentionKernels resolve(AttentionKernels kernels, const AttentionShape& s, int64_t T, Pass pass) {
  if (kernels == AttentionKernels::kLongDocsHopper)
    LOOM_CHECK(attention_hopper_kernels_built(), "attention: the Hopper kernels need a GPU_ARCH=90 build");
  if (kernels != AttentionKernels::kAuto) return kernels;
  if (attention_hopper_kernels_built() &&
      (pass == Pass::kBackward || (s.D == 128 && T >= kHopperForwardMeanTokens * s.ndoc)))
    return AttentionKernels::kLongDocsHopper;
  return T >= kLongDocMeanTokens * s.ndoc ? AttentionKernels::kLongDocs : AttentionKernels::kShortDocs;
}

template <int D>
void launch_forward(const FwdParams& p, AttentionKernels family, cudaStream_t stream) {
  if (family == AttentionKernels::kLongDocsHopper) {
    using Tile = attn::hopper::FwdTile<D>;
    allow_smem<attn::hopper::attention_forward_kernel<D>>(Tile::kSmemBytes);
    dim3 grid(static_cast<unsigned>(ceil_div(p.T, Tile::kQueries)), static_cast<unsigned>(p.H));
    attn::hopper::attention_forward_kernel<D><<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
  } else if (family == AttentionKernels::kLongDocs) {
    using Tile = attn::long_docs::FwdTile<D>;
    allow_smem<attn::long_docs::attention_forward_kernel<D>>(Tile::kSmemBytes);
    dim3 grid(static_cast<unsigned>(ceil_div(p.T, Tile::kQueries)), static_cast<unsigned>(p.H));
    attn::long_docs::attention_forward_kernel<D><<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
  } else {
    using Tile = attn::short_docs::FwdTile<D>;
    allow_smem<attn::short_docs::attention_forward_kernel<D>>(Tile::kSmemBytes);
    dim3 grid(static_cast<unsigned>(ceil_div(p.T, attn::short_docs::kTileTokens)), static_cast<unsigned>(p.H));
    attn::short_docs::attention_forward_kernel<D><<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <int D>
void launch_backward(const BwdParams& p, AttentionKernels family, cudaStream_t stream) {
  const int64_t rows = int64_t{p.T} * p.H;
  constexpr int kPrepThreads = 256;  // 8 (token, head) rows per block, one warp each
  attn::attention_backward_prep_kernel<D>
      <<<static_cast<unsigned>(ceil_div(rows, kPrepThreads / 32)), kPrepThreads, 0, stream>>>(p);
  CUDA_CHECK(cudaGetLastError());
  if (family == AttentionKernels::kLongDocsHopper) {
    using Tile = attn::hopper::BwdTile<D>;
    allow_smem<attn::hopper::attention_backward_kernel<D>>(Tile::kSmemBytes);
    const int64_t blocks = ceil_div(int64_t{p.T}, int64_t{Tile::kKeys}) * p.KVH;  // key tile major
    attn::hopper::attention_backward_kernel<D>
        <<<static_cast<unsigned>(blocks), Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
  } else if (family == AttentionKernels::kLongDocs) {
    using Tile = attn::long_docs::BwdTile<D>;
    allow_smem<attn::long_docs::attention_backward_kernel<D>>(Tile::kSmemBytes);
    const int64_t blocks = ceil_div(int64_t{p.T}, int64_t{Tile::kKeys}) * p.KVH;  // key tile major
    attn::long_docs::attention_backward_kernel<D>
        <<<static_cast<unsigned>(blocks), Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
  } else {
    using Tile = attn::short_docs::BwdTile<D>;
    allow_smem<attn::short_docs::attention_backward_kernel<D>>(Tile::kSmemBytes);
    dim3 grid(static_cast<unsigned>(ceil_div(p.T, attn::short_docs::kTileTokens)), static_cast<unsigned>(p.KVH));
    attn::short_docs::attention_backward_kernel<D><<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
  }
  CUDA_CHECK(cudaGetLastError());
  constexpr int kConvertThreads = 256;
  attn::attention_dq_convert_kernel<D>
      <<<static_cast<unsigned>(ceil_div(rows * (D / 8), kConvertThreads)), kConvertThreads, 0, stream>>>(p);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

bool attention_hopper_kernels_built() { return LOOM_GPU_ARCH == 90; }

AttentionStrides AttentionStrides::contiguous(int H, int KVH, int D) {
  const int64_t q = int64_t{H} * D, kv = int64_t{KVH} * D;
  return {q, kv, kv, q, q, kv, kv, q};
}

AttentionStrides AttentionStrides::fused_qkv(int H, int KVH, int D) {
  const int64_t fused = int64_t{H + 2 * KVH} * D, o = int64_t{H} * D;
  return {fused, fused, fused, o, fused, fused, fused, o};
}

void attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                       const AttentionStrides& strides, const AttentionShape& s, int64_t T, cudaStream_t stream,
                       AttentionKernels kernels) {
  check_shape(s, T);
  check_view("q", q, strides.q, s.H, s.D);
  check_view("k", k, strides.k, s.KVH, s.D);
  check_view("v", v, strides.v, s.KVH, s.D);
  check_view("out", out, strides.out, s.H, s.D);
  LOOM_CHECK(lse != nullptr, "attention: lse is null");
  if (T == 0) return;
  FwdParams p{};
  static_cast<attn::AttnParams&>(p) = common_params(q, k, v, strides, s, T);
  p.out = out;
  p.lse = lse;
  p.out_row_stride = strides.out;
  const AttentionKernels family = resolve(kernels, s, T, Pass::kForward);
  if (s.D == 64)
    launch_forward<64>(p, family, stream);
  else
    launch_forward<128>(p, family, stream);
}

// dq_accum (T, H, D), delta (T, H), row_lo (T) as int32 in float-sized slots.
int64_t attention_backward_scratch_floats(int64_t T, int H, int D) { return T * H * (int64_t{D} + 1) + T; }

void attention_backward(bf16* dq, bf16* dk, bf16* dv, float* scratch, const bf16* dout, const bf16* q,
                        const bf16* k, const bf16* v, const bf16* out, const float* lse,
                        const AttentionStrides& strides, const AttentionShape& s, int64_t T, cudaStream_t stream,
                        AttentionKernels kernels) {
  check_shape(s, T);
  check_view("q", q, strides.q, s.H, s.D);
  check_view("k", k, strides.k, s.KVH, s.D);
  check_view("v", v, strides.v, s.KVH, s.D);
  check_view("out", out, strides.out, s.H, s.D);
  check_view("dout", dout, strides.dout, s.H, s.D);
  check_view("dq", dq, strides.dq, s.H, s.D);
  check_view("dk", dk, strides.dk, s.KVH, s.D);
  check_view("dv", dv, strides.dv, s.KVH, s.D);
  LOOM_CHECK(lse != nullptr && aligned_16(scratch), "attention: lse must be set and scratch 16-byte aligned");
  if (T == 0) return;
  BwdParams p{};
  static_cast<attn::AttnParams&>(p) = common_params(q, k, v, strides, s, T);
  p.out = out;
  p.lse = lse;
  p.out_row_stride = strides.out;
  p.dout = dout;
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  p.dout_row_stride = strides.dout;
  p.dq_row_stride = strides.dq;
  p.dk_row_stride = strides.dk;
  p.dv_row_stride = strides.dv;
  p.dq_accum = scratch;                     // (T, H, D)
  p.delta = scratch + T * s.H * int64_t{s.D};  // (T, H)
  p.row_lo = reinterpret_cast<int*>(p.delta + T * s.H);  // (T)
  const AttentionKernels family = resolve(kernels, s, T, Pass::kBackward);
  if (s.D == 64)
    launch_backward<64>(p, family, stream);
  else
    launch_backward<128>(p, family, stream);
}

}  // namespace loom
