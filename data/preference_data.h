// Preference pairs (the datasets of TRL's DPOTrainer and ORPOTrainer) -> pair Documents.
//
// Record forms, one JSON object per line (data.format: pairs, or auto when a record has "chosen"
// and "rejected"):
//   standard        {"prompt": "...", "chosen": "...", "rejected": "..."}
//   conversational  {"prompt": [messages], "chosen": [assistant messages], "rejected": [...]}
//                   messages as OpenAI's {"role", "content", "reasoning_content" (optional)}; the
//                   prompt ends with a user message
//   implicit prompt {"chosen": [whole conversation], "rejected": [whole conversation]}: the prompt
//                   is the messages both start with (TRL's extract_prompt), the rest of each the
//                   completion. Only conversations: an implicit prompt between two strings would be
//                   cut inside a word, so a string pair without "prompt" is an error.
//
// Tokens:
//   standard        prompt and completion tokenized apart, as TRL's tokenize_row: prompt = what
//                   the tokenizer adds before a text (special_ids().before: BOS for Llama/Mistral,
//                   nothing for Qwen) + encode(prompt); completion = encode(chosen) + EOS (when the
//                   tokenizer has one). TRL adds no BOS for decoder-only models; the model saw one
//                   in front of every pre-training text, and SFT "text" data has it.
//   conversational  prompt = encode of the chat template's rendering of the prompt messages with
//                   the generation prompt (data/chat_template.h render_generation_prompt);
//                   completion = the tokens of the whole rendering of prompt + reply after those:
//                   the reply's body and its end-of-turn, token for token what SFT trains in that
//                   turn and what the model generates after the prompt. (TRL since 0.12 tokenizes
//                   the completion text alone, which for sentencepiece tokenizers puts a "▁" in
//                   front of the answer that the conversation never has, and appends an EOS after
//                   the end-of-turn, e.g. Qwen's "<|im_end|>\n<|im_end|>"; loom does neither.)
//
// Truncation, in this order (max_prompt_len and max_seq_len are data.max_prompt_len and
// data.max_seq_len; each of the two sequences is prompt + completion):
//   1. max_prompt_len > 0: a longer prompt keeps its last max_prompt_len tokens (TRL's
//      truncation_mode keep_end: the question nearest the answer stays; a BOS at its start goes).
//   2. a sequence longer than max_seq_len: with data.overlong drop the pair is dropped; with
//      truncate, a pair whose prompt alone has max_seq_len tokens or more is dropped (it would
//      leave an empty completion), else each completion is cut at its end to fit.
//   3. a sequence with no target left (an empty prompt without BOS and a one-token completion) drops
//      the pair.
// Each drop is counted under its reason in the preparation summary; a kept pair that was cut in 1
// or 2 counts as truncated.
//
// The document: ids = prompt+chosen ++ prompt+rejected, mask = 1 on completion tokens (the prompt
// is never a target), segments = {|prompt|+|chosen|, |prompt|+|rejected|} (data/batch.h).
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "data/batch.h"
#include "data/chat_template.h"
#include "data/data_options.h"
#include "data/tokenizer.h"

namespace loom {

// One JSONL preference record; only the members of its form are set.
struct PreferenceRecord {
  bool conversational = false;
  std::string prompt, chosen, rejected;                                          // standard
  std::vector<ChatMessage> prompt_messages, chosen_messages, rejected_messages;  // conversational
};

// Whether a parsed record's keys announce a pair ("chosen" and "rejected").
bool is_preference_record(const nlohmann::json& record);
// The pair a parsed record holds; errors start with `where` (FILE:LINE) and name the key path
// ("f.jsonl:3: chosen[0].role must be a string, found 5").
PreferenceRecord parse_preference_record(const nlohmann::json& record, const std::string& where);

// A pair tokenized (above), before truncation.
struct PairTokens {
  std::vector<int32_t> prompt, chosen, rejected;
};
// tmpl renders the conversational form (nullptr: that form is an error).
PairTokens tokenize_pair(const Tokenizer& tok, const ChatTemplate* tmpl, const PreferenceRecord& record);

enum class PairFate { kKept, kOverlong, kLongPrompt, kNoTarget };

struct PairDocument {
  PairFate fate = PairFate::kKept;
  bool truncated = false;  // kept after a cut (prompt or completion)
  Document doc;            // the pair when kept
};
// Truncation (above) with data.max_prompt_len, max_seq_len and overlong, then the document.
PairDocument pair_document(PairTokens tokens, const DataOptions& data);

}  // namespace loom
