#include "data/jsonl.h"

#include "ops/error.h"
#include "ops/files.h"

namespace loom {

namespace {

bool is_blank(const std::string& s) { return s.find_first_not_of(" \t\r") == std::string::npos; }

}  // namespace

JsonlReader::JsonlReader(std::istream& in, std::string name)
    : in_(in), name_(std::move(name)), buffer_(kMaxJsonlLineBytes + 1) {}

std::string JsonlReader::where() const { return cat(name_, ":", line_number_); }

// istream::getline into a buffer one byte longer than the longest line: it stops there with
// failbit (and not eofbit) when the line goes on, so a line without end is never held whole.
bool JsonlReader::read_line(std::string& line) {
  in_.getline(buffer_.data(), std::streamsize(buffer_.size()));
  const size_t got = size_t(in_.gcount());
  LOOM_CHECK(!in_.bad(), "cannot read ", name_, " (line ", line_number_ + 1, ")");
  if (in_.eof() && got == 0) return false;
  ++line_number_;
  if (in_.fail() && !in_.eof())
    fail(where(), ": the line is longer than ", kMaxJsonlLineBytes >> 20,
         " MiB, the most loom reads (one JSON record per line; is a newline missing, or is this not a JSONL "
         "file?)");
  // gcount counts the "\n" getline consumed, not the end of the input.
  line.assign(buffer_.data(), in_.eof() ? got : got - 1);
  return true;
}

bool JsonlReader::next(std::string& line) {
  while (read_line(line)) {
    if (line_number_ == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!is_blank(line)) return true;
  }
  return false;
}

nlohmann::json parse_jsonl_object(const std::string& line, const std::string& where) {
  nlohmann::json j = parse_json(line, where);
  LOOM_CHECK(j.is_object(), where, ": expected a JSON object per line, found ", j.type_name());
  return j;
}

}  // namespace loom
