#include "data/json_fields.h"

#include "ops/error.h"

namespace loom {

using json = nlohmann::json;

std::string json_key_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

std::string json_index_path(const std::string& parent, size_t index) { return cat(parent, "[", index, "]"); }

std::string json_shown(const json& v, size_t limit) {
  // replace: a string holding invalid UTF-8 (only from code, parse_json refuses it) still prints.
  const std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return text.size() <= limit ? text : text.substr(0, limit) + "...";
}

void json_type_error(const std::string& where, const std::string& path, const std::string& expected,
                     const json& found) {
  fail(where, ": ", path, " must be ", expected, ", found ", json_shown(found));
}

const json* json_member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string json_string(const json& v, const std::string& where, const std::string& path) {
  if (!v.is_string()) json_type_error(where, path, "a string", v);
  return v.get<std::string>();
}

bool json_bool(const json& v, const std::string& where, const std::string& path) {
  if (!v.is_boolean()) json_type_error(where, path, "true or false", v);
  return v.get<bool>();
}

int64_t json_integer(const json& v, int64_t lo, int64_t hi, const std::string& where, const std::string& path,
                     const std::string& hint) {
  const std::string range = cat("an integer from ", lo, " to ", hi, hint);
  if (!v.is_number_integer()) json_type_error(where, path, range, v);
  // Unsigned first: a value above 2^63 - 1 read as int64 would wrap to a negative number.
  bool in_range;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    in_range = hi >= 0 && u <= uint64_t(hi) && (lo <= 0 || u >= uint64_t(lo));
  } else {
    const int64_t x = v.get<int64_t>();
    in_range = x >= lo && x <= hi;
  }
  if (!in_range) json_type_error(where, path, range, v);
  return v.is_number_unsigned() ? int64_t(v.get<uint64_t>()) : v.get<int64_t>();
}

uint64_t json_unsigned(const json& v, const std::string& where, const std::string& path) {
  const bool ok = v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
  if (!ok) json_type_error(where, path, "an integer from 0 to 18446744073709551615", v);
  return v.get<uint64_t>();
}

std::string json_string_at(const json& obj, const char* key, const std::string& where, const std::string& path) {
  const json* v = json_member(obj, key);
  if (!v) fail(where, ": ", json_key_path(path, key), " is missing; it must be a string");
  return json_string(*v, where, json_key_path(path, key));
}

std::optional<std::string> json_optional_string_at(const json& obj, const char* key, const std::string& where,
                                                   const std::string& path) {
  const json* v = json_member(obj, key);
  if (!v) return std::nullopt;
  return json_string(*v, where, json_key_path(path, key));
}

bool json_bool_at(const json& obj, const char* key, bool fallback, const std::string& where, const std::string& path) {
  const json* v = json_member(obj, key);
  return v ? json_bool(*v, where, json_key_path(path, key)) : fallback;
}

const json& json_array_at(const json& obj, const char* key, const std::string& where, const std::string& path) {
  const json* v = json_member(obj, key);
  if (!v) fail(where, ": ", json_key_path(path, key), " is missing; it must be a list");
  if (!v->is_array()) json_type_error(where, json_key_path(path, key), "a list", *v);
  return *v;
}

const json& json_object_at(const json& obj, const char* key, const std::string& where, const std::string& path) {
  const json* v = json_member(obj, key);
  if (!v) fail(where, ": ", json_key_path(path, key), " is missing; it must be an object");
  if (!v->is_object()) json_type_error(where, json_key_path(path, key), "an object", *v);
  return *v;
}

}  // namespace loom
