// build/score --model DIR [--adapter DIR] [--device auto|cpu|cuda] < in.jsonl > out.jsonl
// Perplexity-style scoring: for each input line {"ids": [...]} writes
// {"nll": mean negative log-likelihood of ids[1:] given the prefix, "tokens": count}
// ("nll": null, "tokens": 0 for a line with fewer than two ids). On a GPU the model runs in bf16
// (models/cuda_model.h); --device cpu uses the fp32 reference path.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "ops/error.h"
#include "models/lora.h"
#include "models/model_config.h"
#include "engine/device.h"
#include "models/cuda_model.h"
#include "models/reference_model.h"
#include "models/weights.h"

namespace {

const char* kUsage =
    "usage: build/score --model DIR [--adapter DIR] [--device auto|cpu|cuda] < in.jsonl > out.jsonl\n"
    "  DIR: an HF model folder (config.json + *.safetensors); --adapter: a PEFT LoRA adapter folder.\n"
    "  --device: auto (default) uses the GPU when one is present; cpu forces the fp32 reference path.\n"
    "  Each input line {\"ids\": [int, ...]} gives one output line {\"nll\": <mean NLL of ids[1:]>, \"tokens\": <n>}.\n";

struct Args {
  std::string model, adapter, device = "auto";
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string {
      LOOM_CHECK(i + 1 < argc, k, " needs a value\n", kUsage);
      return argv[++i];
    };
    if (k == "--model") a.model = value();
    else if (k == "--adapter") a.adapter = value();
    else if (k == "--device") a.device = value();
    else loom::fail("unknown argument '", k, "'\n", kUsage);
  }
  LOOM_CHECK(!a.model.empty(), "--model is required\n", kUsage);
  LOOM_CHECK(a.device == "auto" || a.device == "cpu" || a.device == "cuda", "--device must be auto, cpu or cuda");
  return a;
}

std::vector<int32_t> parse_ids(const std::string& line, int64_t lineno, int V) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    loom::fail("stdin:", lineno, ": invalid JSON (", e.what(), ")");
  }
  LOOM_CHECK(j.is_object() && j.contains("ids") && j["ids"].is_array(), "stdin:", lineno,
             ": expected an object with an \"ids\" array, e.g. {\"ids\": [1, 2, 3]}");
  std::vector<int32_t> ids;
  for (const auto& v : j["ids"]) {
    LOOM_CHECK(v.is_number_integer(), "stdin:", lineno, ": ids must be integers, found ", v.dump());
    const int64_t id = v.get<int64_t>();
    LOOM_CHECK(id >= 0 && id < V, "stdin:", lineno, ": id ", id, " is outside the model's vocabulary [0, ", V, ")");
    ids.push_back(int32_t(id));
  }
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  try {
    Args args = parse_args(argc, argv);
    loom::ModelConfig cfg = loom::load_model_config(args.model);
    loom::LoraSection ls;
    std::vector<float> lora;
    if (!args.adapter.empty()) ls = loom::read_peft_lora_section(args.adapter);
    else ls.targets.clear();
    loom::LoraLayout layout = loom::make_lora_layout(cfg, ls);
    if (!args.adapter.empty()) lora = loom::load_peft_adapter(args.adapter, layout);
    // Read every line first: the GPU plan is sized by the longest sequence.
    std::vector<loom::Document> docs;
    std::string line;
    int64_t longest = 1;
    for (int64_t lineno = 1; std::getline(std::cin, line); ++lineno) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      loom::Document doc;
      doc.ids = parse_ids(line, lineno, cfg.V);
      doc.mask.assign(doc.ids.size(), 1);
      longest = std::max<int64_t>(longest, int64_t(doc.ids.size()));
      docs.push_back(std::move(doc));
    }
    const bool gpu = args.device == "cuda" || (args.device == "auto" && loom::cuda_available());
    std::unique_ptr<loom::CudaModel> cuda;
    std::unique_ptr<loom::ReferenceModel> ref;
    if (gpu) {
      loom::CudaModelOptions opt;
      opt.quant = "bf16";
      opt.recompute = "full";
      opt.token_budget = longest;
      opt.print_plan = false;
      cuda = std::make_unique<loom::CudaModel>(cfg, loom::WeightSource::checkpoint(args.model, cfg), layout, lora, opt);
    } else {
      ref = std::make_unique<loom::ReferenceModel>(cfg, loom::load_weights(args.model, cfg), layout);
    }
    for (const loom::Document& doc : docs) {
      nlohmann::json out = {{"nll", nullptr}, {"tokens", 0}};
      if (doc.ids.size() >= 2) {
        loom::MicroBatch mb = loom::pack_documents({&doc});
        std::vector<float> losses(mb.T());
        if (gpu) losses = cuda->token_losses(mb);
        else ref->run(mb, lora.data(), nullptr, 1.f, losses.data());
        double sum = 0;
        for (float x : losses) sum += x;
        out = {{"nll", sum / double(mb.n_targets())}, {"tokens", mb.n_targets()}};
      }
      std::cout << out.dump() << "\n";
    }
    return 0;
  } catch (...) {
    std::fprintf(stderr, "error: %s\n", loom::describe_current_exception().c_str());
    return 1;
  }
}
