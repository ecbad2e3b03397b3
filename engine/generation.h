// Text generation: prompts in, tokens out, on any model that can extend sequences by tokens
// (build/generate, samples during training).
//   prefill   every prompt of a batch once, its last position's logits
//   decode    one token per unfinished sequence per step, against the sequence's KV cache
//   choose    ops/sampling.h: greedy (temperature 0) or sampled, the random numbers a function of
//             (seed, request index, step), so a request's text does not depend on the batch it ran
//             in or on the batch size; by the model where it can (prefill_choose / decode_choose:
//             the GPU, where the logits are), else on the host from the logits
//   finish    "eos" on an end-of-sequence id (kept in ids, not in text), "stop" when the text
//             contains a stop string (text cut before it; ids up to the token that completed it),
//             "length" at max_new_tokens or at the model's max_position_embeddings
// Text is the tokenizer's decode of the new ids with special tokens skipped, built up token by
// token (data/token_stream.h), so streaming and the final text agree.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "models/cuda_model.h"
#include "models/reference_model.h"
#include "ops/sampling.h"

namespace loom {

struct GenerationOptions {
  int max_new_tokens = 256;
  SamplingParams sampling;          // temperature 0: greedy
  std::vector<std::string> stop;    // stop strings (need a tokenizer)
  std::vector<int32_t> eos_ids;     // ids that end a sequence (empty: none)
  int batch_size = 8;               // sequences decoded together
};

struct Generation {
  std::vector<int32_t> ids;   // the new tokens
  std::string text;           // "" without a tokenizer
  std::string finish_reason;  // eos | stop | length
};

// A model that extends a batch of sequences (one KV cache each).
class DecodeModel {
 public:
  virtual ~DecodeModel() = default;
  // Starts a batch: one sequence per prompt (caches emptied); logits (B, V) of each prompt's last token.
  virtual void prefill(const std::vector<std::vector<int32_t>>& prompts, std::vector<float>& logits) = 0;
  // Appends tokens[i] to sequence rows[i] of the batch; logits (rows, V) of the new positions.
  virtual void decode(const std::vector<int>& rows, const std::vector<int32_t>& tokens, std::vector<float>& logits) = 0;
  virtual int32_t vocab() const = 0;
  // Most tokens a sequence may hold (prompt + new); 0: no limit.
  virtual int64_t max_length() const = 0;
  // Whether prefill_choose / decode_choose pick tokens under these parameters, so that generate()
  // needs no logits. Here: plain greedy (no penalty, so no context), picked on the host from the
  // logits; a model whose logits live elsewhere chooses there.
  virtual bool chooses(const SamplingParams& p) const { return p.plain_greedy(); }
  // prefill and decode giving each row's next token (sample_token_ref's) instead of its logits;
  // choice.sequence / choice.step per prompt / per listed row.
  virtual void prefill_choose(const std::vector<std::vector<int32_t>>& prompts, const TokenChoice& choice,
                              std::vector<int32_t>& ids);
  virtual void decode_choose(const std::vector<int>& rows, const std::vector<int32_t>& tokens,
                             const TokenChoice& choice, std::vector<int32_t>& ids);

 private:
  void pick_greedy(size_t rows, std::vector<int32_t>& ids) const;
  std::vector<float> greedy_logits_;  // the default prefill_choose / decode_choose's logits
};

// The fp32 CPU reference path: ReferenceModel::extend on one KvCache per sequence.
class ReferenceDecoder : public DecodeModel {
 public:
  // lora: the adapter vector (null or adapters false: the base model).
  ReferenceDecoder(const ReferenceModel& model, const float* lora, bool adapters)
      : model_(model), lora_(lora), adapters_(adapters) {}
  void prefill(const std::vector<std::vector<int32_t>>& prompts, std::vector<float>& logits) override;
  void decode(const std::vector<int>& rows, const std::vector<int32_t>& tokens, std::vector<float>& logits) override;
  int32_t vocab() const override { return model_.config().V; }
  int64_t max_length() const override { return model_.config().max_position; }

 private:
  const ReferenceModel& model_;
  const float* lora_;
  bool adapters_;
  std::vector<KvCache> caches_;
};

// The GPU path: a CudaModel planned for ModelMode::kGenerate. Every decode step runs all `batch`
// rows of the cache (a finished or unused row repeats a harmless write at its last position and its
// logits are dropped), so the step's shapes stay fixed.
class CudaDecoder : public DecodeModel {
 public:
  CudaDecoder(CudaModel& model, const ModelConfig& cfg, int batch, int64_t context, bool adapters)
      : model_(model), V_(cfg.V), batch_(batch), context_(context), adapters_(adapters) {}
  void prefill(const std::vector<std::vector<int32_t>>& prompts, std::vector<float>& logits) override;
  void decode(const std::vector<int>& rows, const std::vector<int32_t>& tokens, std::vector<float>& logits) override;
  int32_t vocab() const override { return V_; }
  int64_t max_length() const override { return context_; }
  // On the GPU, greedy or sampled: B ids cross to the host instead of B · V logits.
  bool chooses(const SamplingParams&) const override { return true; }
  void prefill_choose(const std::vector<std::vector<int32_t>>& prompts, const TokenChoice& choice,
                      std::vector<int32_t>& ids) override;
  void decode_choose(const std::vector<int>& rows, const std::vector<int32_t>& tokens, const TokenChoice& choice,
                     std::vector<int32_t>& ids) override;

 private:
  void start(const std::vector<std::vector<int32_t>>& prompts);
  void feed(const std::vector<int>& rows, const std::vector<int32_t>& tokens);
  CudaModel& model_;
  int32_t V_;
  int batch_;
  int64_t context_;
  bool adapters_;
  std::vector<int32_t> length_, last_, position_;  // per cache row: tokens held, the last token fed, its position
  std::vector<float> all_logits_;                   // (batch, V), reused step after step
  std::vector<int32_t> all_ids_;                    // (batch) chosen tokens
  TokenChoice all_rows_;                            // a choice spread over every cache row
};

// Called with (request index, new text) as each request's text grows (streaming); may be empty.
using TextCallback = std::function<void(size_t, const std::string&)>;

// Generates for every prompt, options.batch_size at a time, in order. tok may be null (ids only;
// stop strings then are an error). first_request: the index of prompts[0] among all requests of
// the run (the sampling counter), so that splitting a run's prompts over calls changes nothing.
std::vector<Generation> generate(DecodeModel& model, const Tokenizer* tok,
                                 const std::vector<std::vector<int32_t>>& prompts, const GenerationOptions& options,
                                 const TextCallback& on_text = nullptr, uint64_t first_request = 0);

}  // namespace loom
