#include "data/preference_data.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "data/json_fields.h"
#include "ops/error.h"

namespace loom {
namespace {

using nlohmann::json;

// A message list at `key` ("prompt", "chosen[0]"...), each {role, content, reasoning_content?}.
std::vector<ChatMessage> parse_messages(const json& list, const std::string& where, const std::string& key) {
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string path = json_index_path(key, i);
    if (!list[i].is_object()) json_type_error(where, path, "an object {role, content}", list[i]);
    ChatMessage m;
    m.role = json_string_at(list[i], "role", where, path);
    LOOM_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant", where, ": ", path, ".role is \"",
               m.role, "\"; expected system, user or assistant");
    m.content = json_string_at(list[i], "content", where, path);
    m.reasoning = json_optional_string_at(list[i], "reasoning_content", where, path).value_or("");
    out.push_back(std::move(m));
  }
  return out;
}

bool same_message(const ChatMessage& a, const ChatMessage& b) {
  return a.role == b.role && a.content == b.content && a.reasoning == b.reasoning;
}

// A completion: one or more assistant messages.
void check_reply(const std::vector<ChatMessage>& reply, const std::string& where, const std::string& key) {
  LOOM_CHECK(!reply.empty(), where, ": ", key, " has no message; it must hold the assistant's answer");
  for (size_t i = 0; i < reply.size(); ++i)
    LOOM_CHECK(reply[i].role == "assistant", where, ": ", json_index_path(key, i), ".role is \"", reply[i].role,
               "\"; ", key, " holds the assistant's answer (role assistant)");
}

void check_prompt(const std::vector<ChatMessage>& prompt, const std::string& where, const std::string& what) {
  LOOM_CHECK(!prompt.empty() && prompt.back().role == "user", where, ": ", what,
             " must end with a user message (the question that chosen and rejected answer); ",
             prompt.empty() ? std::string("it has none") : cat("its last message is ", prompt.back().role));
}

// TRL's extract_prompt on conversations: the messages chosen and rejected both start with.
void split_implicit_prompt(PreferenceRecord& r, const std::string& where) {
  const std::vector<ChatMessage>& c = r.chosen_messages;
  const std::vector<ChatMessage>& x = r.rejected_messages;
  size_t shared = 0;
  while (shared < c.size() && shared < x.size() && same_message(c[shared], x[shared])) ++shared;
  r.prompt_messages.assign(c.begin(), c.begin() + ptrdiff_t(shared));
  check_prompt(r.prompt_messages, where, "without \"prompt\", the messages chosen and rejected share (the prompt)");
  r.chosen_messages.erase(r.chosen_messages.begin(), r.chosen_messages.begin() + ptrdiff_t(shared));
  r.rejected_messages.erase(r.rejected_messages.begin(), r.rejected_messages.begin() + ptrdiff_t(shared));
}

PreferenceRecord parse_conversational(const json& record, const std::string& where) {
  PreferenceRecord r;
  r.conversational = true;
  r.chosen_messages = parse_messages(json_array_at(record, "chosen", where, ""), where, "chosen");
  r.rejected_messages = parse_messages(json_array_at(record, "rejected", where, ""), where, "rejected");
  if (json_member(record, "prompt")) {
    r.prompt_messages = parse_messages(json_array_at(record, "prompt", where, ""), where, "prompt");
    check_prompt(r.prompt_messages, where, "prompt");
  } else {
    split_implicit_prompt(r, where);
  }
  check_reply(r.chosen_messages, where, "chosen");
  check_reply(r.rejected_messages, where, "rejected");
  return r;
}

PreferenceRecord parse_standard(const json& record, const std::string& where) {
  LOOM_CHECK(json_member(record, "prompt"), where,
             ": prompt is missing; a pair of strings needs \"prompt\" (an implicit prompt is read from "
             "conversations only: chosen and rejected as message lists)");
  PreferenceRecord r;
  r.prompt = json_string_at(record, "prompt", where, "");
  r.chosen = json_string_at(record, "chosen", where, "");
  r.rejected = json_string_at(record, "rejected", where, "");
  return r;
}

// The reply's tokens as the whole conversation tokenizes them: the tokens of prompt + reply after
// the prompt's own, which every template's prompt ends cleanly before (a special token or a
// newline), so the prompt's tokens are the same in both sequences of the pair.
std::vector<int32_t> reply_tokens(const Tokenizer& tok, const ChatTemplate& tmpl, const std::vector<ChatMessage>& prompt,
                                  const std::string& prompt_text, const std::vector<int32_t>& prompt_ids,
                                  const std::vector<ChatMessage>& reply) {
  std::vector<ChatMessage> all = prompt;
  all.insert(all.end(), reply.begin(), reply.end());
  const std::string full = segments_text(render_chat(tmpl, all));
  LOOM_CHECK(full.compare(0, prompt_text.size(), prompt_text) == 0, "internal: chat template ", tmpl.name,
             " does not render the prompt with its generation prompt as the start of prompt + reply");
  const std::vector<int32_t> ids = tok.encode(full);
  LOOM_CHECK(ids.size() > prompt_ids.size() && std::equal(prompt_ids.begin(), prompt_ids.end(), ids.begin()),
             "the tokens of the prompt are not the first tokens of prompt + answer under chat template ", tmpl.name,
             " (a token spans the end of the prompt)");
  return std::vector<int32_t>(ids.begin() + ptrdiff_t(prompt_ids.size()), ids.end());
}

std::vector<int32_t> with_eos(std::vector<int32_t> ids, int32_t eos) {
  if (eos >= 0) ids.push_back(eos);
  return ids;
}

// Targets of a sequence whose first prompt_len tokens are prompt: every completion token but one
// at position 0 (nothing precedes it).
size_t sequence_targets(size_t prompt_len, size_t completion_len) {
  return prompt_len == 0 && completion_len > 0 ? completion_len - 1 : completion_len;
}

// prompt ++ completion, mask 1 on the completion (never on the sequence's first token).
void append_sequence(Document& d, const std::vector<int32_t>& prompt, const std::vector<int32_t>& completion) {
  const size_t start = d.ids.size();
  d.ids.insert(d.ids.end(), prompt.begin(), prompt.end());
  d.ids.insert(d.ids.end(), completion.begin(), completion.end());
  d.mask.insert(d.mask.end(), prompt.size(), 0);
  d.mask.insert(d.mask.end(), completion.size(), 1);
  d.mask[start] = 0;
  d.segments.push_back(int32_t(d.ids.size() - start));
}

}  // namespace

bool is_preference_record(const json& record) { return record.contains("chosen") && record.contains("rejected"); }

PreferenceRecord parse_preference_record(const json& record, const std::string& where) {
  LOOM_CHECK(record.is_object(), where, ": a preference pair must be a JSON object, found ", json_shown(record));
  const json* chosen = json_member(record, "chosen");
  if (!chosen) fail(where, ": chosen is missing; a preference pair has \"prompt\", \"chosen\" and \"rejected\"");
  LOOM_CHECK(json_member(record, "rejected"), where,
             ": rejected is missing; a preference pair has \"prompt\", \"chosen\" and \"rejected\"");
  if (chosen->is_array()) return parse_conversational(record, where);
  if (chosen->is_string()) return parse_standard(record, where);
  json_type_error(where, "chosen", "a string (standard form) or a list of messages (conversational form)", *chosen);
}

PairTokens tokenize_pair(const Tokenizer& tok, const ChatTemplate* tmpl, const PreferenceRecord& r) {
  PairTokens t;
  if (!r.conversational) {
    t.prompt = tok.special_ids().before;
    const std::vector<int32_t> body = tok.encode(r.prompt);
    t.prompt.insert(t.prompt.end(), body.begin(), body.end());
    t.chosen = with_eos(tok.encode(r.chosen), tok.eos_id());
    t.rejected = with_eos(tok.encode(r.rejected), tok.eos_id());
    return t;
  }
  LOOM_CHECK(tmpl, "a conversational pair needs a chat template, and data.template is none");
  const std::string prompt_text = render_generation_prompt(*tmpl, r.prompt_messages);
  t.prompt = tok.encode(prompt_text);
  t.chosen = reply_tokens(tok, *tmpl, r.prompt_messages, prompt_text, t.prompt, r.chosen_messages);
  t.rejected = reply_tokens(tok, *tmpl, r.prompt_messages, prompt_text, t.prompt, r.rejected_messages);
  return t;
}

PairDocument pair_document(PairTokens t, const DataOptions& data) {
  PairDocument out;
  const size_t max_prompt = size_t(std::max(0, data.max_prompt_len));
  if (max_prompt > 0 && t.prompt.size() > max_prompt) {
    t.prompt.erase(t.prompt.begin(), t.prompt.end() - ptrdiff_t(max_prompt));  // keep_end
    out.truncated = true;
  }
  const size_t limit = size_t(data.max_seq_len);
  const size_t room = limit > t.prompt.size() ? limit - t.prompt.size() : 0;  // completion tokens that fit
  if (t.chosen.size() > room || t.rejected.size() > room) {
    if (data.overlong == Overlong::kDrop) return PairDocument{PairFate::kOverlong, false, {}};
    if (room == 0) return PairDocument{PairFate::kLongPrompt, false, {}};
    t.chosen.resize(std::min(t.chosen.size(), room));
    t.rejected.resize(std::min(t.rejected.size(), room));
    out.truncated = true;
  }
  if (sequence_targets(t.prompt.size(), t.chosen.size()) == 0 ||
      sequence_targets(t.prompt.size(), t.rejected.size()) == 0)
    return PairDocument{PairFate::kNoTarget, false, {}};
  append_sequence(out.doc, t.prompt, t.chosen);
  append_sequence(out.doc, t.prompt, t.rejected);
  return out;
}

}  // namespace loom
