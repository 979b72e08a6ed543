// The byte tokenizer: id = byte value, 256 = EOT. Tiny vocabulary for tests and toy models.
#include <stdexcept>

#include "data/tokenizer.h"

namespace data {

namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "byte"; }
  int vocab_size() const override { return 257; }
  int eot() const override { return 256; }

  void encode(std::string_view text, std::vector<uint32_t>& out) const override {
    const auto* p = reinterpret_cast<const uint8_t*>(text.data());
    out.insert(out.end(), p, p + text.size());  // grows geometrically across many small calls
  }

  std::string decode(const uint32_t* ids, size_t n) const override {
    std::string s;
    s.reserve(n);
    for (size_t i = 0; i < n; i++) {
      if (ids[i] < 256) {
        s += char(ids[i]);
      } else if (ids[i] == 256) {
        s += "<|endoftext|>";
      } else {
        throw std::runtime_error("byte tokenizer: id " + std::to_string(ids[i]) + " is not below 257");
      }
    }
    return s;
  }
};

}  // namespace

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

}  // namespace data
