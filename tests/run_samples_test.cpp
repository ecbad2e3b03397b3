// engine/run_samples: what train.sample_every asks of a backend's generation (the GPU plans its KV
// cache by it before the model is built), from prompts given as ids (no tokenizer needed).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "engine/run_samples.h"
#include "tests/test_util.h"

namespace loom {
namespace {

TrainConfig sampling_config(const std::string& prompts_file, int every) {
  TrainConfig c;
  c.train.sample_every = every;
  c.train.sample_prompts = {prompts_file};
  c.train.sample_max_new_tokens = 7;
  c.output.dir = test::fresh_temp_dir("run_samples_test");
  return c;
}

// Ten prompts of 1..10 tokens, generated 8 at a time (GenerationOptions' batch): the cache holds 8
// sequences of the longest prompt + 7 new tokens; the larger prefill is the first batch's 1 + ... + 8.
TEST(RunSamples, DecodeShapeCoversEveryBatchOfPrompts) {
  const std::string dir = test::fresh_temp_dir("run_samples_prompts");
  std::filesystem::create_directories(dir);
  const std::string file = dir + "/prompts.jsonl";
  {
    std::ofstream f(file);
    for (int n = 1; n <= 10; ++n) {
      std::string ids;
      for (int i = 0; i < n; ++i) ids += (i ? ", " : "") + std::to_string(3 + i);
      f << "{\"ids\": [" << ids << "]}\n";
    }
  }
  const DecodeShape s = RunSamples(sampling_config(file, 5), 100, {2}).decode_shape();
  EXPECT_EQ(s.batch, 8);
  EXPECT_EQ(s.context, 10 + 7);
  EXPECT_EQ(s.prefill_tokens, 36);
  const DecodeShape off = RunSamples(sampling_config(file, 0), 100, {2}).decode_shape();
  EXPECT_EQ(off.batch, 0);
  EXPECT_EQ(off.context, 0);
  EXPECT_EQ(off.prefill_tokens, 0);
}

}  // namespace
}  // namespace loom
