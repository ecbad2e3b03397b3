#include "data/score_input.h"

#include <limits>
#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/json_fields.h"
#include "data/jsonl.h"
#include "data/preference_data.h"
#include "ops/error.h"

namespace loom {
namespace {

using json = nlohmann::json;

// The {"ids": [...]} form: each id an integer of the model's vocabulary.
Document given_ids(const json& list, const std::string& where, int32_t vocab) {
  LOOM_CHECK(list.is_array(), where, ": \"ids\" must be a list of integers, e.g. {\"ids\": [1, 2, 3]}, found ",
             json_shown(list));
  Document d;
  d.ids.reserve(list.size());
  for (const json& v : list) {
    LOOM_CHECK(v.is_number_integer(), where, ": ids must be integers, found ", json_shown(v));
    // Unsigned first: 2^64 - 1 read as int64 would be -1.
    const bool in_vocab = v.is_number_unsigned() ? v.get<uint64_t>() < uint64_t(vocab)
                                                 : v.get<int64_t>() >= 0 && v.get<int64_t>() < vocab;
    LOOM_CHECK(in_vocab, where, ": id ", v.dump(), " is outside the model's vocabulary [0, ", vocab, ")");
    d.ids.push_back(v.get<int32_t>());
  }
  d.mask.assign(d.ids.size(), 1);
  if (!d.mask.empty()) d.mask[0] = 0;
  return d;
}

std::string keys_of(const json& record) {
  std::string keys;
  for (const auto& item : record.items()) keys += (keys.empty() ? "" : ", ") + item.key();
  return keys.empty() ? "none" : keys;
}

}  // namespace

ScoreInput::ScoreInput(ScoreInputOptions options) : opt_(std::move(options)) {}
ScoreInput::~ScoreInput() = default;

const Tokenizer& ScoreInput::tokenizer(const std::string& where) {
  LOOM_CHECK(!opt_.tokenizer_path.empty(), where,
             ": text and conversations are tokenized with the model's tokenizer, and the model folder has none "
             "(no tokenizer.json or tokenizer.model); pass --tokenizer PATH, or give {\"ids\": [...]} lines");
  if (!tokenizer_) tokenizer_ = Tokenizer::load(opt_.tokenizer_path, opt_.tokenizer_name);
  return *tokenizer_;
}

const ChatTemplate& ScoreInput::chat_template(const std::string& where) {
  if (template_) return *template_;
  const Tokenizer& tok = tokenizer(where);
  LOOM_CHECK(opt_.template_name != "none", where,
             ": a conversation needs a chat template, and data.template is none; give {\"text\": ...} lines or set "
             "data.template");
  const bool inst_tokens = tok.token_to_id("[INST]") >= 0 && tok.token_to_id("[/INST]") >= 0;
  try {
    template_ = resolve_chat_template(opt_.template_name, read_chat_template_source(opt_.tokenizer_path), inst_tokens);
  } catch (const Error& e) {
    fail(where, ": ", e.what());
  }
  return *template_;
}

Document ScoreInput::read_pair(const std::string& line, const std::string& where) {
  const json record = parse_jsonl_object(line, where);
  PairTokens tokens;
  if (record.contains("prompt_ids")) {
    for (const char* key : {"prompt_ids", "chosen_ids", "rejected_ids"})
      LOOM_CHECK(record.contains(key), where, ": a pair given as ids needs \"prompt_ids\", \"chosen_ids\" and "
                                              "\"rejected_ids\"; \"", key, "\" is missing");
    tokens.prompt = given_ids(record["prompt_ids"], where, opt_.vocab).ids;
    tokens.chosen = given_ids(record["chosen_ids"], where, opt_.vocab).ids;
    tokens.rejected = given_ids(record["rejected_ids"], where, opt_.vocab).ids;
  } else {
    LOOM_CHECK(is_preference_record(record), where, ": not a preference pair (keys ", keys_of(record),
               "); expected \"prompt\" + \"chosen\" + \"rejected\" (TRL's forms) or \"prompt_ids\" + "
               "\"chosen_ids\" + \"rejected_ids\"");
    const PreferenceRecord r = parse_preference_record(record, where);
    try {
      tokens = tokenize_pair(tokenizer(where), r.conversational ? &chat_template(where) : nullptr, r);
    } catch (const Error& e) {
      const std::string message = e.what();
      if (message.rfind(where + ":", 0) == 0) throw;
      fail(where, ": ", message);
    }
  }
  DataOptions whole;  // scoring cuts nothing
  whole.max_seq_len = std::numeric_limits<int>::max();
  const PairDocument pair = pair_document(std::move(tokens), whole);
  LOOM_CHECK(pair.fate == PairFate::kKept, where, ": the pair has a completion without a token to score");
  for (int32_t id : pair.doc.ids)
    LOOM_CHECK(id >= 0 && id < opt_.vocab, where, ": the tokenizer gave id ", id,
               ", outside the model's vocabulary [0, ", opt_.vocab, "); is ", opt_.tokenizer_name,
               " the model's tokenizer?");
  return pair.doc;
}

std::vector<int32_t> ScoreInput::read_prompt(const std::string& line, const std::string& where, bool* conversation) {
  const json record = parse_jsonl_object(line, where);
  if (conversation) *conversation = !record.contains("ids") && !record.contains("prompt");
  if (record.contains("ids")) return given_ids(record["ids"], where, opt_.vocab).ids;
  std::vector<int32_t> ids;
  try {
    if (record.contains("prompt")) {
      LOOM_CHECK(record["prompt"].is_string(), where, ": \"prompt\" must be a string, found ",
                 json_shown(record["prompt"]));
      const Tokenizer& tok = tokenizer(where);
      ids = tok.special_ids().before;
      const std::vector<int32_t> body = tok.encode(record["prompt"].get<std::string>());
      ids.insert(ids.end(), body.begin(), body.end());
    } else {
      LOOM_CHECK(record.contains("messages"), where, ": cannot tell the prompt from the keys (", keys_of(record),
                 "); expected \"prompt\" (text), \"messages\" (a conversation) or \"ids\"");
      const DataRecord r = parse_record_object(record, RecordFormat::messages, where);
      ids = tokenizer(where).encode(render_generation_prompt(chat_template(where), r.messages));
    }
  } catch (const Error& e) {
    const std::string message = e.what();
    if (message.rfind(where + ":", 0) == 0) throw;
    fail(where, ": ", message);
  }
  for (int32_t id : ids)
    LOOM_CHECK(id >= 0 && id < opt_.vocab, where, ": the tokenizer gave id ", id, ", outside the model's vocabulary [0, ",
               opt_.vocab, "); is ", opt_.tokenizer_name, " the model's tokenizer?");
  return ids;
}

ScoreLine ScoreInput::read(const std::string& line, const std::string& where) {
  const json record = parse_jsonl_object(line, where);
  if (record.contains("ids")) return ScoreLine{given_ids(record["ids"], where, opt_.vocab), true};
  const std::optional<RecordFormat> format = record_format_of(record);
  LOOM_CHECK(format, where, ": cannot tell what to score from the keys (", keys_of(record),
             "); expected \"ids\", \"text\", \"messages\" (OpenAI), \"conversations\" (ShareGPT) or "
             "\"instruction\"+\"output\" (Alpaca)");
  const DataRecord r = parse_record_object(record, *format, where);
  ScoreLine out;
  try {
    out.doc = r.is_text ? tokenize_text(tokenizer(where), r.text)
                        : tokenize_segments(tokenizer(where), render_chat(chat_template(where), r.messages),
                                            opt_.train_on_all);
  } catch (const Error& e) {
    const std::string message = e.what();
    if (message.rfind(where + ":", 0) == 0) throw;  // already names the line
    fail(where, ": ", message);                    // the template's rules (role order), the tokenizer
  }
  for (int32_t id : out.doc.ids)
    LOOM_CHECK(id >= 0 && id < opt_.vocab, where, ": the tokenizer gave id ", id,
               ", outside the model's vocabulary [0, ", opt_.vocab, "); is ", opt_.tokenizer_name,
               " the model's tokenizer?");
  return out;
}

}  // namespace loom
