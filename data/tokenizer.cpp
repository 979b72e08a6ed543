#include <stdexcept>

#include "data/tokenizer.h"

namespace data {

// Defined next to their classes (tokenizer_gpt2.cpp, tokenizer_byte.cpp), which stay private.
std::unique_ptr<Tokenizer> make_gpt2_tokenizer();
std::unique_ptr<Tokenizer> make_byte_tokenizer();
std::unique_ptr<Tokenizer> make_mqar_tokenizer(int vocab_size);

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name, int vocab_size) {
  if (name == "gpt2") return make_gpt2_tokenizer();
  if (name == "byte") return make_byte_tokenizer();
  if (name == "mqar") return make_mqar_tokenizer(vocab_size);
  throw std::runtime_error("tokenizer: unknown name '" + name + "', expected gpt2, byte or mqar");
}

}  // namespace data
