#include "checkpoints/hf_gpt2.h"

#include <stdexcept>
#include <string>

namespace ckpt {

namespace {

// per-layer suffixes: ours -> HF's, and whether HF's Conv1D stores it transposed
struct LayerName {
  const char* ours;
  const char* hf;
  bool transpose;
};
constexpr LayerName kLayer[] = {
    {"ln_1.weight", "ln_1.weight", false},          {"ln_1.bias", "ln_1.bias", false},
    {"attn.qkv.weight", "attn.c_attn.weight", true}, {"attn.qkv.bias", "attn.c_attn.bias", false},
    {"attn.proj.weight", "attn.c_proj.weight", true}, {"attn.proj.bias", "attn.c_proj.bias", false},
    {"ln_2.weight", "ln_2.weight", false},          {"ln_2.bias", "ln_2.bias", false},
    {"mlp.fc.weight", "mlp.c_fc.weight", true},      {"mlp.fc.bias", "mlp.c_fc.bias", false},
    {"mlp.proj.weight", "mlp.c_proj.weight", true},  {"mlp.proj.bias", "mlp.c_proj.bias", false},
};

NamedTensor transposed(const NamedTensor& t, std::string name) {
  if (t.shape.size() != 2) throw std::runtime_error("tensor " + t.name + ": expected a matrix to transpose");
  const int64_t R = t.shape[0], C = t.shape[1];
  NamedTensor o{std::move(name), {C, R}, std::vector<float>(t.data.size())};
  for (int64_t r = 0; r < R; r++)
    for (int64_t c = 0; c < C; c++) o.data[size_t(c * R + r)] = t.data[size_t(r * C + c)];
  return o;
}

// The first `rows` rows (dropping padding) or zero rows appended (restoring it).
NamedTensor with_rows(const NamedTensor& t, std::string name, int64_t rows) {
  if (t.shape.size() != 2) throw std::runtime_error("tensor " + t.name + ": expected (vocab, d_model)");
  const int64_t C = t.shape[1], keep = std::min(rows, t.shape[0]);
  NamedTensor o{std::move(name), {rows, C}, std::vector<float>(size_t(rows * C), 0.0f)};
  std::copy(t.data.begin(), t.data.begin() + keep * C, o.data.begin());
  return o;
}

bool is_vocab_matrix(const std::string& ours) { return ours == "wte" || ours == "lm_head.weight"; }

// "h.3.attn.qkv.weight" -> layer 3, suffix "attn.qkv.weight"
bool split_layer(const std::string& name, const std::string& prefix, int& layer, std::string& suffix) {
  if (name.rfind(prefix, 0) != 0) return false;
  size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return false;
  for (size_t i = prefix.size(); i < dot; i++)
    if (name[i] < '0' || name[i] > '9') return false;
  layer = std::stoi(name.substr(prefix.size(), dot - prefix.size()));
  suffix = name.substr(dot + 1);
  return true;
}

}  // namespace

std::vector<NamedTensor> gpt2_to_hf(const std::vector<NamedTensor>& ours, int64_t vocab_size) {
  std::vector<NamedTensor> out;
  for (const auto& t : ours) {
    if (t.name == "wte") { out.push_back(with_rows(t, "transformer.wte.weight", vocab_size)); continue; }
    if (t.name == "lm_head.weight") { out.push_back(with_rows(t, "lm_head.weight", vocab_size)); continue; }
    if (t.name == "wpe") { out.push_back({"transformer.wpe.weight", t.shape, t.data}); continue; }
    if (t.name == "ln_f.weight" || t.name == "ln_f.bias") { out.push_back({"transformer." + t.name, t.shape, t.data}); continue; }
    int l;
    std::string suffix;
    bool done = false;
    if (split_layer(t.name, "h.", l, suffix))
      for (const auto& m : kLayer)
        if (suffix == m.ours) {
          std::string hf = "transformer.h." + std::to_string(l) + "." + m.hf;
          out.push_back(m.transpose ? transposed(t, hf) : NamedTensor{hf, t.shape, t.data});
          done = true;
        }
    if (!done) throw std::runtime_error("tensor " + t.name + " has no Hugging Face GPT-2 name (not a pure GPT-2 model)");
  }
  return out;
}

std::vector<NamedTensor> gpt2_from_hf(const std::vector<NamedTensor>& hf, int64_t padded_vocab) {
  std::vector<NamedTensor> out;
  for (const auto& t : hf) {
    std::string n = t.name;
    if (n.rfind("transformer.", 0) == 0) n = n.substr(12);
    if (n == "wte.weight") { out.push_back(with_rows(t, "wte", padded_vocab)); continue; }
    if (n == "lm_head.weight") { out.push_back(with_rows(t, "lm_head.weight", padded_vocab)); continue; }
    if (n == "wpe.weight") { out.push_back({"wpe", t.shape, t.data}); continue; }
    if (n == "ln_f.weight" || n == "ln_f.bias") { out.push_back({n, t.shape, t.data}); continue; }
    int l;
    std::string suffix;
    bool done = false;
    if (split_layer(n, "h.", l, suffix)) {
      if (suffix == "attn.bias" || suffix == "attn.masked_bias") continue;  // causal-mask buffers, not weights
      for (const auto& m : kLayer)
        if (suffix == m.hf) {
          std::string ours = "h." + std::to_string(l) + "." + m.ours;
          out.push_back(m.transpose ? transposed(t, ours) : NamedTensor{ours, t.shape, t.data});
          done = true;
        }
    }
    if (!done) throw std::runtime_error("tensor " + t.name + " is not a Hugging Face GPT-2 weight");
  }
  return out;
}

std::vector<NamedTensor> drop_vocab_padding(const std::vector<NamedTensor>& ours, int64_t vocab_size) {
  std::vector<NamedTensor> out;
  for (const auto& t : ours) out.push_back(is_vocab_matrix(t.name) ? with_rows(t, t.name, vocab_size) : t);
  return out;
}

std::vector<NamedTensor> restore_vocab_padding(const std::vector<NamedTensor>& exported, int64_t padded_vocab) {
  std::vector<NamedTensor> out;
  for (const auto& t : exported) out.push_back(is_vocab_matrix(t.name) ? with_rows(t, t.name, padded_vocab) : t);
  return out;
}

bool has_hf_gpt2_names(const std::vector<NamedTensor>& tensors) {
  for (const auto& t : tensors)
    if (t.name == "transformer.wte.weight" || t.name == "wte.weight") return true;
  return false;
}

}  // namespace ckpt
