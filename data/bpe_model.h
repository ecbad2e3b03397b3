// The BPE model of a tokenizer.json ("model": {"type": "BPE", ...}), as HF tokenizers'
// models/bpe/{model,word}.rs:
//   1. a piece starts as one symbol per character (byte-level: per byte, through the GPT-2 byte
//      map). A character missing from the vocab becomes its UTF-8 bytes as <0xNN> tokens when
//      byte_fallback is set, else unk_token (runs fused when fuse_unk), else it is dropped.
//   2. repeatedly merge the adjacent pair with the lowest merge rank, leftmost first on ties.
//   ignore_merges: a piece that is itself a vocab entry is emitted as that token directly.
// Pieces shorter than 256 bytes are cached per thread, as HF does. Sentencepiece-style vocabs
// (no pre-tokenizer: a piece is a whole text segment) are first cut before every "▁" that follows
// another character, which gives the same tokens when no vocab entry has "▁" after another
// character (checked at load), and makes the parts short enough to cache.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace loom {

// GPT-2 byte map: bytes 0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF map to the same code point, the other
// 68 bytes in increasing order to U+0100, U+0101, ... (0x20 -> U+0120 'Ġ', 0x0A -> U+010A 'Ċ').
uint32_t byte_level_char(uint8_t byte);
// Inverse of byte_level_char: the byte, or -1 for a code point outside the map.
int byte_level_byte(uint32_t cp);

struct BpeOptions {
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class BpeModel {
 public:
  // vocab: token (in the model's alphabet, e.g. "Ġworld") and id; merges in rank order.
  // byte_level: pieces arrive as raw bytes (a ByteLevel pre-tokenizer ends the pipeline).
  // `where` names the file for errors (merge of unknown tokens, missing byte characters, two tokens
  // with one id).
  BpeModel(const std::vector<std::pair<std::string, int32_t>>& vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options, bool byte_level,
           const std::string& where);

  // Appends the tokens of one piece, and where each starts (byte offset in `piece`).
  void tokenize(std::string_view piece, std::vector<int32_t>& ids, std::vector<uint32_t>& starts) const;

  int32_t token_to_id(std::string_view token) const;  // -1 when absent
  const std::string* id_to_token(int32_t id) const;   // nullptr when no token has this id
  int32_t max_id() const { return int32_t(id_to_token_.size()) - 1; }
  bool byte_level() const { return byte_level_; }

 private:
  struct Symbol {
    int32_t id;
    uint32_t len;  // bytes of the piece this symbol covers
  };
  struct MergeSlot {
    uint64_t pair = kEmpty;  // left id << 32 | right id
    int32_t rank = 0;
    int32_t new_id = 0;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);

  void index_vocab(const std::vector<std::pair<std::string, int32_t>>& vocab, const std::string& where);
  void index_characters(const std::string& where);
  void index_merges(const std::vector<std::pair<std::string, std::string>>& merges, const std::string& where);
  void tokenize_word(std::string_view word, uint32_t offset, std::vector<int32_t>& ids,
                     std::vector<uint32_t>& starts) const;
  void add_merge(int32_t left, int32_t right, int32_t rank, int32_t new_id);
  const MergeSlot* find_merge(int32_t left, int32_t right) const;
  void initial_symbols(std::string_view piece, std::vector<Symbol>& out) const;
  void merge_all(std::vector<Symbol>& symbols) const;
  void emit(const std::vector<Symbol>& symbols, uint32_t offset, std::vector<int32_t>& ids,
            std::vector<uint32_t>& starts) const;
  std::unordered_map<std::string, std::vector<Symbol>>& cache() const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  std::vector<MergeSlot> merges_;  // open addressing, size a power of two
  uint64_t merge_mask_ = 0;
  BpeOptions options_;
  int32_t unk_id_ = -1;
  bool byte_level_;
  int32_t byte_ids_[256];                                 // byte-level: id of each byte's character
  int32_t fallback_ids_[256];                             // byte_fallback: id of "<0xNN>", -1 if absent
  std::unordered_map<uint32_t, int32_t> char_ids_;        // single-character tokens by code point
  std::unordered_map<std::string, int32_t> whole_piece_;  // ignore_merges, byte-level: raw bytes -> id
  bool cut_before_metaspace_ = false;                     // see the header comment
  uint64_t instance_;                                     // tells this model's per-thread cache from others'
};

}  // namespace loom
