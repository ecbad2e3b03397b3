// The input lines of build/score (and build/generate's prompts), each made into the document it
// scores and that document's targets (the tokens whose log-likelihood counts), as training would make them:
//   {"ids": [...]}        the ids as given; every id after the first is a target
//   {"text": "..."}       [BOS] text [EOS] through the tokenizer, every token after the first a
//                         target (a data.format text record)
//   {"messages": [...]}, {"conversations": [...]} (ShareGPT), {"instruction", "input", "output"}
//   (Alpaca)              rendered by the chat template and masked by train_on, as build/prepare
//                         does (data/dataset.h)
// The form is told from each line's keys, so one input may mix them. The tokenizer is loaded at the
// first line that needs it and the template at the first conversation: ids alone need neither.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "data/batch.h"
#include "data/chat_template.h"
#include "data/tokenizer.h"

namespace loom {

struct ScoreInputOptions {
  std::string tokenizer_path;          // "" when there is none: text and conversations are errors
  std::string tokenizer_name;          // how messages name it ("--tokenizer")
  std::string template_name = "auto";  // auto | none | a chat_template_names() entry
  bool train_on_all = false;           // conversations: every token a target, not only responses
  int32_t vocab = 0;                   // the model's vocabulary: every id must be below it
};

struct ScoreLine {
  Document doc;            // mask[i] = 1: token i is a target (mask[0] is always 0)
  bool given_ids = false;  // the {"ids"} form
};

class ScoreInput {
 public:
  explicit ScoreInput(ScoreInputOptions options);
  ~ScoreInput();
  // One line; errors start with `where` ("stdin:LINE").
  ScoreLine read(const std::string& line, const std::string& where);
  // One prompt (build/generate): {"ids": [...]} as given; {"prompt": "..."} as HF's tokenizer(prompt)
  // encodes it (what the tokenizer adds before a text, e.g. BOS, then the text; nothing after);
  // {"messages": [...]} (OpenAI, ending with a user turn) rendered by the chat template with its
  // generation prompt, as apply_chat_template(add_generation_prompt=True). *conversation (optional)
  // tells whether it was the messages form.
  std::vector<int32_t> read_prompt(const std::string& line, const std::string& where, bool* conversation = nullptr);
  // One preference pair (build/score --pairs): {"prompt_ids", "chosen_ids", "rejected_ids"}, or a
  // record of TRL's forms (data/preference_data.h) through the tokenizer and chat template, never
  // truncated. The pair's document: two sequences, chosen then rejected, completions the targets.
  Document read_pair(const std::string& line, const std::string& where);

  // The tokenizer file or folder ("" when there is none: ids only).
  const std::string& tokenizer_path() const { return opt_.tokenizer_path; }
  // Loaded at first use; errors start with `where`.
  const Tokenizer& tokenizer(const std::string& where);
  const ChatTemplate& chat_template(const std::string& where);

 private:

  ScoreInputOptions opt_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> template_;
};

}  // namespace loom
