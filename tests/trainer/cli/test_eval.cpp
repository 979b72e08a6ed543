// `kvmtrain eval` on tiny byte-level models: the loss task against the training loop's val_loss
// on the same windows (both run eval::Validation), loss by position past the training length
// (RoPE) and its refusal for learned positions, and the passkey table. Recall end to end on MQAR
// shards (prepare --synthetic mqar, train, eval --task recall): its accuracy and gap buckets
// against a naive loop over the logits `kvmtrain forward` writes, the same from --jsonl, and
// the JSONL reader's one-line errors naming FILE:LINE.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <bit>
#include <map>

#include "checkpoints/safetensors.h"
#include "common/json.h"
#include "data/shard.h"
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
  EXPECT_NE(r.err.find("expected loss, passkey, position-loss or recall"), std::string::npos) << r.err;
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

TEST(EvalRecall, MqarEndToEndAgainstANaiveLoopOverForwardsLogits) {
  const fs::path dir = fs::temp_directory_path() / ("kvm_eval_recall_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const int V = 16, T = 16, N = 2, K = 40;
  auto r = kvmtrain("prepare --synthetic mqar --vocab 16 --seq-len 16 --pairs 2 --examples 2000 --val-examples 40"
                    " --output " + (dir / "mqar").string(), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  std::ofstream(dir / "mqar.yaml") << "model: {vocab_size: 16, n_layer: 2, n_head: 2, d_model: 32, max_seq_len: 16}\n"
                                      "data: {train: " << (dir / "mqar/train").string() << ", val: "
                                   << (dir / "mqar/val").string() << ", tokenizer: mqar}\n"
                                   "train: {batch_size: 16, seq_len: 16, steps: 40, lr: 3e-3, eval_every: 20,\n"
                                   "        eval_steps: 2, sample_tokens: 4}\n"
                                   "checkpoint: {every: 40}\n";
  r = kvmtrain("train " + (dir / "mqar.yaml").string() + " --set log.dir=" + (dir / "run").string(), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<double> losses;
  std::ifstream log(dir / "run/log.jsonl");
  for (std::string line; std::getline(log, line);) {
    const auto row = json::parse(line);
    EXPECT_EQ(row.at("scored").integer(), 16 * N) << "a batch of 16 examples scores their N answers each";
    losses.push_back(row.at("loss").number());
  }
  ASSERT_EQ(losses.size(), 40u);
  EXPECT_LT(losses.back(), losses.front() - 0.3) << "the model learns the values' distribution at least";

  r = kvmtrain("eval " + (dir / "run").string() + " --task recall", dir);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("eval recall: 40 examples, 80 queries"), std::string::npos) << r.out;
  const auto got = json::parse(test_util::slurp(dir / "run/eval/recall.json"));

  // the val examples, as forward's token file (inputs) and as JSONL
  std::vector<uint16_t> tokens(size_t(K) * (T + 1));
  std::vector<uint8_t> mask(tokens.size());
  {
    data::ShardReader shard((dir / "mqar/val/shard_00000.h5").string(), "mqar", V);
    ASSERT_EQ(shard.size(), tokens.size());
    shard.read(0, tokens.size(), tokens.data());
    shard.read_mask(0, mask.size(), mask.data());
  }
  std::ofstream inputs(dir / "inputs.txt"), jsonl(dir / "val.jsonl");
  for (int e = 0; e < K; e++) {
    const uint16_t* ex = tokens.data() + size_t(e) * (T + 1);
    json::Array toks, scored;
    for (int i = 0; i <= T; i++) toks.push_back(int(ex[i]));
    for (int p = 0; p < T; p++) {
      inputs << ex[p] << (p + 1 < T ? " " : "\n");
      if (mask[size_t(e) * (T + 1) + p + 1]) scored.push_back(p);
    }
    jsonl << json::dump(json::Object{{"tokens", toks}, {"scored", scored}}) << "\n";
  }
  inputs.close(), jsonl.close();
  r = kvmtrain("forward " + (dir / "run").string() + " --tokens " + (dir / "inputs.txt").string() + " --output " +
                   (dir / "fw.safetensors").string(), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto fw = ckpt::read_safetensors((dir / "fw.safetensors").string());
  const auto& logits = fw.at("logits");
  const size_t width = size_t(logits.shape[2]);
  // naive: argmax of each scored row, the gap back to the query token's previous occurrence
  std::map<int64_t, std::pair<int64_t, int64_t>> buckets;  // power-of-two floor of the gap -> queries, correct
  int64_t queries = 0, correct = 0;
  for (int e = 0; e < K; e++) {
    const uint16_t* ex = tokens.data() + size_t(e) * (T + 1);
    for (int p = 0; p < T; p++) {
      if (!mask[size_t(e) * (T + 1) + p + 1]) continue;
      const float* row = logits.data.data() + (size_t(e) * T + size_t(p)) * width;
      int best = 0;
      for (int v = 1; v < V; v++)
        if (row[v] > row[best]) best = v;
      int prev = -1;
      for (int j = 0; j < p; j++)
        if (ex[j] == ex[p]) prev = j;
      ASSERT_GE(prev, 0) << "an MQAR query's key occurs earlier";
      auto& [q, c] = buckets[int64_t(std::bit_floor(unsigned(p - prev)))];
      q++, c += best == ex[p + 1];
      queries++, correct += best == ex[p + 1];
    }
  }
  EXPECT_EQ(queries, K * N);
  EXPECT_EQ(got.at("queries").integer(), queries);
  EXPECT_EQ(got.at("correct").integer(), correct);
  EXPECT_NEAR(got.at("accuracy").number(), double(correct) / double(queries), 1e-9);
  const auto& by_gap = got.at("by_gap").array();
  ASSERT_EQ(by_gap.size(), buckets.size());
  size_t i = 0;
  for (const auto& [lo, qc] : buckets) {
    EXPECT_EQ(by_gap[i].at("min_gap").integer(), lo);
    EXPECT_EQ(by_gap[i].at("max_gap").integer(), 2 * lo - 1);
    EXPECT_EQ(by_gap[i].at("queries").integer(), qc.first);
    EXPECT_EQ(by_gap[i].at("correct").integer(), qc.second);
    i++;
  }

  // the same examples from JSONL give the same result
  r = kvmtrain("eval " + (dir / "run").string() + " --task recall --jsonl " + (dir / "val.jsonl").string() + " --out " +
                   (dir / "j").string(), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto from_jsonl = json::parse(test_util::slurp(dir / "j/recall.json"));
  EXPECT_EQ(json::dump(from_jsonl.at("by_gap")), json::dump(got.at("by_gap")));
  EXPECT_EQ(from_jsonl.at("examples").integer(), K);

  // bad lines: one error naming FILE:LINE and what was expected (line 1 is good)
  const std::string good = "{\"tokens\": [1,9,2,10,0,0,0,0,0,0,1,9,0,0,0,0,0], \"scored\": [10]}";
  struct Case {
    std::string line, expect;
  } cases[] = {
      {"not json", "expected a JSON object {\"tokens\": [17 ids], \"scored\": [positions]}"},
      {"{\"tokens\": [1,2]}", "expected a JSON object {\"tokens\": [17 ids]"},
      {"{\"tokens\": [1,9,2], \"scored\": [1]}", "expected \"tokens\" of T+1 = 17 ids"},
      {"{\"tokens\": [1,9,2,10,0,0,0,0,0,0,1,9,0,0,0,0,16], \"scored\": [10]}", "expected token ids in [0, 15], got 16"},
      {"{\"tokens\": [1,9,2,10,0,0,0,0,0,0,1,9,0,0,0,0,0], \"scored\": [16]}",
       "expected \"scored\" positions p (tokens[p+1] is the answer) in [0, 15], got 16"},
      {"{\"tokens\": [1,9,2,10,0,0,0,0,0,0,1,9,0,0,0,0,0.5], \"scored\": [1]}", "expected token ids in [0, 15], got 0.5"},
  };
  for (const auto& c : cases) {
    std::ofstream(dir / "bad.jsonl") << good << "\n" << c.line << "\n";
    r = kvmtrain("eval " + (dir / "run").string() + " --task recall --jsonl " + (dir / "bad.jsonl").string(), dir);
    EXPECT_EQ(r.status, 2) << c.line;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.rfind("kvmtrain: error: eval: " + (dir / "bad.jsonl").string() + ":2: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << c.line << ": " << r.err;
  }
  fs::remove_all(dir);
}

}  // namespace
