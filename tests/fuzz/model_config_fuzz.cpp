// libFuzzer target: the input is a Hugging Face config.json. Reads it as build/train and
// build/score do; a config that loads must also survive save_model_config (which may refuse it
// with a loom::Error) and, once saved, load back with the same shape (exports rely on that).
#include <filesystem>

#include "models/model_config.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

// The fields that decide tensor shapes; an export that changes one of them breaks its checkpoint.
bool same_shape(const loom::ModelConfig& a, const loom::ModelConfig& b) {
  return a.arch == b.arch && a.V == b.V && a.C == b.C && a.F == b.F && a.L == b.L && a.H == b.H &&
         a.KVH == b.KVH && a.D == b.D && a.tie_embeddings == b.tie_embeddings && a.qkv_bias == b.qkv_bias &&
         a.o_bias == b.o_bias && a.mlp_bias == b.mlp_bias && a.qk_norm == b.qk_norm && a.window == b.window &&
         a.num_experts == b.num_experts && a.experts_per_token == b.experts_per_token && a.expert_F == b.expert_F &&
         a.moe_layers == b.moe_layers;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  loom::fuzz::write_scratch("config.json", data, size);
  loom::ModelConfig cfg;
  try {
    cfg = loom::load_model_config(loom::fuzz::scratch_dir());
  } catch (const loom::Error&) {
    return 0;
  }
  (void)cfg.matmul_params();
  (void)cfg.active_matmul_params();
  const std::string saved = loom::fuzz::scratch_dir() + "/saved";
  std::filesystem::create_directories(saved);
  try {
    loom::save_model_config(cfg, saved);
  } catch (const loom::Error&) {
    return 0;  // a config.json that loom reads but cannot write (e.g. per-layer windows of one family)
  }
  try {
    if (!same_shape(cfg, loom::load_model_config(saved)))
      loom::fuzz::finding("save_model_config + load_model_config changed the model's shape");
  } catch (const loom::Error& e) {
    loom::fuzz::finding(std::string("a config.json written by save_model_config does not load: ") + e.what());
  }
  return 0;
}
