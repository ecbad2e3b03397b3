// build/train CONFIG.yaml [section.key=value ...]
// Fine-tunes a LoRA adapter as the config says; see configs/*.yaml and README.md.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/config.h"
#include "ops/error.h"
#include "engine/trainer.h"
#include "dist/dist.h"

namespace {

const char* kUsage =
    "usage: build/train CONFIG.yaml [section.key=value ...]\n"
    "  Trains a LoRA/QLoRA adapter as CONFIG.yaml says; key=value pairs override it, e.g.\n"
    "    build/train configs/demo.yaml train.steps=20 output.dir=runs/short\n"
    "  Runs on the GPU when one is present (train.device=cpu forces the CPU reference path).\n"
    "  Writes <output.dir>/metrics.jsonl, config.resolved.yaml, checkpoints/step-N/, adapter/.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  try {
    loom::dist_init(&argc, &argv);
    std::vector<std::string> overrides(argv + 2, argv + argc);
    loom::TrainConfig cfg = loom::load_config(argv[1], overrides);
    loom::check_paths(cfg);  // before the model loads: a wrong path fails in a moment
    loom::TrainSummary s = loom::train(cfg);
    loom::dist_finalize();
    if (!loom::is_main()) return 0;
    if (s.complete) {
      std::fprintf(stderr, "%s\n", loom::completion_note(s).c_str());
      return 0;
    }
    std::fprintf(stderr, "done: steps %lld..%lld on %s in %.1f s, loss %.4f -> %.4f; run folder %s\n",
                 static_cast<long long>(s.first_step), static_cast<long long>(s.last_step), s.device.c_str(),
                 s.seconds, s.first_loss, s.last_loss, s.run_dir.c_str());
    return 0;
  } catch (...) {
    loom::dist_abort_with(loom::describe_current_exception());  // every rank ends with this message, never a hang
  }
}
