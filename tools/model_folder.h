// What build/score and build/generate share about a model folder given on the command line: the
// folder checks, and the tokenizer that goes with it (--tokenizer, or the folder's own).
#pragma once
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "data/tokenizer_record.h"
#include "ops/error.h"
#include "ops/files.h"
#include "tools/flag_terms.h"

namespace loom {

// `path` must be a folder: "--model x is a file; give the model's folder (...)".
inline void require_folder(const std::string& path, const std::string& flag, const std::string& expected) {
  require_file_or_folder(path, flag);
  std::error_code ec;
  LOOM_CHECK(std::filesystem::is_directory(path, ec), flag, " ", path, " is a file; give ", expected);
}

// The tokenizer to use and how messages name it: --tokenizer when given, else the model folder's
// own, else {"", ""} (ids only).
inline std::pair<std::string, std::string> tokenizer_of(const std::string& model, const std::string& tokenizer) {
  if (!tokenizer.empty()) return {tokenizer, "--tokenizer"};
  if (holds_tokenizer(model)) return {model, "the tokenizer of --model"};
  return {"", ""};
}

// The flags of every tool that loads a model folder.
struct ModelFlags {
  std::string model, adapter, tokenizer, template_name = "auto";
};

// Takes flag k (its value from value()) when it is one of ModelFlags'; false for any other flag.
template <class Value>
bool take_model_flag(const std::string& k, Value&& value, ModelFlags& m) {
  if (k == "--model") m.model = value();
  else if (k == "--adapter") m.adapter = value();
  else if (k == "--tokenizer") m.tokenizer = value();
  else if (k == "--template") m.template_name = value();
  else return false;
  return true;
}

// After parsing: --model given and a folder, --adapter a folder, --tokenizer present, --template a
// name build/prepare knows.
inline void check_model_flags(const ModelFlags& m, const char* usage) {
  LOOM_CHECK(!m.model.empty(), "--model is required\n", usage);
  std::vector<std::string> templates = {"auto", "none"};
  for (const auto& n : chat_template_names()) templates.push_back(n);
  check_choice("--template", m.template_name, templates);
  require_folder(m.model, "--model", "the model's folder (config.json + *.safetensors)");
  if (!m.adapter.empty())
    require_folder(m.adapter, "--adapter", "the adapter's folder (adapter_config.json + adapter_model.safetensors)");
  if (!m.tokenizer.empty()) require_file_or_folder(m.tokenizer, "--tokenizer");
}

// --tokenizer must be the model's own when the model folder has one: ids of another tokenizer
// would be read as if they were the model's.
inline void check_tokenizer_is_the_models(const std::string& model, const std::string& tokenizer) {
  if (tokenizer.empty() || !holds_tokenizer(model)) return;
  const TokenizerRecord given = record_tokenizer(tokenizer, *Tokenizer::load(tokenizer, "--tokenizer"));
  const TokenizerRecord own = record_tokenizer(model, *Tokenizer::load(model, "--model"));
  LOOM_CHECK(same_tokenizer(given, own), "--tokenizer ", describe(given), " is not the tokenizer of --model ", model,
             " ", describe(own), "; leave --tokenizer out to use the model's");
}

}  // namespace loom
