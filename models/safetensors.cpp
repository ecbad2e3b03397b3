// safetensors reading and writing (FORMATS.md §1, huggingface/safetensors src/tensor.rs).
//   file = u64 N (little-endian) ‖ N bytes of JSON header ‖ data buffer
//   header = {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
//             "__metadata__": {string: string}}     offsets relative to the data buffer, end exclusive
// A file is accepted only if it passes the reference reader's checks: N <= 100,000,000; the header
// is a JSON object without duplicate names; every dtype is known; sorted by begin the tensors tile
// the buffer from 0 with no hole or overlap; end - begin == numel * bits / 8; and the last end is
// the end of the file. Beyond the reference, the header nests at most kMaxJsonDepth deep (deeper
// JSON overflows the stack of nlohmann's recursive destructor) and only regular files are opened. Files are memory-mapped; TensorView::data points into the mapping, which
// stays alive as long as any Checkpoint copy that uses it.
#include "models/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>
#include <tuple>

#include "ops/error.h"
#include "ops/files.h"

namespace loom {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// MAX_HEADER_SIZE of the reference reader: a larger N means a corrupt or foreign file.
constexpr uint64_t kMaxHeaderBytes = 100000000;

struct DTypeInfo {
  const char* name;
  DType type;
  int bits;
};
// Every dtype string the reference reader accepts, with its width in bits (FORMATS.md §1).
// Types loom never computes with map to DType::OTHER but still validate.
constexpr DTypeInfo kDTypes[] = {
    {"BOOL", DType::BOOL, 8},     {"F4", DType::OTHER, 4},          {"F6_E2M3", DType::OTHER, 6},
    {"F6_E3M2", DType::OTHER, 6}, {"U8", DType::U8, 8},             {"I8", DType::I8, 8},
    {"F8_E5M2", DType::OTHER, 8}, {"F8_E4M3", DType::OTHER, 8},     {"F8_E8M0", DType::OTHER, 8},
    {"F8_E4M3FNUZ", DType::OTHER, 8}, {"F8_E5M2FNUZ", DType::OTHER, 8}, {"I16", DType::I16, 16},
    {"U16", DType::U16, 16},      {"F16", DType::F16, 16},          {"BF16", DType::BF16, 16},
    {"I32", DType::I32, 32},      {"U32", DType::U32, 32},          {"F32", DType::F32, 32},
    {"C64", DType::OTHER, 64},    {"F64", DType::F64, 64},          {"I64", DType::I64, 64},
    {"U64", DType::U64, 64},
};

const DTypeInfo* find_dtype(const std::string& name) {
  for (const DTypeInfo& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

// One tensor entry of a header, before it is tied to the mapping.
struct HeaderEntry {
  std::string name, dtype_str;
  DType dtype = DType::OTHER;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses depth-bounded JSON, also reporting the first key repeated within the objects at nesting
// `depth` whose enclosing key is `parent` ("" at depth 1): a plain parse silently keeps the last
// of two equal keys, which would hide a tensor listed twice.
json parse_json_unique_keys(std::string_view text, const std::string& where, int depth, const std::string& parent,
                            std::string* duplicate) {
  if (json_depth(text) > kMaxJsonDepth)
    fail(where, ": JSON nested deeper than ", kMaxJsonDepth, " levels; the file is corrupted, re-download it");
  std::set<std::string> seen;
  std::string enclosing;  // the latest key one level above `depth`
  json::parser_callback_t on_event = [&](int d, json::parse_event_t event, json& parsed) {
    if (event != json::parse_event_t::key || !parsed.is_string()) return true;
    const std::string& key = parsed.get_ref<const std::string&>();
    if (d == depth - 1) enclosing = key;
    if (d == depth && (depth == 1 || enclosing == parent) && !seen.insert(key).second && duplicate->empty())
      *duplicate = key;
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), on_event);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers past double range
    fail(where, ": not valid JSON (", e.what(), "); the file is corrupted, re-download it");
  }
}

json parse_header_json(const char* text, size_t n, const std::string& path) {
  std::string duplicate;
  json header = parse_json_unique_keys(std::string_view(text, n), path + ": header", 1, "", &duplicate);
  LOOM_CHECK(duplicate.empty(), path, ": header lists tensor '", duplicate,
             "' twice; the file is corrupted, re-download it");
  LOOM_CHECK(header.is_object(), path, ": header must be a JSON object, found ", header.type_name(),
             "; this is not a safetensors file");
  return header;
}

uint64_t json_u64(const json& v, const std::string& path, const std::string& name, const char* what) {
  LOOM_CHECK(v.is_number_unsigned(), path, ": tensor '", name, "': ", what,
             " must hold non-negative integers, found ", v.dump());
  return v.get<uint64_t>();
}

HeaderEntry parse_entry(const std::string& name, const json& info, const std::string& path) {
  LOOM_CHECK(info.is_object(), path, ": tensor '", name, "' must be described by an object, found ", info.dump());
  for (const char* key : {"dtype", "shape", "data_offsets"})
    LOOM_CHECK(info.contains(key), path, ": tensor '", name, "' has no \"", key, "\" in the header");
  HeaderEntry e;
  e.name = name;
  const json& dtype = info["dtype"];
  LOOM_CHECK(dtype.is_string(), path, ": tensor '", name, "': dtype must be a string, found ", dtype.dump());
  e.dtype_str = dtype.get<std::string>();
  const DTypeInfo* d = find_dtype(e.dtype_str);
  LOOM_CHECK(d, path, ": tensor '", name, "' has unknown dtype \"", e.dtype_str,
             "\" (known: BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, C64, F4, F6_*, F8_*)");
  e.dtype = d->type;

  const json& shape = info["shape"];
  LOOM_CHECK(shape.is_array(), path, ": tensor '", name, "': shape must be an array, found ", shape.dump());
  uint64_t numel = 1;
  for (const json& dim : shape) {
    uint64_t n = json_u64(dim, path, name, "shape");
    LOOM_CHECK(n <= uint64_t(INT64_MAX) && !__builtin_mul_overflow(numel, n, &numel), path, ": tensor '",
               name, "': shape ", shape.dump(), " overflows 64 bits");
    e.shape.push_back(int64_t(n));
  }
  uint64_t nbits = 0;
  LOOM_CHECK(!__builtin_mul_overflow(numel, uint64_t(d->bits), &nbits), path, ": tensor '", name,
             "': shape ", shape.dump(), " overflows 64 bits");
  LOOM_CHECK(nbits % 8 == 0, path, ": tensor '", name, "' (", e.dtype_str, " ", shape.dump(),
             ") does not fill a whole number of bytes");

  const json& offsets = info["data_offsets"];
  LOOM_CHECK(offsets.is_array() && offsets.size() == 2, path, ": tensor '", name,
             "': data_offsets must be [begin, end], found ", offsets.dump());
  e.begin = json_u64(offsets[0], path, name, "data_offsets");
  e.end = json_u64(offsets[1], path, name, "data_offsets");
  LOOM_CHECK(e.end >= e.begin, path, ": tensor '", name, "': data_offsets [", e.begin, ", ", e.end,
             "] end before they begin");
  LOOM_CHECK(e.end - e.begin == nbits / 8, path, ": tensor '", name, "' (", e.dtype_str, " ", shape.dump(),
             ") needs ", nbits / 8, " bytes but data_offsets [", e.begin, ", ", e.end, "] hold ",
             e.end - e.begin, "; the file is corrupted, re-download it");
  return e;
}

std::map<std::string, std::string> parse_metadata(const json& meta, const std::string& path) {
  LOOM_CHECK(meta.is_object(), path, ": __metadata__ must be an object of strings, found ", meta.dump());
  std::map<std::string, std::string> out;
  for (auto it = meta.begin(); it != meta.end(); ++it) {
    LOOM_CHECK(it.value().is_string(), path, ": __metadata__[\"", it.key(), "\"] must be a string, found ",
               it.value().dump());
    out[it.key()] = it.value().get<std::string>();
  }
  return out;
}

// Sorted by begin, the tensors must tile [0, data_bytes) exactly.
void check_layout(std::vector<HeaderEntry>& entries, uint64_t data_bytes, const std::string& path) {
  std::sort(entries.begin(), entries.end(),
            [](const HeaderEntry& a, const HeaderEntry& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t expect = 0;
  const HeaderEntry* prev = nullptr;
  for (const HeaderEntry& e : entries) {
    LOOM_CHECK(e.begin >= expect, path, ": tensor '", e.name, "' (data_offsets [", e.begin, ", ", e.end,
               "]) overlaps tensor '", prev ? prev->name : "", "', which ends at ", expect,
               "; the file is corrupted, re-download it");
    LOOM_CHECK(e.begin == expect, path, ": ", e.begin - expect, "-byte hole before tensor '", e.name,
               "' (data_offsets [", e.begin, ", ", e.end, "]; ",
               prev ? cat("previous tensor '", prev->name, "' ends at ", expect) : std::string("data starts at 0"),
               "); the file is corrupted, re-download it");
    expect = e.end;
    prev = &e;
  }
  LOOM_CHECK(expect <= data_bytes, path, ": truncated: header says ", expect, " bytes of data, file has ",
             data_bytes, " (re-download the file)");
  LOOM_CHECK(expect == data_bytes, path, ": ", data_bytes - expect, " stray bytes after the last tensor (header says ",
             expect, " bytes of data, file has ", data_bytes, "); the file is corrupted, re-download it");
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

const char* dtype_name(DType t) {
  for (const DTypeInfo& d : kDTypes)
    if (d.type == t && t != DType::OTHER) return d.name;
  return "OTHER";
}

size_t dtype_size(DType t) {
  if (t == DType::OTHER) return 0;
  for (const DTypeInfo& d : kDTypes)
    if (d.type == t) return size_t(d.bits / 8);
  return 0;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// A whole file mapped read-only; unmapped when destroyed (also when a later check throws).
class FileMap {
 public:
  explicit FileMap(const std::string& path) {
    // Checked before opening: opening a FIFO blocks until a writer comes. O_NONBLOCK covers a
    // file swapped for a FIFO in between; it changes nothing for a regular file.
    require_regular_file(path, "safetensors file");
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    LOOM_CHECK(fd >= 0, "cannot open ", path, ": ", std::strerror(errno));
    struct stat st;
    const bool regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    size_ = regular ? size_t(st.st_size) : 0;
    void* p = regular && size_ > 0 ? mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
    const int err = errno;
    ::close(fd);
    LOOM_CHECK(regular, "safetensors file ", path, " is not a regular file; give a regular file");
    LOOM_CHECK(p != MAP_FAILED, "cannot map ", path, " into memory: ", std::strerror(err));
    data_ = static_cast<const uint8_t*>(p);
  }
  ~FileMap() {
    if (data_) munmap(const_cast<uint8_t*>(data_), size_);
  }
  FileMap(const FileMap&) = delete;
  FileMap& operator=(const FileMap&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// One mapped, validated .safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path) : path_(path), map_(path) { parse(); }

  const std::vector<TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  void parse() {
    const uint8_t* base = map_.data();
    const size_t size = map_.size();
    LOOM_CHECK(size >= 8, path_, ": ", size, " bytes is too small for a safetensors file (the 8-byte header length "
               "is missing); re-download the file");
    uint64_t n = read_u64_le(base);
    LOOM_CHECK(n <= kMaxHeaderBytes, path_, ": header length ", n, " exceeds the 100,000,000-byte limit; "
               "this is not a safetensors file or it is corrupted");
    LOOM_CHECK(n <= size - 8, path_, ": header length ", n, " runs past the end of the file (", size,
               " bytes); the file is truncated, re-download it");
    json header = parse_header_json(reinterpret_cast<const char*>(base + 8), size_t(n), path_);
    std::vector<HeaderEntry> entries;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__")
        metadata_ = parse_metadata(it.value(), path_);
      else
        entries.push_back(parse_entry(it.key(), it.value(), path_));
    }
    check_layout(entries, uint64_t(size) - 8 - n, path_);
    const uint8_t* data = base + 8 + n;
    for (const HeaderEntry& e : entries) {
      TensorView v;
      v.name = e.name;
      v.file = path_;
      v.dtype = e.dtype;
      v.dtype_str = e.dtype_str;
      v.shape = e.shape;
      v.data = data + e.begin;
      v.nbytes = size_t(e.end - e.begin);
      tensors_.push_back(std::move(v));
    }
  }

  std::string path_;
  FileMap map_;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

namespace {

const char* kSingleName = "model.safetensors";
const char* kIndexName = "model.safetensors.index.json";

// Why a folder holds no loadable checkpoint, with the fix.
std::string missing_checkpoint_hint(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(fs::path(dir) / "pytorch_model.bin", ec) || fs::exists(fs::path(dir) / "pytorch_model.bin.index.json", ec))
    return "; it holds PyTorch .bin weights: convert them with transformers save_pretrained(..., "
           "safe_serialization=True)";
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".safetensors")
      return cat("; it holds ", entry.path().filename().string(),
                 " but no index: pass that file's path, or add model.safetensors.index.json");
  return "; pass the folder of a Hugging Face checkpoint or a .safetensors file";
}

// A shard named by the index must be a file beside it: a path could point anywhere.
void check_shard_name(const std::string& shard, const std::string& tensor, const std::string& index_path) {
  LOOM_CHECK(!shard.empty() && shard != "." && shard != ".." && shard.find('/') == std::string::npos &&
                 shard.find('\0') == std::string::npos,
             index_path, ": weight_map[\"", tensor, "\"] = \"", shard,
             "\" is not a file name in the checkpoint folder; the index is corrupted, re-download it");
}

// weight_map of an index file: tensor name -> shard file name.
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  std::string duplicate;
  const json index = parse_json_unique_keys(read_regular_file(index_path, "safetensors index"), index_path, 2,
                                            "weight_map", &duplicate);
  LOOM_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(), index_path,
             ": expected an object with a \"weight_map\" object (tensor name -> shard file)");
  LOOM_CHECK(duplicate.empty(), index_path, ": weight_map lists tensor '", duplicate,
             "' twice; the index is corrupted, re-download it");
  std::map<std::string, std::string> map;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    LOOM_CHECK(it.value().is_string(), index_path, ": weight_map[\"", it.key(), "\"] must be a file name, found ",
               it.value().dump());
    check_shard_name(it.value().get<std::string>(), it.key(), index_path);
    map[it.key()] = it.value().get<std::string>();
  }
  LOOM_CHECK(!map.empty(), index_path, ": weight_map lists no tensors");
  return map;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& path) {
  std::error_code ec;
  LOOM_CHECK(fs::exists(path, ec), "checkpoint ", path, " does not exist");
  Checkpoint ck;
  ck.path_ = path;
  auto add_file = [&](const std::string& file) {
    auto f = std::make_shared<SafetensorsFile>(file);
    for (const TensorView& v : f->tensors()) {
      auto [it, inserted] = ck.tensors_.emplace(v.name, v);
      LOOM_CHECK(inserted, "tensor '", v.name, "' is stored twice in ", path, ": in ", it->second.file, " and in ",
                 file, "; remove one copy");
    }
    for (const auto& [k, v] : f->metadata()) ck.metadata_.emplace(k, v);
    ck.files_.push_back(std::move(f));
  };

  std::string index_path;
  if (fs::is_directory(path, ec)) {
    // transformers looks for the single file before the index; so do we.
    if (fs::exists(fs::path(path) / kSingleName, ec)) {
      add_file((fs::path(path) / kSingleName).string());
      return ck;
    }
    LOOM_CHECK(fs::exists(fs::path(path) / kIndexName, ec), path, ": no ", kSingleName, " or ", kIndexName,
               missing_checkpoint_hint(path));
    index_path = (fs::path(path) / kIndexName).string();
  } else if (ends_with(path, ".index.json")) {
    index_path = path;
  } else {
    add_file(path);
    return ck;
  }

  const std::string dir = fs::path(index_path).parent_path().string();
  const std::string index_name = fs::path(index_path).filename().string();
  std::map<std::string, std::string> weight_map = read_weight_map(index_path);
  std::set<std::string> shards;
  for (const auto& [name, shard] : weight_map) shards.insert(shard);
  for (const std::string& shard : shards) {
    const std::string shard_path = (fs::path(dir) / shard).string();
    if (!fs::exists(shard_path, ec)) {
      auto user = std::find_if(weight_map.begin(), weight_map.end(), [&](const auto& kv) { return kv.second == shard; });
      fail(index_path, " lists shard ", shard, " (for tensor '", user->first,
           "' and others), which is missing from ", dir, "; re-download it");
    }
    add_file(shard_path);
  }
  // A tensor a shard stores but weight_map leaves out stays in the checkpoint, as transformers loads
  // every tensor of the shards it opens: the model's tensor audit uses it or names it as unused.
  for (const auto& [name, shard] : weight_map) {
    auto it = ck.tensors_.find(name);
    LOOM_CHECK(it != ck.tensors_.end(), "tensor '", name, "' not found in ", path, " (listed in ", index_name,
               " as ", shard, "); the shard does not hold it, re-download the checkpoint");
    LOOM_CHECK(it->second.file == (fs::path(dir) / shard).string(), "tensor '", name, "' not found in ",
               path, " (listed in ", index_name, " as ", shard, ", but stored in ", it->second.file,
               "); the index does not match the shards, re-download it");
  }
  return ck;
}

bool Checkpoint::has(const std::string& name) const { return tensors_.count(name) != 0; }

const TensorView& Checkpoint::get(const std::string& name) const {
  auto it = tensors_.find(name);
  LOOM_CHECK(it != tensors_.end(), "tensor '", name, "' not found in ", path_, " (it holds ", tensors_.size(),
             " tensors; is this checkpoint of the architecture its config.json names?)");
  return it->second;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

namespace {

// IEEE binary16 -> binary32, exact for every input (subnormals, infinities, NaN payloads).
float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: shift the mantissa up until its leading 1 becomes the implicit bit.
    int e = 113;
    while (!(mant & 0x400)) {
      mant <<= 1;
      --e;
    }
    bits = sign | (uint32_t(e) << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// mmap data carries no alignment guarantee, so every element is loaded with memcpy. Returns the
// index of the first non-finite value, or n: the check rides on the conversion pass, which reads
// every element anyway (weights, adapters and optimizer state must all be finite).
template <class Bits, class Convert>
int64_t convert_all(float* out, const uint8_t* src, int64_t n, Convert convert) {
  int64_t first_bad = n;
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (n > (1 << 20))
  for (int64_t i = 0; i < n; ++i) {
    Bits b;
    std::memcpy(&b, src + i * int64_t(sizeof(Bits)), sizeof(Bits));
    out[i] = convert(b);
    if (!std::isfinite(out[i]) && i < first_bad) first_bad = i;
  }
  return first_bad;
}

// Flat index i of a row-major tensor as "[a, b, c]".
std::string index_str(int64_t i, const std::vector<int64_t>& shape) {
  std::vector<int64_t> at(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    at[d] = i % shape[d];
    i /= shape[d];
  }
  return shape_str(at);
}

}  // namespace

std::vector<float> Checkpoint::read_f32(const std::string& name, const std::vector<int64_t>& expect_shape) const {
  const TensorView& t = get(name);
  LOOM_CHECK(t.shape == expect_shape, "tensor '", name, "' in ", t.file, " has shape ", shape_str(t.shape),
             ", expected ", shape_str(expect_shape), " (does config.json belong to this checkpoint?)");
  const int64_t n = t.numel();
  std::vector<float> out(static_cast<size_t>(n));
  int64_t bad = n;
  switch (t.dtype) {
    case DType::F32:
      bad = convert_all<float>(out.data(), t.data, n, [](float x) { return x; });
      break;
    case DType::BF16:
      bad = convert_all<uint16_t>(out.data(), t.data, n, [](uint16_t b) {
        uint32_t bits = uint32_t(b) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        return f;
      });
      break;
    case DType::F16:
      bad = convert_all<uint16_t>(out.data(), t.data, n, half_to_float);
      break;
    default:
      fail("tensor '", name, "' in ", t.file, " has dtype ", t.dtype_str, "; expected F32, F16 or BF16");
  }
  LOOM_CHECK(bad == n, "tensor '", name, "' in ", t.file, " holds ", out[size_t(bad)], " at index ",
             index_str(bad, t.shape), " (the first non-finite value); a checkpoint must be finite: the file is "
             "corrupted or was saved from a diverged run, re-download or re-export it");
  return out;
}

namespace {

std::string header_json(const std::vector<TensorToWrite>& tensors, const std::map<std::string, std::string>& metadata,
                        const std::string& path) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    LOOM_CHECK(!t.name.empty() && t.name != "__metadata__", "write ", path, ": invalid tensor name '", t.name, "'");
    LOOM_CHECK(names.insert(t.name).second, "write ", path, ": tensor '", t.name, "' given twice");
    LOOM_CHECK(t.dtype != DType::OTHER, "write ", path, ": tensor '", t.name, "' has no storable dtype");
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      LOOM_CHECK(d >= 0, "write ", path, ": tensor '", t.name, "' has negative dimension in ", shape_str(t.shape));
      numel *= uint64_t(d);
    }
    uint64_t nbytes = numel * dtype_size(t.dtype);
    LOOM_CHECK(nbytes == 0 || t.data, "write ", path, ": tensor '", t.name, "' has no data");
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  // Trailing spaces make N a multiple of 8 so the data buffer starts 8-aligned (reference writer).
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string header = header_json(tensors, metadata, path);
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  LOOM_CHECK(f, "cannot write ", tmp, ": ", std::strerror(errno));
  uint8_t n_le[8];
  for (int i = 0; i < 8; ++i) n_le[i] = uint8_t(uint64_t(header.size()) >> (8 * i));
  bool ok = std::fwrite(n_le, 1, 8, f) == 8 && std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (const TensorToWrite& t : tensors) {
    if (!ok) break;
    size_t nbytes = dtype_size(t.dtype);
    for (int64_t d : t.shape) nbytes *= size_t(d);
    ok = nbytes == 0 || std::fwrite(t.data, 1, nbytes, f) == nbytes;
  }
  ok = ok && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  const int err = errno;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    fail("cannot write ", path, ": ", std::strerror(err), " (is the disk full or the folder read-only?)");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int rename_err = errno;
    std::remove(tmp.c_str());
    fail("cannot move ", tmp, " to ", path, ": ", std::strerror(rename_err));
  }
}

}  // namespace loom
