// `mpirun -np N kvmtrain train` as users run it: N data-parallel ranks with batch B log the same
// losses as one process with batch N*B; tensor parallel 2 the same as 1; and a job whose world
// size does not match parallel.data x parallel.tensor stops with one clear error, never a hang.
// Tolerance: the ranks sum gradients in another order, so losses agree to 2e-5 over 8 steps.
// Checkpoints of multi-rank runs are unsharded: one written by 2 data-parallel ranks resumes on 1
// and on 4 (the same global batch), one written by 2 tensor-parallel ranks on 1, and the resumed
// steps log the losses of the uninterrupted run.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "data/json.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

class TrainMpi : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() / ("kvm_train_mpi_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir / "text");
    for (int d = 0; d < 8; d++) {
      std::ofstream f(dir / "text" / ("doc" + std::to_string(d) + ".txt"));
      for (int i = 0; i < 40; i++) f << "line " << (d * 7 + i) % 11 << " of the book of numbers. ";
    }
    ASSERT_EQ(test_util::kvmtrain("prepare --quiet --tokenizer byte --input " + (dir / "text").string() +
                                      " --output " + (dir / "data").string(), dir).status, 0);
    std::ofstream(dir / "tiny.yaml")
        << "model: {vocab_size: 257, n_layer: 2, n_head: 2, d_model: 32, max_seq_len: 32, mixers: [swa, kvm],\n"
           "        swa_window: 8, pos: rope, rope_dims: 8, qk_norm: true, tie_embeddings: false,\n"
           "        kvm: {chunk: 8, min_len: 8, budget: power_law, power_f: 2}}\n"
           "data: {train: " << (dir / "data/train").string() << ", val: " << (dir / "data/val").string()
        << ", tokenizer: byte}\n"
           "train: {batch_size: 4, seq_len: 32, steps: 8, lr: 3e-3, warmup_steps: 2, eval_every: 4, eval_steps: 2,\n"
           "        sample_tokens: 0}\n";
  }
  void TearDown() override { fs::remove_all(dir); }

  // Runs `np` ranks (1: no mpiexec) and returns the logged losses.
  std::vector<double> losses(int np, const std::string& sets, const std::string& run) {
    std::string args = "train " + (dir / "tiny.yaml").string() + " --set log.dir=" + (dir / run).string() + " " + sets;
    test_util::CliResult r = np == 1 ? test_util::kvmtrain(args, dir) : mpirun(np, args);
    EXPECT_EQ(r.status, 0) << r.err;
    std::vector<double> out;
    std::ifstream log(dir / run / "log.jsonl");
    for (std::string line; std::getline(log, line);) out.push_back(json::parse(line).at("loss").number());
    return out;
  }
  test_util::CliResult mpirun(int np, const std::string& args) {
    const char* mpiexec = std::getenv("KVMTRAIN_MPIEXEC");
    const char* bin = std::getenv("KVMTRAIN_BIN");
    std::string cmd = std::string(mpiexec ? mpiexec : "mpiexec") + " -np " + std::to_string(np) + " " +
                      (bin ? bin : "kvmtrain") + " " + args + " >" + (dir / "stdout").string() + " 2>" +
                      (dir / "stderr").string();
    int st = std::system(cmd.c_str());
    return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, test_util::slurp(dir / "stdout"), test_util::slurp(dir / "stderr")};
  }
  fs::path dir;
};

TEST_F(TrainMpi, DataParallelEqualsOneProcessWithTheGlobalBatch) {
  auto one = losses(1, "--set train.batch_size=8", "single");
  auto two = losses(2, "--set parallel.data=2", "dp2");
  ASSERT_EQ(one.size(), 8u);
  ASSERT_EQ(two.size(), 8u);
  for (size_t i = 0; i < one.size(); i++) EXPECT_NEAR(two[i], one[i], 2e-5) << "step " << i + 1;
  auto run = json::parse(test_util::slurp(dir / "dp2/run.json"));
  EXPECT_EQ(run.at("world_size").integer(), 2);
  EXPECT_EQ(run.at("data_parallel").integer(), 2);
  EXPECT_GT(one.front() - one.back(), 0.5) << "the model should learn over 8 steps";
}

TEST_F(TrainMpi, TensorParallelEqualsOneProcess) {
  auto one = losses(1, "", "tp1");
  auto two = losses(2, "--set parallel.tensor=2", "tp2");
  ASSERT_EQ(two.size(), one.size());
  for (size_t i = 0; i < one.size(); i++) EXPECT_NEAR(two[i], one[i], 2e-5) << "step " << i + 1;
}

TEST_F(TrainMpi, DataParallelCheckpointResumesOnOneAndFourRanks) {
  auto two = losses(2, "--set parallel.data=2 --set checkpoint.every=4", "dp2");
  ASSERT_EQ(two.size(), 8u);
  const fs::path ck = dir / "dp2/checkpoints/step_00000004";
  ASSERT_TRUE(fs::exists(ck / "manifest.json"));
  auto state = json::parse(test_util::slurp(ck / "state.json"));
  EXPECT_EQ(state.at("world_size").integer(), 2);
  EXPECT_EQ(state.at("layout").at("data").integer(), 2);
  // global windows consumed: 4 steps x 2 ranks x batch 4
  EXPECT_EQ(state.at("loader").at("train_position").integer(), 32);
  // one process with the global batch, and 4 ranks with half the batch, continue the same run
  auto one = losses(1, "--set train.batch_size=8 --resume " + ck.string(), "dp1_resumed");
  auto four = losses(4, "--set parallel.data=4 --set train.batch_size=2 --resume " + ck.string(), "dp4_resumed");
  ASSERT_EQ(one.size(), 4u);
  ASSERT_EQ(four.size(), 4u);
  for (size_t i = 0; i < 4; i++) {
    EXPECT_NEAR(one[i], two[4 + i], 2e-5) << "1 rank, step " << 5 + i;
    EXPECT_NEAR(four[i], two[4 + i], 2e-5) << "4 ranks, step " << 5 + i;
  }
}

TEST_F(TrainMpi, TensorParallelCheckpointResumesOnOneRank) {
  auto two = losses(2, "--set parallel.tensor=2 --set checkpoint.every=4", "tp2");
  ASSERT_EQ(two.size(), 8u);
  const fs::path ck = dir / "tp2/checkpoints/step_00000004";
  ASSERT_TRUE(fs::exists(ck / "manifest.json"));
  // full tensors: the 1-rank model takes them as they are (a shard's shape would be an error)
  auto one = losses(1, "--resume " + ck.string(), "tp1_resumed");
  ASSERT_EQ(one.size(), 4u);
  for (size_t i = 0; i < 4; i++) EXPECT_NEAR(one[i], two[4 + i], 2e-5) << "step " << 5 + i;
}

TEST_F(TrainMpi, WrongWorldSizeIsOneErrorNotAHang) {
  auto r = mpirun(2, "train " + (dir / "tiny.yaml").string() + " --set parallel.data=3");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("parallel: data (3) x tensor (1) = 3 ranks, but the job has 2"), std::string::npos) << r.err;
  r = mpirun(2, "train " + (dir / "tiny.yaml").string() + " --set parallel.tensor=2 --set model.n_head=3 "
                                                          "--set model.d_model=48");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("not divisible by parallel.tensor"), std::string::npos) << r.err;
}

}  // namespace
