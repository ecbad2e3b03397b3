// Planning a step on document lengths alone: which rank takes which documents, which documents
// share a micro-batch, and how that compares with padded batching. Pure functions of the lengths,
// so every rank computes the same plan with no communication.
//
// Rank split. BENCHMARK.md's FLOPs per token are 4·P for the matmuls and 12·n_layers·n_heads·
// head_dim per key attended; a document of L tokens has L(L+1)/2 ≈ L²/2 query-key pairs, so it
// costs ≈ 4·P·(L + L²/K) FLOPs with K = 2·P / (3·n_layers·n_heads·head_dim), the length at which
// its attention costs as much as its matmuls. The split balances cost = L·K + L² (integers, so
// every rank gets bit-identical comparisons) by LPT: documents longest first (ties: earlier batch
// position first), each to the rank of least cost (ties: fewer tokens, then the lower rank), among
// the ranks that stay within one longest document of the fewest tokens:
//   tokens(r) + L <= min over ranks of tokens + longest document of the step.
// The least-token rank always qualifies, and afterwards every rank holds at most min + longest, so
//   max token load - min token load <= the longest document
// holds for any input, while attention-heavy ranks take fewer tokens within that bound.
// Micro-batches. A rank's documents are packed first-fit-decreasing into micro-batches of at most
// token_budget tokens; a document is never split.
//
// Padded baseline (what Hugging Face computes, BENCHMARK.md's baseline): the step's documents in
// their batch order, in consecutive groups of `group` (the last group may be smaller), each group
// padded to its longest document: padded_tokens = sum over groups of group size × longest length.
#pragma once
#include <cstdint>
#include <vector>

namespace loom {

// Micro-batch size of BENCHMARK.md's Hugging Face baseline.
constexpr int kPaddedBaselineGroup = 4;
// K when the model is not known: qwen3-0.6b has K ≈ 7k, the 8B presets ≈ 38k; on sft-alpaca
// lengths the step time of either is within 0.5% of its own K's.
constexpr int64_t kDefaultAttentionSpan = 8192;

// K (above) of a decoder; matmul_params = P, every matmul weight including the LM head.
int64_t attention_span(double matmul_params, int n_layers, int n_heads, int head_dim);

struct RankLoad {
  int64_t docs = 0;
  int64_t tokens = 0;
  int64_t attention = 0;  // sum of L² over the rank's documents
  int64_t micro_batches = 0;
};

// Positions into `lengths` per rank (world lists), each list in the order the documents were
// assigned (longest first).
std::vector<std::vector<int64_t>> split_across_ranks(const std::vector<int64_t>& lengths, int world,
                                                     int64_t attention_span = kDefaultAttentionSpan);

// Positions into `lengths` per micro-batch, each micro-batch's lengths summing to <= token_budget.
// A length above token_budget is an error naming its position.
std::vector<std::vector<int64_t>> pack_first_fit_decreasing(const std::vector<int64_t>& lengths,
                                                            int64_t token_budget);

// Tokens the padded baseline computes for `lengths` in this order (definition above).
int64_t padded_batch_tokens(const std::vector<int64_t>& lengths, int group = kPaddedBaselineGroup);

// The figures a log line prints about packing one step (all ranks).
struct PackingStats {
  int64_t real_tokens = 0;     // document tokens
  int64_t micro_batches = 0;   // over all ranks
  int64_t token_budget = 0;
  int64_t padded_tokens = 0;   // padded_batch_tokens of the same documents

  // real tokens / (micro_batches × token_budget): how full the micro-batch buffers are.
  double efficiency() const;
  // Padding tokens the baseline computes and packing does not (packing computes none).
  int64_t padding_saved() const { return padded_tokens - real_tokens; }
  // Padding share of the baseline: padding_saved / padded_tokens (BENCHMARK.md's pad_share).
  double baseline_pad_share() const;
};

}  // namespace loom
