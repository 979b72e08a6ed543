#pragma once
// Named views over one allocation: parameters, their gradients and the optimizer moments share
// one layout, so a single index (name -> offset, shape) serves them all.
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

struct TensorView {
  std::string name;
  std::vector<int> shape;
  size_t offset = 0;  // in floats, from the start of the allocation
  size_t size = 0;    // number of floats
  bool decay = false; // AdamW weight decay applies (matrices and embeddings; not biases, norms)
  // Tensor parallel (trainer/parallel/tensor_parallel.h): shard_dim -1, the tensor is whole here
  // (replicated on every tensor rank). Otherwise this is rank shard_rank's part of a tensor whose
  // dimension shard_dim is shard_count times longer: that dimension is made of shard_blocks equal
  // blocks (3 for the q|k|v rows of attn.qkv, else 1) and this rank holds part shard_rank of each
  // block, the parts in block order. `shape` is the shard's.
  int shard_dim = -1;
  int shard_count = 1;
  int shard_rank = 0;
  int shard_blocks = 1;
  // muP: AdamW divides this tensor's learning rate by mup_ratio and multiplies its weight decay by
  // it (their product, the decay per step, stays the group's); 1: not scaled.
  float mup_ratio = 1.0f;
};

class TensorTable {
 public:
  // Appends a tensor; offsets are 16-float aligned so every view starts on a 64-byte boundary.
  // shard_*, mup_ratio: see TensorView (the shape passed is the shard's).
  const TensorView& add(const std::string& name, std::vector<int> shape, bool decay, int shard_dim = -1,
                        int shard_count = 1, int shard_rank = 0, int shard_blocks = 1, float mup_ratio = 1.0f) {
    size_t n = 1;
    for (int d : shape) n *= size_t(d);
    TensorView v{name, std::move(shape), total_, n, decay, shard_dim, shard_count, shard_rank, shard_blocks, mup_ratio};
    total_ += (n + 15) / 16 * 16;
    views_.push_back(v);
    return views_.back();
  }
  const TensorView& at(const std::string& name) const {
    for (const auto& v : views_)
      if (v.name == name) return v;
    throw std::runtime_error("no tensor named " + name);
  }
  const std::vector<TensorView>& views() const { return views_; }
  size_t total() const { return total_; }  // floats, padding included

 private:
  std::vector<TensorView> views_;
  size_t total_ = 0;
};
