#include "trainer/optim/optimizer.h"

#include <algorithm>
#include <cmath>

#include "common/unreachable.h"

AdamW::AdamW(const TensorTable& table, const config::TrainConfig& cfg, size_t begin, size_t end, const Backend& be)
    : table_(table),
      be_(be),
      beta1_(float(cfg.beta1)),
      beta2_(float(cfg.beta2)),
      eps_(float(cfg.eps)),
      weight_decay_(float(cfg.weight_decay)),
      peak_lr_(cfg.lr),
      decay_schedule_(cfg.weight_decay_schedule),
      begin_(std::min(begin, table.total())),
      end_(std::min(end, table.total())),
      m_(be, end_ - begin_),
      v_(be, end_ - begin_) {}

void AdamW::step(float* params, const float* grads, float lr, float grad_scale) {
  t_++;
  const float wd = decay_schedule_ == config::WeightDecaySchedule::lr ? float(weight_decay_ * (lr / peak_lr_))
                                                                       : weight_decay_;
  for (const auto& view : table_.views()) {
    size_t lo = std::max(view.offset, begin_), hi = std::min(view.offset + view.size, end_);
    if (lo >= hi) continue;
    be_.adamw_update(params + lo, grads + lo, m_.data() + (lo - begin_), v_.data() + (lo - begin_), hi - lo,
                     lr / view.mup_ratio, beta1_, beta2_, eps_, view.decay ? wd * view.mup_ratio : 0.0f, grad_scale,
                     t_);
  }
}


float clip_scale(float norm, float max_norm) {
  if (max_norm <= 0) return 1.0f;
  float s = max_norm / (norm + 1e-6f);
  return s < 1.0f ? s : 1.0f;
}

float lr_at(const config::TrainConfig& cfg, int step) {
  const double lr = cfg.lr, min_lr = cfg.min_lr;
  if (step < cfg.warmup_steps) return float(lr * (step + 1) / cfg.warmup_steps);
  if (cfg.steps <= cfg.warmup_steps) return float(lr);
  double ratio = double(step - cfg.warmup_steps) / double(cfg.steps - cfg.warmup_steps);
  if (ratio > 1) ratio = 1;
  switch (cfg.lr_schedule) {
    case config::LrSchedule::constant: return float(lr);
    case config::LrSchedule::linear: return float(lr - ratio * (lr - min_lr));
    case config::LrSchedule::cosine: return float(min_lr + 0.5 * (1.0 + std::cos(M_PI * ratio)) * (lr - min_lr));
  }
  unreachable();
}
