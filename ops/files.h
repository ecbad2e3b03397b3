// Reading what a user hands us, safely: regular files only (a FIFO, /dev/zero or a folder where a
// file is expected would hang or read forever), bounded sizes, and JSON whose nesting depth is
// checked before the parser sees it (nlohmann's DOM recursion overflows the stack at ~100k levels).
// Every failure is a loom::Error naming the file (or `where`) and what to change.
#pragma once
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace loom {

// Deepest JSON nesting any loom reader accepts. Real files nest < 10 deep (tokenizer.json's
// pre_tokenizer Sequence ~5, chat messages 3); 64 leaves room and keeps every recursion shallow.
constexpr int kMaxJsonDepth = 64;
// Largest text file read whole. The biggest loom reads are tokenizer.json files, at most ~35 MB on
// the Hub (Gemma's); nlohmann's DOM takes ~8x the text, so a bound of 1 GB would end in bad_alloc
// rather than in this clean error. Safetensors headers have their own 100 MB bound.
constexpr size_t kMaxTextFileBytes = size_t(100) << 20;
// How much of a user's text (a path, a key, a value) a message quotes: a 5 MB path must not become
// a 5 MB message.
constexpr size_t kMaxShownBytes = 200;

// `text` as messages quote it: whole when short, else its first max_bytes cut between UTF-8
// characters and "... (N characters)"; control characters as \xNN (a NUL would end the message, a
// newline would split it).
std::string shown(std::string_view text, size_t max_bytes = kMaxShownBytes);

// Throws unless `path` names an existing regular file (symlinks followed). `what` says what the
// file is for ("config", "tokenizer file"), so the message reads "tokenizer file x is a FIFO ...".
void require_regular_file(const std::string& path, const std::string& what);
// Throws unless `path` is a folder or a regular file (a tokenizer file or folder; JSONL or shards).
void require_file_or_folder(const std::string& path, const std::string& what);
// Throws unless `path` is a folder or can be created as one (no part of it is a regular file).
void require_folder_or_creatable(const std::string& path, const std::string& what);
// The whole of a regular file, at most max_bytes.
std::string read_regular_file(const std::string& path, const std::string& what,
                              size_t max_bytes = kMaxTextFileBytes);

// The deepest nesting of arrays/objects in JSON text (strings skipped); stops counting early once
// past `limit` and returns limit + 1.
int json_depth(std::string_view text, int limit = kMaxJsonDepth);
// Parses JSON text; errors are "<where>: invalid JSON: ..." or "<where>: JSON nested deeper than N
// levels". `where` names the file (and line, for JSONL).
nlohmann::json parse_json(std::string_view text, const std::string& where, int max_depth = kMaxJsonDepth);
// read_regular_file + parse_json.
nlohmann::json read_json_file(const std::string& path, const std::string& what);

}  // namespace loom
