// Chat templates in C++: what the Hugging Face Jinja chat_template of each family renders for an
// ordinary conversation (system/user/assistant messages, no tools), as a list of segments that say
// which text the model is trained to emit; and, for preference prompts, the generation prompt.
//
// Rendered text per family (FORMATS.md §6; "sys", "u", "a" are message contents):
//   chatml   (Qwen2/2.5) [<|im_start|>system\n{sys or default}<|im_end|>\n]
//                        <|im_start|>user\n{u}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n ...
//            default system: Qwen2.5 "You are Qwen, created by Alibaba Cloud. You are a helpful
//            assistant.", Qwen2 "You are a helpful assistant.", none for a plain ChatML template.
//   qwen3    as chatml with no default system; an assistant turn after the last user message is
//            rendered <|im_start|>assistant\n<think>\n{reasoning}\n</think>\n\n{a}<|im_end|>\n when
//            it is the last message or has reasoning (so the final answer always carries the
//            empty block <think>\n\n</think>\n\n); earlier turns lose their reasoning. Reasoning
//            comes from the message's `reasoning` field, else from a <think>…</think> prefix of a.
//   llama3   <|begin_of_text|> then per message
//            <|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>.
//            Llama 3.1 ("llama3.1"): the first block is always the system block
//            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{sys.strip()}".
//   mistral  (v0.1) <s>[INST] {u1} [/INST]{a1}</s>[INST] {u2} [/INST]{a2}</s> ...;
//            a system message becomes "{sys}\n\n" in front of the first user message.
//   llama2   <s>[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{u1}.strip() [/INST] {a1.strip()} </s>
//            <s>[INST] {u2.strip()} [/INST] {a2.strip()} </s> ...
// BOS is part of the text where the template emits it, so nothing else adds one.
//
// Targets (is_target = true) are what unsloth's train_on_responses_only trains: each assistant
// turn's body and its end-of-turn text, i.e. everything from after the response header
// (<|im_start|>assistant\n, <|start_header_id|>assistant<|end_header_id|>\n\n, [/INST]) up to
// the next prompt: chatml/qwen3 "{think block}{a}<|im_end|>\n" (the "\n" after <|im_end|> too),
// llama3 "{a}<|eot_id|>", mistral "{a}</s>", llama2 " {a} </s>" (the leading space belongs to
// the first answer token "▁word").
// mistral and llama2 require user/assistant alternation starting with the user after an optional
// first system message; violations throw loom::Error (the caller prefixes file:line).
#pragma once
#include <string>
#include <vector>

namespace loom {

struct ChatMessage {
  std::string role;       // system | user | assistant
  std::string content;
  std::string reasoning;  // assistant only (qwen3 reasoning_content); "" = none, as if absent
};

struct ChatSegment {
  std::string text;
  bool is_target = false;
};

enum class TemplateFamily { chatml, qwen3, llama3, mistral, llama2 };

struct ChatTemplate {
  TemplateFamily family = TemplateFamily::chatml;
  std::string name;              // chatml | qwen3 | llama3 | llama3.1 | mistral | llama2
  std::string default_system;    // chatml: system text used when the conversation has none
  bool llama31_system = false;   // llama3: the 3.1 "Cutting Knowledge Date" system block
};

// Names accepted by chat_template_by_name (and data.template, plus "auto" and "none").
const std::vector<std::string>& chat_template_names();
ChatTemplate chat_template_by_name(const std::string& name);

// Recognises a tokenizer_config.json chat_template by its distinctive substrings; throws when
// none matches (the message asks for data.template).
ChatTemplate detect_chat_template(const std::string& jinja);

// The chat_template string of the tokenizer_config.json beside a tokenizer (PATH: a folder, or a
// file inside one); "" when there is no such file or key.
std::string read_chat_template_source(const std::string& tokenizer_path);

// data.template resolved for a tokenizer: "auto" detects from the tokenizer_config.json template
// (or, without one, picks mistral when the tokenizer has [INST] and [/INST] as single tokens:
// has_inst_tokens); a name picks that family, refined by the model's own template where it says
// more (llama3 → 3.1 system block, chatml → its default system prompt).
ChatTemplate resolve_chat_template(const std::string& name, const std::string& jinja, bool has_inst_tokens);

// The conversation rendered as segments (adjacent segments of equal is_target are merged).
std::vector<ChatSegment> render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages);

// The concatenated text of the segments.
std::string segments_text(const std::vector<ChatSegment>& segments);

// What the template appends with add_generation_prompt=True: the header of the assistant turn to
// come. chatml and qwen3 "<|im_start|>assistant\n" (qwen3's default enable_thinking adds no think
// block), llama3 "<|start_header_id|>assistant<|end_header_id|>\n\n", mistral and llama2 "" (their
// Jinja has no generation prompt: the user turn's " [/INST]" already ends the prompt).
const char* generation_prompt_text(const ChatTemplate& tmpl);
// The conversation rendered as apply_chat_template(messages, add_generation_prompt=True) renders
// it: segments_text(render_chat(...)) followed by generation_prompt_text. Rendering the same
// messages plus an assistant reply starts with this text, and what follows it is that reply's
// target text (its body and end-of-turn), for every family.
std::string render_generation_prompt(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages);

// The special token that ends an assistant turn: <|im_end|> (chatml, qwen3), <|eot_id|> (llama3),
// </s> (mistral, llama2).
const char* end_of_turn_text(const ChatTemplate& tmpl);

}  // namespace loom
