// `mpirun -np N kvmtrain train` as users run it: N data-parallel ranks with batch B log the same
// losses as one process with batch N*B (with one gradient bucket, and with hundreds under
// gradient accumulation); tensor parallel 2 the same as 1; and a job whose world size does not
// match parallel.data x parallel.tensor, a rank that cannot read the data, and a rank killed
// mid-run each end the job with a non-zero status and a message naming the cause, never a hang.
// Tolerance: the ranks sum gradients in another order, so losses agree to 2e-5 over 8 steps.
// With loss masks whose scored counts differ from window to window (so from rank to rank), the
// same holds, and grad_accum 2 with batch B equals batch 2B: the step's loss is the mean over all
// its scored targets, not a mean of per-rank or per-micro-batch means.
// Checkpoints of multi-rank runs are unsharded: one written by 2 data-parallel ranks resumes on 1
// and on 4 (the same global batch), one written by 2 tensor-parallel ranks on 1, and the resumed
// steps log the losses of the uninterrupted run.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/json.h"
#include "data/shard.h"
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
    const auto prepared = test_util::kvmtrain("prepare --quiet --tokenizer byte --input " + (dir / "text").string() +
                                                  " --output " + (dir / "data").string(), dir);
    ASSERT_EQ(prepared.status, 0) << prepared.err;  // 127: no kvmtrain (ctest sets KVMTRAIN_BIN)
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
    std::string cmd = mpiexec() + " -np " + std::to_string(np) + " " + bin() + " " + args + " >" +
                      (dir / "stdout").string() + " 2>" + (dir / "stderr").string();
    int st = std::system(cmd.c_str());
    return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, test_util::slurp(dir / "stdout"), test_util::slurp(dir / "stderr")};
  }
  static std::string mpiexec() {
    const char* m = std::getenv("KVMTRAIN_MPIEXEC");
    return m ? m : "mpiexec";
  }
  static std::string bin() {
    const char* b = std::getenv("KVMTRAIN_BIN");
    return b ? b : "kvmtrain";
  }

  // Starts the shell command `cmd` without waiting (its output to dir/stdout, dir/stderr); the
  // pid is the command's own (mpiexec's).
  pid_t start(const std::string& cmd) {
    const std::string line = "exec " + cmd + " >" + (dir / "stdout").string() + " 2>" + (dir / "stderr").string();
    pid_t pid = fork();
    if (pid == 0) {
      execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    return pid;
  }
  // The exit status of a started job (128 + the signal that ended it), or -1 when it still runs
  // after `seconds`: then it and its ranks are killed.
  static int finish(pid_t job, double seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    int st = 0;
    while (waitpid(job, &st, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        for (pid_t p : ranks(job)) kill(p, SIGKILL);
        kill(job, SIGKILL);
        waitpid(job, &st, 0);
        return -1;
      }
      usleep(20000);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  // The processes mpiexec `job` started on this machine, and the world rank of one of them.
  static std::vector<pid_t> ranks(pid_t job) {
    std::vector<pid_t> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
      const std::string name = e.path().filename();
      if (!std::isdigit(static_cast<unsigned char>(name[0]))) continue;
      std::string stat = test_util::slurp(e.path() / "stat");  // pid (comm) state ppid ...
      const size_t paren = stat.rfind(')');
      if (paren == std::string::npos) continue;
      std::istringstream rest(stat.substr(paren + 1));
      char state;
      pid_t ppid;
      if (rest >> state >> ppid && ppid == job) out.push_back(pid_t(std::stol(name)));
    }
    return out;
  }
  // Alive: neither gone nor a zombie (mpiexec kills its ranks, and whoever inherits them reaps them).
  static bool running(pid_t pid) {
    const std::string stat = test_util::slurp("/proc/" + std::to_string(pid) + "/stat");
    const size_t paren = stat.rfind(')');
    return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
  }
  static int world_rank(pid_t pid) {
    std::istringstream env(test_util::slurp("/proc/" + std::to_string(pid) + "/environ"));
    for (std::string var; std::getline(env, var, '\0');)
      if (var.rfind("OMPI_COMM_WORLD_RANK=", 0) == 0) return std::stoi(var.substr(21));
    return -1;
  }
  fs::path dir;
};

TEST_F(TrainMpi, DataParallelEqualsOneProcessWithTheGlobalBatch) {
  auto one = losses(1, "--set train.batch_size=8", "single");
  auto two = losses(2, "--set parallel.data=2", "dp2");
  // 0.001 MiB: buckets of 272 floats, started during the backward of the last micro-step only
  auto buckets = losses(2, "--set parallel.data=2 --set parallel.bucket_mb=0.001 --set train.batch_size=2 "
                           "--set train.grad_accum=2", "dp2_buckets");
  ASSERT_EQ(one.size(), 8u);
  ASSERT_EQ(two.size(), 8u);
  ASSERT_EQ(buckets.size(), 8u);
  for (size_t i = 0; i < one.size(); i++) {
    EXPECT_NEAR(two[i], one[i], 2e-5) << "step " << i + 1;
    EXPECT_NEAR(buckets[i], one[i], 2e-5) << "buckets, step " << i + 1;
  }
  auto run = json::parse(test_util::slurp(dir / "dp2/run.json"));
  EXPECT_EQ(run.at("world_size").integer(), 2);
  EXPECT_EQ(run.at("data_parallel").integer(), 2);
  EXPECT_GT(one.front() - one.back(), 0.5) << "the model should learn over 8 steps";
}

TEST_F(TrainMpi, MaskedDataParallelAndAccumulationEqualOneProcess) {
  // 64 fixed-length documents of 33 tokens (a learnable pattern), scored with densities from 1/16
  // to all by document
  for (const char* split : {"train", "val"}) {
    fs::create_directories(dir / "masked" / split);
    data::ShardInfo info{"byte", 257, 256};
    info.doc_len = 33;
    info.loss_mask = true;
    data::ShardWriter w((dir / "masked" / split / "shard_00000.h5").string(), info);
    for (uint32_t d = 0; d < 64; d++) {
      std::vector<uint32_t> ids(33);
      std::vector<uint8_t> mask(33);
      for (uint32_t i = 0; i < 33; i++) ids[i] = (d * 7 + i * (d % 5 + 1)) % 40, mask[i] = (i * 2654435761u + d) % 16 <= d % 16;
      w.add_document(ids.data(), ids.size(), mask.data());
    }
    w.finish();
  }
  const std::string data = "--set data.train=" + (dir / "masked/train").string() +
                           " --set data.val=" + (dir / "masked/val").string() + " ";
  auto one = losses(1, data + "--set train.batch_size=8", "m_single");
  auto two = losses(2, data + "--set parallel.data=2", "m_dp2");
  auto accum = losses(1, data + "--set train.grad_accum=2", "m_accum2");
  ASSERT_EQ(one.size(), 8u);
  ASSERT_EQ(two.size(), 8u);
  ASSERT_EQ(accum.size(), 8u);
  for (size_t i = 0; i < one.size(); i++) {
    EXPECT_NEAR(two[i], one[i], 2e-5) << "step " << i + 1;
    EXPECT_NEAR(accum[i], one[i], 2e-5) << "grad_accum, step " << i + 1;
  }
  std::vector<int64_t> scored;
  std::ifstream log(dir / "m_dp2" / "log.jsonl");
  for (std::string line; std::getline(log, line);) scored.push_back(json::parse(line).at("scored").integer());
  ASSERT_EQ(scored.size(), 8u);
  EXPECT_NE(*std::min_element(scored.begin(), scored.end()), *std::max_element(scored.begin(), scored.end()));
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

// Open MPI's mpiexec ends the job when a rank dies: it kills the other ranks (stuck in a
// collective with the dead one) and exits non-zero naming the rank and the signal.
TEST_F(TrainMpi, RankKilledMidRunEndsTheJob) {
  const pid_t job = start(mpiexec() + " -np 2 " + bin() + " train " + (dir / "tiny.yaml").string() +
                          " --set parallel.data=2 --set train.steps=1000000 --set log.dir=" + (dir / "run").string());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (test_util::slurp(dir / "run/log.jsonl").empty() && std::chrono::steady_clock::now() < deadline) usleep(50000);
  ASSERT_FALSE(test_util::slurp(dir / "run/log.jsonl").empty()) << "no step logged in 60 s";
  pid_t victim = -1, survivor = -1;
  for (pid_t p : ranks(job)) {
    const int r = world_rank(p);  // mpiexec's other children, if any, are not ranks
    if (r == 1) victim = p;
    if (r == 0) survivor = p;
  }
  ASSERT_GT(victim, 0);
  ASSERT_GT(survivor, 0);
  const auto killed = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  const int status = finish(job, 30);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  ASSERT_NE(status, -1) << "the job still ran 30 s after rank 1 was killed";
  EXPECT_NE(status, 0);
  // mpiexec may return while the rank it killed is still exiting: a few seconds' grace
  const auto ended = std::chrono::steady_clock::now();
  while (running(survivor) && std::chrono::steady_clock::now() - ended < std::chrono::seconds(10)) usleep(50000);
  EXPECT_FALSE(running(survivor)) << "rank 0 still ran 10 s after the job ended";
  const std::string err = test_util::slurp(dir / "stderr");
  EXPECT_NE(err.find("process rank 1"), std::string::npos) << err;
  EXPECT_NE(err.find("signal 9"), std::string::npos) << err;
  std::printf("the job ended %.1f s after rank 1 was killed, status %d; rank 0 was gone %.2f s after that\n", took,
              status, std::chrono::duration<double>(std::chrono::steady_clock::now() - ended).count());
}

// A shard directory missing on one rank's machine (here: relative data paths, rank 1 started
// elsewhere): that rank's error, and MPI_Abort ends every rank, while rank 0 waits in a collective.
TEST_F(TrainMpi, RankThatCannotReadTheDataEndsTheJob) {
  fs::create_directories(dir / "elsewhere");
  const std::string train = bin() + " train " + (dir / "tiny.yaml").string() +
                            " --set parallel.data=2 --set data.train=data/train --set data.val=data/val" +
                            " --set log.dir=" + (dir / "run").string();
  const pid_t job = start(mpiexec() + " -np 1 -wdir " + dir.string() + " " + train + " : -np 1 -wdir " +
                          (dir / "elsewhere").string() + " " + train);
  const int status = finish(job, 60);
  ASSERT_NE(status, -1) << "the job still ran after 60 s";
  EXPECT_EQ(status, 2);
  const std::string err = test_util::slurp(dir / "stderr");
  EXPECT_NE(err.find("kvmtrain: error: data/train: no such shard file or directory"), std::string::npos) << err;
  // Open MPI's own "MPI_ABORT was invoked on rank 1" banner goes to stdout or stderr depending on
  // timing: the status (MPI_Abort's) and the error line are the contract
}

}  // namespace
