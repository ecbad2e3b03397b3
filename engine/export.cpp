#include "engine/export.h"

#include <cstdio>

#include "models/model_source.h"
#include "ops/matmul.h"

namespace loom {

void merge_lora(ModelWeights& w, const LoraLayout& layout, const std::vector<float>& lora) {
  for (size_t l = 0; l < w.layers.size(); ++l)
    for (int t = 0; t < kNumTargets; ++t) {
      const LoraSlot& s = layout.slot(int(l), LoraTarget(t));
      if (!s.enabled) continue;
      // W (out, in) += scale · B (out, R) · A (R, in)
      matmul_ref(projection(w.layers[l], t)->data(), &lora[s.b_offset], &lora[s.a_offset], s.out, s.in, layout.R,
                 false, false, layout.scale, 1.f);
    }
}

void export_run(const TrainConfig& cfg, const ModelConfig& mc, const LoraLayout& layout,
                const std::vector<float>& lora) {
  const std::string& fmt = cfg.output.export_format;
  if (fmt == "peft") {
    save_peft_adapter(cfg.output.dir + "/adapter", layout, lora, model_name(cfg.model));
    std::fprintf(stderr, "adapter written to %s/adapter (PEFT format)\n", cfg.output.dir.c_str());
  } else if (fmt == "merged") {
    ModelSection unquantized = cfg.model;
    unquantized.quant = "bf16";
    ModelWeights w = resolve_host_weights(unquantized, mc);
    merge_lora(w, layout, lora);
    save_weights(cfg.output.dir + "/merged", mc, w);
    std::fprintf(stderr, "merged model written to %s/merged (bf16 safetensors)\n", cfg.output.dir.c_str());
  }
}

}  // namespace loom
