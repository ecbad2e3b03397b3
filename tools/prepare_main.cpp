// build/prepare: JSONL chat/instruction/text records → token shards with loss masks (data/dataset.h,
// data/shards.h), ready for build/train's data.path.
//
//   build/prepare --data FILE.jsonl --tokenizer PATH --out DIR [--template NAME] [--format NAME]
//                 [--train-on responses|all] [--max-seq-len N] [--max-prompt-len N]
//                 [--overlong truncate|drop] [--skip-bad-lines] [--threads N]
//   build/prepare CONFIG.yaml [section.key=value ...]
//
// The second form reads the config's data section and prepares into the cache build/train uses
// (data.cache_dir, default <output.dir>/data), so training then starts without preparing again.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "data/chat_template.h"
#include "data/data_options.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "engine/config.h"
#include "ops/error.h"
#include "ops/files.h"
#include "tools/flag_terms.h"

namespace {

constexpr const char* kUsage =
    "usage: build/prepare --data FILE.jsonl --tokenizer PATH --out DIR [--template NAME] [--format NAME]\n"
    "                     [--train-on responses|all] [--max-seq-len N] [--max-prompt-len N]\n"
    "                     [--overlong truncate|drop] [--skip-bad-lines] [--threads N]\n"
    "       build/prepare CONFIG.yaml [section.key=value ...]\n"
    "  --template  auto (from the tokenizer's tokenizer_config.json) | chatml | qwen3 | llama3 | llama3.1 |\n"
    "              mistral | llama2 | none (text records only)\n"
    "  --format    auto (from the first record) | messages | sharegpt | alpaca | text | pairs\n"
    "  --max-prompt-len  preference pairs: prompt tokens kept (its last ones); default: no limit but\n"
    "              --max-seq-len\n";

struct Args {
  loom::DataOptions data;
  std::string tokenizer, out, config;
  std::vector<std::string> overrides;
  int threads = 0;
};

// Past any machine's hardware threads; creating threads fails long before 2^30.
constexpr int kMaxThreads = 1024;

// An integer flag in [1, hi]. strtoll clamps what overflows to LLONG_MAX, which the range refuses.
int parse_int(const std::string& flag, const std::string& value, int hi) {
  char* end = nullptr;
  const long long v = std::strtoll(value.c_str(), &end, 10);
  LOOM_CHECK(!value.empty() && *end == '\0' && v >= 1 && v <= hi, flag, " must be an integer in [1, ", hi,
             "] (found \"", value.substr(0, 40), "\")");
  return int(v);
}

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> rest(argv + 1, argv + argc);
  if (!rest.empty() && rest[0].rfind("--", 0) != 0) {
    a.config = rest[0];
    a.overrides.assign(rest.begin() + 1, rest.end());
    return a;
  }
  for (size_t i = 0; i < rest.size(); ++i) {
    const std::string& flag = rest[i];
    if (flag == "--skip-bad-lines") {
      a.data.on_bad_line = loom::OnBadLine::kSkip;
      continue;
    }
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    static const std::vector<std::string> with_value = {"--data", "--tokenizer", "--out", "--template", "--format",
                                                        "--train-on", "--max-seq-len", "--max-prompt-len",
                                                        "--overlong", "--threads"};
    if (std::find(with_value.begin(), with_value.end(), flag) == with_value.end())
      loom::fail("unknown option ", flag.substr(0, 80), "\n", kUsage);
    LOOM_CHECK(i + 1 < rest.size(), flag, " needs a value\n", kUsage);
    const std::string& v = rest[++i];
    if (flag == "--data") a.data.path = v;
    else if (flag == "--tokenizer") a.tokenizer = v;
    else if (flag == "--out") a.out = v;
    else if (flag == "--template") a.data.template_name = v;
    else if (flag == "--format") a.data.format = loom::parse_choice<loom::DataFormat>(flag, v, loom::kDataFormatNames);
    else if (flag == "--train-on") a.data.train_on = loom::parse_choice<loom::TrainOn>(flag, v, loom::kTrainOnNames);
    else if (flag == "--max-seq-len") a.data.max_seq_len = parse_int(flag, v, loom::kMaxTokens);
    else if (flag == "--max-prompt-len") a.data.max_prompt_len = parse_int(flag, v, loom::kMaxTokens);
    else if (flag == "--overlong") a.data.overlong = loom::parse_choice<loom::Overlong>(flag, v, loom::kOverlongNames);
    else if (flag == "--threads") a.threads = parse_int(flag, v, kMaxThreads);
  }
  LOOM_CHECK(!a.data.path.empty() && !a.tokenizer.empty() && !a.out.empty(),
             "--data, --tokenizer and --out are required\n", kUsage);
  std::vector<std::string> templates = {"auto", "none"};
  for (const auto& n : loom::chat_template_names()) templates.push_back(n);
  loom::check_choice("--template", a.data.template_name, templates);
  loom::require_regular_file(a.data.path, "--data");
  loom::tokenizer_file(a.tokenizer, "--tokenizer");  // a folder without one is named by its flag too
  loom::require_folder_or_creatable(a.out, "--out");
  return a;
}

// The config form: the data section, its tokenizer (data.tokenizer, else model.path) and the
// cache folder build/train looks in.
void from_config(Args& a) {
  const loom::TrainConfig cfg = loom::load_config(a.config, a.overrides);
  a.data = cfg.data;
  LOOM_CHECK(!a.data.path.empty(), a.config, ": data.path is empty; set it to the JSONL file to prepare");
  loom::require_regular_file(a.data.path, "data.path");  // a folder is already prepared
  loom::check_data_paths(cfg);
  a.tokenizer = cfg.data.tokenizer.empty() ? cfg.model.path : cfg.data.tokenizer;
  LOOM_CHECK(!a.tokenizer.empty(), a.config, ": set data.tokenizer (the model is a preset, so there is no model.path)");
  loom::tokenizer_file(a.tokenizer, cfg.data.tokenizer.empty() ? "model.path (the tokenizer)" : "data.tokenizer");
  a.out = loom::data_cache_dir(cfg);
}

// Each flag of the flags form sets exactly one data key.
const std::vector<loom::FlagOfKey> kFlagOfKey = {
    {"data.path", "--data"},         {"data.tokenizer", "--tokenizer"},  {"data.template", "--template"},
    {"data.format", "--format"},     {"data.train_on", "--train-on"},    {"data.max_seq_len", "--max-seq-len"},
    {"data.max_prompt_len", "--max-prompt-len"}, {"data.overlong", "--overlong"},
    {"data.on_bad_line", "--skip-bad-lines"}};

loom::PrepareResult prepare(const Args& a, const loom::PrepareOptions& options) {
  if (!a.config.empty()) return loom::prepare_dataset_cached(a.data, a.tokenizer, a.out, options);
  try {
    return loom::prepare_to_dir(a.data, a.tokenizer, a.out, options);
  } catch (const loom::Error& e) {
    throw loom::Error(loom::in_flag_terms(e.what(), kFlagOfKey));
  }
}

int run(int argc, char** argv) {
  LOOM_CHECK(argc > 1, kUsage);
  Args a = parse_args(argc, argv);
  if (!a.config.empty()) from_config(a);

  loom::PrepareOptions options;
  options.threads = a.threads;
  const auto t0 = std::chrono::steady_clock::now();
  const loom::PrepareResult r = prepare(a, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "%s %s (%.1f s)\n%s", r.reused ? "up to date:" : "prepared", r.dir.c_str(), seconds,
               loom::format_stats(r.stats).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (...) {
    std::fprintf(stderr, "error: %s\n", loom::describe_current_exception().c_str());
    return 1;
  }
}
