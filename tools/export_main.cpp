// build/export: an existing PEFT adapter + its base model -> a merged HF folder or a GGUF file, as
// output.export: merged | gguf writes at the end of a run (engine/export.h).
//   build/export --model DIR --adapter DIR --out PATH --format merged|gguf [--gguf-type q8_0|f16|bf16]
//                [--tokenizer PATH]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "engine/export.h"
#include "models/gguf_model.h"
#include "models/lora.h"
#include "models/model_source.h"
#include "ops/error.h"
#include "ops/files.h"

namespace {

const char* kUsage =
    "usage: build/export --model DIR --adapter DIR --out PATH --format merged|gguf [--gguf-type q8_0|f16|bf16]\n"
    "                    [--tokenizer PATH]\n"
    "  --model      the base: an HF folder (config.json + *.safetensors; bitsandbytes 4-bit is dequantized)\n"
    "  --adapter    a PEFT LoRA adapter folder trained on that base (e.g. <run>/adapter)\n"
    "  --format     merged: PATH becomes an HF model folder (safetensors in the base's dtype, its config,\n"
    "               tokenizer files and generation config); gguf: PATH is a .gguf file for llama.cpp\n"
    "  --gguf-type  tensor type of the GGUF file (default q8_0)\n"
    "  --tokenizer  the tokenizer the adapter was trained with (default: the one in --model)\n";

struct Args {
  std::string model, adapter, out, format, gguf_type = "q8_0", tokenizer;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      LOOM_CHECK(i + 1 < argc, flag, " needs a value\n", kUsage);
      return argv[++i];
    };
    if (flag == "--model") a.model = value();
    else if (flag == "--adapter") a.adapter = value();
    else if (flag == "--out") a.out = value();
    else if (flag == "--format") a.format = value();
    else if (flag == "--gguf-type") a.gguf_type = value();
    else if (flag == "--tokenizer") a.tokenizer = value();
    else loom::fail("unknown argument '", flag.substr(0, 80), "'\n", kUsage);
  }
  for (const auto& [flag, v] : {std::pair<const char*, const std::string&>{"--model", a.model},
                                {"--adapter", a.adapter}, {"--out", a.out}, {"--format", a.format}})
    LOOM_CHECK(!v.empty(), flag, " is required\n", kUsage);
  LOOM_CHECK(a.format == "merged" || a.format == "gguf", "--format must be merged or gguf (found '",
             a.format.substr(0, 40), "')");
  const auto& types = loom::gguf_type_names();
  LOOM_CHECK(std::find(types.begin(), types.end(), a.gguf_type) != types.end(),
             "--gguf-type must be q8_0, f16 or bf16 (found '", a.gguf_type.substr(0, 40), "')");
  std::error_code ec;
  LOOM_CHECK(std::filesystem::is_directory(a.adapter, ec), "--adapter: '", a.adapter.substr(0, 200),
             "' is not a folder (expected a PEFT adapter folder such as <run>/adapter)");
  if (a.format == "gguf")
    LOOM_CHECK(!std::filesystem::is_directory(a.out, ec), "--out: '", a.out.substr(0, 200),
               "' is a folder; with --format gguf it names the .gguf file to write");
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  try {
    const Args args = parse_args(argc, argv);
    loom::ExportSource src;
    src.model.path = args.model;
    src.tokenizer = args.tokenizer.empty() ? args.model : args.tokenizer;
    const loom::ModelConfig mc = loom::resolve_model_config(src.model);
    const loom::LoraLayout layout = loom::make_lora_layout(mc, loom::read_peft_lora_options(args.adapter));
    const std::vector<float> lora = loom::load_peft_adapter(args.adapter, layout);
    const loom::ModelWeights merged = loom::merged_weights(src, mc, layout, lora);
    std::vector<std::string> notes;
    if (args.format == "merged") {
      loom::require_folder_or_creatable(args.out, "--out");
      notes = loom::write_merged_folder(args.out, src, mc, merged);
    } else {
      notes = loom::write_merged_gguf(args.out, src, mc, merged, loom::gguf_type_from_name(args.gguf_type));
    }
    for (const std::string& n : notes) std::fprintf(stderr, "note: %s\n", n.c_str());
    std::fprintf(stderr, "wrote %s\n", args.out.c_str());
    return 0;
  } catch (...) {
    std::fprintf(stderr, "error: %s\n", loom::describe_current_exception().c_str());
    return 1;
  }
}
