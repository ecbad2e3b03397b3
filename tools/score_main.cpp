// build/score --model DIR [--adapter DIR] [--device auto|cpu|cuda] < in.jsonl > out.jsonl
// Perplexity-style scoring: for each input line {"ids": [...]} writes
// {"nll": mean negative log-likelihood of ids[1:] given the prefix, "tokens": count}
// ("nll": null, "tokens": 0 for a line with fewer than two ids). Lines are read by data/jsonl.h
// (at most 8 MiB, JSON nested at most 64 deep); a bad line is "error: stdin:LINE: ...", exit 1. On a GPU the model runs in bf16
// (models/cuda_model.h); --device cpu uses the fp32 reference path.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "data/json_fields.h"
#include "data/jsonl.h"
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

// The ids of one stdin line; `where` is "stdin:LINE".
std::vector<int32_t> parse_ids(const std::string& line, const std::string& where, int V) {
  const nlohmann::json j = loom::parse_jsonl_object(line, where);
  const nlohmann::json* list = loom::json_member(j, "ids");
  LOOM_CHECK(list && list->is_array(), where, ": expected an object with an \"ids\" array, e.g. {\"ids\": [1, 2, 3]}");
  std::vector<int32_t> ids;
  ids.reserve(list->size());
  for (const auto& v : *list) {
    LOOM_CHECK(v.is_number_integer(), where, ": ids must be integers, found ", loom::json_shown(v));
    // Unsigned first: 2^64 - 1 read as int64 would be -1.
    const bool in_vocab =
        v.is_number_unsigned() ? v.get<uint64_t>() < uint64_t(V) : v.get<int64_t>() >= 0 && v.get<int64_t>() < V;
    LOOM_CHECK(in_vocab, where, ": id ", v.dump(), " is outside the model's vocabulary [0, ", V, ")");
    ids.push_back(v.get<int32_t>());
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
    int64_t longest = 1;
    loom::JsonlReader input(std::cin, "stdin");
    for (std::string line; input.next(line);) {
      loom::Document doc;
      doc.ids = parse_ids(line, input.where(), cfg.V);
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
