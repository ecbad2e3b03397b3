// GGUF files (llama.cpp's model format, version 3), written and read back:
//   "GGUF" u32 version=3, u64 tensor count, u64 metadata count,
//   metadata: (string key, u32 value type, value)...  strings are u64 length + UTF-8 bytes,
//   arrays u32 element type + u64 count + elements,
//   tensor infos: (string name, u32 n_dims, u64 dims[n_dims] innermost first, u32 ggml type,
//                  u64 offset into the data section)...,
//   zero padding to general.alignment (32 unless the key says otherwise), then the data section,
//   every tensor starting at a multiple of the alignment. All numbers little-endian.
// Tensor types written: F32, F16, BF16 and Q8_0 (blocks of 32 values: an fp16 scale
// d = max|x| / 127 and 32 int8 q = round(x / d), half away from zero — gguf-py's quants.py, which
// matches ggml's quantize_row_q8_0_ref bit for bit).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace loom {

enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 };
// Bytes of n values (n a multiple of 32 for Q8_0).
uint64_t ggml_nbytes(GgmlType t, int64_t n);

constexpr int kQ8Block = 32;        // values per Q8_0 block
constexpr int kQ8BlockBytes = 34;   // fp16 scale + 32 int8
// x (n values, n % 32 == 0) as Q8_0 blocks. Round trip error per value: at most d/2 from the int8
// rounding plus the fp16 rounding of d (relative 2^-11) times |q| <= 127, i.e. <= absmax/254 +
// absmax·2^-11 for the block's absmax.
std::vector<uint8_t> quantize_q8_0(const float* x, int64_t n);
void dequantize_q8_0(const uint8_t* blocks, int64_t n, float* out);
// x as the bytes of a tensor of type t (F32 copy, F16/BF16 round to nearest even, Q8_0 above).
std::vector<uint8_t> encode_values(const std::vector<float>& x, GgmlType t);
std::vector<float> decode_values(const uint8_t* data, int64_t n, GgmlType t);

// A metadata value, with the GGUF type it is written as (gguf-py's choice for each key:
// counts and ids u32, flags bool, eps/theta f32, token types i32 arrays, scores f32 arrays).
using GgufValue = std::variant<uint32_t, int32_t, float, bool, std::string, std::vector<std::string>,
                               std::vector<int32_t>, std::vector<float>>;

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> shape;  // row-major, outermost first, as in safetensors/torch: (rows, cols)
  std::vector<uint8_t> data;   // ggml_nbytes(type, numel) bytes
};

class GgufWriter {
 public:
  // Keys keep the order they were first set in; setting a key again replaces its value.
  void set(const std::string& key, GgufValue value);
  // Throws on a duplicate name, a shape whose size does not match the data, or Q8_0 rows that are
  // not whole blocks.
  void add_tensor(GgufTensor t);
  // Writes atomically (temporary file + rename); errors name the path.
  void write(const std::string& path) const;

 private:
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensor> tensors_;
};

// What a GGUF file holds, read back with every count, length, type, shape and offset checked
// against the file (errors name the file and the key or tensor), for tests and build/export's
// self-check. Arrays of other element types than those above are refused.
struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> shape;  // outermost first, as GgufTensor
  uint64_t offset = 0;         // into the data section
  uint64_t nbytes = 0;
};
struct GgufFile {
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // where the data section starts in the file
  std::vector<std::pair<std::string, GgufValue>> kv;
  std::vector<GgufTensorInfo> tensors;
  std::vector<uint8_t> bytes;  // the whole file

  const GgufValue* find(const std::string& key) const;
  const GgufTensorInfo* tensor(const std::string& name) const;
  std::vector<float> read_tensor(const std::string& name) const;  // decoded to fp32
};
GgufFile read_gguf(const std::string& path);

}  // namespace loom
