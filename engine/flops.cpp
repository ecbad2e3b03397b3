#include "engine/flops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ops/error.h"

namespace loom {
namespace {

// Σ over the n queries of a document of the keys each sees: n(n+1)/2 when causal; under a window
// W < n the first W queries see 1..W keys and the other n - W see W each.
double attended_keys(int64_t n, int64_t window) {
  if (window <= 0 || window >= n) return 0.5 * double(n) * double(n + 1);
  return 0.5 * double(window) * double(window + 1) + double(n - window) * double(window);
}

// Σ keys and Σ queries (tokens) over every document of the micro-batches.
struct KeyCount {
  double keys = 0, tokens = 0;
};

KeyCount count_keys(const std::vector<MicroBatch>& micro, int window) {
  LOOM_CHECK(window >= 0, "sliding window must be >= 0 (0 = none), got ", window);
  KeyCount c;
  for (size_t m = 0; m < micro.size(); ++m) {
    const std::vector<int32_t>& cu = micro[m].cu_seqlens;
    for (size_t d = 0; d + 1 < cu.size(); ++d) {
      const int64_t n = int64_t(cu[d + 1]) - cu[d];
      LOOM_CHECK(n >= 0, "micro-batch ", m, ": cu_seqlens decreases at document ", d, " (", cu[d], " then ",
                 cu[d + 1], "); cu_seqlens must be the running document starts");
      c.keys += attended_keys(n, window);
      c.tokens += double(n);
    }
  }
  return c;
}

}  // namespace

double flops_per_token(const ModelConfig& cfg, double mean_attended_keys) {
  const double attention_per_key = 12.0 * cfg.L * cfg.H * cfg.D;
  return 4.0 * cfg.active_matmul_params() + attention_per_key * mean_attended_keys;
}

double forward_flops_per_token(const ModelConfig& cfg, double mean_attended_keys) {
  return 2.0 * cfg.active_matmul_params() + 4.0 * cfg.L * cfg.H * cfg.D * mean_attended_keys;
}

double mean_attended_keys(const std::vector<MicroBatch>& micro, int window) {
  const KeyCount c = count_keys(micro, window);
  return c.tokens > 0 ? c.keys / c.tokens : 0.0;
}

double mean_attended_keys(const ModelConfig& cfg, const std::vector<MicroBatch>& micro) {
  if (cfg.window.empty()) return mean_attended_keys(micro, 0);
  LOOM_CHECK(int(cfg.window.size()) == cfg.L, "model config has ", cfg.window.size(), " sliding windows for ", cfg.L,
             " layers; expected one per layer (0 = full attention)");
  double sum = 0;
  for (int w : cfg.window) sum += mean_attended_keys(micro, w);
  return sum / cfg.L;
}

double mfu(double tokens_per_s, double flops_per_token, double peak_tflops) {
  LOOM_CHECK(peak_tflops > 0 && std::isfinite(peak_tflops), "MFU needs a positive device peak, got ", peak_tflops,
             " TFLOP/s (measure it with measure_matmul_tflops())");
  return tokens_per_s * flops_per_token / (peak_tflops * 1e12);
}

}  // namespace loom
