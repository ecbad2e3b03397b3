// bitsandbytes NF4 tensors <-> Nf4Host (key layout in bnb_nf4.h; bitsandbytes functional.py
// QuantState.as_dict(packed=True) / from_dict, utils.py pack_dict_to_tensor).
#include "models/bnb_nf4.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <string_view>
#include <nlohmann/json.hpp>

#include "ops/error.h"
#include "ops/files.h"

namespace loom {
using nlohmann::json;

namespace {

const char* kNf4State = ".quant_state.bitsandbytes__nf4";
const char* kFp4State = ".quant_state.bitsandbytes__fp4";

std::string tensor_in(const Checkpoint& ck, const std::string& name) { return cat("tensor '", name, "' in ", ck.path()); }

const TensorView& require(const Checkpoint& ck, const std::string& name, const std::string& weight) {
  LOOM_CHECK(ck.has(name), "tensor '", name, "' not found in ", ck.path(), " (", weight,
             " is bitsandbytes NF4, which stores it beside the weight; re-download the checkpoint)");
  return ck.get(name);
}

std::vector<uint8_t> read_u8(const Checkpoint& ck, const std::string& name, const std::string& weight,
                             const std::vector<int64_t>& shape) {
  const TensorView& v = require(ck, name, weight);
  LOOM_CHECK(v.dtype == DType::U8 && v.shape == shape, tensor_in(ck, name), " is ", v.dtype_str, " ",
             shape_str(v.shape), ", expected U8 ", shape_str(shape));
  return std::vector<uint8_t>(v.data, v.data + v.nbytes);
}

json read_quant_state(const Checkpoint& ck, const std::string& weight) {
  const std::string name = weight + kNf4State;
  const TensorView& v = ck.get(name);
  LOOM_CHECK(v.dtype == DType::U8, tensor_in(ck, name), " must be U8 (UTF-8 JSON), found ", v.dtype_str);
  const json state =
      parse_json(std::string_view(reinterpret_cast<const char*>(v.data), v.nbytes), tensor_in(ck, name));
  LOOM_CHECK(state.is_object(), tensor_in(ck, name), " must hold a JSON object, found ", state.dump());
  return state;
}

// A key of the quant_state JSON, with the error naming the tensor and the key.
const json& state_key(const json& state, const char* key, const std::string& where) {
  LOOM_CHECK(state.contains(key), where, ": quant_state has no \"", key, "\" (found ", state.dump(), ")");
  return state.at(key);
}

int state_int(const json& state, const char* key, const std::string& where) {
  const json& v = state_key(state, key, where);
  LOOM_CHECK(v.is_number_integer() && std::fabs(v.get<double>()) <= INT32_MAX, where, ": quant_state \"", key,
             "\" must be an integer, found ", v.dump());
  return v.get<int>();
}

void check_state(const json& state, int64_t rows, int64_t cols, const std::string& where) {
  const json& type = state_key(state, "quant_type", where);
  LOOM_CHECK(type == "nf4", where, ": quant_type ", type.dump(), " is not supported; loom reads NF4 only");
  const json& dtype = state_key(state, "dtype", where);
  LOOM_CHECK(dtype == "bfloat16" || dtype == "float16" || dtype == "float32", where, ": quant_state dtype ",
             dtype.dump(), " is not bfloat16, float16 or float32");
  const json& shape = state_key(state, "shape", where);
  LOOM_CHECK(shape == json::array({rows, cols}), where, ": quant_state shape ", shape.dump(), ", expected [", rows,
             ", ", cols, "] (does config.json belong to this checkpoint?)");
}

void check_quant_map(const Checkpoint& ck, const std::string& weight) {
  const std::string name = weight + ".quant_map";
  require(ck, name, weight);
  const std::vector<float> map = ck.read_f32(name, {16});
  for (int i = 0; i < 16; ++i)
    LOOM_CHECK(std::memcmp(&map[size_t(i)], &kNf4Table[i], sizeof(float)) == 0, tensor_in(ck, name),
               " is not the NF4 code table (entry ", i, " is ", map[size_t(i)], ", NF4 has ", kNf4Table[i],
               "); loom reads bitsandbytes NF4 only");
}

void read_nested(const Checkpoint& ck, const std::string& weight, const json& state, const std::string& where,
                 Nf4Host& q) {
  const int64_t nb = q.nblocks();
  q.nested = true;
  q.nested_blocksize = state_int(state, "nested_blocksize", where);
  LOOM_CHECK(q.nested_blocksize > 0, where, ": nested_blocksize must be positive, found ", q.nested_blocksize);
  if (state.contains("nested_dtype"))
    LOOM_CHECK(state["nested_dtype"] == "float32", where, ": nested_dtype ", state["nested_dtype"].dump(),
               " is not float32");
  const json& offset = state_key(state, "nested_offset", where);
  LOOM_CHECK(offset.is_number() && std::isfinite(float(offset.get<double>())), where,
             ": nested_offset must be a finite float, found ", offset.dump());
  q.nested_offset = float(offset.get<double>());
  q.absmax_q = read_u8(ck, weight + ".absmax", weight, {nb});
  const int64_t groups = (nb + q.nested_blocksize - 1) / q.nested_blocksize;
  require(ck, weight + ".nested_absmax", weight);
  q.nested_absmax = ck.read_f32(weight + ".nested_absmax", {groups});
  require(ck, weight + ".nested_quant_map", weight);
  q.nested_map = ck.read_f32(weight + ".nested_quant_map", {256});
}

// Python repr() of a double (what json.dumps writes): the shortest digits that read back exactly,
// fixed notation for exponents -4..15, else d.ddde±XX.
std::string python_float_repr(double x) {
  LOOM_CHECK(std::isfinite(x), "cannot write a non-finite nested_offset (", x, ")");
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  const std::string sci(buf, r.ptr);
  const size_t e = sci.find('e');
  const int exp = std::stoi(sci.substr(e + 1));
  std::string digits = sci.substr(0, e);
  const bool negative = digits[0] == '-';
  if (negative) digits.erase(0, 1);
  if (digits.size() > 1) digits.erase(1, 1);  // the '.'
  std::string out;
  if (exp >= 16 || exp < -4) {
    const std::string e_digits = std::to_string(std::abs(exp));
    out = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "") + (exp < 0 ? "e-" : "e+") +
          (e_digits.size() < 2 ? "0" : "") + e_digits;
  } else if (exp < 0) {
    out = "0." + std::string(size_t(-exp - 1), '0') + digits;
  } else if (digits.size() <= size_t(exp) + 1) {
    out = digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
  } else {
    out = digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
  }
  return (negative ? "-" : "") + out;
}

// json.dumps of QuantState.as_dict's non-tensor items, in its key order.
std::string quant_state_json(const Nf4Host& q, const std::string& orig_dtype) {
  std::string s = cat("{\"quant_type\": \"nf4\", \"blocksize\": ", q.blocksize, ", \"dtype\": \"", orig_dtype,
                      "\", \"shape\": [", q.rows, ", ", q.cols, "]");
  if (q.nested)
    s += cat(", \"nested_blocksize\": ", q.nested_blocksize, ", \"nested_dtype\": \"float32\", \"nested_offset\": ",
             python_float_repr(double(q.nested_offset)));
  return s + "}";
}

template <class T>
StoredTensor stored(const std::string& name, DType dtype, std::vector<int64_t> shape, const T* data, size_t count) {
  StoredTensor t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.bytes.resize(count * sizeof(T));
  if (count) std::memcpy(t.bytes.data(), data, t.bytes.size());
  return t;
}

}  // namespace

bool is_bnb_nf4(const Checkpoint& ck, const std::string& weight_name) {
  LOOM_CHECK(!ck.has(weight_name + kFp4State), tensor_in(ck, weight_name),
             " is bitsandbytes FP4 (bnb_4bit_quant_type=\"fp4\"); loom reads NF4 only: use an NF4 checkpoint or the "
             "bf16 one with quantization: nf4");
  return ck.has(weight_name + kNf4State);
}

Nf4Host read_bnb_nf4(const Checkpoint& ck, const std::string& weight_name, int64_t rows, int64_t cols) {
  LOOM_CHECK(is_bnb_nf4(ck, weight_name), tensor_in(ck, weight_name), " has no ", weight_name, kNf4State,
             "; it is not a bitsandbytes NF4 weight");
  const std::string where = tensor_in(ck, weight_name);
  const json state = read_quant_state(ck, weight_name);
  check_state(state, rows, cols, where);
  check_quant_map(ck, weight_name);

  Nf4Host q;
  q.rows = rows;
  q.cols = cols;
  q.blocksize = state_int(state, "blocksize", where);
  LOOM_CHECK(q.blocksize >= 32 && q.blocksize <= 4096 && (q.blocksize & (q.blocksize - 1)) == 0, where,
             ": blocksize ", q.blocksize, " is not a power of two in [32, 4096]");
  // bitsandbytes views the storage as bytes, so any quant_storage dtype holding (n + 1) / 2 bytes works.
  const TensorView& packed = ck.get(weight_name);
  const size_t want_bytes = size_t((q.numel() + 1) / 2);
  LOOM_CHECK(packed.nbytes == want_bytes, where, " holds ", packed.nbytes, " bytes (", packed.dtype_str, " ",
             shape_str(packed.shape), "), expected ", want_bytes, " packed NF4 codes for [", rows, ", ", cols, "]");
  q.codes.assign(packed.data, packed.data + packed.nbytes);
  if (ck.has(weight_name + ".nested_absmax")) {
    read_nested(ck, weight_name, state, where, q);
  } else {
    require(ck, weight_name + ".absmax", weight_name);
    q.absmax = ck.read_f32(weight_name + ".absmax", {q.nblocks()});
  }
  nf4_check_sizes(q, where);
  return q;
}

void append_bnb_nf4_tensors(const std::string& weight_name, const Nf4Host& q, const std::string& orig_dtype,
                            std::vector<StoredTensor>& out) {
  nf4_check_sizes(q, weight_name);
  LOOM_CHECK(orig_dtype == "bfloat16" || orig_dtype == "float16" || orig_dtype == "float32", weight_name,
             ": original dtype must be bfloat16, float16 or float32, got \"", orig_dtype, "\"");
  const int64_t nb = q.nblocks();
  out.push_back(stored(weight_name, DType::U8, {int64_t(q.codes.size()), 1}, q.codes.data(), q.codes.size()));
  if (q.nested)
    out.push_back(stored(weight_name + ".absmax", DType::U8, {nb}, q.absmax_q.data(), q.absmax_q.size()));
  else
    out.push_back(stored(weight_name + ".absmax", DType::F32, {nb}, q.absmax.data(), q.absmax.size()));
  out.push_back(stored(weight_name + ".quant_map", DType::F32, {16}, kNf4Table, 16));
  if (q.nested) {
    out.push_back(stored(weight_name + ".nested_absmax", DType::F32, {int64_t(q.nested_absmax.size())},
                         q.nested_absmax.data(), q.nested_absmax.size()));
    out.push_back(stored(weight_name + ".nested_quant_map", DType::F32, {256}, q.nested_map.data(), q.nested_map.size()));
  }
  const std::string text = quant_state_json(q, orig_dtype);
  out.push_back(stored(weight_name + kNf4State, DType::U8, {int64_t(text.size())}, text.data(), text.size()));
}

}  // namespace loom
