#include "models/gguf.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>

#include "ops/cuda_common.h"
#include "ops/error.h"
#include "ops/files.h"
#include "ops/fp16.h"

namespace loom {

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kGgufVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxDims = 4;  // GGML_MAX_DIMS

// GGUF value types (gguf.h's GGUF_TYPE_*).
enum ValueType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9,
  kU64 = 10, kI64 = 11, kF64 = 12
};

uint64_t pad_to(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

bool known_type(uint32_t t) {
  return t == uint32_t(GgmlType::F32) || t == uint32_t(GgmlType::F16) || t == uint32_t(GgmlType::Q8_0) ||
         t == uint32_t(GgmlType::BF16);
}

// ---------------------------------------------------------------------------------------------
// Writing

class Bytes {
 public:
  template <class T>
  void put(T v) {
    const size_t at = out_.size();
    out_.resize(at + sizeof(T));
    std::memcpy(out_.data() + at, &v, sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    out_.insert(out_.end(), s.begin(), s.end());
  }
  void put_value(const GgufValue& v) {
    struct Visitor {
      Bytes& b;
      void operator()(uint32_t x) { b.put<uint32_t>(kU32), b.put(x); }
      void operator()(int32_t x) { b.put<uint32_t>(kI32), b.put(x); }
      void operator()(float x) { b.put<uint32_t>(kF32), b.put(x); }
      void operator()(bool x) { b.put<uint32_t>(kBool), b.put<uint8_t>(x ? 1 : 0); }
      void operator()(const std::string& s) { b.put<uint32_t>(kString), b.put_string(s); }
      void operator()(const std::vector<std::string>& a) {
        b.array_header(kString, a.size());
        for (const std::string& s : a) b.put_string(s);
      }
      void operator()(const std::vector<int32_t>& a) {
        b.array_header(kI32, a.size());
        for (int32_t x : a) b.put(x);
      }
      void operator()(const std::vector<float>& a) {
        b.array_header(kF32, a.size());
        for (float x : a) b.put(x);
      }
    };
    std::visit(Visitor{*this}, v);
  }
  void array_header(uint32_t element_type, size_t n) {
    put<uint32_t>(kArray);
    put<uint32_t>(element_type);
    put<uint64_t>(n);
  }
  void pad(uint64_t alignment) { out_.resize(pad_to(out_.size(), alignment), 0); }
  std::vector<uint8_t>& data() { return out_; }

 private:
  std::vector<uint8_t> out_;
};

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Reading

class Reader {
 public:
  Reader(const std::vector<uint8_t>& bytes, const std::string& path) : b_(bytes), path_(path) {}

  template <class T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, b_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  std::string get_string(const char* what) {
    const uint64_t n = get<uint64_t>(what);
    need(n, what);
    std::string s(reinterpret_cast<const char*>(b_.data() + at_), n);
    at_ += n;
    return s;
  }
  // A count of items of at least `min_item_bytes` each: refused when the rest of the file cannot
  // hold them (a tampered count would otherwise size an allocation).
  uint64_t get_count(uint64_t min_item_bytes, const char* what) {
    const uint64_t n = get<uint64_t>(what);
    LOOM_CHECK(min_item_bytes == 0 || n <= (b_.size() - at_) / min_item_bytes, path_, ": ", what, " says ", n,
               " entries, more than the ", b_.size() - at_, " bytes left in the file can hold (truncated or not GGUF)");
    return n;
  }
  size_t at() const { return at_; }

 private:
  void need(uint64_t n, const char* what) {
    LOOM_CHECK(n <= b_.size() - at_, path_, ": file ends inside ", what, " (byte ", at_, " of ", b_.size(),
               "): truncated");
  }
  const std::vector<uint8_t>& b_;
  const std::string& path_;
  size_t at_ = 0;
};

GgufValue read_array(Reader& r, const std::string& key, const std::string& path) {
  const uint32_t element = r.get<uint32_t>("an array's element type");
  if (element == kString) {
    const uint64_t n = r.get_count(8, "an array's length");
    std::vector<std::string> a(n);
    for (std::string& s : a) s = r.get_string("an array string");
    return a;
  }
  if (element == kI32) {
    const uint64_t n = r.get_count(4, "an array's length");
    std::vector<int32_t> a(n);
    for (int32_t& x : a) x = r.get<int32_t>("an array value");
    return a;
  }
  if (element == kF32) {
    const uint64_t n = r.get_count(4, "an array's length");
    std::vector<float> a(n);
    for (float& x : a) x = r.get<float>("an array value");
    return a;
  }
  fail(path, ": key '", key, "' is an array of GGUF type ", element, "; loom reads arrays of strings, i32 and f32");
}

GgufValue read_value(Reader& r, uint32_t type, const std::string& key, const std::string& path) {
  switch (type) {
    case kU32: return r.get<uint32_t>("a u32 value");
    case kI32: return r.get<int32_t>("an i32 value");
    case kF32: return r.get<float>("an f32 value");
    case kBool: {
      const uint8_t b = r.get<uint8_t>("a bool value");
      LOOM_CHECK(b <= 1, path, ": key '", key, "' is a bool holding ", int(b), " (only 0 and 1 are valid)");
      return b == 1;
    }
    case kString: return r.get_string("a string value");
    case kArray: return read_array(r, key, path);
    default:
      fail(path, ": key '", key, "' has GGUF value type ", type,
           "; loom reads u32, i32, f32, bool, string and arrays of string, i32, f32");
  }
}

GgufTensorInfo read_tensor_info(Reader& r, const std::string& path) {
  GgufTensorInfo t;
  t.name = r.get_string("a tensor name");
  const uint32_t dims = r.get<uint32_t>("a tensor's dimension count");
  LOOM_CHECK(dims >= 1 && dims <= uint32_t(kMaxDims), path, ": tensor '", t.name, "' has ", dims,
             " dimensions (1 to ", kMaxDims, " are valid)");
  t.shape.resize(dims);
  // Innermost first in the file; stored outermost first. Each dimension below 2^40 keeps the
  // product of 4 of them far from overflow before it is compared with the file size.
  for (uint32_t d = 0; d < dims; ++d) {
    const uint64_t n = r.get<uint64_t>("a tensor dimension");
    LOOM_CHECK(n >= 1 && n < (uint64_t(1) << 40), path, ": tensor '", t.name, "' has dimension ", n);
    t.shape[dims - 1 - d] = int64_t(n);
  }
  const uint32_t type = r.get<uint32_t>("a tensor type");
  LOOM_CHECK(known_type(type), path, ": tensor '", t.name, "' has ggml type ", type,
             "; loom reads F32 (0), F16 (1), Q8_0 (8) and BF16 (30)");
  t.type = GgmlType(type);
  LOOM_CHECK(t.type != GgmlType::Q8_0 || t.shape.back() % kQ8Block == 0, path, ": Q8_0 tensor '", t.name,
             "' has rows of ", t.shape.back(), " values, not a multiple of ", kQ8Block);
  t.offset = r.get<uint64_t>("a tensor offset");
  return t;
}

}  // namespace

uint64_t ggml_nbytes(GgmlType t, int64_t n) {
  switch (t) {
    case GgmlType::F32: return uint64_t(n) * 4;
    case GgmlType::F16:
    case GgmlType::BF16: return uint64_t(n) * 2;
    case GgmlType::Q8_0: return uint64_t(n / kQ8Block) * kQ8BlockBytes;
  }
  return 0;
}

std::vector<uint8_t> quantize_q8_0(const float* x, int64_t n) {
  LOOM_CHECK(n % kQ8Block == 0, "quantize_q8_0: ", n, " values are not whole blocks of ", kQ8Block);
  std::vector<uint8_t> out(size_t(n / kQ8Block) * kQ8BlockBytes);
  for (int64_t b = 0; b < n / kQ8Block; ++b) {
    const float* v = x + b * kQ8Block;
    uint8_t* block = out.data() + b * kQ8BlockBytes;
    float amax = 0;
    for (int i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(v[i]));
    // The fp32 scale quantizes; its fp16 rounding is what is stored (as gguf-py and ggml do).
    const float d = amax / 127.f;
    const float id = d != 0.f ? 1.f / d : 0.f;
    const uint16_t dh = float_to_f16_bits(d);
    std::memcpy(block, &dh, 2);
    for (int i = 0; i < kQ8Block; ++i) block[2 + i] = uint8_t(int8_t(std::round(v[i] * id)));
  }
  return out;
}

void dequantize_q8_0(const uint8_t* blocks, int64_t n, float* out) {
  for (int64_t b = 0; b < n / kQ8Block; ++b) {
    const uint8_t* block = blocks + b * kQ8BlockBytes;
    uint16_t dh;
    std::memcpy(&dh, block, 2);
    const float d = f16_bits_to_float(dh);
    for (int i = 0; i < kQ8Block; ++i) out[b * kQ8Block + i] = float(int8_t(block[2 + i])) * d;
  }
}

std::vector<uint8_t> encode_values(const std::vector<float>& x, GgmlType t) {
  const int64_t n = int64_t(x.size());
  if (t == GgmlType::Q8_0) return quantize_q8_0(x.data(), n);
  std::vector<uint8_t> out(ggml_nbytes(t, n));
  if (t == GgmlType::F32) {
    std::memcpy(out.data(), x.data(), out.size());
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t h = t == GgmlType::F16 ? float_to_f16_bits(x[i]) : float_to_bf16_bits(x[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

std::vector<float> decode_values(const uint8_t* data, int64_t n, GgmlType t) {
  std::vector<float> out(n);
  if (t == GgmlType::Q8_0) {
    dequantize_q8_0(data, n, out.data());
  } else if (t == GgmlType::F32) {
    std::memcpy(out.data(), data, size_t(n) * 4);
  } else {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, data + 2 * i, 2);
      out[i] = t == GgmlType::F16 ? f16_bits_to_float(h) : bf16_bits_to_float(h);
    }
  }
  return out;
}

void GgufWriter::set(const std::string& key, GgufValue value) {
  for (auto& [k, v] : kv_)
    if (k == key) {
      v = std::move(value);
      return;
    }
  kv_.emplace_back(key, std::move(value));
}

void GgufWriter::add_tensor(GgufTensor t) {
  for (const GgufTensor& other : tensors_) LOOM_CHECK(other.name != t.name, "GGUF: tensor '", t.name, "' added twice");
  LOOM_CHECK(!t.shape.empty() && int(t.shape.size()) <= kMaxDims, "GGUF: tensor '", t.name, "' has ", t.shape.size(),
             " dimensions (1 to ", kMaxDims, ")");
  LOOM_CHECK(t.type != GgmlType::Q8_0 || t.shape.back() % kQ8Block == 0, "GGUF: Q8_0 tensor '", t.name,
             "' has rows of ", t.shape.back(), " values, not whole blocks of ", kQ8Block);
  LOOM_CHECK(t.data.size() == ggml_nbytes(t.type, numel(t.shape)), "GGUF: tensor '", t.name, "' holds ",
             t.data.size(), " bytes, its shape and type need ", ggml_nbytes(t.type, numel(t.shape)));
  tensors_.push_back(std::move(t));
}

void GgufWriter::write(const std::string& path) const {
  Bytes head;
  head.put<uint32_t>(kGgufMagic);
  head.put<uint32_t>(kGgufVersion);
  head.put<uint64_t>(tensors_.size());
  head.put<uint64_t>(kv_.size());
  for (const auto& [key, value] : kv_) {
    head.put_string(key);
    head.put_value(value);
  }
  uint64_t offset = 0;
  for (const GgufTensor& t : tensors_) {
    head.put_string(t.name);
    head.put<uint32_t>(uint32_t(t.shape.size()));
    for (size_t d = t.shape.size(); d-- > 0;) head.put<uint64_t>(uint64_t(t.shape[d]));
    head.put<uint32_t>(uint32_t(t.type));
    head.put<uint64_t>(offset);
    offset += pad_to(t.data.size(), kDefaultAlignment);
  }
  head.pad(kDefaultAlignment);

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    LOOM_CHECK(out.is_open(), "cannot create ", tmp, " (is the folder writable?)");
    out.write(reinterpret_cast<const char*>(head.data().data()), std::streamsize(head.data().size()));
    const char zeros[kDefaultAlignment] = {};
    for (const GgufTensor& t : tensors_) {
      out.write(reinterpret_cast<const char*>(t.data.data()), std::streamsize(t.data.size()));
      out.write(zeros, std::streamsize(pad_to(t.data.size(), kDefaultAlignment) - t.data.size()));
    }
    LOOM_CHECK(out.flush(), "cannot write ", tmp, " (disk full?)");
  }
  LOOM_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot move ", tmp, " to ", path);
}

const GgufValue* GgufFile::find(const std::string& key) const {
  for (const auto& [k, v] : kv)
    if (k == key) return &v;
  return nullptr;
}

const GgufTensorInfo* GgufFile::tensor(const std::string& name) const {
  for (const GgufTensorInfo& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<float> GgufFile::read_tensor(const std::string& name) const {
  const GgufTensorInfo* t = tensor(name);
  LOOM_CHECK(t, "GGUF: no tensor '", name, "'");
  return decode_values(bytes.data() + data_offset + t->offset, numel(t->shape), t->type);
}

GgufFile read_gguf(const std::string& path) {
  GgufFile f;
  const std::string text = read_regular_file(path, "GGUF file", ~size_t(0));
  f.bytes.assign(text.begin(), text.end());
  Reader r(f.bytes, path);
  LOOM_CHECK(r.get<uint32_t>("the magic") == kGgufMagic, path, ": not a GGUF file (no \"GGUF\" magic)");
  f.version = r.get<uint32_t>("the version");
  LOOM_CHECK(f.version == kGgufVersion, path, ": GGUF version ", f.version, "; loom reads version ", kGgufVersion);
  // A tensor info takes at least 8 (name length) + 4 + 8 + 4 + 8 bytes; a key-value 8 + 4 + 1.
  const uint64_t n_tensors = r.get_count(32, "the tensor count");
  const uint64_t n_kv = r.get_count(13, "the metadata count");
  std::set<std::string> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.get_string("a metadata key");
    LOOM_CHECK(keys.insert(key).second, path, ": metadata key '", key, "' appears twice");
    const uint32_t type = r.get<uint32_t>("a value type");
    f.kv.emplace_back(key, read_value(r, type, key, path));
  }
  if (const GgufValue* a = f.find("general.alignment")) {
    const uint32_t* v = std::get_if<uint32_t>(a);
    LOOM_CHECK(v && *v > 0 && (*v & (*v - 1)) == 0, path, ": general.alignment must be a u32 power of two");
    f.alignment = *v;
  }
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    f.tensors.push_back(read_tensor_info(r, path));
    LOOM_CHECK(names.insert(f.tensors.back().name).second, path, ": tensor '", f.tensors.back().name,
               "' appears twice");
  }
  f.data_offset = pad_to(r.at(), f.alignment);
  LOOM_CHECK(f.data_offset <= f.bytes.size(), path, ": file ends before its data section: truncated");
  const uint64_t data_bytes = f.bytes.size() - f.data_offset;
  for (GgufTensorInfo& t : f.tensors) {
    t.nbytes = ggml_nbytes(t.type, numel(t.shape));
    LOOM_CHECK(t.offset % f.alignment == 0, path, ": tensor '", t.name, "' starts at offset ", t.offset,
               ", not a multiple of the alignment ", f.alignment);
    LOOM_CHECK(t.offset <= data_bytes && t.nbytes <= data_bytes - t.offset, path, ": tensor '", t.name, "' (",
               t.nbytes, " bytes at offset ", t.offset, ") runs past the end of the file (", data_bytes,
               " data bytes): truncated");
  }
  return f;
}

}  // namespace loom
