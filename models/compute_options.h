// How a model is computed, as the config's model.quant and train.recompute choose. engine/config.cpp
// reads the YAML names into these once; the model paths switch on the values. Each names array
// lists the YAML spellings in enum order.
#pragma once
#include <array>
#include <cstddef>

namespace loom {

// How the frozen projection weights are held: kNf4 = 4-bit NormalFloat (QLoRA; bitsandbytes
// blocksize 64, dequantized per GEMM), kBf16 = bf16 as loaded.
enum class Quant { kNf4, kBf16 };
inline constexpr std::array<const char*, 2> kQuantNames = {"nf4", "bf16"};
inline const char* quant_name(Quant q) { return kQuantNames[size_t(q)]; }

// What the GPU backward recomputes instead of keeping (models/cuda_model.h): kNone keeps every
// activation, kSelective recomputes the norm outputs and the SwiGLU product, kFull keeps only each
// layer's input and reruns the layer's forward.
enum class Recompute { kNone, kSelective, kFull };
inline constexpr std::array<const char*, 3> kRecomputeNames = {"none", "selective", "full"};
inline const char* recompute_name(Recompute r) { return kRecomputeNames[size_t(r)]; }

// Where the GPU keeps each layer's input between the forward and the backward of recompute full:
// kNone on the device; kActivations in pinned host memory, copied out as the forward leaves a layer
// and back ahead of its backward (models/cuda_model.h), so device memory no longer grows with
// layers × tokens; kAuto (a config's choice, resolved before the model is built: engine/backend.h)
// on the device when the memory plan fits there, else in host memory when that fits.
enum class Offload { kAuto, kNone, kActivations };
inline constexpr std::array<const char*, 3> kOffloadNames = {"auto", "none", "activations"};
inline const char* offload_name(Offload o) { return kOffloadNames[size_t(o)]; }

// Under recompute full the GPU may run the MLP in sequence tiles of train.mlp_tile rows (models/
// cuda_model.h), a multiple of this many: the pieces in which the MLP's LoRA gradients sum over the
// rows, so that every tile size gives the same bits (ops/gemm.h row invariance).
inline constexpr int kMlpRowChunk = 1024;

}  // namespace loom
