#pragma once
// AdamW over a model's parameter table (decoupled weight decay on the views marked `decay`),
// global gradient-norm clipping, and the learning-rate schedule.
#include "trainer/aligned_buffer.h"
#include "trainer/config.h"
#include "trainer/tensor_table.h"

class AdamW {
 public:
  AdamW(const TensorTable& table, const config::TrainConfig& cfg);
  // One update with learning rate `lr`; gradients are multiplied by `grad_scale` (clipping).
  void step(float* params, const float* grads, float lr, float grad_scale);
  int t() const { return t_; }
  float* m() { return m_.data(); }
  float* v() { return v_.data(); }

 private:
  const TensorTable& table_;
  float beta1_, beta2_, eps_, weight_decay_;
  AlignedBuffer m_, v_;  // first and second moments, in the parameters' layout
  int t_ = 0;
};

// The L2 norm of all gradients, and the factor that clips it to `max_norm` (PyTorch's
// clip_grad_norm_: max_norm / (norm + 1e-6), at most 1; 1 when max_norm is 0).
float grad_norm(const float* grads, size_t n);
float clip_scale(float norm, float max_norm);

// Learning rate at 0-based `step`: linear warm-up (lr * (step+1) / warmup_steps), then cosine,
// linear or constant decay to min_lr at train.steps.
float lr_at(const config::TrainConfig& cfg, int step);
