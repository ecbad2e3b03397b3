// Linear + LoRA on the GPU (math in ops/lora_linear.h): cuBLASLt GEMMs with the scale folded into
// alpha and accumulation through beta, the bias added after the base GEMM (ops/bias.h), and the
// LoRA input's dropout (ops/dropout.h) drawn into x_dropped in forward and again in backward.
// Every pointer is on the device; every call is asynchronous on the caller's stream.
#include "ops/bias.h"
#include "ops/dropout.h"
#include "ops/lora_linear.h"

namespace loom {
namespace {

void check_shape(const char* op, int64_t T, int in, int out) {
  LOOM_CHECK(T >= 0 && in > 0 && out > 0, op, ": needs T >= 0 and in, out > 0; found T ", T, ", in ", in, ", out ",
             out);
}

// The adapter's buffers; nothing to check when it is off (A == nullptr).
void check_lora(const char* op, const LoraDevice& lora, const bf16* u, const bf16* x_dropped) {
  if (lora.A == nullptr) return;
  LOOM_CHECK(lora.B != nullptr && lora.R > 0, op, ": an adapter needs B and rank R > 0 (found B ",
             lora.B == nullptr ? "missing" : "set", ", R ", lora.R, ")");
  LOOM_CHECK(u != nullptr, op, ": an adapter needs u, the (T, R) buffer of xl·Aᵀ");
  LOOM_CHECK(lora.dropout >= 0.f && lora.dropout < 1.f, op, ": LoRA dropout must be in [0, 1) (found ",
             lora.dropout, ")");
  LOOM_CHECK(lora.dropout == 0.f || x_dropped != nullptr, op, ": LoRA dropout ", lora.dropout,
             " needs the (T, in) x_dropped scratch");
}

// The LoRA branch's input: x, or x after the dropout mask, written into x_dropped.
const bf16* lora_input(const LoraDevice& lora, const bf16* x, bf16* x_dropped, int64_t n, cudaStream_t stream) {
  if (lora.dropout == 0.f) return x;
  dropout_forward(x_dropped, x, n, lora.dropout_seed, lora.dropout_stream, lora.dropout, stream, lora.dropout_first);
  return x_dropped;
}

// u = xl·Aᵀ (the adapter is set and checked).
void input_product(GemmContext& ctx, bf16* u, const bf16* x, const LoraDevice& lora, bf16* x_dropped, int64_t T,
                   int in, cudaStream_t stream) {
  const bf16* xl = lora_input(lora, x, x_dropped, T * in, stream);
  gemm(ctx, u, xl, lora.A, T, lora.R, in, false, true, 1.f, 0.f, GemmOut::kBf16, stream);
}

}  // namespace

void lora_linear_forward(GemmContext& ctx, bf16* y, bf16* u, const bf16* x, const bf16* W, const bf16* bias,
                         const LoraDevice& lora, bf16* x_dropped, int64_t T, int in, int out, cudaStream_t stream) {
  check_shape("lora_linear_forward", T, in, out);
  check_lora("lora_linear_forward", lora, u, x_dropped);  // before any launch: bad buffers never reach a kernel
  gemm(ctx, y, x, W, T, out, in, false, true, 1.f, 0.f, GemmOut::kBf16, stream);  // y = x·Wᵀ
  if (bias != nullptr) bias_add(y, bias, T, out, stream);
  if (lora.A == nullptr) return;
  input_product(ctx, u, x, lora, x_dropped, T, in, stream);                                         // u = xl·Aᵀ
  gemm(ctx, y, u, lora.B, T, out, lora.R, false, true, lora.scale, 1.f, GemmOut::kBf16, stream);  // y += s·u·Bᵀ
}

void lora_linear_input_product(GemmContext& ctx, bf16* u, const bf16* x, const LoraDevice& lora, bf16* x_dropped,
                               int64_t T, int in, cudaStream_t stream) {
  check_shape("lora_linear_input_product", T, in, 1);
  check_lora("lora_linear_input_product", lora, u, x_dropped);
  if (lora.A != nullptr) input_product(ctx, u, x, lora, x_dropped, T, in, stream);
}

void lora_linear_backward(GemmContext& ctx, bf16* dx, bool accumulate, const bf16* dy, const bf16* x, const bf16* u,
                          const bf16* W, const LoraDevice& lora, bf16* du, bf16* x_dropped, int64_t T, int in, int out,
                          cudaStream_t stream) {
  const char* op = "lora_linear_backward";
  check_shape(op, T, in, out);
  check_lora(op, lora, u, x_dropped);
  LOOM_CHECK(lora.A == nullptr || (lora.dA != nullptr && lora.dB != nullptr && du != nullptr), op,
             ": an adapter needs its gradients dA, dB and the (T, R) du scratch");
  // dx = dy·W (+ dx)
  gemm(ctx, dx, dy, W, T, in, out, false, false, 1.f, accumulate ? 1.f : 0.f, GemmOut::kBf16, stream);
  if (lora.A == nullptr) return;
  const int R = lora.R;
  gemm(ctx, du, dy, lora.B, T, R, out, false, false, lora.scale, 0.f, GemmOut::kBf16, stream);   // du = s·dy·B
  gemm(ctx, lora.dB, dy, u, out, R, T, true, false, lora.scale, 1.f, GemmOut::kFp32, stream);    // dB += s·dyᵀ·u
  const bf16* xl = lora_input(lora, x, x_dropped, T * in, stream);
  gemm(ctx, lora.dA, du, xl, R, in, T, true, false, 1.f, 1.f, GemmOut::kFp32, stream);           // dA += duᵀ·xl
  if (lora.dropout == 0.f)
    return gemm(ctx, dx, du, lora.A, T, in, R, false, false, 1.f, 1.f, GemmOut::kBf16, stream);  // dx += du·A
  // dx += mask·(du·A): du·A into x_dropped (xl is no longer needed), then through dropout's backward.
  gemm(ctx, x_dropped, du, lora.A, T, in, R, false, false, 1.f, 0.f, GemmOut::kBf16, stream);
  dropout_backward(dx, x_dropped, T * in, lora.dropout_seed, lora.dropout_stream, lora.dropout, stream,
                   lora.dropout_first);
}

}  // namespace loom
