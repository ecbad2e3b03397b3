// The experiment config: YAML -> one typed TrainConfig. Defaults live in the member initialisers
// below and nowhere else. After load_config() returns, code reads these structs, never YAML.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace loom {

struct ModelSection {
  std::string path;          // HF folder (config.json + safetensors); empty when preset is set
  std::string preset;        // BENCHMARK.md preset or "tiny": random-initialised weights, no checkpoint
  std::string quant = "nf4"; // "nf4" (QLoRA) | "bf16"
  bool double_quant = true;  // NF4 absmax double quantization (bnb_4bit_use_double_quant)
  int init_seed = 0;         // seed of the random weights of a preset
};

struct LoraSection {
  int r = 16;
  float alpha = 16.f;
  float dropout = 0.f;
  bool rslora = false;  // scale alpha/sqrt(r) instead of alpha/r
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
};

struct DataSection {
  std::string path;                  // JSONL file, or a folder of prepared shards
  std::string synthetic;             // "" or "sft-alpaca" (BENCHMARK.md workload; no path needed)
  int synthetic_docs = 4096;         // documents generated for synthetic data
  std::string format = "auto";       // auto | messages | sharegpt | alpaca | text
  std::string tokenizer;             // tokenizer.json / .model / folder; default: model.path
  std::string template_name = "auto";// YAML key "template": auto | chatml | qwen3 | llama3 | mistral | llama2 | none
  std::string train_on = "responses";// responses | all
  int max_seq_len = 2048;
  std::string overlong = "truncate"; // truncate | drop
  std::string on_bad_line = "error"; // error | skip
  std::string cache_dir;             // prepared-shard cache for JSONL input; default <output.dir>/data
};

struct TrainSection {
  std::string device = "auto";   // auto (GPU if present) | cpu (reference path) | cuda
  int token_budget = 16384;      // tokens per packed micro-batch
  int global_batch = 32;         // sequences per optimizer step, across all ranks
  int steps = 0;                 // optimizer steps; 0 = as many as `epochs` gives
  int epochs = 1;
  float lr = 2e-4f;
  std::string schedule = "cosine";  // cosine | linear | constant
  int warmup_steps = 0;
  float min_lr_ratio = 0.f;      // final lr = lr * min_lr_ratio (cosine/linear)
  float weight_decay = 0.f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  float max_grad_norm = 1.f;     // 0 disables clipping
  std::string recompute = "selective";  // none | selective | full
  int seed = 42;
  int log_every = 1;
  // Divergence checks (engine/divergence.h); a non-finite loss or gradient always stops a run.
  bool divergence_check = true;  // stop when the loss leaves its band or the gradient dies
  int divergence_window = 50;    // steps of loss history behind the band's median
  float divergence_factor = 3.f; // the band: loss <= max(factor x median, median + 1)
  int zero_grad_steps = 3;       // steps in a row with grad norm exactly 0 (and targets) that stop
};

struct OutputSection {
  std::string dir = "runs/default";
  int checkpoint_every = 0;      // steps between checkpoints; 0 = only the final one
  int keep_checkpoints = 2;
  std::string export_format = "peft";  // YAML key "export": peft | merged | gguf | none
  // Tensor type of export: gguf (engine/export.h): q8_0 (llama.cpp's 8-bit, about half the size of
  // 16-bit and near-lossless; every llama.cpp backend runs it) | f16 | bf16
  std::string gguf_type = "q8_0";
  // auto: the newest checkpoint in dir, which must verify | last_intact: the newest that verifies
  // (damaged newer ones are reported and skipped) | never | <checkpoint folder>
  std::string resume = "auto";
  // What a rerun does when its config differs from the one the run folder was started with in a
  // key that changes what is trained (training_changes): refuse (list the differences) | accept
  // (continue with the new settings; the old record is kept as config.resolved.step-N.yaml)
  std::string on_change = "refuse";
};

struct TrainConfig {
  ModelSection model;
  LoraSection lora;
  DataSection data;
  TrainSection train;
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
// cache are folders or can be created, data.path is a regular file or a folder, data.tokenizer
// exists, model.path is a folder with config.json, output.resume a folder. A wrong path fails in a
// moment, naming its key, instead of after the model has loaded (or as a hang on a FIFO).
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
// change what the run trains: model, LoRA, data, optimizer, schedule and length. Keys that only
// change how the run is watched, saved or computed (logging, checkpoints, export, device,
// recompute, divergence checks, the data cache's place) are left out: a resume may change them.
std::vector<ConfigChange> training_changes(const TrainConfig& recorded, const TrainConfig& now);

}  // namespace loom
