#pragma once
// The checkpoint room's neutral tensor type and the safetensors format
// (https://huggingface.co/docs/safetensors): 8-byte little-endian header length N, N bytes of
// JSON {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {str: str}} padded with
// spaces to a multiple of 8, then the tensors' bytes, contiguous, no holes. Tensors are fp32 in
// memory; the file stores F32 or BF16 (round to nearest even), and F32, BF16 and F16 are read.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ckpt {

struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;  // row-major, product(shape) values
};

enum class DType { F32, BF16 };

struct SafetensorsFile {
  std::vector<NamedTensor> tensors;  // in data-offset order
  std::map<std::string, std::string> metadata;
  const NamedTensor* find(const std::string& name) const;
  const NamedTensor& at(const std::string& name) const;  // throws naming the tensor
};

// The whole file as bytes (tensors in the given order). Names must be unique.
std::string safetensors_bytes(const std::vector<NamedTensor>& tensors, DType dtype,
                              const std::map<std::string, std::string>& metadata = {});
// Parses and validates `bytes`; errors name `origin` and what was expected.
SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& origin);
SafetensorsFile read_safetensors(const std::string& path);

// fp32 -> bf16 with round-to-nearest-even (NaN stays NaN), and back (exact): kernels/bf16.h's.
uint16_t fp32_to_bf16(float x);
float bf16_to_fp32(uint16_t h);

}  // namespace ckpt
