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
};

class TensorTable {
 public:
  // Appends a tensor; offsets are 16-float aligned so every view starts on a 64-byte boundary.
  const TensorView& add(const std::string& name, std::vector<int> shape, bool decay) {
    size_t n = 1;
    for (int d : shape) n *= size_t(d);
    TensorView v{name, std::move(shape), total_, n, decay};
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
