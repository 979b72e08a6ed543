// Every parameter of the model, declared once in the order of the forward pass (model.h draws
// the model). A line here is the whole truth about a tensor: name, shape (this rank's shard),
// sharding, weight decay and initial values.
#include "trainer/model/layout.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

#include "common/orthogonal.h"
#include "common/rng.h"
#include "trainer/parallel/tensor_parallel.h"

namespace {

enum class Decay { no, yes };

// Appends tensors to a layout, each with its rule; sharded shapes are this rank's.
class Declarer {
 public:
  Declarer(ModelLayout& out, int tp_size, int tp_rank) : out_(out), tp_size_(tp_size), tp_rank_(tp_rank) {}
  Param operator()(const std::string& name, std::vector<int> shape, Decay decay, Init init, Shard shard = Shard::none,
                   int layer = -1, float value = 0.0f, float mup_ratio = 1.0f) {
    const bool d = decay == Decay::yes;
    const TensorView* v;
    if (shard == Shard::none || tp_size_ == 1) {
      v = &out_.table.add(name, std::move(shape), d, -1, 1, 0, 1, mup_ratio);
    } else {
      const int dim = shard == Shard::cols ? 1 : 0, blocks = shard == Shard::qkv_rows ? 3 : 1;
      v = &out_.table.add(name, std::move(shape), d, dim, tp_size_, tp_rank_, blocks, mup_ratio);
    }
    out_.init.push_back({init, layer, value});
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

int first_layer_of_mixer(const config::ModelConfig& cfg, int l) {
  const size_t n = cfg.mixers.size();
  for (int f = 0; f < l; f++)
    if (cfg.mixers[size_t(f) % n] == cfg.mixers[size_t(l) % n]) return f;
  return l;
}

int value_gate_rank(int d) { return std::max(32, int(std::lround(1.3 * std::sqrt(double(d)) / 32)) * 32); }

ModelLayout declare_layout(const config::ModelConfig& cfg, int tp_size, int tp_rank) {
  const int C = cfg.d_model, NH = cfg.n_head, hs = C / NH, Vp = cfg.padded_vocab_size;
  if (cfg.mixers.empty()) throw std::invalid_argument("model.mixers: empty");
  check_divisible(NH, "model.n_head", tp_size);
  check_divisible(Vp, "model.padded_vocab_size", tp_size);
  check_divisible(4LL * C, "model.d_model*4", tp_size);
  const int Ca = C / tp_size, NHl = NH / tp_size, Fl = 4 * C / tp_size, Vl = Vp / tp_size;  // this rank's
  const int NKVl = kv_heads(cfg) / tp_size, Ckv = NKVl * hs, W = Ca + 2 * Ckv;  // key/value heads, q|k|v rows
  const bool rope = cfg.pos == config::Pos::rope;
  const int R = cfg.rope_dims ? cfg.rope_dims : hs / 2;
  const int R_swa = cfg.swa_rope_dims ? cfg.swa_rope_dims : rope ? R : 0;
  const float base = float(cfg.rope_base), base_swa = float(cfg.swa_rope_base ? cfg.swa_rope_base : cfg.rope_base);
  const bool paper = cfg.init == config::ModelInit::paper;
  // muP (the paper's optimizer groups): matrices and the head scale lr and decay by d/base; the
  // value gate's up-projection by its rank's ratio instead; embedding and scalars not at all
  const bool mup = cfg.mup_base_dim > 0;
  const float wide = mup ? float(C) / float(cfg.mup_base_dim) : 1.0f;
  const int rank = value_gate_rank(C);
  const float wide_rank = mup ? float(rank) / float(value_gate_rank(cfg.mup_base_dim)) : 1.0f;
  const bool vres = cfg.value_residual && cfg.value_residual_mode != config::ValueResidualMode::average;
  using enum Decay;
  using enum Init;
  using enum Shard;

  ModelLayout m;
  Declarer add(m, tp_size, tp_rank);
  m.wte = add("wte", {Vl, C}, yes, paper ? uniform_vocab : normal_vocab, rows);
  if (cfg.pos == config::Pos::learned) m.wpe = add("wpe", {cfg.max_seq_len, C}, yes, normal);
  if (cfg.emb_norm) {
    m.lnew = add("ln_e.weight", {C}, no, ones);
    m.lneb = add("ln_e.bias", {C}, no, zeros);
  }
  const Init out_init = paper ? zeros : normal_out;
  for (int l = 0; l < cfg.n_layer; l++) {
    const std::string p = "h." + std::to_string(l) + ".";
    LayerParams y;
    y.mixer = cfg.mixers[size_t(l) % cfg.mixers.size()];
    const bool swa = y.mixer == Mixer::swa;
    y.window = swa ? cfg.swa_window : y.mixer == Mixer::bswa ? cfg.kvm.chunk * cfg.kvm.window_chunks : 0;
    y.block = y.mixer == Mixer::bswa ? cfg.kvm.chunk : 0;
    y.rope_dims = swa ? R_swa : rope ? R : 0;
    y.rope_base = swa ? base_swa : base;
    if (value_residual_applies(cfg, l))
      y.anchor = cfg.value_residual_anchor == config::ValueResidualAnchor::per_mixer ? first_layer_of_mixer(cfg, l) : 0;
    y.ln1w = add(p + "ln_1.weight", {C}, no, ones);
    y.ln1b = add(p + "ln_1.bias", {C}, no, zeros);
    if (cfg.token_shift) y.shift_att = add(p + "attn.shift", {C}, no, token_shift, none, l);
    y.qkvw = add(p + "attn.qkv.weight", {W, C}, yes, paper ? fan_in_uniform : normal, qkv_rows, -1, 0, wide);
    if (cfg.bias) y.qkvb = add(p + "attn.qkv.bias", {W}, no, zeros, qkv_rows);
    if (cfg.qkv_shift) y.shift_qkv = add(p + "attn.qkv_shift", {W}, no, qkv_shift, qkv_rows, l);
    if (vres && cfg.value_residual_mode == config::ValueResidualMode::linear)
      y.vr_lambda = add(p + "attn.vres.lambda", {1}, no, constant, none, -1, 0.5f);
    if (vres && cfg.value_residual_mode == config::ValueResidualMode::rwkv) {
      y.vr_bias = add(p + "attn.vres.gate_bias", {Ckv}, no, value_gate_bias, rows);
      y.vr_down = add(p + "attn.vres.gate_down", {rank, C}, yes, zeros, none, -1, 0, wide);
      y.vr_up = add(p + "attn.vres.gate_up", {Ckv, rank}, yes, orthogonal, rows, -1, 0.1f, wide_rank);
    }
    if (cfg.qk_norm) {
      y.qnw = add(p + "attn.ln_q.weight", {hs}, no, ones);
      y.qnb = add(p + "attn.ln_q.bias", {hs}, no, zeros);
      y.knw = add(p + "attn.ln_k.weight", {hs}, no, ones);
      y.knb = add(p + "attn.ln_k.bias", {hs}, no, zeros);
    }
    if (y.mixer == Mixer::kvm) {
      y.lnsw = add(p + "kvm.ln_s.weight", {hs}, no, ones);
      y.lnsb = add(p + "kvm.ln_s.bias", {hs}, no, zeros);
      y.gatew = add(p + "kvm.gate.weight", {NKVl, C}, yes, fan_in_uniform, rows, -1, 0, wide);
      y.tau_front = add(p + "kvm.tau_front", {NHl}, no, ones, rows);
      y.tau_state = add(p + "kvm.tau_state", {NHl}, no, ones, rows);
    }
    y.projw = add(p + "attn.proj.weight", {C, Ca}, yes, out_init, cols, -1, 0, wide);
    if (cfg.bias) y.projb = add(p + "attn.proj.bias", {C}, no, zeros);
    y.ln2w = add(p + "ln_2.weight", {C}, no, ones);
    y.ln2b = add(p + "ln_2.bias", {C}, no, zeros);
    if (cfg.token_shift) y.shift_mlp = add(p + "mlp.shift", {C}, no, token_shift, none, l);
    if (cfg.mlp_shift) y.shift_mlp = add(p + "mlp.shift_delta", {C}, no, mlp_shift, none, l);
    y.fcw = add(p + "mlp.fc.weight", {Fl, C}, yes, paper ? orthogonal : normal, rows, -1, 1.0f, wide);
    if (cfg.bias) y.fcb = add(p + "mlp.fc.bias", {Fl}, no, zeros, rows);
    y.fcprojw = add(p + "mlp.proj.weight", {C, Fl}, yes, out_init, cols, -1, 0, wide);
    if (cfg.bias) y.fcprojb = add(p + "mlp.proj.bias", {C}, no, zeros);
    m.layers.push_back(y);
  }
  m.lnfw = add("ln_f.weight", {C}, no, ones);
  m.lnfb = add("ln_f.bias", {C}, no, zeros);
  const float head_gain = 0.5f * std::sqrt(float(Vp) / float(C));
  m.head = cfg.tie_embeddings ? m.wte
                              : add("lm_head.weight", {Vl, C}, yes, paper ? orthogonal : normal_vocab, rows, -1,
                                    head_gain, wide);
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
      case Init::constant:
        std::fill(dst, dst + size, rule.value);
        break;
      case Init::uniform_vocab:
        for (size_t i = 0; i < size; i++) dst[i] = float((2.0 * rng.uniform() - 1.0) * 1e-4);
        break;
      case Init::orthogonal: {  // a matrix, whole: its full rows by the rest
        const int rows = v.shape[0] * (v.shard_dim == 0 ? v.shard_count : 1);
        fill_orthogonal(dst, rows, int(size / size_t(rows)), rule.value, rng);
        break;
      }
      case Init::qkv_shift: {  // whole: q's C weights, then k's and v's Ckv each
        const double ratio = 1.0 - double(rule.layer) / L, a[3] = {0.2, 0.7, 0.7};
        const int Ckv = int(size - size_t(C)) / 2, width[3] = {C, Ckv, Ckv};
        for (int j = 0, o = 0; j < 3; o += width[j], j++)
          for (int c = 0; c < width[j]; c++) dst[o + c] = float(1.0 - std::pow(double(c) / width[j], a[j] * ratio));
        break;
      }
      case Init::mlp_shift: {
        const double ratio = 1.0 - double(rule.layer) / L;
        for (int c = 0; c < C; c++) dst[c] = float(1.0 - std::pow(double(c) / C, std::pow(ratio, 4)));
        break;
      }
      case Init::value_gate_bias:  // whole: one per value channel
        for (size_t c = 0; c < size; c++) dst[c] = float(0.73 - 0.4 * (double(c) / double(size - 1) - 0.5));
        break;
      case Init::fan_in_uniform: {
        const double bound = 1.0 / std::sqrt(double(C));
        for (size_t i = 0; i < size; i++) dst[i] = float((2.0 * rng.uniform() - 1.0) * bound);
        break;
      }
    }
    if (sharded) tp::extract(v, whole.data(), p + v.offset);
  }
}
