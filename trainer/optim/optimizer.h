#pragma once
// AdamW over a model's parameter table (decoupled weight decay on the views marked `decay`, each
// view's lr and decay scaled by its muP ratio), global gradient-norm clipping, and the learning-rate
// schedule.
#include <cstdint>

#include "kernels/backend.h"
#include "trainer/config/config.h"
#include "common/tensor_table.h"

class AdamW {
 public:
  // Updates the floats [begin, end) of the parameter allocation (all of it by default; ZeRO-1
  // gives each data-parallel rank its own range) and holds moments for that range only, in the
  // memory of `be`, whose adamw_update runs the step.
  AdamW(const TensorTable& table, const config::TrainConfig& cfg, size_t begin = 0, size_t end = SIZE_MAX,
        const Backend& be = cpu_backend());
  // One update with learning rate `lr`; gradients are multiplied by `grad_scale` (clipping).
  // A view takes lr / mup_ratio and, if it decays, weight decay wd * mup_ratio, where wd is
  // train.weight_decay, times lr / train.lr under train.weight_decay_schedule lr.
  // params and grads (table.total()) are in the backend's memory.
  void step(float* params, const float* grads, float lr, float grad_scale);
  int t() const { return t_; }
  size_t begin() const { return begin_; }
  size_t end() const { return end_; }
  // Checkpoints restore the step count (bias correction) with the moments, in the parameters'
  // layout from begin() (m()[i] belongs to parameter float begin() + i), in the backend's memory.
  void set_t(int t) { t_ = t; }
  float* m() { return m_.data(); }
  float* v() { return v_.data(); }
  const float* m() const { return m_.data(); }
  const float* v() const { return v_.data(); }

 private:
  const TensorTable& table_;
  const Backend& be_;
  float beta1_, beta2_, eps_, weight_decay_;
  double peak_lr_;  // train.lr
  config::WeightDecaySchedule decay_schedule_;
  size_t begin_, end_;
  DeviceBuffer m_, v_;  // first and second moments of floats [begin_, end_)
  int t_ = 0;
};

// The factor that clips a gradient norm to `max_norm` (PyTorch's clip_grad_norm_:
// max_norm / (norm + 1e-6), at most 1; 1 when max_norm is 0).
float clip_scale(float norm, float max_norm);

// Learning rate at 0-based `step`: linear warm-up (lr * (step+1) / warmup_steps), then cosine,
// linear or constant decay to min_lr at train.steps.
float lr_at(const config::TrainConfig& cfg, int step);
