// Exact resume: runs killed by SIGKILL at a random step, killed inside a checkpoint write, and
// stopped by SIGTERM / SIGUSR1, each continued with `--resume auto`, log losses bit-identical to an
// uninterrupted run. Corrupt and truncated checkpoints are named and skipped. Ctrl-C stops after
// the current step.
#include <random>
#include <thread>

#include "common/sha256.h"
#include "tests/checkpoints/run_fixture.h"

namespace {

using namespace ckpt_test;
constexpr int kSteps = 40;

class Resume : public ::testing::Test {
 protected:
  // one fixture and one uninterrupted reference run for the whole suite
  static void SetUpTestSuite() {
    root = fs::temp_directory_path() / ("kvm_resume_" + std::to_string(::getpid()));
    make_run_fixture(root, kSteps);
    auto r = test_util::kvmtrain("train " + (root / "tiny.yaml").string(), root);
    ASSERT_EQ(r.status, 0) << r.err;
    fs::rename(root / "run", root / "reference");
  }
  static void TearDownTestSuite() { fs::remove_all(root); }
  void SetUp() override { fs::remove_all(run()); }
  static fs::path run() { return root / "run"; }
  static std::string cfg() { return (root / "tiny.yaml").string(); }
  static fs::path reference_log() { return root / "reference/log.jsonl"; }
  static fs::path root;
};
fs::path Resume::root;

TEST_F(Resume, UninterruptedRunKeepsLastAndBest) {
  auto ck = root / "reference/checkpoints";
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(ck)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  auto best = json::parse(test_util::slurp(ck / "best.json"));
  const std::string best_dir = best.at("checkpoint").string();
  EXPECT_TRUE(fs::exists(ck / best_dir / "manifest.json")) << best_dir;
  // the last 3 (32, 36, 40) plus the best
  for (const char* s : {"step_00000032", "step_00000036", "step_00000040"})
    EXPECT_TRUE(std::find(names.begin(), names.end(), s) != names.end()) << s;
  EXPECT_LE(names.size(), 5u);  // 3 kept + the best + best.json
  // best.json's loss is the lowest val_loss among logged checkpoint steps
  double lowest = 1e30;
  for (auto& row : log_rows(reference_log()))
    if (row.contains("val_loss")) lowest = std::min(lowest, row.at("val_loss").number());
  EXPECT_EQ(best.at("val_loss").number(), lowest);
  auto state = json::parse(test_util::slurp(ck / "step_00000040/state.json"));
  EXPECT_EQ(state.at("step").integer(), 40);
  EXPECT_EQ(state.at("optimizer").at("t").integer(), 40);
  EXPECT_EQ(state.at("tokens_seen").integer(), 40 * 4 * 64);
  EXPECT_EQ(state.at("loader").at("train_position").integer(), 40 * 4);
  EXPECT_EQ(state.at("world_size").integer(), 1);
}

TEST_F(Resume, SigkillAtARandomStep) {
  std::mt19937 gen(std::random_device{}());
  const size_t at = std::uniform_int_distribution<size_t>(3, kSteps - 8)(gen);
  pid_t pid = spawn("train " + cfg(), root);
  const bool running = wait_for_rows(pid, run() / "log.jsonl", at);
  kill(pid, SIGKILL);
  wait_status(pid);
  ASSERT_TRUE(running) << "the run finished before it could be killed";
  const size_t logged = count_lines(run() / "log.jsonl");
  ASSERT_LT(logged, size_t(kSteps));
  // the row of step 4 may be logged before its checkpoint is complete; a save killed between
  // writing its manifest and renaming its temporary directory leaves one that looks complete,
  // which --resume rightly ignores
  bool have_checkpoint = false;
  if (fs::exists(run() / "checkpoints"))
    for (auto& e : fs::directory_iterator(run() / "checkpoints"))
      have_checkpoint |= e.path().filename().string().rfind(".tmp-", 0) != 0 && fs::exists(e.path() / "manifest.json");
  auto r = test_util::kvmtrain("train " + cfg() + " --resume auto", root);
  ASSERT_EQ(r.status, 0) << r.err;
  if (have_checkpoint) EXPECT_NE(r.out.find("resumed from"), std::string::npos) << r.out;
  else EXPECT_NE(r.out.find("starting fresh"), std::string::npos) << r.out;
  SCOPED_TRACE("killed after " + std::to_string(logged) + " logged steps");
  expect_same_losses(run() / "log.jsonl", reference_log());
}

// One run killed 20 times at random moments, each followed by --resume auto: SIGKILLs after a
// random delay (set-up, steps, evaluation, saves and pruning alike), and, among them, kills
// inside a checkpoint write and inside a log row (test hooks, as a random moment rarely hits
// those). The log ends with exactly one row per step and the final model and optimizer state are
// bit-identical to the uninterrupted run's.
TEST_F(Resume, TwentySigkillsThenTheSameRunBitForBit) {
  std::mt19937 gen(std::random_device{}());
  const unsigned seed = gen();
  SCOPED_TRACE("seed " + std::to_string(seed));
  gen.seed(seed);
  int mid_save = 0, mid_log = 0, before_end = 0;
  for (int kill_no = 0; kill_no < 20; kill_no++) {
    const size_t logged = count_lines(run() / "log.jsonl");
    const int kind = kill_no % 5;  // 0: inside a save, 1: inside a log row, else after a random delay
    const int ahead = std::uniform_int_distribution<int>(1, 6)(gen);
    if (kind == 0) {
      const int at = std::min(int(logged / 4 + 1 + ahead / 3) * 4, kSteps);  // a checkpoint step ahead
      setenv("KVMTRAIN_TEST_CRASH_IN_CHECKPOINT", ("after_file:" + std::to_string(at)).c_str(), 1);
    }
    if (kind == 1) setenv("KVMTRAIN_TEST_CRASH_IN_LOG", std::to_string(std::min(int(logged) + ahead, kSteps)).c_str(), 1);
    fs::remove(root / "bg.err");  // a kill before the shell's redirection must not read the last one
    pid_t pid = spawn("train " + cfg() + " --resume auto", root);
    unsetenv("KVMTRAIN_TEST_CRASH_IN_CHECKPOINT");
    unsetenv("KVMTRAIN_TEST_CRASH_IN_LOG");
    if (kind >= 2) {  // after a random delay, or sooner if the run nears its end (so that it does not finish)
      const auto start = std::chrono::steady_clock::now();
      const auto until = start + std::chrono::milliseconds(std::uniform_int_distribution<int>(20, 700)(gen));
      while (std::chrono::steady_clock::now() < until &&
             (std::chrono::steady_clock::now() < start + std::chrono::milliseconds(20) ||
              count_lines(run() / "log.jsonl") < size_t(kSteps - 2)))
        std::this_thread::sleep_for(std::chrono::microseconds(500));
      kill(pid, SIGKILL);
    }
    const int status = wait_status(pid);  // a hooked run kills itself at its moment
    const std::string err = test_util::slurp(root / "bg.err");
    if (status == 0) break;  // the run finished before its kill
    before_end++;
    ASSERT_EQ(status, 128 + SIGKILL) << err;
    mid_save += err.find("KVMTRAIN_TEST_CRASH_IN_CHECKPOINT") != std::string::npos;
    mid_log += err.find("KVMTRAIN_TEST_CRASH_IN_LOG") != std::string::npos;
  }
  const std::string kills = std::to_string(before_end) + " kills before the end, " + std::to_string(mid_save) +
                            " inside a save, " + std::to_string(mid_log) + " inside a log row, " +
                            std::to_string(count_lines(run() / "log.jsonl")) + " rows logged before the last resume";
  std::printf("%s\n", kills.c_str());
  SCOPED_TRACE(kills);
  EXPECT_EQ(before_end, 20) << "every kill should land before the run ends";
  EXPECT_GE(mid_save, 1);
  EXPECT_GE(mid_log, 1);
  auto r = test_util::kvmtrain("train " + cfg() + " --resume auto", root);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto rows = log_rows(run() / "log.jsonl");
  ASSERT_EQ(rows.size(), size_t(kSteps));
  for (size_t i = 0; i < rows.size(); i++) EXPECT_EQ(rows[i].at("step").integer(), int64_t(i + 1));
  expect_same_losses(run() / "log.jsonl", reference_log());
  for (const char* f : {"model.safetensors", "optimizer.safetensors"})
    EXPECT_EQ(data::sha256_file((run() / "checkpoints/step_00000040" / f).string()),
              data::sha256_file((root / "reference/checkpoints/step_00000040" / f).string()))
        << f;
}

// A log write that fails (a full disk, through a hook that cuts the row of step 6 and fails as
// ENOSPC) stops the run with status 2 and one line, after saving step 6 with the row the log
// lacks; the resume appends it, and the run ends as the uninterrupted one (issue 21: rows were
// dropped and the run exited 0).
TEST_F(Resume, AFailedLogWriteStopsAfterSavingAndLosesNoRow) {
  setenv("KVMTRAIN_TEST_FULL_LOG", "6", 1);
  auto r = test_util::kvmtrain("train " + cfg(), root);
  unsetenv("KVMTRAIN_TEST_FULL_LOG");
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_EQ(r.err, "kvmtrain: error: cannot append to " + (run() / "log.jsonl").string() +
                       ": No space left on device; saved " + (run() / "checkpoints/step_00000006").string() +
                       " with the 1 log rows it lacks: free space, then --resume auto\n");
  const auto rows = log_rows(run() / "log.jsonl");  // whole rows only: the cut one was removed
  ASSERT_EQ(rows.size(), 5u);
  const auto ref = log_rows(reference_log());
  for (size_t i = 0; i < rows.size(); i++) EXPECT_EQ(rows[i].at("loss").number(), ref[i].at("loss").number());
  EXPECT_TRUE(fs::exists(run() / "checkpoints/step_00000006/manifest.json"));

  r = test_util::kvmtrain("train " + cfg() + " --resume auto", root);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("log: appended 1 rows the checkpoint kept"), std::string::npos) << r.out;
  expect_same_losses(run() / "log.jsonl", reference_log());
}

TEST_F(Resume, KilledInsideACheckpointWrite) {
  setenv("KVMTRAIN_TEST_CRASH_IN_CHECKPOINT", "after_file:12", 1);
  auto r = test_util::kvmtrain("train " + cfg(), root);
  unsetenv("KVMTRAIN_TEST_CRASH_IN_CHECKPOINT");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("KVMTRAIN_TEST_CRASH_IN_CHECKPOINT"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(run() / "checkpoints/step_00000012"));
  bool tmp_left = false;
  for (auto& e : fs::directory_iterator(run() / "checkpoints"))
    tmp_left |= e.path().filename().string().rfind(".tmp-", 0) == 0;
  EXPECT_TRUE(tmp_left) << "the crash should leave a temporary directory behind";
  EXPECT_EQ(count_lines(run() / "log.jsonl"), 12u);

  r = test_util::kvmtrain("train " + cfg() + " --resume auto", root);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("step_00000008 (step 8"), std::string::npos) << r.out;
  expect_same_losses(run() / "log.jsonl", reference_log());
  for (auto& e : fs::directory_iterator(run() / "checkpoints"))
    EXPECT_NE(e.path().filename().string().rfind(".tmp-", 0), 0u) << e.path();
}

TEST_F(Resume, SigtermAndSigusr1SaveAndExitCleanly) {
  for (int sig : {SIGTERM, SIGUSR1}) {
    fs::remove_all(run());
    pid_t pid = spawn("train " + cfg(), root);
    const bool running = wait_for_rows(pid, run() / "log.jsonl", sig == SIGTERM ? 6 : 17);
    kill(pid, sig);
    const int status = wait_status(pid);
    ASSERT_TRUE(running) << "the run finished before the signal";
    EXPECT_EQ(status, 0) << test_util::slurp(root / "bg.err");
    const std::string out = test_util::slurp(root / "bg.out");
    EXPECT_NE(out.find(sig == SIGTERM ? "SIGTERM: stopped after step" : "SIGUSR1: stopped after step"), std::string::npos)
        << out;
    // the checkpoint is of the last logged step
    const size_t logged = count_lines(run() / "log.jsonl");
    if (logged < size_t(kSteps)) {
      char name[32];
      std::snprintf(name, sizeof name, "step_%08zu", logged);
      EXPECT_TRUE(fs::exists(run() / "checkpoints" / name / "manifest.json")) << name;
    }
    auto r = test_util::kvmtrain("train " + cfg() + " --resume auto", root);
    ASSERT_EQ(r.status, 0) << r.err;
    expect_same_losses(run() / "log.jsonl", reference_log());
  }
}

TEST_F(Resume, CorruptCheckpointsAreNamedAndSkipped) {
  fs::copy(root / "reference", run(), fs::copy_options::recursive);
  const fs::path ck = run() / "checkpoints";
  // flip a byte of the newest (same size: only the checksum can tell), truncate the one before
  {
    std::fstream f(ck / "step_00000040/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(2000);
    char c = char(f.get() ^ 0x40);
    f.seekp(2000);
    f.put(c);
  }
  fs::resize_file(ck / "step_00000036/optimizer.safetensors", 1000);

  auto r = test_util::kvmtrain("train " + cfg() + " --resume " + (ck / "step_00000040").string(), root);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("step_00000040/model.safetensors"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("sha256"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;

  r = test_util::kvmtrain("train " + cfg() + " --resume auto", root);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("warning: checkpoint " + (ck / "step_00000040").string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("step_00000036/optimizer.safetensors: truncated"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("step_00000032 (step 32"), std::string::npos) << r.out;
  expect_same_losses(run() / "log.jsonl", reference_log());
  // the resumed run rewrote 36 and 40: complete again
  auto v = test_util::kvmtrain("export " + run().string() + " --output " + (root / "exp_check").string(), root);
  EXPECT_EQ(v.status, 0) << v.err;
  EXPECT_NE(v.out.find("step_00000040"), std::string::npos) << v.out;
}

// SIGTERM during the set-up (as soon as config.yaml is written, before the model and the data are
// ready): the handlers are in place already, so the run stops at the step it reached with a
// complete checkpoint and exits 0 (issue 21: it exited 143 with nothing saved), and resumes exactly.
TEST_F(Resume, SigtermDuringSetUpSavesAndExitsCleanly) {
  fs::remove_all(run());
  pid_t pid = spawn("train " + cfg(), root);
  bool written = false;
  for (int i = 0; i < 20000 && !written; i++) {
    written = fs::exists(run() / "config.yaml");
    if (!written) std::this_thread::sleep_for(std::chrono::microseconds(250));
  }
  kill(pid, SIGTERM);
  const int status = wait_status(pid);
  ASSERT_TRUE(written) << "config.yaml never appeared";
  EXPECT_EQ(status, 0) << test_util::slurp(root / "bg.err");
  const std::string out = test_util::slurp(root / "bg.out");
  const size_t at = out.find("SIGTERM: stopped after step ");
  ASSERT_NE(at, std::string::npos) << out;
  const int step = std::stoi(out.substr(at + 27));
  EXPECT_EQ(count_lines(run() / "log.jsonl"), size_t(step));
  char name[32];
  std::snprintf(name, sizeof name, "step_%08d", step);
  EXPECT_TRUE(fs::exists(run() / "checkpoints" / name / "manifest.json")) << name;
  auto r = test_util::kvmtrain("train " + cfg() + " --resume auto", root);
  ASSERT_EQ(r.status, 0) << r.err;
  expect_same_losses(run() / "log.jsonl", reference_log());
}

// One process at a time in a run directory: while a run trains, a second `train` into its log.dir
// (fresh or --resume auto) is refused naming the holder's pid, and the run goes on untouched
// (issue 21: two runs interleaved their logs and deleted each other's saves). The lock goes with
// the process: afterwards the run resumes.
TEST_F(Resume, ASecondProcessInTheRunDirectoryIsRefused) {
  fs::remove_all(run());
  pid_t pid = spawn("train " + cfg() + " --set train.steps=100000", root);
  const bool running = wait_for_rows(pid, run() / "log.jsonl", 3);
  auto r = test_util::kvmtrain("train " + cfg() + " --resume auto", root);
  // an export into the live run's directory is refused the same way, and writes nothing there
  auto ex = test_util::kvmtrain("export " + (root / "reference").string() + " --output " + run().string(), root);
  kill(pid, SIGINT);  // stops after the current step (status 130)
  const int status = wait_status(pid);
  ASSERT_TRUE(running);
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find(run().string() + ": in use by another kvmtrain process (pid " + std::to_string(pid) + ")"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(ex.status, 2) << ex.err;
  EXPECT_NE(ex.err.find("in use by another kvmtrain process (pid " + std::to_string(pid) + "); export --output needs it"),
            std::string::npos)
      << ex.err;
  EXPECT_FALSE(fs::exists(run() / "model.safetensors"));
  EXPECT_EQ(status, 130) << test_util::slurp(root / "bg.err");
  // the first run's log is one row per step, in order, whatever the second tried
  auto rows = log_rows(run() / "log.jsonl");
  for (size_t i = 0; i < rows.size(); i++) EXPECT_EQ(rows[i].at("step").integer(), int64_t(i + 1));
  r = test_util::kvmtrain("train " + cfg() + " --resume auto --set train.steps=" + std::to_string(rows.size() + 2),
                          root);
  EXPECT_EQ(r.status, 0) << r.err;
}

// Resumed from step 36 of a finished run with another learning rate, the run's final checkpoint is
// its own: step_00000040 from the first history is replaced (issue 21: it was kept, and export
// then wrote the other model).
TEST_F(Resume, TheFinalCheckpointIsThisRunsOwn) {
  fs::copy(root / "reference", run(), fs::copy_options::recursive);
  const fs::path ck = run() / "checkpoints";
  auto r = test_util::kvmtrain("train " + cfg() + " --set train.lr=1e-3 --resume " + (ck / "step_00000036").string(),
                               root);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(test_util::slurp(ck / "step_00000040/model.safetensors"),
            test_util::slurp(root / "reference/checkpoints/step_00000040/model.safetensors"));
  EXPECT_NE(test_util::slurp(ck / "step_00000040/config.yaml").find("lr: 0.001"), std::string::npos);
  // resumed from the final checkpoint itself, nothing is trained and it stays as it is
  const std::string before = test_util::slurp(ck / "step_00000040/model.safetensors");
  r = test_util::kvmtrain("train " + cfg() + " --set train.lr=1e-3 --resume auto", root);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(test_util::slurp(ck / "step_00000040/model.safetensors"), before);
}

// A state.json with a negative count (its manifest entry rewritten to match, as a hand edit would
// leave it consistent) is refused naming the file and the field (issue 21: step -3 was taken).
TEST_F(Resume, NegativeCountsInStateAreRefused) {
  fs::copy(root / "reference", run(), fs::copy_options::recursive);
  const fs::path ck = run() / "checkpoints" / "step_00000040";
  for (const char* field : {"step", "train_position"}) {
    auto state = json::parse(test_util::slurp(ck / "state.json"));
    if (std::string(field) == "step") state.object()["step"] = -3;
    else state.object()["loader"].object()["train_position"] = -160;
    const std::string text = json::dump(state);
    std::ofstream(ck / "state.json", std::ios::trunc) << text;
    auto manifest = json::parse(test_util::slurp(ck / "manifest.json"));
    auto& entry = manifest.object()["files"].object()["state.json"].object();
    entry["bytes"] = int64_t(text.size());
    entry["sha256"] = data::sha256_hex(text);
    std::ofstream(ck / "manifest.json", std::ios::trunc) << json::dump(manifest);
    auto r = test_util::kvmtrain("train " + cfg() + " --resume " + ck.string(), root);
    EXPECT_EQ(r.status, 2) << field;
    EXPECT_NE(r.err.find((ck / "state.json").string() + ": " + field + " = -"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    fs::copy(root / "reference/checkpoints/step_00000040", ck,
             fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  }
}

TEST_F(Resume, ResumeErrors) {
  auto r = test_util::kvmtrain("train " + cfg() + " --resume " + (root / "nothing").string(), root);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("nothing: not a checkpoint"), std::string::npos) << r.err;
  // another sequence length or global batch is not a continuation (issue 21: it only warned, and
  // the data position counted windows of the old length): refused naming the key and both values
  // (the same global batch split otherwise over ranks resumes: test_train_mpi)
  const std::string ck = (root / "reference/checkpoints/step_00000036").string();
  const std::string glob = "data.train=" + (root / "data/train/*.h5").string();
  for (const auto& [set, key] : {std::pair{std::string("train.seq_len=32"), std::string("train.seq_len is 32")},
                                 std::pair{std::string("train.batch_size=2"), std::string("the global batch (train.batch_size x train.grad_accum x parallel.data) is 2")},
                                 std::pair{glob, "data.train is " + (root / "data/train/*.h5").string() + " x1"}}) {
    fs::remove_all(root / "other");
    r = test_util::kvmtrain("train " + cfg() + " --set " + set + " --set log.dir=" + (root / "other").string() +
                                " --resume " + ck,
                            root);
    EXPECT_EQ(r.status, 2) << set;
    EXPECT_NE(r.err.find(key + " but the checkpoint " + ck + " was trained with"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("add --rederive-data-position"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    // --rederive-data-position accepts the change: the data continues at as many tokens consumed
    r = test_util::kvmtrain("train " + cfg() + " --set " + set + " --set log.dir=" + (root / "other").string() +
                                " --resume " + ck + " --rederive-data-position",
                            root);
    EXPECT_EQ(r.status, 0) << set << r.err;
    const bool shorter = set == "train.seq_len=32";
    EXPECT_NE(r.out.find(std::string("--rederive-data-position: 144 windows of 64 tokens consumed, continuing at window ") +
                         (shorter ? "288 of 32" : "144 of 64")),
              std::string::npos)
        << r.out;
    EXPECT_EQ(log_rows(root / "other/log.jsonl").size(), 4u) << "steps 37..40";
  }
  fs::remove_all(root / "other");
  r = test_util::kvmtrain("train " + cfg() + " --rederive-data-position", root);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--rederive-data-position applies to a resume"), std::string::npos) << r.err;
}

// Ctrl-C: the step under way finishes and is logged, the run says so and exits with 130 (the
// shell's status for SIGINT, so that scripts see the interruption). The run is long enough that
// the signal lands inside the training loop (after it, Ctrl-C has its default meaning). A second
// Ctrl-C, which leaves at once, is not tested: two signals sent together merge into one.
TEST_F(Resume, CtrlCStopsCleanlyAfterTheCurrentStep) {
  const std::string long_run = "train " + cfg() + " --set train.steps=100000";
  pid_t pid = spawn(long_run, root);
  const bool running = wait_for_rows(pid, run() / "log.jsonl", 5);
  kill(pid, SIGINT);
  const int status = wait_status(pid);
  ASSERT_TRUE(running) << "the run ended before Ctrl-C: " << test_util::slurp(root / "bg.err");
  EXPECT_EQ(status, 130) << test_util::slurp(root / "bg.err");
  EXPECT_NE(test_util::slurp(root / "bg.out").find("interrupted: stopped cleanly after the current step"),
            std::string::npos);
  // every logged row is whole (log_rows parses each), one per step in order
  auto rows = log_rows(run() / "log.jsonl");
  ASSERT_GE(rows.size(), 5u);
  for (size_t i = 0; i < rows.size(); i++) EXPECT_EQ(rows[i].at("step").integer(), int64_t(i + 1));
}

}  // namespace
