// Greedy on the GPU (ops/sampling.cu greedy_tokens) against the reference (sample_token_ref with
// temperature 0 and no penalty): the same token for every row, exactly (a comparison, no arithmetic),
// and the reference's refusal for rows it refuses. Rows of awkward widths (1, 7, 1000, both real
// vocabularies), with ties planted across threads and warps (the lowest index must win), -inf
// entries, a row of -inf only, NaN and +inf.
// Sampling on the GPU (sample_tokens) against sample_token_ref over a grid of parameters: the same
// token exactly (integer arithmetic by construction, so no tolerance), the same refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
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

// ---- sample_tokens ----

// One batch of rows for a vocabulary size: families that stress each rule, then rows the reference
// refuses (the greedy kernel's two and sample_tokens' three more).
struct SampleBatch {
  int V = 0, rows = 0;
  std::vector<float> logits;
  std::vector<std::vector<int32_t>> contexts;
  std::vector<int32_t> refusal;  // per row: -1, or the index of the planted logit / position / id
};

// Row families (r % 8), each chosen so that a wrong rule changes some draws:
//   0, 1 continuous random values; 2 values on a 0.5 grid (large tie groups at every top-k boundary
//   and top-p cut); 3 every value equal (the top-p cut inside one group spanning every chunk: the
//   kept ties must be the lowest indices); 4 30% -inf; 5 -inf but for every (V/3)-th value (top-k
//   past the finite ones); 6 ties planted at the top-k boundaries of k = 5 (9.0 × 6 after a 10.0) and
//   k = 50 (8.5 × 60), far apart; 7 +0 and -0 tied at the k-th value (a key keeping the sign drops
//   the -0 ones), below one 2.0 and above the rest.
// Contexts: repeated ids, ids past the vocabulary (ignored), often the row's argmax (so the penalty
// changes the result).
SampleBatch make_sample_batch(int V, int family_rows, uint64_t seed) {
  const float inf = std::numeric_limits<float>::infinity();
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(-6.f, 6.f);
  SampleBatch b;
  b.V = V;
  b.rows = family_rows + 6;
  b.logits.resize(size_t(b.rows) * V);
  b.contexts.resize(size_t(b.rows));
  b.refusal.assign(size_t(b.rows), -1);
  for (int r = 0; r < b.rows; ++r) {
    float* x = b.logits.data() + size_t(r) * V;
    for (int i = 0; i < V; ++i) x[i] = uniform(rng);
    const int family = r < family_rows ? r % 8 : 0;
    if (family == 2)
      for (int i = 0; i < V; ++i) x[i] = std::round(x[i] * 2) / 2;
    if (family == 3)
      for (int i = 0; i < V; ++i) x[i] = 0.25f;
    if (family == 4)
      for (int i = 0; i < V; ++i)
        if (rng() % 10 < 3) x[i] = -inf;
    if (family == 5)
      for (int i = 0; i < V; ++i)
        if (i % std::max(1, V / 3) != 0) x[i] = -inf;
    if (family == 6) {
      for (int j = 0; j < 60; ++j) x[(j * 104729 + 11) % V] = 8.5f;
      for (int j = 0; j < 6; ++j) x[(j * 7919 + 3) % V] = 9.f;
      x[V - 1] = 10.f;
    }
    if (family == 7) {
      for (int i = 0; i < V; ++i) x[i] = -1.f - std::fabs(x[i]);
      for (int j = 0; j < 40; ++j) x[(j * 31 + 1) % V] = j % 2 ? -0.f : 0.f;
      x[0] = 2.f;
    }
    std::vector<int32_t>& context = b.contexts[size_t(r)];
    const int length = int(rng() % 40);
    for (int t = 0; t < length; ++t)
      context.push_back(rng() % 3 == 0 && !context.empty() ? context[rng() % context.size()]
                                                           : int32_t(rng() % uint64_t(V + 5)));
    if (r % 5 == 0) context.push_back(int32_t(std::max_element(x, x + V) - x));
  }
  // the refusals, on continuous rows
  float* x = b.logits.data() + size_t(family_rows) * V;
  const int mid = V / 2;
  b.refusal[size_t(family_rows)] = mid;  // NaN: code -2 - mid
  x[mid] = std::nanf("");
  x += V;
  b.refusal[size_t(family_rows) + 1] = mid;  // +inf: code -2 - mid
  x[mid] = inf;
  x += V;
  std::fill(x, x + V, -inf);  // code -1
  b.refusal[size_t(family_rows) + 2] = 0;
  std::vector<int32_t>& negative = b.contexts[size_t(family_rows) + 3];
  negative.insert(negative.begin() + long(negative.size() / 2), -4);  // and another later
  negative.push_back(-1);
  b.refusal[size_t(family_rows) + 3] = int32_t(std::find(negative.begin(), negative.end(), -4) - negative.begin());
  x += 2 * size_t(V);
  x[mid] = -3e38f;  // any penalty > 1 overflows it to -inf: code sampling_code_penalty_overflow(mid)
  b.contexts[size_t(family_rows) + 4] = {V + 2, mid, 0, mid};
  b.refusal[size_t(family_rows) + 4] = mid;
  x += V;
  x[mid] = 3e38f;  // 3e38 / 0.7 > FLT_MAX: code sampling_code_temperature_overflow at temperature 0.7
  b.contexts[size_t(family_rows) + 5] = {};
  b.refusal[size_t(family_rows) + 5] = mid;
  return b;
}

std::string describe(const SamplingParams& p) {
  return "temperature " + std::to_string(p.temperature) + " top_k " + std::to_string(p.top_k) + " top_p " +
         std::to_string(p.top_p) + " min_p " + std::to_string(p.min_p) + " penalty " +
         std::to_string(p.repetition_penalty);
}

// "token N" or "refused: <message>"; equal tokens compare equal, and refusals are compared by kind
// (the messages hold values only the reference knows).
std::string outcome(const std::function<int32_t()>& token) {
  try {
    return "token " + std::to_string(token());
  } catch (const Error& e) {
    return std::string("refused: ") + e.what();
  }
}
bool same_outcome(const std::string& a, const std::string& b) {
  const bool refused_a = a.rfind("refused", 0) == 0, refused_b = b.rfind("refused", 0) == 0;
  return refused_a || refused_b ? refused_a == refused_b : a == b;
}

// The code sample_tokens must give a refusal row (families rows onwards) under p, or 1 for a token.
int32_t expected_refusal_code(const SampleBatch& b, int family_rows, int r, const SamplingParams& p) {
  const int which = r - family_rows, at = b.refusal[size_t(r)];
  if (which == 0 || which == 1) return -2 - at;
  if (which == 2) return -1;
  if (which == 3) return sampling_code_negative_context(at, b.V);
  const bool cold = p.temperature == 0.7f;
  if (which == 4) {
    if (p.repetition_penalty != 1.f) return sampling_code_penalty_overflow(at, b.V);
    // -3e38 / 0.7 is -inf too: at V = 1 no finite value is left
    return b.V == 1 && cold ? sampling_code_temperature_overflow(b.V) : 1;
  }
  return cold ? sampling_code_temperature_overflow(b.V) : 1;
}

TEST(SamplingGpu, SamplePicksTheReferenceTokenOnEveryRow) {
  REQUIRE_GPU();
  std::vector<SamplingParams> greedy, sampling;
  for (float penalty : {1.f, 1.3f}) {
    SamplingParams p;
    p.temperature = 0.f;
    p.repetition_penalty = penalty;
    greedy.push_back(p);
  }
  for (float temperature : {0.7f, 1.f, 1.5f})
    for (int top_k : {0, 1, 5, 50})
      for (float top_p : {1.f, 0.9f, 0.5f})
        for (float min_p : {0.f, 0.05f})
          for (float penalty : {1.f, 1.2f}) {
            SamplingParams p;
            p.temperature = temperature;
            p.top_k = top_k;
            p.top_p = top_p;
            p.min_p = min_p;
            p.repetition_penalty = penalty;
            p.seed = 20261206;
            sampling.push_back(p);
          }
  int compared = 0, refused = 0;
  for (int V : {1, 7, 1000, 32000, 151936}) {
    // fewer rows and temperatures at the real vocabulary size: the reference sorts the row for top-p
    const int family_rows = V >= 100000 ? 8 : V >= 30000 ? 16 : 64;
    const SampleBatch b = make_sample_batch(V, family_rows, uint64_t(V) * 31 + 5);
    size_t stride = 1;
    for (const auto& c : b.contexts) stride = std::max(stride, c.size());
    std::vector<int32_t> context(size_t(b.rows) * stride, 0), context_len(size_t(b.rows));
    for (int r = 0; r < b.rows; ++r) {
      std::copy(b.contexts[size_t(r)].begin(), b.contexts[size_t(r)].end(), context.begin() + long(size_t(r) * stride));
      context_len[size_t(r)] = int32_t(b.contexts[size_t(r)].size());
    }
    DeviceArray<float> logits(b.logits.size());
    DeviceArray<int32_t> d_context(context.size()), d_context_len(context_len.size()), codes{size_t(b.rows)};
    DeviceArray<uint64_t> d_sequence{size_t(b.rows)}, d_step{size_t(b.rows)};
    const int64_t scratch_bytes = sample_tokens_scratch_bytes(b.rows, V);
    DeviceArray<uint32_t> scratch{size_t(scratch_bytes / 4)};
    scratch.poison();  // sample_tokens expects no contents
    d_context.upload(context);
    d_context_len.upload(context_len);
    std::vector<SamplingParams> grid = greedy;
    for (const SamplingParams& p : sampling)
      if (V < 100000 || p.temperature == 0.7f) grid.push_back(p);
    for (size_t g = 0; g < grid.size(); ++g) {
      const SamplingParams& p = grid[g];
      std::vector<uint64_t> sequence(size_t(b.rows)), step(size_t(b.rows));
      for (int r = 0; r < b.rows; ++r) {
        sequence[size_t(r)] = uint64_t(r) + 1000;
        step[size_t(r)] = g * 977 + uint64_t(r);  // another draw per combination
      }
      d_sequence.upload(sequence);
      d_step.upload(step);
      logits.upload(b.logits);  // the previous call penalised it in place
      sample_tokens(codes.get(), logits.get(), b.rows, V, p, d_context.get(), d_context_len.get(), int64_t(stride),
                    d_sequence.get(), d_step.get(), scratch.get(), scratch_bytes, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<int32_t> got = codes.download<int32_t>();
      for (int r = 0; r < b.rows; ++r) {
        const float* row = b.logits.data() + size_t(r) * V;
        const std::vector<int32_t>& c = b.contexts[size_t(r)];
        const std::string want = outcome(
            [&] { return sample_token_ref(row, V, p, c.data(), c.size(), sequence[size_t(r)], step[size_t(r)]); });
        const std::string have = outcome([&] { return sampled_token_of_code(got[size_t(r)], V, p); });
        ASSERT_TRUE(same_outcome(have, want)) << "V " << V << " row " << r << " (family " << r % 8 << ") "
                                              << describe(p) << ": GPU " << have << ", reference " << want;
        if (r >= family_rows) {
          const int32_t code = expected_refusal_code(b, family_rows, r, p);
          if (code != 1) EXPECT_EQ(got[size_t(r)], code) << "V " << V << " refusal row " << r - family_rows;
          EXPECT_EQ(code != 1, want.rfind("refused", 0) == 0) << "V " << V << " refusal row " << r - family_rows;
        }
        ++compared;
        refused += want.rfind("refused", 0) == 0;
      }
    }
  }
  std::printf("  %d rows compared, %d of them refused by both\n", compared, refused);
}

}  // namespace
}  // namespace loom
