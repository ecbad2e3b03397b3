#include "data/bpe_model.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>

#include "data/utf8.h"
#include "ops/error.h"

namespace loom {

namespace {

struct ByteMap {
  uint32_t to_char[256];
  int16_t to_byte[324];  // code points 0..323 cover the whole image of the map

  ByteMap() {
    std::fill(std::begin(to_byte), std::end(to_byte), int16_t(-1));
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_char[b] = printable ? uint32_t(b) : next++;
      to_byte[to_char[b]] = int16_t(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// A pending merge; the heap pops the lowest rank, then the leftmost position.
struct Candidate {
  int32_t rank;
  int32_t pos;
  int32_t new_id;
  bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

// Symbols of a word being merged: a doubly linked list over a vector (HF word.rs).
struct Node {
  int32_t id;
  int32_t prev, next;
  uint32_t len;  // 0 once merged into its left neighbour
};

// Word cache: pieces under 256 bytes (HF's MAX_LENGTH); emptied when it reaches 65536 words so a
// long run follows the text's vocabulary (HF stops adding at 10000 instead).
constexpr size_t kCacheMaxPieceBytes = 256;
constexpr size_t kCacheMaxWords = 1 << 16;
std::atomic<uint64_t> g_next_instance{1};

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581 '▁'

// True when some token has "▁" right after another character: a merge could then join a word to
// the "▁" that starts the next one, and pieces must stay whole.
bool joins_before_metaspace(const std::unordered_map<std::string, int32_t>& vocab) {
  for (const auto& [token, id] : vocab) {
    for (size_t at = token.find(kMetaspace, 1); at != std::string::npos; at = token.find(kMetaspace, at + 1)) {
      bool after_metaspace =
          at >= kMetaspace.size() && token.compare(at - kMetaspace.size(), kMetaspace.size(), kMetaspace) == 0;
      if (!after_metaspace) return true;
    }
  }
  return false;
}

// Hash of a merge pair key (murmur3's 64-bit finalizer).
uint64_t mix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  return k;
}

}  // namespace

uint32_t byte_level_char(uint8_t byte) { return byte_map().to_char[byte]; }

int byte_level_byte(uint32_t cp) { return cp < 324 ? byte_map().to_byte[cp] : -1; }

BpeModel::BpeModel(const std::vector<std::pair<std::string, int32_t>>& vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options, bool byte_level,
                   const std::string& where)
    : options_(std::move(options)), byte_level_(byte_level), instance_(g_next_instance++) {
  index_vocab(vocab, where);
  index_characters(where);
  index_merges(merges, where);
  // ignore_merges looks the whole piece up, so pieces must then stay whole.
  cut_before_metaspace_ = !byte_level_ && !options_.ignore_merges && vocab_.count(std::string(kMetaspace)) &&
                          !joins_before_metaspace(vocab_);
}

void BpeModel::index_vocab(const std::vector<std::pair<std::string, int32_t>>& vocab, const std::string& where) {
  int32_t max_id = -1;
  vocab_.reserve(vocab.size());
  for (const auto& [token, id] : vocab) {
    LOOM_CHECK(id >= 0, where, ": vocab entry \"", token, "\" has negative id ", id);
    vocab_[token] = id;
    max_id = std::max(max_id, id);
  }
  id_to_token_.resize(size_t(max_id + 1));
  has_id_.resize(size_t(max_id + 1));
  for (const auto& [token, id] : vocab_) {
    // Two tokens with one id: decode could not tell them apart.
    LOOM_CHECK(!has_id_[size_t(id)], where, ": model.vocab gives id ", id, " to both \"", id_to_token_[size_t(id)],
               "\" and \"", token, "\"; every token needs its own id");
    id_to_token_[size_t(id)] = token;
    has_id_[size_t(id)] = true;
  }
  if (options_.unk_token) {
    unk_id_ = token_to_id(*options_.unk_token);
    LOOM_CHECK(unk_id_ >= 0, where, ": model.unk_token \"", *options_.unk_token, "\" is not in model.vocab");
  }
}

// The ids a piece's first symbols come from: single characters, <0xNN> fallbacks, and for
// byte-level models each byte's character and (ignore_merges) every token as raw bytes.
void BpeModel::index_characters(const std::string& where) {
  for (int b = 0; b < 256; ++b) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "<0x%02X>", b);
    fallback_ids_[b] = token_to_id(hex);
  }
  for (const auto& [token, id] : vocab_) {
    size_t i = 0;
    if (token.empty()) continue;
    uint32_t cp = utf8::next(token, i);
    if (i == token.size()) char_ids_[cp] = id;
  }
  if (!byte_level_) return;
  for (int b = 0; b < 256; ++b) {
    std::string c;
    utf8::append(c, byte_level_char(uint8_t(b)));
    byte_ids_[b] = token_to_id(c);
    LOOM_CHECK(byte_ids_[b] >= 0, where, ": byte-level BPE vocab lacks \"", c, "\", the character of byte ", b,
               "; every byte needs its token");
  }
  if (!options_.ignore_merges) return;
  for (const auto& [token, id] : vocab_) {
    std::string raw;
    size_t i = 0;
    bool mapped = true;
    while (i < token.size() && mapped) {
      int b = byte_level_byte(utf8::next(token, i));
      mapped = b >= 0;
      raw += char(b);
    }
    if (mapped) whole_piece_[raw] = id;
  }
}

void BpeModel::index_merges(const std::vector<std::pair<std::string, std::string>>& merges, const std::string& where) {
  size_t slots = 16;
  while (slots < 2 * merges.size()) slots *= 2;  // load factor <= 1/2
  merges_.assign(slots, MergeSlot{});
  merge_mask_ = slots - 1;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    int32_t l = token_to_id(left), r = token_to_id(right), m = token_to_id(left + right);
    LOOM_CHECK(l >= 0 && r >= 0 && m >= 0, where, ": merge ", rank, " (\"", left, "\" + \"", right, "\"): token \"",
               l < 0   ? left
               : r < 0 ? right
                       : left + right,
               "\" is not in model.vocab");
    add_merge(l, r, int32_t(rank), m);
  }
}

void BpeModel::add_merge(int32_t left, int32_t right, int32_t rank, int32_t new_id) {
  uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  for (uint64_t h = mix(key) & merge_mask_;; h = (h + 1) & merge_mask_) {
    MergeSlot& s = merges_[h];
    if (s.pair == kEmpty || s.pair == key) {  // a repeated pair keeps its last rank, as HF's map
      s = {key, rank, new_id};
      return;
    }
  }
}

const BpeModel::MergeSlot* BpeModel::find_merge(int32_t left, int32_t right) const {
  uint64_t key = (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
  for (uint64_t h = mix(key) & merge_mask_;; h = (h + 1) & merge_mask_) {
    const MergeSlot& s = merges_[h];
    if (s.pair == key) return &s;
    if (s.pair == kEmpty) return nullptr;
  }
}

int32_t BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || size_t(id) >= has_id_.size() || !has_id_[size_t(id)]) return nullptr;
  return &id_to_token_[size_t(id)];
}

void BpeModel::initial_symbols(std::string_view piece, std::vector<Symbol>& out) const {
  if (byte_level_) {
    for (char c : piece) out.push_back({byte_ids_[uint8_t(c)], 1});
    return;
  }
  std::optional<Symbol> unk;  // pending unknown run (fuse_unk grows it)
  size_t i = 0;
  while (i < piece.size()) {
    size_t start = i;
    uint32_t cp = utf8::next(piece, i);
    uint32_t len = uint32_t(i - start);
    auto known = char_ids_.find(cp);
    if (known != char_ids_.end()) {
      if (unk) out.push_back(*unk);
      unk.reset();
      out.push_back({known->second, len});
      continue;
    }
    if (options_.byte_fallback &&
        std::all_of(piece.begin() + start, piece.begin() + i, [&](char b) { return fallback_ids_[uint8_t(b)] >= 0; })) {
      // HF leaves a pending unk pending here, so it lands after these bytes.
      for (size_t b = start; b < i; ++b) out.push_back({fallback_ids_[uint8_t(piece[b])], 1});
      continue;
    }
    if (unk_id_ < 0) continue;  // no unk token: the character is dropped
    if (unk && options_.fuse_unk) {
      unk->len += len;
    } else {
      if (unk) out.push_back(*unk);
      unk = Symbol{unk_id_, len};
    }
  }
  if (unk) out.push_back(*unk);
}

void BpeModel::merge_all(std::vector<Symbol>& symbols) const {
  thread_local std::vector<Node> nodes;
  thread_local std::vector<Candidate> heap;
  int32_t n = int32_t(symbols.size());
  nodes.resize(size_t(n));
  heap.clear();
  for (int32_t i = 0; i < n; ++i) nodes[i] = {symbols[i].id, i - 1, i + 1 < n ? i + 1 : -1, symbols[i].len};
  auto push = [&](int32_t pos) {
    const MergeSlot* m = find_merge(nodes[pos].id, nodes[nodes[pos].next].id);
    if (!m) return;
    heap.push_back({m->rank, pos, m->new_id});
    std::push_heap(heap.begin(), heap.end());
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    Candidate top = heap.back();
    heap.pop_back();
    Node& left = nodes[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    Node& right = nodes[left.next];
    // A stale entry: the pair at this position changed since it was queued.
    const MergeSlot* m = find_merge(left.id, right.id);
    if (!m || m->new_id != top.new_id) continue;
    left.id = top.new_id;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (left.next >= 0) nodes[left.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    if (left.next >= 0) push(top.pos);
  }
  symbols.clear();
  for (int32_t i = 0; i < n; ++i)
    if (nodes[i].len) symbols.push_back({nodes[i].id, nodes[i].len});
}

void BpeModel::emit(const std::vector<Symbol>& symbols, uint32_t offset, std::vector<int32_t>& ids,
                    std::vector<uint32_t>& starts) const {
  uint32_t at = offset;
  for (const Symbol& s : symbols) {
    ids.push_back(s.id);
    starts.push_back(at);
    at += s.len;
  }
}

std::unordered_map<std::string, std::vector<BpeModel::Symbol>>& BpeModel::cache() const {
  struct Slot {
    uint64_t owner = 0;
    std::unordered_map<std::string, std::vector<Symbol>> words;
  };
  // A few models per thread (tests hold several); the oldest slot is reused.
  thread_local std::array<Slot, 4> slots;
  thread_local size_t next_victim = 0;
  for (Slot& s : slots)
    if (s.owner == instance_) return s.words;
  Slot& s = slots[next_victim++ % slots.size()];
  s.owner = instance_;
  s.words.clear();
  return s.words;
}

void BpeModel::tokenize(std::string_view piece, std::vector<int32_t>& ids, std::vector<uint32_t>& starts) const {
  if (!cut_before_metaspace_) {
    tokenize_word(piece, 0, ids, starts);
    return;
  }
  size_t word = 0;
  for (size_t at = piece.find(kMetaspace, 1); at != std::string_view::npos; at = piece.find(kMetaspace, at + 1)) {
    bool after_metaspace =
        at >= word + kMetaspace.size() && piece.substr(at - kMetaspace.size(), kMetaspace.size()) == kMetaspace;
    if (after_metaspace) continue;
    tokenize_word(piece.substr(word, at - word), uint32_t(word), ids, starts);
    word = at;
  }
  tokenize_word(piece.substr(word), uint32_t(word), ids, starts);
}

void BpeModel::tokenize_word(std::string_view piece, uint32_t offset, std::vector<int32_t>& ids,
                             std::vector<uint32_t>& starts) const {
  if (piece.empty()) return;
  thread_local std::string key;
  thread_local std::vector<Symbol> symbols;
  key.assign(piece);
  if (options_.ignore_merges) {
    const auto& whole = byte_level_ ? whole_piece_ : vocab_;
    auto it = whole.find(key);
    if (it != whole.end()) {
      ids.push_back(it->second);
      starts.push_back(offset);
      return;
    }
  }
  bool cacheable = piece.size() < kCacheMaxPieceBytes;
  if (cacheable) {
    auto& words = cache();
    auto hit = words.find(key);
    if (hit != words.end()) {
      emit(hit->second, offset, ids, starts);
      return;
    }
  }
  symbols.clear();
  initial_symbols(piece, symbols);
  merge_all(symbols);
  emit(symbols, offset, ids, starts);
  if (cacheable) {
    auto& words = cache();
    if (words.size() >= kCacheMaxWords) words.clear();
    words.emplace(key, symbols);
  }
}

}  // namespace loom
