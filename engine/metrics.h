// Per-step metrics: one JSON object per line in <run dir>/metrics.jsonl, and the progress line
// rank 0 prints.
//
// metrics.jsonl holds two kinds of record, each a JSON object with an integer "step" >= 1.
// A step line (keys in this order; the optional ones only when measured):
//   {"step":12,"loss":2.3456,"lr":0.00019,"grad_norm":0.87,"tokens":16000,"targets":9000,
//    "tokens_per_s":12345.6,"elapsed_s":15.2,"mfu":0.48,"peak_mem_gib":4.2,"pad_saved":0.41}
// An eval line (any record with an "eval_loss" key), after the step line of the step it evaluates:
//   {"step":40,"eval_loss":2.1234,"eval_targets":5000,"eval_tokens":9100,"eval_s":1.2}
// A non-finite loss, grad norm or eval loss is written as null (JSON has no NaN/Inf).
//
// Progress line:
//   step 12/100 | loss 2.3456 | lr 1.90e-04 | grad 0.87 | 12,345 tok/s | mfu 48.1% | 4.2 GiB | eta 1m02s
// (mfu and GiB only when measured). eta = seconds per step so far in this process × steps left.
// Eval line on the console ("new best" or the best so far; no best while none was finite):
//   eval step 40/100 | eval loss 2.1234 | 5,000 targets | 1.2 s | new best
//   eval step 60/100 | eval loss 2.1500 | 5,000 targets | 1.2 s | best 2.1234 (step 40)
//
// Progress bar (a terminal only, redrawn in place every step, tqdm style):
//    12/100  12%|███▏                       | loss 2.3456 | 12,345 tok/s | 15s<1m02s
#pragma once
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace loom {

struct StepMetrics {
  int step = 0;              // optimizer steps completed, counting this one (1 after the first update)
  double loss = 0;           // mean loss over the target tokens of the global batch
  double lr = 0;             // lr used by this update
  double grad_norm = 0;      // global L2 norm of the LoRA gradients, before clipping
  int64_t tokens = 0;        // real (non-pad) tokens of this step, all ranks
  int64_t targets = 0;       // tokens that carried a loss this step, all ranks
  double tokens_per_s = 0;   // real tokens per wall second, as the trainer measured it
  double elapsed_s = 0;      // wall seconds since this process started training
  int start_step = 0;        // step this process resumed from (0 on a fresh run); not written
  std::optional<double> mfu;           // model FLOPs utilisation in [0, 1] of all ranks' GPUs (BENCHMARK.md)
  std::optional<double> peak_mem_gib;  // peak device memory in use on rank 0's GPU, GiB
  std::optional<double> pad_saved;     // share of a padded batch's tokens that packing avoided
  // The objective's metrics (engine/objective.h; TRL's names for preference runs, e.g.
  // "rewards/accuracies"), written after the keys above, and margins and accuracy on the console.
  std::vector<std::pair<std::string, double>> objective;
};

// One evaluation on the held-out set, after the update of `step`.
struct EvalMetrics {
  int step = 0;              // optimizer steps completed when it ran (the adapter of that step)
  double loss = 0;           // Σ target-token losses / Σ target tokens over the eval set, all ranks
  int64_t targets = 0;       // tokens that carried a loss, all ranks
  int64_t tokens = 0;        // real (non-pad) tokens evaluated, all ranks
  double seconds = 0;        // wall seconds the evaluation took
  // The lowest eval loss of the run so far, this one included, and its step; unset while no
  // evaluation was finite. Not written to metrics.jsonl (logged_evals finds it again).
  std::optional<double> best_loss;
  std::optional<int> best_step;
  bool improved = false;     // this evaluation set the best (printed as "new best")
  // The objective's metrics on the eval set, written as "eval_<name>" after the keys above.
  std::vector<std::pair<std::string, double>> objective;
};

// An eval line as read back from metrics.jsonl.
struct EvalRecord {
  int64_t step = 0;
  double loss = 0;  // NaN where the line holds null (a non-finite loss)
};

// Where the run stands after a list of evaluations (step order): the lowest finite loss and its
// step (the first of equal ones: an equal loss is no improvement), and the evaluations after it,
// all of them while none was finite. output.keep_best and train.early_stopping_patience read it;
// an evaluation improved when best_step is its step.
struct EvalStanding {
  std::optional<double> best_loss;
  std::optional<int64_t> best_step;
  int since_best = 0;
};
EvalStanding eval_standing(const std::vector<EvalRecord>& evals);

// Appends to <run_dir>/metrics.jsonl (created with its folder when missing), so a resumed run
// keeps the lines written before it.
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& run_dir);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // Writes one line and flushes it, so a crash loses at most the step in flight.
  void write(const StepMetrics& m);
  void write_eval(const EvalMetrics& m);
  const std::string& path() const { return path_; }

 private:
  void append(const std::string& json_line, const char* what, int step);
  std::string path_;
  std::FILE* file_ = nullptr;
};

// The metrics.jsonl lines of m, without the newline.
std::string metrics_json(const StepMetrics& m);
std::string eval_json(const EvalMetrics& m);
// What truncate_metrics_after kept and dropped.
struct MetricsCut {
  int64_t kept = 0;                  // records kept: steps 1..`step` at most, each once per kind
  int64_t later = 0;                 // records of steps after `step` (or superseded: see below)
  std::vector<int64_t> bad_lines;    // line numbers (from 1) that are not a record
};
// Cuts <run_dir>/metrics.jsonl back to `step` when a run starts: on resume, the steps its last
// checkpoint holds; on a fresh start, 0 (the log of an attempt killed before its first checkpoint
// is started anew). A record is a JSON object whose "step" is an integer >= 1, an eval line when it
// has "eval_loss", else a step line; other lines (torn writes, hand edits, garbage) are dropped and
// reported. Records are ordered by step, a step line before the eval line of its step. A record
// that does not come after the one before it is a later attempt: it wins and the earlier records
// from its place on are dropped (a step line again drops that step's step and eval lines, an eval
// line again drops that step's eval line), so (step, kind) end strictly increasing.
// The file is rewritten atomically; a missing file is left missing; a FIFO or folder there is an
// error naming it.
MetricsCut truncate_metrics_after(const std::string& run_dir, int64_t step);
std::string progress_line(const StepMetrics& m, int total_steps);
// The progress bar of m (format above), `width` cells between the bars; no newline, no \r.
std::string progress_bar(const StepMetrics& m, int total_steps, int width = 28);
// The console line of an evaluation (format above).
std::string eval_line(const EvalMetrics& m, int total_steps);
// The loss logged for `step` in <run_dir>/metrics.jsonl (the last step line of that step; eval
// lines are not read), if any.
std::optional<double> logged_loss(const std::string& run_dir, int64_t step);
// The eval lines of steps 1..up_to_step in <run_dir>/metrics.jsonl, in step order, as
// truncate_metrics_after would keep them (a later attempt's line wins): what a resumed run needs
// to know the best eval loss and the evaluations since it. Empty when the log is missing.
std::vector<EvalRecord> logged_evals(const std::string& run_dir, int64_t up_to_step);

// One status line on a terminal, redrawn in place with \r: the progress bar, or "loading the
// model ..." while that takes. Lines printed through it go above the status line, which is redrawn
// below them. Inactive (prints plain lines, no status) when `out` is null or not a terminal, so logs
// and pipes get exactly the lines they got before. Ends its line when destroyed, so an error
// printed after it starts on a line of its own.
class TerminalStatus {
 public:
  explicit TerminalStatus(std::FILE* out);
  ~TerminalStatus();
  TerminalStatus(const TerminalStatus&) = delete;
  TerminalStatus& operator=(const TerminalStatus&) = delete;

  bool active() const { return active_; }
  void show(const std::string& status);     // replaces the status line (terminal only)
  void print(const std::string& line);      // a line that stays, above the status line
  void done();                              // keeps the status line as it is and ends it
  void clear();                             // erases the status line (a finished "loading ...")

 private:
  std::FILE* out_;
  bool active_;
  std::string status_;  // drawn and not yet ended; "" when none
};

}  // namespace loom
