// IEEE binary16 (fp16) on the host: float -> fp16 with round-to-nearest-even (as numpy's
// astype(float16) and torch's .half(): subnormals kept, overflow to inf, NaN stays NaN), and back.
// For exports that store fp16 (safetensors F16, GGUF F16 and the Q8_0 block scales).
#pragma once
#include <cstdint>
#include <cstring>

namespace loom {

inline uint16_t float_to_f16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));  // NaN stays NaN (quiet)
  if (abs >= 0x47800000u) {  // >= 65536: past the largest finite fp16 even after rounding
    return uint16_t(sign | 0x7c00u);
  }
  if (abs < 0x38800000u) {  // below 2^-14: fp16 subnormal (or zero), in units of 2^-24
    if (abs < 0x33000000u) return sign;  // below 2^-25: rounds to zero (2^-25 itself is a tie to even 0)
    const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;  // 24 significant bits
    const int shift = 126 - int(abs >> 23);                   // 14..24 for exponents 2^-15..2^-25
    const uint32_t kept = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    const uint32_t rounded = kept + (rest > half || (rest == half && (kept & 1u)));
    return uint16_t(sign | rounded);  // a carry into bit 10 gives the smallest normal, as it should
  }
  // Normal: rebias the exponent (127 -> 15), round the 23-bit mantissa to 10 bits, nearest even;
  // a carry propagates into the exponent (and up to inf for values that round past 65504).
  const uint32_t rebased = abs - 0x38000000u;
  const uint32_t rounded = rebased + 0xfffu + ((rebased >> 13) & 1u);
  return uint16_t(sign | (rounded >> 13));
}

inline float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t u;
  if (exponent == 0x1f) {
    u = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    u = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    u = sign;
  } else {  // subnormal: mantissa * 2^-24, exact in fp32
    float f = float(mantissa) * (1.0f / 16777216.0f);
    std::memcpy(&u, &f, 4);
    u |= sign;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace loom
