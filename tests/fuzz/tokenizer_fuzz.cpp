// libFuzzer target: the input is an HF tokenizer.json. Loads it as every program does and, when
// it loads, encodes and decodes a fixed set of texts (plain, special-token strings, unicode,
// invalid UTF-8) and decodes ids at and past both ends of its vocabulary.
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace std::string_literals;  // "..."s keeps the NUL and invalid bytes below

const std::vector<std::string>& sample_texts() {
  static const std::vector<std::string> texts = {
      "",
      "Hello, world! It's 2024; 12345 tokens.",
      "  leading and trailing spaces  \n\n\ttabs\r\n",
      "<|im_start|>user\nhi<|im_end|>\n<|begin_of_text|><s>[INST] q [/INST]a</s><unk>",
      "naïve café Ωμέγα 漢字かな 한국어 👩‍👩‍👧 \u00a0\u200b",
      "bad utf-8: \xff\xfe\xc3 \xe2\x82 \xf0\x9f\x98"s,
      "nul \0 inside"s,
  };
  return texts;
}

void exercise(const loom::Tokenizer& tok) {
  for (const std::string& text : sample_texts()) {
    std::vector<size_t> starts;
    const std::vector<int32_t> ids = tok.encode_with_offsets(text, &starts);
    if (starts.size() != ids.size())
      loom::fuzz::finding("encode_with_offsets gave " + std::to_string(starts.size()) + " starts for " +
                          std::to_string(ids.size()) + " tokens");
    tok.decode(tok.encode(text, /*add_special_tokens=*/true));
    tok.decode(ids);
  }
  const int32_t v = tok.vocab_size();
  for (int32_t id : {0, v - 1, -1, v}) loom::fuzz::expect_clean([&] { tok.decode({id}); });
  tok.token_to_id("<|im_end|>");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = loom::fuzz::write_scratch("tokenizer.json", data, size);
  loom::fuzz::expect_clean([&] { exercise(*loom::Tokenizer::load(path)); });
  return 0;
}
