// build/decode_bench: generation speed on one GPU (issue 12), the figures tools/hf_generate_baseline.py
// gives for Hugging Face `generate`, on the same workload and with the same definitions.
//   build/decode_bench --preset llama-3.1-8b [--quant bf16|nf4] [--batch 1] [--prompt-len 128]
//                      [--new-tokens 256] [--adapters on|off] [--temperature T [--top-p P]] [--warmup 1]
//                      [--runs 3] [--json FILE]
// The model is the preset with random weights (seed 0), B prompts of prompt-len ids drawn uniformly
// from [3, V) (seed 1234; ids 0–2 are the presets' special tokens), greedy unless --temperature
// (then sampled on the GPU, ops/sampling.h sample_tokens, seed 0), every sequence generating exactly
// new-tokens tokens (no eos). With --adapters on (the default) a LoRA r=16 on the
// seven projections is applied unmerged, as after training; off is the base model, which is also
// the speed of an adapter merged into bf16 weights.
// Timing (steady clock around calls that wait for the device; median of --runs after --warmup):
//   prefill_s   CudaModel::prefill_tokens of the B prompts (packed, varlen flash attention, cache
//               written, each prompt's greedy token picked on the GPU), as generate() prefills
//   generate_s  the whole engine/generation.h generate() call: prefill, new-tokens − 1 decode steps,
//               greedy picks on the host
//   decode_tokens_per_s   B·new_tokens / (generate_s − prefill_s)  (as the HF baseline: the first
//               new token comes from the prefill)
//   prefill_tokens_per_s  B·prompt_len / prefill_s
// Roofline of one decode step, ℓ̄ = prompt_len + new_tokens/2 the mean number of keys attended:
//   bytes = W + 2·B·C + 4·L·KVH·D·B·ℓ̄
//     W: the weights a step reads as this run stores them — the memory plan's weight group (bf16, or
//        NF4 codes + scales with bf16 norms, embedding and head) less the embedding table when it is
//        not the head (a step looks up B rows of it: the 2·B·C term); K and V bf16 of B·ℓ̄ positions.
//   flops = B·(2·P + 4·L·H·D·ℓ̄), P the matmul parameters (head included): engine/flops.h
//   roofline_tokens_per_s = B / max(bytes / copy bandwidth, flops / matmul ceiling)
// The ceilings are measured first (a 2 GiB copy, an 8192³ bf16 matmul), as build/bench does.
// stdout: one JSON object (also written to --json); stderr: the plan, a table row.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/rng.h"
#include "engine/flops.h"
#include "engine/generation.h"
#include "models/compute_options.h"
#include "models/cuda_model.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "models/weights.h"
#include "ops/device.h"
#include "ops/error.h"
#include "tools/bench_common.h"
#include "tools/flag_terms.h"
#include "tools/kernel_profile.h"

namespace loom {
namespace {

using Json = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kWeightSeed = 0;    // build/bench's
constexpr uint64_t kPromptSeed = 1234;  // tools/hf_generate_baseline.py's PROMPT_SEED
constexpr int32_t kFirstId = 3;        // ids 0, 1, 2: pad / bos / eos of the presets

const char* kUsage =
    "usage: build/decode_bench --preset NAME [--quant bf16|nf4] [--batch B] [--prompt-len N] [--new-tokens N]\n"
    "                          [--adapters on|off] [--temperature T [--top-p P]] [--warmup N] [--runs N]\n"
    "                          [--json FILE] [--profile]\n"
    "  Times greedy generation on GPU 0 (prefill and decode tokens/s, beside the decode roofline) and\n"
    "  prints one JSON object. Presets: qwen3-0.6b, llama-3.2-1b, mistral-7b, llama-3.1-8b, qwen3-8b.\n"
    "  Defaults: bf16, batch 1, prompt 128, 256 new tokens, adapters on (LoRA r16 unmerged), 1 warm-up, 3 runs.\n"
    "  --profile: one more generation under CUPTI: GPU time per kernel family and busy fraction per decode step.\n";

SamplingParams greedy_params() {
  SamplingParams p;
  p.temperature = 0;
  return p;
}

struct DecodeBenchOptions {
  std::string preset;
  Quant quant = Quant::kBf16;
  int batch = 1, prompt_len = 128, new_tokens = 256;
  bool adapters = true;
  SamplingParams sampling = greedy_params();
  int warmup = 1, runs = 3;
  std::string json_path;
  bool profile = false;  // --profile: one more generation under CUPTI (tools/kernel_profile.h)
};

DecodeBenchOptions parse_args(int argc, char** argv) {
  DecodeBenchOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--profile") {
      o.profile = true;
      continue;
    }
    LOOM_CHECK(i + 1 < argc, flag, " needs a value\n", kUsage);
    const std::string value = argv[++i];
    if (flag == "--preset") o.preset = value;
    else if (flag == "--quant") o.quant = parse_choice<Quant>(flag, value, kQuantNames);
    else if (flag == "--batch") o.batch = parse_count(flag, value, 1);
    else if (flag == "--prompt-len") o.prompt_len = parse_count(flag, value, 1);
    else if (flag == "--new-tokens") o.new_tokens = parse_count(flag, value, 2);
    else if (flag == "--adapters") o.adapters = (check_choice(flag, value, {"on", "off"}), value == "on");
    else if (flag == "--temperature") o.sampling.temperature = float(parse_number(flag, value));
    else if (flag == "--top-p") o.sampling.top_p = float(parse_number(flag, value));
    else if (flag == "--warmup") o.warmup = parse_count(flag, value, 0);
    else if (flag == "--runs") o.runs = parse_count(flag, value, 1);
    else if (flag == "--json") o.json_path = value;
    else fail("unknown option ", flag, "\n", kUsage);
  }
  LOOM_CHECK(!o.preset.empty(), "--preset is required\n", kUsage);
  check_sampling_params(o.sampling);
  return o;
}

std::vector<std::vector<int32_t>> random_prompts(const DecodeBenchOptions& o, int32_t V) {
  SplitMix64 rng(kPromptSeed);
  std::vector<std::vector<int32_t>> prompts(size_t(o.batch), std::vector<int32_t>(size_t(o.prompt_len)));
  for (auto& p : prompts)
    for (int32_t& id : p) id = kFirstId + int32_t(rng.below(uint64_t(V - kFirstId)));
  return prompts;
}

double seconds_of(const std::function<void()>& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Roofline {
  double step_bytes = 0, step_flops = 0, tokens_per_s = 0;
};

Roofline decode_roofline(const DecodeBenchOptions& o, const ModelConfig& cfg, size_t planned_weight_bytes,
                         double copy_tbps, double matmul_tflops) {
  const double B = o.batch, mean_keys = o.prompt_len + o.new_tokens / 2.0;
  const double embedding = cfg.tie_embeddings ? 0.0 : 2.0 * double(cfg.V) * cfg.C;
  Roofline r;
  r.step_bytes = double(planned_weight_bytes) - embedding + 2.0 * B * cfg.C +
                 4.0 * cfg.L * cfg.KVH * cfg.D * B * mean_keys;
  r.step_flops = B * forward_flops_per_token(cfg, mean_keys);
  const double seconds = std::max(r.step_bytes / (copy_tbps * 1e12), r.step_flops / (matmul_tflops * 1e12));
  r.tokens_per_s = B / seconds;
  return r;
}

int run(int argc, char** argv) {
  const DecodeBenchOptions o = parse_args(argc, argv);
  const ModelConfig cfg = preset_model_config(o.preset);
  LOOM_CHECK(cuda_available(), "build/decode_bench needs a GPU: ", cuda_device_summary());
  std::fprintf(stderr, "decode_bench: measuring the device ceilings (8192³ bf16 matmul, 2 GiB copy)\n");
  const double matmul_tflops = measure_matmul_tflops(), copy_tbps = measure_copy_tbps();

  LoraOptions lora;  // build/bench's adapters: r 16, alpha 16 on the seven projections
  lora.r = 16;
  lora.alpha = 16.f;
  const LoraLayout layout = make_lora_layout(cfg, lora);
  const int64_t context = int64_t(o.prompt_len) + o.new_tokens;
  CudaModelOptions mo;
  mo.mode = ModelMode::kGenerate;
  mo.quant = o.quant;
  mo.token_budget = int64_t(o.batch) * o.prompt_len;
  mo.decode_batch = o.batch;
  mo.decode_context = context;
  CudaModel model(cfg, layout, mo);
  model.load(WeightSource::random(cfg, kWeightSeed), lora_init(layout, kPromptSeed),
             "lower --batch, --prompt-len or --new-tokens, or use --quant nf4");
  CudaDecoder decoder(model, cfg, o.batch, context, o.adapters);

  const std::vector<std::vector<int32_t>> prompts = random_prompts(o, cfg.V);
  GenerationOptions g;
  g.max_new_tokens = o.new_tokens;
  g.sampling = o.sampling;  // no eos ids: every sequence runs to new_tokens
  g.batch_size = o.batch;
  std::vector<double> prefill_s, generate_s;
  std::vector<int32_t> first_tokens;
  const TokenChoice first{g.sampling, std::vector<uint64_t>(size_t(o.batch)), std::vector<uint64_t>(size_t(o.batch))};
  double peak = 0;
  for (int r = 0; r < o.warmup + o.runs; ++r) {
    const double p = seconds_of([&] { model.prefill_tokens(prompts, o.adapters, first, first_tokens); });
    std::vector<Generation> out;
    const double t = seconds_of([&] { out = generate(decoder, nullptr, prompts, g); });
    for (const Generation& gen : out)
      LOOM_CHECK(int(gen.ids.size()) == o.new_tokens, "decode_bench: a sequence ended after ", gen.ids.size(),
                 " of ", o.new_tokens, " tokens");
    peak = std::max(peak, device_memory_in_use_gib());
    if (r < o.warmup) continue;  // the first calls pick cuBLASLt algorithms and fault the pages in
    prefill_s.push_back(p);
    generate_s.push_back(t);
  }
  const double prefill = median(prefill_s), total = median(generate_s);
  const double decode_tps = double(o.batch) * o.new_tokens / (total - prefill);
  const Roofline roof = decode_roofline(o, cfg, model.plan().group_bytes("weights"), copy_tbps, matmul_tflops);
  Json j = {{"engine", "loom"},
            {"preset", o.preset},
            {"quant", quant_name(o.quant)},
            {"adapters", o.adapters ? "unmerged" : "off"},
            {"temperature", o.sampling.temperature},
            {"top_p", o.sampling.top_p},
            {"batch", o.batch},
            {"prompt_len", o.prompt_len},
            {"new_tokens", o.new_tokens},
            {"prefill_s", prefill},
            {"generate_s", total},
            {"decode_tokens_per_s", decode_tps},
            {"prefill_tokens_per_s", double(o.batch) * o.prompt_len / prefill},
            {"roofline_step_bytes", roof.step_bytes},
            {"roofline_step_flops", roof.step_flops},
            {"roofline_tokens_per_s", roof.tokens_per_s},
            {"fraction_of_roofline", decode_tps / roof.tokens_per_s},
            {"plan_gib", gib(model.planned_bytes())},
            {"peak_mem_gib", peak},
            {"copy_tbps", copy_tbps},
            {"matmul_tflops", matmul_tflops}};
  j.update(device_json());
  j["commit"] = git_commit();
  std::fprintf(stderr,
               "%-14s %-4s %-7s adapters %-8s batch %3d | decode %9.1f tok/s (%5.1f%% of roofline %9.1f) | prefill %9.0f "
               "tok/s | %6.2f GiB | %s\n",
               o.preset.c_str(), quant_name(o.quant), o.sampling.temperature > 0 ? "sampled" : "greedy",
               o.adapters ? "unmerged" : "off", o.batch, decode_tps,
               100.0 * decode_tps / roof.tokens_per_s, roof.tokens_per_s, j["prefill_tokens_per_s"].get<double>(), peak,
               j["device"].get<std::string>().c_str());
  if (o.profile) {  // one more generation under CUPTI, after the timed ones: per generated token
    KernelProfile profile;
    profile.start();
    generate(decoder, nullptr, prompts, g);
    profile.stop();
    j["profile"] = profile.summary(o.new_tokens);
    KernelProfile::print(j["profile"], "decode_bench:", "decode step (prefill included, 1/new-tokens of it)");
  }
  emit_json(j, o.json_path);
  return 0;
}

}  // namespace
}  // namespace loom

int main(int argc, char** argv) { return loom::tool_main(argc, argv, loom::kUsage, {}, loom::run); }
