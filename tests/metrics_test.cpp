// engine/metrics: the metrics.jsonl line, append-on-resume, cutting the log back when a run
// starts (garbage lines included), and the progress line format.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

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

// metrics.jsonl with one line per step in `steps`, each tagged with `run` to tell attempts apart.
std::string step_lines(std::vector<int> steps, const std::string& run) {
  std::string text;
  for (int s : steps) text += "{\"step\":" + std::to_string(s) + ",\"loss\":1.5,\"run\":\"" + run + "\"}\n";
  return text;
}

std::vector<std::pair<int, std::string>> steps_and_runs(const std::string& path) {
  std::vector<std::pair<int, std::string>> out;
  for (const std::string& line : lines_of(path)) {
    nlohmann::json j = nlohmann::json::parse(line);
    out.emplace_back(j.at("step").get<int>(), j.at("run").get<std::string>());
  }
  return out;
}

using StepRuns = std::vector<std::pair<int, std::string>>;

TEST(Metrics, TruncateKeepsStepsUpToTheResumedOne) {
  TempRunDir dir("cut");
  std::filesystem::create_directories(dir.path);
  std::ofstream(dir.path + "/metrics.jsonl") << step_lines({1, 2, 3, 4, 5}, "a");
  const MetricsCut cut = truncate_metrics_after(dir.path, 3);
  EXPECT_EQ(cut.kept, 3);
  EXPECT_EQ(cut.later, 2);
  EXPECT_TRUE(cut.bad_lines.empty());
  EXPECT_EQ(steps_and_runs(dir.path + "/metrics.jsonl"), (StepRuns{{1, "a"}, {2, "a"}, {3, "a"}}));
}

TEST(Metrics, TruncateToZeroStartsTheLogAnew) {
  TempRunDir dir("anew");
  std::filesystem::create_directories(dir.path);
  std::ofstream(dir.path + "/metrics.jsonl") << step_lines({1, 2}, "killed");
  const MetricsCut cut = truncate_metrics_after(dir.path, 0);
  EXPECT_EQ(cut.kept, 0);
  EXPECT_EQ(cut.later, 2);
  EXPECT_TRUE(lines_of(dir.path + "/metrics.jsonl").empty());
}

TEST(Metrics, TruncateLeavesAMissingLogMissing) {
  TempRunDir dir("missing");
  std::filesystem::create_directories(dir.path);
  EXPECT_EQ(truncate_metrics_after(dir.path, 4).kept, 0);
  EXPECT_FALSE(std::filesystem::exists(dir.path + "/metrics.jsonl"));
}

// The log of an older loom that appended a fresh start to a killed attempt: the later line of a
// step wins, and the earlier attempt's lines from that step on go.
TEST(Metrics, TruncateKeepsTheLastAttemptOfRepeatedSteps) {
  TempRunDir dir("repeat");
  std::filesystem::create_directories(dir.path);
  std::ofstream(dir.path + "/metrics.jsonl") << step_lines({1, 2, 3, 4, 5}, "killed") + step_lines({1, 2, 3, 4}, "b");
  const MetricsCut cut = truncate_metrics_after(dir.path, 3);
  EXPECT_EQ(steps_and_runs(dir.path + "/metrics.jsonl"), (StepRuns{{1, "b"}, {2, "b"}, {3, "b"}}));
  EXPECT_EQ(cut.later, 6);  // killed 4, 5 (after step 3), killed 1..3 (superseded), b 4 (after step 3)
}

// Every kind of line that is not a step record is dropped and reported by its number; none crashes.
TEST(Metrics, TruncateDropsLinesThatAreNotStepRecords) {
  const std::vector<std::string> garbage = {
      "not json",
      "{\"step\":\"2\",\"loss\":1}",          // a string where the number belongs
      "{\"step\":2.5}",                          // not an integer
      "{\"step\":null}",
      "{\"loss\":1.5}",                           // no step
      "{\"step\":0}",                             // steps count from 1
      "{\"step\":-4}",
      "{\"step\":1e400}",                         // out of double range
      "{\"step\":18446744073709551615}",          // past int64
      "[1, 2]",
      "",
      std::string("\x00\xff\xfe", 3),
      std::string(100000, '[') + std::string(100000, ']'),  // past kMaxJsonDepth
      "{\"step\":2,\"loss\":1.5",                 // torn by a kill mid-write
  };
  TempRunDir dir("garbage");
  std::filesystem::create_directories(dir.path);
  std::string text = step_lines({1}, "a");
  for (const std::string& g : garbage) text += g + "\n";
  text += step_lines({2, 3}, "a");
  std::ofstream(dir.path + "/metrics.jsonl", std::ios::binary) << text;
  const MetricsCut cut = truncate_metrics_after(dir.path, 3);
  std::vector<int64_t> want;
  for (size_t i = 0; i < garbage.size(); ++i) want.push_back(int64_t(i) + 2);
  EXPECT_EQ(cut.bad_lines, want);
  EXPECT_EQ(cut.kept, 3);
  EXPECT_EQ(steps_and_runs(dir.path + "/metrics.jsonl"), (StepRuns{{1, "a"}, {2, "a"}, {3, "a"}}));
}

// ---------------------------------------------------------------------------------------------
// eval lines beside the step lines

// A log written from tags, one line each: "3a" is the step line of step 3 written by attempt "a",
// "e3a" that attempt's eval line of step 3.
std::string tagged_lines(const std::vector<std::string>& tags) {
  std::string text;
  for (const std::string& tag : tags) {
    const bool eval = tag[0] == 'e';
    const size_t digits = tag.find_first_not_of("0123456789", eval ? 1 : 0);
    const std::string step = tag.substr(eval ? 1 : 0, digits - (eval ? 1 : 0)), run = tag.substr(digits);
    text += "{\"step\":" + step + (eval ? ",\"eval_loss\":1.25" : ",\"loss\":1.5") + ",\"run\":\"" + run + "\"}\n";
  }
  return text;
}

// The tags of the lines of a log written by tagged_lines.
std::vector<std::string> tags_of(const std::string& path) {
  std::vector<std::string> tags;
  for (const std::string& line : lines_of(path)) {
    nlohmann::json j = nlohmann::json::parse(line);
    tags.push_back((j.contains("eval_loss") ? "e" : "") + std::to_string(j.at("step").get<int>()) +
                   j.at("run").get<std::string>());
  }
  return tags;
}

// The log after truncate_metrics_after(step) of the tagged lines (plus `extra` text at the end).
struct CutResult {
  MetricsCut cut;
  std::vector<std::string> tags;
};
CutResult cut_tagged(const std::string& name, const std::vector<std::string>& tags, int64_t step,
                     const std::string& extra = "") {
  TempRunDir dir(name);
  std::filesystem::create_directories(dir.path);
  std::ofstream(dir.path + "/metrics.jsonl", std::ios::binary) << tagged_lines(tags) + extra;
  CutResult r;
  r.cut = truncate_metrics_after(dir.path, step);
  r.tags = tags_of(dir.path + "/metrics.jsonl");
  return r;
}

using Tags = std::vector<std::string>;

EvalMetrics eval_sample() {
  EvalMetrics m;
  m.step = 40;
  m.loss = 2.12341;
  m.targets = 5000;
  m.tokens = 9100;
  m.seconds = 1.25;
  return m;
}

TEST(MetricsEval, JsonLineHasTheEvalKeysInOrder) {
  EXPECT_EQ(eval_json(eval_sample()),
            "{\"step\":40,\"eval_loss\":2.12341,\"eval_targets\":5000,\"eval_tokens\":9100,\"eval_s\":1.25}");
  EvalMetrics diverged = eval_sample();
  diverged.loss = INFINITY;
  EXPECT_TRUE(nlohmann::json::parse(eval_json(diverged)).at("eval_loss").is_null());
}

TEST(MetricsEval, WriteEvalAppendsAfterTheStepLine) {
  TempRunDir dir("write_eval");
  {
    MetricsLog log(dir.path);
    StepMetrics m = sample();
    m.step = 40;
    log.write(m);
    log.write_eval(eval_sample());
    EXPECT_EQ(lines_of(log.path()).size(), 2u) << "each write is flushed at once";
  }
  const std::vector<std::string> lines = lines_of(dir.path + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], metrics_json([] { StepMetrics m = sample(); m.step = 40; return m; }()));
  EXPECT_EQ(lines[1], eval_json(eval_sample()));
}

TEST(MetricsEval, ConsoleLineShowsNewBestOrTheBestSoFar) {
  EvalMetrics m = eval_sample();
  m.best_loss = m.loss;
  m.best_step = 40;
  m.improved = true;
  EXPECT_EQ(eval_line(m, 100), "eval step 40/100 | eval loss 2.1234 | 5,000 targets | 1.2 s | new best");
  m.step = 60;
  m.loss = 2.15;
  m.improved = false;
  EXPECT_EQ(eval_line(m, 100),
            "eval step 60/100 | eval loss 2.1500 | 5,000 targets | 1.2 s | best 2.1234 (step 40)");
  EvalMetrics none = eval_sample();  // no finite evaluation yet
  none.loss = NAN;
  EXPECT_EQ(eval_line(none, 100), "eval step 40/100 | eval loss nan | 5,000 targets | 1.2 s");
}

// Resumed from the checkpoint of step 2, whose evaluation was logged: the eval line stays, after its
// step line; the later steps and their evaluations go.
TEST(MetricsEval, TruncateAtAStepKeepsItsEvalLine) {
  const CutResult r = cut_tagged("eval_at", {"1a", "2a", "e2a", "3a", "4a", "e4a"}, 2);
  EXPECT_EQ(r.tags, (Tags{"1a", "2a", "e2a"}));
  EXPECT_EQ(r.cut.kept, 3);
  EXPECT_EQ(r.cut.later, 3);
}

TEST(MetricsEval, TruncateBeforeAnEvaluatedStepDropsItsEvalLine) {
  const CutResult r = cut_tagged("eval_before", {"1a", "2a", "3a", "e3a"}, 2);
  EXPECT_EQ(r.tags, (Tags{"1a", "2a"}));
  EXPECT_EQ(r.cut.later, 2);
}

// A kill mid-write of an eval line leaves it torn: reported as a bad line, the records kept.
TEST(MetricsEval, TruncateDropsATornEvalLine) {
  const CutResult r = cut_tagged("eval_torn", {"1a", "2a"}, 2, "{\"step\":2,\"eval_loss\":1.2");
  EXPECT_EQ(r.tags, (Tags{"1a", "2a"}));
  EXPECT_EQ(r.cut.bad_lines, (std::vector<int64_t>{3}));
}

// An eval line whose step line is missing (a hand edit, an evaluation before the first update of a
// later loom) is a record of its own.
TEST(MetricsEval, TruncateKeepsAnEvalLineWithoutItsStepLine) {
  const CutResult r = cut_tagged("eval_alone", {"1a", "e2a", "3a"}, 3);
  EXPECT_EQ(r.tags, (Tags{"1a", "e2a", "3a"}));
  EXPECT_EQ(r.cut.kept, 3);
  EXPECT_EQ(r.cut.later, 0);
}

// A later attempt's step line supersedes the earlier attempt's step and eval lines of that step on;
// its own eval line then follows it.
TEST(MetricsEval, TruncateLetsARepeatedStepLineSupersedeStepAndEval) {
  const CutResult r = cut_tagged("eval_repeat", {"1a", "2a", "e2a", "3a", "2b", "e2b", "3b"}, 3);
  EXPECT_EQ(r.tags, (Tags{"1a", "2b", "e2b", "3b"}));
  EXPECT_EQ(r.cut.later, 3);  // 2a, e2a, 3a superseded
  const CutResult again = cut_tagged("eval_repeat_noeval", {"1a", "2a", "e2a", "2b"}, 3);
  EXPECT_EQ(again.tags, (Tags{"1a", "2b"}));
}

// An eval line again replaces only the eval line of its step; a step line after the eval line of
// its step is a new attempt at that step and drops the evaluation.
TEST(MetricsEval, TruncateOrdersAStepLineBeforeItsEvalLine) {
  EXPECT_EQ(cut_tagged("eval_twice", {"1a", "2a", "e2a", "e2b"}, 3).tags, (Tags{"1a", "2a", "e2b"}));
  EXPECT_EQ(cut_tagged("eval_then_step", {"1a", "e2a", "2b"}, 3).tags, (Tags{"1a", "2b"}));
}

TEST(MetricsEval, LoggedLossReadsOnlyStepLines) {
  TempRunDir dir("logged_loss");
  std::filesystem::create_directories(dir.path);
  // The second eval line carries a "loss" too (a hand edit): "eval_loss" makes it an eval line.
  std::ofstream(dir.path + "/metrics.jsonl") << "{\"step\":2,\"loss\":1.5}\n{\"step\":2,\"eval_loss\":9.0}\n"
                                             << "{\"step\":2,\"eval_loss\":9.0,\"loss\":8.0}\n";
  EXPECT_EQ(logged_loss(dir.path, 2), 1.5);
  EXPECT_EQ(logged_loss(dir.path, 3), std::nullopt);
}

std::vector<std::pair<int64_t, double>> as_pairs(const std::vector<EvalRecord>& evals) {
  std::vector<std::pair<int64_t, double>> out;
  for (const EvalRecord& e : evals) out.emplace_back(e.step, e.loss);
  return out;
}

// What a resumed run reads back: eval lines up to its step, the later attempt's where repeated,
// null as NaN; nothing from a missing log.
TEST(MetricsEval, LoggedEvalsAreTheSurvivingEvalLinesUpToTheStep) {
  TempRunDir dir("logged_evals");
  std::filesystem::create_directories(dir.path);
  std::ofstream(dir.path + "/metrics.jsonl")
      << "{\"step\":1,\"loss\":3}\n{\"step\":1,\"eval_loss\":2.5}\n"
      << "{\"step\":2,\"loss\":3}\n{\"step\":2,\"eval_loss\":2.0}\n"  // superseded by the repeated step 2
      << "not json\n"
      << "{\"step\":2,\"loss\":3}\n{\"step\":2,\"eval_loss\":2.25}\n"
      << "{\"step\":3,\"loss\":3}\n{\"step\":3,\"eval_loss\":null}\n"
      << "{\"step\":4,\"loss\":3}\n{\"step\":4,\"eval_loss\":1.0}\n";
  const auto upto3 = as_pairs(logged_evals(dir.path, 3));
  ASSERT_EQ(upto3.size(), 3u);
  EXPECT_EQ(upto3[0], std::make_pair(int64_t(1), 2.5));
  EXPECT_EQ(upto3[1], std::make_pair(int64_t(2), 2.25));
  EXPECT_EQ(upto3[2].first, 3);
  EXPECT_TRUE(std::isnan(upto3[2].second));
  EXPECT_EQ(logged_evals(dir.path, 4).size(), 4u);
  EXPECT_TRUE(logged_evals(dir.path + "/none", 4).empty());
}

TEST(MetricsEval, StandingKeepsTheFirstLowestFiniteLossAndCountsEvalsSince) {
  const EvalStanding s = eval_standing({{10, 2.0}, {20, 1.8}, {30, 1.8}, {40, NAN}, {50, 1.9}});
  EXPECT_EQ(s.best_loss, 1.8);
  EXPECT_EQ(s.best_step, 20);
  EXPECT_EQ(s.since_best, 3);  // an equal loss is no improvement, nor is NaN
  const EvalStanding improved = eval_standing({{10, 2.0}, {20, 1.8}, {30, 1.7}});
  EXPECT_EQ(improved.best_step, 30);
  EXPECT_EQ(improved.since_best, 0);
  const EvalStanding diverged = eval_standing({{10, NAN}, {20, INFINITY}});
  EXPECT_EQ(diverged.best_loss, std::nullopt);
  EXPECT_EQ(diverged.since_best, 2);
  EXPECT_EQ(eval_standing({}).since_best, 0);
}

TEST(Metrics, TruncateRefusesAFolderOrFifoInsteadOfTheLog) {
  TempRunDir dir("notfile");
  std::filesystem::create_directories(dir.path + "/metrics.jsonl");
  try {
    truncate_metrics_after(dir.path, 3);
    FAIL() << "a folder was accepted as metrics.jsonl";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path + "/metrics.jsonl"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir.path + "/metrics.jsonl");
  ASSERT_EQ(mkfifo((dir.path + "/metrics.jsonl").c_str(), 0600), 0);
  try {
    truncate_metrics_after(dir.path, 3);
    FAIL() << "a FIFO was read as metrics.jsonl";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path + "/metrics.jsonl"), std::string::npos) << e.what();
  }
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

// The terminal's progress bar: 12 of 100 steps fill 12% of 28 cells = 3 cells and 3.36 / 8 of the
// fourth, drawn as tqdm does with the eighth-block of 2/8 (rounded down); the time is elapsed<eta.
TEST(Metrics, ProgressBarShowsStepPercentBarLossSpeedAndTimes) {
  EXPECT_EQ(progress_bar(sample(), 100),
            " 12/100  12%|███▎                        | loss 2.3456 | 12,345 tok/s | 8s<1m02s");
  StepMetrics last = sample();
  last.step = 100;
  last.elapsed_s = 75;
  EXPECT_EQ(progress_bar(last, 100, 4), "100/100 100%|████| loss 2.3456 | 12,345 tok/s | 1m15s<0s");
}

// Off a terminal (a log file, a pipe) the status line is never drawn and printed lines are the
// plain lines they were before the bar existed.
TEST(Metrics, TerminalStatusOffATerminalPrintsPlainLinesOnly) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    TerminalStatus status(f);
    EXPECT_FALSE(status.active());
    status.show("loading ...");
    status.print("step 1/2 | loss 1.0000");
    status.show(progress_bar(sample(), 100));
    status.clear();
    status.print("step 2/2 | loss 0.5000");
    status.done();
  }
  std::rewind(f);
  std::string text(256, '\0');
  text.resize(std::fread(text.data(), 1, text.size(), f));
  std::fclose(f);
  EXPECT_EQ(text, "step 1/2 | loss 1.0000\nstep 2/2 | loss 0.5000\n");
}

// On a terminal (a pseudo-terminal from script(1)), build/train draws the bar in place: the output
// holds \r-redrawn bars ending at 100%, and the per-step lines are still there.
TEST(TrainCli, ProgressBarOnATerminal) {
  if (!std::filesystem::exists("build/train") || std::system("command -v script > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "build/train or script(1) missing";
  const std::string dir = testing::TempDir() + "loom_metrics_tty_run";
  std::filesystem::remove_all(dir);
  const std::string log = testing::TempDir() + "loom_metrics_tty.log";
  const std::string cmd = "script -q -e -c 'build/train configs/demo.yaml train.device=cpu train.steps=2 "
                          "train.global_batch=4 output.dir=" + dir + "' " + log + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::ifstream in(log, std::ios::binary);
  const std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(out.find("\r2/2 100%|"), std::string::npos) << out;
  EXPECT_NE(out.find("\r1/2  50%|"), std::string::npos) << out;
  EXPECT_NE(out.find("step 2/2 | loss"), std::string::npos) << out;
  std::filesystem::remove_all(dir);
  std::filesystem::remove(log);
}

}  // namespace
}  // namespace loom
