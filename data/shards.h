// Prepared datasets on disk: a folder of token shards plus a manifest, prepared.json.
//
// Shard file (shard-NNNNN.bin), version 2, every integer little-endian:
//   offset  bytes        field
//   0       8            magic "LOOMSHRD"
//   8       8   u64      version = 2
//   16      8   u64      n_docs
//   24      8   u64      n_tokens
//   32      8   u64      summary_bytes
//   40      8   u64      checksum: FNV-1a-64 of every byte from offset 48 to the end of the file
//   48      8·(n_docs+1) u64 doc_offsets: token index where document d starts; [0] = 0, [n_docs] = n_tokens
//   …       4·n_tokens   i32 ids, documents back to back (4-aligned: the header and offsets are 8·k bytes)
//   …       ⌈n_tokens/8⌉ mask bits: token t's mask is bit (t mod 8) of byte ⌊t/8⌋ (LSB first); pad bits 0
//   …       ⌈n_tokens/8⌉ sequence bits, same layout: set where a document's next sequence starts
//                        (Document::segments: a pair's rejected sequence); never on a document's
//                        first token; a document without any has no segments
//   …       summary_bytes UTF-8 JSON {"documents", "tokens", "target_tokens"}
// File size is therefore exactly 48 + 8·(n_docs+1) + 4·n_tokens + 2·⌈n_tokens/8⌉ + summary_bytes;
// a reader checks magic, version, that size, the checksum and the offsets before using anything.
// Version 1 (before segments) is the same without the sequence bits; it is still read, every
// document as one sequence.
//
// A shard is written as "<name>.tmp.<pid>" and renamed to its name only once complete and
// flushed, so an interrupted run leaves a .tmp file, never a shard that looks complete.
// prepared.json (same tmp + rename, written last; removed first when a folder is re-prepared) is
// {"format": "loom-prepared", "version": 2, "shards": [{"file", "documents", "tokens", "bytes",
// "checksum"}], ...caller's fields: identity, source, tokenizer and template (data/tokenizer_record.h),
// counts}. Readers load only the shards it
// lists and check each against its entry, so leftovers of other runs are never picked up.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/batch.h"

namespace loom {

constexpr uint64_t kShardVersion = 2;        // what this build writes (shards and prepared.json)
constexpr uint64_t kOldestShardVersion = 1;  // the oldest it reads
constexpr const char* kManifestName = "prepared.json";
// 64 Mi tokens: a 256 MiB ids block per shard.
constexpr int64_t kDefaultShardTokens = int64_t(1) << 26;

// FNV-1a-64 (offset basis 14695981039346656037, prime 1099511628211), continuing from `h`.
uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 14695981039346656037ull);
std::string hex64(uint64_t v);
// FNV-1a-64 of a file's bytes, continuing from `h`; `what` names the file in errors (a FIFO or
// a device is refused, not read forever).
uint64_t fnv1a64_file(const std::string& path, const std::string& what, uint64_t h = 14695981039346656037ull);

struct ShardInfo {
  std::string file;  // name inside the folder
  int64_t documents = 0;
  int64_t tokens = 0;
  int64_t bytes = 0;
  uint64_t checksum = 0;
};

// Writes docs[begin, end) as one shard at `path` (tmp + rename). A document's segments must be
// empty or two or more lengths >= 1 summing to its length (the error names the document).
ShardInfo write_shard(const std::string& path, const std::vector<Document>& docs, size_t begin, size_t end);
// Reads and verifies a shard; errors name the file, what is wrong and to re-run build/prepare.
std::vector<Document> read_shard(const std::string& path, uint64_t* checksum = nullptr);

// Replaces any preparation in `dir` (created if missing) with docs, split into shards of about
// shard_tokens tokens (whole documents); manifest_fields is a JSON object whose keys are added
// to prepared.json. Returns the shards written.
std::vector<ShardInfo> write_prepared(const std::string& dir, const std::vector<Document>& docs,
                                      const std::string& manifest_fields, int64_t shard_tokens = kDefaultShardTokens);

// prepared.json of `dir` as text; "" when the folder has none (a FIFO or folder there is an error).
std::string read_manifest(const std::string& dir);

// Every document of a prepared folder, shard after shard, verified against prepared.json.
std::vector<Document> load_prepared(const std::string& dir);

}  // namespace loom
