#pragma once
// SHA-256 (FIPS 180-4) for the manifest's shard checksums: small, streaming, no dependency.
#include <cstddef>
#include <cstdint>
#include <string>

namespace data {

class Sha256 {
 public:
  Sha256();
  void update(const void* bytes, size_t n);
  std::string hex();  // finishes the digest: 64 lowercase hex digits; call once

 private:
  void block(const uint8_t* p);  // one 64-byte block into state_
  uint32_t state_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;  // bytes
};

std::string sha256_hex(const std::string& bytes);
// Throws std::runtime_error naming the file when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace data
