#include "data/chat_template.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string_view>

#include "data/json_fields.h"
#include "ops/error.h"
#include "ops/files.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

constexpr const char* kQwen25System = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
constexpr const char* kQwen2System = "You are a helpful assistant.";
constexpr std::string_view kThinkOpen = "<think>", kThinkClose = "</think>";
constexpr std::string_view kToolResponseOpen = "<tool_response>", kToolResponseClose = "</tool_response>";
// Llama 3.1 template constants: its default date_string and the knowledge cut-off line.
constexpr const char* kLlama31Preamble = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

// Code points Python's str.isspace() accepts, which is what Jinja's `trim` and str.strip() remove.
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Decodes the UTF-8 code point of s that starts at `pos` (len = its byte count); an invalid byte
// decodes as U+FFFD, which is not a space.
char32_t decode_at(const std::string& s, size_t pos, size_t* len) {
  const unsigned char b = s[pos];
  const int n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 1;
  if (pos + n > s.size() || (n == 1 && b >= 0x80)) {
    *len = 1;
    return 0xFFFD;
  }
  if (n == 1) {
    *len = 1;
    return b;
  }
  char32_t c = b & (0x7F >> n);
  for (int i = 1; i < n; ++i) c = (c << 6) | (static_cast<unsigned char>(s[pos + i]) & 0x3F);
  *len = n;
  return c;
}

// Python's str.strip() with no argument (Unicode whitespace), as Jinja's `trim` filter.
std::string py_strip(const std::string& s) {
  size_t begin = 0, len = 0;
  while (begin < s.size() && is_python_space(decode_at(s, begin, &len))) begin += len;
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    if (!is_python_space(decode_at(s, start, &len)) || start + len != end) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

std::string lstrip_newlines(const std::string& s) {
  const size_t b = s.find_first_not_of('\n');
  return b == std::string::npos ? "" : s.substr(b);
}
std::string rstrip_newlines(const std::string& s) {
  const size_t e = s.find_last_not_of('\n');
  return e == std::string::npos ? "" : s.substr(0, e + 1);
}
std::string strip_newlines(const std::string& s) { return lstrip_newlines(rstrip_newlines(s)); }

class SegmentList {
 public:
  void add(const std::string& text, bool target) {
    if (text.empty()) return;
    if (!segs_.empty() && segs_.back().is_target == target)
      segs_.back().text += text;
    else
      segs_.push_back({text, target});
  }
  std::vector<ChatSegment> take() { return std::move(segs_); }

 private:
  std::vector<ChatSegment> segs_;
};

void check_roles(const std::vector<ChatMessage>& messages) {
  LOOM_CHECK(!messages.empty(), "a conversation needs at least one message (found none)");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    LOOM_CHECK(r == "system" || r == "user" || r == "assistant", "message ", i + 1, " has role '", r,
               "'; expected system, user or assistant");
  }
}

// mistral / llama2: after an optional first system message, user and assistant alternate,
// starting with the user.
void check_alternation(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages, size_t first) {
  for (size_t i = first; i < messages.size(); ++i) {
    const char* expected = (i - first) % 2 == 0 ? "user" : "assistant";
    LOOM_CHECK(messages[i].role == expected, "chat template ", tmpl.name,
               " needs user/assistant turns alternating, starting with the user, after an optional first "
               "system message: message ",
               i + 1, " is '", messages[i].role, "', expected '", expected, "'");
  }
}

struct QwenAssistantParts {
  std::string content;
  std::string reasoning;
};

// The qwen3 template's split of an assistant message into answer and reasoning.
QwenAssistantParts split_reasoning(const ChatMessage& m) {
  if (!m.reasoning.empty()) return {m.content, m.reasoning};
  const size_t close = m.content.find(kThinkClose);
  if (close == std::string::npos) return {m.content, ""};
  const size_t last_close = m.content.rfind(kThinkClose);
  std::string answer = lstrip_newlines(m.content.substr(last_close + kThinkClose.size()));
  std::string before = rstrip_newlines(m.content.substr(0, close));
  const size_t open = before.rfind(kThinkOpen);
  if (open != std::string::npos) before = before.substr(open + kThinkOpen.size());
  return {answer, lstrip_newlines(before)};
}

// Index of the last user message (the qwen3 template's last_query_index; messages wrapping a
// <tool_response> do not count); the last index when there is none.
size_t last_query_index(const std::vector<ChatMessage>& messages) {
  for (size_t i = messages.size(); i-- > 0;) {
    const std::string_view c = messages[i].content;
    const bool tool_response = c.substr(0, kToolResponseOpen.size()) == kToolResponseOpen &&
                               c.size() >= kToolResponseClose.size() &&
                               c.substr(c.size() - kToolResponseClose.size()) == kToolResponseClose;
    if (messages[i].role == "user" && !tool_response) return i;
  }
  return messages.size() - 1;
}

std::vector<ChatSegment> render_chatml(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages) {
  SegmentList out;
  const bool qwen3 = tmpl.family == TemplateFamily::qwen3;
  const bool has_system = messages[0].role == "system";
  if (has_system)
    out.add("<|im_start|>system\n" + messages[0].content + "<|im_end|>\n", false);
  else if (!tmpl.default_system.empty())
    out.add("<|im_start|>system\n" + tmpl.default_system + "<|im_end|>\n", false);
  const size_t last_query = last_query_index(messages);
  for (size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role != "assistant") {
      out.add("<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n", false);
      continue;
    }
    out.add("<|im_start|>assistant\n", false);
    if (!qwen3) {
      out.add(m.content + "<|im_end|>\n", true);
      continue;
    }
    const QwenAssistantParts parts = split_reasoning(m);
    const bool last = i + 1 == messages.size();
    if (i > last_query && (last || !parts.reasoning.empty()))
      out.add("<think>\n" + strip_newlines(parts.reasoning) + "\n</think>\n\n" + lstrip_newlines(parts.content),
              true);
    else
      out.add(parts.content, true);
    out.add("<|im_end|>\n", true);
  }
  return out.take();
}

void add_llama3_message(SegmentList& out, const ChatMessage& m) {
  out.add("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n", false);
  const bool target = m.role == "assistant";
  out.add(py_strip(m.content) + "<|eot_id|>", target);
}

std::vector<ChatSegment> render_llama3(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages) {
  SegmentList out;
  out.add("<|begin_of_text|>", false);
  size_t first = 0;
  if (tmpl.llama31_system) {
    std::string system;
    if (messages[0].role == "system") {
      system = py_strip(messages[0].content);
      first = 1;
    }
    out.add(std::string("<|start_header_id|>system<|end_header_id|>\n\n") + kLlama31Preamble + system + "<|eot_id|>",
            false);
  }
  for (size_t i = first; i < messages.size(); ++i) add_llama3_message(out, messages[i]);
  return out.take();
}

std::vector<ChatSegment> render_mistral(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages) {
  const bool has_system = messages[0].role == "system";
  const size_t first = has_system ? 1 : 0;
  check_alternation(tmpl, messages, first);
  SegmentList out;
  out.add("<s>", false);
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      const std::string prefix = (i == first && has_system) ? messages[0].content + "\n\n" : "";
      out.add("[INST] " + prefix + m.content + " [/INST]", false);
    } else {
      out.add(m.content + "</s>", true);
    }
  }
  return out.take();
}

std::vector<ChatSegment> render_llama2(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages) {
  const bool has_system = messages[0].role == "system";
  const size_t first = has_system ? 1 : 0;
  check_alternation(tmpl, messages, first);
  SegmentList out;
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user") {
      const std::string prefix =
          (i == first && has_system) ? "<<SYS>>\n" + messages[0].content + "\n<</SYS>>\n\n" : "";
      out.add("<s>[INST] " + py_strip(prefix + m.content) + " [/INST]", false);
    } else {
      out.add(" " + py_strip(m.content) + " </s>", true);
    }
  }
  return out.take();
}

bool contains(const std::string& s, const char* needle) { return s.find(needle) != std::string::npos; }

// A ChatML template's own default system prompt: the Qwen2.5 or Qwen2 sentence when it has one.
std::string chatml_default_system(const std::string& jinja) {
  if (contains(jinja, kQwen25System)) return kQwen25System;
  if (contains(jinja, kQwen2System)) return kQwen2System;
  return "";
}

// tokenizer_config.json "chat_template": a string, or a list of {name, template} (use "default").
std::string chat_template_of(const nlohmann::json& cfg, const std::string& file) {
  const nlohmann::json* t = json_member(cfg, "chat_template");
  if (!t) return "";
  if (t->is_string()) return t->get<std::string>();
  if (!t->is_array()) json_type_error(file, "chat_template", "a string or a list of {name, template}", *t);
  for (size_t i = 0; i < t->size(); ++i) {
    const std::string path = json_index_path("chat_template", i);
    const nlohmann::json& entry = (*t)[i];
    if (!entry.is_object()) json_type_error(file, path, "an object {name, template}", entry);
    if (json_string_at(entry, "name", file, path) == "default") return json_string_at(entry, "template", file, path);
  }
  fail(file, ": chat_template lists no template named \"default\"; set data.template");
}

}  // namespace

const std::vector<std::string>& chat_template_names() {
  static const std::vector<std::string> names = {"chatml", "qwen3", "llama3", "llama3.1", "mistral", "llama2"};
  return names;
}

ChatTemplate chat_template_by_name(const std::string& name) {
  ChatTemplate t;
  t.name = name;
  if (name == "chatml") {
    t.family = TemplateFamily::chatml;
    t.default_system = kQwen25System;
  } else if (name == "qwen3") {
    t.family = TemplateFamily::qwen3;
  } else if (name == "llama3" || name == "llama3.1") {
    t.family = TemplateFamily::llama3;
    t.llama31_system = name == "llama3.1";
  } else if (name == "mistral") {
    t.family = TemplateFamily::mistral;
  } else if (name == "llama2") {
    t.family = TemplateFamily::llama2;
  } else {
    std::string list;
    for (const auto& n : chat_template_names()) list += (list.empty() ? "" : ", ") + n;
    fail("unknown chat template '", name, "'; expected one of: ", list);
  }
  return t;
}

ChatTemplate detect_chat_template(const std::string& jinja) {
  if (contains(jinja, "<|im_start|>")) {
    if (contains(jinja, "<think>")) return chat_template_by_name("qwen3");
    ChatTemplate t = chat_template_by_name("chatml");
    t.default_system = chatml_default_system(jinja);
    return t;
  }
  if (contains(jinja, "<|start_header_id|>"))
    return chat_template_by_name(contains(jinja, "Cutting Knowledge Date") ? "llama3.1" : "llama3");
  if (contains(jinja, "<<SYS>>")) return chat_template_by_name("llama2");
  if (contains(jinja, "[INST]")) {
    LOOM_CHECK(contains(jinja, " [/INST]"),
               "the model's chat template is a Mistral [INST] template other than v0.1 (no space before "
               "[/INST]), which loom does not render; set data.template: mistral to train on the v0.1 layout");
    return chat_template_by_name("mistral");
  }
  fail("the model's chat template is not one loom knows (it has none of <|im_start|>, <|start_header_id|>, "
       "<<SYS>>, [INST]); set data.template to chatml, qwen3, llama3, mistral or llama2");
}

std::string read_chat_template_source(const std::string& tokenizer_path) {
  std::error_code ec;  // non-throwing: a path the system cannot stat is "no file here"
  const fs::path p(tokenizer_path);
  const fs::path dir = fs::is_directory(p, ec) ? p : p.parent_path();
  const fs::path cfg_file = dir / "tokenizer_config.json";
  std::string jinja;
  if (fs::exists(cfg_file, ec)) {
    const nlohmann::json cfg = read_json_file(cfg_file.string(), "tokenizer_config.json");
    LOOM_CHECK(cfg.is_object(), cfg_file.string(),
               ": not a JSON object (expected a transformers tokenizer_config.json)");
    jinja = chat_template_of(cfg, cfg_file.string());
  }
  // Newer transformers save the template beside the config instead of inside it.
  const fs::path jinja_file = dir / "chat_template.jinja";
  if (jinja.empty() && fs::exists(jinja_file, ec)) jinja = read_regular_file(jinja_file.string(), "chat template");
  return jinja;
}

ChatTemplate resolve_chat_template(const std::string& name, const std::string& jinja, bool has_inst_tokens) {
  if (name == "auto") {
    if (!jinja.empty()) return detect_chat_template(jinja);
    LOOM_CHECK(has_inst_tokens,
               "data.template is auto but the tokenizer has no chat template (no chat_template in its "
               "tokenizer_config.json); set data.template to chatml, qwen3, llama3, mistral or llama2");
    return chat_template_by_name("mistral");
  }
  ChatTemplate t = chat_template_by_name(name);
  if (t.family == TemplateFamily::llama3 && contains(jinja, "Cutting Knowledge Date")) {
    t.llama31_system = true;
    t.name = "llama3.1";
  }
  if (t.family == TemplateFamily::chatml && contains(jinja, "<|im_start|>") && !contains(jinja, "<think>"))
    t.default_system = chatml_default_system(jinja);
  return t;
}

std::vector<ChatSegment> render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages) {
  check_roles(messages);
  switch (tmpl.family) {
    case TemplateFamily::chatml:
    case TemplateFamily::qwen3:
      return render_chatml(tmpl, messages);
    case TemplateFamily::llama3:
      return render_llama3(tmpl, messages);
    case TemplateFamily::mistral:
      return render_mistral(tmpl, messages);
    case TemplateFamily::llama2:
      return render_llama2(tmpl, messages);
  }
  fail("internal: unhandled chat template family");
}

std::string segments_text(const std::vector<ChatSegment>& segments) {
  std::string s;
  for (const auto& seg : segments) s += seg.text;
  return s;
}

const char* generation_prompt_text(const ChatTemplate& tmpl) {
  switch (tmpl.family) {
    case TemplateFamily::chatml:
    case TemplateFamily::qwen3:
      return "<|im_start|>assistant\n";
    case TemplateFamily::llama3:
      return "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case TemplateFamily::mistral:
    case TemplateFamily::llama2:
      return "";
  }
  fail("internal: unhandled chat template family");
}

std::string render_generation_prompt(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages) {
  return segments_text(render_chat(tmpl, messages)) + generation_prompt_text(tmpl);
}

const char* end_of_turn_text(const ChatTemplate& tmpl) {
  switch (tmpl.family) {
    case TemplateFamily::chatml:
    case TemplateFamily::qwen3:
      return "<|im_end|>";
    case TemplateFamily::llama3:
      return "<|eot_id|>";
    case TemplateFamily::mistral:
    case TemplateFamily::llama2:
      return "</s>";
  }
  fail("internal: unhandled chat template family");
}

}  // namespace loom
