#pragma once
// The typed configuration of a run: ONE schema for every section (model, data, train, parallel,
// checkpoint, log). YAML files with `base:` inheritance and `--set key=value` overrides are
// checked key by key against it; any error names the file and line (or the --set) and the key.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "common/json.h"

namespace config {

// ---- the closed choices ----
// Every key whose value is one of a fixed set is an enum class here, and names(E) spells E's
// enumerators in their order: the one place those spellings live. Loading, to_yaml, the key
// reference and the error messages all read them through to_string and parse. Code switches over
// a choice with no default, and the build fails on a switch that misses an enumerator
// (-Werror=switch), so a new one cannot fall through to another's behaviour.
enum class Pos { learned, rope, none };  // model.pos (none: NoPE, see model.swa_rope_dims)
constexpr auto names(Pos) { return std::to_array<std::string_view>({"learned", "rope", "none"}); }
enum class RopeVariant { kvmtrain, paper };  // model.rope_variant
constexpr auto names(RopeVariant) { return std::to_array<std::string_view>({"kvmtrain", "paper"}); }
enum class ModelInit { gpt2, paper };  // model.init
constexpr auto names(ModelInit) { return std::to_array<std::string_view>({"gpt2", "paper"}); }
enum class ValueResidualMode { average, linear, rwkv };  // model.value_residual_mode
constexpr auto names(ValueResidualMode) { return std::to_array<std::string_view>({"average", "linear", "rwkv"}); }
enum class ValueResidualAnchor { layer0, per_mixer };  // model.value_residual_anchor
constexpr auto names(ValueResidualAnchor) { return std::to_array<std::string_view>({"layer0", "per_mixer"}); }
enum class Mlp { gelu, relu2 };  // model.mlp
constexpr auto names(Mlp) { return std::to_array<std::string_view>({"gelu", "relu2"}); }
enum class Mixer { attn, swa, kvm, bswa };  // model.mixers
constexpr auto names(Mixer) { return std::to_array<std::string_view>({"attn", "swa", "kvm", "bswa"}); }
enum class KvmBudget { fixed, power_law, saturating };  // model.kvm.budget
constexpr auto names(KvmBudget) { return std::to_array<std::string_view>({"fixed", "power_law", "saturating"}); }
enum class Tokenizer { gpt2, byte, mqar };  // data.tokenizer (data/tokenizer.h)
constexpr auto names(Tokenizer) { return std::to_array<std::string_view>({"gpt2", "byte", "mqar"}); }
enum class Device { cpu, cuda };  // train.device
constexpr auto names(Device) { return std::to_array<std::string_view>({"cpu", "cuda"}); }
enum class Precision { fp32, bf16 };  // train.precision
constexpr auto names(Precision) { return std::to_array<std::string_view>({"fp32", "bf16"}); }
enum class AttentionBackend { native, cudnn };  // train.attention_backend
constexpr auto names(AttentionBackend) { return std::to_array<std::string_view>({"native", "cudnn"}); }
enum class LrSchedule { cosine, linear, constant };  // train.lr_schedule
constexpr auto names(LrSchedule) { return std::to_array<std::string_view>({"cosine", "linear", "constant"}); }
enum class WeightDecaySchedule { constant, lr };  // train.weight_decay_schedule
constexpr auto names(WeightDecaySchedule) { return std::to_array<std::string_view>({"constant", "lr"}); }
enum class Recompute { none, block };  // train.recompute
constexpr auto names(Recompute) { return std::to_array<std::string_view>({"none", "block"}); }

template <class E>
concept Choice = std::is_enum_v<E> && requires(E e) { names(e); };

// How configs spell `e`.
template <Choice E>
std::string to_string(E e) {
  return std::string(names(e).at(size_t(e)));
}
// The enumerator spelled `name`; nothing when no enumerator is.
template <Choice E>
std::optional<E> parse(std::string_view name) {
  constexpr auto all = names(E{});
  for (size_t i = 0; i < all.size(); i++)
    if (all[i] == name) return E(i);
  return std::nullopt;
}

struct DataSource {
  std::string path;     // a shard directory, a glob, or one .h5 file
  double weight = 1.0;  // share of the mixture (normalised over the sources)
};

struct ModelConfig {
  int vocab_size = 50257;        // the tokenizer's
  int padded_vocab_size = 0;     // 0: vocab_size rounded up to a multiple of 128 (resolved at load)
  bool softmax_over_padding = false;  // padded ids take part in the softmax (the paper's 50304)
  int n_layer = 12;
  int n_head = 12;
  int n_kv_head = 0;             // grouped-query attention: key/value heads, each shared by n_head/n_kv_head queries; 0: n_head
  int d_model = 768;
  int max_seq_len = 1024;
  bool tie_embeddings = true;    // GPT-2 ties the head to the token embedding
  // The backbone (docs/kvm.md section 12); the defaults are GPT-2's.
  Pos pos = Pos::learned;
  int rope_dims = 0;             // R: rotated dims [0,R) of each q/k head, interleaved pairs; 0: head_dim/2
  double rope_base = 10000;
  RopeVariant rope_variant = RopeVariant::kvmtrain;  // frequency schedule and direction of the turn
  ModelInit init = ModelInit::gpt2;  // how the shared tensors start (layout.cpp)
  int mup_base_dim = 0;          // muP: matrices' lr / (d_model/base), weight decay * (d_model/base); 0: off
  Mlp mlp = Mlp::gelu;
  bool qk_norm = false;          // LayerNorm over the head dim on q and k
  bool emb_norm = false;         // LayerNorm after the embedding
  bool token_shift = false;      // RWKV-style token shift on the q/k/v and MLP inputs
  bool qkv_shift = false;        // the paper's: q, k, v each shifted per channel after the projection
  bool mlp_shift = false;        // the paper's MLP shift: x_t + w*(x_{t-1} - x_t)
  bool value_residual = false;   // v_l mixes with an anchor value v_0
  ValueResidualMode value_residual_mode = ValueResidualMode::average;
  ValueResidualAnchor value_residual_anchor = ValueResidualAnchor::layer0;
  double residual_scale = 1.0;   // multiplies each sub-block's output before the residual add
  bool bias = true;              // linear layers carry biases
  bool zero_init_out = false;    // attention/MLP output projections start at zero (the paper)
  std::vector<Mixer> mixers = {Mixer::attn};  // layer i takes entry i mod size
  int swa_window = 256;          // tokens a sliding-window query sees, itself included
  int swa_rope_dims = 0;         // R on swa layers; 0: rope_dims
  double swa_rope_base = 0;      // RoPE base on swa layers; 0: rope_base
  struct Kvm {
    int chunk = 256;
    int window_chunks = 2;
    int sink = 1;
    KvmBudget budget = KvmBudget::fixed;
    int min_len = 256;
    double power_f = 16;
    double power_e = 0.5;
    int sat_n = 1024;
    int max_slots = 0;             // 0: no cap
    bool vlens = true;
    bool head_temps = true;
    bool merge_gate_keys = true;
    bool merge_gate_values = true;
    bool gate_appends = true;
    bool gate_initial_state = false;
  } kvm;
};

struct DataConfig {
  std::vector<DataSource> train;
  std::vector<DataSource> val;
  Tokenizer tokenizer = Tokenizer::gpt2;  // what the shards must have been prepared with
};

struct TrainConfig {
  Device device = Device::cpu;
  Precision precision = Precision::fp32;  // docs/decisions.md: what is bf16
  // full and sliding-window attention: the backend's own kernels, or cuDNN's (cuda and bf16 only)
  AttentionBackend attention_backend = AttentionBackend::native;
  int batch_size = 4;          // sequences per data-parallel rank per micro-step
  int seq_len = 64;
  int grad_accum = 1;
  int steps = 100;
  double lr = 3e-4;
  double min_lr = 0.0;
  int warmup_steps = 0;
  LrSchedule lr_schedule = LrSchedule::cosine;
  double weight_decay = 0.1;
  // lr: the decay at a step is weight_decay * lr_t / lr, following the schedule (warm-up included)
  WeightDecaySchedule weight_decay_schedule = WeightDecaySchedule::constant;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;      // 0 disables clipping
  int eval_every = 0;          // 0: only at the end
  int eval_steps = 10;
  int sample_tokens = 64;
  int64_t seed = 1337;
  Recompute recompute = Recompute::none;  // block: keep only block inputs, recompute in backward
  std::string init_from;        // weights only: a checkpoint, run directory or HF GPT-2 safetensors directory
};

struct ParallelConfig {
  int data = 1;
  int tensor = 1;
  double bucket_mb = 25;  // data-parallel gradient bucket (MiB), reduced during the backward; 0: one
};

struct CheckpointConfig {
  int every = 0;       // steps between checkpoints; 0: none
  int keep_last = 3;
};

struct LogConfig {
  std::string dir = "runs/default";  // the run directory: log.jsonl, config.yaml, checkpoints/
  int print_every = 1;               // progress line every N steps
};

struct Config {
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;
  LogConfig log;
};

// Loads `path` (following `base:` chains) and applies `overrides` ("key=value", value parsed as
// YAML). Throws UsageError with one line on any error.
Config load(const std::string& path, const std::vector<std::string>& overrides = {});
// Same, from YAML text (for tests); `origin` names it in errors.
Config load_string(const std::string& yaml, const std::string& origin, const std::vector<std::string>& overrides = {});
// The resolved config as YAML, every key, in schema order.
std::string to_yaml(const Config& c);
// The same as JSON, nested as in the YAML (model.kvm.chunk is ["model"]["kvm"]["chunk"]), each
// value typed by the schema: numbers, booleans, strings, lists. Lets a section be written out in
// another format without listing its keys again (export's config.json takes "model").
json::Object to_json(const Config& c);
// A Markdown table of every key: name, type, default, meaning (for docs and `--help`).
std::string reference_markdown();

}  // namespace config
