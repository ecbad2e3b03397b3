// When a CPU reference loop is worth OpenMP's threads. Below about 32K multiply-adds of work,
// waking and joining the team costs more than the loop, and with more threads than free cores a
// join can wait milliseconds for a descheduled thread: token-by-token generation on the fixture
// models took 13 ms a token with a team per op and well under 1 ms without. Every loop this guards
// writes each output from one iteration, so the bits are the same either way.
#pragma once
#include <cstdint>

namespace loom {

constexpr int64_t kParallelMinWork = int64_t(1) << 15;
inline bool worth_threads(int64_t work) { return work >= kParallelMinWork; }

}  // namespace loom
