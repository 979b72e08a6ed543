// GPT-2 byte-level BPE, id for id what tiktoken's get_encoding("gpt2").encode_ordinary gives:
//  1. split the text as the GPT-2 regex does (piece_end, written by hand),
//  2. a piece that is itself a token is that token (tiktoken's shortcut, so it must stay),
//  3. otherwise merge adjacent parts lowest rank first, leftmost on ties, where a pair's rank
//     is the id of its concatenation when that is a token. tiktoken's gpt2 ranks are the
//     encoder.json ids, so vocab.bpe's merge list is implied (the tests check it agrees); note
//     that any split of a token merges, listed in vocab.bpe or not, as in tiktoken.
// Bytes that are not UTF-8 (outside tiktoken's domain, which is str) split like punctuation,
// one byte a character, so any bytes round-trip.
#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <stdexcept>

#include "data/gpt2/unicode_classes.h"
#include "common/json.h"
#include "data/tokenizer.h"

// encoder.json is compiled in so that kvmtrain runs from any directory. The build does not see
// this dependency: touch this file after replacing data/gpt2/encoder.json.
__asm__(
    ".pushsection .rodata\n"
    ".global kvm_gpt2_encoder_json\n"
    ".hidden kvm_gpt2_encoder_json\n"
    "kvm_gpt2_encoder_json:\n"
    ".incbin \"" KVMTRAIN_SOURCE_DIR "/data/gpt2/encoder.json\"\n"
    ".global kvm_gpt2_encoder_json_end\n"
    ".hidden kvm_gpt2_encoder_json_end\n"
    "kvm_gpt2_encoder_json_end:\n"
    ".popsection\n");
extern "C" const char kvm_gpt2_encoder_json[];
extern "C" const char kvm_gpt2_encoder_json_end[];

namespace data {
namespace {

constexpr uint32_t kNone = UINT32_MAX;
constexpr uint32_t kVocab = 50257;
constexpr uint32_t kEot = 50256;

uint64_t mix(uint64_t h) {
  h ^= h >> 32;
  h *= 0xD6E8FEB86659FD93ull;
  h ^= h >> 32;
  return h;
}

uint64_t hash_bytes(const uint8_t* p, size_t n) {
  uint64_t h = n * 0x9E3779B97F4A7C15ull;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = mix(h ^ w);
  }
  uint64_t w = 0;
  std::memcpy(&w, p, n);
  return mix(h ^ w);
}

// ---- pre-tokenization: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+

// Character classes; letter and number numbered as in unicode_classes.h.
constexpr uint8_t kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3;

constexpr std::array<uint8_t, 128> kAsciiCls = [] {
  std::array<uint8_t, 128> t{};
  for (int c = 0; c < 128; c++) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) t[c] = kLetter;
    else if (c >= '0' && c <= '9') t[c] = kNumber;
    else if (c == ' ' || (c >= '\t' && c <= '\r')) t[c] = kSpace;
    else t[c] = kOther;
  }
  return t;
}();

// \s is Unicode White_Space, as in the Rust regex tiktoken uses (JavaScript's \s differs:
// it adds U+FEFF and drops U+0085).
uint8_t class_of(uint32_t cp) {
  if (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
      cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000)
    return kSpace;
  const auto* end = std::end(gpt2::kUnicodeRanges);
  const auto* r = std::upper_bound(std::begin(gpt2::kUnicodeRanges), end, cp,
                                   [](uint32_t c, const gpt2::UnicodeRange& u) { return c < u.first; });
  if (r == std::begin(gpt2::kUnicodeRanges)) return kOther;
  --r;
  return cp <= r->last ? r->cls : kOther;
}

struct Char {
  uint8_t cls, len;
};

// The character at p (< end); a byte that does not start valid UTF-8 is a 1-byte kOther.
inline Char next_char(const uint8_t* p, const uint8_t* end) {
  uint8_t b = p[0];
  if (b < 0x80) return {kAsciiCls[b], 1};
  int len;
  uint32_t cp;
  if (b >= 0xC2 && b <= 0xDF) len = 2, cp = b & 0x1F;
  else if (b >= 0xE0 && b <= 0xEF) len = 3, cp = b & 0x0F;
  else if (b >= 0xF0 && b <= 0xF4) len = 4, cp = b & 0x07;
  else return {kOther, 1};
  if (end - p < len) return {kOther, 1};
  for (int k = 1; k < len; k++) {
    if ((p[k] & 0xC0) != 0x80) return {kOther, 1};
    cp = cp << 6 | (p[k] & 0x3F);
  }
  bool overlong = (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
  if (overlong || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return {kOther, 1};
  return {class_of(cp), uint8_t(len)};
}

// End of the regex match that starts at s[i], i < n.
size_t piece_end(const uint8_t* s, size_t n, size_t i) {
  if (s[i] == '\'' && i + 1 < n) {
    uint8_t a = s[i + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 < n) {
      uint8_t b = s[i + 2];
      if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
  }
  size_t k = i + (s[i] == ' ' && i + 1 < n);  // the optional space of " ?\p{L}+" and co.
  Char c = next_char(s + k, s + n);
  if (c.cls != kSpace) {
    size_t j = k + c.len;
    while (j < n) {
      Char d = next_char(s + j, s + n);
      if (d.cls != c.cls) break;
      j += d.len;
    }
    return j;
  }
  size_t j = i, last = i;
  while (j < n) {
    Char d = next_char(s + j, s + n);
    if (d.cls != kSpace) break;
    last = j;
    j += d.len;
  }
  // \s+(?!\S) backs off one character before a non-space, leaving it to the next piece (" word");
  // a single space character before a non-space is matched by the final \s+.
  return (j < n && last > i) ? last : j;
}

// ---- the vocabulary, built once from the embedded encoder.json and shared by all instances

struct Vocab {
  std::string bytes;              // every token's bytes, concatenated
  std::vector<uint32_t> offset;   // token t is bytes[offset[t], offset[t + 1])
  std::array<uint32_t, 256> byte_id;
  std::vector<uint32_t> slots;    // open addressing, bytes -> token (EOT left out)
  std::vector<uint64_t> pair_key; // open addressing, (left << 32 | right) -> merged token
  std::vector<uint32_t> pair_val;

  uint32_t find(const uint8_t* p, size_t n) const {
    size_t mask = slots.size() - 1;
    for (size_t k = hash_bytes(p, n) & mask;; k = (k + 1) & mask) {
      uint32_t t = slots[k];
      if (t == kNone) return kNone;
      if (offset[t + 1] - offset[t] == n && std::memcmp(bytes.data() + offset[t], p, n) == 0) return t;
    }
  }

  uint32_t merge(uint32_t a, uint32_t b) const {
    uint64_t key = uint64_t(a) << 32 | b;
    size_t mask = pair_key.size() - 1;
    for (size_t k = mix(key) & mask;; k = (k + 1) & mask) {
      if (pair_key[k] == key) return pair_val[k];
      if (pair_key[k] == UINT64_MAX) return kNone;
    }
  }
};

// encoder.json spells each byte as a printable character: GPT-2's bytes_to_unicode keeps the
// printable Latin-1 bytes and shifts the other 68 to U+0100 onwards, in byte order.
std::array<int, 324> unicode_to_byte() {
  std::array<int, 324> inv;
  inv.fill(-1);
  int shifted = 0;
  for (int b = 0; b < 256; b++) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    inv[printable ? b : 256 + shifted++] = b;
  }
  return inv;
}

std::string token_bytes(const std::string& key, const std::array<int, 324>& inv) {
  std::string out;
  for (size_t i = 0; i < key.size();) {
    uint8_t b = key[i];
    uint32_t cp = inv.size();  // stays out of range for anything but 1- and 2-byte UTF-8
    if (b < 0x80) {
      cp = b;
      i += 1;
    } else if (b >= 0xC0 && b < 0xE0 && i + 1 < key.size()) {
      cp = (b & 0x1F) << 6 | (uint8_t(key[i + 1]) & 0x3F);
      i += 2;
    } else {
      i += 1;
    }
    if (cp >= inv.size() || inv[cp] < 0)
      throw std::runtime_error("gpt2 tokenizer: encoder.json key '" + key + "' is not byte-level text");
    out += char(inv[cp]);
  }
  return out;
}

Vocab load_vocab() {
  json::Value root = json::parse(std::string(kvm_gpt2_encoder_json, kvm_gpt2_encoder_json_end));
  const json::Object& obj = root.object();
  if (obj.size() != kVocab)
    throw std::runtime_error("gpt2 tokenizer: encoder.json has " + std::to_string(obj.size()) +
                             " tokens, expected 50257");
  std::array<int, 324> inv = unicode_to_byte();
  std::vector<std::string> tok(kVocab);
  std::vector<bool> seen(kVocab);
  for (const auto& [key, value] : obj) {
    int64_t id = value.integer();
    if (id < 0 || id >= kVocab || seen[id])
      throw std::runtime_error("gpt2 tokenizer: encoder.json id " + std::to_string(id) +
                               " is out of range or repeated, expected each of 0..50256 once");
    seen[id] = true;
    tok[id] = token_bytes(key, inv);
  }
  if (tok[kEot] != "<|endoftext|>")
    throw std::runtime_error("gpt2 tokenizer: encoder.json id 50256 is not <|endoftext|>");

  Vocab v;
  v.offset.push_back(0);
  for (const std::string& t : tok) {
    v.bytes += t;
    v.offset.push_back(uint32_t(v.bytes.size()));
  }
  v.byte_id.fill(kNone);
  v.slots.assign(1 << 17, kNone);
  for (uint32_t t = 0; t < kEot; t++) {
    const auto* p = reinterpret_cast<const uint8_t*>(tok[t].data());
    if (tok[t].size() == 1) v.byte_id[p[0]] = t;
    size_t mask = v.slots.size() - 1, k = hash_bytes(p, tok[t].size()) & mask;
    while (v.slots[k] != kNone) k = (k + 1) & mask;
    v.slots[k] = t;
  }
  if (std::count(v.byte_id.begin(), v.byte_id.end(), kNone) != 0)
    throw std::runtime_error("gpt2 tokenizer: encoder.json lacks a token for some byte");

  v.pair_key.assign(1 << 18, UINT64_MAX);
  v.pair_val.assign(1 << 18, kNone);
  size_t mask = v.pair_key.size() - 1, pairs = 0;
  for (uint32_t t = 256; t < kEot; t++) {
    const auto* p = reinterpret_cast<const uint8_t*>(tok[t].data());
    for (size_t cut = 1; cut < tok[t].size(); cut++) {
      uint32_t a = v.find(p, cut), b = v.find(p + cut, tok[t].size() - cut);
      if (a == kNone || b == kNone) continue;
      uint64_t key = uint64_t(a) << 32 | b;
      size_t k = mix(key) & mask;
      while (v.pair_key[k] != UINT64_MAX) k = (k + 1) & mask;
      v.pair_key[k] = key;
      v.pair_val[k] = t;
      if (++pairs > mask / 2) throw std::runtime_error("gpt2 tokenizer: merge table overfull");
    }
  }
  return v;
}

class Gpt2Tokenizer final : public Tokenizer {
 public:
  explicit Gpt2Tokenizer(const Vocab& v) : v_(v) {}
  std::string name() const override { return "gpt2"; }
  int vocab_size() const override { return kVocab; }
  int eot() const override { return kEot; }

  void encode(std::string_view text, std::vector<uint32_t>& out) const override {
    const auto* s = reinterpret_cast<const uint8_t*>(text.data());
    size_t n = text.size();
    for (size_t i = 0; i < n;) {
      size_t j = piece_end(s, n, i);
      uint32_t t = v_.find(s + i, j - i);
      if (t != kNone) out.push_back(t);
      else bpe(s + i, j - i, out);
      i = j;
    }
  }

  std::string decode(const uint32_t* ids, size_t n) const override {
    std::string s;
    s.reserve(n * 4);
    for (size_t i = 0; i < n; i++) {
      if (ids[i] >= kVocab)
        throw std::runtime_error("gpt2 tokenizer: id " + std::to_string(ids[i]) + " is not below 50257");
      s.append(v_.bytes, v_.offset[ids[i]], v_.offset[ids[i] + 1] - v_.offset[ids[i]]);
    }
    return s;
  }

 private:
  // tiktoken's merge order in O(n log n) rather than its O(n^2), so a long piece (a megabyte of
  // letters) cannot stall: a min-heap of (rank, start) over a linked list of parts, where an
  // entry made stale by a neighbour's merge no longer matches its pair and is skipped.
  void bpe(const uint8_t* p, size_t n, std::vector<uint32_t>& out) const {
    if (n >= kNone) throw std::runtime_error("gpt2 tokenizer: a pre-tokenization piece of 4 GiB or more, expected less");
    thread_local std::vector<uint32_t> id, next, prev;
    thread_local std::vector<uint64_t> heap;
    id.resize(n);
    next.resize(n);
    prev.resize(n);
    heap.clear();
    for (uint32_t i = 0; i < n; i++) {
      id[i] = v_.byte_id[p[i]];
      next[i] = i + 1;
      prev[i] = i - 1;  // kNone for the first
    }
    auto push = [&](uint32_t s) {
      uint32_t r = v_.merge(id[s], id[next[s]]);
      if (r == kNone) return;
      heap.push_back(uint64_t(r) << 32 | s);
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    };
    for (uint32_t s = 0; s + 1 < n; s++) push(s);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<>());
      uint32_t r = uint32_t(heap.back() >> 32), s = uint32_t(heap.back());
      heap.pop_back();
      if (id[s] == kNone || next[s] >= n || v_.merge(id[s], id[next[s]]) != r) continue;
      uint32_t t = next[s];
      id[s] = r;
      id[t] = kNone;
      next[s] = next[t];
      if (next[s] < n) prev[next[s]] = s;
      if (prev[s] != kNone) push(prev[s]);
      if (next[s] < n) push(s);
    }
    for (uint32_t s = 0; s < n; s = next[s]) out.push_back(id[s]);
  }

  const Vocab& v_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_gpt2_tokenizer() {
  static const Vocab vocab = load_vocab();
  return std::make_unique<Gpt2Tokenizer>(vocab);
}

}  // namespace data
