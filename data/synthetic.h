// BENCHMARK.md's "sft-alpaca" data, generated identically on every machine:
//   length_i = clip(round(median · exp(sigma · z_i)), [min_length, max_length]),  z_i ~ N(0, 1)
//   z from Box–Muller on SplitMix64(length_seed): for uniforms u1 in (0, 1], u2 in (0, 1],
//     z_2k = sqrt(-2 ln u1) cos(2π u2), z_2k+1 = sqrt(-2 ln u1) sin(2π u2)
//   token ids uniform over [0, vocab) from SplitMix64(token_seed), document after document
//   every mask entry 1 (every token after a document's first is a target)
// Mean length: median · exp(sigma²/2) = 200 · e^0.18 ≈ 239.4 before clipping (≈ 240 after).
// Both streams are sequential, so the first n documents do not depend on how many are generated.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/batch.h"

namespace loom {

struct SyntheticSpec {
  int64_t documents = 4096;
  int32_t vocab = 0;
  double median_length = 200;
  double sigma = 0.6;        // of the log-length
  int64_t min_length = 32;
  int64_t max_length = 2048;  // BENCHMARK.md's clip; the caller may lower it to data.max_seq_len
  uint64_t length_seed = 1234;
  uint64_t token_seed = 7;
};

// The workload named by data.synthetic ("sft-alpaca"). An unknown name is an error,
// "<where>: data.synthetic = '<name>' is not a known workload ...": `where` is the config file
// (TrainConfig::source), "" for none.
SyntheticSpec synthetic_workload(const std::string& name, int64_t documents, int32_t vocab,
                                 const std::string& where);

std::vector<int64_t> synthetic_lengths(const SyntheticSpec& spec);
std::vector<Document> synthetic_documents(const SyntheticSpec& spec);

// BENCHMARK.md's DPO workload, "pairs of the sft-alpaca length mix": documents 2k and 2k+1 of
// synthetic_documents(spec) (lengths a and b) make pair k, whose two sequences have exactly those
// lengths and share a prompt of p = min(a, b) / 2 tokens (integer division):
//   prompt   = the first p ids of document 2k
//   chosen   = ids [p, a) of document 2k
//   rejected = ids [p, b) of document 2k+1
// As a pair Document (data/preference_data.h): ids = prompt+chosen ++ prompt+rejected, mask 1 on the
// completions only, segments = {a, b}. spec.documents / 2 pairs (an odd last document is unused).
std::vector<Document> synthetic_pairs(const SyntheticSpec& spec);

}  // namespace loom
