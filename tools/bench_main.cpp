// build/bench: BENCHMARK.md's sft-alpaca workload on one GPU, as figures.
//   build/bench --preset llama-3.1-8b [--quant nf4|bf16] [--recompute none|selective|full]
//               [--token-budget N] [--steps 5] [--warmup 2] [--json out.json]
//   build/bench --preset qwen3-0.6b --print-data     the documents of each step, no GPU needed
//                                                    (tools/hf_baseline.py checks its copy against it)
//   build/bench --preset llama-3.1-8b --forward-only --token-budget 16384
//                                                    build/score's model (ModelMode::kForward): its
//                                                    memory plan, peak memory and tokens/s
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
// stdout: one JSON object (also written to --json); stderr: progress, the memory plan, a table row.
// Default token budget: the largest step of the run rounded up to 1024 tokens, so every step is one
// micro-batch (the fastest choice when it fits; the memory plan says when it does not). Under
// --recompute full, whose point is the least memory, 4096 tokens: activations and scratch then take
// ≈ 2.6 GiB on the 8B presets instead of ≈ 5 GiB (tools/perf_notes.md), at two or three
// micro-batches per step.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
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
#include "engine/step.h"
#include "engine/training_data.h"
#include "models/compute_options.h"
#include "models/cuda_model.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"
#include "tools/flag_terms.h"

namespace loom {
namespace {

using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

// BENCHMARK.md's workload constants.
constexpr int kSequencesPerStep = 32;
constexpr int kDocuments = 4096;   // data.synthetic_docs default: the pool the loader shuffles
constexpr int kLoaderSeed = 42;    // train.seed default: the shuffle and the LoRA init
constexpr uint64_t kWeightSeed = 0;
constexpr int kBudgetQuantum = 1024;
constexpr int64_t kFullRecomputeBudget = 4096;  // twice the workload's longest document (2048)

const char* kUsage =
    "usage: build/bench --preset NAME [--quant nf4|bf16] [--recompute none|selective|full]\n"
    "                   [--token-budget N] [--steps N] [--warmup N] [--json FILE] [--print-data] [--forward-only]\n"
    "  Times BENCHMARK.md's sft-alpaca workload on GPU 0 and prints one JSON object.\n"
    "  Presets: qwen3-0.6b, llama-3.2-1b, mistral-7b, llama-3.1-8b, qwen3-8b.\n"
    "  --print-data prints each step's documents (lengths, id sums) without touching the GPU.\n"
    "  --forward-only times the scoring model (no gradients, no optimizer) and prints its plan.\n";

struct BenchOptions {
  std::string preset;
  Quant quant = Quant::kNf4;
  Recompute recompute = TrainSection{}.recompute;  // the engine's default
  int64_t token_budget = 0;                        // 0: one micro-batch per step
  int steps = 5, warmup = 2;
  std::string json_path;
  bool print_data = false;
  bool forward_only = false;
};

int parse_count(const std::string& flag, const std::string& value, int min) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LOOM_CHECK(used == value.size() && v >= min && v <= (1 << 30), flag, " expects an integer >= ", min, ", got '",
             value, "'");
  return int(v);
}

BenchOptions parse_args(int argc, char** argv) {
  BenchOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--print-data" || flag == "--forward-only") {
      (flag == "--print-data" ? o.print_data : o.forward_only) = true;
      continue;
    }
    LOOM_CHECK(i + 1 < argc, flag, " needs a value\n", kUsage);
    const std::string value = argv[++i];
    if (flag == "--preset") o.preset = value;
    else if (flag == "--quant") o.quant = parse_choice<Quant>(flag, value, kQuantNames);
    else if (flag == "--recompute") o.recompute = parse_choice<Recompute>(flag, value, kRecomputeNames);
    else if (flag == "--token-budget") o.token_budget = parse_count(flag, value, 1);
    else if (flag == "--steps") o.steps = parse_count(flag, value, 1);
    else if (flag == "--warmup") o.warmup = parse_count(flag, value, 0);
    else if (flag == "--json") o.json_path = value;
    else fail("unknown option ", flag, "\n", kUsage);
  }
  LOOM_CHECK(!o.preset.empty(), "--preset is required\n", kUsage);
  return o;
}

// train: the optimizer and batch settings of BENCHMARK.md (everything else at its default).
TrainSection bench_train_section(const BenchOptions& o, int64_t token_budget) {
  TrainSection t;
  t.device = Device::kCuda;
  t.token_budget = int(token_budget);
  t.global_batch = kSequencesPerStep;
  t.lr = 2e-4f;
  t.schedule = Schedule::kConstant;
  t.weight_decay = 0.f;
  t.max_grad_norm = 1.f;
  t.recompute = o.recompute;
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

// The steps of the run as the loader plans them with one micro-batch per step.
std::vector<Step> plan_steps(const std::vector<Document>& docs, int n_steps) {
  LoaderOptions lo = loader_options(bench_train_section(BenchOptions{}, 1), 0, 1);
  lo.token_budget = 0;
  for (const Document& d : docs) lo.token_budget += int64_t(d.ids.size());  // any step fits in one
  DataLoader loader(docs, lo);
  std::vector<Step> steps;
  for (int s = 0; s < n_steps; ++s) steps.push_back(loader.next());
  return steps;
}

int64_t default_token_budget(const std::vector<Document>& docs, int n_steps, Recompute recompute) {
  if (recompute == Recompute::kFull) return kFullRecomputeBudget;
  int64_t largest = 0;
  for (const Step& s : plan_steps(docs, n_steps)) largest = std::max(largest, s.global_tokens);
  return (largest + kBudgetQuantum - 1) / kBudgetQuantum * kBudgetQuantum;
}

// {"preset", "vocab", "documents", "first_lengths", "steps": [{"tokens", "lengths" (longest first),
// "id_sum"}]}: what tools/hf_baseline.py must reproduce, step by step.
Json data_json(const BenchOptions& o, const ModelConfig& cfg, const std::vector<Document>& docs) {
  Json first = Json::array();
  for (size_t i = 0; i < 16 && i < docs.size(); ++i) first.push_back(docs[i].ids.size());
  Json steps = Json::array();
  for (const Step& s : plan_steps(docs, o.warmup + o.steps)) {
    std::vector<int64_t> lengths;
    int64_t id_sum = 0;
    for (const MicroBatch& mb : s.micro) {
      for (int d = 0; d < mb.ndoc(); ++d) lengths.push_back(mb.cu_seqlens[d + 1] - mb.cu_seqlens[d]);
      for (int32_t id : mb.tokens) id_sum += id;
    }
    std::sort(lengths.rbegin(), lengths.rend());
    steps.push_back(Json{{"tokens", s.global_tokens}, {"lengths", lengths}, {"id_sum", id_sum}});
  }
  return Json{{"preset", o.preset}, {"vocab", cfg.V},           {"documents", docs.size()},
              {"seed", kLoaderSeed}, {"first_lengths", first}, {"steps", steps}};
}

// First line of a shell command's output ("" when it fails).
std::string command_output(const char* command) {
  std::FILE* p = popen(command, "r");
  if (!p) return "";
  char buf[256] = {0};
  const bool got = std::fgets(buf, sizeof buf, p) != nullptr;
  const int status = pclose(p);
  if (!got || status != 0) return "";
  std::string s = buf;
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

// The checkout's commit, "-dirty" when tracked files differ from it (the figure is then not that
// commit's); "unknown" outside a git checkout.
std::string git_commit() {
  const std::string head = command_output("git rev-parse --short HEAD 2>/dev/null");
  if (head.empty()) return "unknown";
  const bool dirty = !command_output("git status --porcelain --untracked-files=no 2>/dev/null").empty();
  return dirty ? head + "-dirty" : head;
}

std::string version_string(int v) { return cat(v / 1000, ".", (v % 1000) / 10); }

// GPU 0's name, the driver's version and the CUDA versions of the driver and of the runtime.
Json device_json() {
  cudaDeviceProp p{};
  CUDA_CHECK(cudaGetDeviceProperties(&p, 0));
  int driver = 0, runtime = 0;
  CUDA_CHECK(cudaDriverGetVersion(&driver));
  CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  const char* driver_query = "nvidia-smi --query-gpu=driver_version --format=csv,noheader -i 0 2>/dev/null";
  return Json{{"device", p.name},
              {"driver", command_output(driver_query)},
              {"driver_cuda", version_string(driver)},
              {"runtime_cuda", version_string(runtime)}};
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
  TrainConfig tc;
  tc.model.quant = o.quant;
  tc.model.double_quant = true;
  tc.lora = bench_lora_options();
  tc.train = bench_train_section(o, token_budget);
  std::fprintf(stderr, "bench: building %s (%s, random weights) with token budget %lld\n", o.preset.c_str(),
               quant_name(o.quant), static_cast<long long>(token_budget));
  try {
    return make_cuda_backend(cfg, WeightSource::random(cfg, kWeightSeed), layout,
                             lora_init(layout, uint64_t(kLoaderSeed)), tc);
  } catch (const Error& e) {
    fail(e.what(), "\n(when the plan does not fit: build/bench --token-budget N with N >= 2048, the longest ",
         "document, or --recompute full)");
  }
}

struct TimedRun {
  std::vector<double> step_seconds;
  double seconds = 0;
  double eval_seconds = 0;  // forward-only passes over the same micro-batches
  int64_t tokens = 0, padded_tokens = 0, micro_batches = 0;
  double last_loss = 0;
  std::vector<MicroBatch> micro;  // every timed micro-batch, for ℓ̄
};

// Every step goes through the trainer's divergence checks (engine/divergence.h): a step that
// computes garbage is not benchmarked.
void check_step(DivergenceDetector& divergence, const StepOutcome& f, const Step& step, const char* phase, int s) {
  if (std::optional<Divergence> d = divergence.check(f.loss, f.grad_norm, step.global_targets))
    fail("bench: ", phase, " step ", s, ": ", d->what,
         "; a step that computes garbage is not benchmarked (run the GPU tests)");
}

// One optimizer step through the trainer's step function; LoRA dropout is 0, so the masks' seed is moot.
StepOutcome bench_step(TrainBackend& backend, const Step& step, float lr) {
  SftObjective sft;
  return run_step(backend, sft, step, lr, [](size_t) { return uint64_t(0); });
}

TimedRun run_benchmark(TrainBackend& backend, const BenchOptions& o, const std::vector<Document>& docs,
                       int64_t token_budget) {
  const TrainSection t = bench_train_section(o, token_budget);
  DataLoader loader(docs, loader_options(t, 0, 1));
  DivergenceDetector divergence(divergence_options(t));
  for (int s = 0; s < o.warmup; ++s) {
    Step step = loader.next();
    const StepOutcome f = bench_step(backend, step, t.lr);
    std::fprintf(stderr, "bench: warm-up step %d/%d, loss %.4f, grad norm %.4f\n", s + 1, o.warmup, f.loss,
                 f.grad_norm);
    check_step(divergence, f, step, "warm-up", s + 1);
  }
  TimedRun run;
  const auto t0 = Clock::now();
  for (int s = 0; s < o.steps; ++s) {
    const auto ts = Clock::now();
    Step step = loader.next();
    const StepOutcome f = bench_step(backend, step, t.lr);
    run.step_seconds.push_back(std::chrono::duration<double>(Clock::now() - ts).count());
    check_step(divergence, f, step, "timed", s + 1);
    run.last_loss = f.loss;
    run.tokens += step.global_tokens;
    run.padded_tokens += step.packing.padded_tokens;
    run.micro_batches += int64_t(step.micro.size());
    for (MicroBatch& mb : step.micro) run.micro.push_back(std::move(mb));
  }
  run.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto e0 = Clock::now();
  backend.loss_sum(run.micro, true);  // waits for the device
  run.eval_seconds = std::chrono::duration<double>(Clock::now() - e0).count();
  return run;
}

Json result_json(const BenchOptions& o, const ModelConfig& cfg, const Ceilings& c, int64_t token_budget,
                 const TimedRun& run, const TrainBackend& backend) {
  const double tokens_per_s = double(run.tokens) / run.seconds;
  const double keys = mean_attended_keys(cfg, run.micro);
  const double fpt = flops_per_token(cfg, keys);
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
  j["sequences_per_step"] = kSequencesPerStep;
  j["warmup_steps"] = o.warmup;
  j["timed_steps"] = o.steps;
  j["micro_batches"] = run.micro_batches;
  j["tokens"] = run.tokens;
  j["seconds"] = run.seconds;
  j["step_times_s"] = run.step_seconds;
  j["flops_per_token"] = fpt;
  j["mean_attended_keys"] = keys;
  j["loss_last"] = run.last_loss;
  j["eval_seconds"] = run.eval_seconds;
  j["eval_time_ratio"] = run.eval_seconds / run.seconds;
  return j;
}

double gib(size_t bytes) { return double(bytes) / double(size_t(1) << 30); }

double device_memory_in_use_gib() {
  size_t free_b = 0, total_b = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  return gib(total_b - free_b);
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

void print_row(const Json& j) {
  std::fprintf(stderr, "%-14s %-5s %-10s budget %6lld | %9.0f tok/s | MFU %5.1f%% | %6.2f GiB | eval %.2fx | %s\n",
               j["preset"].get<std::string>().c_str(), j["mode"].get<std::string>().c_str(),
               j["recompute"].get<std::string>().c_str(), j["token_budget"].get<long long>(),
               j["tokens_per_s"].get<double>(), 100.0 * j["mfu"].get<double>(), j["peak_mem_gib"].get<double>(),
               j["eval_time_ratio"].get<double>(), j["device"].get<std::string>().c_str());
}

void emit(const Json& j, const std::string& json_path) {
  const std::string line = j.dump();
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
  if (json_path.empty()) return;
  std::ofstream f(json_path);
  f << line << "\n";
  LOOM_CHECK(f.flush(), "cannot write --json ", json_path, " (is the folder writable?)");
}

int run(int argc, char** argv) {
  const BenchOptions o = parse_args(argc, argv);
  const ModelConfig cfg = preset_model_config(o.preset);
  const std::vector<Document> docs =
      synthetic_documents(synthetic_workload("sft-alpaca", kDocuments, cfg.V, "build/bench"));
  if (o.print_data) {
    emit(data_json(o, cfg, docs), o.json_path);
    return 0;
  }
  LOOM_CHECK(cuda_available(), "build/bench needs a GPU: ", cuda_device_summary());
  const Ceilings c = measure_ceilings();
  const int64_t budget =
      o.token_budget > 0 ? o.token_budget : default_token_budget(docs, o.warmup + o.steps, o.recompute);
  if (o.forward_only) {
    emit(forward_only_json(o, cfg, docs, budget), o.json_path);
    return 0;
  }
  std::unique_ptr<TrainBackend> backend = build_backend(o, cfg, budget);
  const TimedRun timed = run_benchmark(*backend, o, docs, budget);
  const Json j = result_json(o, cfg, c, budget, timed, *backend);
  print_row(j);
  emit(j, o.json_path);
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
