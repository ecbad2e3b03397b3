// build/bench: BENCHMARK.md's sft-alpaca workload on one GPU, as figures.
//   build/bench --preset llama-3.1-8b [--quant nf4|bf16] [--recompute none|selective|full]
//               [--token-budget N] [--steps 5] [--warmup 2] [--json out.json]
//   build/bench --preset qwen3-0.6b --print-data     the documents of each step, no GPU needed
//                                                    (tools/hf_baseline.py checks its copy against it)
//   build/bench --preset llama-3.1-8b --forward-only --token-budget 16384
//                                                    build/score's model (ModelMode::kForward): its
//                                                    memory plan, peak memory and tokens/s
//   build/bench --preset llama-3.1-8b --dpo          BENCHMARK.md's DPO workload (below)
//   build/bench --preset llama-3.1-8b --long 32768   one document of L tokens per step (issue 14)
//   build/bench --preset llama-3.1-8b --long-search  the largest L whose plan fits, then --long L
// Training runs go through engine/step.h's run_step, the step build/train runs. After the timed
// steps the same micro-batches are evaluated (forward only, as train.eval_every does):
//   eval_time_ratio = eval seconds / training seconds of the same tokens
// The model is the preset with random weights (seed 0), LoRA r=16 alpha=16 dropout 0 on the seven
// projections, AdamW lr 2e-4 (constant) wd 0, clip 1.0, 32 sequences per step from the packed
// dataloader (seed 42) over 4096 synthetic documents. The device ceilings are measured first (while
// the device is empty), then `warmup` steps, then `steps` timed steps: end_step synchronises the
// device, so the timed window starts and ends with the device idle.
//   tokens_per_s = real tokens of the timed steps / their wall seconds
//   mfu          = tokens_per_s · flops_per_token(ℓ̄ of the timed steps) / matmul ceiling
// DPO (--dpo): pairs of the sft-alpaca length mix (data/synthetic.h synthetic_pairs: 2048 pairs from
// the 4096 documents), 16 pairs (32 sequences) per step, sigmoid loss, β 0.1, the reference = the
// adapters off. The warm-up and timed steps run the reference in each step (dpo.precompute_reference
// false, TRL's default); then the pairs of `steps` more steps get their reference log-probs first
// (timed on their own) and those steps run from the table:
//   pairs_per_s                 pairs of the timed steps / their seconds, reference in the step
//   precomputed_pairs_per_s     the same with the reference from the table (the step alone)
//   reference_pass_pairs_per_s  pairs / seconds of precompute_reference
//   mfu counts the reference forward too: flops_per_token + forward_flops_per_token (engine/flops.h)
// Long context (--long L): each step one synthetic document of exactly L tokens (ids as the
// workload's), token budget L, recompute full unless --recompute is given; MFU counts attention
// (ℓ̄ = (L + 1) / 2 keys per query); also the process's peak host memory (VmHWM) and, with
// --offload activations, offload_unhidden_share: the seconds the compute stream stood waiting for the
// layer inputs' copies (timing events around each wait) over the timed steps' seconds. --long-search:
// powers of two from 8192 tokens while the training plan (with AdamW's state) fits the free device
// memory, then bisection to 1024 tokens; the largest is then trained as --long L, which shows
// whether what the plan admits also runs.
// stdout: one JSON object (also written to --json); stderr: progress, the memory plan, a table row.
// Default token budget: the largest step of the run rounded up to 1024 tokens, so every step is one
// micro-batch (the fastest choice when it fits; the memory plan says when it does not). Under
// --recompute full, whose point is the least memory, 4096 tokens: activations and scratch then take
// ≈ 2.6 GiB on the 8B presets instead of ≈ 5 GiB (tools/perf_notes.md), at two or three
// micro-batches per step.
// Mixture-of-experts presets (qwen3-30b-a3b, mixtral-8x7b; issue 16): recompute full unless --recompute
// is given, since the sparse layers keep no activations and the engine trains them only that way
// (models/moe_layer.cpp); MFU counts the active parameters (the router and the K chosen experts).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/dataloader.h"
#include "data/synthetic.h"
#include "engine/config.h"
#include "ops/device.h"
#include "engine/divergence.h"
#include "ops/error.h"
#include "engine/flops.h"
#include "engine/backend.h"
#include "engine/objective.h"
#include "engine/optimizer.h"
#include "engine/preference.h"
#include "engine/step.h"
#include "engine/training_data.h"
#include "models/compute_options.h"
#include "models/cuda_model.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"
#include "tools/kernel_profile.h"
#include "tools/bench_common.h"
#include "tools/flag_terms.h"

namespace loom {
namespace {

using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

// BENCHMARK.md's workload constants.
constexpr int kSequencesPerStep = 32;
constexpr int kPairsPerStep = 16;  // DPO: 32 sequences per step too
constexpr int kDocuments = 4096;   // data.synthetic_docs default: the pool the loader shuffles
constexpr int kLoaderSeed = 42;    // train.seed default: the shuffle and the LoRA init
constexpr uint64_t kWeightSeed = 0;
constexpr int kBudgetQuantum = 1024;
constexpr int64_t kFullRecomputeBudget = 4096;  // twice the workload's longest document (2048)

const char* kUsage =
    "usage: build/bench --preset NAME [--quant nf4|bf16] [--recompute none|selective|full]\n"
    "                   [--token-budget N] [--steps N] [--warmup N] [--json FILE] [--print-data] [--forward-only]\n"
    "                   [--dpo] [--long L | --long-search] [--offload none|activations] [--profile] [--graphs]\n"
    "  Times BENCHMARK.md's sft-alpaca workload on GPU 0 and prints one JSON object.\n"
    "  Presets: qwen3-0.6b, llama-3.2-1b, mistral-7b, llama-3.1-8b, qwen3-8b; mixture of experts (recompute\n"
    "  full unless given): qwen3-30b-a3b, mixtral-8x7b.\n"
    "  --print-data prints each step's documents (lengths, id sums) without touching the GPU.\n"
    "  --forward-only times the scoring model (no gradients, no optimizer) and prints its plan.\n"
    "  --dpo times DPO on pairs of the sft-alpaca length mix (16 pairs per step).\n"
    "  --long L times one document of L tokens per step (recompute full unless given);\n"
    "  --long-search finds the largest L whose plan fits this GPU, then times it.\n"
    "  --offload activations keeps the layer inputs in pinned host memory (train.offload; recompute full).\n"
    "  --profile runs --steps more steps under CUPTI: time per kernel family, GPU-busy fraction, launches.\n"
    "  --graphs replays each micro-batch's forward and backward as a CUDA graph per 256-token bucket.\n";

struct BenchOptions {
  std::string preset;
  Quant quant = Quant::kNf4;
  Recompute recompute = TrainSection{}.recompute;  // the engine's default
  Offload offload = Offload::kNone;
  int64_t token_budget = 0;                        // 0: one micro-batch per step
  int steps = 5, warmup = 2;
  std::string json_path;
  bool print_data = false;
  bool forward_only = false;
  bool dpo = false;
  bool profile = false;     // --profile: kernel families (CUPTI) of `steps` more steps
  bool graphs = false;      // --graphs: CudaModelOptions::step_graphs
  int64_t long_tokens = 0;  // --long L: one document of L tokens per step
  bool long_search = false;
  bool recompute_given = false;
};

BenchOptions parse_args(int argc, char** argv) {
  BenchOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--print-data" || flag == "--forward-only" || flag == "--dpo" || flag == "--long-search" ||
        flag == "--profile" || flag == "--graphs") {
      (flag == "--print-data"    ? o.print_data
       : flag == "--dpo"         ? o.dpo
       : flag == "--long-search" ? o.long_search
       : flag == "--profile"     ? o.profile
       : flag == "--graphs"      ? o.graphs
                                 : o.forward_only) = true;
      continue;
    }
    LOOM_CHECK(i + 1 < argc, flag, " needs a value\n", kUsage);
    const std::string value = argv[++i];
    if (flag == "--preset") o.preset = value;
    else if (flag == "--quant") o.quant = parse_choice<Quant>(flag, value, kQuantNames);
    else if (flag == "--recompute") o.recompute = parse_choice<Recompute>(flag, value, kRecomputeNames),
                                    o.recompute_given = true;
    else if (flag == "--long") o.long_tokens = parse_count(flag, value, 2);
    else if (flag == "--offload") o.offload = parse_choice<Offload>(flag, value, kOffloadNames);
    else if (flag == "--token-budget") o.token_budget = parse_count(flag, value, 1);
    else if (flag == "--steps") o.steps = parse_count(flag, value, 1);
    else if (flag == "--warmup") o.warmup = parse_count(flag, value, 0);
    else if (flag == "--json") o.json_path = value;
    else fail("unknown option ", flag, "\n", kUsage);
  }
  LOOM_CHECK(!o.preset.empty(), "--preset is required\n", kUsage);
  LOOM_CHECK(o.offload != Offload::kAuto, "--offload takes none or activations: the bench times what it is told");
  LOOM_CHECK(!(o.dpo && o.forward_only), "--dpo and --forward-only are two different benchmarks; pick one");
  const bool long_context = o.long_tokens > 0 || o.long_search;
  LOOM_CHECK(!(o.long_tokens > 0 && o.long_search), "--long L times one length, --long-search finds one; pick one");
  LOOM_CHECK(!long_context || !(o.dpo || o.forward_only || o.print_data || o.token_budget > 0),
             "--long and --long-search set their own workload and token budget (one document of L tokens); drop "
             "--dpo, --forward-only, --print-data and --token-budget");
  if (long_context && !o.recompute_given) o.recompute = Recompute::kFull;  // the least memory: the point of L
  return o;
}

// train: the optimizer and batch settings of BENCHMARK.md (everything else at its default).
TrainSection bench_train_section(const BenchOptions& o, int64_t token_budget) {
  TrainSection t;
  t.device = Device::kCuda;
  t.token_budget = int(token_budget);
  t.global_batch = o.dpo ? kPairsPerStep : o.long_tokens > 0 ? 1 : kSequencesPerStep;
  t.objective = o.dpo ? ObjectiveKind::kDpo : ObjectiveKind::kSft;
  t.lr = 2e-4f;
  t.schedule = Schedule::kConstant;
  t.weight_decay = 0.f;
  t.max_grad_norm = 1.f;
  t.recompute = o.recompute;
  t.offload = o.offload;
  t.seed = kLoaderSeed;
  return t;
}

LoraOptions bench_lora_options() {
  LoraOptions l;
  l.r = 16;
  l.alpha = 16.f;
  l.dropout = 0.f;
  l.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return l;
}

// The run build/train would make of the workload at this token budget.
TrainConfig bench_train_config(const BenchOptions& o, int64_t token_budget) {
  TrainConfig tc;
  tc.model.quant = o.quant;
  tc.model.double_quant = true;
  tc.lora = bench_lora_options();
  tc.train = bench_train_section(o, token_budget);
  return tc;
}

// The steps of the run as the loader plans them with one micro-batch per step.
std::vector<Step> plan_steps(const BenchOptions& o, const std::vector<Document>& docs, int n_steps) {
  LoaderOptions lo = loader_options(bench_train_section(o, 1), 0, 1);
  lo.token_budget = 0;
  for (const Document& d : docs) lo.token_budget += int64_t(d.ids.size());  // any step fits in one
  DataLoader loader(docs, lo);
  std::vector<Step> steps;
  for (int s = 0; s < n_steps; ++s) steps.push_back(loader.next());
  return steps;
}

int64_t default_token_budget(const BenchOptions& o, const std::vector<Document>& docs, int n_steps) {
  if (o.recompute == Recompute::kFull) return kFullRecomputeBudget;
  int64_t largest = 0;
  for (const Step& s : plan_steps(o, docs, n_steps)) largest = std::max(largest, s.global_tokens);
  return (largest + kBudgetQuantum - 1) / kBudgetQuantum * kBudgetQuantum;
}

// {"preset", "vocab", "documents", "first_lengths", "steps": [{"tokens", "lengths" (longest first),
// "id_sum"}]}: what tools/hf_baseline.py must reproduce, step by step. Under --dpo
// (tools/trl_dpo_baseline.py): "pairs" for "documents", first_lengths the two sequence lengths of
// each of the first 8 pairs, and each step's "pairs".
Json data_json(const BenchOptions& o, const ModelConfig& cfg, const std::vector<Document>& docs) {
  Json first = Json::array();
  if (o.dpo) {
    for (size_t i = 0; i < 8 && i < docs.size(); ++i)
      for (int32_t n : docs[i].segments) first.push_back(n);
  } else {
    for (size_t i = 0; i < 16 && i < docs.size(); ++i) first.push_back(docs[i].ids.size());
  }
  Json steps = Json::array();
  for (const Step& s : plan_steps(o, docs, o.warmup + o.steps)) {
    std::vector<int64_t> lengths;
    int64_t id_sum = 0;
    for (const MicroBatch& mb : s.micro) {
      for (int d = 0; d < mb.ndoc(); ++d) lengths.push_back(mb.cu_seqlens[d + 1] - mb.cu_seqlens[d]);
      for (int32_t id : mb.tokens) id_sum += id;
    }
    std::sort(lengths.rbegin(), lengths.rend());
    Json step{{"tokens", s.global_tokens}, {"lengths", lengths}, {"id_sum", id_sum}};
    if (o.dpo) step["pairs"] = s.global_docs;
    steps.push_back(step);
  }
  return Json{{"preset", o.preset}, {"vocab", cfg.V},           {o.dpo ? "pairs" : "documents", docs.size()},
              {"seed", kLoaderSeed}, {"first_lengths", first}, {"steps", steps}};
}

struct Ceilings {
  double matmul_tflops = 0, copy_tbps = 0;
};

Ceilings measure_ceilings() {
  std::fprintf(stderr, "bench: measuring the device ceilings (8192³ bf16 matmul, 2 GiB copy)\n");
  Ceilings c;
  c.matmul_tflops = measure_matmul_tflops();
  c.copy_tbps = measure_copy_tbps();
  std::fprintf(stderr, "bench: %.1f TFLOP/s dense bf16, %.2f TB/s copy\n", c.matmul_tflops, c.copy_tbps);
  return c;
}

// The training backend build/train runs; a plan that does not fit names the bench's own flags.
std::unique_ptr<TrainBackend> build_backend(const BenchOptions& o, const ModelConfig& cfg, int64_t token_budget) {
  const LoraLayout layout = make_lora_layout(cfg, bench_lora_options());
  const TrainConfig tc = bench_train_config(o, token_budget);
  std::fprintf(stderr, "bench: building %s (%s, random weights) with token budget %lld\n", o.preset.c_str(),
               quant_name(o.quant), static_cast<long long>(token_budget));
  try {
    return make_cuda_backend(cfg, WeightSource::random(cfg, kWeightSeed), layout,
                             lora_init(layout, uint64_t(kLoaderSeed)), tc, {}, CudaTuning{-1, o.graphs});
  } catch (const Error& e) {
    fail(e.what(), "\n(when the plan does not fit: build/bench --token-budget N with N >= 2048, the longest ",
         "document, or --recompute full)");
  }
}

struct TimedRun {
  std::vector<double> step_seconds;
  double seconds = 0;
  double eval_seconds = 0;  // forward-only passes over the same micro-batches
  int64_t tokens = 0, padded_tokens = 0, micro_batches = 0, pairs = 0;
  double last_loss = 0;
  double offload_wait_seconds = 0;  // of the compute stream for train.offload's copies (0 without offload)
  std::vector<MicroBatch> micro;    // every timed micro-batch, for ℓ̄
};

// Every step goes through the trainer's divergence checks (engine/divergence.h): a step that
// computes garbage is not benchmarked.
void check_step(DivergenceDetector& divergence, const StepOutcome& f, const Step& step, const char* phase, int s) {
  if (std::optional<Divergence> d = divergence.check(f.loss, f.grad_norm, step.global_targets))
    fail("bench: ", phase, " step ", s, ": ", d->what,
         "; a step that computes garbage is not benchmarked (run the GPU tests)");
}

// The objective of the workload: SFT, or DPO's sigmoid loss at TRL's defaults (β 0.1).
std::unique_ptr<Objective> bench_objective(const BenchOptions& o) {
  if (o.dpo) return std::make_unique<PreferenceObjective>(PreferenceOptions{});
  return std::make_unique<SftObjective>();
}

// `count` optimizer steps through the trainer's step function (LoRA dropout is 0, so the masks'
// seed is moot), each from next(), timed from the step's data to its end_step (which waits for the
// device). Warm-up steps are `timed` false: run and checked, not kept.
TimedRun time_steps(TrainBackend& backend, Objective& objective, const std::function<Step()>& next, float lr,
                    DivergenceDetector& divergence, int count, const char* phase) {
  TimedRun run;
  const double waited_before = backend.offload_wait_seconds();  // between the timed windows
  for (int s = 0; s < count; ++s) {
    const auto ts = Clock::now();
    Step step = next();
    const StepOutcome f = run_step(backend, objective, step, lr, [](size_t) { return uint64_t(0); });
    run.step_seconds.push_back(std::chrono::duration<double>(Clock::now() - ts).count());
    std::fprintf(stderr, "bench: %s step %d/%d, loss %.4f, grad norm %.4f, %lld tokens in %.1f ms\n", phase, s + 1,
                 count, f.loss, f.grad_norm, static_cast<long long>(step.global_tokens), 1e3 * run.step_seconds.back());
    check_step(divergence, f, step, phase, s + 1);
    run.seconds += run.step_seconds.back();
    run.last_loss = f.loss;
    run.tokens += step.global_tokens;
    run.pairs += step.global_docs;
    run.padded_tokens += step.packing.padded_tokens;
    run.micro_batches += int64_t(step.micro.size());
    for (MicroBatch& mb : step.micro) run.micro.push_back(std::move(mb));
  }
  run.offload_wait_seconds = backend.offload_wait_seconds() - waited_before;
  return run;
}

// DPO with dpo.precompute_reference: the pairs of the next `count` steps get their reference
// log-probs first (timed: reference_seconds), then those steps run from the table.
struct PrecomputedRun {
  double reference_seconds = 0;
  int64_t reference_pairs = 0;
  TimedRun steps;
};

PrecomputedRun run_precomputed(TrainBackend& backend, PreferenceObjective& objective, DataLoader& loader,
                               const std::vector<Document>& pairs, int64_t token_budget, float lr,
                               DivergenceDetector& divergence, int count) {
  std::vector<Step> planned;
  std::vector<Document> subset;  // the pairs of the planned steps, in order
  std::vector<int64_t> index;    // their indices in `pairs`
  for (int s = 0; s < count; ++s) {
    planned.push_back(loader.next());
    for (const MicroBatch& mb : planned.back().micro)
      for (int64_t d : mb.documents) {
        subset.push_back(pairs[size_t(d)]);
        index.push_back(d);
      }
  }
  PrecomputedRun run;
  const auto t0 = Clock::now();
  const ReferenceTable part = precompute_reference(backend, subset, token_budget, 0, 1);  // waits
  run.reference_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  run.reference_pairs = int64_t(subset.size());
  ReferenceTable table;
  table.chosen.assign(pairs.size(), 0.0);
  table.rejected.assign(pairs.size(), 0.0);
  for (size_t i = 0; i < index.size(); ++i) {
    table.chosen[size_t(index[i])] = part.chosen[i];
    table.rejected[size_t(index[i])] = part.rejected[i];
  }
  objective.use_reference_table(std::move(table));
  size_t next = 0;
  run.steps = time_steps(backend, objective, [&] { return std::move(planned[next++]); }, lr, divergence, count,
                         "precomputed-reference");
  return run;
}

struct BenchRun {
  TimedRun timed;
  std::optional<PrecomputedRun> precomputed;  // --dpo
  std::optional<Json> profile;                // --profile: kernel families of `steps` more steps
};

// --profile: `steps` more steps under CUPTI (tools/kernel_profile.h), after the timed ones so its
// overhead stays out of their figures; printed and returned per step.
Json profile_steps(TrainBackend& backend, Objective& objective, const std::function<Step()>& next, float lr,
                   DivergenceDetector& divergence, int steps) {
  KernelProfile profile;
  profile.start();
  time_steps(backend, objective, next, lr, divergence, steps, "profiled");
  profile.stop();
  Json j = profile.summary(steps);
  KernelProfile::print(j, "bench:", "step");
  return j;
}

BenchRun run_benchmark(TrainBackend& backend, const BenchOptions& o, const std::vector<Document>& docs,
                       int64_t token_budget) {
  const TrainSection t = bench_train_section(o, token_budget);
  DataLoader loader(docs, loader_options(t, 0, 1));
  DivergenceDetector divergence(divergence_options(t));
  std::unique_ptr<Objective> objective = bench_objective(o);
  auto next = [&] { return loader.next(); };
  time_steps(backend, *objective, next, t.lr, divergence, o.warmup, "warm-up");
  BenchRun run;
  run.timed = time_steps(backend, *objective, next, t.lr, divergence, o.steps, "timed");
  const auto e0 = Clock::now();
  backend.loss_sum(run.timed.micro, true);  // waits for the device
  run.timed.eval_seconds = std::chrono::duration<double>(Clock::now() - e0).count();
  if (o.dpo)
    run.precomputed = run_precomputed(backend, static_cast<PreferenceObjective&>(*objective), loader, docs,
                                      token_budget, t.lr, divergence, o.steps);
  if (o.profile) run.profile = profile_steps(backend, *objective, next, t.lr, divergence, o.steps);
  return run;
}

// Peak resident host memory of this process (VmHWM), GiB; 0 where /proc does not say.
double peak_host_gib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return double(std::stoll(line.substr(6))) / double(1 << 20);  // kB
  return 0;
}

Json result_json(const BenchOptions& o, const ModelConfig& cfg, const Ceilings& c, int64_t token_budget,
                 const BenchRun& bench, const TrainBackend& backend) {
  const TimedRun& run = bench.timed;
  const double tokens_per_s = double(run.tokens) / run.seconds;
  const double keys = mean_attended_keys(cfg, run.micro);
  // DPO runs the reference forward besides the policy's forward and backward.
  const double fpt = flops_per_token(cfg, keys) + (o.dpo ? forward_flops_per_token(cfg, keys) : 0.0);
  Json j = {{"engine", "loom"},
            {"preset", o.preset},
            {"mode", quant_name(o.quant)},
            {"gpus", 1},
            {"tokens_per_s", tokens_per_s},
            {"mfu", mfu(tokens_per_s, fpt, c.matmul_tflops)},
            {"peak_mem_gib", backend.peak_memory_gib()},
            {"pad_share", 0.0},
            {"baseline_pad_share", 1.0 - double(run.tokens) / double(run.padded_tokens)}};
  j.update(device_json());
  j["commit"] = git_commit();
  j["matmul_tflops"] = c.matmul_tflops;
  j["copy_tbps"] = c.copy_tbps;
  j["token_budget"] = token_budget;
  j["recompute"] = recompute_name(o.recompute);
  j["offload"] = offload_name(o.offload);
  // Whether the timed steps ran as graphs: --graphs, where CudaModelOptions::step_graphs can (the
  // bench's LoRA dropout is 0 and it runs one rank; DPO's forward and backward are separate passes).
  j["step_graphs"] = o.graphs && !o.dpo && o.offload != Offload::kActivations && !cfg.is_moe();
  j["mlp_tile"] = mlp_tile_of(bench_train_section(o, token_budget));  // 0: the MLP untiled
  j["sequences_per_step"] = o.long_tokens > 0 ? 1 : kSequencesPerStep;
  if (o.long_tokens > 0) {
    j["long_tokens"] = o.long_tokens;
    j["peak_host_gib"] = peak_host_gib();
  }
  // train.offload: the share of the timed steps' wall time the compute stream stood waiting for the
  // layer inputs' copies (the copies the compute did not hide; 0 without offload).
  j["offload_wait_s"] = run.offload_wait_seconds;
  j["offload_unhidden_share"] = run.offload_wait_seconds / run.seconds;
  j["warmup_steps"] = o.warmup;
  j["timed_steps"] = o.steps;
  if (bench.profile) j["profile"] = *bench.profile;
  j["micro_batches"] = run.micro_batches;
  j["tokens"] = run.tokens;
  j["seconds"] = run.seconds;
  j["step_times_s"] = run.step_seconds;
  j["flops_per_token"] = fpt;
  j["mean_attended_keys"] = keys;
  j["loss_last"] = run.last_loss;
  j["eval_seconds"] = run.eval_seconds;
  j["eval_time_ratio"] = run.eval_seconds / run.seconds;
  if (bench.precomputed) {
    const PrecomputedRun& p = *bench.precomputed;
    j["objective"] = "dpo";
    j["pairs"] = run.pairs;
    j["pairs_per_s"] = double(run.pairs) / run.seconds;
    j["precomputed_pairs_per_s"] = double(p.steps.pairs) / p.steps.seconds;
    j["precomputed_step_times_s"] = p.steps.step_seconds;
    j["reference_pass_pairs_per_s"] = double(p.reference_pairs) / p.reference_seconds;
  }
  return j;
}

// build/score's model on this preset: the forward-only plan (weights, and everything else) and the
// process's device memory, measured while scoring the timed steps' micro-batches.
Json forward_only_json(const BenchOptions& o, const ModelConfig& cfg, const std::vector<Document>& docs,
                       int64_t token_budget) {
  const LoraLayout layout = make_lora_layout(cfg, bench_lora_options());
  CudaModelOptions mo;
  mo.mode = ModelMode::kForward;
  mo.quant = o.quant;
  mo.token_budget = token_budget;
  CudaModel model(cfg, layout, mo);
  const double before = device_memory_in_use_gib();
  model.load(WeightSource::random(cfg, kWeightSeed), lora_init(layout, uint64_t(kLoaderSeed)));
  std::vector<MicroBatch> micro;
  LoaderOptions lo = loader_options(bench_train_section(o, token_budget), 0, 1);
  DataLoader loader(docs, lo);
  for (int s = 0; s < o.warmup + o.steps; ++s)
    for (MicroBatch& mb : loader.next().micro) micro.push_back(std::move(mb));
  int64_t tokens = 0;
  double peak = 0, seconds = 0;
  for (size_t i = 0; i < micro.size(); ++i) {
    const auto t0 = Clock::now();
    model.forward(micro[i], PassOptions{});
    model.take_forward_loss_sum();  // waits
    if (i >= size_t(o.warmup)) {  // the first micro-batches warm cuBLASLt up
      seconds += std::chrono::duration<double>(Clock::now() - t0).count();
      tokens += micro[i].T();
    }
    peak = std::max(peak, device_memory_in_use_gib());
  }
  const double weights = gib(model.plan().group_bytes("weights"));
  Json j = {{"engine", "loom"},
            {"preset", o.preset},
            {"mode", std::string(quant_name(o.quant)) + " forward-only"},
            {"token_budget", token_budget},
            {"plan_weights_gib", weights},
            {"plan_lora_gib", gib(model.plan().group_bytes("lora"))},
            {"plan_activations_gib", gib(model.plan().group_bytes("activations"))},
            {"plan_scratch_gib", gib(model.plan().group_bytes("scratch"))},
            {"plan_total_gib", gib(model.planned_bytes())},
            {"memory_before_load_gib", before},
            {"peak_mem_gib", peak},
            {"peak_beyond_weights_gib", peak - weights},
            {"tokens_per_s", tokens > 0 ? double(tokens) / seconds : 0.0}};
  j.update(device_json());
  j["commit"] = git_commit();
  std::fprintf(stderr, "%s forward-only budget %lld | plan: weights %.2f GiB, the rest %.2f GiB | peak %.2f GiB "
                       "(%.2f GiB beyond the weights) | %.0f tok/s\n",
               o.preset.c_str(), static_cast<long long>(token_budget), weights, gib(model.planned_bytes()) - weights,
               peak, peak - weights, j["tokens_per_s"].get<double>());
  return j;
}

void print_dpo_row(const Json& j) {
  std::fprintf(stderr,
               "%-14s %-5s dpo budget %6lld | %7.2f pairs/s (reference in the step) | %7.2f pairs/s from a "
               "precomputed table, %7.2f pairs/s to precompute it | MFU %5.1f%% | %6.2f GiB | %s\n",
               j["preset"].get<std::string>().c_str(), j["mode"].get<std::string>().c_str(),
               j["token_budget"].get<long long>(), j["pairs_per_s"].get<double>(),
               j["precomputed_pairs_per_s"].get<double>(), j["reference_pass_pairs_per_s"].get<double>(),
               100.0 * j["mfu"].get<double>(), j["peak_mem_gib"].get<double>(), j["device"].get<std::string>().c_str());
}

void print_long_row(const Json& j) {
  std::fprintf(stderr, "%-14s %-5s %-10s long %8lld | %9.0f tok/s | MFU %5.1f%% (attention counted) | %6.2f GiB GPU | "
                       "%6.2f GiB host | copies not hidden %4.1f%% | %s\n",
               j["preset"].get<std::string>().c_str(), j["mode"].get<std::string>().c_str(),
               j["recompute"].get<std::string>().c_str(), j["long_tokens"].get<long long>(),
               j["tokens_per_s"].get<double>(), 100.0 * j["mfu"].get<double>(), j["peak_mem_gib"].get<double>(),
               j["peak_host_gib"].get<double>(), 100.0 * j["offload_unhidden_share"].get<double>(),
               j["device"].get<std::string>().c_str());
}

void print_row(const Json& j) {
  if (j.contains("pairs_per_s")) return print_dpo_row(j);
  if (j.contains("long_tokens")) return print_long_row(j);
  std::fprintf(stderr, "%-14s %-5s %-10s budget %6lld | %9.0f tok/s | MFU %5.1f%% | %6.2f GiB | eval %.2fx | %s\n",
               j["preset"].get<std::string>().c_str(), j["mode"].get<std::string>().c_str(),
               j["recompute"].get<std::string>().c_str(), j["token_budget"].get<long long>(),
               j["tokens_per_s"].get<double>(), 100.0 * j["mfu"].get<double>(), j["peak_mem_gib"].get<double>(),
               j["eval_time_ratio"].get<double>(), j["device"].get<std::string>().c_str());
}

// One synthetic document of exactly L tokens per step of the run (the workload's ids).
std::vector<Document> long_documents(const BenchOptions& o, int32_t vocab) {
  SyntheticSpec s = synthetic_workload("sft-alpaca", o.warmup + o.steps, vocab, "build/bench");
  s.median_length = double(o.long_tokens);
  s.sigma = 0;
  s.min_length = s.max_length = o.long_tokens;
  return synthetic_documents(s);
}

// Whether a training run of one L-token document per step fits this GPU, by the memory plan the
// backend makes (with --offload activations, as many layers' inputs kept on the GPU as fit there).
bool long_plan_fits(const BenchOptions& o, const ModelConfig& cfg, int64_t L) {
  const CudaPlan plan = plan_cuda_training(cfg, make_lora_layout(cfg, bench_lora_options()), bench_train_config(o, L),
                                           {}, o.offload);
  std::fprintf(stderr, "bench: L = %lld: plan %.2f GiB, host %.2f GiB (%d layers' inputs kept on the GPU), %s\n",
               static_cast<long long>(L), gib(plan.device_bytes), gib(plan.host_bytes), plan.offload_device_layers,
               plan.fits() ? "fits" : "does not fit");
  return plan.fits();
}

// The largest L, a multiple of 1024, whose plan fits (powers of two from 8192, then bisection).
int64_t largest_long_that_fits(const BenchOptions& o, const ModelConfig& cfg) {
  constexpr int64_t kStart = 8192, kStep = 1024, kLimit = int64_t(1) << 30;
  int64_t fits = 0, fails = kStart;
  while (fails <= kLimit && long_plan_fits(o, cfg, fails)) fits = fails, fails *= 2;
  LOOM_CHECK(fits > 0, "--long-search: not even ", kStart, " tokens fit this GPU's free memory");
  while (fails - fits > kStep) {
    const int64_t mid = (fits + fails) / 2 / kStep * kStep;
    (long_plan_fits(o, cfg, mid) ? fits : fails) = mid;
  }
  return fits;
}

int run(int argc, char** argv) {
  BenchOptions o = parse_args(argc, argv);
  const ModelConfig cfg = preset_model_config(o.preset);
  if (cfg.is_moe() && !o.recompute_given) o.recompute = Recompute::kFull;  // the only way its experts train
  if (o.long_search) {
    LOOM_CHECK(cuda_available(), "build/bench needs a GPU: ", cuda_device_summary());
    o.long_tokens = largest_long_that_fits(o, cfg);
    std::fprintf(stderr, "bench: the largest L whose plan fits: %lld tokens; training it\n",
                 static_cast<long long>(o.long_tokens));
  }
  const SyntheticSpec spec = synthetic_workload("sft-alpaca", kDocuments, cfg.V, "build/bench");
  const std::vector<Document> docs = o.long_tokens > 0 ? long_documents(o, cfg.V)
                                     : o.dpo            ? synthetic_pairs(spec)
                                                        : synthetic_documents(spec);
  if (o.print_data) {
    emit_json(data_json(o, cfg, docs), o.json_path);
    return 0;
  }
  LOOM_CHECK(cuda_available(), "build/bench needs a GPU: ", cuda_device_summary());
  const Ceilings c = measure_ceilings();
  const int64_t budget = o.long_tokens > 0  ? o.long_tokens
                         : o.token_budget > 0 ? o.token_budget
                                              : default_token_budget(o, docs, o.warmup + (o.dpo ? 2 : 1) * o.steps);
  if (o.forward_only) {
    emit_json(forward_only_json(o, cfg, docs, budget), o.json_path);
    return 0;
  }
  std::unique_ptr<TrainBackend> backend = build_backend(o, cfg, budget);
  const BenchRun timed = run_benchmark(*backend, o, docs, budget);
  const Json j = result_json(o, cfg, c, budget, timed, *backend);
  print_row(j);
  emit_json(j, o.json_path);
  return 0;
}

}  // namespace
}  // namespace loom

int main(int argc, char** argv) {
  if (argc > 1 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    std::fputs(loom::kUsage, stdout);
    return 0;
  }
  try {
    return loom::run(argc, argv);
  } catch (...) {
    std::fprintf(stderr, "error: %s\n", loom::describe_current_exception().c_str());
    return 1;
  }
}
