// Dataset preparation: JSONL records → conversations → Documents (token ids + loss mask).
//
// Record formats, one JSON object per line (blank lines are ignored), chosen by data.format or,
// with "auto", from the keys of the file's first record:
//   messages  {"messages": [{"role": "system|user|assistant", "content": "...",
//                            "reasoning_content": "..." (optional, assistant)}, ...]}   (OpenAI)
//   sharegpt  {"conversations": [{"from": "system|human|gpt", "value": "..."}, ...]}
//             ("user"/"assistant" are accepted for "from" too)
//   alpaca    {"instruction": "...", "input": "..." (optional), "output": "..."}
//             → user "{instruction}\n\n{input}" (or "{instruction}" when input is empty), assistant "{output}"
//   text      {"text": "..."} → [BOS] text [EOS] (each when the tokenizer has one), all tokens trained
//   pairs     {"prompt", "chosen", "rejected"} preference pairs (or conversations sharing a prompt):
//             one document per pair, two sequences (data/preference_data.h: tokens, masks and
//             truncation, data.max_prompt_len); detected by "chosen" and "rejected"
//
// Masks (Document::mask[i] = 1: token i is a target). A conversation is rendered by its chat
// template into segments (chat_template.h) and the whole text is tokenized once with
// encode_with_offsets; mask[i] = 1 iff token i starts inside a target segment (train_on:
// responses), or for every token but the first (train_on: all, and format text). The first token
// is never a target: nothing precedes it.
//
// Lines are read by data/jsonl.h: at most 8 MiB each (a longer line is an error even under
// on_bad_line: skip, since it means the file is not JSONL), JSON nested at most 64 deep.
// Per record, in this order: a malformed line (bad JSON, missing or mistyped keys, unknown role,
// roles out of the template's order) throws loom::Error "FILE:LINE: reason", or with
// on_bad_line: skip is counted and left out; a document longer than max_seq_len is truncated to it
// (overlong: truncate, counted) or dropped (overlong: drop, counted); a document with no target
// token left is dropped and counted (a pair: preference_data.h's order, and its prompt-too-long
// drop). Output order is the file's order whatever the thread count.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/batch.h"
#include "data/chat_template.h"
#include "data/data_options.h"
#include "data/tokenizer.h"

namespace loom {

enum class RecordFormat { messages, sharegpt, alpaca, text, pairs };

// "messages" | "sharegpt" | "alpaca" | "text" | "pairs"
const char* record_format_name(RecordFormat format);
// The format a record's keys announce; throws naming the keys found when none fits. Errors start
// with `where` (FILE:LINE).
RecordFormat detect_record_format(const std::string& json_line, const std::string& where);
// The format a parsed record's keys announce; nullopt when none fits.
std::optional<RecordFormat> record_format_of(const nlohmann::json& record);

// One JSONL record: a conversation, or (format text) plain text.
struct DataRecord {
  std::vector<ChatMessage> messages;
  std::string text;
  bool is_text = false;
};
// Throws loom::Error starting with `where` (FILE:LINE), then the reason (a pair is not a
// conversation: data/preference_data.h reads it).
DataRecord parse_record(const std::string& json_line, RecordFormat format, const std::string& where);
// The same for a line already parsed.
DataRecord parse_record_object(const nlohmann::json& record, RecordFormat format, const std::string& where);

// Tokenizes rendered segments once; mask as in the header comment.
Document tokenize_segments(const Tokenizer& tok, const std::vector<ChatSegment>& segments, bool train_on_all);
// [BOS] text [EOS], every token but the first a target.
Document tokenize_text(const Tokenizer& tok, const std::string& text);

struct DatasetStats {
  int64_t records = 0;            // non-blank lines read
  int64_t documents = 0;          // documents kept (pairs, for format pairs)
  int64_t tokens = 0;             // tokens in kept documents
  int64_t target_tokens = 0;      // mask = 1 in kept documents
  int64_t bad_lines = 0;          // skipped (on_bad_line: skip)
  int64_t dropped_overlong = 0;   // overlong: drop
  int64_t dropped_no_target = 0;  // no target token (after truncation)
  int64_t dropped_long_prompt = 0;  // pairs whose prompt alone fills max_seq_len (overlong: truncate)
  int64_t truncated = 0;          // overlong: truncate (kept)
};

struct BuiltDataset {
  std::vector<Document> docs;
  DatasetStats stats;
  RecordFormat format = RecordFormat::messages;
};

// Called from the calling thread while records are processed: (records done, records in file).
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

struct BuildOptions {
  int threads = 0;  // 0: one per hardware thread
  ProgressFn progress;
};

// Reads data.path (JSONL) and builds its documents with data.format, train_on, max_seq_len,
// max_prompt_len, overlong and on_bad_line. `tmpl` renders conversations; nullptr (data.template:
// none) is only valid for format text, and for pairs of strings.
BuiltDataset build_documents(const DataOptions& data, const Tokenizer& tok, const ChatTemplate* tmpl,
                             const BuildOptions& options = {});

// The chat template data.template names for this tokenizer (none for "none"); reads the
// tokenizer_config.json beside tokenizer_path.
std::optional<ChatTemplate> resolve_template(const DataOptions& data, const std::string& tokenizer_path,
                                             const Tokenizer& tok);

struct PrepareResult {
  std::string dir;
  DatasetStats stats;
  bool reused = false;  // prepare_dataset found a matching cache
};

struct PrepareOptions {
  int threads = 0;          // 0: one per hardware thread
  bool progress = true;     // progress bar on stderr
  int64_t shard_tokens = 0; // tokens per shard before starting the next; 0: shards.h default
};

// JSONL (data.path) → token shards + prepared.json in out_dir (created; an older preparation
// there is replaced).
PrepareResult prepare_to_dir(const DataOptions& data, const std::string& tokenizer_path, const std::string& out_dir,
                             const PrepareOptions& options = {});

// What build/train calls: prepares data.path into cache_dir/<file stem>-<key> on first use and
// returns that folder; later calls with the same JSONL bytes, tokenizer and data settings reuse it.
std::string prepare_dataset(const DataOptions& data, const std::string& tokenizer_path, const std::string& cache_dir);
PrepareResult prepare_dataset_cached(const DataOptions& data, const std::string& tokenizer_path,
                                     const std::string& cache_dir, const PrepareOptions& options = {});

// "documents 1,500  tokens 62,001  target share 41.2%  dropped: ..." (multi-line summary).
std::string format_stats(const DatasetStats& stats);

}  // namespace loom
