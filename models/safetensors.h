// safetensors reading (memory-mapped, single file or sharded through model.safetensors.index.json)
// and writing. Validation follows the reference reader (FORMATS.md §1); every error names the file
// and, where there is one, the tensor.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace loom {

enum class DType { F32, F16, BF16, U8, I8, I16, I32, I64, F64, BOOL, U16, U32, U64, OTHER };
const char* dtype_name(DType t);  // "F32", "BF16", ...
size_t dtype_size(DType t);       // bytes per element (0 for OTHER)
std::string shape_str(const std::vector<int64_t>& shape);  // "[64, 96]", for messages

struct TensorView {
  std::string name, file;
  DType dtype = DType::OTHER;
  std::string dtype_str;       // as written in the header
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mmap; not necessarily aligned
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile;

// A checkpoint folder (or a single .safetensors file).
class Checkpoint {
 public:
  // DIR containing model.safetensors or model.safetensors.index.json (+ shards), or a .safetensors path.
  // Only regular files are opened (a FIFO would block). Each tensor an index lists must be stored
  // in the shard it names; shard names are plain file names beside the index. A tensor a shard
  // holds but the index does not list is part of the checkpoint like any other.
  static Checkpoint open(const std::string& path);
  bool has(const std::string& name) const;
  const TensorView& get(const std::string& name) const;  // error naming the tensor and the folder
  std::vector<std::string> names() const;
  // The tensor as fp32 (from F32/F16/BF16), checking the shape and that every value is finite;
  // errors name the tensor, the file, the shapes or the first non-finite element.
  std::vector<float> read_f32(const std::string& name, const std::vector<int64_t>& expect_shape) const;
  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // numel * dtype_size bytes, little-endian row-major
};
// Writes atomically (tmp file + rename). Header padded to 8 bytes; tensors in the given order.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace loom
