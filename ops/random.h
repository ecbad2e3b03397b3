// Counter-based random numbers (weight initialisation, dropout masks, token sampling): value i of
// stream s under seed is a pure function of (seed, s, i), so the CPU reference and the GPU draw
// identical numbers, in any order and in parallel. splitmix64 finaliser (Steele et al., "Fast splittable PRNGs", 2014).
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define LOOM_HD __host__ __device__
#else
#define LOOM_HD
#endif

namespace loom {

LOOM_HD inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// 64 random bits: the value every draw below is made from.
LOOM_HD inline uint64_t random_bits(uint64_t seed, uint64_t stream, uint64_t i) {
  return mix64(seed * 0x9e3779b97f4a7c15ull + mix64(stream + 0x632be59bd9b4e019ull) + i);
}

// Uniform in [-1, 1) with 24 random bits (exact in fp32).
LOOM_HD inline float random_symmetric(uint64_t seed, uint64_t stream, uint64_t i) {
  uint64_t h = random_bits(seed, stream, i);
  return float(int64_t(h >> 40) - (int64_t(1) << 23)) * (1.0f / float(1 << 23));
}

// Uniform in [0, 1).
LOOM_HD inline float random_unit(uint64_t seed, uint64_t stream, uint64_t i) {
  return 0.5f * (random_symmetric(seed, stream, i) + 1.0f);
}

}  // namespace loom
