#include "engine/generation.h"

#include <algorithm>
#include <optional>

#include "data/token_stream.h"
#include "ops/error.h"

namespace loom {

void ReferenceDecoder::prefill(const std::vector<std::vector<int32_t>>& prompts, std::vector<float>& logits) {
  const size_t V = size_t(vocab());
  caches_.assign(prompts.size(), KvCache());
  logits.assign(prompts.size() * V, 0.f);
  std::vector<float> all;
  for (size_t b = 0; b < prompts.size(); ++b) {
    model_.extend(caches_[b], prompts[b], lora_, adapters_, all);
    std::copy(all.end() - std::ptrdiff_t(V), all.end(), logits.begin() + std::ptrdiff_t(b * V));
  }
}

void ReferenceDecoder::decode(const std::vector<int>& rows, const std::vector<int32_t>& tokens,
                              std::vector<float>& logits) {
  const size_t V = size_t(vocab());
  logits.assign(rows.size() * V, 0.f);
  std::vector<float> one;
  for (size_t i = 0; i < rows.size(); ++i) {
    model_.extend(caches_[size_t(rows[i])], {tokens[i]}, lora_, adapters_, one);
    std::copy(one.begin(), one.end(), logits.begin() + std::ptrdiff_t(i * V));
  }
}

void DecodeModel::pick_greedy(size_t rows, std::vector<int32_t>& ids) const {
  SamplingParams greedy;
  greedy.temperature = 0;
  const size_t V = size_t(vocab());
  ids.resize(rows);
  for (size_t i = 0; i < rows; ++i) ids[i] = sample_token_ref(greedy_logits_.data() + i * V, int(V), greedy, nullptr, 0, 0, 0);
}

void DecodeModel::prefill_choose(const std::vector<std::vector<int32_t>>& prompts, const TokenChoice& choice,
                                 std::vector<int32_t>& ids) {
  LOOM_CHECK(DecodeModel::chooses(choice.sampling), "generation: this model chooses plain greedy tokens only");
  prefill(prompts, greedy_logits_);
  pick_greedy(prompts.size(), ids);
}

void DecodeModel::decode_choose(const std::vector<int>& rows, const std::vector<int32_t>& tokens,
                                const TokenChoice& choice, std::vector<int32_t>& ids) {
  LOOM_CHECK(DecodeModel::chooses(choice.sampling), "generation: this model chooses plain greedy tokens only");
  decode(rows, tokens, greedy_logits_);
  pick_greedy(rows.size(), ids);
}

void CudaDecoder::start(const std::vector<std::vector<int32_t>>& prompts) {
  LOOM_CHECK(int(prompts.size()) <= batch_, "generation: ", prompts.size(), " prompts for a batch of ", batch_);
  length_.assign(size_t(batch_), 0);
  last_.assign(size_t(batch_), 0);
  for (size_t b = 0; b < prompts.size(); ++b) {
    length_[b] = int32_t(prompts[b].size());
    last_[b] = prompts[b].back();
  }
}

// The next token of each listed row; every other row repeats its last token at its last position.
void CudaDecoder::feed(const std::vector<int>& rows, const std::vector<int32_t>& tokens) {
  position_.resize(size_t(batch_));
  for (int b = 0; b < batch_; ++b) position_[size_t(b)] = int32_t(std::min<int64_t>(length_[size_t(b)], context_ - 1));
  for (size_t i = 0; i < rows.size(); ++i) {
    const size_t b = size_t(rows[i]);
    LOOM_CHECK(length_[b] < context_, "generation: sequence ", b, " is full (", context_, " positions)");
    last_[b] = tokens[i];
    position_[b] = length_[b]++;
  }
}

void CudaDecoder::prefill(const std::vector<std::vector<int32_t>>& prompts, std::vector<float>& logits) {
  start(prompts);
  model_.prefill(prompts, adapters_, logits);
}

void CudaDecoder::prefill_choose(const std::vector<std::vector<int32_t>>& prompts, const TokenChoice& choice,
                                 std::vector<int32_t>& ids) {
  start(prompts);
  model_.prefill_tokens(prompts, adapters_, choice, ids);
}

void CudaDecoder::decode(const std::vector<int>& rows, const std::vector<int32_t>& tokens, std::vector<float>& logits) {
  feed(rows, tokens);
  model_.decode(last_, position_, adapters_, all_logits_);
  logits.resize(rows.size() * size_t(V_));
  for (size_t i = 0; i < rows.size(); ++i)
    std::copy_n(all_logits_.begin() + std::ptrdiff_t(size_t(rows[i]) * size_t(V_)), V_,
                logits.begin() + std::ptrdiff_t(i * V_));
}

void CudaDecoder::decode_choose(const std::vector<int>& rows, const std::vector<int32_t>& tokens,
                                const TokenChoice& choice, std::vector<int32_t>& ids) {
  feed(rows, tokens);
  all_rows_.sampling = choice.sampling;  // rows not listed draw too (their results are dropped)
  all_rows_.sequence.assign(size_t(batch_), 0);
  all_rows_.step.assign(size_t(batch_), 0);
  if (!choice.sampling.plain_greedy())
    for (size_t i = 0; i < rows.size(); ++i) {
      all_rows_.sequence[size_t(rows[i])] = choice.sequence[i];
      all_rows_.step[size_t(rows[i])] = choice.step[i];
    }
  model_.decode_tokens(last_, position_, adapters_, all_rows_, all_ids_);
  ids.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) ids[i] = all_ids_[size_t(rows[i])];
}

namespace {

// The longest stop string's length - 1: text that may still become a stop string is held back from
// streaming until the next token decides.
size_t stop_holdback(const std::vector<std::string>& stop) {
  size_t n = 0;
  for (const std::string& s : stop) n = std::max(n, s.size());
  return n > 0 ? n - 1 : 0;
}

// One request while it generates.
class Sequence {
 public:
  Sequence(const Tokenizer* tok, const GenerationOptions& o, uint64_t request, std::vector<int32_t> prompt)
      : o_(o), request_(request), context_(std::move(prompt)), holdback_(stop_holdback(o.stop)) {
    if (tok) stream_.emplace(*tok, true);
  }

  // The next token from logits (V).
  int32_t choose(const float* logits, int32_t V) const {
    return sample_token_ref(logits, V, o_.sampling, context_.data(), context_.size(), request_,
                            uint64_t(out_.ids.size()));
  }

  // Records the next token; true when the sequence has finished.
  bool take(int32_t id, int64_t max_length) {
    out_.ids.push_back(id);
    context_.push_back(id);
    if (std::find(o_.eos_ids.begin(), o_.eos_ids.end(), id) != o_.eos_ids.end()) return finish("eos");
    if (stream_) {
      const size_t before = out_.text.size();
      out_.text += stream_->push(id);
      if (stop_found(before)) return finish("stop");
    }
    const bool full = max_length > 0 && int64_t(context_.size()) >= max_length;
    if (int(out_.ids.size()) >= o_.max_new_tokens || full) return finish("length");
    return false;
  }

  // Text not yet streamed that no stop string can still claim.
  std::string take_stream_text(bool done) {
    size_t end = out_.text.size();
    if (!done) {
      end = end > holdback_ ? end - holdback_ : 0;
      while (end > streamed_ && end < out_.text.size() && (uint8_t(out_.text[end]) & 0xC0) == 0x80) --end;
    }
    if (end <= streamed_) return "";
    std::string s = out_.text.substr(streamed_, end - streamed_);
    streamed_ = end;
    return s;
  }

  bool finished() const { return !out_.finish_reason.empty(); }
  uint64_t request() const { return request_; }                 // sample_token_ref's sequence
  uint64_t generated() const { return uint64_t(out_.ids.size()); }  // and its step
  int32_t last() const { return out_.ids.back(); }
  Generation&& result() { return std::move(out_); }

 private:
  bool finish(const char* reason) {
    if (stream_ && std::string(reason) != "stop") {
      const size_t before = out_.text.size();
      out_.text += stream_->finish();
      if (stop_found(before)) reason = "stop";
    }
    out_.finish_reason = reason;
    return true;
  }

  // Whether text added after `before` completed a stop string; the text is then cut before it.
  bool stop_found(size_t before) {
    std::optional<size_t> first;
    for (const std::string& s : o_.stop) {
      const size_t from = before >= s.size() ? before - s.size() + 1 : 0;
      const size_t at = out_.text.find(s, from);
      if (at != std::string::npos && (!first || at < *first)) first = at;
    }
    if (!first) return false;
    out_.text.resize(*first);
    return true;
  }

  const GenerationOptions& o_;
  uint64_t request_;
  std::vector<int32_t> context_;  // prompt + new ids: the repetition penalty's context
  std::optional<TokenStream> stream_;
  size_t holdback_;
  size_t streamed_ = 0;
  Generation out_;
};

void check_options(const GenerationOptions& o, const Tokenizer* tok) {
  check_sampling_params(o.sampling);
  LOOM_CHECK(o.max_new_tokens >= 1, "--max-new-tokens must be >= 1, got ", o.max_new_tokens);
  LOOM_CHECK(o.batch_size >= 1, "--batch-size must be >= 1, got ", o.batch_size);
  for (const std::string& s : o.stop) LOOM_CHECK(!s.empty(), "a stop string is empty; give each --stop some text");
  LOOM_CHECK(o.stop.empty() || tok, "stop strings need a tokenizer to decode the text (--tokenizer)");
}

void check_prompt(const std::vector<int32_t>& prompt, size_t index, int32_t V, int64_t max_length) {
  LOOM_CHECK(!prompt.empty(), "prompt ", index + 1, " is empty: a model needs at least one token to continue");
  for (int32_t id : prompt)
    LOOM_CHECK(id >= 0 && id < V, "prompt ", index + 1, ": token id ", id, " is outside the vocabulary (", V, ")");
  LOOM_CHECK(max_length <= 0 || int64_t(prompt.size()) < max_length, "prompt ", index + 1, " has ", prompt.size(),
             " tokens, which leaves no room below the model's max_position_embeddings (", max_length, ")");
}

// One batch of requests, prefill to the last finish.
void generate_batch(DecodeModel& model, const Tokenizer* tok, const std::vector<std::vector<int32_t>>& prompts,
                    const GenerationOptions& o, const TextCallback& on_text, uint64_t first_request,
                    std::vector<Generation>& out) {
  const int32_t V = model.vocab();
  std::vector<Sequence> seqs;
  for (size_t b = 0; b < prompts.size(); ++b) seqs.emplace_back(tok, o, first_request + b, prompts[b]);
  // Where the model chooses the tokens, no logits come to the host.
  const bool model_picks = model.chooses(o.sampling);
  TokenChoice choice{o.sampling, {}, {}};
  std::vector<float> logits;
  std::vector<int32_t> picked;
  std::vector<int> rows(prompts.size());
  for (size_t b = 0; b < rows.size(); ++b) rows[b] = int(b);
  auto choice_for = [&](const std::vector<int>& listed) -> const TokenChoice& {
    choice.sequence.clear();
    choice.step.clear();
    for (int r : listed) {
      choice.sequence.push_back(seqs[size_t(r)].request());
      choice.step.push_back(seqs[size_t(r)].generated());
    }
    return choice;
  };
  if (model_picks) model.prefill_choose(prompts, choice_for(rows), picked);
  else model.prefill(prompts, logits);
  while (!rows.empty()) {
    std::vector<int> next_rows;
    std::vector<int32_t> tokens;
    for (size_t i = 0; i < rows.size(); ++i) {
      Sequence& s = seqs[size_t(rows[i])];
      const int32_t id = model_picks ? picked[i] : s.choose(logits.data() + i * size_t(V), V);
      const bool done = s.take(id, model.max_length());
      if (on_text) {
        const std::string text = s.take_stream_text(done);
        if (!text.empty()) on_text(first_request + size_t(rows[i]), text);
      }
      if (done) continue;
      next_rows.push_back(rows[i]);
      tokens.push_back(s.last());
    }
    rows = std::move(next_rows);
    if (rows.empty()) break;
    if (model_picks) model.decode_choose(rows, tokens, choice_for(rows), picked);
    else model.decode(rows, tokens, logits);
  }
  for (Sequence& s : seqs) out.push_back(s.result());
}

}  // namespace

std::vector<Generation> generate(DecodeModel& model, const Tokenizer* tok,
                                 const std::vector<std::vector<int32_t>>& prompts, const GenerationOptions& options,
                                 const TextCallback& on_text, uint64_t first_request) {
  check_options(options, tok);
  for (size_t i = 0; i < prompts.size(); ++i) check_prompt(prompts[i], i, model.vocab(), model.max_length());
  std::vector<Generation> out;
  const size_t batch = size_t(options.batch_size);
  for (size_t start = 0; start < prompts.size(); start += batch) {
    const size_t end = std::min(prompts.size(), start + batch);
    const std::vector<std::vector<int32_t>> slice(prompts.begin() + std::ptrdiff_t(start),
                                                  prompts.begin() + std::ptrdiff_t(end));
    generate_batch(model, tok, slice, options, on_text, first_request + start, out);
  }
  return out;
}

}  // namespace loom
