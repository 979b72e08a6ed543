#pragma once
// Tokenizers: GPT-2 byte-level BPE (50257 ids, EOT 50256) and a byte tokenizer for tiny tests
// (256 byte ids, EOT 256, 257 ids). Both encode "ordinarily": the literal text <|endoftext|>
// inside a document is ordinary text; only document boundaries (added by the caller) are EOT.
// And mqar, the ids of synthetic associative recall (data/mqar.h) written as numbers: "17 130 0"
// is ids 17, 130, 0 of its V; id 0 (the filler) stands in for EOT.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string name() const = 0;     // "gpt2" | "byte" | "mqar"
  virtual int vocab_size() const = 0;       // number of ids, EOT included
  virtual int eot() const = 0;              // the document-boundary id
  // Appends the ids of `text` to `out`; thread-safe (const).
  virtual void encode(std::string_view text, std::vector<uint32_t>& out) const = 0;
  // Bytes of the ids, concatenated (EOT decodes to "<|endoftext|>"); throws on an id >= vocab_size.
  virtual std::string decode(const uint32_t* ids, size_t n) const = 0;

  std::vector<uint32_t> encode(std::string_view text) const {
    std::vector<uint32_t> out;
    encode(text, out);
    return out;
  }
  std::string decode(const std::vector<uint32_t>& ids) const { return decode(ids.data(), ids.size()); }
};

// "gpt2", "byte" or "mqar" (of vocab_size ids: the model's; unused by the others); throws
// std::runtime_error naming the accepted names otherwise.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name, int vocab_size = 0);

}  // namespace data
