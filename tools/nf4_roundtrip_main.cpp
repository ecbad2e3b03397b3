// build/nf4_roundtrip MODEL_DIR OUT_DIR
// Writes OUT_DIR/model.safetensors (fp32) + config.json: the checkpoint of MODEL_DIR with every LoRA
// target projection replaced by its NF4 round trip exactly as loom's nf4 mode quantizes it
// (bf16 weight -> NF4 blocksize 64 with double quantization -> fp32; models/weights.h
// apply_nf4_roundtrip, the weights of the fp32 reference in nf4 mode). The GPU multiplies by these
// values rounded to bf16 (ops/nf4.h). Embeddings, norms, biases and the LM head are unchanged.
// tools/make_hf_fixtures.py measures the nf4 yardstick of tests/gpu_step_test.cpp on this output.
#include <cstdio>
#include <cstring>

#include "models/model_config.h"
#include "models/weights.h"
#include "ops/error.h"

namespace {

const char* kUsage = "usage: build/nf4_roundtrip MODEL_DIR OUT_DIR\n";

constexpr int kNf4Blocksize = 64;  // loom's nf4 mode (models/model_source.cpp, models/cuda_model.cpp)

int run(const std::string& model_dir, const std::string& out_dir) {
  const loom::ModelConfig cfg = loom::load_model_config(model_dir);
  loom::ModelWeights w = loom::load_weights(model_dir, cfg);
  loom::apply_nf4_roundtrip(w, kNf4Blocksize, /*double_quant=*/true);
  loom::save_weights(out_dir, cfg, w, loom::DType::F32);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fputs(kUsage, argc == 3 ? stdout : stderr);
    return argc == 3 ? 0 : 1;
  }
  try {
    return run(argv[1], argv[2]);
  } catch (...) {
    std::fprintf(stderr, "error: %s\n", loom::describe_current_exception().c_str());
    return 1;
  }
}
