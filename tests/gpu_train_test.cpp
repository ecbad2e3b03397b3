// build/train end to end, as a user runs it: an HF fixture model (tests/fixtures/hf/qwen3: q/k
// norm, tied embeddings; NF4) on synthetic data for 6 steps with a checkpoint every 3, then the same
// run resumed from its step-3 checkpoint must end bit for bit where the straight run ended: the
// same checkpoint files, the same exported adapter, the same loss and grad norm at steps 4 to 6.
// On the GPU (skips without one) and, so that CI checks the same flow, on the CPU reference path.
// Bitwise holds on the GPU because every reduction of a step runs in a fixed order, with one
// exception kept out of the way here: attention's backward adds each 64-key tile's share of dq with
// fp32 atomics, which is order-independent only for at most two shares (a + b = b + a), so the
// micro-batches stay within 128 tokens (train.token_budget=128).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "tests/hostile.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

const std::vector<std::string> kRun = {
    "model.quant=nf4",          "data.synthetic=sft-alpaca", "data.synthetic_docs=24", "data.max_seq_len=48",
    "train.token_budget=128",   "train.global_batch=4",      "train.steps=6",          "train.lr=1e-2",
    "train.warmup_steps=2",     "lora.r=4",                  "output.checkpoint_every=3"};

std::string fresh_dir(const std::string& name) { return test::fresh_temp_dir("gpu_train_test_" + name); }

// build/train on the fixture into dir; every setting comes from the overrides.
test::ProgramResult train(const std::string& device, const std::string& dir) {
  const std::string cfg = dir + ".yaml";
  std::ofstream(cfg) << "# gpu_train_test: every setting is an override\n";
  std::vector<std::string> argv = {"build/train", cfg, "model.path=" + test::fixtures_dir() + "/hf/qwen3/model"};
  argv.insert(argv.end(), kRun.begin(), kRun.end());
  argv.push_back("train.device=" + device);
  argv.push_back("output.dir=" + dir);
  return test::run_program(argv, "", 300);
}

std::string describe(const test::ProgramResult& r) {
  return cat("exit ", r.exit_code, ", signal ", r.signal, r.timed_out ? ", timed out" : "", "\nstderr:\n", r.err,
             "\nstdout:\n", r.out);
}

// Every regular file under dir, by path relative to dir.
std::map<std::string, std::string> files_under(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[fs::relative(e.path(), dir).string()] = test::read_bytes(e.path().string());
  return files;
}

// The same files with the same bytes; failures name the file.
void expect_same_files(const fs::path& straight, const fs::path& resumed) {
  ASSERT_TRUE(fs::is_directory(straight)) << straight;
  ASSERT_TRUE(fs::is_directory(resumed)) << resumed;
  const auto a = files_under(straight), b = files_under(resumed);
  for (const auto& [name, bytes] : a) {
    const auto it = b.find(name);
    if (it == b.end()) {
      ADD_FAILURE() << resumed / name << " is missing";
      continue;
    }
    EXPECT_TRUE(it->second == bytes) << resumed / name << " differs from " << straight / name << " (" << it->second.size()
                                     << " vs " << bytes.size() << " bytes)";
  }
  for (const auto& [name, bytes] : b) EXPECT_TRUE(a.count(name)) << resumed / name << " is extra";
  std::printf("%s: %zu files compared bit for bit\n", resumed.string().c_str(), a.size());
}

// step -> the step's metrics.jsonl record.
std::map<int64_t, nlohmann::json> metrics_by_step(const std::string& run) {
  std::map<int64_t, nlohmann::json> steps;
  std::ifstream f(run + "/metrics.jsonl");
  for (std::string l; std::getline(f, l);) {
    nlohmann::json j = nlohmann::json::parse(l);
    steps[j.at("step").get<int64_t>()] = j;
  }
  return steps;
}

void expect_resume_is_bitwise(const std::string& device) {
  const std::string straight = fresh_dir(device + "_straight"), resumed = fresh_dir(device + "_resumed");
  const test::ProgramResult a = train(device, straight);
  ASSERT_EQ(a.exit_code, 0) << describe(a);
  const std::string step3 = "/checkpoints/step-000003", step6 = "/checkpoints/step-000006";
  ASSERT_TRUE(fs::is_directory(straight + step3)) << describe(a);
  fs::create_directories(resumed + "/checkpoints");
  fs::copy(straight + step3, resumed + step3, fs::copy_options::recursive);
  const test::ProgramResult b = train(device, resumed);
  ASSERT_EQ(b.exit_code, 0) << describe(b);

  expect_same_files(straight + step6, resumed + step6);
  expect_same_files(straight + "/adapter", resumed + "/adapter");
  const auto want = metrics_by_step(straight), got = metrics_by_step(resumed);
  ASSERT_EQ(want.size(), 6u) << describe(a);
  for (int64_t step = 4; step <= 6; ++step) {
    ASSERT_TRUE(got.count(step)) << "the resumed run logged no step " << step << "\n" << describe(b);
    for (const char* key : {"loss", "grad_norm", "lr"}) {
      EXPECT_EQ(got.at(step).at(key), want.at(step).at(key)) << "step " << step << " " << key;
      std::printf("[%s] step %lld %s: straight %s, resumed %s\n", device.c_str(), static_cast<long long>(step), key,
                  want.at(step).at(key).dump().c_str(), got.at(step).at(key).dump().c_str());
    }
  }
  EXPECT_EQ(got.begin()->first, 4) << "the resumed run logged steps before its checkpoint";
}

// make test builds build/train before the tests run: a missing binary is a failure, not a skip.
const char* const kNotBuilt = "build/train is not built (make all)";

TEST(GpuTrain, ResumeFromCheckpointIsBitwiseTheStraightRun) {
  REQUIRE_GPU();
  ASSERT_TRUE(fs::exists("build/train")) << kNotBuilt;
  expect_resume_is_bitwise("cuda");
}

TEST(TrainBinary, ResumeFromCheckpointIsBitwiseTheStraightRunOnCpu) {
  ASSERT_TRUE(fs::exists("build/train")) << kNotBuilt;
  expect_resume_is_bitwise("cpu");
}

}  // namespace
}  // namespace loom
