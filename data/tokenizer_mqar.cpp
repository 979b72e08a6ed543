// The mqar tokenizer: the ids of synthetic associative recall (data/mqar.h) as decimal numbers,
// so that a sample or a prompt of such a model reads as its sequence. Encoding parses numbers
// separated by whitespace; decoding writes each id as " <id>", so that decoding ids one by one
// (generate's stream) gives the same text as decoding them together.
#include <stdexcept>

#include "data/tokenizer.h"

namespace data {

namespace {

class MqarTokenizer final : public Tokenizer {
 public:
  explicit MqarTokenizer(int vocab_size) : vocab_size_(vocab_size) {}
  std::string name() const override { return "mqar"; }
  int vocab_size() const override { return vocab_size_; }
  int eot() const override { return 0; }  // the filler: synthetic examples have no document boundary token

  void encode(std::string_view text, std::vector<uint32_t>& out) const override {
    size_t i = 0;
    for (;;) {
      while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) i++;
      if (i == text.size()) return;
      uint64_t id = 0;
      const size_t start = i;
      while (i < text.size() && text[i] >= '0' && text[i] <= '9' && id < uint64_t(vocab_size_)) id = id * 10 + uint64_t(text[i++] - '0');
      if (i == start || id >= uint64_t(vocab_size_) || (i < text.size() && text[i] > ' '))
        throw std::runtime_error("mqar tokenizer: expected ids below " + std::to_string(vocab_size_) +
                                 " separated by spaces, got '" + std::string(text.substr(start, 20)) + "'");
      out.push_back(uint32_t(id));
    }
  }

  std::string decode(const uint32_t* ids, size_t n) const override {
    std::string s;
    for (size_t i = 0; i < n; i++) {
      if (ids[i] >= uint32_t(vocab_size_))
        throw std::runtime_error("mqar tokenizer: id " + std::to_string(ids[i]) + " is not below " +
                                 std::to_string(vocab_size_));
      s += ' ';
      s += std::to_string(ids[i]);
    }
    return s;
  }

 private:
  int vocab_size_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_mqar_tokenizer(int vocab_size) {
  if (vocab_size < 4 || vocab_size % 2 != 0 || vocab_size > 65536)
    throw std::runtime_error("tokenizer: mqar needs the even vocabulary size of its data in [4, 65536] "
                             "(model.vocab_size), got " + std::to_string(vocab_size));
  return std::make_unique<MqarTokenizer>(vocab_size);
}

}  // namespace data
