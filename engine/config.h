// The experiment config: YAML -> one typed TrainConfig. Each folder owns the options of its
// section (model: models/model_source.h, lora: models/lora.h, data: data/data_options.h); train and
// output are below. Defaults live in those member initialisers and nowhere else. After
// load_config() returns, code reads these structs, never YAML; enum-like keys are enums.
#pragma once
#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "data/data_options.h"
#include "models/compute_options.h"
#include "models/lora.h"
#include "models/model_source.h"

namespace loom {

// The choices of the train and output sections, read from their YAML names once (config.cpp);
// each names array lists those spellings in enum order.

// Where a run computes: kAuto = the GPU when one is present, kCpu = the reference path, kCuda = the GPU.
enum class Device { kAuto, kCpu, kCuda };
inline constexpr std::array<const char*, 3> kDeviceNames = {"auto", "cpu", "cuda"};

// The learning-rate decay after warmup (engine/schedule.h).
enum class Schedule { kCosine, kLinear, kConstant };
inline constexpr std::array<const char*, 3> kScheduleNames = {"cosine", "linear", "constant"};
inline const char* schedule_name(Schedule s) { return kScheduleNames[size_t(s)]; }

// What the end of a run writes besides its checkpoints (engine/export.h).
enum class ExportFormat { kPeft, kMerged, kGguf, kNone };
inline constexpr std::array<const char*, 4> kExportFormatNames = {"peft", "merged", "gguf", "none"};

// Tensor type of export: gguf (engine/export.h): q8_0 (llama.cpp's 8-bit, about half the size of
// 16-bit and near-lossless; every llama.cpp backend runs it), f16, bf16.
enum class GgufType { kQ8_0, kF16, kBf16 };
inline constexpr std::array<const char*, 3> kGgufTypeNames = {"q8_0", "f16", "bf16"};
inline const char* gguf_type_name(GgufType t) { return kGgufTypeNames[size_t(t)]; }

// What a rerun does when its config differs from the one the run folder was started with in a
// key that changes what is trained (training_changes): kRefuse lists the differences and stops;
// kAccept continues with the new settings (the old record is kept as config.resolved.step-N.yaml).
enum class OnChange { kRefuse, kAccept };
inline constexpr std::array<const char*, 2> kOnChangeNames = {"refuse", "accept"};

// What a step minimises: kSft the token-mean cross-entropy of the targets; kDpo and kOrpo the
// preference losses of engine/preference.h over pairs (data.format pairs).
enum class ObjectiveKind { kSft, kDpo, kOrpo };
inline constexpr std::array<const char*, 3> kObjectiveNames = {"sft", "dpo", "orpo"};
inline const char* objective_name(ObjectiveKind o) { return kObjectiveNames[size_t(o)]; }

// dpo.loss_type (engine/preference.h gives each loss).
enum class DpoLossType { kSigmoid, kIpo, kRobust, kHinge };
inline constexpr std::array<const char*, 4> kDpoLossTypeNames = {"sigmoid", "ipo", "robust", "hinge"};
inline const char* dpo_loss_type_name(DpoLossType t) { return kDpoLossTypeNames[size_t(t)]; }
// dpo.precompute_reference: auto precomputes when the run sees its pairs at least twice (below).
enum class PrecomputeReference { kAuto, kTrue, kFalse };
inline constexpr std::array<const char*, 3> kPrecomputeReferenceNames = {"auto", "true", "false"};

struct TrainSection {
  Device device = Device::kAuto;
  ObjectiveKind objective = ObjectiveKind::kSft;
  int token_budget = 16384;      // tokens per packed micro-batch
  int global_batch = 32;         // sequences per optimizer step, across all ranks
  int steps = 0;                 // optimizer steps; 0 = as many as `epochs` gives
  int epochs = 1;
  float lr = 2e-4f;
  Schedule schedule = Schedule::kCosine;
  int warmup_steps = 0;
  float min_lr_ratio = 0.f;      // final lr = lr * min_lr_ratio (cosine/linear)
  float weight_decay = 0.f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float max_grad_norm = 1.f;     // 0 disables clipping
  Recompute recompute = Recompute::kSelective;
  Offload offload = Offload::kAuto;  // where recompute full keeps layer inputs on the GPU path (device/host)
  int mlp_tile = 0;  // GPU, recompute full: rows of the MLP's sequence tiles (a multiple of 1024); 0 = auto
  int seed = 42;
  int log_every = 1;
  // Divergence checks (engine/divergence.h); a non-finite loss or gradient always stops a run.
  bool divergence_check = true;  // stop when the loss leaves its band or the gradient dies
  int divergence_window = 50;    // steps of loss history behind the band's median
  float divergence_factor = 3.f; // the band: loss <= max(factor x median, median + 1)
  int zero_grad_steps = 3;       // steps in a row with grad norm exactly 0 (and targets) that stop
  // Evaluation on held-out data (data.eval_path or data.eval_split; either is required by both keys).
  int eval_every = 0;            // steps between evaluations; 0 = only at the end (it always runs there)
  int early_stopping_patience = 0;  // stop after this many evaluations in a row without a lower eval loss; 0 = off
  // What the model says while it trains (engine/run_samples.h): every sample_every steps (and before
  // the first and after the last), greedy continuations of sample_prompts into samples.jsonl.
  int sample_every = 0;                     // 0 = off
  std::vector<std::string> sample_prompts;  // prompt texts, or one entry naming a .jsonl file of
                                            // build/generate's input lines
  int sample_max_new_tokens = 64;
};

// The `dpo:` section (train.objective dpo), TRL's DPOConfig names and defaults.
struct DpoSection {
  double beta = 0.1;                 // β: the reward scale, how far the policy may move from the reference
  DpoLossType loss_type = DpoLossType::kSigmoid;
  double label_smoothing = 0;        // ε: the assumed share of flipped labels (sigmoid, robust)
  // The reference log-probs: true computes them once for every pair before the first step (one
  // forward per pair, repeated on resume), false in every step (one forward per pair seen). auto:
  // true when the steps left visit every pair at least twice on average (README, DPO benchmark:
  // at one epoch the two cost the same).
  PrecomputeReference precompute_reference = PrecomputeReference::kAuto;
};

// The `orpo:` section (train.objective orpo).
struct OrpoSection {
  double lambda = 0.1;  // λ: weight of the odds-ratio term beside the chosen completion's NLL
};

struct OutputSection {
  std::string dir = "runs/default";
  int checkpoint_every = 0;      // steps between checkpoints; 0 = only the final one
  int keep_checkpoints = 2;
  ExportFormat export_format = ExportFormat::kPeft;  // YAML key "export"
  GgufType gguf_type = GgufType::kQ8_0;
  // auto: the newest checkpoint in dir, which must verify | last_intact: the newest that verifies
  // (damaged newer ones are reported and skipped) | never | <checkpoint folder>
  std::string resume = "auto";
  OnChange on_change = OnChange::kRefuse;
  // Keep the checkpoint of the lowest eval loss too: keep_checkpoints' rotation never deletes it.
  // Needs eval data (data.eval_path or data.eval_split).
  bool keep_best = false;
};

struct TrainConfig {
  ModelOptions model;
  LoraOptions lora;
  DataOptions data;
  TrainSection train;
  DpoSection dpo;
  OrpoSection orpo;
  OutputSection output;
  std::string source;  // the YAML file it came from ("" for defaults)
};

// Longest sequence (data.max_seq_len, build/prepare --max-seq-len) and largest micro-batch
// (train.token_budget) in tokens: 8x the longest context of a supported model (Llama 3.1: 131072);
// past it one micro-batch's activations alone need terabytes.
constexpr int kMaxTokens = 1 << 20;
// Largest config file read: shipped configs are ~2 KB; anything near this is not a config.
constexpr size_t kMaxConfigBytes = size_t(1) << 20;

// Reads path (a regular UTF-8 file of at most kMaxConfigBytes), applies "section.key=value"
// overrides in order, validates. Throws loom::Error listing every problem found (each naming the
// file and line, or the override, and the key), unknown keys with a did-you-mean.
TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Same from YAML text (tests); `source` names it in messages.
TrainConfig parse_config(const std::string& yaml_text, const std::string& source,
                         const std::vector<std::string>& overrides = {});
// Every problem of an already-built config, one line each ("<source>: lora.r must be in [1, 4096]
// (found 0)"); empty when valid. Every numeric key has a stated range. Used by parse_config.
std::vector<std::string> validate(const TrainConfig& cfg);
// The config's paths against the filesystem, before anything is loaded: output.dir and the data
// cache are folders or can be created, data.path and data.eval_path are regular files or folders,
// data.tokenizer exists, model.path is a folder with config.json, lora.init_from a folder with
// adapter_config.json, output.resume a folder. A wrong
// path fails in a moment, naming its key, instead of after the model has loaded (or as a hang on a
// FIFO).
void check_paths(const TrainConfig& cfg);
// The data part of check_paths (what build/prepare CONFIG.yaml reads and writes).
void check_data_paths(const TrainConfig& cfg);
// Where a JSONL data.path is prepared into: data.cache_dir, default <output.dir>/data.
std::string data_cache_dir(const TrainConfig& cfg);
// The resolved config as YAML (every key, defaults included); parse_config(to_yaml(c)) == c.
// Depends on the values only (not on `source`), so two runs' resolved configs compare as text.
std::string to_yaml(const TrainConfig& cfg);

// One key whose value differs between two configs, values as to_yaml writes them.
struct ConfigChange {
  std::string key;  // "train.lr"
  std::string before, after;
};
// The keys in which `now` differs from `recorded` (the config a run folder was started with) that
// change what the run trains: model, LoRA, data (the eval split included), optimizer, schedule and
// length (early stopping included). Keys that only change how the run is watched, saved or
// computed (logging, evaluation, checkpoints, export, device, recompute, divergence checks, the
// data cache's place) are left out: a resume may change them.
std::vector<ConfigChange> training_changes(const TrainConfig& recorded, const TrainConfig& now);

}  // namespace loom
