// Typed reads of parsed JSON (tokenizer.json, tokenizer_config.json, prepared.json, loader state,
// tool input) that never guess: a wrong type or an out-of-range number is a loom::Error naming
// the file and the key path inside it ("tokenizer.json: model.byte_fallback must be true or
// false, found \"yes\""), never nlohmann's silent conversion (7.5 read as 7, 2^40 wrapped to an
// int32, -1 to a huge unsigned) nor its type_error.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace loom {

// "parent.key" ("key" at the top) and "parent[i]": the key paths the messages show.
std::string json_key_path(const std::string& parent, const std::string& key);
std::string json_index_path(const std::string& parent, size_t index);

// A value for a message: its JSON text, cut to `limit` characters.
std::string json_shown(const nlohmann::json& v, size_t limit = 80);

// "<where>: <path> must be <expected>, found <value>".
[[noreturn]] void json_type_error(const std::string& where, const std::string& path, const std::string& expected,
                                  const nlohmann::json& found);

// obj[key], or nullptr when obj is not an object, has no such key, or holds null there (JSON
// writers use null and absence alike for "not set").
const nlohmann::json* json_member(const nlohmann::json& obj, const char* key);

// The value itself, checked: a string; true/false; an integer in [lo, hi] (floats such as 7.0,
// strings and booleans are errors, so are integers out of range; `hint` follows the range in the
// message, e.g. to say why the range is what it is).
std::string json_string(const nlohmann::json& v, const std::string& where, const std::string& path);
bool json_bool(const nlohmann::json& v, const std::string& where, const std::string& path);
int64_t json_integer(const nlohmann::json& v, int64_t lo, int64_t hi, const std::string& where, const std::string& path,
                     const std::string& hint = "");
// Any integer from 0 to 2^64 - 1 (seeds, which use the whole unsigned range).
uint64_t json_unsigned(const nlohmann::json& v, const std::string& where, const std::string& path);

// Members of an object at `path`: required (absent or null is an error) or optional (nullopt,
// or `fallback` for booleans, when absent or null).
std::string json_string_at(const nlohmann::json& obj, const char* key, const std::string& where,
                           const std::string& path);
std::optional<std::string> json_optional_string_at(const nlohmann::json& obj, const char* key, const std::string& where,
                                                   const std::string& path);
bool json_bool_at(const nlohmann::json& obj, const char* key, bool fallback, const std::string& where,
                  const std::string& path);
// obj[key] when it is an array / an object, else an error naming its path (absent included).
const nlohmann::json& json_array_at(const nlohmann::json& obj, const char* key, const std::string& where,
                                    const std::string& path);
const nlohmann::json& json_object_at(const nlohmann::json& obj, const char* key, const std::string& where,
                                     const std::string& path);

}  // namespace loom
