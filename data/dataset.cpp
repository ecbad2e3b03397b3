#include "data/dataset.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "data/json_fields.h"
#include "data/jsonl.h"
#include "data/preference_data.h"
#include "data/shards.h"
#include "data/tokenizer_record.h"
#include "ops/error.h"
#include "ops/files.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Bumped whenever rendering or masking changes what a preparation produces, or what prepared.json
// records (2: the tokenizer and template records of data/tokenizer_record.h; 3: preference pairs,
// max_prompt_len, dropped_long_prompt and version-2 shards), so old caches are not reused.
constexpr int kPrepareRevision = 3;

// ---------------------------------------------------------------- records

std::string string_field(const json& obj, const std::string& key, const std::string& where) {
  auto it = obj.find(key);
  LOOM_CHECK(it != obj.end(), where, " has no \"", key, "\"");
  LOOM_CHECK(it->is_string(), where, ".", key, " must be a string (found ", it->type_name(), ")");
  return it->get<std::string>();
}

std::string optional_string(const json& obj, const std::string& key, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return "";
  LOOM_CHECK(it->is_string(), where, ".", key, " must be a string (found ", it->type_name(), ")");
  return it->get<std::string>();
}

const json& list_field(const json& record, const char* key) {
  auto it = record.find(key);
  LOOM_CHECK(it != record.end(), "expected a \"", key, "\" list (the file's format); this record has none");
  LOOM_CHECK(it->is_array(), "\"", key, "\" must be a list (found ", it->type_name(), ")");
  return *it;
}

std::vector<ChatMessage> parse_openai(const json& record) {
  std::vector<ChatMessage> out;
  const json& list = list_field(record, "messages");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = cat("messages[", i, "]");
    LOOM_CHECK(list[i].is_object(), where, " must be an object {role, content}");
    ChatMessage m;
    m.role = string_field(list[i], "role", where);
    LOOM_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant", where, ".role is \"", m.role,
               "\"; expected system, user or assistant");
    m.content = string_field(list[i], "content", where);
    m.reasoning = optional_string(list[i], "reasoning_content", where);
    out.push_back(std::move(m));
  }
  return out;
}

std::string sharegpt_role(const std::string& from, const std::string& where) {
  if (from == "human" || from == "user") return "user";
  if (from == "gpt" || from == "assistant") return "assistant";
  if (from == "system") return "system";
  fail(where, ".from is \"", from, "\"; expected human, gpt or system");
}

std::vector<ChatMessage> parse_sharegpt(const json& record) {
  std::vector<ChatMessage> out;
  const json& list = list_field(record, "conversations");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = cat("conversations[", i, "]");
    LOOM_CHECK(list[i].is_object(), where, " must be an object {from, value}");
    ChatMessage m;
    m.role = sharegpt_role(string_field(list[i], "from", where), where);
    m.content = string_field(list[i], "value", where);
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<ChatMessage> parse_alpaca(const json& record) {
  const std::string instruction = string_field(record, "instruction", "the record");
  const std::string input = optional_string(record, "input", "the record");
  const std::string output = string_field(record, "output", "the record");
  ChatMessage user{"user", input.empty() ? instruction : instruction + "\n\n" + input, ""};
  ChatMessage assistant{"assistant", output, ""};
  return {user, assistant};
}

// The record a parsed line holds; errors say what is wrong (the caller adds FILE:LINE).
DataRecord record_of(const json& record, RecordFormat format) {
  DataRecord r;
  switch (format) {
    case RecordFormat::messages: r.messages = parse_openai(record); break;
    case RecordFormat::sharegpt: r.messages = parse_sharegpt(record); break;
    case RecordFormat::alpaca: r.messages = parse_alpaca(record); break;
    case RecordFormat::text:
      r.text = string_field(record, "text", "the record");
      r.is_text = true;
      break;
    case RecordFormat::pairs:
      fail("this record is a preference pair (prompt, chosen, rejected), not a conversation; pairs are read with "
           "data.format: pairs");
  }
  LOOM_CHECK(r.is_text || !r.messages.empty(), "the conversation has no messages");
  return r;
}

// ---------------------------------------------------------------- files

struct Line {
  int64_t number;  // 1-based
  std::string text;
};

// Non-blank lines of a JSONL file, with their numbers (data/jsonl.h: bounded, BOM and CR removed).
std::vector<Line> read_lines(const std::string& path) {
  require_regular_file(path, "data.path");
  std::ifstream in(path, std::ios::binary);
  LOOM_CHECK(in, "cannot open the data file ", path, " (data.path); expected a JSONL file, one record per line");
  JsonlReader reader(in, path);
  std::vector<Line> lines;
  for (std::string s; reader.next(s);) lines.push_back({reader.line_number(), std::move(s)});
  LOOM_CHECK(!lines.empty(), path, " holds no records (every line is blank)");
  return lines;
}

// The format of the file: data.format, or with "auto" the format of its first usable record
// (records before it are bad lines: an error, or skipped under on_bad_line: skip).
RecordFormat file_format(const DataOptions& data, const std::vector<Line>& lines) {
  switch (data.format) {
    case DataFormat::kMessages: return RecordFormat::messages;
    case DataFormat::kSharegpt: return RecordFormat::sharegpt;
    case DataFormat::kAlpaca: return RecordFormat::alpaca;
    case DataFormat::kText: return RecordFormat::text;
    case DataFormat::kPairs: return RecordFormat::pairs;
    case DataFormat::kAuto: break;
  }
  for (const Line& l : lines) {
    try {
      return detect_record_format(l.text, cat(data.path, ":", l.number));
    } catch (const Error&) {
      if (data.on_bad_line == OnBadLine::kError) throw;
    }
  }
  fail(data.path, ": no record has a recognisable format (", lines.size(), " non-blank lines)");
}

// ---------------------------------------------------------------- documents

enum class Outcome { kept, bad_line, overlong, no_target, long_prompt };

struct LineResult {
  Outcome outcome = Outcome::kept;
  bool truncated = false;
  Document doc;
  std::string error;  // bad_line: the message, starting with FILE:LINE
};

struct BuildContext {
  const DataOptions& data;
  const Tokenizer& tok;
  const ChatTemplate* tmpl;
  RecordFormat format;
  std::string no_template;  // why tmpl is null, for a conversational pair's error
};

Document document_of(const BuildContext& ctx, const DataRecord& r) {
  if (r.is_text) return tokenize_text(ctx.tok, r.text);
  return tokenize_segments(ctx.tok, render_chat(*ctx.tmpl, r.messages), ctx.data.train_on == TrainOn::kAll);
}

// The document of one line; every error starts with FILE:LINE.
Document document_of_line(const BuildContext& ctx, const Line& line) {
  const std::string where = cat(ctx.data.path, ":", line.number);
  const DataRecord record = parse_record(line.text, ctx.format, where);
  try {
    return document_of(ctx, record);
  } catch (const Error& e) {
    fail(where, ": ", e.what());  // the template's rules (role order), the tokenizer
  }
}

bool has_target(const Document& d) { return std::find(d.mask.begin(), d.mask.end(), 1) != d.mask.end(); }

// The tokens of one pair line; every error starts with FILE:LINE.
PairTokens pair_tokens_of_line(const BuildContext& ctx, const Line& line) {
  const std::string where = cat(ctx.data.path, ":", line.number);
  const PreferenceRecord record = parse_preference_record(parse_jsonl_object(line.text, where), where);
  LOOM_CHECK(!record.conversational || ctx.tmpl, where, ": a conversational pair needs a chat template: ",
             ctx.no_template);
  try {
    return tokenize_pair(ctx.tok, ctx.tmpl, record);
  } catch (const Error& e) {
    fail(where, ": ", e.what());  // the template's rules (role order), the tokenizer
  }
}

LineResult process_pair_line(const BuildContext& ctx, const Line& line) {
  LineResult res;
  PairTokens tokens;
  try {
    tokens = pair_tokens_of_line(ctx, line);
  } catch (const Error& e) {
    res.outcome = Outcome::bad_line;
    res.error = e.what();
    return res;
  }
  PairDocument pair = pair_document(std::move(tokens), ctx.data);
  switch (pair.fate) {
    case PairFate::kKept: break;
    case PairFate::kOverlong: res.outcome = Outcome::overlong; break;
    case PairFate::kLongPrompt: res.outcome = Outcome::long_prompt; break;
    case PairFate::kNoTarget: res.outcome = Outcome::no_target; break;
  }
  res.truncated = pair.truncated;
  res.doc = std::move(pair.doc);
  return res;
}

LineResult process_line(const BuildContext& ctx, const Line& line) {
  if (ctx.format == RecordFormat::pairs) return process_pair_line(ctx, line);
  LineResult res;
  try {
    res.doc = document_of_line(ctx, line);
  } catch (const Error& e) {
    res.outcome = Outcome::bad_line;
    res.error = e.what();
    return res;
  }
  const size_t limit = size_t(ctx.data.max_seq_len);
  if (res.doc.ids.size() > limit) {
    if (ctx.data.overlong == Overlong::kDrop) {
      res.outcome = Outcome::overlong;
      return res;
    }
    res.doc.ids.resize(limit);
    res.doc.mask.resize(limit);
    res.truncated = true;
  }
  if (!has_target(res.doc)) res.outcome = Outcome::no_target;
  return res;
}

// Processes the lines on `threads` workers; results land at their line's index, so the order does
// not depend on scheduling. Chunks are taken in file order, so when a bad line stops the run
// (on_bad_line: error) every line before it has been processed and it is the first one reported.
std::vector<LineResult> process_lines(const BuildContext& ctx, const std::vector<Line>& lines, const BuildOptions& opt) {
  std::vector<LineResult> results(lines.size());
  const bool stop_at_bad_line = ctx.data.on_bad_line == OnBadLine::kError;
  constexpr size_t kChunk = 64;
  std::atomic<size_t> next{0}, done{0};
  std::atomic<bool> stop{false};
  std::exception_ptr unexpected;  // a failure that is not about the line (e.g. out of memory)
  std::mutex unexpected_mu;
  auto worker = [&] {
    try {
      for (size_t begin; !stop && (begin = next.fetch_add(kChunk)) < lines.size();) {
        const size_t end = std::min(begin + kChunk, lines.size());
        for (size_t i = begin; i < end; ++i) {
          results[i] = process_line(ctx, lines[i]);
          if (stop_at_bad_line && results[i].outcome == Outcome::bad_line) stop = true;
        }
        done += end - begin;
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(unexpected_mu);
      if (!unexpected) unexpected = std::current_exception();
      stop = true;
    }
  };
  int n = opt.threads > 0 ? opt.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  n = int(std::min<size_t>(size_t(n), std::max<size_t>(1, lines.size() / kChunk)));
  std::vector<std::thread> pool;
  for (int t = 0; t < n; ++t) pool.emplace_back(worker);
  while (opt.progress && !stop && done.load() < lines.size()) {
    opt.progress(int64_t(done.load()), int64_t(lines.size()));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (auto& t : pool) t.join();
  if (unexpected) std::rethrow_exception(unexpected);
  if (opt.progress && !stop) opt.progress(int64_t(lines.size()), int64_t(lines.size()));
  return results;
}

// Pairs are checked line by line: a file of string pairs needs no template.
void check_template_fits(const DataOptions& data, RecordFormat format, const ChatTemplate* tmpl) {
  LOOM_CHECK(format == RecordFormat::text || format == RecordFormat::pairs || tmpl, "data.template is none, but ",
             data.path, " holds ",
             record_format_name(format),
             " conversations, which need a chat template; set data.template (auto, chatml, qwen3, llama3, "
             "mistral, llama2) or give plain {\"text\": ...} records");
  LOOM_CHECK(data.max_seq_len > 0, "data.max_seq_len must be > 0 (found ", data.max_seq_len, ")");
}

BuiltDataset build_from_lines(const DataOptions& data, const Tokenizer& tok, const ChatTemplate* tmpl,
                              const std::string& no_template, const std::vector<Line>& lines, RecordFormat format,
                              const BuildOptions& options) {
  BuiltDataset out;
  out.format = format;
  check_template_fits(data, out.format, tmpl);
  std::vector<LineResult> results =
      process_lines(BuildContext{data, tok, tmpl, out.format, no_template}, lines, options);

  DatasetStats& s = out.stats;
  s.records = int64_t(lines.size());
  for (size_t i = 0; i < results.size(); ++i) {
    LineResult& r = results[i];
    switch (r.outcome) {
      case Outcome::bad_line:
        if (data.on_bad_line == OnBadLine::kError) throw Error(r.error);
        ++s.bad_lines;
        continue;
      case Outcome::overlong: ++s.dropped_overlong; continue;
      case Outcome::no_target: ++s.dropped_no_target; continue;
      case Outcome::long_prompt: ++s.dropped_long_prompt; continue;
      case Outcome::kept: break;
    }
    s.truncated += r.truncated;
    s.tokens += int64_t(r.doc.ids.size());
    s.target_tokens += std::count(r.doc.mask.begin(), r.doc.mask.end(), 1);
    out.docs.push_back(std::move(r.doc));
  }
  s.documents = int64_t(out.docs.size());
  return out;
}

// ---------------------------------------------------------------- preparation

void check_source(const DataOptions& data) {
  LOOM_CHECK(!data.path.empty(), "data.path is empty; set it to a JSONL file");
  require_regular_file(data.path, "data.path");
}

// What decides a preparation's output: JSONL bytes, tokenizer bytes (with its chat template)
// and the data settings. Paths are left out so that moving files keeps a cache valid.
json identity_of(const DataOptions& data, const std::string& tokenizer_path) {
  return json{{"revision", kPrepareRevision},
              {"source_fnv1a64", hex64(fnv1a64_file(data.path, "data.path"))},
              {"tokenizer_fnv1a64", hex64(tokenizer_files_fnv1a64(tokenizer_path))},
              {"format", data_format_name(data.format)},
              {"template", data.template_name},
              {"train_on", train_on_name(data.train_on)},
              {"max_seq_len", data.max_seq_len},
              {"max_prompt_len", data.max_prompt_len},
              {"overlong", overlong_name(data.overlong)},
              {"on_bad_line", on_bad_line_name(data.on_bad_line)}};
}

json stats_json(const DatasetStats& s) {
  return json{{"records", s.records},
              {"documents", s.documents},
              {"tokens", s.tokens},
              {"target_tokens", s.target_tokens},
              {"bad_lines", s.bad_lines},
              {"dropped_overlong", s.dropped_overlong},
              {"dropped_no_target", s.dropped_no_target},
              {"dropped_long_prompt", s.dropped_long_prompt},
              {"truncated", s.truncated}};
}

// The counts of a prepared.json; `where` names it.
DatasetStats stats_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) json_type_error(where, "counts", "an object", j);
  auto count = [&](const char* key) {
    const json* v = json_member(j, key);
    if (!v) fail(where, ": counts.", key, " is missing");
    return json_integer(*v, 0, INT64_MAX, where, cat("counts.", key));
  };
  DatasetStats s;
  s.records = count("records");
  s.documents = count("documents");
  s.tokens = count("tokens");
  s.target_tokens = count("target_tokens");
  s.bad_lines = count("bad_lines");
  s.dropped_overlong = count("dropped_overlong");
  s.dropped_no_target = count("dropped_no_target");
  s.dropped_long_prompt = count("dropped_long_prompt");
  s.truncated = count("truncated");
  return s;
}

// The counts of the preparation cached in `dir` when its identity is `identity`; nullopt when
// there is none, it was made from other inputs, or its prepared.json is damaged (then said on
// stderr: the cache is prepared again, which loses nothing).
std::optional<DatasetStats> cached_stats(const std::string& dir, const json& identity) {
  const std::string path = (fs::path(dir) / kManifestName).string();
  try {
    const std::string text = read_manifest(dir);
    if (text.empty()) return std::nullopt;
    const json m = parse_json(text, path);
    const json* cached_identity = json_member(m, "identity");
    if (!cached_identity || *cached_identity != identity) return std::nullopt;
    const json* counts = json_member(m, "counts");
    if (!counts) fail(path, ": counts is missing");
    return stats_from_json(*counts, path);
  } catch (const Error& e) {
    std::fprintf(stderr, "note: the cached preparation is damaged (%s); preparing it again\n", e.what());
    return std::nullopt;
  }
}

// A progress bar redrawn in place on a terminal; silent when stderr is a file.
ProgressFn stderr_progress_bar() {
  if (!isatty(STDERR_FILENO)) return nullptr;
  return [](int64_t done, int64_t total) {
    constexpr int kWidth = 30;
    const double frac = total > 0 ? double(done) / double(total) : 1.0;
    const int filled = int(frac * kWidth);
    std::fprintf(stderr, "\rprepare [%s%s] %3d%%  %lld/%lld records", std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), int(frac * 100), static_cast<long long>(done),
                 static_cast<long long>(total));
    if (done == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  };
}

PrepareResult prepare_with_identity(const DataOptions& data, const std::string& tokenizer_path,
                                    const std::string& out_dir, const PrepareOptions& options, const json& identity) {
  const std::unique_ptr<Tokenizer> tok = Tokenizer::load(tokenizer_path);
  const std::vector<Line> lines = read_lines(data.path);
  const RecordFormat format = file_format(data, lines);
  std::optional<ChatTemplate> tmpl;
  std::string no_template = "data.template is none";
  if (format == RecordFormat::pairs) {
    try {  // only conversational pairs need it: string pairs prepare with a base model's tokenizer
      tmpl = resolve_template(data, tokenizer_path, *tok);
    } catch (const Error& e) {
      no_template = e.what();
    }
  } else if (format != RecordFormat::text) {
    tmpl = resolve_template(data, tokenizer_path, *tok);
  }

  BuildOptions build;
  build.threads = options.threads;
  if (options.progress) build.progress = stderr_progress_bar();
  BuiltDataset built;
  try {
    built = build_from_lines(data, *tok, tmpl ? &*tmpl : nullptr, no_template, lines, format, build);
  } catch (...) {
    if (build.progress) std::fputc('\n', stderr);  // end the unfinished bar line before the error
    throw;
  }
  LOOM_CHECK(!built.docs.empty(), "no document left to train on from ", data.path, ":\n", format_stats(built.stats));

  json fields{{"identity", identity},
              {"source", data.path},
              {"tokenizer", tokenizer_record_json(record_tokenizer(tokenizer_path, *tok))},
              {"template", tmpl ? template_record_json(record_template(*tmpl, tokenizer_path, *tok)) : json(nullptr)},
              {"resolved", {{"format", record_format_name(format)}, {"template", tmpl ? tmpl->name : "none"}}},
              {"counts", stats_json(built.stats)}};
  write_prepared(out_dir, built.docs, fields.dump(),
                 options.shard_tokens > 0 ? options.shard_tokens : kDefaultShardTokens);
  return PrepareResult{out_dir, built.stats, false};
}

std::string with_commas(int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

}  // namespace

const char* record_format_name(RecordFormat format) {
  switch (format) {
    case RecordFormat::messages: return "messages";
    case RecordFormat::sharegpt: return "sharegpt";
    case RecordFormat::alpaca: return "alpaca";
    case RecordFormat::text: return "text";
    case RecordFormat::pairs: return "pairs";
  }
  return "?";
}

std::optional<RecordFormat> record_format_of(const json& record) {
  if (is_preference_record(record)) return RecordFormat::pairs;
  if (record.contains("messages")) return RecordFormat::messages;
  if (record.contains("conversations")) return RecordFormat::sharegpt;
  if (record.contains("instruction") && record.contains("output")) return RecordFormat::alpaca;
  if (record.contains("text")) return RecordFormat::text;
  return std::nullopt;
}

RecordFormat detect_record_format(const std::string& json_line, const std::string& where) {
  const json record = parse_jsonl_object(json_line, where);
  if (const std::optional<RecordFormat> format = record_format_of(record)) return *format;
  std::string keys;
  for (const auto& item : record.items()) keys += (keys.empty() ? "" : ", ") + item.key();
  fail(where, ": cannot tell the record format from its keys (", keys.empty() ? "none" : keys,
       "); expected \"messages\" (OpenAI), \"conversations\" (ShareGPT), \"instruction\"+\"output\" (Alpaca), "
       "\"text\", or \"prompt\"+\"chosen\"+\"rejected\" (preference pairs), or set data.format");
}

DataRecord parse_record(const std::string& json_line, RecordFormat format, const std::string& where) {
  return parse_record_object(parse_jsonl_object(json_line, where), format, where);
}

DataRecord parse_record_object(const json& record, RecordFormat format, const std::string& where) {
  try {
    return record_of(record, format);
  } catch (const Error& e) {
    fail(where, ": ", e.what());
  }
}

Document tokenize_segments(const Tokenizer& tok, const std::vector<ChatSegment>& segments, bool train_on_all) {
  const std::string text = segments_text(segments);
  std::vector<size_t> seg_end;  // byte offset where each segment ends
  for (const auto& s : segments) seg_end.push_back((seg_end.empty() ? 0 : seg_end.back()) + s.text.size());
  Document d;
  std::vector<size_t> starts;
  d.ids = tok.encode_with_offsets(text, &starts);
  LOOM_CHECK(starts.size() == d.ids.size(), "internal: the tokenizer gave ", starts.size(), " offsets for ",
             d.ids.size(), " tokens");
  d.mask.assign(d.ids.size(), train_on_all ? 1 : 0);
  if (!train_on_all)
    for (size_t i = 0; i < d.ids.size(); ++i) {
      const size_t seg = size_t(std::upper_bound(seg_end.begin(), seg_end.end(), starts[i]) - seg_end.begin());
      d.mask[i] = seg < segments.size() && segments[seg].is_target;
    }
  if (!d.mask.empty()) d.mask[0] = 0;
  return d;
}

Document tokenize_text(const Tokenizer& tok, const std::string& text) {
  Document d;
  if (tok.bos_id() >= 0) d.ids.push_back(tok.bos_id());
  const std::vector<int32_t> body = tok.encode(text);
  d.ids.insert(d.ids.end(), body.begin(), body.end());
  if (tok.eos_id() >= 0) d.ids.push_back(tok.eos_id());
  d.mask.assign(d.ids.size(), 1);
  if (!d.mask.empty()) d.mask[0] = 0;
  return d;
}

BuiltDataset build_documents(const DataOptions& data, const Tokenizer& tok, const ChatTemplate* tmpl,
                             const BuildOptions& options) {
  const std::vector<Line> lines = read_lines(data.path);
  return build_from_lines(data, tok, tmpl, "data.template is none", lines, file_format(data, lines), options);
}

std::optional<ChatTemplate> resolve_template(const DataOptions& data, const std::string& tokenizer_path,
                                             const Tokenizer& tok) {
  if (data.template_name == "none") return std::nullopt;
  const bool inst_tokens = tok.token_to_id("[INST]") >= 0 && tok.token_to_id("[/INST]") >= 0;
  return resolve_chat_template(data.template_name, read_chat_template_source(tokenizer_path), inst_tokens);
}

PrepareResult prepare_to_dir(const DataOptions& data, const std::string& tokenizer_path, const std::string& out_dir,
                             const PrepareOptions& options) {
  check_source(data);
  return prepare_with_identity(data, tokenizer_path, out_dir, options, identity_of(data, tokenizer_path));
}

PrepareResult prepare_dataset_cached(const DataOptions& data, const std::string& tokenizer_path,
                                     const std::string& cache_dir, const PrepareOptions& options) {
  check_source(data);
  const json identity = identity_of(data, tokenizer_path);
  const std::string canonical = identity.dump();
  const std::string key = hex64(fnv1a64(canonical.data(), canonical.size()));
  const std::string dir = (fs::path(cache_dir) / (fs::path(data.path).stem().string() + "-" + key)).string();
  if (const std::optional<DatasetStats> stats = cached_stats(dir, identity)) return PrepareResult{dir, *stats, true};
  return prepare_with_identity(data, tokenizer_path, dir, options, identity);
}

std::string prepare_dataset(const DataOptions& data, const std::string& tokenizer_path, const std::string& cache_dir) {
  const PrepareResult r = prepare_dataset_cached(data, tokenizer_path, cache_dir);
  if (!r.reused) std::fprintf(stderr, "prepared %s into %s\n%s", data.path.c_str(), r.dir.c_str(), format_stats(r.stats).c_str());
  return r.dir;
}

std::string format_stats(const DatasetStats& s) {
  const double share = s.tokens > 0 ? 100.0 * double(s.target_tokens) / double(s.tokens) : 0.0;
  char pct[16];
  std::snprintf(pct, sizeof pct, "%.1f%%", share);
  return cat("  documents  ", with_commas(s.documents), " (of ", with_commas(s.records), " records)\n",
             "  tokens     ", with_commas(s.tokens), " (targets ", with_commas(s.target_tokens), ", ", pct, ")\n",
             "  dropped    ", with_commas(s.dropped_overlong), " overlong, ", with_commas(s.dropped_no_target),
             " without targets, ", with_commas(s.bad_lines), " bad lines",
             s.dropped_long_prompt ? cat(", ", with_commas(s.dropped_long_prompt), " pairs whose prompt fills max_seq_len")
                                   : std::string(),
             "\n",
             "  truncated  ", with_commas(s.truncated), "\n");
}

}  // namespace loom
