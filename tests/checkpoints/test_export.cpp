// export, import (train.init_from), forward and generate on a tiny GPT-2-tokenizer model:
// the safetensors file checked by an independent Python reader, the logits by the PyTorch
// reference, the HF tokenizer files, export -> import bit-exact, and one-line errors.
#include <random>

#include "checkpoints/safetensors.h"
#include "trainer/config/config.h"
#include "tests/checkpoints/run_fixture.h"

namespace {

using namespace ckpt_test;

class Export : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root = fs::temp_directory_path() / ("kvm_export_" + std::to_string(::getpid()));
    fs::remove_all(root);
    fs::create_directories(root / "text");
    for (int d = 0; d < 4; d++)
      std::ofstream(root / "text" / ("d" + std::to_string(d) + ".txt")) << "In the beginning was the word, " << d
                                                                         << " and the word was with the model.\n";
    auto r = test_util::kvmtrain("prepare --quiet --input " + (root / "text").string() + " --output " +
                                     (root / "data").string(), root);
    ASSERT_EQ(r.status, 0) << r.err;
    std::ofstream(root / "gpt2.yaml") << "model: {n_layer: 2, n_head: 2, d_model: 32, max_seq_len: 32}\n"
                                         "data: {train: " << (root / "data/train").string() << ", val: "
                                      << (root / "data/val").string() << "}\n"
                                      "train: {batch_size: 2, seq_len: 16, steps: 3, lr: 1e-2, eval_steps: 1, sample_tokens: 0}\n"
                                      "checkpoint: {every: 3}\n"
                                      "log: {dir: " << (root / "run").string() << "}\n";
    r = test_util::kvmtrain("train " + (root / "gpt2.yaml").string(), root);
    ASSERT_EQ(r.status, 0) << r.err;
    ckpt_dir = root / "run/checkpoints/step_00000003";
    ASSERT_TRUE(fs::exists(ckpt_dir / "manifest.json"));
    // three sequences of 12 tokens
    std::mt19937 gen(7);
    std::ofstream toks(root / "tokens.txt");
    for (int n = 0; n < 3; n++) {
      for (int t = 0; t < 12; t++) toks << (t ? " " : "") << std::uniform_int_distribution<int>(0, 50256)(gen);
      toks << "\n";
    }
  }
  static void TearDownTestSuite() { fs::remove_all(root); }
  static test_util::CliResult run(const std::string& args) { return test_util::kvmtrain(args, root); }
  static fs::path root, ckpt_dir;
};
fs::path Export::root, Export::ckpt_dir;

TEST_F(Export, SafetensorsCheckedByPythonAndLogitsMatchPyTorch) {
  auto r = run("export " + (root / "run").string() + " --format safetensors --output " + (root / "exp32").string());
  ASSERT_EQ(r.status, 0) << r.err;
  r = run("export " + ckpt_dir.string() + " --output " + (root / "exp16").string() + " --dtype bf16");
  ASSERT_EQ(r.status, 0) << r.err;
  r = run("forward " + (root / "run").string() + " --tokens " + (root / "tokens.txt").string() + " --output " +
          (root / "fw.safetensors").string());
  ASSERT_EQ(r.status, 0) << r.err;
  const char* py = std::getenv("KVMTRAIN_PYTHON");
  std::string cmd = std::string(py ? py : "python3") + " " + KVMTRAIN_SOURCE_DIR "/tests/reference/check_export.py " +
                    (root / "exp32").string() + " " + (root / "exp16").string() + " " +
                    (root / "fw.safetensors").string() + " " + (root / "tokens.txt").string() + " >" +
                    (root / "py.out").string() + " 2>&1";
  int st = std::system(cmd.c_str());
  EXPECT_EQ(st, 0) << test_util::slurp(root / "py.out");

  // Hugging Face's config keys and tokenizer files
  auto cfg = json::parse(test_util::slurp(root / "exp32/config.json"));
  EXPECT_EQ(cfg.at("model_type").string(), "gpt2");
  EXPECT_EQ(cfg.at("vocab_size").integer(), 50257);
  EXPECT_EQ(cfg.at("n_embd").integer(), 32);
  EXPECT_EQ(cfg.at("n_positions").integer(), 32);
  EXPECT_EQ(cfg.at("activation_function").string(), "gelu_new");
  EXPECT_EQ(test_util::slurp(root / "exp32/vocab.json"), test_util::slurp(KVMTRAIN_SOURCE_DIR "/data/gpt2/encoder.json"));
  EXPECT_EQ(test_util::slurp(root / "exp32/merges.txt"), test_util::slurp(KVMTRAIN_SOURCE_DIR "/data/gpt2/vocab.bpe"));
  auto f = ckpt::read_safetensors((root / "exp32/model.safetensors").string());
  EXPECT_EQ(f.find("lm_head.weight"), nullptr) << "a tied head is not stored (HF convention)";
}

TEST_F(Export, ExportThenImportGivesBackTheSameWeights) {
  ASSERT_EQ(run("export " + ckpt_dir.string() + " --output " + (root / "rt").string()).status, 0);
  const auto original = ckpt::read_safetensors((ckpt_dir / "model.safetensors").string());
  for (const std::string& from : {(root / "rt").string(), ckpt_dir.string(), (root / "run").string()}) {
    fs::remove_all(root / "run2");
    auto r = run("train " + (root / "gpt2.yaml").string() + " --set train.init_from=" + from +
                 " --set train.steps=0 --set log.dir=" + (root / "run2").string());
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("initialised the weights from"), std::string::npos) << r.out;
    const auto back = ckpt::read_safetensors((root / "run2/checkpoints/step_00000000/model.safetensors").string());
    ASSERT_EQ(back.tensors.size(), original.tensors.size());
    for (const auto& t : original.tensors) {
      ASSERT_NE(back.find(t.name), nullptr) << t.name;
      EXPECT_EQ(back.at(t.name).shape, t.shape) << t.name;
      EXPECT_TRUE(back.at(t.name).data == t.data) << from << ": " << t.name << " differs";
    }
  }
  // a model of another shape names the tensor
  auto r = run("train " + (root / "gpt2.yaml").string() + " --set train.init_from=" + (root / "rt").string() +
               " --set model.d_model=64 --set train.steps=0 --set log.dir=" + (root / "run3").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("rt/model.safetensors: tensor"), std::string::npos) << r.err;
}

TEST_F(Export, BackboneModelsUseOwnNames) {
  fs::remove_all(root / "bb");
  auto r = run("train " + (root / "gpt2.yaml").string() +
               " --set model.token_shift=true --set model.qk_norm=true --set model.tie_embeddings=false"
               " --set train.steps=0 --set log.dir=" + (root / "bb").string());
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(run("export " + (root / "bb").string() + " --output " + (root / "bbx").string()).status, 0);
  auto cfg = json::parse(test_util::slurp(root / "bbx/config.json"));
  EXPECT_EQ(cfg.at("model_type").string(), "kvmtrain");
  EXPECT_TRUE(cfg.at("token_shift").boolean());
  // every model key of the run's config with its value (model.kvm.* as "kvm": {...}), but the two
  // that concern training only
  const json::Value run_cfg = config::to_json(config::load((root / "bb/checkpoints/step_00000000/config.yaml").string()));
  for (const auto& [key, value] : run_cfg.at("model").object()) {
    if (key == "padded_vocab_size" || key == "zero_init_out") {
      EXPECT_FALSE(cfg.contains(key)) << key;
      continue;
    }
    ASSERT_TRUE(cfg.contains(key)) << key;
    EXPECT_EQ(json::dump(cfg.at(key)), json::dump(value)) << key;
  }
  EXPECT_EQ(cfg.at("kvm").at("chunk").integer(), 256);
  auto f = ckpt::read_safetensors((root / "bbx/model.safetensors").string());
  EXPECT_EQ(f.at("wte").shape, (std::vector<int64_t>{50257, 32}));
  EXPECT_EQ(f.at("lm_head.weight").shape, (std::vector<int64_t>{50257, 32}));
  EXPECT_NE(f.find("h.1.attn.shift"), nullptr);
  EXPECT_NE(f.find("h.0.attn.ln_q.weight"), nullptr);
  // and back
  fs::remove_all(root / "bb2");
  r = run("train " + (root / "gpt2.yaml").string() +
          " --set model.token_shift=true --set model.qk_norm=true --set model.tie_embeddings=false --set train.init_from=" +
          (root / "bbx").string() + " --set train.steps=0 --set log.dir=" + (root / "bb2").string());
  ASSERT_EQ(r.status, 0) << r.err;
  auto a = ckpt::read_safetensors((root / "bb/checkpoints/step_00000000/model.safetensors").string());
  auto b = ckpt::read_safetensors((root / "bb2/checkpoints/step_00000000/model.safetensors").string());
  for (const auto& t : a.tensors) EXPECT_TRUE(b.at(t.name).data == t.data) << t.name;
}

TEST_F(Export, ForwardOutputAndLoss) {
  ASSERT_EQ(run("forward " + ckpt_dir.string() + " --tokens " + (root / "tokens.txt").string() + " --output " +
                (root / "fw2.safetensors").string()).status, 0);
  auto f = ckpt::read_safetensors((root / "fw2.safetensors").string());
  const auto& lg = f.at("logits");
  ASSERT_EQ(lg.shape, (std::vector<int64_t>{3, 12, 50257}));
  ASSERT_EQ(f.at("loss").shape, (std::vector<int64_t>{1}));
  // the mean next-token cross-entropy, from the logits and the token file
  std::ifstream in(root / "tokens.txt");
  std::vector<int> ids;
  for (int x; in >> x;) ids.push_back(x);
  double nll = 0;
  for (int n = 0; n < 3; n++)
    for (int t = 0; t + 1 < 12; t++) {
      const float* row = lg.data.data() + (size_t(n) * 12 + t) * 50257;
      double m = *std::max_element(row, row + 50257), s = 0;
      for (int v = 0; v < 50257; v++) s += std::exp(double(row[v]) - m);
      nll += m + std::log(s) - row[ids[n * 12 + t + 1]];
    }
  EXPECT_NEAR(f.at("loss").data[0], nll / 33, 1e-5);
}

TEST_F(Export, ForwardErrorsNameTheLine) {
  struct Case {
    std::string text, expect;
  };
  std::vector<Case> cases = {{"1 2 3\n4 x 6\n", "bad.txt:2: 'x' is not a token id"},
                             {"1 2 3\n4 5\n", "bad.txt:2: 2 tokens, but the first sequence has 3"},
                             {"1 2 99999\n", "bad.txt:1: token id 99999 is out of range"},
                             {"\n\n", "no token sequences"}};
  for (const auto& c : cases) {
    std::ofstream(root / "bad.txt") << c.text;
    auto r = run("forward " + ckpt_dir.string() + " --tokens " + (root / "bad.txt").string() + " --output " +
                 (root / "x.safetensors").string());
    EXPECT_EQ(r.status, 2) << c.text;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  auto r = run("forward " + (root / "nowhere").string() + " --tokens a --output b");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("nowhere: not a checkpoint"), std::string::npos) << r.err;
}

TEST_F(Export, GenerateStreamsAndCacheAgreesWithRecompute) {
  auto a = run("generate " + (root / "run").string() + " --prompt 'In the beginning' -n 12 --temperature 0 --decode recompute");
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_NE(a.err.find("tokens/s"), std::string::npos) << a.err;
  EXPECT_EQ(a.out.rfind("In the beginning", 0), 0u) << a.out;
  auto b = run("generate " + (root / "run").string() + " --prompt 'In the beginning' -n 12 --temperature 0");
  ASSERT_EQ(b.status, 0) << b.err;
  EXPECT_NE(b.err.find("decode cache"), std::string::npos) << "the cache is the default and reports its memory";
  EXPECT_EQ(a.out, b.out) << "greedy decoding with the cache must give the recompute tokens";
  auto c = run("generate " + (root / "run").string() + " --prompt the -n 8 --top-k 5 --top-p 0.9 --seed 3");
  EXPECT_EQ(c.status, 0) << c.err;
  auto d = run("generate " + (root / "run").string() + " --prompt the -n 8 --top-k 5 --top-p 0.9 --seed 3");
  EXPECT_EQ(c.out, d.out) << "a seed fixes the sample";
}

}  // namespace
