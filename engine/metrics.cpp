// metrics.jsonl writer and progress line; formats in metrics.h.
#include "engine/metrics.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unistd.h>  // isatty

#include "ops/error.h"
#include "ops/files.h"

namespace loom {
namespace {

// JSON has no NaN/Inf: a diverged step is logged as null, and the line stays parseable.
nlohmann::json finite_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }

// 12345.6 -> "12,346"
std::string with_thousands(double v) {
  std::string digits = std::to_string(std::llround(std::fabs(v)));
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

// 42 -> "42s", 62 -> "1m02s", 7500 -> "2h05m"
std::string duration(double seconds) {
  long s = std::lround(std::max(0.0, seconds));
  if (s < 60) return cat(s, 's');
  char buf[32];
  if (s < 3600)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  return buf;
}

std::string eta(const StepMetrics& m, int total_steps) {
  int timed_steps = m.step - m.start_step;
  if (timed_steps <= 0) return "--";
  return duration(m.elapsed_s / timed_steps * std::max(0, total_steps - m.step));
}

// A metrics.jsonl record (format in metrics.h): its step, its kind and the parsed line.
struct Record {
  int64_t step = 0;
  bool eval = false;  // an eval line; else a step line
  nlohmann::json json;
};

// The record of a metrics.jsonl line: a JSON object whose "step" is an integer >= 1; nullopt for
// anything else, however malformed or deep.
std::optional<Record> record_of(const std::string& line) {
  if (json_depth(line) > kMaxJsonDepth) return std::nullopt;
  auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) return std::nullopt;
  const nlohmann::json& s = j["step"];
  if (s.is_number_unsigned() && s.get<uint64_t>() > uint64_t(INT64_MAX)) return std::nullopt;
  const int64_t step = s.get<int64_t>();
  if (step < 1) return std::nullopt;
  const bool eval = j.contains("eval_loss");
  return Record{step, eval, std::move(j)};
}

// Where a record goes in the log's order: by step, a step line before its step's eval line.
using RecordKey = std::pair<int64_t, int>;
RecordKey key_of(const Record& r) { return {r.step, r.eval ? 1 : 0}; }

// The records of a metrics.jsonl stream that truncate_metrics_after keeps at `up_to_step`, as
// (key, line) in strictly increasing key order, with the counts it reports.
struct Survivors {
  std::vector<std::pair<RecordKey, std::string>> kept;
  int64_t later = 0;
  std::vector<int64_t> bad_lines;
};
Survivors surviving_records(std::istream& in, int64_t up_to_step) {
  Survivors out;
  int64_t number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    const std::optional<Record> r = record_of(line);
    if (!r) {
      out.bad_lines.push_back(number);
      continue;
    }
    // A record not after the last one kept is a later attempt: it supersedes them from its place on.
    const RecordKey key = key_of(*r);
    for (; !out.kept.empty() && out.kept.back().first >= key; out.kept.pop_back()) ++out.later;
    if (r->step > up_to_step)
      ++out.later;
    else
      out.kept.emplace_back(key, std::move(line));
  }
  return out;
}

std::string fixed(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

}  // namespace

std::string metrics_json(const StepMetrics& m) {
  nlohmann::ordered_json j;
  j["step"] = m.step;
  j["loss"] = finite_or_null(m.loss);
  j["lr"] = m.lr;
  j["grad_norm"] = finite_or_null(m.grad_norm);
  j["tokens"] = m.tokens;
  j["targets"] = m.targets;
  j["tokens_per_s"] = m.tokens_per_s;
  j["elapsed_s"] = m.elapsed_s;
  if (m.mfu) j["mfu"] = *m.mfu;
  if (m.peak_mem_gib) j["peak_mem_gib"] = *m.peak_mem_gib;
  if (m.pad_saved) j["pad_saved"] = *m.pad_saved;
  for (const auto& [name, value] : m.objective) j[name] = finite_or_null(value);
  return j.dump();
}

std::string eval_json(const EvalMetrics& m) {
  nlohmann::ordered_json j;
  j["step"] = m.step;
  j["eval_loss"] = finite_or_null(m.loss);
  j["eval_targets"] = m.targets;
  j["eval_tokens"] = m.tokens;
  j["eval_s"] = m.seconds;
  for (const auto& [name, value] : m.objective) j["eval_" + name] = finite_or_null(value);
  return j.dump();
}

std::string eval_line(const EvalMetrics& m, int total_steps) {
  std::string line = cat("eval step ", m.step, '/', total_steps, " | eval loss ", fixed("%.4f", m.loss), " | ",
                         with_thousands(double(m.targets)), " targets | ", fixed("%.1f", m.seconds), " s");
  if (m.improved) return line + " | new best";
  if (m.best_loss && m.best_step) line += cat(" | best ", fixed("%.4f", *m.best_loss), " (step ", *m.best_step, ')');
  return line;
}

EvalStanding eval_standing(const std::vector<EvalRecord>& evals) {
  EvalStanding s;
  for (const EvalRecord& e : evals) {
    // NaN compares false: a diverged evaluation never becomes the best.
    if (std::isfinite(e.loss) && (!s.best_loss || e.loss < *s.best_loss)) {
      s.best_loss = e.loss;
      s.best_step = e.step;
      s.since_best = 0;
    } else {
      ++s.since_best;
    }
  }
  return s;
}

std::string progress_line(const StepMetrics& m, int total_steps) {
  std::string line = cat("step ", m.step, '/', total_steps, " | loss ", fixed("%.4f", m.loss), " | lr ",
                         fixed("%.2e", m.lr), " | grad ", fixed("%.2f", m.grad_norm), " | ",
                         with_thousands(m.tokens_per_s), " tok/s");
  if (m.mfu) line += cat(" | mfu ", fixed("%.1f", *m.mfu * 100), '%');
  if (m.peak_mem_gib) line += cat(" | ", fixed("%.1f", *m.peak_mem_gib), " GiB");
  for (const auto& [name, value] : m.objective)
    if (name == "rewards/margins") line += cat(" | margin ", fixed("%.3f", value));
    else if (name == "rewards/accuracies") line += cat(" | acc ", fixed("%.2f", value));
  return line + " | eta " + eta(m, total_steps);
}

std::string progress_bar(const StepMetrics& m, int total_steps, int width) {
  const double done = total_steps > 0 ? std::clamp(double(m.step) / total_steps, 0.0, 1.0) : 0.0;
  // Eighths of a cell, as tqdm draws them: the last cell shows how far into it the run is.
  static const char* const kEighths[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
  const int eighths = int(done * width * 8);
  std::string bar;
  for (int i = 0; i < eighths / 8; ++i) bar += "█";
  int cells = eighths / 8;
  if (cells < width && eighths % 8) bar += kEighths[eighths % 8], ++cells;
  bar += std::string(size_t(width - cells), ' ');
  char head[64];
  std::snprintf(head, sizeof head, "%*d/%d %3d%%|", int(std::to_string(total_steps).size()), m.step, total_steps,
                int(done * 100));
  return cat(head, bar, "| loss ", fixed("%.4f", m.loss), " | ", with_thousands(m.tokens_per_s), " tok/s | ",
             duration(m.elapsed_s), '<', eta(m, total_steps));
}

std::optional<double> logged_loss(const std::string& run_dir, int64_t step) {
  std::ifstream in(run_dir + "/metrics.jsonl", std::ios::binary);
  std::optional<double> loss;
  for (std::string line; std::getline(in, line);) {
    const std::optional<Record> r = record_of(line);
    if (!r || r->eval || r->step != step) continue;
    if (r->json.contains("loss") && r->json["loss"].is_number()) loss = r->json["loss"].get<double>();
  }
  return loss;
}

std::vector<EvalRecord> logged_evals(const std::string& run_dir, int64_t up_to_step) {
  std::ifstream in(run_dir + "/metrics.jsonl", std::ios::binary);
  std::vector<EvalRecord> evals;
  for (const auto& [key, line] : surviving_records(in, up_to_step).kept) {
    if (!key.second) continue;
    const nlohmann::json loss = record_of(line)->json["eval_loss"];
    evals.push_back({key.first, loss.is_number() ? loss.get<double>() : NAN});
  }
  return evals;
}

TerminalStatus::TerminalStatus(std::FILE* out) : out_(out), active_(out && isatty(fileno(out))) {}

TerminalStatus::~TerminalStatus() { done(); }

void TerminalStatus::show(const std::string& status) {
  if (!active_) return;
  // \033[K clears what a longer previous status left on the line.
  std::fprintf(out_, "\r%s\033[K", status.c_str());
  std::fflush(out_);
  status_ = status;
}

void TerminalStatus::print(const std::string& line) {
  if (!out_) return;
  if (!status_.empty()) std::fputs("\r\033[K", out_);
  std::fprintf(out_, "%s\n", line.c_str());
  if (!status_.empty()) std::fprintf(out_, "%s", status_.c_str());
  std::fflush(out_);
}

void TerminalStatus::clear() {
  if (status_.empty()) return;
  std::fputs("\r\033[K", out_);
  std::fflush(out_);
  status_.clear();
}

void TerminalStatus::done() {
  if (status_.empty()) return;
  std::fputc('\n', out_);
  std::fflush(out_);
  status_.clear();
}

MetricsLog::MetricsLog(const std::string& run_dir) : path_(run_dir + "/metrics.jsonl") {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  LOOM_CHECK(!ec, "cannot create the run folder ", run_dir, ": ", ec.message(), " (check output.dir)");
  file_ = std::fopen(path_.c_str(), "a");
  LOOM_CHECK(file_, "cannot open ", path_, " for appending: ", std::strerror(errno), " (check output.dir)");
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::write(const StepMetrics& m) { append(metrics_json(m), "step", m.step); }

void MetricsLog::write_eval(const EvalMetrics& m) { append(eval_json(m), "the evaluation of step", m.step); }

void MetricsLog::append(const std::string& json_line, const char* what, int step) {
  const std::string line = json_line + '\n';
  bool ok = std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0;
  LOOM_CHECK(ok, "cannot write ", what, ' ', step, " to ", path_, ": ", std::strerror(errno));
}

MetricsCut truncate_metrics_after(const std::string& run_dir, int64_t step) {
  const std::string path = run_dir + "/metrics.jsonl";
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::symlink_status(path, ec))) return {};
  require_regular_file(path, "metrics log");
  std::ifstream in(path, std::ios::binary);
  LOOM_CHECK(in, "cannot open ", path, ": ", std::strerror(errno));
  Survivors survivors = surviving_records(in, step);
  LOOM_CHECK(!in.bad(), "cannot read ", path, ": ", std::strerror(errno));
  in.close();
  std::string text;
  for (const auto& [key, line] : survivors.kept) text += line + '\n';
  {
    std::ofstream out(path + ".tmp", std::ios::binary);
    out << text;
    out.close();
    LOOM_CHECK(out, "cannot write ", path, ".tmp (disk full?)");
  }
  std::filesystem::rename(path + ".tmp", path, ec);
  LOOM_CHECK(!ec, "cannot replace ", path, ": ", ec.message());
  return {int64_t(survivors.kept.size()), survivors.later, std::move(survivors.bad_lines)};
}

}  // namespace loom
