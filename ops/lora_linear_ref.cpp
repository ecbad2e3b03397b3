// Linear + LoRA, fp32 CPU reference (math in lora_linear.h), as four or five plain GEMMs.
// The adapter term is added as PEFT does: y = base(x) + (u·Bᵀ) * s, with u = xl·Aᵀ (N, R).
#include "ops/error.h"
#include "ops/lora_linear.h"
#include "ops/matmul.h"
#include "ops/parallel.h"

namespace loom {
namespace {
void check_lora(const LoraRef& lora) {
  if (lora.A == nullptr) return;
  LOOM_CHECK(lora.B != nullptr && lora.R > 0, "lora_linear: an adapter needs B and rank R > 0 (found B ",
             lora.B == nullptr ? "missing" : "set", ", R ", lora.R, ")");
}
}  // namespace

void lora_linear_forward_ref(float* y, float* u, const float* x, const float* xl, const float* W, const float* bias,
                             const LoraRef& lora, int64_t N, int in, int out) {
  check_lora(lora);
  matmul_ref(y, x, W, N, out, in, false, true);
  if (bias != nullptr) {
#pragma omp parallel for if (worth_threads(N * out))
    for (int64_t n = 0; n < N; ++n)
      for (int o = 0; o < out; ++o) y[n * out + o] += bias[o];
  }
  if (lora.A == nullptr) return;
  matmul_ref(u, xl, lora.A, N, lora.R, in, false, true);                 // u = xl·Aᵀ
  matmul_ref(y, u, lora.B, N, out, lora.R, false, true, lora.scale, 1.f);  // y += s·u·Bᵀ
}

void lora_linear_backward_ref(float* dx, float* dxl, float* dA, float* dB, float* du_scratch, const float* dy,
                              const float* xl, const float* u, const float* W, const LoraRef& lora, int64_t N, int in,
                              int out) {
  check_lora(lora);
  matmul_ref(dx, dy, W, N, in, out, false, false);  // dx = dy·W
  if (lora.A == nullptr) return;
  float* du = du_scratch;
  matmul_ref(du, dy, lora.B, N, lora.R, out, false, false, lora.scale);  // du = s·dy·B
  matmul_ref(dB, dy, u, out, lora.R, N, true, false, lora.scale, 1.f);   // dB += s·dyᵀ·u
  matmul_ref(dA, du, xl, lora.R, in, N, true, false, 1.f, 1.f);          // dA += duᵀ·xl
  if (dxl != nullptr)
    matmul_ref(dxl, du, lora.A, N, in, lora.R, false, false);  // dxl = du·A
  else
    matmul_ref(dx, du, lora.A, N, in, lora.R, false, false, 1.f, 1.f);  // dx += du·A
}

}  // namespace loom
