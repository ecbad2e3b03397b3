#include "ops/files.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "ops/error.h"

namespace fs = std::filesystem;

namespace loom {
namespace {

// What a non-regular file is, for the message.
std::string kind_of(const struct stat& st) {
  if (S_ISREG(st.st_mode)) return "a file";
  if (S_ISDIR(st.st_mode)) return "a folder";
  if (S_ISFIFO(st.st_mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(st.st_mode)) return "a character device";
  if (S_ISBLK(st.st_mode)) return "a block device";
  if (S_ISSOCK(st.st_mode)) return "a socket";
  return "not a regular file";
}

}  // namespace

std::string shown(std::string_view text, size_t max_bytes) {
  size_t end = std::min(text.size(), max_bytes);
  // Back up to the first byte of a character: 10xxxxxx bytes continue one.
  while (end < text.size() && end > 0 && (static_cast<uint8_t>(text[end]) & 0xC0) == 0x80) --end;
  std::string out;
  for (size_t i = 0; i < end; ++i) {
    const unsigned char ch = static_cast<unsigned char>(text[i]);
    if (ch >= 0x20) {
      out += char(ch);
      continue;
    }
    char esc[8];
    std::snprintf(esc, sizeof esc, "\\x%02x", ch);
    out += esc;
  }
  return end == text.size() ? out : cat(out, "... (", text.size(), " characters)");
}

void require_regular_file(const std::string& path, const std::string& what) {
  LOOM_CHECK(!path.empty(), what, ": no path given");
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    fail(what, " ", shown(path), ": ", errno == ENOENT ? "no such file" : std::strerror(errno));
  LOOM_CHECK(S_ISREG(st.st_mode), what, " ", shown(path), " is ", kind_of(st), "; give a regular file");
}

void require_file_or_folder(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return;
  require_regular_file(path, what);
}

void require_folder_or_creatable(const std::string& path, const std::string& what) {
  LOOM_CHECK(!path.empty(), what, ": no folder given");
  LOOM_CHECK(path.size() < 4096, what, " ", shown(path), ": the path is too long; give a shorter folder");
  // Walk up to the first part that exists: it must be a folder (a file there blocks creation).
  fs::path p = fs::path(path);
  for (; !p.empty(); p = p.parent_path()) {
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) return;
      fail(what, " ", shown(path), ": ", p.string() == path ? "it" : cat("'", shown(p.string()), "'"), " is ",
           kind_of(st), ", not a folder; choose another folder");
    }
    if (errno == ENAMETOOLONG) fail(what, " ", shown(path), ": a part of the path is too long; give a shorter name");
    if (errno != ENOENT && errno != ENOTDIR) fail(what, " ", shown(path), ": ", std::strerror(errno));
    if (p == p.parent_path()) break;
  }
}

std::string read_regular_file(const std::string& path, const std::string& what, size_t max_bytes) {
  require_regular_file(path, what);
  std::ifstream in(path, std::ios::binary);
  LOOM_CHECK(in, "cannot open ", what, " ", shown(path), ": ", std::strerror(errno));
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  LOOM_CHECK(size >= 0 && uint64_t(size) <= max_bytes, what, " ", shown(path), " is ", size, " bytes, more than the ",
             max_bytes, " loom reads; is it the right file?");
  std::string text(size_t(size), '\0');
  in.seekg(0);
  in.read(text.data(), size);
  LOOM_CHECK(in.gcount() == size, "cannot read ", what, " ", shown(path), " (", in.gcount(), " of ", size, " bytes)");
  return text;
}

int json_depth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;  // the escaped character cannot close the string
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > deepest && (deepest = depth) > limit) return limit + 1;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

nlohmann::json parse_json(std::string_view text, const std::string& where, int max_depth) {
  if (json_depth(text, max_depth) > max_depth)
    fail(where, ": JSON nested deeper than ", max_depth, " levels; no loom input nests that deep (corrupt file?)");
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
    // "[json.exception.parse_error.101] parse error at line 1, column 12: ..." without the tag.
    std::string msg = e.what();
    if (const size_t p = msg.find("] "); p != std::string::npos) msg = msg.substr(p + 2);
    fail(where, ": invalid JSON: ", msg);
  }
}

nlohmann::json read_json_file(const std::string& path, const std::string& what) {
  return parse_json(read_regular_file(path, what), path);
}

}  // namespace loom
