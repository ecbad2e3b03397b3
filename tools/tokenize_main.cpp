// build/tokenize: JSONL text -> JSONL token ids, with loom's tokenizers.
//   build/tokenize --tokenizer PATH [--bos] < in.jsonl > out.jsonl
// Each input line {"text": "..."} gives one output line {"ids": [...]}; blank lines are skipped.
// A bad line stops the run with "error: stdin:LINE: <reason>" and exit code 1.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "data/tokenizer.h"
#include "ops/error.h"

namespace {

const char* kUsage =
    "usage: tokenize --tokenizer PATH [--bos] < in.jsonl > out.jsonl\n"
    "  PATH   a HF tokenizer.json, a sentencepiece .model, or a folder holding one\n"
    "  --bos  prepend the tokenizer's BOS token to every line's ids\n"
    "Reads lines {\"text\": \"...\"} on stdin and writes {\"ids\": [...]} per line on stdout.\n"
    "Special-token strings in the text (<|im_start|>, <s>, ...) become their ids.\n";

struct Args {
  std::string tokenizer;
  bool bos = false;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (arg == "--tokenizer" && i + 1 < argc) {
      a.tokenizer = argv[++i];
    } else if (arg == "--bos") {
      a.bos = true;
    } else {
      loom::fail("unexpected argument \"", arg, "\"\n", kUsage);
    }
  }
  LOOM_CHECK(!a.tokenizer.empty(), "--tokenizer PATH is required\n", kUsage);
  return a;
}

std::string text_of(const std::string& line) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    loom::fail("not valid JSON (", e.what(), ")");
  }
  LOOM_CHECK(j.is_object() && j.contains("text") && j["text"].is_string(),
             "expected an object with a string \"text\", found ", j.dump().substr(0, 80));
  return j["text"].get<std::string>();
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
  size_t line_no = 0;
  std::string out;  // ids of the lines done, written in blocks
  try {
    Args args = parse_args(argc, argv);
    auto tokenizer = loom::Tokenizer::load(args.tokenizer);
    std::string line;
    while (std::getline(std::cin, line)) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      try {
        append_ids(out, tokenizer->encode(text_of(line), args.bos));
      } catch (const loom::Error& e) {
        loom::fail("stdin:", line_no, ": ", e.what());
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
