// `kvmtrain eval` on tiny byte-level models: the loss task against the training loop's val_loss
// on the same windows (both run eval::Validation), loss by position past the training length
// (RoPE) and its refusal for learned positions, and the passkey table.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "common/json.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

using test_util::kvmtrain;

class EvalCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir = fs::temp_directory_path() / ("kvm_eval_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir / "text");
    const char* lines[] = {"the cat sat on the mat. ", "a dog ran in the park. ", "we like to read books. "};
    for (int d = 0; d < 8; d++) {
      std::ofstream f(dir / "text" / ("doc" + std::to_string(d) + ".txt"));
      for (int i = 0; i < 40; i++) f << lines[(d + i) % 3];
    }
    ASSERT_EQ(kvmtrain("prepare --quiet --tokenizer byte --input " + (dir / "text").string() + " --output " +
                           (dir / "data").string(), dir).status, 0);
    std::ofstream(dir / "tiny.yaml") << "model: {vocab_size: 257, n_layer: 2, n_head: 2, d_model: 32, max_seq_len: 32}\n"
                                        "data: {train: " << (dir / "data/train").string() << ", val: "
                                     << (dir / "data/val").string() << ", tokenizer: byte}\n"
                                     "train: {batch_size: 3, seq_len: 32, steps: 20, lr: 3e-3, eval_every: 10,\n"
                                     "        eval_steps: 4, sample_tokens: 0}\n"
                                     "checkpoint: {every: 10}\n";
    const std::string cfg = (dir / "tiny.yaml").string();
    auto r = kvmtrain("train " + cfg + " --set log.dir=" + (dir / "learned").string(), dir);
    ASSERT_EQ(r.status, 0) << r.err;
    r = kvmtrain("train " + cfg + " --set log.dir=" + (dir / "rope").string() +
                     " --set model.pos=rope --set model.mixers=[swa,kvm] --set model.swa_window=16"
                     " --set model.kvm.chunk=8 --set model.kvm.min_len=8",
                 dir);
    ASSERT_EQ(r.status, 0) << r.err;
  }
  static void TearDownTestSuite() { fs::remove_all(dir); }
  static fs::path dir;
};
fs::path EvalCli::dir;

double last_val_loss(const fs::path& run) {
  std::ifstream f(run / "log.jsonl");
  double v = -1;
  for (std::string line; std::getline(f, line);) {
    auto row = json::parse(line);
    if (row.contains("val_loss")) v = row.at("val_loss").number();
  }
  return v;
}

TEST_F(EvalCli, LossEqualsTheTrainingLoopsValidation) {
  for (const char* run : {"learned", "rope"}) {
    // the final checkpoint, the training's validation windows: B 3, T 32, eval_steps 4 from the first
    auto r = kvmtrain("eval " + (dir / run).string() + " --task loss --batches 4", dir);
    ASSERT_EQ(r.status, 0) << r.err;
    auto j = json::parse(test_util::slurp(dir / run / "eval/loss.json"));
    const double want = last_val_loss(dir / run);
    ASSERT_GT(want, 0);
    // the same computation: equal up to the float the log keeps (and loss.json's 9 digits)
    EXPECT_NEAR(j.at("loss").number(), want, 2e-7 * want) << run;
    EXPECT_NEAR(j.at("perplexity").number(), std::exp(j.at("loss").number()), 1e-6 * j.at("perplexity").number());
    EXPECT_EQ(j.at("tokens").integer(), 4 * 3 * 32);
  }
  // --data and --out
  auto r = kvmtrain("eval " + (dir / "learned").string() + " --task loss --data " + (dir / "data").string() +
                        " --out " + (dir / "o").string(), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir / "o/loss.json"));
}

// --device: cpu is the run's own device here (the same numbers as without the flag); an unknown
// device, and cuda where no GPU is visible, are one error line with status 2, for every command
// that loads a model.
TEST_F(EvalCli, DeviceFlag) {
  const std::string run = (dir / "rope").string();
  auto r = kvmtrain("eval " + run + " --task loss --batches 2 --out " + (dir / "dev_default").string(), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  r = kvmtrain("eval " + run + " --task loss --batches 2 --device cpu --out " + (dir / "dev_cpu").string(), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json::parse(test_util::slurp(dir / "dev_cpu/loss.json")).at("loss").number(),
            json::parse(test_util::slurp(dir / "dev_default/loss.json")).at("loss").number());
  const std::string tokens = (dir / "tokens.txt").string();
  std::ofstream(tokens) << "1 2 3 4 5 6\n";
  for (const std::string& cmd : {"eval " + run + " --task loss", "generate " + run + " -n 2",
                                 "forward " + run + " --tokens " + tokens + " --output " + (dir / "f.st").string()}) {
    r = kvmtrain(cmd + " --device tpu", dir);
    EXPECT_EQ(r.status, 2) << cmd;
    EXPECT_EQ(r.err, "kvmtrain: error: --device tpu: expected cpu or cuda\n") << cmd;
    r = kvmtrain(cmd + " --device cuda", dir);
    if (r.status == 0) continue;  // a machine with a GPU
    EXPECT_EQ(r.status, 2) << cmd;
    EXPECT_NE(r.err.find("kvmtrain: error: "), std::string::npos) << cmd;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << cmd << ": " << r.err;
  }
}

// Bad numbers are refused before anything runs: a NaN temperature (it sampled end-of-text), an -n
// past int (it wrapped), a decode cache too short for the prompt and -n (it failed midway after
// streaming), and one-token lines for forward (a NaN loss with status 0).
TEST_F(EvalCli, GenerateAndForwardRefuseBadNumbersUpFront) {
  const std::string run = (dir / "rope").string();  // max_seq_len 32
  auto r = kvmtrain("generate " + run + " --temperature nan", dir);
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err, "kvmtrain: error: generate: --temperature expects a number, got 'nan'\n");
  r = kvmtrain("generate " + run + " -n 4294967298", dir);
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err, "kvmtrain: error: generate: --n expects an integer in [0, 2147483647], got '4294967298'\n");
  r = kvmtrain("generate " + run + " -n 40 --decode cache", dir);  // <|endoftext|> + 39 more: 40 > 32
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("need 40 positions in the decode cache, model.max_seq_len is 32"), std::string::npos) << r.err;
  r = kvmtrain("generate " + run + " -n 32 --decode cache", dir);  // exactly fills the cache
  EXPECT_EQ(r.status, 0) << r.err;
  r = kvmtrain("generate " + run + " -n 40 --decode recompute", dir);
  EXPECT_EQ(r.status, 0) << r.err;
  const std::string tokens = (dir / "one_token.txt").string();
  std::ofstream(tokens) << "5\n7\n";
  r = kvmtrain("forward " + run + " --tokens " + tokens + " --output " + (dir / "f1.st").string(), dir);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("expected at least 2 per line"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "f1.st"));
}

TEST_F(EvalCli, PositionLossPastTheTrainingLength) {
  auto r = kvmtrain("eval " + (dir / "rope").string() + " --task position-loss --seq-len 128 --block 32", dir);
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = json::parse(test_util::slurp(dir / "rope/eval/position_loss.json"));
  const auto& blocks = j.at("blocks").array();
  ASSERT_EQ(blocks.size(), 4u);
  for (size_t i = 0; i < blocks.size(); i++) {
    EXPECT_EQ(blocks[i].at("start").integer(), int64_t(32 * i));
    EXPECT_TRUE(std::isfinite(blocks[i].at("loss").number()));
    EXPECT_GT(blocks[i].at("loss").number(), 0);
  }
  EXPECT_EQ(j.at("train_seq_len").integer(), 32);
  EXPECT_GT(j.at("documents").integer(), 0);
  if (fs::exists("/usr/bin/python3")) {
    EXPECT_TRUE(fs::exists(dir / "rope/eval/position_loss.png")) << r.err;
  }
}

TEST_F(EvalCli, LearnedPositionsRefuseLongerSequences) {
  for (const std::string task : {"position-loss --seq-len 64", "loss --seq-len 64", "passkey --lengths 128"}) {
    auto r = kvmtrain("eval " + (dir / "learned").string() + " --task " + task, dir);
    EXPECT_EQ(r.status, 2) << task << r.err;
    EXPECT_NE(r.err.find("learned positions (model.pos: learned) only up to model.max_seq_len 32"), std::string::npos)
        << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  auto r = kvmtrain("eval " + (dir / "learned").string() + " --task frobnicate", dir);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("expected loss, passkey or position-loss"), std::string::npos) << r.err;
}

TEST_F(EvalCli, PasskeyWritesItsTable) {
  for (const char* filler : {"val", "fixed"}) {
    auto r = kvmtrain("eval " + (dir / "rope").string() + " --task passkey --lengths 112,128 --depths 0,0.5,1 --trials 2"
                          " --filler " + filler + " --out " + (dir / "pk").string(), dir);
    ASSERT_EQ(r.status, 0) << r.err;
    auto j = json::parse(test_util::slurp(dir / "pk/passkey.json"));
    ASSERT_EQ(j.at("accuracy").array().size(), 3u);  // depths
    for (const auto& row : j.at("accuracy").array()) {
      ASSERT_EQ(row.array().size(), 2u);  // lengths
      for (const auto& a : row.array()) EXPECT_TRUE(a.number() >= 0 && a.number() <= 1);
    }
    EXPECT_EQ(j.at("cells").array().size(), 6u);
    const std::string md = test_util::slurp(dir / "pk/passkey.md");
    EXPECT_NE(md.find("| depth \\ length | 112 | 128 |"), std::string::npos) << md;
    EXPECT_NE(md.find("| 0.50 |"), std::string::npos) << md;
    if (fs::exists("/usr/bin/python3")) {
    EXPECT_TRUE(fs::exists(dir / "pk/passkey.png")) << r.err;
  }
  }
}

}  // namespace
