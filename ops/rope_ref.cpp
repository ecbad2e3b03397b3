// Rotary position embedding, fp32 CPU reference (math in rope.h).
//
// inv_freq mirrors transformers' modeling_rope_utils.py operation by operation, in float32 as
// torch evaluates it (Python scalars are cast to float32 where they meet the tensor):
//   default:  inv_freq[i] = 1 / powf(theta, float(2i) / D)
//   linear:   inv_freq /= factor
//   llama3:   wavelen = (1 / inv_freq) * float(2π)        (torch: `2π / t` is reciprocal(t) * 2π)
//             wavelen > orig/low   -> inv_freq / factor   (long waves: interpolated)
//             wavelen < orig/high  -> inv_freq            (short waves: kept)
//             otherwise            -> (1 - s) * inv / factor + s * inv,
//                                     s = ((1 / wavelen) * orig - low) / (high - low)
// powf is what torch's scalar CPU path calls; its vectorised path (SLEEF, used for 16+ values)
// differs from powf by at most 2 ulp on about 1% of (theta, D) entries, and which entries
// depends on the CPU's vector width, so bit-exactness with HF cannot be promised in general.
// cos/sin come from cosf/sinf of the fp32 angle, as HF's fp32 emb.cos() / emb.sin().
#include <cmath>
#include <vector>

#include "ops/error.h"
#include "ops/rope.h"
#include "ops/parallel.h"

namespace loom {
namespace {

std::vector<float> default_inv_freq(int D, double theta) {
  const float base = static_cast<float>(theta);
  std::vector<float> inv_freq(D / 2);
  for (int i = 0; i < D / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(D);
    inv_freq[i] = 1.0f / powf(base, exponent);
  }
  return inv_freq;
}

void apply_llama3_scaling(std::vector<float>& inv_freq, const RopeParams& p) {
  const float factor = static_cast<float>(p.factor);
  const float low = static_cast<float>(p.low_freq_factor);
  const float high = static_cast<float>(p.high_freq_factor);
  const float orig = static_cast<float>(p.original_max_position);
  // Python computes these two thresholds in float64; both are compared against fp32 wavelengths.
  const float low_freq_wavelen = static_cast<float>(p.original_max_position / p.low_freq_factor);
  const float high_freq_wavelen = static_cast<float>(p.original_max_position / p.high_freq_factor);
  const float two_pi = static_cast<float>(6.283185307179586);  // Python's 2 * math.pi
  for (float& f : inv_freq) {
    const float wavelen = (1.0f / f) * two_pi;
    const float long_wave_scaled = wavelen > low_freq_wavelen ? f / factor : f;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (!medium) {
      f = long_wave_scaled;
      continue;
    }
    const float smooth = ((1.0f / wavelen) * orig - low) / (high - low);
    f = (1.0f - smooth) * long_wave_scaled / factor + smooth * long_wave_scaled;
  }
}

void check_params(int D, const RopeParams& p) {
  LOOM_CHECK(D > 0 && D % 2 == 0, "rope: head_dim must be even and > 0 (found ", D,
             "); check head_dim in config.json");
  LOOM_CHECK(p.theta > 0, "rope: rope_theta must be > 0 (found ", p.theta, "); check config.json");
  if (p.type == "linear" || p.type == "llama3")
    LOOM_CHECK(p.factor > 0, "rope: ", p.type, " scaling needs factor > 0 (found ", p.factor,
               "); check rope_scaling.factor in config.json");
  if (p.type == "llama3")
    LOOM_CHECK(p.high_freq_factor > p.low_freq_factor && p.low_freq_factor > 0 && p.original_max_position > 0,
               "rope: llama3 scaling needs 0 < low_freq_factor < high_freq_factor and "
               "original_max_position_embeddings > 0 (found low ",
               p.low_freq_factor, ", high ", p.high_freq_factor, ", original ", p.original_max_position,
               "); check rope_scaling in config.json");
}

// Rotates each (i, i + D/2) pair of every head by angle pos * inv_freq[i]; sign = -1 rotates back.
void rotate(float* x, const int32_t* pos, const float* inv_freq, int64_t T, int NH, int D, float sign) {
  const int half = D / 2;
#pragma omp parallel if (worth_threads(T * NH * D))
  {
    std::vector<float> cos_t(half), sin_t(half);
#pragma omp for
    for (int64_t t = 0; t < T; ++t) {
      for (int i = 0; i < half; ++i) {
        const float angle = static_cast<float>(pos[t]) * inv_freq[i];
        cos_t[i] = cosf(angle);
        sin_t[i] = sign * sinf(angle);
      }
      for (int h = 0; h < NH; ++h) {
        float* row = x + (t * NH + h) * D;
        for (int i = 0; i < half; ++i) {
          const float x1 = row[i], x2 = row[i + half];
          row[i] = x1 * cos_t[i] - x2 * sin_t[i];
          row[i + half] = x2 * cos_t[i] + x1 * sin_t[i];
        }
      }
    }
  }
}

}  // namespace

std::vector<float> rope_inv_freq(int D, const RopeParams& p) {
  check_params(D, p);
  std::vector<float> inv_freq = default_inv_freq(D, p.theta);
  if (p.type == "default") return inv_freq;
  if (p.type == "linear") {
    const float factor = static_cast<float>(p.factor);
    for (float& f : inv_freq) f /= factor;
    return inv_freq;
  }
  if (p.type == "llama3") {
    apply_llama3_scaling(inv_freq, p);
    return inv_freq;
  }
  fail("rope: unsupported rope type '", p.type,
       "' (config.json rope_scaling / rope_parameters); loom supports default, linear and llama3");
}

void rope_forward_ref(float* x, const int32_t* pos, const float* inv_freq, int64_t T, int NH, int D) {
  rotate(x, pos, inv_freq, T, NH, D, 1.0f);
}

void rope_backward_ref(float* dx, const int32_t* pos, const float* inv_freq, int64_t T, int NH, int D) {
  rotate(dx, pos, inv_freq, T, NH, D, -1.0f);
}

}  // namespace loom
