// Pre-quantized bitsandbytes 4-bit (NF4) weights in safetensors checkpoints (FORMATS.md §3):
// what transformers' save_pretrained writes for a model loaded with BitsAndBytesConfig(load_in_4bit).
// For a Linear weight <name> (e.g. "model.layers.0.self_attn.q_proj.weight"), (out, in) = (rows, cols):
//   <name>                                  U8  [(rows*cols + 1) / 2, 1]  packed codes, first element in the high nibble
//   <name>.absmax                           F32 [nb], or U8 [nb] when double-quantized    nb = ceil(rows*cols / blocksize)
//   <name>.quant_map                        F32 [16]  the NF4 table
//   <name>.nested_absmax                    F32 [ceil(nb / nested_blocksize)]             (double quantization)
//   <name>.nested_quant_map                 F32 [256] signed dynamic map                  (double quantization)
//   <name>.quant_state.bitsandbytes__nf4    U8  [len] UTF-8 JSON {"quant_type", "blocksize", "dtype", "shape",
//                                                     "nested_blocksize", "nested_dtype", "nested_offset"}
// The per-tensor JSON is authoritative (config.json's quantization_config only announces it).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "models/safetensors.h"
#include "ops/nf4.h"

namespace loom {

// True when <weight_name> is stored as bitsandbytes NF4; an FP4 weight is an error naming it.
bool is_bnb_nf4(const Checkpoint& ck, const std::string& weight_name);

// The NF4 weight <weight_name> of shape (rows, cols), validated against its quant_state JSON and
// the sizes the shape implies; errors name the tensor and the checkpoint.
Nf4Host read_bnb_nf4(const Checkpoint& ck, const std::string& weight_name, int64_t rows, int64_t cols);

// A tensor that owns its bytes, for write_safetensors.
struct StoredTensor {
  std::string name;
  DType dtype = DType::U8;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  TensorToWrite view() const { return {name, dtype, shape, bytes.data()}; }
};

// Appends q under bitsandbytes' keys for <weight_name>, byte-identical to transformers'
// save_pretrained (same dtypes, shapes and JSON text). orig_dtype: "bfloat16" | "float16" | "float32",
// the dtype of the weight before quantization.
void append_bnb_nf4_tensors(const std::string& weight_name, const Nf4Host& q, const std::string& orig_dtype,
                            std::vector<StoredTensor>& out);

}  // namespace loom
