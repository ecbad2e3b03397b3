// End-to-end runs of the trainer on the CPU reference path (tiny preset, synthetic data).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/checkpoint.h"
#include "engine/config.h"
#include "ops/error.h"
#include "engine/trainer.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/safetensors.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

TrainConfig tiny_run(const std::string& dir, std::vector<std::string> extra = {}) {
  std::vector<std::string> o = {"model.preset=tiny", "model.quant=nf4", "data.synthetic=sft-alpaca",
                                "data.synthetic_docs=24", "data.max_seq_len=48", "train.token_budget=128",
                                "train.global_batch=4", "train.steps=6", "train.lr=1e-2", "train.warmup_steps=2",
                                "train.device=cpu", "lora.r=4", "output.checkpoint_every=3",
                                "output.dir=" + dir};
  o.insert(o.end(), extra.begin(), extra.end());
  return parse_config("", "test", o);
}

std::string fresh_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("loom_trainer_test_" + name);
  fs::remove_all(p);
  return p.string();
}

std::vector<float> adapter_of(const std::string& run) {
  TrainConfig c = tiny_run(run);
  ModelConfig m = preset_model_config("tiny");
  return load_peft_adapter(run + "/adapter", make_lora_layout(m, c.lora));
}

// Stopping after step 3 and resuming from its checkpoint trains exactly what an uninterrupted run trains.
TEST(Trainer, ResumeFromCheckpointEqualsUninterruptedRun) {
  const std::string a = fresh_dir("full"), b = fresh_dir("resumed");
  TrainSummary sa = train(tiny_run(a));
  EXPECT_EQ(sa.last_step, 6);
  ASSERT_TRUE(fs::exists(a + "/checkpoints/step-000003"));
  fs::create_directories(b + "/checkpoints");
  fs::copy(a + "/checkpoints/step-000003", b + "/checkpoints/step-000003", fs::copy_options::recursive);
  TrainSummary sb = train(tiny_run(b));
  EXPECT_EQ(sb.first_step, 3);
  EXPECT_EQ(sb.last_step, 6);
  EXPECT_EQ(sb.last_loss, sa.last_loss);
  EXPECT_EQ(adapter_of(b), adapter_of(a));
}

TEST(Trainer, WritesMetricsResolvedConfigAndAdapter) {
  const std::string d = fresh_dir("outputs");
  train(tiny_run(d));
  std::ifstream f(d + "/metrics.jsonl");
  int lines = 0;
  for (std::string l; std::getline(f, l);) ++lines;
  EXPECT_EQ(lines, 6);
  EXPECT_TRUE(fs::exists(d + "/config.resolved.yaml"));
  EXPECT_TRUE(fs::exists(d + "/adapter/adapter_config.json"));
  // The resolved config reproduces the run's config.
  TrainConfig back = load_config(d + "/config.resolved.yaml");
  EXPECT_EQ(to_yaml(back), to_yaml(tiny_run(d)));
}

TEST(Trainer, RefusesToOverwriteCheckpointsWhenResumeIsNever) {
  const std::string d = fresh_dir("never");
  train(tiny_run(d));
  try {
    train(tiny_run(d, {"output.resume=never"}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already holds checkpoints"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(d + "/checkpoints/step-000006/adapter/adapter_model.safetensors"));
}

}  // namespace
}  // namespace loom
