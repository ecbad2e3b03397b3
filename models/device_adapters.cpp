#include "models/device_adapters.h"

#include "ops/cast.h"
#include "ops/error.h"

namespace loom {

void DeviceAdapters::plan(MemoryPlan& p) {
  const size_t n = size_t(layout_.total);
  plan_buffer(p, "lora", "LoRA params (bf16 copy)", &bf16_, n, "(P)");
  if (reference_) plan_buffer(p, "lora", "reference adapter (bf16, frozen)", &reference_bf16_, n, "(P)");
  if (!training_) return;
  plan_buffer(p, "lora", "LoRA params (fp32 master)", &master_, n, "(P)");
  plan_buffer(p, "lora", "LoRA grads", &grads_, n, "(P)");
}

void DeviceAdapters::set(const std::vector<float>& params, cudaStream_t stream) {
  LOOM_CHECK(int64_t(params.size()) == layout_.total, "LoRA vector has ", params.size(), " floats, expected ",
             layout_.total);
  if (params.empty()) return;
  CUDA_CHECK(cudaStreamSynchronize(stream));
  if (!training_) return upload_bf16(bf16_, params);
  upload(master_, params);
  refresh_bf16(stream);
  zero_grads(stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

std::vector<float> DeviceAdapters::params(cudaStream_t stream) const {
  LOOM_CHECK(training_, "a forward-only model keeps no fp32 LoRA weights");
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return download(master_, size_t(layout_.total));
}

std::vector<float> DeviceAdapters::grads(cudaStream_t stream) const {
  LOOM_CHECK(training_, "a forward-only model keeps no LoRA gradients");
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return download(grads_, size_t(layout_.total));
}

void DeviceAdapters::refresh_bf16(cudaStream_t stream) {
  if (layout_.total > 0) cast_fp32_to_bf16(bf16_, master_, layout_.total, stream);
}

void DeviceAdapters::set_reference(const std::vector<float>& params) {
  LOOM_CHECK(reference_, "this model was planned without a reference adapter");
  LOOM_CHECK(int64_t(params.size()) == layout_.total, "reference adapter has ", params.size(), " floats, expected ",
             layout_.total);
  if (!params.empty()) upload_bf16(reference_bf16_, params);
}

void DeviceAdapters::zero_grads(cudaStream_t stream) {
  if (layout_.total > 0) CUDA_CHECK(cudaMemsetAsync(grads_, 0, size_t(layout_.total) * 4, stream));
}

// Points an adapter view (LoraDevice, ExpertLoraDevice) at slot s's A and B in the bf16 copy (or the
// frozen reference copy), and at their gradients when asked.
template <class View>
void DeviceAdapters::point_at(View& d, const LoraSlot& s, bool grads, bool reference) const {
  LOOM_CHECK(!reference || (reference_ && !grads), "reference adapter: not planned, or asked for gradients");
  const bf16* copy = reference ? reference_bf16_ : bf16_;
  d.A = copy + s.a_offset;
  d.B = copy + s.b_offset;
  if (!grads) return;
  d.dA = grads_ + s.a_offset;
  d.dB = grads_ + s.b_offset;
}

LoraDevice DeviceAdapters::slot(int l, LoraTarget t, bool on, bool grads, float dropout, uint64_t dropout_seed,
                                bool reference) const {
  const LoraSlot& s = layout_.slot(l, t);
  LoraDevice d;
  if (!on || !s.enabled) return d;
  point_at(d, s, grads, reference);
  d.R = layout_.R;
  d.scale = layout_.scale;
  d.dropout = dropout;
  d.dropout_seed = dropout_seed;
  d.dropout_stream = lora_dropout_stream(l, t);
  return d;
}

ExpertLoraDevice DeviceAdapters::expert_slots(int l, ExpertTarget t, bool on, bool grads, bool reference) const {
  ExpertLoraDevice d;
  if (!on || size_t(l) >= layout_.experts.size() || layout_.experts[size_t(l)].empty()) return d;
  const auto& experts = layout_.experts[size_t(l)];
  const LoraSlot& first = experts[0][t];
  if (!first.enabled) return d;
  const int64_t stride = experts.size() > 1 ? experts[1][t].a_offset - first.a_offset : 0;
  for (size_t e = 0; e < experts.size(); ++e)  // the grouped GEMMs address expert e at + e·stride
    LOOM_CHECK(experts[e][t].enabled && experts[e][t].a_offset == first.a_offset + int64_t(e) * stride &&
                   experts[e][t].b_offset == first.b_offset + int64_t(e) * stride,
               "LoRA layout: the ", kExpertTargetNames[t], " adapters of layer ", l, " are not evenly spaced");
  point_at(d, first, grads, reference);
  d.stride = stride;
  d.r = first.r;
  d.scale = first.scale;
  return d;
}

}  // namespace loom
