// libFuzzer target: the input is a JSONL dataset (data.path). Builds its documents as
// build/prepare does, with a real tokenizer and the data settings drawn from the input's last
// bytes (format, template, train_on, overlong, on_bad_line, max_seq_len, max_prompt_len), so one
// corpus covers them.
//
// The tokenizer is the file LOOM_FUZZ_TOKENIZER names; tests/fuzz/run.sh gives it the seed
// corpus's shrunk Qwen3 tokenizer (its merges, pre-tokenizer and special tokens, a 1,000-token
// vocabulary), many times faster per input than the full one.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

std::unique_ptr<loom::Tokenizer> g_tokenizer;

template <size_t N>
std::string pick(FuzzedDataProvider& in, const char* const (&options)[N]) {
  return options[in.ConsumeIntegralInRange<size_t>(0, N - 1)];
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* env = std::getenv("LOOM_FUZZ_TOKENIZER");
  if (!env) {
    std::fprintf(stderr, "jsonl_fuzz: set LOOM_FUZZ_TOKENIZER to a tokenizer.json (tests/fuzz/run.sh does)\n");
    std::exit(1);
  }
  const std::string path = env;
  try {
    g_tokenizer = loom::Tokenizer::load(path);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "jsonl_fuzz: cannot load the tokenizer %s: %s\n", path.c_str(), e.what());
    std::exit(1);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  static const char* const templates[] = {"chatml", "qwen3", "llama3", "llama3.1", "mistral", "llama2", "none"};
  loom::DataOptions section;
  section.format = loom::DataFormat(in.ConsumeIntegralInRange<size_t>(0, loom::kDataFormatNames.size() - 1));
  section.template_name = pick(in, templates);
  section.train_on = in.ConsumeBool() ? loom::TrainOn::kResponses : loom::TrainOn::kAll;
  section.overlong = in.ConsumeBool() ? loom::Overlong::kTruncate : loom::Overlong::kDrop;
  section.on_bad_line = in.ConsumeBool() ? loom::OnBadLine::kError : loom::OnBadLine::kSkip;
  section.max_seq_len = in.ConsumeIntegralInRange<int>(1, 4096);
  section.max_prompt_len = in.ConsumeIntegralInRange<int>(0, 4096);
  const std::vector<uint8_t> file = in.ConsumeRemainingBytes<uint8_t>();
  section.path = loom::fuzz::write_scratch("data.jsonl", file.data(), file.size());

  loom::fuzz::expect_clean([&] {
    std::optional<loom::ChatTemplate> tmpl;
    if (section.template_name != "none") tmpl = loom::chat_template_by_name(section.template_name);
    loom::BuildOptions options;
    options.threads = 1;
    const loom::BuiltDataset built = loom::build_documents(section, *g_tokenizer, tmpl ? &*tmpl : nullptr, options);
    // dataset.h's promises about every kept document: each of its sequences (a pair has two)
    // within max_seq_len with a target.
    for (const loom::Document& d : built.docs) {
      bool ok = d.mask.size() == d.ids.size() && (d.segments.empty() || d.segments.size() == 2);
      int64_t start = 0;
      for (int32_t len : ok ? loom::sequence_lengths(d) : std::vector<int32_t>{}) {
        ok = ok && len >= 1 && len <= section.max_seq_len && start + len <= int64_t(d.ids.size()) &&
             std::find(d.mask.begin() + start + 1, d.mask.begin() + start + len, 1) != d.mask.begin() + start + len;
        start += len;
      }
      if (!ok || start != int64_t(d.ids.size()))
        loom::fuzz::finding("a kept document has a mask not as long as its ids, a sequence of more than "
                            "max_seq_len tokens, or one without a target");
    }
    (void)loom::format_stats(built.stats);
  });
  return 0;
}
