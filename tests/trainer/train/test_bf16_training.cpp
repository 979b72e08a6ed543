// bf16 mixed precision end to end (`kvmtrain train` with train.precision: bf16), on the tiny
// byte-level corpus of tests/checkpoints/run_fixture.h:
//  - a GPT-2 and a KVM / sliding-window hybrid trained 200 steps in bf16 stay within a stated
//    tolerance of their fp32 loss curves (kTrackTol, see there);
//  - a bf16 run killed inside a checkpoint write and resumed logs bit-identical losses (the
//    bf16 copy is remade from the fp32 masters and the step);
//  - DP = 2 and TP = 2 in bf16 equal one process with the same global batch within kDistTol:
//    the stochastic rounding draws its bits by global element index, so the only differences are
//    the fp32 gradient sums in another order, which can flip a rounding now and then.
#include <cmath>

#include "tests/checkpoints/run_fixture.h"

namespace {

using namespace ckpt_test;

// bf16 operands carry 8 significant bits: per-step losses of the two precisions differ by a few
// hundredths (measured here: max 0.018 and 0.056 nats, mean 0.004 and 0.008, for GPT-2 and the
// hybrid, as the loss falls from 5.5 to below 0.1), far less than what training moves.
constexpr double kTrackTol = 0.1;
constexpr double kTrackMeanTol = 0.02;  // mean |difference| over the 200 steps
constexpr double kDistTol = 2e-3;

const char* kHybrid =
    " --set model.mixers=[swa,kvm] --set model.pos=rope --set model.rope_dims=8 --set model.qk_norm=true"
    " --set model.swa_window=16 --set model.kvm.chunk=16 --set model.kvm.min_len=16";

class Bf16Training : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root = fs::temp_directory_path() / ("kvm_bf16_" + std::to_string(::getpid()));
    make_run_fixture(root, 200);
  }
  static void TearDownTestSuite() { fs::remove_all(root); }

  // Trains into root/name and returns the per-step losses (and the final val loss in *val).
  static std::vector<double> train(const std::string& name, const std::string& sets, double* val = nullptr,
                                   int ranks = 1) {
    fs::remove_all(root / name);
    const std::string args = "train " + (root / "tiny.yaml").string() + " --set log.dir=" + (root / name).string() +
                             " --set checkpoint.every=0" + sets;
    auto r = ranks == 1 ? test_util::kvmtrain(args, root) : test_util::kvmtrain_mpi(ranks, args, root);
    EXPECT_EQ(r.status, 0) << r.err;
    std::vector<double> losses;
    for (auto& row : log_rows(root / name / "log.jsonl")) {
      losses.push_back(row.at("loss").number());
      if (val && row.contains("val_loss")) *val = row.at("val_loss").number();
    }
    return losses;
  }

  static void expect_tracks(const std::string& model, const std::string& sets) {
    double val32 = 0, val16 = 0;
    auto fp32 = train(model + "_fp32", sets, &val32);
    auto bf16 = train(model + "_bf16", sets + " --set train.precision=bf16", &val16);
    ASSERT_EQ(fp32.size(), 200u);
    ASSERT_EQ(bf16.size(), fp32.size());
    double worst = 0, mean = 0;
    for (size_t i = 0; i < fp32.size(); i++) {
      worst = std::max(worst, std::fabs(bf16[i] - fp32[i]));
      mean += std::fabs(bf16[i] - fp32[i]) / double(fp32.size());
    }
    std::printf("%s: fp32 loss %.4f -> %.4f (val %.4f), bf16 -> %.4f (val %.4f); |bf16 - fp32| max %.4f, mean %.4f\n",
                model.c_str(), fp32.front(), fp32.back(), val32, bf16.back(), val16, worst, mean);
    EXPECT_LT(fp32.back(), fp32.front() - 1.0) << "the fp32 run must learn for the comparison to mean anything";
    EXPECT_LE(worst, kTrackTol);
    EXPECT_LE(mean, kTrackMeanTol);
    EXPECT_NEAR(val16, val32, kTrackTol);
  }

  static fs::path root;
};
fs::path Bf16Training::root;

TEST_F(Bf16Training, Gpt2TracksFp32For200Steps) { expect_tracks("gpt2", ""); }

TEST_F(Bf16Training, KvmHybridTracksFp32For200Steps) { expect_tracks("hybrid", kHybrid); }

TEST_F(Bf16Training, ResumeIsBitIdentical) {
  const std::string cfg = "train " + (root / "tiny.yaml").string() + " --set train.steps=16 --set train.precision=bf16" +
                          kHybrid;
  fs::remove_all(root / "run");
  auto r = test_util::kvmtrain(cfg, root);
  ASSERT_EQ(r.status, 0) << r.err;
  fs::rename(root / "run", root / "bf16_reference");
  setenv("KVMTRAIN_TEST_CRASH_IN_CHECKPOINT", "after_file:12", 1);
  r = test_util::kvmtrain(cfg, root);
  unsetenv("KVMTRAIN_TEST_CRASH_IN_CHECKPOINT");
  ASSERT_NE(r.status, 0) << "the run should have been killed inside the checkpoint of step 12";
  r = test_util::kvmtrain(cfg + " --resume auto", root);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("(step 8"), std::string::npos) << r.out;
  expect_same_losses(root / "run/log.jsonl", root / "bf16_reference/log.jsonl");
}

TEST_F(Bf16Training, DataAndTensorParallelEqualOneProcess) {
  const std::string sets = std::string(" --set train.steps=10 --set train.precision=bf16") + kHybrid;
  auto one = train("dist_one", sets);
  auto dp = train("dist_dp2", sets + " --set parallel.data=2 --set train.batch_size=2", nullptr, 2);
  auto tp = train("dist_tp2", sets + " --set parallel.tensor=2", nullptr, 2);
  ASSERT_EQ(one.size(), 10u);
  ASSERT_EQ(dp.size(), one.size());
  ASSERT_EQ(tp.size(), one.size());
  double worst_dp = 0, worst_tp = 0;
  for (size_t i = 0; i < one.size(); i++) {
    EXPECT_NEAR(dp[i], one[i], kDistTol) << "DP=2, step " << i + 1;
    EXPECT_NEAR(tp[i], one[i], kDistTol) << "TP=2, step " << i + 1;
    worst_dp = std::max(worst_dp, std::fabs(dp[i] - one[i]));
    worst_tp = std::max(worst_tp, std::fabs(tp[i] - one[i]));
  }
  std::printf("bf16, 10 steps: max |loss - one process| DP=2 %.2e, TP=2 %.2e\n", worst_dp, worst_tp);
}

}  // namespace
