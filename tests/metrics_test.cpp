// engine/metrics: the metrics.jsonl line, append-on-resume, and the progress line format.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "ops/error.h"
#include "engine/metrics.h"
#include "tests/test_util.h"

namespace loom {
namespace {

StepMetrics sample() {
  StepMetrics m;
  m.step = 12;
  m.loss = 2.34561;
  m.lr = 1.9e-4;
  m.grad_norm = 0.8712;
  m.tokens = 16000;
  m.targets = 9000;
  m.tokens_per_s = 12345.4;
  m.elapsed_s = 62.0 * 12 / 88;  // 12 steps done, 88 left: eta 62 s
  return m;
}

// A fresh folder under gtest's temp dir, removed when the test ends.
struct TempRunDir {
  std::string path;
  explicit TempRunDir(const std::string& name) : path(testing::TempDir() + "loom_metrics_" + name) {
    std::filesystem::remove_all(path);
  }
  ~TempRunDir() { std::filesystem::remove_all(path); }
};

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(Metrics, JsonLineRoundTripsThroughNlohmann) {
  nlohmann::json j = nlohmann::json::parse(metrics_json(sample()));
  EXPECT_EQ(j.at("step").get<int>(), 12);
  EXPECT_EQ(j.at("loss").get<double>(), 2.34561);
  EXPECT_EQ(j.at("lr").get<double>(), 1.9e-4);
  EXPECT_EQ(j.at("grad_norm").get<double>(), 0.8712);
  EXPECT_EQ(j.at("tokens").get<int64_t>(), 16000);
  EXPECT_EQ(j.at("targets").get<int64_t>(), 9000);
  EXPECT_EQ(j.at("tokens_per_s").get<double>(), 12345.4);
  EXPECT_EQ(j.at("elapsed_s").get<double>(), 62.0 * 12 / 88);
  EXPECT_EQ(j.size(), 8u) << "unset optional keys are omitted: " << j.dump();
  EXPECT_FALSE(j.contains("start_step"));
}

TEST(Metrics, OptionalKeysAppearWhenMeasured) {
  StepMetrics m = sample();
  m.mfu = 0.481;
  m.peak_mem_gib = 4.2;
  m.pad_saved = 0.418;
  nlohmann::json j = nlohmann::json::parse(metrics_json(m));
  EXPECT_EQ(j.at("mfu").get<double>(), 0.481);
  EXPECT_EQ(j.at("peak_mem_gib").get<double>(), 4.2);
  EXPECT_EQ(j.at("pad_saved").get<double>(), 0.418);
  EXPECT_EQ(j.size(), 11u);
}

TEST(Metrics, NonFiniteLossIsWrittenAsNull) {
  StepMetrics m = sample();
  m.loss = std::nan("");
  m.grad_norm = INFINITY;
  nlohmann::json j = nlohmann::json::parse(metrics_json(m));
  EXPECT_TRUE(j.at("loss").is_null());
  EXPECT_TRUE(j.at("grad_norm").is_null());
}

TEST(Metrics, LogAppendsOneLinePerStepAndKeepsEarlierLines) {
  TempRunDir dir("append");
  StepMetrics m = sample();
  {
    MetricsLog log(dir.path + "/run");
    for (m.step = 1; m.step <= 2; ++m.step) log.write(m);
    EXPECT_EQ(lines_of(log.path()).size(), 2u) << "each write is flushed at once";
  }
  {
    MetricsLog resumed(dir.path + "/run");
    m.step = 3;
    resumed.write(m);
  }
  std::vector<std::string> lines = lines_of(dir.path + "/run/metrics.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  for (size_t i = 0; i < lines.size(); ++i)
    EXPECT_EQ(nlohmann::json::parse(lines[i]).at("step").get<int>(), int(i) + 1) << lines[i];
}

TEST(Metrics, UnusableRunFolderIsAnErrorNamingIt) {
  TempRunDir dir("blocked");
  std::ofstream(dir.path) << "a file where the run folder should be";
  try {
    MetricsLog log(dir.path + "/run");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(dir.path + "/run"), std::string::npos) << msg;
    EXPECT_NE(msg.find("check output.dir"), std::string::npos) << msg;
  }
}

TEST(Metrics, ProgressLineFormat) {
  StepMetrics m = sample();
  m.peak_mem_gib = 4.2;
  EXPECT_EQ(progress_line(m, 100),
            "step 12/100 | loss 2.3456 | lr 1.90e-04 | grad 0.87 | 12,345 tok/s | 4.2 GiB | eta 1m02s");
}

TEST(Metrics, ProgressLineShowsMfuAndOmitsUnmeasuredMemory) {
  StepMetrics m = sample();
  m.mfu = 0.4812;
  m.tokens_per_s = 1234567.5;
  EXPECT_EQ(progress_line(m, 100),
            "step 12/100 | loss 2.3456 | lr 1.90e-04 | grad 0.87 | 1,234,568 tok/s | mfu 48.1% | eta 1m02s");
}

std::string eta_field(const StepMetrics& m, int total_steps) {
  std::string line = progress_line(m, total_steps);
  return line.substr(line.rfind("| ") + 2);
}

TEST(Metrics, EtaCountsOnlyStepsTimedInThisProcess) {
  StepMetrics m = sample();
  m.start_step = 50;  // resumed at step 50; one step since, in 10 s
  m.step = 51;
  m.elapsed_s = 10;
  EXPECT_EQ(eta_field(m, 800), "eta 2h04m");
  m.step = 800;
  EXPECT_EQ(eta_field(m, 800), "eta 0s");
  m.step = 50;
  EXPECT_EQ(eta_field(m, 800), "eta --");
}

}  // namespace
}  // namespace loom
