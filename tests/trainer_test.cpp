// End-to-end runs of the trainer on the CPU reference path (tiny preset, synthetic data): exact
// resume (also from a damaged run with output.resume=last_intact, and from a checkpoint of the
// format before checksums), what a run does with the leftovers of a killed one, and a diverging
// run stopped with its step, figure and checkpoint. tests/hostile_checkpoint_test.cpp tampers.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "engine/checkpoint.h"
#include "engine/config.h"
#include "engine/schedule.h"
#include "ops/error.h"
#include "engine/trainer.h"
#include "engine/training_data.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/safetensors.h"
#include "tests/test_util.h"

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

std::string fresh_dir(const std::string& name) { return test::fresh_temp_dir("trainer_test_" + name); }

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

std::vector<int> logged_steps(const std::string& run) {
  std::vector<int> steps;
  std::ifstream f(run + "/metrics.jsonl");
  for (std::string l; std::getline(f, l);) steps.push_back(nlohmann::json::parse(l).at("step").get<int>());
  return steps;
}

void copy_checkpoint(const std::string& from_run, const std::string& to_run, const std::string& name) {
  fs::create_directories(to_run + "/checkpoints");
  fs::copy(from_run + "/checkpoints/" + name, to_run + "/checkpoints/" + name, fs::copy_options::recursive);
}

std::string error_of(const TrainConfig& cfg) {
  try {
    train(cfg);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A run killed after logging step 6 whose step-6 checkpoint was then damaged: auto refuses it,
// last_intact goes back to step 3, and the result is bit for bit the uninterrupted run's.
TEST(Trainer, LastIntactSkipsADamagedCheckpointAndResumesExactly) {
  const std::string a = fresh_dir("intact_full"), b = fresh_dir("intact_damaged");
  train(tiny_run(a));
  copy_checkpoint(a, b, "step-000003");
  copy_checkpoint(a, b, "step-000006");
  fs::copy_file(a + "/metrics.jsonl", b + "/metrics.jsonl");
  const std::string damaged = b + "/checkpoints/step-000006/optimizer.safetensors";
  {
    std::fstream f(damaged, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.put('\x7f');
  }
  const std::string refused = error_of(tiny_run(b));
  EXPECT_NE(refused.find(damaged + ": its contents differ from checksums.json"), std::string::npos) << refused;
  EXPECT_NE(refused.find("output.resume=last_intact"), std::string::npos) << refused;

  TrainSummary sb = train(tiny_run(b, {"output.resume=last_intact"}));
  EXPECT_EQ(sb.first_step, 3);
  EXPECT_EQ(sb.last_loss, train(tiny_run(fresh_dir("intact_again"))).last_loss);
  EXPECT_EQ(adapter_of(b), adapter_of(a));
  EXPECT_EQ(logged_steps(b), (std::vector<int>{1, 2, 3, 4, 5, 6})) << "steps 4-6 of the killed run are replaced";
  EXPECT_EQ(error_of(tiny_run(b)), "") << "step 6 was saved again, whole";
}

// A checkpoint of the format before checksums (no checksums.json, no "checkpoint_format") resumes
// with a warning, exactly.
TEST(Trainer, CheckpointWithoutChecksumsFromAnOlderLoomResumesExactly) {
  const std::string a = fresh_dir("format1_full"), b = fresh_dir("format1_resumed");
  train(tiny_run(a));
  copy_checkpoint(a, b, "step-000003");
  const std::string ck = b + "/checkpoints/step-000003";
  fs::remove(ck + "/checksums.json");
  nlohmann::json state = nlohmann::json::parse(std::ifstream(ck + "/trainer_state.json"));
  state.erase("checkpoint_format");
  std::ofstream(ck + "/trainer_state.json") << state.dump(2);
  TrainSummary sb = train(tiny_run(b));
  EXPECT_EQ(sb.first_step, 3);
  EXPECT_EQ(adapter_of(b), adapter_of(a));
}

// Killed after step 2 before any checkpoint, and mid-save: the rerun starts metrics.jsonl anew
// (step 1 once, not twice) and deletes the unfinished save.
TEST(Trainer, FreshStartAfterAKillStartsTheLogAnewAndDropsUnfinishedSaves) {
  const std::string d = fresh_dir("after_kill");
  fs::create_directories(d + "/checkpoints/.step-000003.tmp/adapter");
  std::ofstream(d + "/checkpoints/.step-000003.tmp/adapter/adapter_model.safetensors") << "half";
  std::ofstream(d + "/metrics.jsonl") << "{\"step\":1,\"loss\":6.9}\n{\"step\":2,\"loss\":6.8}\n{\"step\":3,";
  train(tiny_run(d));
  EXPECT_EQ(logged_steps(d), (std::vector<int>{1, 2, 3, 4, 5, 6}));
  EXPECT_FALSE(fs::exists(d + "/checkpoints/.step-000003.tmp"));
  EXPECT_TRUE(fs::exists(d + "/checkpoints/step-000003/checksums.json"));
}

// The demo model and data with a LoRA scale of 65536 and lr 1 (each within its range) saturate:
// the loss freezes at ln V and the gradient norm is exactly 0, as train.lr=1e6 did before ranges.
TEST(Trainer, DeadGradientStopsTheRunNamingStepFigureAndCheckpointFromBefore) {
  const std::string d = fresh_dir("dead_gradient");
  TrainConfig cfg = tiny_run(d, {"data.synthetic=", "data.path=data/demo/chats.jsonl",
                                 "data.tokenizer=data/demo/tokenizer.model", "data.template=mistral",
                                 "data.max_seq_len=128", "train.token_budget=1024", "train.global_batch=8",
                                 "train.steps=30", "train.warmup_steps=0", "train.lr=1", "train.max_grad_norm=0",
                                 "lora.r=1", "lora.alpha=65536", "output.checkpoint_every=1",
                                 "output.keep_checkpoints=30"});
  const std::string msg = error_of(cfg);
  ASSERT_NE(msg.find("the gradient norm has been exactly 0 for 3 steps in a row"), std::string::npos) << msg;
  const int stopped = std::stoi(msg.substr(msg.find("step ") + 5));
  EXPECT_LT(stopped, 30);
  // The step before the first zero is the last whose weights gave sane figures: stopped - 2 - 1.
  const std::string before = cat(d, "/checkpoints/step-", std::string(6 - std::to_string(stopped - 4).size(), '0'),
                                 stopped - 4);
  EXPECT_NE(msg.find("rerun with output.resume=" + before + " (later checkpoints hold the weights that went wrong)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("train.lr"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(cat(d, "/checkpoints/step-", std::string(6 - std::to_string(stopped).size(), '0'), stopped)))
      << "the stopped step is not saved";
  EXPECT_FALSE(fs::exists(d + "/adapter")) << "nothing is exported from a diverged run";
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

std::string text_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Rerunning a run folder with another train.lr is refused before anything loads, naming the change
// and both ways on; the folder is left as it was.
TEST(Trainer, ChangedLrIsRefusedListingTheChangeAndBothWaysOn) {
  const std::string d = fresh_dir("changed_lr");
  train(tiny_run(d, {"train.steps=3", "train.lr=0.0002"}));
  const std::string record = text_of(d + "/config.resolved.yaml");
  const std::string msg = error_of(tiny_run(d, {"train.steps=3", "train.lr=0.001"}));
  EXPECT_NE(msg.find("\n  train.lr: 0.0002 -> 0.001\n"), std::string::npos) << msg;
  EXPECT_NE(msg.find("choose another output.dir"), std::string::npos) << msg;
  EXPECT_NE(msg.find("add output.on_change=accept"), std::string::npos) << msg;
  EXPECT_EQ(text_of(d + "/config.resolved.yaml"), record);
  EXPECT_EQ(logged_steps(d), (std::vector<int>{1, 2, 3}));
}

// A run rerun as it was, complete: nothing trains, and the summary says so with the logged loss.
TEST(Trainer, CompleteRunTrainsNothingAndSaysItIsComplete) {
  const std::string d = fresh_dir("complete");
  const TrainSummary first = train(tiny_run(d, {"train.steps=3"}));
  const TrainSummary again = train(tiny_run(d, {"train.steps=3"}));
  EXPECT_TRUE(again.complete);
  EXPECT_EQ(again.first_step, 3);
  EXPECT_EQ(again.last_step, 3);
  ASSERT_TRUE(again.final_loss.has_value());
  EXPECT_EQ(*again.final_loss, first.last_loss) << "metrics.jsonl writes doubles that read back exactly";
  EXPECT_EQ(completion_note(again).find(cat("run folder ", d, " is complete (3 of 3 steps, final loss ")), 0u)
      << completion_note(again);
  EXPECT_EQ(logged_steps(d), (std::vector<int>{1, 2, 3}));
}

// Extending train.steps with output.on_change=accept continues from the last checkpoint, says what
// the schedule does at the step it continues with, and keeps the old record beside the new one.
TEST(Trainer, AcceptedStepsExtensionContinuesAndSaysWhatTheScheduleDoes) {
  const std::string d = fresh_dir("extended");
  const TrainConfig was = tiny_run(d, {"train.steps=3"});
  train(was);
  const TrainConfig now = tiny_run(d, {"train.steps=6", "output.on_change=accept"});
  testing::internal::CaptureStderr();
  const TrainSummary s = train(now);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(s.first_step, 3);
  EXPECT_EQ(s.last_step, 6);
  EXPECT_NE(err.find("\n  train.steps: 3 -> 6\n"), std::string::npos) << err;
  EXPECT_NE(err.find(cat("the cosine schedule is recomputed for 6 steps (was 3-step cosine): the lr of step 4 jumps "
                         "from ", lr_at(was.train, 3, 3), " to ", lr_at(now.train, 3, 6))),
            std::string::npos)
      << err;
  EXPECT_EQ(load_config(d + "/config.resolved.step-3.yaml").train.steps, 3);
  EXPECT_EQ(load_config(d + "/config.resolved.yaml").train.steps, 6);
  EXPECT_EQ(logged_steps(d), (std::vector<int>{1, 2, 3, 4, 5, 6}));
}

// Keys that do not change what is trained (logging, checkpoints kept, device, the run folder's
// name) may change on resume: it continues exactly, and the record stays the one it started with.
TEST(Trainer, ResumeWithOnlyLoggingAndSavingChangedContinuesExactly) {
  const std::string a = fresh_dir("allowed_full"), b = fresh_dir("allowed_resumed");
  train(tiny_run(a));
  copy_checkpoint(a, b, "step-000003");
  fs::copy_file(a + "/config.resolved.yaml", b + "/config.resolved.yaml");
  const TrainSummary sb = train(tiny_run(b, {"train.log_every=2", "output.keep_checkpoints=5", "train.device=cpu"}));
  EXPECT_EQ(sb.first_step, 3);
  EXPECT_EQ(adapter_of(b), adapter_of(a));
  EXPECT_EQ(text_of(b + "/config.resolved.yaml"), text_of(a + "/config.resolved.yaml"));
}

TEST(TrainingData, LoaderOptionsComeFromTheTrainSection) {
  TrainSection train;
  train.token_budget = 8192;
  train.global_batch = 64;
  train.seed = 7;
  const LoaderOptions o = loader_options(train, 2, 4);
  EXPECT_EQ(o.token_budget, 8192);
  EXPECT_EQ(o.global_batch, 64);
  EXPECT_EQ(o.seed, 7u);
  EXPECT_EQ(o.rank, 2);
  EXPECT_EQ(o.world, 4);
}

}  // namespace
}  // namespace loom
