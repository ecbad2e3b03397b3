// JSONL input, one JSON object per line: data.path files, and the stdin of build/score and
// build/tokenize. Lines are bounded in length and parsed depth-bounded (ops/files.h), and every
// error names the source and line ("data.jsonl:12: ...", "stdin:3: ...").
#pragma once
#include <cstddef>
#include <cstdint>
#include <istream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace loom {

// Longest JSONL line loom reads: 8 MiB. The longest context of the models loom trains is 128k
// tokens, about 0.5 MB of text and at most ~1.5 MB as JSON (every character \u-escaped), so a
// real record is far below this; a longer line is a missing newline or a file that is not JSONL.
// The bound also bounds what one line can cost to parse (nlohmann's DOM of an "ids" list is ~8x
// its text).
constexpr size_t kMaxJsonlLineBytes = size_t(8) << 20;

class JsonlReader {
 public:
  // `name` is what messages call the input: the file path, or "stdin". `in` must outlive this.
  JsonlReader(std::istream& in, std::string name);

  // The next non-blank line (without its "\n", the "\r" of a CRLF, or a UTF-8 byte-order mark at
  // the start of the input); false at the end of the input. A line longer than
  // kMaxJsonlLineBytes, or a read error, is an error naming NAME:LINE.
  bool next(std::string& line);
  // 1-based number of the line next() returned last.
  int64_t line_number() const { return line_number_; }
  // "NAME:LINE" of that line.
  std::string where() const;

 private:
  bool read_line(std::string& line);

  std::istream& in_;
  std::string name_;
  int64_t line_number_ = 0;
  std::vector<char> buffer_;  // kMaxJsonlLineBytes + 1: one byte more detects a longer line
};

// One JSONL line parsed: a JSON object, nested at most kMaxJsonDepth deep; errors start with
// `where` (NAME:LINE).
nlohmann::json parse_jsonl_object(const std::string& line, const std::string& where);

}  // namespace loom
