#include "trainer/train/paper_format.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>

#include "common/file_io.h"
#include "common/unreachable.h"
#include "common/usage_error.h"
#include "trainer/model/layout.h"

namespace paper {

namespace {

namespace fs = std::filesystem;
using config::Mixer;

constexpr const char* kModelType = "rwkv7backbone";
constexpr const char* kArchitecture = "RWKV7BackboneForCausalLM";
constexpr const char* kModelClassPath = "model.rwkv7_backbone.RWKV7BackboneForCausalLM";
constexpr int kGpt2Vocab = 50257, kGpt2Eot = 50256;

// PretrainedConfig's keys that a config.json of the paper's model may carry besides the dataclass
// ones; they say nothing about the weights' function, but the two ties must be off (the paper's
// head is its own; its code passes the misspelt tie_worhidden_sizedings).
const std::set<std::string> kPretrainedKeys = {
    "model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
    "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings", "tie_worhidden_sizedings",
    "max_position_embeddings", "use_cache"};

// The token mixers kvmtrain has, by the paper's name; each reads its own *_value_residual_mode
// and *_token_shift_mode (gptalpha_bswa reads gptalpha's, being a gptalpha mixer).
struct Kind {
  const char* name;
  Mixer mixer;
  const char* keys;
};
constexpr Kind kKinds[] = {
    {"gptalpha", Mixer::attn, "gptalpha"},
    {"gptalpha_bswa", Mixer::bswa, "gptalpha"},
    {"kvm", Mixer::kvm, "kvm"},
    {"swa", Mixer::swa, "swa"},
};

const Kind& kind_of(Mixer m) {
  for (const auto& k : kKinds)
    if (k.mixer == m) return k;
  unreachable();
}

// The budget schedules by the paper's name, in config::KvmBudget's order.
constexpr const char* kBudgets[] = {"fixed", "power_law", "kvm_saturation"};

// Reads the paper's keys, the dataclass default where config.json has none; errors name the key.
class Reader {
 public:
  Reader(const json::Object& cfg, std::string origin) : cfg_(cfg), origin_(std::move(origin)) {}

  const json::Value& get(const std::string& key) const {
    if (auto it = cfg_.find(key); it != cfg_.end()) return it->second;
    return default_of(key);
  }
  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw UsageError(origin_ + ": " + key + " = " + json::dump(get(key)) + ": " + why);
  }
  bool null(const std::string& key) const { return get(key).is_null(); }
  double number(const std::string& key) const {
    const json::Value& v = get(key);
    if (!v.is_number()) fail(key, "expected a number");
    return v.number();
  }
  int64_t integer(const std::string& key) const {
    const json::Value& v = get(key);
    if (auto b = std::get_if<bool>(&v.v)) return *b;  // the paper's flags are ints, False/True in Python
    if (!v.is_number() || v.number() != std::floor(v.number()) || std::fabs(v.number()) > 1e15)
      fail(key, "expected an integer");
    return int64_t(v.number());
  }
  // An integer in [lo, hi].
  int in(const std::string& key, int64_t lo, int64_t hi) const {
    const int64_t v = integer(key);
    if (v < lo || v > hi) fail(key, "expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return int(v);
  }
  bool flag(const std::string& key) const { return integer(key) != 0; }
  std::string str(const std::string& key) const {
    const json::Value& v = get(key);
    if (!v.is_string()) fail(key, "expected a string");
    return v.string();
  }
  // The key must keep its default: kvmtrain has no such feature.
  void off(const std::string& key, const std::string& what) const {
    const json::Value& def = default_of(key);
    const bool same = def.is_number() ? number_or_flag(get(key)) == def.number() : json::dump(get(key)) == json::dump(def);
    if (!same) fail(key, "kvmtrain has no " + what + " (expected " + json::dump(def) + ")");
  }

 private:
  // a number, or a Python bool where the dataclass has an int; NaN for anything else
  static double number_or_flag(const json::Value& v) {
    if (auto b = std::get_if<bool>(&v.v)) return *b;
    return v.is_number() ? v.number() : std::nan("");
  }
  static const json::Value& default_of(const std::string& key) {
    for (const auto& [k, v] : dataclass_defaults())
      if (k == key) return v;
    throw std::logic_error("paper key " + key + " has no default");
  }
  const json::Object& cfg_;
  std::string origin_;
};

Mixer mixer_of(const Reader& r, const std::string& key) {
  const std::string name = r.str(key);
  for (const auto& k : kKinds)
    if (name == k.name) return k.mixer;
  r.fail(key, "kvmtrain cannot represent this token mixer (expected gptalpha, gptalpha_bswa, kvm or swa)");
}

// The paper's layer i: the alt mixer when alt_layer_every > 1 and i % alt_layer_every == 0.
bool is_alt(int64_t every, int i) { return every > 1 && i % every == 0; }

}  // namespace

const std::vector<std::pair<std::string, json::Value>>& dataclass_defaults() {
  // transcribed from the paper's model/rwkv7_backbone.py (MixerConfigDataclass, 1932b9c)
  static const std::vector<std::pair<std::string, json::Value>> keys = {
      {"model_class_path", kModelClassPath},
      {"vocab_size", 50304},
      {"num_hidden_layers", 12},
      {"num_attention_heads", 6},
      {"d_qk_head", nullptr},
      {"d_v_head", nullptr},
      {"d_head", nullptr},
      {"hidden_size", 768},
      {"mup_base_dim", 768},
      {"rope_theta", 10000.0},
      {"rope_partial_dim", 64},
      {"alt_rope_theta", 10000.0},
      {"alt_rope_partial_dim", 64},
      {"alt_share_v0", 0},
      {"ffn_expansion", 4.0},
      {"token_mixer", "rwkv7"},
      {"token_mixer_class_path", nullptr},
      {"alt_token_mixer", "swa"},
      {"alt_token_mixer_class_path", nullptr},
      {"alt_layer_every", -1},
      {"use_tokenshift_ffn", 0},
      {"use_block_lambdas", 0},
      {"use_skip_connections", 0},
      {"use_l2wrap", 0},
      {"logit_softcap", 0.0},
      {"residual_scale", nullptr},
      {"use_value_residual", 1},
      {"gptalpha_value_residual_mode", "rwkv"},
      {"gptalpha_token_shift_mode", "rwkv"},
      {"kvm_value_residual_mode", "rwkv"},
      {"kvm_token_shift_mode", "rwkv"},
      {"kvm_apply_merge_gate_to_initial_state", 0},
      {"kvm_apply_merge_gate_to_appends", 1},
      {"kvm_use_merge_gate_keys", 1},
      {"kvm_use_merge_gate_values", 1},
      {"kvm_use_head_temps", 1},
      {"kvm_use_vlens", 1},
      {"ovq_value_residual_mode", "rwkv"},
      {"ovq_token_shift_mode", "rwkv"},
      {"use_tokenshift_att", 0},
      {"swa_value_residual_mode", "rwkv"},
      {"swa_token_shift_mode", "rwkv"},
      {"swa_window_size", -1},
      {"ovq_window_size", 128},
      {"ovq_chunk_size", 128},
      {"ovq_max_centroids", 2048},
      {"ovq_normalize_centroids", 0},
      {"ovq_use_min_state_size", 0},
      {"ovq_use_counts_for_lr_only", 0},
      {"ovq_use_delta_rule", 0},
      {"kda_expand_k", 1.0},
      {"kda_expand_v", 1.0},
      {"kda_conv_size", 4},
      {"kda_conv_bias", 0},
      {"kda_allow_neg_eigval", 0},
      {"kda_token_shift_mode", "none"},
      {"kda_value_residual_mode", "none"},
      {"gated_deltanet_expand_k", 0.75},
      {"gated_deltanet_expand_v", 1.5},
      {"gated_deltanet_num_kv_heads", nullptr},
      {"gated_deltanet_conv_size", 4},
      {"gated_deltanet_conv_bias", 0},
      {"gated_deltanet_use_mamba_gate", 1},
      {"gated_deltanet_token_shift_mode", "none"},
      {"gated_deltanet_value_residual_mode", "none"},
      {"sink_len", 1},
      {"chunk_len", 256},
      {"n_max_d_chunks", 1},
      {"n_bswa_chunks", 2},
      {"state_budget_mode", "fixed"},
      {"state_growth_factor", 1.0},
      {"state_growth_exponent", 0.5},
      {"state_round_down", 1},
      {"state_min_len", -1},
      {"state_saturation_n", nullptr},
      {"use_overflow_v_key_weighting", 1},
      {"use_state_deltarule", 0},
      {"use_state_decay", 0},
      {"lact_value_residual_mode", "rwkv"},
      {"lact_token_shift_mode", "rwkv"},
      {"lact_actual_rope_partial_dim", -1},
      {"lact_lact_window_size", -1},
      {"lact_chunk_size", -1},
      {"lact_num_fw_heads", -1},
      {"lact_inter_multi", 1.0},
      {"lact_norm_eps", 1e-6},
      {"lact_attn_qk_norm", 0},
      {"lact_w0_w2_low_rank", 32},
      {"lact_fw_init_gain", 0.5},
      {"lact_ttt_lag", 0},
      {"lact_factor", 1.0},
      {"lact_use_muon", 0},
      {"lact_learnable_muon_lr", 0},
      {"lact_muon_lr_reduce_exp", 2},
      {"lact_use_momentum", 1},
      {"lact_ttt_prenorm", 0},
      {"lact_ttt_nope", 0},
      {"lact_no_v_silu", 0},
      {"lact_use_bswa", 0},
      {"param_dtype", "bfloat16"},
  };
  return keys;
}

bool is_paper_dir(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  if (!fs::is_regular_file(p)) return false;
  try {
    const json::Value v = json::parse(ckpt::read_file(p.string()));
    return v.is_object() && v.contains("model_type") && v.at("model_type").is_string() &&
           v.at("model_type").string() == kModelType;
  } catch (const std::exception&) {
    return false;  // not JSON: not the paper's
  }
}

// The later paper code's (SmerkyG/KVM-paper) key for grouped-query attention; the paper's commit has none.
constexpr const char* kKvHeadsKey = "num_key_value_heads";

config::ModelConfig to_model(const json::Object& cfg, const std::string& origin) {
  const Reader r(cfg, origin);
  for (const auto& [key, value] : cfg) {
    const bool known = kPretrainedKeys.count(key) || key == kKvHeadsKey ||
                       std::any_of(dataclass_defaults().begin(), dataclass_defaults().end(),
                                   [&](const auto& kv) { return kv.first == key; });
    if (!known) throw UsageError(origin + ": " + key + ": unknown key of the paper's config (MixerConfigDataclass)");
  }
  if (cfg.contains("model_type") && !(cfg.at("model_type").is_string() && cfg.at("model_type").string() == kModelType))
    throw UsageError(origin + ": model_type: expected \"" + std::string(kModelType) + "\"");
  auto is_false = [](const json::Value& v) {
    return std::holds_alternative<bool>(v.v) ? !v.boolean() : v.is_number() && v.number() == 0;
  };
  for (const char* tie : {"tie_word_embeddings", "tie_worhidden_sizedings"})
    if (cfg.contains(tie) && !is_false(cfg.at(tie)))
      throw UsageError(origin + ": " + tie + ": expected false (the paper's head is its own tensor)");

  // what kvmtrain does not have
  if (r.str("model_class_path") != kModelClassPath) r.fail("model_class_path", "kvmtrain only reads the paper's backbone");
  for (const char* key : {"token_mixer_class_path", "alt_token_mixer_class_path"})
    if (!r.null(key)) r.fail(key, "kvmtrain cannot load mixer classes (expected null and a mixer name)");
  r.off("use_block_lambdas", "block lambdas");
  r.off("use_skip_connections", "U-Net skip connections");
  r.off("use_l2wrap", "L2Wrap loss");
  r.off("logit_softcap", "logit soft-capping");
  r.off("state_round_down", "KVM budget rounding");
  r.off("use_state_deltarule", "delta-rule KVM state");
  r.off("use_state_decay", "decaying KVM state");
  r.off("use_overflow_v_key_weighting", "KVM variant without overflow key weighting");
  r.off("ffn_expansion", "MLP width other than 4 x hidden_size");

  config::ModelConfig m;
  m.n_layer = r.in("num_hidden_layers", 1, 1024);
  m.n_head = r.in("num_attention_heads", 1, 1024);
  m.d_model = r.in("hidden_size", 1, 1 << 16);
  if (m.d_model % m.n_head) r.fail("hidden_size", "expected a multiple of num_attention_heads");
  if (cfg.contains(kKvHeadsKey) && !r.null(kKvHeadsKey)) {  // the later paper code's grouped-query attention
    m.n_kv_head = r.in(kKvHeadsKey, 1, m.n_head);
    if (m.n_head % m.n_kv_head) r.fail(kKvHeadsKey, "expected a divisor of num_attention_heads");
    if (m.n_kv_head == m.n_head) m.n_kv_head = 0;
  }
  // the paper's MLP is int(4 * hidden_size) // 32 * 32 wide: kvmtrain's 4 x d_model needs d % 8 == 0
  if (m.d_model % 8) r.fail("hidden_size", "expected a multiple of 8 (kvmtrain's MLP is 4 x hidden_size wide)");
  const int hs = m.d_model / m.n_head;
  for (const char* key : {"d_qk_head", "d_v_head", "d_head"})
    if (!r.null(key) && r.integer(key) != hs)
      r.fail(key, "kvmtrain's heads are hidden_size / num_attention_heads = " + std::to_string(hs) + " wide (expected null)");
  m.vocab_size = kGpt2Vocab;  // the paper trains on the GPT-2 tokenizer, its vocabulary padded to vocab_size
  m.padded_vocab_size = r.in("vocab_size", kGpt2Vocab, 1 << 24);
  m.softmax_over_padding = true;
  m.max_seq_len = kSeqLen;
  m.tie_embeddings = false;
  m.mup_base_dim = r.in("mup_base_dim", 0, 1 << 16);
  if (!r.null("residual_scale")) {
    m.residual_scale = r.number("residual_scale");
    if (!(m.residual_scale > 0 && m.residual_scale <= 1e3)) r.fail("residual_scale", "expected a number in (0, 1000]");
  }

  // the layers' mixers: the alt mixer on every alt_layer_every-th layer from 0, the main one elsewhere
  const Mixer main = mixer_of(r, "token_mixer");
  const int64_t every = r.integer("alt_layer_every");
  if (every > 1) {
    if (every > 1024) r.fail("alt_layer_every", "expected at most 1024");
    m.mixers.assign(size_t(every), main);
    m.mixers[0] = mixer_of(r, "alt_token_mixer");
  } else {
    m.mixers = {main};
  }
  std::vector<Mixer> layers;  // the mixers the model really has
  for (int i = 0; i < m.n_layer; i++) layers.push_back(m.mixers[size_t(i) % m.mixers.size()]);
  auto has = [&](Mixer x) { return std::find(layers.begin(), layers.end(), x) != layers.end(); };

  // RoPE: main layers turn rope_partial_dim dims at rope_theta, alt layers alt_*. kvmtrain turns
  // swa layers by model.swa_rope_*, the others by model.rope_*: each group must agree within itself.
  struct Rope {
    int dims;
    double theta;
    std::string dims_key, theta_key;
  };
  auto rope_of = [&](bool alt) {
    const std::string p = alt ? "alt_" : "";
    Rope g{r.in(p + "rope_partial_dim", 0, hs), r.number(p + "rope_theta"), p + "rope_partial_dim", p + "rope_theta"};
    if (g.dims % 2) r.fail(g.dims_key, "expected an even number");
    if (!(g.theta >= 1 && g.theta <= 1e12)) r.fail(g.theta_key, "expected a number in [1, 1e12]");
    return g;
  };
  std::optional<Rope> swa_rope, other_rope;
  for (int i = 0; i < m.n_layer; i++) {
    const Rope g = rope_of(is_alt(every, i));
    std::optional<Rope>& group = layers[size_t(i)] == Mixer::swa ? swa_rope : other_rope;
    if (!group) group = g;
    else if (group->dims != g.dims || group->theta != g.theta)
      r.fail(g.dims != group->dims ? "alt_rope_partial_dim" : "alt_rope_theta",
             "kvmtrain turns every non-swa layer (and every swa layer) alike, the alt and main layers differ here");
  }
  const Rope main_rope = rope_of(false);
  const Rope& other = other_rope ? *other_rope : main_rope;
  m.pos = other.dims > 0 ? config::Pos::rope : config::Pos::none;
  m.rope_dims = other.dims;
  m.rope_base = other.theta;
  m.rope_variant = config::RopeVariant::paper;
  if (swa_rope) {
    if (swa_rope->dims == 0 && m.pos == config::Pos::rope)
      r.fail(swa_rope->dims_key, "NoPE on the swa layers only cannot be expressed (kvmtrain's swa layers then take rope_dims)");
    m.swa_rope_dims = swa_rope->dims;
    m.swa_rope_base = swa_rope->theta;
  }
  // the paper's KVM zeroes the key dims of rope_partial_dim (the main layers') before the state
  if (every > 1 && m.mixers[0] == Mixer::kvm && rope_of(true).dims != main_rope.dims)
    r.fail("alt_rope_partial_dim", "a KVM alt layer zeroes rope_partial_dim key dims but turns alt_rope_partial_dim "
                                   "(kvmtrain zeroes the dims it turns)");

  // q/k/v token shift and value residual: per mixer kind in the paper, one switch in kvmtrain
  std::vector<Mixer> kinds;
  for (Mixer x : layers)
    if (std::find(kinds.begin(), kinds.end(), x) == kinds.end()) kinds.push_back(x);
  // The value every mixer kind present reads from its own <kind>_<suffix> key; nothing when two
  // differ (`key` then names the second), else `key` names the first.
  auto shared = [&](const std::string& suffix, std::string& key) -> std::optional<std::string> {
    std::optional<std::string> value;
    for (Mixer x : kinds) {
      const std::string kx = kind_of(x).keys + suffix, v = r.str(kx);
      if (!value) value = v, key = kx;
      else if (v != *value) return key = kx, std::nullopt;
    }
    return value;
  };
  std::string key;
  m.qkv_shift = false;
  if (r.flag("use_tokenshift_att")) {
    const auto mode = shared("_token_shift_mode", key);
    if (!mode) r.fail(key, "differs between the mixers (kvmtrain shifts every layer's q/k/v or none)");
    if (*mode != "rwkv" && *mode != "none") r.fail(key, "kvmtrain has the rwkv token shift or none");
    m.qkv_shift = *mode == "rwkv";
  }
  m.mlp_shift = r.flag("use_tokenshift_ffn");
  m.value_residual = r.flag("use_value_residual");
  const auto mode = shared("_value_residual_mode", key);
  if (m.value_residual) {
    if (!mode) r.fail(key, "differs between the mixers (kvmtrain has one value residual for every layer)");
    if (*mode != "rwkv" && *mode != "linear") r.fail(key, "kvmtrain has the rwkv and linear value residuals");
  }
  // unused while the value residual is off: anything but linear reads as the paper's default
  m.value_residual_mode = mode == "linear" ? config::ValueResidualMode::linear : config::ValueResidualMode::rwkv;
  m.value_residual_anchor = r.flag("alt_share_v0") ? config::ValueResidualAnchor::layer0 : config::ValueResidualAnchor::per_mixer;

  // windows and the KVM
  auto& k = m.kvm;
  k.chunk = r.in("chunk_len", 1, 1 << 20);
  k.window_chunks = r.in("n_bswa_chunks", 1, 1 << 10);
  k.sink = r.in("sink_len", 0, k.chunk - 1);
  if (has(Mixer::bswa) && k.sink != 0)
    r.fail("sink_len", "kvmtrain's gptalpha_bswa windows have no sink tokens (expected 0)");
  const int64_t swa_window = r.integer("swa_window_size");
  m.swa_window = swa_window > 0 ? r.in("swa_window_size", 1, 1 << 22) : k.chunk;
  const std::string budget = r.str("state_budget_mode");
  const auto* b = std::find(std::begin(kBudgets), std::end(kBudgets), budget);
  if (b == std::end(kBudgets)) r.fail("state_budget_mode", "expected fixed, power_law or kvm_saturation");
  k.budget = config::KvmBudget(b - std::begin(kBudgets));
  k.power_f = r.number("state_growth_factor");
  if (!(k.power_f > 0 && k.power_f <= 1e9)) r.fail("state_growth_factor", "expected a number in (0, 1e9]");
  k.power_e = r.number("state_growth_exponent");
  if (!(k.power_e >= 0 && k.power_e <= 1)) r.fail("state_growth_exponent", "expected a number in [0, 1]");
  // a negative floor is no floor: the paper's budget is max(target, floor) of a target >= 0
  k.min_len = std::max(0, r.in("state_min_len", -(1 << 30), 1 << 30));
  if (r.null("state_saturation_n")) {
    if (k.budget == config::KvmBudget::saturating && has(Mixer::kvm))
      r.fail("state_saturation_n", "kvm_saturation needs a number");
  } else {
    k.sat_n = r.in("state_saturation_n", 1, 1 << 30);
  }
  const int64_t slots = int64_t(k.chunk) * r.in("n_max_d_chunks", 1, 1 << 30);
  if (slots > (1 << 30)) r.fail("n_max_d_chunks", "chunk_len * n_max_d_chunks exceeds 2^30 slots");
  k.max_slots = int(slots);
  k.vlens = r.flag("kvm_use_vlens");
  k.head_temps = r.flag("kvm_use_head_temps");
  k.merge_gate_keys = r.flag("kvm_use_merge_gate_keys");
  k.merge_gate_values = r.flag("kvm_use_merge_gate_values");
  k.gate_appends = r.flag("kvm_apply_merge_gate_to_appends");
  k.gate_initial_state = r.flag("kvm_apply_merge_gate_to_initial_state");

  // what the paper's backbone always is
  m.init = config::ModelInit::paper;
  m.mlp = config::Mlp::relu2;
  m.qk_norm = true;
  m.emb_norm = true;
  m.token_shift = false;
  m.bias = false;
  m.zero_init_out = true;
  return m;
}

json::Object from_model(const config::ModelConfig& m, config::Tokenizer tokenizer) {
  auto refuse = [](const std::string& key, const std::string& why) {
    throw UsageError("export --format kvm-paper: model." + key + ": " + why);
  };
  if (tokenizer != config::Tokenizer::gpt2)
    throw UsageError("export --format kvm-paper: data.tokenizer: the paper's models use gpt2");
  if (m.tie_embeddings) refuse("tie_embeddings", "the paper's head is untied (expected false)");
  if (m.pos == config::Pos::learned) refuse("pos", "the paper has RoPE or no positions (expected rope or none)");
  if (m.mlp != config::Mlp::relu2) refuse("mlp", "the paper's MLP is relu2");
  if (!m.qk_norm) refuse("qk_norm", "the paper's mixers normalise q and k (expected true)");
  if (!m.emb_norm) refuse("emb_norm", "the paper normalises the embedding (expected true)");
  if (m.bias) refuse("bias", "the paper's linear layers have no biases (expected false)");
  if (m.token_shift) refuse("token_shift", "the paper's shifts are model.qkv_shift and model.mlp_shift");
  if (m.value_residual && m.value_residual_mode == config::ValueResidualMode::average)
    refuse("value_residual_mode", "the paper's value residuals are rwkv or linear");
  if (!m.softmax_over_padding && m.padded_vocab_size != m.vocab_size)
    refuse("softmax_over_padding", "the paper's softmax covers its whole (padded) vocabulary (expected true)");
  if (m.d_model % 8) refuse("d_model", "the paper's MLP is 4 x d_model wide only for a multiple of 8");
  const int hs = m.d_model / m.n_head;

  // mixers: [main] or [alt, main, ..., main]
  const Mixer main = m.mixers.back();
  for (size_t i = 1; i < m.mixers.size(); i++)
    if (m.mixers[i] != main) refuse("mixers", "the paper has one mixer, or an alt mixer every k layers ([alt, main x (k-1)])");
  const bool alt = m.mixers.size() > 1;

  // the RoPE of a kvmtrain layer of kind x: (dims turned, base)
  auto rope_of = [&](Mixer x) -> std::pair<int, double> {
    const int R = m.pos == config::Pos::rope ? (m.rope_dims ? m.rope_dims : hs / 2) : 0;
    if (x != Mixer::swa) return {R, m.rope_base};
    return {m.swa_rope_dims ? m.swa_rope_dims : R, m.swa_rope_base ? m.swa_rope_base : m.rope_base};
  };
  const bool any_rope = std::any_of(m.mixers.begin(), m.mixers.end(), [&](Mixer x) { return rope_of(x).first > 0; });
  if (any_rope && m.rope_variant != config::RopeVariant::paper)
    refuse("rope_variant", "the paper turns the other way at other frequencies (expected paper)");
  if (alt && m.mixers[0] == Mixer::kvm && rope_of(Mixer::kvm).first != rope_of(main).first)
    refuse("mixers", "a KVM alt layer of the paper zeroes the main layers' RoPE dims, not its own");
  const auto& k = m.kvm;
  const bool has_kvm = std::count(m.mixers.begin(), m.mixers.end(), Mixer::kvm) > 0;
  const bool has_bswa = std::count(m.mixers.begin(), m.mixers.end(), Mixer::bswa) > 0;
  int n_max_d_chunks = 1;
  if (k.max_slots > 0 && k.max_slots % k.chunk == 0) n_max_d_chunks = k.max_slots / k.chunk;
  else if (has_kvm) refuse("kvm.max_slots", "the paper caps the state at n_max_d_chunks whole chunks (expected a positive multiple of model.kvm.chunk)");
  if (has_bswa && k.sink) refuse("kvm.sink", "expected 0 with bswa layers");

  json::Object out;
  for (const auto& [key, value] : dataclass_defaults()) out[key] = value;
  auto set = [&](const std::string& key, json::Value v) {
    if (!out.count(key)) throw std::logic_error("not a paper key: " + key);
    out[key] = std::move(v);
  };
  auto flag = [](bool b) { return json::Value(b ? 1 : 0); };
  set("vocab_size", m.padded_vocab_size);
  set("num_hidden_layers", m.n_layer);
  set("num_attention_heads", m.n_head);
  // grouped-query attention is the later paper code's (SmerkyG/KVM-paper): its key, only when used
  if (kv_heads(m) != m.n_head) out[kKvHeadsKey] = kv_heads(m);
  set("hidden_size", m.d_model);
  set("mup_base_dim", m.mup_base_dim ? m.mup_base_dim : m.d_model);  // off = the model's own width
  set("rope_partial_dim", rope_of(main).first);
  set("rope_theta", rope_of(main).second);
  if (alt) {
    set("alt_rope_partial_dim", rope_of(m.mixers[0]).first);
    set("alt_rope_theta", rope_of(m.mixers[0]).second);
    set("alt_token_mixer", kind_of(m.mixers[0]).name);
    set("alt_layer_every", int(m.mixers.size()));
  }
  set("alt_share_v0", flag(m.value_residual_anchor == config::ValueResidualAnchor::layer0));
  set("token_mixer", kind_of(main).name);
  set("use_tokenshift_ffn", flag(m.mlp_shift));
  set("use_tokenshift_att", flag(m.qkv_shift));
  set("residual_scale", m.residual_scale);
  set("use_value_residual", flag(m.value_residual));
  if (m.value_residual_mode != config::ValueResidualMode::average)
    for (Mixer x : m.mixers) set(std::string(kind_of(x).keys) + "_value_residual_mode", config::to_string(m.value_residual_mode));
  set("kvm_apply_merge_gate_to_initial_state", flag(k.gate_initial_state));
  set("kvm_apply_merge_gate_to_appends", flag(k.gate_appends));
  set("kvm_use_merge_gate_keys", flag(k.merge_gate_keys));
  set("kvm_use_merge_gate_values", flag(k.merge_gate_values));
  set("kvm_use_head_temps", flag(k.head_temps));
  set("kvm_use_vlens", flag(k.vlens));
  set("swa_window_size", m.swa_window);
  set("sink_len", k.sink);
  set("chunk_len", k.chunk);
  set("n_max_d_chunks", n_max_d_chunks);
  set("n_bswa_chunks", k.window_chunks);
  set("state_budget_mode", kBudgets[size_t(k.budget)]);
  set("state_growth_factor", k.power_f);
  set("state_growth_exponent", k.power_e);
  set("state_min_len", k.min_len);
  set("state_saturation_n", k.sat_n);
  // PretrainedConfig's
  out["model_type"] = kModelType;
  out["architectures"] = json::Array{kArchitecture};
  out["tie_word_embeddings"] = false;
  out["torch_dtype"] = "float32";
  out["pad_token_id"] = nullptr;
  out["bos_token_id"] = kGpt2Eot;
  out["eos_token_id"] = kGpt2Eot;
  return out;
}

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); i++) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

std::string paper_prefix(int l) { return "transformer.h." + std::to_string(l) + "."; }

// kvmtrain suffix -> (paper suffix, paper shape from kvmtrain's), for the one-to-one tensors.
struct Rename {
  const char* ours;
  const char* theirs;
  enum Shape { same, row3, scalar } shape;  // row3: (C) <-> (1, 1, C); scalar: (1) <-> ()
};
constexpr Rename kLayerNames[] = {
    {"ln_1.weight", "ln_attn.weight", Rename::same},
    {"ln_1.bias", "ln_attn.bias", Rename::same},
    {"attn.vres.lambda", "attn.lamb", Rename::scalar},
    {"attn.vres.gate_bias", "attn.v_gate0", Rename::row3},
    {"attn.vres.gate_down", "attn.v_gate1.weight", Rename::same},
    {"attn.vres.gate_up", "attn.v_gate2.weight", Rename::same},
    {"attn.ln_q.weight", "attn.ln_q.weight", Rename::same},
    {"attn.ln_q.bias", "attn.ln_q.bias", Rename::same},
    {"attn.ln_k.weight", "attn.ln_k.weight", Rename::same},
    {"attn.ln_k.bias", "attn.ln_k.bias", Rename::same},
    {"kvm.ln_s.weight", "attn.ln_s_k.weight", Rename::same},
    {"kvm.ln_s.bias", "attn.ln_s_k.bias", Rename::same},
    {"kvm.gate.weight", "attn.key_weighting.weight", Rename::same},
    {"kvm.tau_front", "attn.front_head_temp", Rename::same},
    {"kvm.tau_state", "attn.state_head_temp", Rename::same},
    {"attn.proj.weight", "attn.c_proj.weight", Rename::same},
    {"ln_2.weight", "ln_mlp.weight", Rename::same},
    {"ln_2.bias", "ln_mlp.bias", Rename::same},
    {"mlp.shift_delta", "mlp.x_k", Rename::row3},
    {"mlp.fc.weight", "mlp.c_fc.weight", Rename::same},
    {"mlp.proj.weight", "mlp.c_proj.weight", Rename::same},
};
constexpr std::pair<const char*, const char*> kGlobalNames[] = {
    {"wte", "transformer.wte.weight"},
    {"ln_e.weight", "transformer.ln_emb.weight"},
    {"ln_e.bias", "transformer.ln_emb.bias"},
    {"ln_f.weight", "transformer.ln_head.weight"},
    {"ln_f.bias", "transformer.ln_head.bias"},
    {"lm_head.weight", "lm_head.weight"},
};
constexpr const char* kQkv[] = {"q", "k", "v"};

std::vector<int64_t> paper_shape(Rename::Shape s, const std::vector<int64_t>& ours) {
  switch (s) {
    case Rename::same: return ours;
    case Rename::row3: return {1, 1, ours.at(0)};
    case Rename::scalar: return {};
  }
  unreachable();
}

// Whether a KVM layer of the paper has the tensor: the gate only with a merge gate, the
// temperatures only with head_temps.
bool paper_has(const config::ModelConfig& m, const std::string& suffix) {
  if (suffix == "kvm.gate.weight") return m.kvm.merge_gate_keys || m.kvm.merge_gate_values;
  if (suffix == "kvm.tau_front" || suffix == "kvm.tau_state") return m.kvm.head_temps;
  return true;
}

// The paper has a zero x_v, unused, when the value residual is rwkv but q/k/v are not shifted.
bool paper_has_zero_xv(const config::ModelConfig& m) {
  return m.value_residual && m.value_residual_mode == config::ValueResidualMode::rwkv && !m.qkv_shift;
}

// "h.3.attn.qkv.weight" -> 3, "attn.qkv.weight"; false for a global name.
bool split_layer(const std::string& name, int& layer, std::string& suffix) {
  if (name.rfind("h.", 0) != 0) return false;
  const size_t dot = name.find('.', 2);
  if (dot == std::string::npos || dot == 2) return false;
  for (size_t i = 2; i < dot; i++)
    if (name[i] < '0' || name[i] > '9') return false;
  layer = std::stoi(name.substr(2, dot - 2));
  suffix = name.substr(dot + 1);
  return true;
}

// Rows [part * n, (part + 1) * n) of a row-major tensor whose first dimension is 3n.
// The rows of q, k and v in kvmtrain's fused q|k|v tensors (k and v narrower under grouped-query attention).
std::array<int64_t, 3> qkv_rows(const config::ModelConfig& m) {
  const int64_t kv = int64_t(kv_heads(m)) * (m.d_model / m.n_head);
  return {m.d_model, kv, kv};
}

// Part j of a fused q|k|v tensor t (rows as qkv_rows), named `name`.
ckpt::NamedTensor qkv_part(const ckpt::NamedTensor& t, const config::ModelConfig& m, int j, std::string name) {
  const auto rows = qkv_rows(m);
  const size_t per_row = t.data.size() / size_t(t.shape[0]);
  int64_t first = 0;
  for (int i = 0; i < j; i++) first += rows[i];
  std::vector<int64_t> shape = t.shape;
  shape[0] = rows[j];
  const auto begin = t.data.begin() + ptrdiff_t(size_t(first) * per_row);
  return {std::move(name), shape, std::vector<float>(begin, begin + ptrdiff_t(size_t(rows[j]) * per_row))};
}

}  // namespace

std::vector<ckpt::NamedTensor> tensors_to_paper(const config::ModelConfig& m, const std::vector<ckpt::NamedTensor>& ours) {
  std::vector<ckpt::NamedTensor> out;
  std::set<int> xv_layers;  // layers that get the paper's zero x_v
  for (const auto& t : ours) {
    bool done = false;
    for (const auto& [o, p] : kGlobalNames)
      if (t.name == o) out.push_back({p, t.shape, t.data}), done = true;
    int l;
    std::string suffix;
    if (!done && split_layer(t.name, l, suffix)) {
      const std::string pp = paper_prefix(l);
      if (suffix == "attn.qkv.weight") {
        for (int j = 0; j < 3; j++) out.push_back(qkv_part(t, m, j, pp + "attn.c_" + kQkv[j] + ".weight"));
        if (paper_has_zero_xv(m)) xv_layers.insert(l);
        done = true;
      } else if (suffix == "attn.qkv_shift") {
        for (int j = 0; j < 3; j++) out.push_back(qkv_part(t, m, j, pp + "attn.x_" + kQkv[j]));
        done = true;
      }
      for (const auto& r : kLayerNames)
        if (!done && suffix == r.ours) {
          if (paper_has(m, suffix)) out.push_back({pp + r.theirs, paper_shape(r.shape, t.shape), t.data});
          done = true;
        }
    }
    if (!done) throw std::runtime_error("tensor " + t.name + " has no name in the paper's model");
  }
  const int64_t kv = qkv_rows(m)[2];
  for (int l : xv_layers) out.push_back({paper_prefix(l) + "attn.x_v", {kv}, std::vector<float>(size_t(kv), 0.0f)});
  return out;
}

std::vector<ckpt::NamedTensor> tensors_from_paper(const config::ModelConfig& m, const std::vector<ckpt::NamedTensor>& theirs,
                                                  const std::string& origin, std::vector<std::string>& missing) {
  std::map<std::string, const ckpt::NamedTensor*> by_name;
  for (const auto& t : theirs) by_name[t.name] = &t;
  std::set<std::string> used;
  auto take = [&](const std::string& name, const std::vector<int64_t>& shape) -> const std::vector<float>& {
    auto it = by_name.find(name);
    if (it == by_name.end()) throw std::runtime_error(origin + ": missing tensor " + name);
    if (it->second->shape != shape)
      throw std::runtime_error(origin + ": tensor " + name + " has shape " + shape_str(it->second->shape) +
                               ", the model expects " + shape_str(shape));
    used.insert(name);
    return it->second->data;
  };

  // every tensor of the model's layout, by its name and full shape
  const ModelLayout layout = declare_layout(m, 1, 0);
  std::vector<ckpt::NamedTensor> out;
  for (const TensorView& v : layout.table.views()) {
    const std::vector<int64_t> shape(v.shape.begin(), v.shape.end());
    bool done = false;
    for (const auto& [o, p] : kGlobalNames)
      if (v.name == o) out.push_back({v.name, shape, take(p, shape)}), done = true;
    int l;
    std::string suffix;
    if (!done && split_layer(v.name, l, suffix)) {
      const std::string pp = paper_prefix(l);
      if (suffix == "attn.qkv.weight" || suffix == "attn.qkv_shift") {  // q | k | v rows
        const bool weight = suffix == "attn.qkv.weight";
        ckpt::NamedTensor t{v.name, shape, {}};
        for (int j = 0; j < 3; j++) {
          std::vector<int64_t> part = shape;
          part[0] = qkv_rows(m)[j];
          const std::string x = kQkv[j];
          const auto& d = take(pp + (weight ? "attn.c_" + x + ".weight" : "attn.x_" + x), part);
          t.data.insert(t.data.end(), d.begin(), d.end());
        }
        out.push_back(std::move(t));
        done = true;
      }
      for (const auto& r : kLayerNames)
        if (!done && suffix == r.ours) {
          if (paper_has(m, suffix)) out.push_back({v.name, shape, take(pp + r.theirs, paper_shape(r.shape, shape))});
          else missing.push_back(v.name);
          done = true;
        }
      // the paper's zero x_v beside an rwkv value residual without the shift: unused by both
      if (suffix == "attn.qkv.weight" && paper_has_zero_xv(m) && by_name.count(pp + "attn.x_v"))
        take(pp + "attn.x_v", {qkv_rows(m)[2]});
    }
    if (!done) throw std::runtime_error(origin + ": the model's tensor " + v.name + " has no name in the paper's model");
  }
  for (const auto& t : theirs)
    if (!used.count(t.name)) throw std::runtime_error(origin + ": tensor " + t.name + " is not a parameter of this model");
  return out;
}

config::Config dir_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  json::Value v;
  try {
    v = json::parse(ckpt::read_file(path));
  } catch (const std::exception& e) {
    throw UsageError(path + ": " + e.what());
  }
  if (!v.is_object()) throw UsageError(path + ": expected a JSON object");
  config::Config c;
  c.model = to_model(v.object(), path);
  c.data.tokenizer = config::Tokenizer::gpt2;
  return c;
}

}  // namespace paper
