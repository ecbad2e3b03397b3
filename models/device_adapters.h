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

// Every expert's adapter of one target in a sparse layer, for the grouped GEMMs (ops/grouped_gemm.h):
// expert e's A (r, in), B (out, r) and their gradients at these pointers + e·stride (the layout keeps
// a layer's experts evenly spaced). A null: no adapter there, or adapters off for the pass.
struct ExpertLoraDevice {
  const bf16* A = nullptr;
  const bf16* B = nullptr;
  float* dA = nullptr;  // fp32 gradients (+=); backward only
  float* dB = nullptr;
  int64_t stride = 0;  // elements between consecutive experts' slots
  int r = 0;           // the slot's rank (2R for gate_up)
  float scale = 0.f;
};

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
  // The adapters of target t of every expert of sparse layer l, as slot() gives one projection's.
  ExpertLoraDevice expert_slots(int l, ExpertTarget t, bool on, bool grads, bool reference = false) const;

 private:
  template <class View>
  void point_at(View& d, const LoraSlot& s, bool grads, bool reference) const;

  LoraLayout layout_;
  bool training_, reference_;
  float *master_ = nullptr, *grads_ = nullptr;
  bf16* bf16_ = nullptr;
  bf16* reference_bf16_ = nullptr;
};

}  // namespace loom
