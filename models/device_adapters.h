// The LoRA adapters on the GPU: the bf16 copy the GEMMs read (the flat vector of models/lora.h) and,
// when training, fp32 master weights and fp32 gradients in the same layout (one contiguous buffer,
// so the grad norm, the optimizer and the all-reduce each see one vector). A forward-only model
// keeps the bf16 copy alone, rounded on the host as the device rounds it. The optimizer state is not
// here: it belongs to the optimizer (engine/optimizer.h).
#pragma once
#include <vector>

#include "models/device_buffers.h"
#include "models/lora.h"
#include "ops/lora_linear.h"

namespace loom {

class DeviceAdapters {
 public:
  // training: fp32 master and gradients too (a forward-only model keeps neither). reference: a
  // second, frozen bf16 copy (set_reference) for the reference passes of preference tuning.
  DeviceAdapters(const LoraLayout& layout, bool training, bool reference = false)
      : layout_(layout), training_(training), reference_(reference) {}
  // Group "lora".
  void plan(MemoryPlan& plan);
  // Uploads params (layout.total floats) and refreshes the bf16 copy; zeroes the gradients.
  void set(const std::vector<float>& params, cudaStream_t stream);
  std::vector<float> params(cudaStream_t stream) const;  // fp32 master (waits for stream); training only
  std::vector<float> grads(cudaStream_t stream) const;   // as accumulated so far (waits for stream)
  void refresh_bf16(cudaStream_t stream);                // after the optimizer changed the master
  void set_reference(const std::vector<float>& params);  // the frozen reference copy (bf16)
  void zero_grads(cudaStream_t stream);

  float* master() { return master_; }
  float* grads() { return grads_; }
  int64_t size() const { return layout_.total; }
  const LoraLayout& layout() const { return layout_; }

  // The adapter of projection t in layer l for ops/lora_linear.h: no adapter when the layout has none
  // there or `on` is false (adapters switched off for a pass); gradients only with `grads`.
  // reference: read the frozen reference copy (no gradients).
  LoraDevice slot(int l, LoraTarget t, bool on, bool grads, float dropout, uint64_t dropout_seed,
                  bool reference = false) const;

 private:
  LoraLayout layout_;
  bool training_, reference_;
  float *master_ = nullptr, *grads_ = nullptr;
  bf16* bf16_ = nullptr;
  bf16* reference_bf16_ = nullptr;
};

}  // namespace loom
