// tools/plot_run.py as a user runs it: on the demo's run folder, on a hand-written log with eval
// lines and garbage, and on folders it cannot plot.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "ops/error.h"
#include "tests/hostile.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

// The Debian python3, to which tools/setup.sh adds python3-matplotlib; not `python3` from PATH,
// where a pyenv shim or a virtual environment without matplotlib may come first. A missing python3
// or matplotlib fails these tests rather than skipping them: CI installs both with tools/setup.sh,
// and a skip would let the plot script break unseen.
const char* const kPython = "/usr/bin/python3";

test::ProgramResult plot_run(std::vector<std::string> args) {
  args.insert(args.begin(), {kPython, "tools/plot_run.py"});
  return test::run_program(args, "", 60);
}

std::string describe(const test::ProgramResult& r) {
  return cat("exit ", r.exit_code, ", signal ", r.signal, r.timed_out ? ", timed out" : "", "\nstderr:\n", r.err,
             "\nstdout:\n", r.out);
}

// EXPECT that `path` is a PNG (its 8-byte signature, then the IHDR chunk) of a legible size.
void expect_png(const std::string& path) {
  const std::string png = test::read_bytes(path);
  ASSERT_GE(png.size(), 24u) << path << " is missing or shorter than a PNG header";
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << path;
  ASSERT_EQ(png.substr(12, 4), "IHDR") << path;
  // Width and height: big-endian uint32 at bytes 16 and 20 (the IHDR's first fields).
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = at; i < at + 4; ++i) v = v << 8 | uint8_t(png[i]);
    return v;
  };
  // Four panels need about 300x200 pixels each to stay readable; the script draws 1200x800.
  EXPECT_GE(be32(16), 600u) << path;
  EXPECT_GE(be32(20), 400u) << path;
}

// The README's quick start, shortened, then its plot: the demo's run folder as build/train leaves it.
TEST(PlotRun, DemoRunFolder) {
  if (!fs::exists("build/train")) GTEST_SKIP() << "build/train missing (make all)";
  const std::string dir = test::fresh_temp_dir("plot_run_demo");
  const test::ProgramResult train =
      test::run_program({"build/train", "configs/demo.yaml", "train.device=cpu", "train.steps=4",
                         "train.global_batch=8", "output.checkpoint_every=0", "output.dir=" + dir},
                        "", 120);
  ASSERT_EQ(train.exit_code, 0) << describe(train);
  const test::ProgramResult r = plot_run({dir});
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_NE(r.out.find("plot_run: wrote " + dir + "/curves.png (4 step lines, "), std::string::npos) << r.out;
  expect_png(dir + "/curves.png");
  fs::remove_all(dir);
}

// Eval lines (one null: a non-finite eval loss) beside the step lines, a null train loss, and lines
// that are not records, which are skipped as truncate_metrics_after drops them.
TEST(PlotRun, HandWrittenLogWithEvalLinesAndGarbage) {
  const std::string dir = test::fresh_temp_dir("plot_run_evals");
  std::string log;
  for (int s = 1; s <= 6; ++s) {
    log += cat("{\"step\":", s, ",\"loss\":", s == 2 ? "null" : std::to_string(3.0 - 0.2 * s),
               ",\"lr\":0.001,\"grad_norm\":1.5,\"tokens\":900,\"targets\":400,\"tokens_per_s\":5000,\"elapsed_s\":",
               s, "}\n");
    if (s % 3 == 0)
      log += cat("{\"step\":", s, ",\"eval_loss\":", s == 6 ? "null" : "2.5",
                 ",\"eval_targets\":300,\"eval_tokens\":700,\"eval_s\":0.4}\n");
  }
  log += "not json\n{\"step\":0,\"loss\":1}\n{\"step\":true,\"loss\":1}\n{\"step\":2.5}\n[1,2]\n{\"step\":7,\"loss\":";
  log += "\n" + test::nested_arrays(100000) + "\n";  // past Python's recursion limit
  test::write_file(dir, "metrics.jsonl", log);
  const test::ProgramResult r = plot_run({dir});
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_NE(r.out.find("(6 step lines, 2 eval lines, steps 1..6)"), std::string::npos) << r.out;
  expect_png(dir + "/curves.png");
  // --out writes there instead of the run folder.
  fs::remove(dir + "/curves.png");
  const test::ProgramResult out = plot_run({dir, "--out", dir + "/elsewhere.png"});
  ASSERT_EQ(out.exit_code, 0) << describe(out);
  expect_png(dir + "/elsewhere.png");
  EXPECT_FALSE(fs::exists(dir + "/curves.png"));
  fs::remove_all(dir);
}

// EXPECT exit 1 with one "plot_run: error:" line holding every part, and no plot written.
void expect_refused(const std::vector<std::string>& args, const std::vector<std::string>& parts) {
  const test::ProgramResult r = plot_run(args);
  EXPECT_EQ(r.exit_code, 1) << describe(r);
  EXPECT_EQ(r.err.find("plot_run: error: "), 0u) << describe(r);
  EXPECT_EQ(r.err.find("Traceback"), std::string::npos) << describe(r);
  for (const std::string& p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << "missing '" << p << "'\n" << r.err;
  EXPECT_FALSE(fs::exists(args[0] + "/curves.png")) << args[0];
}

TEST(PlotRun, FoldersWithNothingToPlotAreRefusedByName) {
  const std::string dir = test::fresh_temp_dir("plot_run_refused");
  expect_refused({dir + "/none"}, {dir + "/none is not a folder", "output.dir"});
  fs::create_directories(dir + "/empty");
  expect_refused({dir + "/empty"}, {dir + "/empty/metrics.jsonl not found"});
  test::write_file(dir, "evals_only/metrics.jsonl", "{\"step\":3,\"eval_loss\":2.5}\ngarbage\n");
  expect_refused({dir + "/evals_only"}, {dir + "/evals_only/metrics.jsonl holds no step lines"});
  fs::remove_all(dir);
}

}  // namespace
}  // namespace loom
