#include "data/shards.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "data/json_fields.h"
#include "ops/error.h"
#include "ops/files.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "shards are written and read as memory images of little-endian integers");

constexpr char kMagic[8] = {'L', 'O', 'O', 'M', 'S', 'H', 'R', 'D'};
constexpr const char* kRerun = "; re-run build/prepare to rebuild it";

struct ShardHeader {
  char magic[8];
  uint64_t version;
  uint64_t n_docs;
  uint64_t n_tokens;
  uint64_t summary_bytes;
  uint64_t checksum;
};
static_assert(sizeof(ShardHeader) == 48, "the header layout of shards.h");

uint64_t mask_bytes(uint64_t n_tokens) { return (n_tokens + 7) / 8; }

// Appends raw bytes to a file opened for writing; every failure names the file and errno.
class RawFile {
 public:
  explicit RawFile(const std::string& path) : path_(path), f_(std::fopen(path.c_str(), "wb")) {
    LOOM_CHECK(f_, "cannot create ", path, ": ", std::strerror(errno));
  }
  ~RawFile() {
    if (f_) std::fclose(f_);
  }
  void write(const void* data, size_t n) {
    if (n) LOOM_CHECK(std::fwrite(data, 1, n, f_) == n, "cannot write ", path_, ": ", std::strerror(errno));
  }
  // Data on disk before the rename that publishes it.
  void close_durably() {
    const bool ok = std::fflush(f_) == 0 && fsync(fileno(f_)) == 0;
    const int err = errno;
    const bool closed = std::fclose(f_) == 0;
    f_ = nullptr;
    LOOM_CHECK(ok && closed, "cannot write ", path_, ": ", std::strerror(err));
  }

 private:
  std::string path_;
  FILE* f_;
};

std::string tmp_name(const std::string& path) { return cat(path, ".tmp.", getpid()); }

// Writes `parts` to path via a temporary file renamed into place once complete.
void write_atomically(const std::string& path, const std::vector<std::pair<const void*, size_t>>& parts) {
  const std::string tmp = tmp_name(path);
  try {
    RawFile f(tmp);
    for (const auto& [data, n] : parts) f.write(data, n);
    f.close_durably();
    std::error_code ec;
    fs::rename(tmp, path, ec);
    LOOM_CHECK(!ec, "cannot rename ", tmp, " to ", path, ": ", ec.message());
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
}

// Bitmaps after the ids: the mask, and from version 2 the sequence starts.
uint64_t bitmaps(const ShardHeader& h) { return h.version >= 2 ? 2 : 1; }

// Bytes the header's counts describe, or 0 when they cannot fit in `limit` bytes (corrupt counts
// would overflow the products below).
uint64_t described_size(const ShardHeader& h, uint64_t limit) {
  if (h.n_docs >= limit / 8 || h.n_tokens > limit / 4 || h.summary_bytes > limit) return 0;
  return sizeof(ShardHeader) + 8 * (h.n_docs + 1) + 4 * h.n_tokens + bitmaps(h) * mask_bytes(h.n_tokens) +
         h.summary_bytes;
}

// The header of the shard at `path`, checked against the file's size before anything larger is
// read: a damaged count can then never size an allocation.
ShardHeader checked_header(const std::string& path) {
  try {
    require_regular_file(path, "shard");
  } catch (const Error& e) {
    throw Error(e.what() + std::string(kRerun));  // listed in prepared.json, so it was written once
  }
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  LOOM_CHECK(!ec, "cannot read shard ", path, ": ", ec.message());
  LOOM_CHECK(size >= sizeof(ShardHeader), path, ": ", size,
             " bytes, shorter than the 48-byte shard header (truncated, or not a loom shard)", kRerun);
  ShardHeader h;
  std::ifstream in(path, std::ios::binary);
  LOOM_CHECK(in.read(reinterpret_cast<char*>(&h), sizeof h), "cannot read shard ", path, ": ", std::strerror(errno));
  LOOM_CHECK(std::memcmp(h.magic, kMagic, 8) == 0, path, ": not a loom shard (the first 8 bytes are not \"LOOMSHRD\")",
             kRerun);
  LOOM_CHECK(h.version >= kOldestShardVersion && h.version <= kShardVersion, path, ": shard format version ",
             h.version, ", this build reads versions ", kOldestShardVersion, " to ", kShardVersion, kRerun);
  const uint64_t want = described_size(h, size);
  LOOM_CHECK(want == size, path, ": the header describes ", h.n_docs, " documents and ", h.n_tokens, " tokens (",
             want ? cat(want, " bytes") : std::string("more bytes than the file"), ") but the file has ", size,
             " bytes: truncated or damaged", kRerun);
  return h;
}

// The whole shard, its checksum verified.
std::string checked_bytes(const std::string& path, const ShardHeader& h) {
  const uint64_t size = described_size(h, std::numeric_limits<uint64_t>::max());
  const std::string bytes = read_regular_file(path, "shard", size);
  LOOM_CHECK(bytes.size() == size, path, ": changed while it was read (", bytes.size(), " bytes, expected ", size, ")",
             kRerun);
  const uint64_t sum = fnv1a64(bytes.data() + sizeof h, bytes.size() - sizeof h);
  LOOM_CHECK(sum == h.checksum, path, ": checksum mismatch (header ", hex64(h.checksum), ", contents ", hex64(sum),
             "): the file is corrupted", kRerun);
  return bytes;
}

bool bit(const uint8_t* bits, uint64_t t) { return (bits[t / 8] >> (t % 8)) & 1; }

// The segments of the document at tokens [begin, end) from the sequence bits (version 2): empty
// when no sequence starts inside it.
std::vector<int32_t> decode_segments(const std::string& path, const uint8_t* starts, uint64_t begin, uint64_t end,
                                     uint64_t d) {
  std::vector<int32_t> segments;
  LOOM_CHECK(begin == end || !bit(starts, begin), path, ": document ", d,
             " has a sequence start on its first token (damaged sequence bits)", kRerun);
  uint64_t from = begin;
  for (uint64_t t = begin + 1; t < end; ++t)
    if (bit(starts, t)) {
      segments.push_back(int32_t(t - from));
      from = t;
    }
  if (!segments.empty()) segments.push_back(int32_t(end - from));
  return segments;
}

std::vector<Document> decode_shard(const std::string& path, const std::string& bytes, const ShardHeader& h) {
  const char* p = bytes.data() + sizeof h;
  std::vector<uint64_t> offsets(h.n_docs + 1);
  std::memcpy(offsets.data(), p, 8 * offsets.size());
  p += 8 * offsets.size();
  const char* ids = p;
  const uint8_t* bits = reinterpret_cast<const uint8_t*>(p + 4 * h.n_tokens);
  const uint8_t* starts = h.version >= 2 ? bits + mask_bytes(h.n_tokens) : nullptr;
  // All offsets before any copy: each document's range must lie inside the ids block.
  LOOM_CHECK(offsets.front() == 0 && offsets.back() == h.n_tokens, path, ": document offsets run from ",
             offsets.front(), " to ", offsets.back(), ", expected 0 to ", h.n_tokens, kRerun);
  for (uint64_t d = 0; d < h.n_docs; ++d)
    LOOM_CHECK(offsets[d] <= offsets[d + 1], path, ": document offsets decrease at document ", d, kRerun);
  std::vector<Document> docs(h.n_docs);
  for (uint64_t d = 0; d < h.n_docs; ++d) {
    Document& doc = docs[d];
    doc.ids.resize(offsets[d + 1] - offsets[d]);
    if (!doc.ids.empty()) std::memcpy(doc.ids.data(), ids + 4 * offsets[d], 4 * doc.ids.size());  // null data() when empty
    doc.mask.resize(doc.ids.size());
    for (uint64_t t = offsets[d]; t < offsets[d + 1]; ++t) doc.mask[t - offsets[d]] = bit(bits, t);
    if (starts) doc.segments = decode_segments(path, starts, offsets[d], offsets[d + 1], d);
  }
  return docs;
}

// Drops shard files of an earlier preparation that the new manifest does not list.
void remove_unlisted_shards(const fs::path& dir, const std::vector<ShardInfo>& keep) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    const bool shard = name.rfind("shard-", 0) == 0 && entry.path().extension() == ".bin";
    bool listed = false;
    for (const auto& s : keep) listed = listed || s.file == name;
    if (shard && !listed) fs::remove(entry.path());
  }
}

std::vector<std::pair<size_t, size_t>> split_by_tokens(const std::vector<Document>& docs, int64_t shard_tokens) {
  std::vector<std::pair<size_t, size_t>> ranges;
  size_t begin = 0;
  int64_t tokens = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i > begin && tokens + int64_t(docs[i].ids.size()) > shard_tokens) {
      ranges.emplace_back(begin, i);
      begin = i;
      tokens = 0;
    }
    tokens += int64_t(docs[i].ids.size());
  }
  if (begin < docs.size()) ranges.emplace_back(begin, docs.size());
  return ranges;
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t n, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t fnv1a64_file(const std::string& path, const std::string& what, uint64_t h) {
  require_regular_file(path, what);
  std::ifstream in(path, std::ios::binary);
  LOOM_CHECK(in, "cannot open ", path, ": ", std::strerror(errno));
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    h = fnv1a64(buf.data(), size_t(in.gcount()), h);
  }
  LOOM_CHECK(!in.bad(), "cannot read ", path);
  return h;
}

ShardInfo write_shard(const std::string& path, const std::vector<Document>& docs, size_t begin, size_t end) {
  std::vector<uint64_t> offsets{0};
  std::vector<int32_t> ids;
  for (size_t d = begin; d < end; ++d) {
    LOOM_CHECK(docs[d].ids.size() == docs[d].mask.size(), "document ", d, " has ", docs[d].ids.size(), " ids but ",
               docs[d].mask.size(), " mask entries");
    check_segments(docs[d], cat("document ", d));
    ids.insert(ids.end(), docs[d].ids.begin(), docs[d].ids.end());
    offsets.push_back(ids.size());
  }
  std::vector<uint8_t> bits(mask_bytes(ids.size()), 0), starts(mask_bytes(ids.size()), 0);
  int64_t targets = 0;
  for (size_t d = begin, t = 0; d < end; ++d) {
    size_t seq_start = t;
    for (size_t s = 0; s + 1 < docs[d].segments.size(); ++s) {
      seq_start += size_t(docs[d].segments[s]);
      starts[seq_start / 8] |= uint8_t(1u << (seq_start % 8));
    }
    for (uint8_t m : docs[d].mask) {
      if (m) bits[t / 8] |= uint8_t(1u << (t % 8));
      targets += m != 0;
      ++t;
    }
  }
  const std::string summary =
      json{{"documents", end - begin}, {"tokens", ids.size()}, {"target_tokens", targets}}.dump();

  ShardHeader h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kShardVersion;
  h.n_docs = end - begin;
  h.n_tokens = ids.size();
  h.summary_bytes = summary.size();
  const std::vector<std::pair<const void*, size_t>> payload = {{offsets.data(), 8 * offsets.size()},
                                                               {ids.data(), 4 * ids.size()},
                                                               {bits.data(), bits.size()},
                                                               {starts.data(), starts.size()},
                                                               {summary.data(), summary.size()}};
  h.checksum = 14695981039346656037ull;
  for (const auto& [data, n] : payload) h.checksum = fnv1a64(data, n, h.checksum);

  std::vector<std::pair<const void*, size_t>> parts = {{&h, sizeof h}};
  parts.insert(parts.end(), payload.begin(), payload.end());
  write_atomically(path, parts);

  ShardInfo info;
  info.file = fs::path(path).filename().string();
  info.documents = int64_t(end - begin);
  info.tokens = int64_t(ids.size());
  info.bytes = int64_t(sizeof h);
  for (const auto& part : payload) info.bytes += int64_t(part.second);
  info.checksum = h.checksum;
  return info;
}

std::vector<Document> read_shard(const std::string& path, uint64_t* checksum) {
  const ShardHeader h = checked_header(path);
  const std::string bytes = checked_bytes(path, h);
  if (checksum) *checksum = h.checksum;
  return decode_shard(path, bytes, h);
}

std::vector<ShardInfo> write_prepared(const std::string& dir, const std::vector<Document>& docs,
                                      const std::string& manifest_fields, int64_t shard_tokens) {
  json manifest = parse_json(manifest_fields, "manifest fields");  // from code, never from a user
  LOOM_CHECK(manifest.is_object(), "manifest fields must be a JSON object");
  LOOM_CHECK(shard_tokens > 0, "shard_tokens must be > 0 (found ", shard_tokens, ")");
  const fs::path folder(dir);
  fs::create_directories(folder);
  // Unpublish first: from here until the new manifest lands, the folder is not a prepared dataset.
  fs::remove(folder / kManifestName);

  std::vector<ShardInfo> shards;
  char name[32];
  for (const auto& [begin, end] : split_by_tokens(docs, shard_tokens)) {
    std::snprintf(name, sizeof name, "shard-%05zu.bin", shards.size());
    shards.push_back(write_shard((folder / name).string(), docs, begin, end));
  }
  remove_unlisted_shards(folder, shards);

  json list = json::array();
  for (const auto& s : shards)
    list.push_back({{"file", s.file}, {"documents", s.documents}, {"tokens", s.tokens}, {"bytes", s.bytes},
                    {"checksum", hex64(s.checksum)}});
  manifest["format"] = "loom-prepared";
  manifest["version"] = kShardVersion;
  manifest["shards"] = list;
  const std::string text = manifest.dump(2) + "\n";
  write_atomically((folder / kManifestName).string(), {{text.data(), text.size()}});
  return shards;
}

std::string read_manifest(const std::string& dir) {
  const fs::path p = fs::path(dir) / kManifestName;
  std::error_code ec;
  return fs::exists(p, ec) ? read_regular_file(p.string(), kManifestName) : "";
}

namespace {

std::string rerun_hint(const std::string& dir) {
  return cat("; re-run build/prepare --data FILE.jsonl --tokenizer PATH --out ", dir, " to rebuild it");
}

// One "shards" entry of prepared.json, its types checked; `path` is its key path.
ShardInfo manifest_entry(const json& entry, const std::string& path, const std::string& where) {
  if (!entry.is_object()) json_type_error(where, path, "an object {file, documents, tokens, bytes, checksum}", entry);
  ShardInfo s;
  s.file = json_string_at(entry, "file", where, path);
  LOOM_CHECK(!s.file.empty() && s.file.find('/') == std::string::npos && s.file != "." && s.file != "..", where, ": ",
             path, ".file = \"", s.file, "\" must be a file name inside the folder");
  for (auto [key, field] :
       {std::pair<const char*, int64_t*>{"documents", &s.documents}, {"tokens", &s.tokens}, {"bytes", &s.bytes}}) {
    const json* v = json_member(entry, key);
    if (!v) fail(where, ": ", path, ".", key, " is missing");
    *field = json_integer(*v, 0, INT64_MAX, where, json_key_path(path, key));
  }
  const std::string sum = json_string_at(entry, "checksum", where, path);
  LOOM_CHECK(sum.size() == 16 && sum.find_first_not_of("0123456789abcdef") == std::string::npos, where, ": ", path,
             ".checksum = \"", sum, "\" must be 16 lowercase hex digits");
  s.checksum = std::stoull(sum, nullptr, 16);
  return s;
}

// The shard list of prepared.json, after its format and version.
std::vector<ShardInfo> manifest_shards(const json& m, const std::string& where) {
  const json* format = json_member(m, "format");
  LOOM_CHECK(format && *format == "loom-prepared", where,
             ": not a loom prepared.json (expected \"format\": \"loom-prepared\")");
  const json* version = json_member(m, "version");
  LOOM_CHECK(version && version->is_number_integer() && *version >= kOldestShardVersion && *version <= kShardVersion,
             where, ": version ", version ? json_shown(*version) : "missing", ", this build reads versions ",
             kOldestShardVersion, " to ", kShardVersion);
  const json& list = json_array_at(m, "shards", where, "");
  std::vector<ShardInfo> shards;
  for (size_t i = 0; i < list.size(); ++i)
    shards.push_back(manifest_entry(list[i], json_index_path("shards", i), where));
  return shards;
}

}  // namespace

std::vector<Document> load_prepared(const std::string& dir) {
  const std::string path = (fs::path(dir) / kManifestName).string();
  std::error_code ec;
  LOOM_CHECK(fs::exists(path, ec), "no ", kManifestName, " in ", dir,
             ": not a prepared dataset, or its preparation did not finish; run build/prepare --data FILE.jsonl "
             "--tokenizer PATH --out ",
             dir);
  const std::string hint = rerun_hint(dir);
  std::vector<ShardInfo> listed;
  try {
    listed = manifest_shards(read_json_file(path, kManifestName), path);
  } catch (const Error& e) {
    throw Error(e.what() + hint);
  }
  std::vector<Document> all;
  for (const ShardInfo& shard : listed) {
    const std::string shard_path = (fs::path(dir) / shard.file).string();
    uint64_t checksum = 0;
    std::vector<Document> docs = read_shard(shard_path, &checksum);
    LOOM_CHECK(checksum == shard.checksum && int64_t(docs.size()) == shard.documents, shard_path,
               " is not the shard ", path, " lists (checksum ", hex64(checksum), ", listed ", hex64(shard.checksum),
               "; ", docs.size(), " documents, listed ", shard.documents, "): the folder mixes two preparations",
               hint);
    for (auto& d : docs) all.push_back(std::move(d));
  }
  return all;
}

}  // namespace loom
