// Greedy on the GPU (ops/sampling.cu greedy_tokens) against the reference (sample_token_ref with
// temperature 0 and no penalty): the same token for every row, exactly (a comparison, no arithmetic),
// and the reference's refusal for rows it refuses. Rows of awkward widths (1, 7, 1000, both real
// vocabularies), with ties planted across threads and warps (the lowest index must win), -inf
// entries, a row of -inf only, NaN and +inf.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ops/error.h"
#include "ops/sampling.h"
#include "tests/device_array.h"
#include "tests/test_util.h"

namespace loom {
namespace {

using test::DeviceArray;

std::vector<int32_t> device_codes(const std::vector<float>& logits, int rows, int V) {
  DeviceArray<float> d(logits.size());
  DeviceArray<int32_t> codes{size_t(rows)};
  d.upload(logits);
  greedy_tokens(codes.get(), d.get(), rows, V, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return codes.download<int32_t>();
}

int32_t reference_token(const float* row, int V) {
  SamplingParams greedy;
  greedy.temperature = 0;
  return sample_token_ref(row, V, greedy, nullptr, 0, 0, 0);
}

TEST(SamplingGpu, GreedyPicksTheReferenceTokenOnEveryRow) {
  REQUIRE_GPU();
  const float inf = std::numeric_limits<float>::infinity();
  for (int V : {1, 7, 1000, 128256, 151936}) {
    const int rows = 5;
    std::vector<float> x = test::random_floats(size_t(rows) * V, uint64_t(V), -4.f, 4.f);
    // row 1: the maximum planted twice, far apart (other threads, other warps): the first must win
    if (V > 2) x[size_t(V) + size_t(V) - 1] = x[size_t(V) + 1] = 10.f;
    // row 2: every value equal
    for (int i = 0; i < V; ++i) x[2 * size_t(V) + i] = 0.5f;
    // row 3: -inf everywhere but one entry
    for (int i = 0; i < V; ++i) x[3 * size_t(V) + i] = i == V / 2 ? -3.f : -inf;
    const std::vector<int32_t> codes = device_codes(x, rows, V);
    for (int r = 0; r < rows; ++r)
      EXPECT_EQ(greedy_token_of_code(codes[size_t(r)], V), reference_token(x.data() + size_t(r) * V, V))
          << "V " << V << " row " << r;
  }
}

TEST(SamplingGpu, GreedyRefusesWhatTheReferenceRefuses) {
  REQUIRE_GPU();
  const int V = 151936, rows = 3;
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = test::random_floats(size_t(rows) * V, 3, -4.f, 4.f);
  x[size_t(V) * 0 + 70000] = std::nanf("");
  x[size_t(V) * 0 + 90000] = inf;
  x[size_t(V) * 1 + 5] = inf;
  for (int i = 0; i < V; ++i) x[2 * size_t(V) + i] = -inf;
  const std::vector<int32_t> codes = device_codes(x, rows, V);
  EXPECT_EQ(codes[0], -2 - 70000);  // the lowest non-finite index
  EXPECT_EQ(codes[1], -2 - 5);
  EXPECT_EQ(codes[2], -1);
  for (int r = 0; r < rows; ++r) {
    EXPECT_THROW(reference_token(x.data() + size_t(r) * V, V), Error) << "row " << r;
    EXPECT_THROW(greedy_token_of_code(codes[size_t(r)], V), Error) << "row " << r;
  }
}

}  // namespace
}  // namespace loom
