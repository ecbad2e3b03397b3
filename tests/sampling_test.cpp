// Token sampling (ops/sampling.h): each HF step on a hand-worked row, the whole pipeline against
// transformers' own processors (tests/fixtures/sampling, tools/make_sampling_fixture.py), the draws
// against the distribution (chi-square, fixed seed), greedy ties and the errors.
//
// Tolerance of the hand-worked rows: the expected values are exact (closed forms in double); loom's
// differ by the fp32 rounding of the logit (≤ 6e-8 relative, times |x| ≤ 3 after exp) and of
// sampling_exp (≤ 2 ulp, checked below), in a numerator and a normaliser: < 1e-6 relative (measured:
// < 1e-7; a tolerance of 2e-8 fails).
// Filtered tokens must be exactly 0 on both sides.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ops/sampling.h"
#include "tests/test_util.h"

namespace loom {
namespace {

constexpr double kHandTol = 1e-6;

std::vector<double> distribution(const std::vector<float>& logits, const SamplingParams& p,
                                 const std::vector<int32_t>& context = {}) {
  return sampling_distribution_ref(logits.data(), int(logits.size()), p, context.data(), context.size());
}

SamplingParams sampling(float temperature) {
  SamplingParams p;
  p.temperature = temperature;
  return p;
}

// Softmax in double of the given scores over the tokens where keep is set, 0 elsewhere.
std::vector<double> softmax_over(const std::vector<double>& x, const std::vector<bool>& keep) {
  double z = 0;
  for (size_t i = 0; i < x.size(); ++i) z += keep[i] ? std::exp(x[i]) : 0.0;
  std::vector<double> p(x.size());
  for (size_t i = 0; i < x.size(); ++i) p[i] = keep[i] ? std::exp(x[i]) / z : 0.0;
  return p;
}

void expect_probs(const std::vector<double>& got, const std::vector<double>& want, double rel_tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (want[i] == 0)
      EXPECT_EQ(got[i], 0.0) << what << ": token " << i << " must be filtered";
    else
      EXPECT_LE(test::relative_error(got[i], want[i]), rel_tol)
          << what << ": token " << i << " got " << got[i] << ", want " << want[i];
  }
}

TEST(Sampling, ParamsNameTheOption) {
  auto with = [](auto set) {
    SamplingParams p;
    set(p);
    return [p] { check_sampling_params(p); };
  };
  test::expect_error(with([](SamplingParams& p) { p.temperature = -0.5f; }), {"--temperature", "-0.5"});
  test::expect_error(with([](SamplingParams& p) { p.temperature = INFINITY; }), {"--temperature", "inf"});
  test::expect_error(with([](SamplingParams& p) { p.top_k = -1; }), {"--top-k must be >= 0", "-1"});
  test::expect_error(with([](SamplingParams& p) { p.top_p = 1.5f; }), {"--top-p must be in (0, 1]", "got 1.5"});
  test::expect_error(with([](SamplingParams& p) { p.top_p = 0.f; }), {"--top-p must be in (0, 1]", "got 0"});
  test::expect_error(with([](SamplingParams& p) { p.top_p = NAN; }), {"--top-p"});
  test::expect_error(with([](SamplingParams& p) { p.min_p = 1.01f; }), {"--min-p must be in [0, 1]", "1.01"});
  test::expect_error(with([](SamplingParams& p) { p.repetition_penalty = 0.f; }), {"--repetition-penalty", "> 0"});
  test::expect_error(with([](SamplingParams& p) { p.repetition_penalty = NAN; }), {"--repetition-penalty"});
  EXPECT_EQ(test::error_of(with([](SamplingParams& p) {
              p.temperature = 0.f;
              p.top_k = 5;
              p.top_p = 1.f;
              p.min_p = 1.f;
            })),
            "");
}

// HF RepetitionPenaltyLogitsProcessor: positive / penalty, negative · penalty, each id once however
// often it repeats, ids >= V ignored. Greedy's distribution is the softmax of the penalised logits.
TEST(Sampling, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  const std::vector<float> logits = {2.f, -2.f, 1.f, 0.5f, 3.f};
  const std::vector<int32_t> context = {0, 1, 1, 0, 0, 7};
  SamplingParams p = sampling(0.f);
  p.repetition_penalty = 2.f;
  expect_probs(distribution(logits, p, context), softmax_over({1, -4, 1, 0.5, 3}, std::vector<bool>(5, true)),
               kHandTol, "penalty 2");
  p.repetition_penalty = 0.5f;  // < 1 favours the context's tokens
  expect_probs(distribution(logits, p, context), softmax_over({4, -1, 1, 0.5, 3}, std::vector<bool>(5, true)),
               kHandTol, "penalty 0.5");
  EXPECT_EQ(sample_token_ref(logits.data(), 5, p, context.data(), context.size(), 0, 0), 0);
}

// TemperatureLogitsWarper: logits ln(1, 2, 4) give 1:2:4; at T = 0.5 the weights square to 1:4:16.
TEST(Sampling, TemperatureDividesTheLogits) {
  const std::vector<float> logits = {0.f, std::log(2.f), std::log(4.f)};
  expect_probs(distribution(logits, sampling(1.f)), {1 / 7., 2 / 7., 4 / 7.}, kHandTol, "T = 1");
  expect_probs(distribution(logits, sampling(0.5f)), {1 / 21., 4 / 21., 16 / 21.}, kHandTol, "T = 0.5");
}

// TopKLogitsWarper keeps every token >= the k-th largest value: ties with it survive.
TEST(Sampling, TopKKeepsTiesWithTheKthValue) {
  const std::vector<float> logits = {1.f, 3.f, 2.f, 3.f, 2.f, 0.f};
  const std::vector<double> x(logits.begin(), logits.end());
  SamplingParams p = sampling(1.f);
  p.top_k = 1;  // the largest is 3, held by tokens 1 and 3
  expect_probs(distribution(logits, p), {0, 0.5, 0, 0.5, 0, 0}, kHandTol, "top_k 1");
  p.top_k = 3;  // sorted 3 3 2 2 1 0: the 3rd is 2, so four tokens stay
  expect_probs(distribution(logits, p), softmax_over(x, {false, true, true, true, true, false}), kHandTol,
               "top_k 3");
  p.top_k = 100;  // k > V: nothing removed (HF takes min(k, V))
  expect_probs(distribution(logits, p), softmax_over(x, std::vector<bool>(6, true)), kHandTol, "top_k 100");
}

// TopPLogitsWarper on probabilities (0.2, 0.5, 0.3): ascending cumulative 0.2, 0.5, 1.0; tokens whose
// cumulative is <= 1 - top_p go.
TEST(Sampling, TopPRemovesTheTailAndKeepsAtLeastOne) {
  const std::vector<float> logits = {std::log(0.2f), std::log(0.5f), std::log(0.3f)};
  SamplingParams p = sampling(1.f);
  p.top_p = 0.75f;  // removes cumulative <= 0.25: the 0.2
  expect_probs(distribution(logits, p), {0, 0.625, 0.375}, kHandTol, "top_p 0.75");
  p.top_p = 0.4f;  // removes cumulative <= 0.6: the 0.2 and the 0.3
  expect_probs(distribution(logits, p), {0, 1, 0}, kHandTol, "top_p 0.4");
  p.top_p = 1e-6f;  // would remove everything; the top token always stays
  expect_probs(distribution(logits, p), {0, 1, 0}, kHandTol, "top_p 1e-6");
}

// Four equal tokens (0.25 each). At top_p 0.5 HF removes ascending cumulatives 0.25 and 0.5 (<= 0.5):
// exactly two stay, in fixed point too (mass before the third = Z/2, not < Z/2). Which two is
// torch.sort's unstable order in HF; loom keeps the lowest indices.
TEST(Sampling, TopPTiesKeepTheLowestIndices) {
  const std::vector<float> logits = {0.f, 0.f, 0.f, 0.f};
  SamplingParams p = sampling(1.f);
  p.top_p = 0.5f;
  expect_probs(distribution(logits, p), {0.5, 0.5, 0, 0}, kHandTol, "top_p 0.5");
  p.top_p = 0.3f;
  expect_probs(distribution(logits, p), {0.5, 0.5, 0, 0}, kHandTol, "top_p 0.3");
  p.top_p = 0.2f;
  expect_probs(distribution(logits, p), {1, 0, 0, 0}, kHandTol, "top_p 0.2");
}

// HF's order: top-p sees the distribution top-k left. Probabilities (0.4, 0.3, 0.2, 0.1), top_k 2
// renormalises to (4/7, 3/7): at top_p 0.5 only the first stays (applied to the full distribution,
// the mass before the second would be 0.4 < 0.5 and two would stay).
TEST(Sampling, TopPSeesTheTopKDistribution) {
  const std::vector<float> logits = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  SamplingParams p = sampling(1.f);
  p.top_p = 0.5f;
  expect_probs(distribution(logits, p), {4 / 7., 3 / 7., 0, 0}, kHandTol, "top_p alone");
  p.top_k = 2;
  expect_probs(distribution(logits, p), {1, 0, 0, 0}, kHandTol, "top_k then top_p");
}

// MinPLogitsWarper compares with min_p · p_max after temperature: logits (0, -1, -2, -3) have ratios
// e^(-d/T) to the top token; min_p 0.2 keeps e^-1 = 0.37 but not e^-2 = 0.14 at T = 1, all four at
// T = 2 (e^-1.5 = 0.22), only the top at T = 0.5 (e^-2).
TEST(Sampling, MinPIsRelativeToTheMaxAfterTemperature) {
  const std::vector<float> logits = {0.f, -1.f, -2.f, -3.f};
  SamplingParams p = sampling(1.f);
  p.min_p = 0.2f;
  expect_probs(distribution(logits, p), softmax_over({0, -1, -2, -3}, {true, true, false, false}), kHandTol, "T 1");
  p.temperature = 2.f;
  expect_probs(distribution(logits, p), softmax_over({0, -0.5, -1, -1.5}, std::vector<bool>(4, true)), kHandTol,
               "T 2");
  p.temperature = 0.5f;
  expect_probs(distribution(logits, p), {1, 0, 0, 0}, kHandTol, "T 0.5");
}

// The warpers belong to sampling only (HF do_sample=False applies processors, not warpers).
TEST(Sampling, GreedyIgnoresTheWarpers) {
  const std::vector<float> logits = {0.f, -1.f, -2.f};
  SamplingParams p = sampling(0.f);
  p.top_k = 1;
  p.top_p = 0.1f;
  p.min_p = 0.9f;
  expect_probs(distribution(logits, p), softmax_over({0, -1, -2}, std::vector<bool>(3, true)), kHandTol, "greedy");
}

TEST(Sampling, GreedyTakesTheLowestIndexOfTiedMaxima) {
  const std::vector<float> logits = {1.f, 5.f, 2.f, 5.f, -INFINITY};
  const SamplingParams p = sampling(0.f);
  EXPECT_EQ(sample_token_ref(logits.data(), 5, p, nullptr, 0, 0, 0), 1);
  // The penalty makes the tie: 4 / 2 == 2.
  const std::vector<float> penalised = {2.f, 4.f};
  SamplingParams q = sampling(0.f);
  q.repetition_penalty = 2.f;
  const int32_t context[] = {1};
  EXPECT_EQ(sample_token_ref(penalised.data(), 2, q, context, 1, 0, 0), 0);
}

TEST(Sampling, NonFiniteLogitsAreErrors) {
  for (float temperature : {0.f, 1.f}) {
    const SamplingParams p = sampling(temperature);
    const std::vector<float> nan_row = {0.f, 1.f, NAN, 2.f};
    test::expect_error([&] { sample_token_ref(nan_row.data(), 4, p, nullptr, 0, 0, 0); },
                       {"logit 2 of 4 is", "nan", "non-finite"});
    test::expect_error([&] { distribution(nan_row, p); }, {"logit 2 of 4 is", "nan"});
    const std::vector<float> inf_row = {0.f, INFINITY};
    test::expect_error([&] { sample_token_ref(inf_row.data(), 2, p, nullptr, 0, 0, 0); }, {"logit 1 of 2 is inf"});
    const std::vector<float> masked = {-INFINITY, -INFINITY};
    test::expect_error([&] { sample_token_ref(masked.data(), 2, p, nullptr, 0, 0, 0); }, {"every one of the 2"});
  }
  const std::vector<float> row = {0.f, 1.f};
  const int32_t negative[] = {1, -3};
  test::expect_error([&] { sample_token_ref(row.data(), 2, sampling(1.f), negative, 2, 0, 0); },
                     {"context id -3 at position 1"});
  const std::vector<float> large = {0.f, 10.f};  // 10 / 1e-38 > FLT_MAX
  test::expect_error([&] { sample_token_ref(large.data(), 2, sampling(1e-38f), nullptr, 0, 0, 0); },
                     {"--temperature", "overflows"});
  test::expect_error([&] { sample_token_ref(row.data(), 0, sampling(1.f), nullptr, 0, 0, 0); },
                     {"vocabulary size must be in [1,"});
}

// sampling_exp against libm in double over its whole domain; exp(0) must be exactly 1 (the top
// token's weight is 2^40, which min-p and top-p rely on). Measured worst: 7.2e-8 relative (0.6 · 2^-23);
// the bound is 2 fp32 ulp, which the tolerances of the other tests assume.
TEST(Sampling, ExpMatchesLibm) {
  EXPECT_EQ(sampling_exp(0.f), 1.f);
  double worst = 0;
  for (float x = kSamplingMinExponent; x <= 0.f; x += 1.f / 1024)
    worst = test::max_keeping_nan(worst, test::relative_error(sampling_exp(x), std::exp(double(x))));
  std::printf("  sampling_exp vs libm: max relative error %.2e (%.2f fp32 ulp)\n", worst, worst / 0x1p-23);
  EXPECT_LE(worst, 2 * 0x1p-23) << "2 fp32 ulp";
}

// ---- against transformers

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// HF's probabilities are fp32: torch's exp (~1 ulp) and a sum over 997 terms (relative error a few
// 1e-7 at most), then a division; loom's are sampling_exp (<= 2 ulp) over exact sums. Both sides
// thus carry < 1e-6 relative error; 2e-6 leaves room for the two to err in opposite directions.
// The absolute part is the fixed point: each weight is truncated to a multiple of 2^-40 of the top
// token's, a probability error < 2^-40 ≈ 9e-13. The kept set must match exactly.
TEST(Sampling, DistributionMatchesTransformers) {
  const std::string path = test::fixtures_dir() + "/sampling/expected.json";
  std::ifstream f(path);
  ASSERT_TRUE(f) << path << " is missing; run: python3 tools/make_sampling_fixture.py";
  const nlohmann::json doc = nlohmann::json::parse(f);
  const int V = doc["vocab"];
  for (const auto& c : doc["cases"]) {
    const auto& row = doc["rows"][c["row"].get<int>()];
    std::vector<float> logits;
    for (uint32_t b : row["logit_bits"]) logits.push_back(from_bits(b));
    const std::vector<int32_t> context = row["context"];
    SamplingParams p;
    p.temperature = c["temperature"];
    p.top_k = c["top_k"];
    p.top_p = c["top_p"];
    p.min_p = c["min_p"];
    p.repetition_penalty = c["repetition_penalty"];
    std::vector<double> want(V, 0.0);
    for (size_t k = 0; k < c["prob_index"].size(); ++k)
      want[c["prob_index"][k].get<int>()] = from_bits(c["prob_bits"][k]);
    const std::vector<double> got = distribution(logits, p, context);
    const std::string name = c["name"];
    double worst_rel = 0, worst_abs = 0;  // relative: where the fixed point's 9e-13 is < 1e-6 of p
    for (int i = 0; i < V; ++i) {
      ASSERT_EQ(got[i] == 0, want[i] == 0) << name << ": token " << i << " got " << got[i] << ", HF " << want[i];
      if (want[i] >= 1e-6) worst_rel = test::max_keeping_nan(worst_rel, test::relative_error(got[i], want[i]));
      worst_abs = test::max_keeping_nan(worst_abs, test::absolute_error(got[i], want[i]));
      EXPECT_LE(std::fabs(got[i] - want[i]), 2e-6 * want[i] + 1e-12) << name << ": token " << i;
    }
    std::printf("  %s: %zu tokens kept; vs HF: max relative difference (p >= 1e-6) %.2e, max absolute %.2e\n",
                name.c_str(), c["prob_index"].size(), worst_rel, worst_abs);
  }
}

// ---- the draws

// A row of 32 logits filtered to 20 tokens by every warper at once: top-k leaves 22, top-p 20 of those;
// min-p (26 alone) runs but removes none of them.
struct DrawCase {
  std::vector<float> logits = test::random_floats(32, 12, -3.f, 3.f);
  SamplingParams params;
  DrawCase() {
    params.temperature = 1.2f;
    params.top_k = 22;
    params.top_p = 0.98f;
    params.min_p = 0.02f;
    params.seed = 1234;
  }
  int32_t draw(uint64_t sequence, uint64_t step) const {
    return sample_token_ref(logits.data(), int(logits.size()), params, nullptr, 0, sequence, step);
  }
};

// 200k draws (500 sequences x 400 steps) against the filtered distribution. Pearson's chi-square with
// 19 degrees of freedom: its 99.9th percentile is 43.82, so a correct sampler with a random seed would
// fail 1 run in 1000; the seed is fixed, so the statistic is too (10.62 with seed 1234): the test is
// deterministic. Every expected count is >= 5 (the approximation's usual condition).
TEST(Sampling, DrawsFollowTheFilteredDistribution) {
  const DrawCase c;
  const std::vector<double> p = distribution(c.logits, c.params);
  int kept = 0;
  for (double pi : p) kept += pi > 0;
  ASSERT_EQ(kept, 20) << "the parameters were chosen to leave 20 tokens (19 degrees of freedom)";
  const int sequences = 500, steps = 400, n = sequences * steps;
  std::vector<int> count(p.size(), 0);
  for (int s = 0; s < sequences; ++s)
    for (int t = 0; t < steps; ++t) ++count[c.draw(s, t)];
  double chi2 = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) {
      EXPECT_EQ(count[i], 0) << "filtered token " << i << " was drawn";
      continue;
    }
    ASSERT_GE(n * p[i], 5.0);
    chi2 += (count[i] - n * p[i]) * (count[i] - n * p[i]) / (n * p[i]);
  }
  std::printf("  chi-square over %d draws, 19 degrees of freedom: %.2f\n", n, chi2);
  EXPECT_LT(chi2, 43.82);
}

TEST(Sampling, TheSeedDecidesTheDraws) {
  DrawCase c;
  auto tokens = [&](uint64_t sequence) {
    std::vector<int32_t> t;
    for (uint64_t step = 0; step < 64; ++step) t.push_back(c.draw(sequence, step));
    return t;
  };
  const std::vector<int32_t> first = tokens(0);
  EXPECT_EQ(tokens(0), first) << "same seed, same sequence: same tokens";
  EXPECT_NE(tokens(1), first) << "another sequence draws other numbers";
  c.params.seed = 1235;
  EXPECT_NE(tokens(0), first) << "another seed draws other numbers";
}

// greedy_tokens' codes (ops/sampling.cu; the kernel itself: tests/sampling_gpu_test.cu): a token
// passes through, the two refusals give sample_token_ref's errors, a code outside the row is a bug.
TEST(Sampling, GreedyCodesBecomeTokensOrTheReferenceErrors) {
  EXPECT_EQ(greedy_token_of_code(0, 5), 0);
  EXPECT_EQ(greedy_token_of_code(4, 5), 4);
  test::expect_error([] { greedy_token_of_code(-2 - 3, 5); }, {"logit 3 of 5 is NaN or +inf"});
  test::expect_error([] { greedy_token_of_code(-1, 5); }, {"every one of the 5 logits is -inf"});
  test::expect_error([] { greedy_token_of_code(5, 5); }, {"code 5 for a vocabulary of 5"});
  test::expect_error([] { greedy_token_of_code(-7, 5); }, {"code -7 for a vocabulary of 5"});
}

// The keys sample_tokens' top-k selects on: the fp32 order, with -0 and +0 one value (as the
// reference's float comparisons see them); a key that kept the sign of 0 would drop -0 ties.
TEST(Sampling, OrderKeysSortAsTheFloats) {
  const float inf = std::numeric_limits<float>::infinity(), tiny = std::numeric_limits<float>::denorm_min();
  const std::vector<float> ascending = {-inf, -3.4e38f, -2.f, -1.f, -tiny, 0.f, tiny, 1e-30f, 1.f, 1.5f, 3.4e38f, inf};
  for (size_t a = 0; a < ascending.size(); ++a)
    for (size_t b = 0; b < ascending.size(); ++b)
      EXPECT_EQ(sampling_order_key(ascending[a]) < sampling_order_key(ascending[b]), a < b)
          << ascending[a] << " vs " << ascending[b];
  EXPECT_EQ(sampling_order_key(-0.f), sampling_order_key(0.f));
  const std::vector<float> x = test::random_floats(2000, 7, -50.f, 50.f);
  for (size_t i = 1; i < x.size(); ++i) {
    EXPECT_EQ(sampling_order_key(x[i - 1]) < sampling_order_key(x[i]), x[i - 1] < x[i]);
    EXPECT_EQ(sampling_order_key(x[i - 1]) == sampling_order_key(x[i]), x[i - 1] == x[i]);
  }
}

// The kept part of the tie group at the top-p cut: the binary search against counting one by one,
// for groups from 1 to many tokens, cuts at every position and top_p near the rounding of the test.
TEST(Sampling, TopPKeptTiesCountsTheTiesBelowTheCut) {
  std::mt19937_64 rng(12);
  for (int trial = 0; trial < 20000; ++trial) {
    const uint64_t v = 1 + rng() % (uint64_t(1) << 40), ties = 1 + rng() % (trial % 2 ? 5 : 3000);
    const uint64_t rest = rng() % (uint64_t(1) << 50), Z_guess = rest + ties * v;
    const float top_p = std::max(1e-6f, float(rng() % 1000001) / 1e6f);
    // above: the mass before the group, chosen so that the group's first token is kept
    uint64_t above = rng() % std::max<uint64_t>(1, uint64_t(double(top_p) * double(Z_guess)));
    const uint64_t Z = above + Z_guess;
    if (!sampling_top_p_keeps(above, Z, top_p)) continue;
    uint64_t want = 0;
    while (want < ties && sampling_top_p_keeps(above + want * v, Z, top_p)) ++want;
    ASSERT_EQ(sampling_top_p_kept_ties(above, v, ties, Z, top_p), want)
        << "above " << above << " v " << v << " ties " << ties << " Z " << Z << " top_p " << top_p;
  }
}

// sample_tokens' codes (ops/sampling.cu; the kernel itself: tests/sampling_gpu_test.cu): greedy's pass
// through, the three further refusals name the option (or the position) as sample_token_ref does,
// and their ranges do not overlap greedy's or each other's.
TEST(Sampling, SampledCodesBecomeTokensOrTheReferenceErrors) {
  const int V = 5;
  SamplingParams p;
  p.temperature = 0.25f;
  p.repetition_penalty = 1.5f;
  EXPECT_EQ(sampled_token_of_code(3, V, p), 3);
  test::expect_error([&] { sampled_token_of_code(-1, V, p); }, {"every one of the 5 logits is -inf"});
  test::expect_error([&] { sampled_token_of_code(-2 - 4, V, p); }, {"logit 4 of 5 is NaN or +inf"});
  test::expect_error([&] { sampled_token_of_code(sampling_code_penalty_overflow(0, V), V, p); },
                     {"--repetition-penalty 1.5 overflows the logit of token 0 "});
  test::expect_error([&] { sampled_token_of_code(sampling_code_penalty_overflow(4, V), V, p); },
                     {"--repetition-penalty 1.5 overflows the logit of token 4 "});
  test::expect_error([&] { sampled_token_of_code(sampling_code_temperature_overflow(V), V, p); },
                     {"--temperature 0.25 overflows the logits"});
  test::expect_error([&] { sampled_token_of_code(sampling_code_negative_context(0, V), V, p); },
                     {"context id at position 0 is negative"});
  test::expect_error([&] { sampled_token_of_code(sampling_code_negative_context(123456, V), V, p); },
                     {"context id at position 123456 is negative"});
  test::expect_error([&] { sampled_token_of_code(V, V, p); }, {"code 5 for a vocabulary of 5"});
  // the last position of the longest context still has a code
  const int big = kSamplingMaxVocab;
  EXPECT_EQ(sampling_code_negative_context(sampling_max_context(big) - 1, big), INT32_MIN);
  test::expect_error([&] { sampled_token_of_code(INT32_MIN, big, p); },
                     {"position " + std::to_string(sampling_max_context(big) - 1) + " is negative"});
}

}  // namespace
}  // namespace loom
