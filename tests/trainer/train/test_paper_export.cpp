// `kvmtrain export --format kvm-paper` and its import, on a small [swa, kvm] hybrid of the paper's
// backbone (rwkv value residual, q/k/v and MLP shifts): config.json's keys and the safetensors'
// names and shapes are exactly the paper's, export then import (train.init_from, forward, export)
// is bit-exact, and what cannot be read or written is refused in one line naming the key.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "checkpoints/safetensors.h"
#include "common/json.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;

// config.json of the hybrid: every key of the paper's MixerConfigDataclass, then PretrainedConfig's.
const char* const kConfigKeys[] = {
    "model_class_path", "vocab_size", "num_hidden_layers", "num_attention_heads", "d_qk_head", "d_v_head", "d_head",
    "hidden_size", "mup_base_dim", "rope_theta", "rope_partial_dim", "alt_rope_theta", "alt_rope_partial_dim",
    "alt_share_v0", "ffn_expansion", "token_mixer", "token_mixer_class_path", "alt_token_mixer",
    "alt_token_mixer_class_path", "alt_layer_every", "use_tokenshift_ffn", "use_block_lambdas", "use_skip_connections",
    "use_l2wrap", "logit_softcap", "residual_scale", "use_value_residual", "gptalpha_value_residual_mode",
    "gptalpha_token_shift_mode", "kvm_value_residual_mode", "kvm_token_shift_mode",
    "kvm_apply_merge_gate_to_initial_state", "kvm_apply_merge_gate_to_appends", "kvm_use_merge_gate_keys",
    "kvm_use_merge_gate_values", "kvm_use_head_temps", "kvm_use_vlens", "ovq_value_residual_mode",
    "ovq_token_shift_mode", "use_tokenshift_att", "swa_value_residual_mode", "swa_token_shift_mode", "swa_window_size",
    "ovq_window_size", "ovq_chunk_size", "ovq_max_centroids", "ovq_normalize_centroids", "ovq_use_min_state_size",
    "ovq_use_counts_for_lr_only", "ovq_use_delta_rule", "kda_expand_k", "kda_expand_v", "kda_conv_size",
    "kda_conv_bias", "kda_allow_neg_eigval", "kda_token_shift_mode", "kda_value_residual_mode",
    "gated_deltanet_expand_k", "gated_deltanet_expand_v", "gated_deltanet_num_kv_heads", "gated_deltanet_conv_size",
    "gated_deltanet_conv_bias", "gated_deltanet_use_mamba_gate", "gated_deltanet_token_shift_mode",
    "gated_deltanet_value_residual_mode", "sink_len", "chunk_len", "n_max_d_chunks", "n_bswa_chunks",
    "state_budget_mode", "state_growth_factor", "state_growth_exponent", "state_round_down", "state_min_len",
    "state_saturation_n", "use_overflow_v_key_weighting", "use_state_deltarule", "use_state_decay",
    "lact_value_residual_mode", "lact_token_shift_mode", "lact_actual_rope_partial_dim", "lact_lact_window_size",
    "lact_chunk_size", "lact_num_fw_heads", "lact_inter_multi", "lact_norm_eps", "lact_attn_qk_norm",
    "lact_w0_w2_low_rank", "lact_fw_init_gain", "lact_ttt_lag", "lact_factor", "lact_use_muon",
    "lact_learnable_muon_lr", "lact_muon_lr_reduce_exp", "lact_use_momentum", "lact_ttt_prenorm", "lact_ttt_nope",
    "lact_no_v_silu", "lact_use_bswa", "param_dtype",
    // PretrainedConfig's
    "model_type", "architectures", "tie_word_embeddings", "torch_dtype", "pad_token_id", "bos_token_id",
    "eos_token_id"};

// model.safetensors of the hybrid (d 64, 2 heads of 32, value gate rank 32, vocabulary 50304):
// layer 0 swa, layer 1 kvm, as the paper's modules name and shape them.
std::map<std::string, std::vector<int64_t>> expected_tensors() {
  std::map<std::string, std::vector<int64_t>> t = {
      {"transformer.wte.weight", {50304, 64}}, {"transformer.ln_emb.weight", {64}}, {"transformer.ln_emb.bias", {64}},
      {"transformer.ln_head.weight", {64}},    {"transformer.ln_head.bias", {64}},  {"lm_head.weight", {50304, 64}}};
  for (int l = 0; l < 2; l++) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    for (const char* n : {"ln_attn.weight", "ln_attn.bias", "ln_mlp.weight", "ln_mlp.bias", "attn.x_q", "attn.x_k",
                          "attn.x_v"})
      t[p + n] = {64};
    for (const char* n : {"attn.c_q.weight", "attn.c_k.weight", "attn.c_v.weight", "attn.c_proj.weight"}) t[p + n] = {64, 64};
    for (const char* n : {"attn.ln_q.weight", "attn.ln_q.bias", "attn.ln_k.weight", "attn.ln_k.bias"}) t[p + n] = {32};
    t[p + "attn.v_gate0"] = {1, 1, 64};
    t[p + "attn.v_gate1.weight"] = {32, 64};
    t[p + "attn.v_gate2.weight"] = {64, 32};
    t[p + "mlp.x_k"] = {1, 1, 64};
    t[p + "mlp.c_fc.weight"] = {256, 64};
    t[p + "mlp.c_proj.weight"] = {64, 256};
  }
  const std::string k = "transformer.h.1.attn.";
  t[k + "ln_s_k.weight"] = {32};
  t[k + "ln_s_k.bias"] = {32};
  t[k + "key_weighting.weight"] = {2, 64};
  t[k + "front_head_temp"] = {2};
  t[k + "state_head_temp"] = {2};
  return t;
}

// The dtypes a safetensors header declares.
std::set<std::string> dtypes(const fs::path& file) {
  const std::string bytes = test_util::slurp(file);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  const json::Value header = json::parse(bytes.substr(8, n));
  std::set<std::string> out;
  for (const auto& [name, entry] : header.object())
    if (name != "__metadata__") out.insert(entry.at("dtype").string());
  return out;
}

class PaperExport : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string name = "kvm_paper_export_";
    name += std::to_string(::getpid());
    root = fs::temp_directory_path() / name;
    fs::remove_all(root);
    fs::create_directories(root / "text");
    for (int d = 0; d < 4; d++) {
      std::ofstream f(root / "text" / (std::to_string(d) + ".txt"));
      for (int i = 0; i < 12; i++) f << "Keys and values are merged into means, " << d + i << " and the state grows.\n";
    }
    auto r = test_util::kvmtrain("prepare --quiet --input " + (root / "text").string() + " --output " +
                                     (root / "data").string(), root);
    ASSERT_EQ(r.status, 0) << r.err;
    std::ofstream(root / "hybrid.yaml")
        << "base: " KVMTRAIN_SOURCE_DIR "/configs/paper/backbone.yaml\n"
           "model: {n_layer: 2, n_head: 2, d_model: 64, max_seq_len: 64, rope_dims: 8, mup_base_dim: 64,\n"
           "        mixers: [swa, kvm], swa_window: 16, swa_rope_dims: 32, swa_rope_base: 500,\n"
           "        kvm: {chunk: 8, min_len: 4, max_slots: 32, budget: power_law, power_f: 2}}\n"
           "data: {train: " << (root / "data/train").string() << ", val: " << (root / "data/val").string() << "}\n"
           "train: {batch_size: 2, seq_len: 32, grad_accum: 1, steps: 2, lr: 1e-2, warmup_steps: 0, eval_steps: 1,\n"
           "        sample_tokens: 0, recompute: none}\n"
           "checkpoint: {every: 2}\n"
           "log: {dir: " << (root / "run").string() << "}\n";
    r = run("train " + (root / "hybrid.yaml").string());
    ASSERT_EQ(r.status, 0) << r.err;
    ckpt_dir = root / "run/checkpoints/step_00000002";
    ASSERT_TRUE(fs::exists(ckpt_dir / "manifest.json"));
    r = run("export " + (root / "run").string() + " --format kvm-paper --output " + (root / "exp").string());
    ASSERT_EQ(r.status, 0) << r.err;
    std::mt19937 gen(11);
    std::ofstream toks(root / "tokens.txt");
    for (int n = 0; n < 2; n++) {
      for (int t = 0; t < 20; t++) toks << (t ? " " : "") << std::uniform_int_distribution<int>(0, 50256)(gen);
      toks << "\n";
    }
  }
  static void TearDownTestSuite() { fs::remove_all(root); }
  static test_util::CliResult run(const std::string& args) { return test_util::kvmtrain(args, root); }
  static fs::path root, ckpt_dir;
};
fs::path PaperExport::root, PaperExport::ckpt_dir;

TEST_F(PaperExport, ConfigKeysAndTensorsAreExactlyThePapers) {
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(root / "exp")) files.insert(e.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{"config.json", "model.safetensors", "vocab.json", "merges.txt",
                                          "tokenizer_config.json"}))
      << "no temporary file left";
  EXPECT_EQ(test_util::slurp(root / "exp/vocab.json"), test_util::slurp(KVMTRAIN_SOURCE_DIR "/data/gpt2/encoder.json"));
  EXPECT_EQ(test_util::slurp(root / "exp/merges.txt"), test_util::slurp(KVMTRAIN_SOURCE_DIR "/data/gpt2/vocab.bpe"));

  const json::Value cfg = json::parse(test_util::slurp(root / "exp/config.json"));
  std::set<std::string> keys;
  for (const auto& [k, v] : cfg.object()) keys.insert(k);
  EXPECT_EQ(keys, std::set<std::string>(std::begin(kConfigKeys), std::end(kConfigKeys)));
  const std::map<std::string, std::string> values = {
      {"model_type", "\"rwkv7backbone\""}, {"architectures", "[\"RWKV7BackboneForCausalLM\"]"},
      {"vocab_size", "50304"},             {"num_hidden_layers", "2"},
      {"num_attention_heads", "2"},        {"hidden_size", "64"},
      {"mup_base_dim", "64"},              {"token_mixer", "\"kvm\""},
      {"alt_token_mixer", "\"swa\""},      {"alt_layer_every", "2"},
      {"rope_partial_dim", "8"},           {"rope_theta", "10000"},
      {"alt_rope_partial_dim", "32"},      {"alt_rope_theta", "500"},
      {"alt_share_v0", "0"},               {"use_tokenshift_att", "1"},
      {"use_tokenshift_ffn", "1"},         {"use_value_residual", "1"},
      {"kvm_value_residual_mode", "\"rwkv\""}, {"swa_value_residual_mode", "\"rwkv\""},
      {"swa_window_size", "16"},           {"sink_len", "1"},
      {"chunk_len", "8"},                  {"n_bswa_chunks", "2"},
      {"n_max_d_chunks", "4"},             {"state_budget_mode", "\"power_law\""},
      {"state_growth_factor", "2"},        {"state_min_len", "4"},
      {"residual_scale", "1"},             {"tie_word_embeddings", "false"},
      {"torch_dtype", "\"float32\""},      {"eos_token_id", "50256"}};
  for (const auto& [k, v] : values) EXPECT_EQ(json::dump(cfg.at(k)), v) << k;

  std::map<std::string, std::vector<int64_t>> got;
  for (const auto& t : ckpt::read_safetensors((root / "exp/model.safetensors").string()).tensors) got[t.name] = t.shape;
  EXPECT_EQ(got, expected_tensors());
  EXPECT_EQ(dtypes(root / "exp/model.safetensors"), std::set<std::string>{"F32"});
}

TEST_F(PaperExport, ExportThenImportIsBitExact) {
  const auto original = ckpt::read_safetensors((ckpt_dir / "model.safetensors").string());
  auto r = run("train " + (root / "hybrid.yaml").string() + " --set train.init_from=" + (root / "exp").string() +
               " --set train.steps=0 --set log.dir=" + (root / "back").string());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << "the config maps back to the run's model: " << r.err;
  const auto back = ckpt::read_safetensors((root / "back/checkpoints/step_00000000/model.safetensors").string());
  ASSERT_EQ(back.tensors.size(), original.tensors.size());
  for (const auto& t : original.tensors) {
    ASSERT_NE(back.find(t.name), nullptr) << t.name;
    EXPECT_EQ(back.at(t.name).shape, t.shape) << t.name;
    EXPECT_TRUE(back.at(t.name).data == t.data) << t.name << " differs";
  }
  // the directory is a CKPT_OR_RUN: forward runs the same model as the run's checkpoint
  for (const std::string& from : {(root / "run").string(), (root / "exp").string()}) {
    r = run("forward " + from + " --tokens " + (root / "tokens.txt").string() + " --output " + from + ".fw.safetensors");
    ASSERT_EQ(r.status, 0) << r.err;
  }
  const auto a = ckpt::read_safetensors((root / "run.fw.safetensors").string());
  const auto b = ckpt::read_safetensors((root / "exp.fw.safetensors").string());
  EXPECT_TRUE(a.at("logits").data == b.at("logits").data);
  EXPECT_EQ(a.at("loss").data, b.at("loss").data);
  // and exports again to the same tensors
  r = run("export " + (root / "exp").string() + " --format kvm-paper --output " + (root / "exp2").string());
  ASSERT_EQ(r.status, 0) << r.err;
  const auto e1 = ckpt::read_safetensors((root / "exp/model.safetensors").string());
  const auto e2 = ckpt::read_safetensors((root / "exp2/model.safetensors").string());
  ASSERT_EQ(e1.tensors.size(), e2.tensors.size());
  for (const auto& t : e1.tensors) EXPECT_TRUE(e2.at(t.name).data == t.data) << t.name;
  EXPECT_EQ(test_util::slurp(root / "exp/config.json"), test_util::slurp(root / "exp2/config.json"));
}

TEST_F(PaperExport, RefusalsAreOneLineNamingTheKey) {
  // a config.json kvmtrain cannot represent
  fs::remove_all(root / "bad");
  fs::create_directories(root / "bad");
  fs::copy(root / "exp/model.safetensors", root / "bad/model.safetensors");
  json::Value cfg = json::parse(test_util::slurp(root / "exp/config.json"));
  cfg.object()["use_l2wrap"] = 1;
  std::ofstream(root / "bad/config.json") << json::dump(cfg, 2);
  auto r = run("forward " + (root / "bad").string() + " --tokens " + (root / "tokens.txt").string() + " --output " +
               (root / "x.safetensors").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err.rfind("kvmtrain: error: " + (root / "bad/config.json").string() + ": use_l2wrap = 1:", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;

  // a tensor of the wrong shape names the tensor
  auto f = ckpt::read_safetensors((root / "exp/model.safetensors").string());
  for (auto& t : f.tensors)
    if (t.name == "transformer.h.1.attn.v_gate0") t.shape = {64};
  std::ofstream(root / "bad/model.safetensors", std::ios::binary) << ckpt::safetensors_bytes(f.tensors, ckpt::DType::F32);
  std::ofstream(root / "bad/config.json") << test_util::slurp(root / "exp/config.json");
  r = run("forward " + (root / "bad").string() + " --tokens " + (root / "tokens.txt").string() + " --output " +
          (root / "x.safetensors").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("tensor transformer.h.1.attn.v_gate0 has shape [64], the model expects [1, 1, 64]"),
            std::string::npos) << r.err;

  // a model the paper's code cannot express
  r = run("train " + (root / "hybrid.yaml").string() + " --set model.pos=learned --set train.steps=0 --set log.dir=" +
          (root / "learned").string());
  ASSERT_EQ(r.status, 0) << r.err;
  r = run("export " + (root / "learned").string() + " --format kvm-paper --output " + (root / "x").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("model.pos: "), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(fs::exists(root / "x")) << "refused before writing";
}

}  // namespace

namespace {

// Grouped-query attention travels as the later paper code's num_key_value_heads, its k and v
// projections (and x_k, x_v, the value gate, the KVM gate) one key/value head wide.
TEST_F(PaperExport, GroupedQueryAttentionRoundTrips) {
  const std::string gqa = " --set model.n_kv_head=1 --set log.dir=" + (root / "gqa").string();
  auto r = run("train " + (root / "hybrid.yaml").string() + gqa);
  ASSERT_EQ(r.status, 0) << r.err;
  r = run("export " + (root / "gqa").string() + " --format kvm-paper --output " + (root / "gqa_exp").string());
  ASSERT_EQ(r.status, 0) << r.err;
  const json::Value cfg = json::parse(test_util::slurp(root / "gqa_exp/config.json"));
  EXPECT_EQ(json::dump(cfg.at("num_key_value_heads")), "1");
  const auto exp = ckpt::read_safetensors((root / "gqa_exp/model.safetensors").string());
  for (const char* name : {"transformer.h.1.attn.c_k.weight", "transformer.h.1.attn.c_v.weight"})
    EXPECT_EQ(exp.at(name).shape, (std::vector<int64_t>{32, 64})) << name;
  EXPECT_EQ(exp.at("transformer.h.1.attn.key_weighting.weight").shape, (std::vector<int64_t>{1, 64}));
  EXPECT_EQ(exp.at("transformer.h.0.attn.x_v").shape, (std::vector<int64_t>{32}));
  r = run("train " + (root / "hybrid.yaml").string() + " --set model.n_kv_head=1 --set train.init_from=" +
          (root / "gqa_exp").string() + " --set train.steps=0 --set log.dir=" + (root / "gqa_back").string());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << r.err;
  const auto a = ckpt::read_safetensors((root / "gqa/checkpoints/step_00000002/model.safetensors").string());
  const auto b = ckpt::read_safetensors((root / "gqa_back/checkpoints/step_00000000/model.safetensors").string());
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& t : a.tensors) EXPECT_TRUE(b.at(t.name).data == t.data) << t.name;
}

}  // namespace
