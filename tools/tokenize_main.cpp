// build/tokenize: JSONL text -> JSONL token ids, with loom's tokenizers.
//   build/tokenize --tokenizer PATH [--special] < in.jsonl > out.jsonl
// Each input line {"text": "..."} gives one output line {"ids": [...]}; blank lines are skipped.
// --special adds what HF's encode(text, add_special_tokens=True) adds (data/tokenizer.h
// special_ids: the tokenizer.json post-processor, so Llama 3's BOS only where its file adds one).
// A bad line stops the run with "error: stdin:LINE: <reason>" and exit code 1. Lines are read by
// data/jsonl.h: at most 8 MiB, JSON nested at most 64 deep.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "data/json_fields.h"
#include "data/jsonl.h"
#include "data/tokenizer.h"
#include "ops/error.h"

namespace {

const char* kUsage =
    "usage: build/tokenize --tokenizer PATH [--special] < in.jsonl > out.jsonl\n"
    "  PATH       a HF tokenizer.json, a sentencepiece .model, or a folder holding one\n"
    "  --special  add the special tokens HF's add_special_tokens=True adds (the tokenizer.json\n"
    "             post-processor's, e.g. <s> for Mistral, none for Qwen3); --bos is the older name\n"
    "Reads lines {\"text\": \"...\"} on stdin and writes {\"ids\": [...]} per line on stdout.\n"
    "Special-token strings in the text (<|im_start|>, <s>, ...) become their ids.\n";

struct Args {
  std::string tokenizer;
  bool special = false;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "--tokenizer") {
      LOOM_CHECK(i + 1 < argc, "--tokenizer needs a value\n", kUsage);
      a.tokenizer = argv[++i];
    } else if (arg == "--special" || arg == "--bos") {
      a.special = true;
    } else {
      loom::fail("unexpected argument \"", arg, "\"\n", kUsage);
    }
  }
  LOOM_CHECK(!a.tokenizer.empty(), "--tokenizer PATH is required\n", kUsage);
  return a;
}

// The text of one stdin line; `where` is "stdin:LINE".
std::string text_of(const std::string& line, const std::string& where) {
  const nlohmann::json j = loom::parse_jsonl_object(line, where);
  const nlohmann::json* text = loom::json_member(j, "text");
  LOOM_CHECK(text, where, ": expected an object with a string \"text\", found ", loom::json_shown(j));
  return loom::json_string(*text, where, "text");
}

void append_ids(std::string& out, const std::vector<int32_t>& ids) {
  out += "{\"ids\":[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(ids[i]);
  }
  out += "]}\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  std::string out;  // ids of the lines done, written in blocks
  try {
    Args args = parse_args(argc, argv);
    auto tokenizer = loom::Tokenizer::load(args.tokenizer, "--tokenizer");
    loom::JsonlReader input(std::cin, "stdin");
    for (std::string line; input.next(line);) {
      const std::string text = text_of(line, input.where());
      try {
        append_ids(out, tokenizer->encode(text, args.special));
      } catch (const loom::Error& e) {
        loom::fail(input.where(), ": ", e.what());
      }
      if (out.size() > (1 << 20)) {
        std::fwrite(out.data(), 1, out.size(), stdout);
        out.clear();
      }
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
  } catch (...) {
    std::fwrite(out.data(), 1, out.size(), stdout);  // the lines before the bad one
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", loom::describe_current_exception().c_str());
    return 1;
  }
}
