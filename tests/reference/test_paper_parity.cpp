// The paper's models against an independent PyTorch model of the paper's backbone
// (tests/reference/paper_ref.py, Debian's torch 1.13, fp32, 1 thread): tiny versions of every
// config in configs/paper/ (each file loaded as it ships, then shrunk: 3 layers, d 32, 2 heads of
// 16, RoPE dims, windows, chunks and budgets scaled with the head and the chunk, vocabulary 100
// padded to 128, muP base 16), plus cases for what no shipped config uses (the linear value
// residual, the layer-0 anchor, grouped-query attention, kvmtrain's RoPE with the paper's shift). Compared: logits, loss,
// every parameter gradient, and the losses of 10 steps of the paper's recipe (AdamW with its
// parameter groups and muP ratios, weight decay scheduled with the lr, linear warm-up and decay,
// no clipping) on a fixed batch.
//
// Tolerances (both sides fp32), as test_backbone_parity:
//   logits: max |diff| <= 1e-5 * max |logit|;   loss: |diff| <= 1e-5;
//   gradients: per tensor, max |diff| <= 1e-4 * max|g_ref| + 1e-7;
//   10-step losses: |diff| <= 1e-4 at every step.
// KVM routing is a hard argmax: the reference reports its smallest merge margin and novelty gap
// over the run, and a case whose margins fall under 1e-3 fails (pick another seed with
// KVM_PARITY_SEED=n and write it into the case table).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/json.h"
#include "tests/reference/parity_harness.h"
#include "trainer/config/config.h"
#include "trainer/model/model.h"

namespace fs = std::filesystem;
using config::Mixer;

namespace {

// A shipped paper config at test size.
config::Config shrink(config::Config c) {
  auto& m = c.model;
  const int hs = m.d_model / m.n_head;
  const int s = m.kvm.chunk / 4;  // chunks of 4 tokens: windows and budgets scale with the chunk
  auto dims = [&](int R) { return R * 16 / hs; };
  m.n_layer = 3, m.d_model = 32, m.n_head = 2, m.max_seq_len = 24;
  m.vocab_size = 100, m.padded_vocab_size = 128;
  m.rope_dims = dims(m.rope_dims ? m.rope_dims : hs / 2), m.swa_rope_dims = dims(m.swa_rope_dims);
  if (m.mup_base_dim) m.mup_base_dim = 16;
  m.swa_window = std::max(1, m.swa_window / s);
  m.kvm.chunk = 4;
  m.kvm.min_len = std::max(m.kvm.min_len ? 1 : 0, m.kvm.min_len / s);
  m.kvm.sat_n = std::max(1, m.kvm.sat_n / s);
  m.kvm.power_f /= std::sqrt(double(s));
  m.kvm.max_slots = m.kvm.max_slots ? std::max(4, m.kvm.max_slots / s) : 0;
  auto& t = c.train;
  t.lr = 1e-2, t.min_lr = 0, t.warmup_steps = 3, t.steps = 10;
  return c;
}

struct Case {
  std::string name;  // the config's path under configs/paper, or a hand-made case's name
  config::Config cfg;
  uint64_t seed = 11;
};

// Seeds picked for clear KVM routing margins where the default, 11, gives a close call.
uint64_t seed_for(const std::string& name) {
  static const std::map<std::string, uint64_t> picked = {
      {"120M_ablation_kvm_no_merge_gate", 12}, {"120M_ablation_kvm_no_sink", 12}, {"120M_kvm_no_append_gate_wd", 15},
      {"120M_kvm_wd", 15}, {"kvmtrain_rope_no_mup", 12}};
  auto it = picked.find(name);
  return it == picked.end() ? 11 : it->second;
}

std::vector<Case> cases() {
  std::vector<Case> out;
  const fs::path root = fs::path(KVMTRAIN_SOURCE_DIR) / "configs" / "paper";
  std::vector<fs::path> files;
  for (const char* size : {"120M", "350M"})
    for (const auto& e : fs::directory_iterator(root / size))
      if (e.path().extension() == ".yaml") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    const std::string name = f.parent_path().filename().string() + "_" + f.stem().string();
    out.push_back({name, shrink(config::load(f.string())), seed_for(name)});
  }
  // what the shipped configs leave out
  const config::Config kvm = shrink(config::load((root / "120M" / "kvm_swa_saturate1024_wd.yaml").string()));
  Case linear{"linear_value_residual", kvm};
  linear.cfg.model.value_residual_mode = config::ValueResidualMode::linear;
  out.push_back(linear);
  Case layer0{"layer0_anchor", kvm};
  layer0.cfg.model.value_residual_anchor = config::ValueResidualAnchor::layer0;
  out.push_back(layer0);
  Case gqa{"gqa", kvm};  // [swa, kvm] with one key/value head for two query heads
  gqa.cfg.model.n_kv_head = 1;
  out.push_back(gqa);
  Case kvmtrain_rope{"kvmtrain_rope_no_mup", kvm, seed_for("kvmtrain_rope_no_mup")};
  kvmtrain_rope.cfg.model.rope_variant = config::RopeVariant::kvmtrain;
  kvmtrain_rope.cfg.model.mup_base_dim = 0;
  kvmtrain_rope.cfg.model.softmax_over_padding = false;
  out.push_back(kvmtrain_rope);
  return out;
}

json::Object model_json(const config::ModelConfig& m) {
  config::Config c;
  c.model = m;
  json::Object o = config::to_json(c).at("model").object();
  json::Array mixers;
  for (Mixer x : m.mixers) mixers.push_back(config::to_string(x));
  o["mixers"] = mixers;
  return o;
}

class PaperParity : public ::testing::TestWithParam<Case> {};

TEST_P(PaperParity, MatchesPyTorch) {
  const config::Config& cfg = GetParam().cfg;
  const auto& m = cfg.model;
  const int B = 2, T = 24;
  Model model(m, B, T);
  model.init(7);
  Rng rng(std::getenv("KVM_PARITY_SEED") ? std::stoull(std::getenv("KVM_PARITY_SEED")) : GetParam().seed);
  const parity::Batch batch = parity::perturb_and_draw(model, m, B, T, rng);

  const auto dir = parity::fresh_dir("kvm_paper_parity_" + GetParam().name);
  json::Object jc = parity::config_json(m, cfg.train, B, T);
  for (const auto& [k, v] : model_json(m)) jc[k] = v;
  json::Value result;
  ASSERT_NO_FATAL_FAILURE(parity::run_reference(dir, "tests/reference/paper_ref.py", model, jc, batch, result));

  if (!result.at("kvm_layers").array().empty()) {
    EXPECT_GE(result.at("min_merge_margin").number(), 1e-3) << "a KVM merge is too close to call: pick another seed";
    EXPECT_GE(result.at("min_novelty_gap").number(), 1e-3) << "a KVM append cut is too close to call: pick another seed";
  }
  // the paper's layer 0 mixes its values with themselves (its gate has no gradient); KVM layers
  // without head temperatures or merge gates leave those tensors unused
  auto unused = [&](const std::string& name) {
    if (name.starts_with("h.0.attn.vres.")) return true;
    if (!m.kvm.head_temps && (name.ends_with("kvm.tau_front") || name.ends_with("kvm.tau_state"))) return true;
    return !m.kvm.merge_gate_keys && !m.kvm.merge_gate_values && name.ends_with("kvm.gate.weight");
  };
  parity::expect_matches_reference(model, cfg, batch, B, T, dir, result, "", unused, 1e-5f);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Configs, PaperParity, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
