#include "data/synthetic.h"

#include <algorithm>
#include <cmath>

#include "data/rng.h"
#include "ops/error.h"

namespace loom {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

void check_spec(const SyntheticSpec& s) {
  LOOM_CHECK(s.documents > 0, "synthetic data needs at least one document (data.synthetic_docs = ",
             s.documents, ")");
  LOOM_CHECK(s.vocab > 0, "synthetic data needs a vocabulary of at least one token, got ", s.vocab);
  LOOM_CHECK(s.min_length >= 1 && s.min_length <= s.max_length, "synthetic lengths need 1 <= min <= max, got [",
             s.min_length, ", ", s.max_length, "]; data.max_seq_len must be >= ", s.min_length);
}

int64_t clipped_length(const SyntheticSpec& s, double z) {
  const int64_t length = std::llround(s.median_length * std::exp(s.sigma * z));
  return std::clamp(length, s.min_length, s.max_length);
}

}  // namespace

SyntheticSpec synthetic_workload(const std::string& name, int64_t documents, int32_t vocab,
                                 const std::string& where) {
  LOOM_CHECK(name == "sft-alpaca", where, where.empty() ? "" : ": ", "data.synthetic = '", name,
             "' is not a known workload; use 'sft-alpaca' (BENCHMARK.md) or leave it empty");
  SyntheticSpec spec;
  spec.documents = documents;
  spec.vocab = vocab;
  return spec;
}

std::vector<int64_t> synthetic_lengths(const SyntheticSpec& spec) {
  check_spec(spec);
  std::vector<int64_t> lengths(size_t(spec.documents));
  SplitMix64 rng(spec.length_seed);
  for (size_t i = 0; i < lengths.size(); i += 2) {
    const double radius = std::sqrt(-2.0 * std::log(rng.open_unit()));
    const double angle = kTwoPi * rng.open_unit();
    lengths[i] = clipped_length(spec, radius * std::cos(angle));
    if (i + 1 < lengths.size()) lengths[i + 1] = clipped_length(spec, radius * std::sin(angle));
  }
  return lengths;
}

std::vector<Document> synthetic_documents(const SyntheticSpec& spec) {
  const std::vector<int64_t> lengths = synthetic_lengths(spec);
  std::vector<Document> docs(lengths.size());
  SplitMix64 rng(spec.token_seed);
  for (size_t d = 0; d < docs.size(); ++d) {
    docs[d].ids.resize(size_t(lengths[d]));
    for (int32_t& id : docs[d].ids) id = int32_t(rng.below(uint64_t(spec.vocab)));
    docs[d].mask.assign(docs[d].ids.size(), 1);
  }
  return docs;
}

std::vector<Document> synthetic_pairs(const SyntheticSpec& spec) {
  const std::vector<Document> docs = synthetic_documents(spec);
  std::vector<Document> pairs(docs.size() / 2);
  for (size_t k = 0; k < pairs.size(); ++k) {
    const std::vector<int32_t>& a = docs[2 * k].ids;
    const std::vector<int32_t>& b = docs[2 * k + 1].ids;
    const size_t p = std::min(a.size(), b.size()) / 2;
    Document& d = pairs[k];
    d.ids = a;
    d.ids.insert(d.ids.end(), a.begin(), a.begin() + std::ptrdiff_t(p));
    d.ids.insert(d.ids.end(), b.begin() + std::ptrdiff_t(p), b.end());
    d.mask.assign(d.ids.size(), 1);
    std::fill_n(d.mask.begin(), p, 0);
    std::fill_n(d.mask.begin() + std::ptrdiff_t(a.size()), p, 0);
    d.segments = {int32_t(a.size()), int32_t(b.size())};
  }
  return pairs;
}

}  // namespace loom
