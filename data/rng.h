// Portable random numbers for data order and synthetic data: the same seed gives the same numbers
// with every compiler and standard library. (std::mt19937 itself is portable, but
// std::uniform_int_distribution, std::normal_distribution and std::shuffle are not: libstdc++,
// libc++ and MSVC draw differently, so a shuffle or a length would change with the toolchain.)
//
// SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014):
//   state += 0x9E3779B97F4A7C15 (the golden-ratio gamma); output = mix64(state)
//   mix64(z): z = (z ^ z>>30)·0xBF58476D1CE4E5B9; z = (z ^ z>>27)·0x94D049BB133111EB; z ^ z>>31
// 2^64 period, passes BigCrush; plenty for shuffles and benchmark data, not for cryptography.
#pragma once
#include <cstdint>

#include "ops/random.h"  // mix64, shared with the counter-based draws

namespace loom {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ull;
    return mix64(state_);
  }

  // Uniform in [0, n), n > 0. Unbiased: the 2^64 mod n smallest raw values are redrawn, so every
  // residue is hit by exactly floor(2^64 / n) accepted values.
  uint64_t below(uint64_t n) {
    const uint64_t rejected = (0 - n) % n;  // == 2^64 mod n
    uint64_t r = next();
    while (r < rejected) r = next();
    return r % n;
  }

  // Uniform in (0, 1], 53 bits: never 0, so log() of it is finite (Box–Muller).
  double open_unit() { return double((next() >> 11) + 1) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

}  // namespace loom
