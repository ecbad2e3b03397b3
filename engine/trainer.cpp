#include "engine/trainer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "data/dataloader.h"
#include "dist/dist.h"
#include "dist/nccl_comm.h"
#include "engine/backend.h"
#include "engine/checkpoint.h"
#include "engine/divergence.h"
#include "engine/evaluation.h"
#include "engine/export.h"
#include "engine/flops.h"
#include "engine/metrics.h"
#include "engine/objective.h"
#include "engine/preference.h"
#include "engine/run_samples.h"
#include "engine/schedule.h"
#include "engine/step.h"
#include "engine/training_data.h"
#include "models/lora.h"
#include "models/model_source.h"
#include "ops/device.h"
#include "ops/error.h"
#include "ops/files.h"
#include "ops/random.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string fixed_1(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

// The LoRA dropout masks of one micro-batch: fresh for every step, rank and micro-batch (a mask
// shared by micro-batches would drop the same packed positions in each), and the same again when a
// run resumes at that step.
uint64_t dropout_seed(uint64_t train_seed, int64_t step, int rank, size_t micro) {
  return mix64(mix64(mix64(train_seed) + uint64_t(step)) + (uint64_t(rank) << 32 | uint64_t(micro)));
}

std::string resolved_config_path(const std::string& run_dir) { return run_dir + "/config.resolved.yaml"; }

// The record of the config a run was started with (every key, defaults included): written by a
// fresh run, and by a resumed one only when output.on_change=accept took new settings.
void write_resolved_config(const TrainConfig& cfg) {
  fs::create_directories(cfg.output.dir);
  const std::string path = resolved_config_path(cfg.output.dir);
  std::ofstream f(path);
  f << "# resolved from " << (cfg.source.empty() ? "defaults" : cfg.source) << " (every key, defaults included)\n"
    << to_yaml(cfg);
  LOOM_CHECK(f, "cannot write ", path);
}

// decode: the generation of train.sample_every, which the GPU plans beside training.
std::unique_ptr<TrainBackend> make_backend(const TrainConfig& cfg, const ModelConfig& mc, const LoraLayout& layout,
                                           const DecodeShape& decode) {
  const Device dev = cfg.train.device;
  LOOM_CHECK(dev != Device::kCuda || cuda_available(), "train.device = cuda but ", cuda_device_summary(),
             "; use train.device=cpu for the reference path");
  // lora.init_from: start from an adapter (a DPO run after its SFT adapter), else PEFT's init.
  std::vector<float> lora = cfg.lora.init_from.empty() ? lora_init(layout, uint64_t(cfg.train.seed))
                                                       : load_peft_adapter(cfg.lora.init_from, layout);
  std::unique_ptr<TrainBackend> backend;
  if (dev == Device::kCuda || (dev == Device::kAuto && cuda_available())) {
    bind_gpu(dist_context());
    LOOM_CHECK(decode.prefill_tokens <= cfg.train.token_budget, "train.sample_prompts: a batch of ", decode.batch,
               " prompts holds ", decode.prefill_tokens, " tokens, more than train.token_budget (",
               cfg.train.token_budget, ") allows the GPU to run at once; shorten or remove prompts, or raise "
               "train.token_budget");
    backend = make_cuda_backend(mc, weight_source(cfg.model, mc), layout, lora, cfg, decode);
  } else {
    backend = make_cpu_backend(mc, resolve_host_weights(cfg.model, mc), layout, lora, cfg.train);
  }
  // Preference tuning from an adapter: its reference is that adapter, frozen (as TRL takes it), so
  // the rewards measure what this run changed; from PEFT's init the reference is the base.
  if (cfg.train.objective != ObjectiveKind::kSft && !cfg.lora.init_from.empty()) backend->set_reference_adapter(lora);
  return backend;
}

void note(const std::string& line) {
  if (is_main()) std::fprintf(stderr, "%s\n", line.c_str());
}

struct ResumePoint {
  std::string dir;
  TrainCheckpoint ck;
};

// A checkpoint that passed load_checkpoint's checks; a format-1 one with a warning.
ResumePoint verified_checkpoint(const std::string& dir, const LoraLayout& layout) {
  std::string warning;
  ResumePoint p{dir, load_checkpoint(dir, layout, &warning)};
  if (!warning.empty()) note("warning: " + warning);
  return p;
}

// output.resume = last_intact: the newest checkpoint that passes its checks; each newer one is
// reported with its fault and left in place (the run overwrites it when it gets there again).
std::optional<ResumePoint> last_intact_checkpoint(const std::string& run_dir, const LoraLayout& layout) {
  const std::vector<std::string> all = list_checkpoints(run_dir);
  std::string faults;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    try {
      return verified_checkpoint(*it, layout);
    } catch (const Error& e) {
      note(cat("output.resume=last_intact: skipping ", fs::path(*it).filename().string(), ": ", e.what()));
      faults += cat("\n  ", e.what());
    }
  }
  LOOM_CHECK(all.empty(), "output.resume=last_intact: no checkpoint in ", run_dir, "/checkpoints passes its checks:",
             faults, "\nNothing was changed. To start over, choose another output.dir.");
  return std::nullopt;
}

// Where the run starts: nothing (a fresh run), or a checkpoint that passed its checks. A damaged
// checkpoint stops the run unless output.resume = last_intact asks to fall back. Every rank reads
// the same files, so every rank decides alike.
std::optional<ResumePoint> resume_point(const OutputSection& out, const LoraLayout& layout) {
  if (out.resume == "never") {
    LOOM_CHECK(!latest_checkpoint(out.dir), "output.dir '", out.dir,
               "' already holds checkpoints and output.resume = never; set output.resume=auto to continue that run "
               "or choose another output.dir (nothing was overwritten)");
    return std::nullopt;
  }
  if (out.resume == "last_intact") return last_intact_checkpoint(out.dir, layout);
  const bool named = out.resume != "auto";
  LOOM_CHECK(!named || fs::is_directory(out.resume), "output.resume: '", out.resume,
             "' is not a checkpoint folder (expected <run>/checkpoints/step-N, or auto, last_intact, never)");
  const std::optional<std::string> dir = named ? std::optional<std::string>(out.resume) : latest_checkpoint(out.dir);
  if (!dir) return std::nullopt;
  try {
    return verified_checkpoint(*dir, layout);
  } catch (const Error& e) {
    fail("cannot resume from ", *dir, ": ", e.what(), ". Nothing was changed. ",
         named ? "Name another checkpoint folder in output.resume, or set output.resume=last_intact to take the "
                 "newest checkpoint of output.dir that passes its checks."
               : "Rerun with output.resume=last_intact to resume from the newest checkpoint that passes its checks "
                 "(it reports each one it skips), or choose another output.dir to start over.");
  }
}

// The checkpoint a rerun would continue from, by name (resume_point verifies it later); none when
// the run starts fresh.
std::optional<std::string> checkpoint_to_continue(const OutputSection& out) {
  if (out.resume == "never") return std::nullopt;
  if (out.resume != "auto" && out.resume != "last_intact") return out.resume;
  return latest_checkpoint(out.dir);
}

// What continuing a run folder changes: the config it was started with and the keys of this one
// that differ in what they train (engine/config.h training_changes), accepted by output.on_change.
struct Continuation {
  std::optional<TrainConfig> recorded;  // none: a fresh run, or a folder without a readable record
  std::vector<ConfigChange> changes;
  bool record_anew = false;  // the record is rewritten with this config once the run continues
};

std::string listed(const std::vector<ConfigChange>& changes) {
  std::string out;
  for (const ConfigChange& c : changes) out += cat("\n  ", c.key, ": ", c.before, " -> ", c.after);
  return out;
}

// Compares the config with the one the run folder was started with, before anything loads: a rerun
// that would continue a run with settings that train something else stops here, naming each
// difference, unless output.on_change=accept asks for it. Every rank reads the same record.
Continuation check_against_record(const TrainConfig& cfg) {
  const std::optional<std::string> from = checkpoint_to_continue(cfg.output);
  const std::string path = resolved_config_path(cfg.output.dir);
  std::error_code ec;
  if (!from || !fs::exists(path, ec)) return {};
  const bool accept = cfg.output.on_change == OnChange::kAccept;
  const std::string ways_on =
      cat("To start a new run with these settings, choose another output.dir; to continue this run with them, add "
          "output.on_change=accept (", path, " is then kept as config.resolved.step-N.yaml and rewritten).");
  Continuation c;
  try {
    c.recorded = load_config(path);
  } catch (const Error& e) {
    LOOM_CHECK(accept, "cannot continue the run in ", cfg.output.dir, " from ", *from,
               ": the record of the config it was started with does not read: ", e.what(), "\n", ways_on);
    c.record_anew = true;
    return c;
  }
  c.changes = training_changes(*c.recorded, cfg);
  c.record_anew = !c.changes.empty();
  LOOM_CHECK(c.changes.empty() || accept, "output.dir ", cfg.output.dir, " holds a run started with other settings (",
             path, "); continuing it from ", *from, " with this config would train something else:", listed(c.changes),
             "\n", ways_on);
  return c;
}

// Rank 0, once an accepted change continues the run: the old record is kept beside the new one.
void record_accepted_changes(const TrainConfig& cfg, const Continuation& c, int64_t step) {
  const std::string path = resolved_config_path(cfg.output.dir);
  const std::string kept = cat(cfg.output.dir, "/config.resolved.step-", step, ".yaml");
  std::error_code ec;
  if (fs::exists(path, ec)) fs::rename(path, kept);
  write_resolved_config(cfg);
  note(cat("continuing from step ", step, " with changed settings (output.on_change=accept):", listed(c.changes),
           "\nthe config it was started with is kept as ", kept));
}

// What an accepted change does to the learning rate where the run continues: the schedule is
// recomputed for the new settings and length. A recorded length given in epochs is counted on this
// run's data (the same, unless data keys changed too).
std::string schedule_note(const TrainSection& recorded, int64_t recorded_total, const TrainSection& now,
                          int64_t total, int64_t step) {
  const float before = lr_at(recorded, int(step), int(recorded_total));
  const float after = lr_at(now, int(step), int(total));
  if (recorded_total == total && recorded.schedule == now.schedule)
    return cat("the lr of step ", step + 1, before == after ? " stays " : " changes from ", before,
               before == after ? "" : cat(" to ", after), " (", schedule_name(now.schedule), " schedule over ",
               total, " steps)");
  return cat("the ", schedule_name(now.schedule), " schedule is recomputed for ", total, " steps (was ",
             recorded_total, "-step ", schedule_name(recorded.schedule), "): the lr of step ", step + 1,
             before == after ? " stays " : " jumps from ", before, before == after ? "" : cat(" to ", after));
}

// An earlier process killed mid-save left a hidden temporary folder: never a checkpoint, deleted.
void remove_unfinished_saves(const std::string& run_dir) {
  for (const std::string& name : remove_unfinished_checkpoints(run_dir))
    note(cat("removed ", run_dir, "/checkpoints/", name, ", the unfinished save of an earlier run"));
}

// metrics.jsonl as this run starts from `step` (0: fresh): the lines of steps after it, written by
// a process that died before its next checkpoint, and lines that are not step records go.
void restart_metrics(const std::string& run_dir, int64_t step) {
  const MetricsCut cut = truncate_metrics_after(run_dir, step);
  if (!cut.bad_lines.empty()) {
    std::string lines;
    for (size_t i = 0; i < std::min<size_t>(cut.bad_lines.size(), 5); ++i)
      lines += cat(i ? ", " : "", cut.bad_lines[i]);
    note(cat("warning: ", run_dir, "/metrics.jsonl: dropped ", cut.bad_lines.size(),
             " line(s) that are not step records (line ", lines, cut.bad_lines.size() > 5 ? ", ..." : "", ")"));
  }
  if (step == 0 && cut.later > 0)
    note(cat(run_dir, "/metrics.jsonl: started anew (it held ", cut.later,
             " step line(s) of an earlier attempt that ended before its first checkpoint)"));
}

// Stops the run (every rank alike: they judge the same figures). The weights of `sane_step` and
// before produced sane figures; the newest checkpoint of those is the one to go back to, while
// later ones already hold the weights that went wrong.
[[noreturn]] void stop_diverged(const std::string& run_dir, int64_t step, const std::string& what,
                                const std::string& advice, int64_t sane_step) {
  const std::optional<std::string> before = latest_checkpoint(run_dir, sane_step);
  const bool later = latest_checkpoint(run_dir, step) != before;
  fail("step ", step, ": ", what, ". ",
       before ? cat("The last checkpoint from before it is intact: rerun with output.resume=", *before,
                    later ? " (later checkpoints hold the weights that went wrong). " : ". ")
              : std::string("No checkpoint holds weights from before it; start over. "),
       advice);
}

// dpo.precompute_reference, with auto resolved for a run that has `steps` steps left over `pairs` pairs:
// precomputing costs one reference forward per pair (again on every resume), the step's pass one per
// pair visited, and the two passes cost the same per pair (llama-3.1-8b nf4 on an H100: 12.0-12.6 ms;
// README), so precomputing pays from the second visit of each pair on; at two epochs it saves half
// the reference passes, and a resume still breaks even.
bool precomputes_reference(const TrainConfig& cfg, int64_t steps, size_t pairs) {
  switch (cfg.dpo.precompute_reference) {
    case PrecomputeReference::kTrue:
      return true;
    case PrecomputeReference::kFalse:
      return false;
    default:
      return steps * int64_t(cfg.train.global_batch) >= 2 * int64_t(pairs);
  }
}

// The objective of train.objective; a preference objective's reference table is computed here when
// dpo.precompute_reference says so (every rank takes part). steps: the steps left to train.
std::unique_ptr<Objective> make_objective(const TrainConfig& cfg, TrainBackend& backend,
                                          const std::vector<Document>& train, int64_t steps) {
  if (cfg.train.objective == ObjectiveKind::kSft) return std::make_unique<SftObjective>();
  PreferenceOptions o;
  o.beta = cfg.dpo.beta;
  o.label_smoothing = cfg.dpo.label_smoothing;
  o.orpo_lambda = cfg.orpo.lambda;
  if (cfg.train.objective == ObjectiveKind::kOrpo) {
    o.loss = PreferenceLoss::kOrpo;
  } else {
    const PreferenceLoss by_type[] = {PreferenceLoss::kSigmoid, PreferenceLoss::kIpo, PreferenceLoss::kRobust,
                                      PreferenceLoss::kHinge};  // DpoLossType order
    o.loss = by_type[size_t(cfg.dpo.loss_type)];
  }
  auto objective = std::make_unique<PreferenceObjective>(o);
  if (objective->needs_reference() && precomputes_reference(cfg, steps, train.size())) {
    const auto t0 = Clock::now();
    const DistContext& ctx = dist_context();
    objective->use_reference_table(precompute_reference(backend, train, cfg.train.token_budget, ctx.rank, ctx.world));
    note(cat("dpo.precompute_reference: reference log-probs of ", train.size(), " pairs in ",
             fixed_1(std::chrono::duration<double>(Clock::now() - t0).count()), " s"));
  }
  return objective;
}

// Rank 0 prepares (and caches) the data while the others wait, then every rank loads it.
RunDocuments documents_on_every_rank(const TrainConfig& cfg, const ModelConfig& mc) {
  if (!is_main()) barrier();
  RunDocuments docs = load_run_documents(cfg, mc);
  if (is_main()) barrier();
  return docs;
}

std::string early_stop_path(const std::string& run_dir) { return run_dir + "/early_stop.json"; }

// Rank 0, when train.early_stopping_patience stops the run at `step`: the record that makes a rerun
// with the same patience see a complete run instead of training on.
void record_early_stop(const TrainConfig& cfg, int64_t step, const Evaluator& ev) {
  nlohmann::json j = {{"step", step},
                      {"patience", cfg.train.early_stopping_patience},
                      {"best_step", ev.best_step() ? nlohmann::json(*ev.best_step()) : nlohmann::json()},
                      {"best_eval_loss", ev.best_loss() ? nlohmann::json(*ev.best_loss()) : nlohmann::json()}};
  std::ofstream f(early_stop_path(cfg.output.dir));
  f << j.dump() << "\n";
  LOOM_CHECK(f.flush(), "cannot write ", early_stop_path(cfg.output.dir));
}

// The step at which this run folder's run stopped early, when the checkpoint it would resume from is
// that step's and the patience is the one that stopped it (a changed patience trains on).
std::optional<int64_t> stopped_early_at(const TrainConfig& cfg, int64_t resume_step) {
  std::error_code ec;
  const std::string path = early_stop_path(cfg.output.dir);
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  try {
    const nlohmann::json j = read_json_file(path, "early-stop record");
    const int64_t step = j.at("step").get<int64_t>();
    if (step == resume_step && j.at("patience").get<int>() == cfg.train.early_stopping_patience) return step;
  } catch (const std::exception& e) {
    note(cat("warning: ignoring ", path, ": ", e.what()));
  }
  return std::nullopt;
}

// output.keep_best: the adapter the run exports is the best evaluation's (its checkpoint is spared
// by the rotation); the final weights when that checkpoint is missing (keep_best turned on later).
std::vector<float> exported_params(const TrainConfig& cfg, const LoraLayout& layout, const Evaluator& ev,
                                   std::vector<float> final_params) {
  if (!cfg.output.keep_best || !ev.best_step()) return final_params;
  const int64_t best = *ev.best_step();
  if (const std::optional<std::string> dir = latest_checkpoint(cfg.output.dir, best)) {
    TrainCheckpoint ck = load_checkpoint(*dir, layout);
    if (ck.step == best) {
      note(cat("exporting the adapter of the best evaluation (step ", best, ", eval loss ", *ev.best_loss(), ") from ",
               *dir));
      return std::move(ck.params);
    }
  }
  note(cat("warning: output.keep_best: no checkpoint of step ", best,
           " (the best evaluation) is left; exporting the final weights"));
  return final_params;
}

}  // namespace

// Every rank runs this with the same config; rank 0 alone writes files and logs. Ranks meet in
// the step's all-reduce (end_step) and the data barrier, nowhere else.
TrainSummary train(const TrainConfig& cfg) {
  const DistContext& ctx = dist_context();
  const Continuation continuation = check_against_record(cfg);
  if (is_main()) remove_unfinished_saves(cfg.output.dir);  // before the data barrier: no rank lists checkpoints yet
  if (is_main() && ctx.world > 1)  // before loading, the host work that the binding slows
    if (const std::string w = cpu_binding_warning(); !w.empty()) std::fprintf(stderr, "%s\n", w.c_str());
  const ModelConfig mc = resolve_model_config(cfg.model);
  const LoraLayout layout = make_lora_layout(mc, cfg.lora);
  const RunDocuments docs = documents_on_every_rank(cfg, mc);
  DataLoader loader(docs.train, loader_options(cfg.train, ctx.rank, ctx.world));
  const int64_t total = cfg.train.steps > 0 ? cfg.train.steps : loader.total_steps(cfg.train.epochs);
  const std::optional<ResumePoint> from = resume_point(cfg.output, layout);

  TrainSummary sum;
  sum.run_dir = cfg.output.dir;
  const std::optional<int64_t> early = from ? stopped_early_at(cfg, from->ck.step) : std::nullopt;
  if (from && (from->ck.step >= total || early)) {  // nothing left to train: no model loads, nothing is written
    sum.complete = true;
    sum.stopped_early_at = early;
    sum.first_step = sum.last_step = from->ck.step;
    sum.total_steps = total;
    sum.final_loss = logged_loss(cfg.output.dir, from->ck.step);
    return sum;
  }
  if (is_main() && !from) write_resolved_config(cfg);
  if (is_main() && from && continuation.record_anew) record_accepted_changes(cfg, continuation, from->ck.step);
  if (is_main() && from && continuation.recorded && !continuation.changes.empty()) {
    const TrainSection& was = continuation.recorded->train;
    note(schedule_note(was, was.steps > 0 ? was.steps : loader.total_steps(was.epochs), cfg.train, total,
                       from->ck.step));
  }
  TerminalStatus status(is_main() ? stderr : nullptr);  // rank 0 alone prints
  status.show(cat("loading ", model_name(cfg.model), " ..."));
  const auto load_start = Clock::now();
  const RunSamples samples(cfg, mc.V,
                           cfg.model.path.empty() ? mc.eos_ids : load_generation_defaults(cfg.model.path, mc).eos_ids);
  std::unique_ptr<TrainBackend> backend = make_backend(cfg, mc, layout, samples.decode_shape());
  const double load_s = seconds_since(load_start);
  status.clear();
  sum.device = backend->describe();
  if (from) {
    backend->restore(from->ck.params, from->ck.opt);
    loader.restore(from->ck.loader);
    sum.first_step = from->ck.step;
    note(cat("resuming from ", from->dir, " (step ", from->ck.step, " of ", total, ")"));
  }
  if (is_main()) restart_metrics(cfg.output.dir, sum.first_step);
  if (ctx.world > 1) barrier();  // every rank reads the evaluations logged so far once rank 0 has cut the log back
  Evaluator evaluator(cfg, docs.eval, ctx.rank, ctx.world, logged_evals(cfg.output.dir, sum.first_step));
  if (is_main())
    status.print(cat("loom: ", model_name(cfg.model), " | ", sum.device, " | ", ctx.world, " rank",
                     ctx.world > 1 ? "s" : "", " | ", docs.train.size(), " documents",
                     docs.eval.empty() ? std::string() : cat(" (+", docs.eval.size(), " held out for eval)"), " | ",
                     total, " steps | LoRA r=", layout.R,
                     " on ", layout.total, " params | loaded in ", fixed_1(load_s), " s"));

  std::optional<MetricsLog> log;
  if (is_main()) log.emplace(cfg.output.dir);
  // MFU needs the device's dense bf16 rate, measured here as BENCHMARK.md defines it; the step's
  // tokens ran on every rank's GPU (alike, as data parallelism assumes).
  const double peak_tflops = backend->on_gpu() ? measure_matmul_tflops() * ctx.world : 0.0;
  DivergenceDetector divergence(divergence_options(cfg.train));
  const std::unique_ptr<Objective> objective = make_objective(cfg, *backend, docs.train, total - sum.first_step);
  if (samples.enabled() && sum.first_step == 0) samples.write(0, *backend);  // what the model says untrained
  const auto t0 = Clock::now();
  int64_t step = sum.first_step;
  while (step < total) {
    const auto ts = Clock::now();
    Step s = loader.next();
    const float lr = lr_at(cfg.train, int(step), int(total));
    const StepOutcome r = run_step(*backend, *objective, s, lr, [&](size_t micro) {
      return dropout_seed(uint64_t(cfg.train.seed), step, ctx.rank, micro);
    });
    const double loss = r.loss;
    const double norm = r.grad_norm;
    ++step;
    // Every rank got through this step alive, so its all-reduce summed real gradients: a rank that
    // died mid-step can leave NCCL reading freed memory, and such a step must never be logged or
    // saved. A few microseconds per step.
    if (ctx.world > 1) barrier();
    // The figures of step k come from the weights after step k - 1: those of the step before the
    // first bad one are the last that gave sane figures.
    if (std::optional<Divergence> d = divergence.check(loss, norm, s.global_targets))
      stop_diverged(cfg.output.dir, step, d->what, d->advice, step - d->began_steps_ago - 2);

    StepMetrics m;
    m.step = int(step);
    m.loss = loss;
    m.lr = lr;
    m.grad_norm = norm;
    m.tokens = s.global_tokens;
    m.targets = s.global_targets;
    m.tokens_per_s = double(s.global_tokens) / std::max(seconds_since(ts), 1e-9);
    m.elapsed_s = seconds_since(t0);
    m.start_step = int(sum.first_step);
    m.pad_saved = s.packing.baseline_pad_share();
    m.objective = r.metrics;
    if (peak_tflops > 0) m.mfu = mfu(m.tokens_per_s, flops_per_token(mc, mean_attended_keys(mc, s.micro)), peak_tflops);
    if (double gib = backend->peak_memory_gib(); gib > 0) m.peak_mem_gib = gib;
    if (is_main()) {
      log->write(m);
      if (step % cfg.train.log_every == 0 || step == total) status.print(progress_line(m, int(total)));
    }
    if (step == sum.first_step + 1) {
      sum.first_loss = loss;
      if (is_main())
        status.print(cat("packing: ", s.packing.micro_batches, " micro-batches fill ",
                         fixed_1(100 * s.packing.efficiency()), "% of train.token_budget; batches of ",
                         kPaddedBaselineGroup, " padded to their longest would have computed ",
                         fixed_1(100 * s.packing.baseline_pad_share()), "% padding (0% here)"));
    }
    status.show(progress_bar(m, int(total)));
    sum.last_loss = loss;

    std::optional<EvalMetrics> eval;
    if (evaluator.due(step, total)) {
      eval = evaluator.evaluate(*backend, *objective, step);
      if (is_main()) {
        log->write_eval(*eval);
        status.print(eval_line(*eval, int(total)));
      }
    }
    if (samples.due(step, total)) samples.write(step, *backend);
    const bool stop_early = eval && evaluator.patience_exhausted();
    const bool new_best = eval && eval->improved && cfg.output.keep_best;
    const bool periodic = cfg.output.checkpoint_every > 0 && step % cfg.output.checkpoint_every == 0;
    if (periodic || step == total || new_best || stop_early) {
      // Every rank holds the same weights and judges them alike, so all stop together.
      std::vector<float> params = backend->lora_params();
      if (const std::string bad = adapter_weight_problem(params, layout); !bad.empty())
        stop_diverged(cfg.output.dir, step, "the adapter is not fit to save: " + bad,
                      "Lower train.lr or raise train.warmup_steps, and keep clipping on (train.max_grad_norm).",
                      step - 1);
      if (is_main())
        save_checkpoint(cfg.output.dir, {step, std::move(params), backend->optimizer_state(), loader.state()}, layout,
                        model_name(cfg.model), cfg.output.keep_checkpoints,
                        cfg.output.keep_best ? evaluator.best_step() : std::nullopt);
    }
    if (stop_early) {
      if (is_main()) record_early_stop(cfg, step, evaluator);
      status.print(cat("early stopping at step ", step, ": ", cfg.train.early_stopping_patience,
                       " evaluations without a lower eval loss (best ", *evaluator.best_loss(), " at step ",
                       *evaluator.best_step(), ")"));
      sum.stopped_early_at = step;
      break;
    }
  }
  sum.last_step = step;
  sum.seconds = seconds_since(t0);
  status.done();
  if (is_main()) export_run(cfg, mc, layout, exported_params(cfg, layout, evaluator, backend->lora_params()));
  return sum;
}

std::string completion_note(const TrainSummary& s) {
  char loss[64] = "";
  if (s.final_loss) std::snprintf(loss, sizeof loss, ", final loss %.4f at step %lld", *s.final_loss,
                                  static_cast<long long>(s.last_step));
  if (s.stopped_early_at)
    return cat("run folder ", s.run_dir, " stopped early at step ", *s.stopped_early_at, " of ", s.total_steps, loss,
               " (train.early_stopping_patience); nothing was trained. To train further, change "
               "train.early_stopping_patience with output.on_change=accept; to start over, choose another output.dir");
  return cat("run folder ", s.run_dir, " is complete (", s.last_step, " of ", s.total_steps, " steps", loss,
             "); nothing was trained. To train further, raise train.steps with output.on_change=accept; to start "
             "over, choose another output.dir");
}

}  // namespace loom
