#include "trainer/config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>

#include "common/unreachable.h"
#include "common/usage_error.h"

namespace config {

namespace {

namespace fs = std::filesystem;

// Thrown by a field's parser; the caller adds where the value came from and which key it is.
struct Expected {
  std::string what;
};

std::string scalar_text(const YAML::Node& n) {
  if (n.IsScalar()) return n.Scalar();
  YAML::Emitter e;
  e << YAML::Flow << n;
  return e.c_str();
}

struct Field {
  std::string key, type, default_text, doc;
  std::function<void(Config&, const YAML::Node&)> set;
  std::function<YAML::Node(const Config&)> get;
};

template <class T>
using Ref = std::function<T&(Config&)>;

// show: the value as YAML (default: yaml-cpp's own conversion of T).
template <class T>
Field make(const std::string& key, const std::string& type, Ref<T> ref, std::function<T(const YAML::Node&)> parse,
           const std::string& doc,
           std::function<YAML::Node(const T&)> show = [](const T& v) { return YAML::Node(v); }) {
  Field f{key, type, "", doc, nullptr, nullptr};
  f.set = [ref, parse](Config& c, const YAML::Node& n) { ref(c) = parse(n); };
  f.get = [ref, show](const Config& c) { return show(ref(const_cast<Config&>(c))); };
  f.default_text = scalar_text(f.get(Config{}));
  return f;
}

Field integer(const std::string& key, Ref<int> ref, int64_t lo, int64_t hi, const std::string& doc) {
  std::string expected = "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  return make<int>(key, "int", ref, [=](const YAML::Node& n) {
    int64_t v;
    if (!n.IsScalar() || !YAML::convert<int64_t>::decode(n, v) || v < lo || v > hi) throw Expected{expected};
    return int(v);
  }, doc);
}

Field integer64(const std::string& key, Ref<int64_t> ref, const std::string& doc) {
  return make<int64_t>(key, "int", ref, [](const YAML::Node& n) {
    int64_t v;
    if (!n.IsScalar() || !YAML::convert<int64_t>::decode(n, v) || v < 0) throw Expected{"a non-negative integer"};
    return v;
  }, doc);
}

// lo_open: the lower bound is excluded ((0, hi] for a learning rate, say).
Field number(const std::string& key, Ref<double> ref, double lo, double hi, bool lo_open, const std::string& doc) {
  std::ostringstream e;
  e << "a number in " << (lo_open ? "(" : "[") << lo << ", " << hi << "]";
  std::string expected = e.str();
  return make<double>(key, "float", ref, [=](const YAML::Node& n) {
    double v;
    if (!n.IsScalar() || !YAML::convert<double>::decode(n, v) || v < lo || v > hi || (lo_open && v == lo))
      throw Expected{expected};
    return v;
  }, doc, [](const double& v) {
    // the shortest text that reads back to the same double (0.1, not 0.10000000000000001)
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    return YAML::Node(std::string(buf, r.ptr));
  });
}

Field boolean(const std::string& key, Ref<bool> ref, const std::string& doc) {
  return make<bool>(key, "bool", ref, [](const YAML::Node& n) {
    bool v;
    if (!n.IsScalar() || !YAML::convert<bool>::decode(n, v)) throw Expected{"true or false"};
    return v;
  }, doc);
}

Field string(const std::string& key, Ref<std::string> ref, const std::string& doc) {
  return make<std::string>(key, "string", ref, [](const YAML::Node& n) {
    if (!n.IsScalar() || n.Scalar().empty()) throw Expected{"a non-empty string"};
    return n.Scalar();
  }, doc);
}

// A string that may be empty (empty: unset), e.g. train.init_from.
Field optional_string(const std::string& key, Ref<std::string> ref, const std::string& doc) {
  return make<std::string>(key, "string", ref, [](const YAML::Node& n) {
    if (n.IsNull()) return std::string();
    if (!n.IsScalar()) throw Expected{"a string (empty: none)"};
    return n.Scalar();
  }, doc);
}

// E's names as the reference and the errors list them: "learned | rope".
template <Choice E>
std::string alternatives() {
  std::string out;
  for (std::string_view name : names(E{})) out += (out.empty() ? "" : " | ") + std::string(name);
  return out;
}

// The enumerator of E that the scalar `n` spells; throws Expected{expected} when it spells none.
template <Choice E>
E parse_choice(const YAML::Node& n, const std::string& expected) {
  const std::optional<E> e = n.IsScalar() ? parse<E>(n.Scalar()) : std::nullopt;
  if (!e) throw Expected{expected};
  return *e;
}

// A choice: the config's enum member behind `ref` (E), set from its name.
template <class R, Choice E = std::remove_reference_t<std::invoke_result_t<R, Config&>>>
Field choice(const std::string& key, R ref, const std::string& doc) {
  const std::string expected = "one of " + alternatives<E>();
  return make<E>(key, "enum", ref, [=](const YAML::Node& n) { return parse_choice<E>(n, expected); },
                 doc + " (" + alternatives<E>() + ")", [](const E& e) { return YAML::Node(to_string(e)); });
}

// A non-empty list of choices (a single scalar is a list of one); YAML `[swa, kvm]`.
template <class R, Choice E = typename std::remove_reference_t<std::invoke_result_t<R, Config&>>::value_type>
Field choice_list(const std::string& key, R ref, const std::string& doc) {
  const std::string expected = "a non-empty list of " + alternatives<E>();
  Field f{key, "list of enum", "", doc + " (" + alternatives<E>() + ")", nullptr, nullptr};
  f.set = [ref, expected](Config& c, const YAML::Node& n) {
    std::vector<E> out;
    if (n.IsSequence()) {
      for (const auto& item : n) out.push_back(parse_choice<E>(item, expected));
    } else {
      out.push_back(parse_choice<E>(n, expected));
    }
    if (out.empty()) throw Expected{expected};
    ref(c) = out;
  };
  f.get = [ref](const Config& c) {
    YAML::Node n(YAML::NodeType::Sequence);
    for (E e : ref(const_cast<Config&>(c))) n.push_back(to_string(e));
    n.SetStyle(YAML::EmitterStyle::Flow);
    return n;
  };
  f.default_text = scalar_text(f.get(Config{}));
  return f;
}

// A shard directory or glob, or a list of them, or a list of {path, weight}.
Field sources(const std::string& key, Ref<std::vector<DataSource>> ref, const std::string& doc) {
  const std::string expected = "a path or glob, or a list of {path, weight} with weight > 0";
  auto one = [expected](const YAML::Node& n) {
    DataSource s;
    if (n.IsScalar() && !n.Scalar().empty()) {
      s.path = n.Scalar();
      return s;
    }
    if (!n.IsMap() || !n["path"] || !n["path"].IsScalar()) throw Expected{expected};
    for (auto it = n.begin(); it != n.end(); ++it) {
      std::string k = it->first.as<std::string>();
      if (k != "path" && k != "weight") throw Expected{expected + " (unknown field '" + k + "')"};
    }
    s.path = n["path"].Scalar();
    if (n["weight"] && (!YAML::convert<double>::decode(n["weight"], s.weight) || !(s.weight > 0)))
      throw Expected{expected};
    return s;
  };
  Field f{key, "sources", "[]", doc, nullptr, nullptr};
  f.set = [ref, one, expected](Config& c, const YAML::Node& n) {
    std::vector<DataSource> out;
    if (n.IsSequence()) {
      for (const auto& item : n) out.push_back(one(item));  // [] means none
    } else {
      out.push_back(one(n));
    }
    ref(c) = out;
  };
  f.get = [ref](const Config& c) {
    YAML::Node n(YAML::NodeType::Sequence);
    for (const auto& s : ref(const_cast<Config&>(c))) {
      YAML::Node m;
      m["path"] = s.path;
      m["weight"] = s.weight;
      n.push_back(m);
    }
    return n;
  };
  return f;
}

#define REF(member) [](Config& c) -> auto& { return c.member; }

const std::vector<Field>& schema() {
  static const std::vector<Field> fields = {
      integer("model.vocab_size", REF(model.vocab_size), 2, 1 << 24, "the tokenizer's vocabulary (gpt2: 50257, byte: 257, mqar: the --vocab of its prepare)"),
      integer("model.padded_vocab_size", REF(model.padded_vocab_size), 0, 1 << 24,
              "the only vocabulary size kernels see; 0: vocab_size rounded up to a multiple of 128"),
      boolean("model.softmax_over_padding", REF(model.softmax_over_padding),
              "the padded ids [vocab_size, padded_vocab_size) take part in the softmax, as in the paper's models "
              "(vocabulary 50304); false: they never do"),
      integer("model.n_layer", REF(model.n_layer), 1, 1024, "transformer blocks"),
      integer("model.n_head", REF(model.n_head), 1, 1024, "attention heads per layer"),
      integer("model.n_kv_head", REF(model.n_kv_head), 0, 1024,
              "grouped-query attention (the later paper code's num_key_value_heads): key/value heads, each shared "
              "by n_head/n_kv_head query heads, in attention, sliding-window and KVM layers (KVM keeps one state per "
              "key/value head); 0: n_head"),
      integer("model.d_model", REF(model.d_model), 1, 1 << 16, "model width (a multiple of n_head)"),
      integer("model.max_seq_len", REF(model.max_seq_len), 1, 1 << 22, "longest sequence (learned position table size)"),
      boolean("model.tie_embeddings", REF(model.tie_embeddings), "share the token embedding with the output head"),
      choice("model.pos", REF(model.pos),
             "positions: a learned table added to the embedding, RoPE on q/k, or none (NoPE; swa layers still "
             "rotate model.swa_rope_dims when it is set)"),
      integer("model.rope_dims", REF(model.rope_dims), 0, 1 << 16,
              "R: RoPE rotates dims [0,R) of each q/k head in interleaved pairs (even); 0: head_dim/2"),
      number("model.rope_base", REF(model.rope_base), 1, 1e12, false, "RoPE base (the paper's rope_theta)"),
      choice("model.rope_variant", REF(model.rope_variant),
             "kvmtrain: pair i turns by +base^(-2i/R) per token; paper: by -base^(-i/(R/2-1)) (the paper's "
             "schedule and direction)"),
      choice("model.init", REF(model.init),
             "gpt2: N(0, 0.02) matrices and embedding; paper: embedding U(+-1e-4), qkv U(+-1/sqrt(d)), orthogonal "
             "MLP input and head (gain 0.5*sqrt(V/d)), zero output projections"),
      integer("model.mup_base_dim", REF(model.mup_base_dim), 0, 1 << 16,
              "muP (the paper's mup_base_dim): matrix and head lr / (d_model/base), their weight decay * "
              "(d_model/base); 0: off"),
      choice("model.mlp", REF(model.mlp), "MLP activation (4x expansion); relu2 = relu(x)^2"),
      boolean("model.qk_norm", REF(model.qk_norm), "LayerNorm over the head dim on q and k (weights shared by heads)"),
      boolean("model.emb_norm", REF(model.emb_norm), "LayerNorm after the embedding"),
      boolean("model.token_shift", REF(model.token_shift),
              "RWKV-style token shift of the q/k/v and MLP inputs: mix*x_t + (1-mix)*x_{t-1}, mix learned per channel"),
      boolean("model.qkv_shift", REF(model.qkv_shift),
              "the paper's attention token shift: q, k and v after the projection each become "
              "x_t + w*(x_{t-1} - x_t), w learned per channel, x_{-1} = x_0"),
      boolean("model.mlp_shift", REF(model.mlp_shift),
              "the paper's MLP token shift: x_t + w*(x_{t-1} - x_t), w learned per channel, x_{-1} = 0"),
      boolean("model.value_residual", REF(model.value_residual),
              "values mix with an anchor v_0 (model.value_residual_mode, model.value_residual_anchor)"),
      choice("model.value_residual_mode", REF(model.value_residual_mode),
             "average: v = (v + v_0)/2 (layers > 0); linear: v + lambda*(v_0 - v), lambda learned per layer; rwkv: "
             "v + (v_0 - v)*sigmoid(g + W_up W_down x), a learned LoRA gate (the paper's default)"),
      choice("model.value_residual_anchor", REF(model.value_residual_anchor),
             "v_0: layer 0's values (layer0), or per mixer kind the first such layer's plain value projection of "
             "its own ln_1 of the embedding output (per_mixer, the paper's default)"),
      number("model.residual_scale", REF(model.residual_scale), 0, 1e3, false,
             "multiplies each sub-block's output before it is added to the residual stream"),
      boolean("model.bias", REF(model.bias), "linear layers (qkv, projections, MLP) carry biases"),
      boolean("model.zero_init_out", REF(model.zero_init_out),
              "attention and MLP output projections start at zero (the paper); false: GPT-2's N(0, 0.02/sqrt(2L))"),
      choice_list("model.mixers", REF(model.mixers),
                  "token mixer of each layer, layer i takes entry i mod the list's length"),
      integer("model.swa_window", REF(model.swa_window), 1, 1 << 22,
              "swa layers: a query sees this many tokens, itself included (token-exact causal window)"),
      integer("model.swa_rope_dims", REF(model.swa_rope_dims), 0, 1 << 16,
              "R on swa layers (even); 0: model.rope_dims (none with model.pos: none)"),
      number("model.swa_rope_base", REF(model.swa_rope_base), 0, 1e12, false, "RoPE base on swa layers; 0: model.rope_base"),
      integer("model.kvm.chunk", REF(model.kvm.chunk), 1, 1 << 20, "KVM chunk length C"),
      integer("model.kvm.window_chunks", REF(model.kvm.window_chunks), 1, 1 << 10,
              "KVM window W in chunks: a query chunk sees the previous W-1 chunks and itself exactly"),
      integer("model.kvm.sink", REF(model.kvm.sink), 0, 1 << 20, "KVM sink slots S: never merged into"),
      choice("model.kvm.budget", REF(model.kvm.budget), "KVM state budget schedule (the state never shrinks)"),
      integer("model.kvm.min_len", REF(model.kvm.min_len), 0, 1 << 30, "KVM budget floor (fixed: the budget)"),
      number("model.kvm.power_f", REF(model.kvm.power_f), 0, 1e9, true, "power_law: M* = max(floor(f * ctx^e), min_len)"),
      number("model.kvm.power_e", REF(model.kvm.power_e), 0, 1, false, "power_law exponent e"),
      integer("model.kvm.sat_n", REF(model.kvm.sat_n), 1, 1 << 30, "saturating: M* = max(floor(N*ctx/(N+ctx)), min_len)"),
      integer("model.kvm.max_slots", REF(model.kvm.max_slots), 0, 1 << 30, "KVM cap on slots Mmax; 0: none"),
      boolean("model.kvm.vlens", REF(model.kvm.vlens), "read value s_v/|s_v| * |founding value| (false: s_v/count)"),
      boolean("model.kvm.head_temps", REF(model.kvm.head_temps), "per-head key temperatures tau_front, tau_state"),
      boolean("model.kvm.merge_gate_keys", REF(model.kvm.merge_gate_keys), "merged keys are multiplied by the gate g"),
      boolean("model.kvm.merge_gate_values", REF(model.kvm.merge_gate_values), "merged values are multiplied by the gate g"),
      boolean("model.kvm.gate_appends", REF(model.kvm.gate_appends), "appended slots take the gated key and value"),
      boolean("model.kvm.gate_initial_state", REF(model.kvm.gate_initial_state), "chunk 0 enters the state gated"),
      sources("data.train", REF(data.train), "training shards: a directory, glob or list of {path, weight}"),
      sources("data.val", REF(data.val), "validation shards, same forms as data.train"),
      choice("data.tokenizer", REF(data.tokenizer), "the tokenizer the shards must carry"),
      choice("train.device", REF(train.device), "backend"),
      choice("train.precision", REF(train.precision),
             "bf16: bf16 GEMM operands, fp32 master weights, AdamW state and accumulation"),
      choice("train.attention_backend", REF(train.attention_backend),
             "full and sliding-window attention: the backend's own kernels, or cuDNN's fused flash attention "
             "(cuda and bf16 only)"),
      integer("train.batch_size", REF(train.batch_size), 1, 1 << 20, "sequences per data-parallel rank per micro-step"),
      integer("train.seq_len", REF(train.seq_len), 1, 1 << 22, "tokens per sequence (at most model.max_seq_len)"),
      integer("train.grad_accum", REF(train.grad_accum), 1, 1 << 20, "micro-steps per optimizer step"),
      integer("train.steps", REF(train.steps), 0, 1 << 30, "optimizer steps"),
      number("train.lr", REF(train.lr), 0, 10, true, "peak learning rate"),
      number("train.min_lr", REF(train.min_lr), 0, 10, false, "learning rate at the end of the decay"),
      integer("train.warmup_steps", REF(train.warmup_steps), 0, 1 << 30, "linear warm-up from 0 to lr"),
      choice("train.lr_schedule", REF(train.lr_schedule), "decay after warm-up"),
      number("train.weight_decay", REF(train.weight_decay), 0, 10, false,
             "AdamW decoupled weight decay (not on biases, LayerNorms)"),
      choice("train.weight_decay_schedule", REF(train.weight_decay_schedule),
             "AdamW decay at a step: weight_decay, or weight_decay * lr_t / lr (follows the schedule, warm-up included)"),
      number("train.beta1", REF(train.beta1), 0, 1, false, "AdamW first-moment decay"),
      number("train.beta2", REF(train.beta2), 0, 1, false, "AdamW second-moment decay"),
      number("train.eps", REF(train.eps), 0, 1, true, "AdamW epsilon"),
      number("train.grad_clip", REF(train.grad_clip), 0, 1e9, false, "global gradient-norm clip; 0 disables"),
      integer("train.eval_every", REF(train.eval_every), 0, 1 << 30, "steps between validation; 0: only at the end"),
      integer("train.eval_steps", REF(train.eval_steps), 1, 1 << 30, "validation batches per evaluation"),
      integer("train.sample_tokens", REF(train.sample_tokens), 0, 1 << 20, "tokens sampled at the end; 0: none"),
      integer64("train.seed", REF(train.seed), "seed of initialisation, data order and sampling"),
      choice("train.recompute", REF(train.recompute),
             "block: keep only each block's input and recompute its activations in backward (memory)"),
      optional_string("train.init_from", REF(train.init_from),
             "start from these weights only: a checkpoint, a run directory or a Hugging Face GPT-2 safetensors directory"),
      integer("parallel.data", REF(parallel.data), 1, 1 << 20, "data-parallel ranks"),
      integer("parallel.tensor", REF(parallel.tensor), 1, 1 << 10, "tensor-parallel ranks"),
      number("parallel.bucket_mb", REF(parallel.bucket_mb), 0, 1 << 20, false,
             "data-parallel gradient bucket (MiB): each is reduced during the backward once final; 0: one, after it"),
      integer("checkpoint.every", REF(checkpoint.every), 0, 1 << 30, "steps between checkpoints; 0: none"),
      integer("checkpoint.keep_last", REF(checkpoint.keep_last), 1, 1 << 20, "complete checkpoints kept"),
      string("log.dir", REF(log.dir), "run directory: log.jsonl, config.yaml, checkpoints/"),
      integer("log.print_every", REF(log.print_every), 1, 1 << 30, "steps between progress lines"),
  };
  return fields;
}

#undef REF

const Field* find_field(const std::string& key) {
  for (const auto& f : schema())
    if (f.key == key) return &f;
  return nullptr;
}

bool is_section(const std::string& prefix) {
  for (const auto& f : schema())
    if (f.key.rfind(prefix + ".", 0) == 0) return true;
  return false;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> d(b.size() + 1);
  for (size_t j = 0; j <= b.size(); j++) d[j] = j;
  for (size_t i = 1; i <= a.size(); i++) {
    size_t prev = d[0];
    d[0] = i;
    for (size_t j = 1; j <= b.size(); j++) {
      size_t cur = d[j];
      d[j] = std::min({d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] != b[j - 1])});
      prev = cur;
    }
  }
  return d[b.size()];
}

std::string suggestion(const std::string& key) {
  const Field* best = nullptr;
  size_t best_d = 4;
  for (const auto& f : schema()) {
    size_t d = edit_distance(key, f.key);
    if (d < best_d) best_d = d, best = &f;
  }
  return best ? " (did you mean " + best->key + "?)" : " (see the config reference in README.md)";
}

// One assignment to apply: the value of a schema key and where it came from ("file:line").
struct Entry {
  std::string key;
  YAML::Node value;
  std::string origin;
};

std::string where(const std::string& file, const YAML::Node& n) {
  return file + ":" + std::to_string(n.Mark().line + 1);
}

// Walks a mapping, turning nested sections into dotted keys; stops at schema keys.
void flatten(const YAML::Node& map, const std::string& prefix, const std::string& file, std::vector<Entry>& out) {
  for (auto it = map.begin(); it != map.end(); ++it) {
    std::string name = it->first.as<std::string>();
    std::string key = prefix.empty() ? name : prefix + "." + name;
    if (key == "base") continue;  // inheritance, resolved by collect()
    if (find_field(key)) {
      out.push_back({key, it->second, where(file, it->first)});
    } else if (is_section(key)) {
      if (!it->second.IsMap())
        throw UsageError(where(file, it->first) + ": " + key + ": expected a mapping of " + key + ".* keys");
      flatten(it->second, key, file, out);
    } else {
      throw UsageError(where(file, it->first) + ": unknown key '" + key + "'" + suggestion(key));
    }
  }
}

YAML::Node load_yaml_file(const std::string& path) {
  if (!fs::exists(path)) throw UsageError("config file not found: " + path);
  try {
    return YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw UsageError(path + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  }
}

// Collects the entries of `root` (from `file`), those of its `base:` chain first.
void collect(const YAML::Node& root, const std::string& file, std::vector<Entry>& out, int depth) {
  if (depth > 16) throw UsageError(file + ": base: chain deeper than 16 files (a cycle?)");
  if (root.IsNull()) return;
  if (!root.IsMap()) throw UsageError(file + ": expected a mapping of sections (model, data, train, ...)");
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it->first.as<std::string>() != "base") continue;
    if (!it->second.IsScalar()) throw UsageError(where(file, it->first) + ": base: expected a file path");
    fs::path base = it->second.Scalar();
    if (base.is_relative()) base = fs::path(file).parent_path() / base;
    collect(load_yaml_file(base.string()), base.string(), out, depth + 1);
  }
  flatten(root, "", file, out);
}

void apply(Config& c, const std::vector<Entry>& entries, std::map<std::string, std::string>& origins) {
  for (const auto& e : entries) {
    const Field* f = find_field(e.key);
    try {
      f->set(c, e.value);
    } catch (const Expected& x) {
      throw UsageError(e.origin + ": " + e.key + ": expected " + x.what + ", got '" + scalar_text(e.value) + "'");
    }
    origins[e.key] = e.origin;
  }
}

std::vector<Entry> parse_overrides(const std::vector<std::string>& overrides) {
  std::vector<Entry> out;
  for (const auto& o : overrides) {
    std::string origin = "--set " + o;
    size_t eq = o.find('=');
    if (eq == std::string::npos || eq == 0) throw UsageError(origin + ": expected KEY=VALUE");
    std::string key = o.substr(0, eq);
    YAML::Node value;
    try {
      value = YAML::Load(o.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw UsageError(origin + ": the value is not valid YAML: " + e.msg);
    }
    if (find_field(key)) {
      out.push_back({key, value, origin});
    } else if (is_section(key) && value.IsMap()) {
      std::vector<Entry> nested;
      flatten(value, key, "--set", nested);
      for (auto& n : nested) n.origin = origin;
      out.insert(out.end(), nested.begin(), nested.end());
    } else {
      throw UsageError(origin + ": unknown key '" + key + "'" + suggestion(key));
    }
  }
  return out;
}

// The ids of the tokenizer's vocabulary, end-of-text included (data/tokenizer.h); 0: the data's
// (mqar: any even size, the --vocab its shards were prepared with, which the loader checks).
int vocab_size_of(Tokenizer tokenizer) {
  switch (tokenizer) {
    case Tokenizer::gpt2: return 50257;
    case Tokenizer::byte: return 257;
    case Tokenizer::mqar: return 0;
  }
  unreachable();
}

// Checks that involve several keys, naming the key whose value is out of line.
void validate(Config& c, const std::map<std::string, std::string>& origins) {
  auto fail = [&](const std::string& key, const std::string& what) {
    auto it = origins.find(key);
    std::string origin = it == origins.end() ? "default" : it->second;
    throw UsageError(origin + ": " + key + ": " + what);
  };
  auto& m = c.model;
  if (m.padded_vocab_size == 0) m.padded_vocab_size = (m.vocab_size + 127) / 128 * 128;
  if (m.padded_vocab_size < m.vocab_size)
    fail("model.padded_vocab_size", "expected at least model.vocab_size (" + std::to_string(m.vocab_size) + ")");
  if (m.d_model % m.n_head != 0)
    fail("model.d_model", "expected a multiple of model.n_head (" + std::to_string(m.n_head) + ")");
  const int hs = m.d_model / m.n_head;
  if (m.n_kv_head != 0 && m.n_head % m.n_kv_head != 0)
    fail("model.n_kv_head", "expected a divisor of model.n_head (" + std::to_string(m.n_head) + ")");
  if (m.n_kv_head != 0 && m.n_kv_head != m.n_head && c.parallel.tensor > 1)
    fail("model.n_kv_head", "expected model.n_head with parallel.tensor > 1 (grouped-query attention is not split "
                            "over tensor ranks yet)");
  if (m.rope_dims % 2 != 0 || m.rope_dims > hs)
    fail("model.rope_dims", "expected an even number at most the head dim (" + std::to_string(hs) + ")");
  if (m.swa_rope_dims % 2 != 0 || m.swa_rope_dims > hs)
    fail("model.swa_rope_dims", "expected an even number at most the head dim (" + std::to_string(hs) + ")");
  if (m.kvm.sink >= m.kvm.chunk) fail("model.kvm.sink", "expected fewer than model.kvm.chunk slots");
  const bool has_bswa = std::find(m.mixers.begin(), m.mixers.end(), Mixer::bswa) != m.mixers.end();
  if (has_bswa && m.kvm.sink != 0)
    fail("model.kvm.sink", "expected 0 with bswa layers (their window has no sink tokens)");
  if (m.qkv_shift && m.token_shift)
    fail("model.qkv_shift", "cannot be combined with model.token_shift, which already shifts the attention input");
  if (m.mlp_shift && m.token_shift)
    fail("model.mlp_shift", "cannot be combined with model.token_shift, which already shifts the MLP input");
  if (c.train.seq_len > m.max_seq_len)
    fail("train.seq_len", "expected at most model.max_seq_len (" + std::to_string(m.max_seq_len) + ")");
  if (c.train.min_lr > c.train.lr) fail("train.min_lr", "expected at most train.lr");
  if (c.train.attention_backend == AttentionBackend::cudnn) {
    const std::string key = "train.attention_backend";
    if (c.train.device != Device::cuda) fail(key, "cudnn needs train.device: cuda");
    if (c.train.precision != Precision::bf16)
      fail(key, "cudnn needs train.precision: bf16 (cuDNN's fused attention takes bf16 inputs)");
    const bool attends = std::any_of(m.mixers.begin(), m.mixers.end(), [](Mixer x) { return x != Mixer::kvm; });
    if (attends && (hs % 8 != 0 || hs > 128))
      fail(key, "cudnn needs a head dim (model.d_model / model.n_head) that is a multiple of 8 and at most 128, got " +
                    std::to_string(hs));
  }
  const int tokenizer_vocab = vocab_size_of(c.data.tokenizer);
  if (tokenizer_vocab == 0 && (m.vocab_size % 2 != 0 || m.vocab_size < 4))
    fail("model.vocab_size", "expected an even number >= 4 (the --vocab of prepare --synthetic mqar) for "
                             "data.tokenizer mqar");
  if (tokenizer_vocab != 0 && m.vocab_size != tokenizer_vocab)
    fail("model.vocab_size", "expected " + std::to_string(tokenizer_vocab) + " for data.tokenizer " +
                                 to_string(c.data.tokenizer));
}

// "model.kvm.chunk" -> {"model", "kvm", "chunk"}
std::vector<std::string> key_parts(const std::string& key) {
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  return parts;
}

// A key's value in `c` as JSON, typed by the schema (what get() gives is YAML text).
json::Value json_value(const Field& f, const Config& c) {
  const YAML::Node n = f.get(c);
  if (f.type == "int") return n.as<int64_t>();
  if (f.type == "float") return n.as<double>();
  if (f.type == "bool") return n.as<bool>();
  if (f.type == "list of enum") {
    json::Array items;
    for (const auto& item : n) items.push_back(item.Scalar());
    return items;
  }
  if (f.type == "sources") {
    json::Array items;
    for (const auto& s : n)
      items.push_back(json::Object{{"path", s["path"].Scalar()}, {"weight", s["weight"].as<double>()}});
    return items;
  }
  return n.Scalar();  // string, enum
}

Config build(std::vector<Entry> entries, const std::vector<std::string>& overrides) {
  auto more = parse_overrides(overrides);
  entries.insert(entries.end(), more.begin(), more.end());
  Config c;
  std::map<std::string, std::string> origins;
  apply(c, entries, origins);
  validate(c, origins);
  return c;
}

}  // namespace

Config load(const std::string& path, const std::vector<std::string>& overrides) {
  std::vector<Entry> entries;
  collect(load_yaml_file(path), path, entries, 0);
  return build(std::move(entries), overrides);
}

Config load_string(const std::string& yaml, const std::string& origin, const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw UsageError(origin + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  }
  std::vector<Entry> entries;
  collect(root, origin, entries, 0);
  return build(std::move(entries), overrides);
}

std::string to_yaml(const Config& c) {
  YAML::Node root(YAML::NodeType::Map);
  for (const auto& f : schema()) {
    const std::vector<std::string> parts = key_parts(f.key);
    YAML::Node node = root;
    for (size_t i = 0; i + 1 < parts.size(); i++) {
      if (!node[parts[i]]) node[parts[i]] = YAML::Node(YAML::NodeType::Map);
      node.reset(node[parts[i]]);
    }
    node[parts.back()] = f.get(c);
  }
  YAML::Emitter e;
  e << root;
  return std::string(e.c_str()) + "\n";
}

json::Object to_json(const Config& c) {
  json::Object root;
  for (const auto& f : schema()) {
    const std::vector<std::string> parts = key_parts(f.key);
    json::Object* section = &root;
    for (size_t i = 0; i + 1 < parts.size(); i++) {
      json::Value& inner = (*section)[parts[i]];
      if (!inner.is_object()) inner = json::Object{};
      section = &inner.object();
    }
    (*section)[parts.back()] = json_value(f, c);
  }
  return root;
}

std::string reference_markdown() {
  std::ostringstream o;
  o << "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (const auto& f : schema())
    o << "| `" << f.key << "` | " << f.type << " | `" << f.default_text << "` | " << f.doc << " |\n";
  return o.str();
}

}  // namespace config
