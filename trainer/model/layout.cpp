// Every parameter of the model, declared once in the order of the forward pass (model.h draws
// the model). A line here is the whole truth about a tensor: name, shape (this rank's shard),
// sharding, weight decay and initial values.
#include "trainer/model/layout.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

#include "common/rng.h"
#include "trainer/parallel/tensor_parallel.h"

namespace {

enum class Decay { no, yes };

// Appends tensors to a layout, each with its rule; sharded shapes are this rank's.
class Declarer {
 public:
  Declarer(ModelLayout& out, int tp_size, int tp_rank) : out_(out), tp_size_(tp_size), tp_rank_(tp_rank) {}
  Param operator()(const std::string& name, std::vector<int> shape, Decay decay, Init init, Shard shard = Shard::none,
                   int layer = -1) {
    const bool d = decay == Decay::yes;
    const TensorView* v;
    if (shard == Shard::none || tp_size_ == 1) {
      v = &out_.table.add(name, std::move(shape), d);
    } else {
      const int dim = shard == Shard::cols ? 1 : 0, blocks = shard == Shard::qkv_rows ? 3 : 1;
      v = &out_.table.add(name, std::move(shape), d, dim, tp_size_, tp_rank_, blocks);
    }
    out_.init.push_back({init, layer});
    return Param{v->offset};
  }

 private:
  ModelLayout& out_;
  int tp_size_, tp_rank_;
};

void check_divisible(long long n, const char* key, int tp_size) {
  if (n % tp_size)
    throw std::invalid_argument(std::string(key) + " = " + std::to_string(n) +
                                " is not divisible by parallel.tensor = " + std::to_string(tp_size));
}

}  // namespace

ModelLayout declare_layout(const config::ModelConfig& cfg, int tp_size, int tp_rank) {
  const int C = cfg.d_model, NH = cfg.n_head, hs = C / NH, Vp = cfg.padded_vocab_size;
  if (cfg.mixers.empty()) throw std::invalid_argument("model.mixers: empty");
  check_divisible(NH, "model.n_head", tp_size);
  check_divisible(Vp, "model.padded_vocab_size", tp_size);
  check_divisible(4LL * C, "model.d_model*4", tp_size);
  const int Ca = C / tp_size, NHl = NH / tp_size, Fl = 4 * C / tp_size, Vl = Vp / tp_size;  // this rank's
  const bool rope = cfg.pos == config::Pos::rope;
  const int R = cfg.rope_dims ? cfg.rope_dims : hs / 2;
  const int R_swa = cfg.swa_rope_dims ? cfg.swa_rope_dims : R;
  using enum Decay;
  using enum Init;
  using enum Shard;

  ModelLayout m;
  Declarer add(m, tp_size, tp_rank);
  m.wte = add("wte", {Vl, C}, yes, normal_vocab, rows);
  if (!rope) m.wpe = add("wpe", {cfg.max_seq_len, C}, yes, normal);
  if (cfg.emb_norm) {
    m.lnew = add("ln_e.weight", {C}, no, ones);
    m.lneb = add("ln_e.bias", {C}, no, zeros);
  }
  for (int l = 0; l < cfg.n_layer; l++) {
    const std::string p = "h." + std::to_string(l) + ".";
    LayerParams y;
    y.mixer = cfg.mixers[size_t(l) % cfg.mixers.size()];
    y.window = y.mixer == Mixer::swa ? cfg.swa_window : 0;
    y.rope_dims = rope ? (y.mixer == Mixer::swa ? R_swa : R) : 0;
    y.ln1w = add(p + "ln_1.weight", {C}, no, ones);
    y.ln1b = add(p + "ln_1.bias", {C}, no, zeros);
    if (cfg.token_shift) y.shift_att = add(p + "attn.shift", {C}, no, token_shift, none, l);
    y.qkvw = add(p + "attn.qkv.weight", {3 * Ca, C}, yes, normal, qkv_rows);
    if (cfg.bias) y.qkvb = add(p + "attn.qkv.bias", {3 * Ca}, no, zeros, qkv_rows);
    if (cfg.qk_norm) {
      y.qnw = add(p + "attn.ln_q.weight", {hs}, no, ones);
      y.qnb = add(p + "attn.ln_q.bias", {hs}, no, zeros);
      y.knw = add(p + "attn.ln_k.weight", {hs}, no, ones);
      y.knb = add(p + "attn.ln_k.bias", {hs}, no, zeros);
    }
    if (y.mixer == Mixer::kvm) {
      y.lnsw = add(p + "kvm.ln_s.weight", {hs}, no, ones);
      y.lnsb = add(p + "kvm.ln_s.bias", {hs}, no, zeros);
      y.gatew = add(p + "kvm.gate.weight", {NHl, C}, yes, fan_in_uniform, rows);
      y.tau_front = add(p + "kvm.tau_front", {NHl}, no, ones, rows);
      y.tau_state = add(p + "kvm.tau_state", {NHl}, no, ones, rows);
    }
    y.projw = add(p + "attn.proj.weight", {C, Ca}, yes, normal_out, cols);
    if (cfg.bias) y.projb = add(p + "attn.proj.bias", {C}, no, zeros);
    y.ln2w = add(p + "ln_2.weight", {C}, no, ones);
    y.ln2b = add(p + "ln_2.bias", {C}, no, zeros);
    if (cfg.token_shift) y.shift_mlp = add(p + "mlp.shift", {C}, no, token_shift, none, l);
    y.fcw = add(p + "mlp.fc.weight", {Fl, C}, yes, normal, rows);
    if (cfg.bias) y.fcb = add(p + "mlp.fc.bias", {Fl}, no, zeros, rows);
    y.fcprojw = add(p + "mlp.proj.weight", {C, Fl}, yes, normal_out, cols);
    if (cfg.bias) y.fcprojb = add(p + "mlp.proj.bias", {C}, no, zeros);
    m.layers.push_back(y);
  }
  m.lnfw = add("ln_f.weight", {C}, no, ones);
  m.lnfb = add("ln_f.bias", {C}, no, zeros);
  m.head = cfg.tie_embeddings ? m.wte : add("lm_head.weight", {Vl, C}, yes, normal_vocab, rows);
  return m;
}

void init_params(float* p, const ModelLayout& layout, const config::ModelConfig& cfg, uint64_t seed) {
  Rng rng(seed);  // drawn from in the layout's order, whatever the tensor parallelism
  const int C = cfg.d_model, L = cfg.n_layer;
  const float std_out = cfg.zero_init_out ? 0.0f : 0.02f / std::sqrt(2.0f * L);
  std::vector<float> whole;  // a sharded tensor in full
  const auto& views = layout.table.views();
  for (size_t j = 0; j < views.size(); j++) {
    const TensorView& v = views[j];
    const ModelLayout::Rule& rule = layout.init[j];
    const bool sharded = tp::is_sharded(v);
    const size_t size = tp::full_size(v);
    if (sharded) whole.assign(size, 0.0f);
    float* dst = sharded ? whole.data() : p + v.offset;
    switch (rule.init) {
      case Init::zeros:
        std::fill(dst, dst + size, 0.0f);
        break;
      case Init::ones:
        std::fill(dst, dst + size, 1.0f);
        break;
      case Init::normal:
        fill_normal(dst, size, 0.02f, rng);
        break;
      case Init::normal_vocab:
        std::fill(dst, dst + size, 0.0f);
        fill_normal(dst, size_t(cfg.vocab_size) * C, 0.02f, rng);
        break;
      case Init::normal_out:  // drawn even when the deviation is 0, so later tensors see the same draws
        fill_normal(dst, size, std_out, rng);
        break;
      case Init::token_shift: {
        const double ratio = 1.0 - double(rule.layer) / L;
        for (int c = 0; c < C; c++) dst[c] = float(std::pow(double(c) / C, ratio));
        break;
      }
      case Init::fan_in_uniform: {
        const double bound = 1.0 / std::sqrt(double(C));
        for (size_t i = 0; i < size; i++) dst[i] = float((2.0 * rng.uniform() - 1.0) * bound);
        break;
      }
    }
    if (sharded) tp::extract(v, whole.data(), p + v.offset);
  }
}
