// Helpers the GPU model's pieces share to list their buffers in one MemoryPlan (ops/memory_plan.h)
// and fill them from the host.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "ops/cuda_common.h"
#include "ops/memory_plan.h"

namespace loom {

// Elements per layer rounded up so that every layer's slice starts 256-byte aligned.
template <class T>
size_t padded(size_t n) {
  const size_t bytes = (n * sizeof(T) + 255) / 256 * 256;
  return bytes / sizeof(T);
}

// A buffer with one slice per layer, or one slice shared by every layer (rewritten per layer).
template <class T>
struct LayerBuf {
  T* base = nullptr;
  size_t stride = 0;  // elements between layers' slices; 0 when shared
  T* at(int l) const { return base + size_t(l) * stride; }
};

template <class T>
const char* dtype_of();
template <>
inline const char* dtype_of<bf16>() { return "bf16"; }
template <>
inline const char* dtype_of<float>() { return "f32"; }
template <>
inline const char* dtype_of<uint8_t>() { return "u8"; }
template <>
inline const char* dtype_of<int32_t>() { return "i32"; }
template <>
inline const char* dtype_of<uint64_t>() { return "u64"; }

// Registers `count` elements of T under group/name.
template <class T>
void plan_buffer(MemoryPlan& plan, const std::string& group, const std::string& name, T** p, size_t count,
                 const std::string& shape) {
  plan.add(group, name, p, count, shape, dtype_of<T>());
}

// Registers a LayerBuf of n elements per layer (per_layer) or one shared slice of n.
template <class T>
void plan_layers(MemoryPlan& plan, int L, const std::string& group, const std::string& name, LayerBuf<T>& b, size_t n,
                 bool per_layer, const std::string& shape) {
  b.stride = per_layer ? padded<T>(n) : 0;
  plan_buffer(plan, group, name, &b.base, per_layer ? b.stride * size_t(L) : n,
              per_layer ? "(L, " + shape.substr(1) : shape);
}

// Synchronous host -> device copies (loading happens before the first step).
void upload_bf16(bf16* dst, const std::vector<float>& v);
template <class T>
void upload(T* dst, const std::vector<T>& v) {
  CUDA_CHECK(cudaMemcpy(dst, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
}
template <class T>
std::vector<T> download(const T* src, size_t n) {
  std::vector<T> v(n);
  CUDA_CHECK(cudaMemcpy(v.data(), src, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

}  // namespace loom
