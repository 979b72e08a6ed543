// `kvmtrain sweep` as a user runs it: two tiny byte-level runs of 5 steps, their directories, the
// summary (CSV, Markdown, JSON, PNG), skip on rerun, resume of an interrupted run, and one-line
// errors with status 2 for a bad sweep file.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "common/dir_lock.h"
#include "common/json.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

using test_util::kvmtrain;

class SweepCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() / ("kvm_sweep_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir / "text");
    const char* lines[] = {"the cat sat on the mat. ", "a dog ran in the park. ", "we like to read books. "};
    for (int d = 0; d < 6; d++) {
      std::ofstream f(dir / "text" / ("doc" + std::to_string(d) + ".txt"));
      for (int i = 0; i < 40; i++) f << lines[(d + i) % 3];
    }
    ASSERT_EQ(kvmtrain("prepare --quiet --tokenizer byte --input " + (dir / "text").string() + " --output " +
                           (dir / "data").string(), dir).status, 0);
    std::ofstream(dir / "tiny.yaml") << "model: {vocab_size: 257, n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 32,\n"
                                        "        pos: rope, mixers: [kvm], kvm: {chunk: 8, min_len: 8}}\n"
                                        "data: {train: " << (dir / "data/train").string() << ", val: "
                                     << (dir / "data/val").string() << ", tokenizer: byte}\n"
                                     "train: {batch_size: 2, seq_len: 32, steps: 5, lr: 3e-3, eval_every: 5, eval_steps: 2,\n"
                                     "        sample_tokens: 0}\n";
    std::ofstream(dir / "sweep.yaml") << "base: tiny.yaml\nout: " << (dir / "sw").string()
                                      << "\nruns:\n  - {name: base}\n  - {name: no_sink, set: {model.kvm.sink: 0}}\n";
  }
  void TearDown() override { fs::remove_all(dir); }
  size_t log_rows(const std::string& run) {
    std::ifstream f(dir / "sw" / run / "log.jsonl");
    size_t n = 0;
    for (std::string line; std::getline(f, line);) n += !line.empty();
    return n;
  }
  fs::path dir;
};

TEST_F(SweepCli, RunsSummarisesSkipsAndResumes) {
  auto r = kvmtrain("sweep " + (dir / "sweep.yaml").string(), dir);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  for (const char* run : {"base", "no_sink"}) {
    EXPECT_EQ(log_rows(run), 5u) << run;
    EXPECT_TRUE(fs::exists(dir / "sw" / run / "checkpoints")) << "the sweep sets checkpoint.every";
    EXPECT_TRUE(fs::exists(dir / "sw" / run / "train.out"));
  }
  const std::string csv = test_util::slurp(dir / "sw/summary.csv");
  EXPECT_EQ(csv.rfind("run,status,overrides,steps,final_val_loss,best_val_loss,tokens_per_s,parameters,state_slots\n", 0), 0u) << csv;
  EXPECT_NE(csv.find("no_sink,done,model.kvm.sink=0,5/5,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("kvm "), std::string::npos) << csv;
  EXPECT_NE(test_util::slurp(dir / "sw/summary.md").find("| no_sink | done |"), std::string::npos);
  auto summary = json::parse(test_util::slurp(dir / "sw/summary.json"));
  ASSERT_EQ(summary.at("runs").array().size(), 2u);
  for (const auto& run : summary.at("runs").array()) {
    EXPECT_TRUE(run.at("final_val_loss").is_number());
    EXPECT_GT(run.at("parameters").integer(), 0);
    // seq_len 32, chunk 8, window 2 chunks, fixed budget 8: the state never grows past one chunk
    EXPECT_EQ(run.at("state_slots").string(), "kvm 8");
  }
  if (fs::exists("/usr/bin/python3")) {
    EXPECT_TRUE(fs::exists(dir / "sw/loss_curves.png")) << r.err;
  }

  // rerun: both are done and skipped, nothing is appended
  r = kvmtrain("sweep " + (dir / "sweep.yaml").string(), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n') >= 2, true);
  EXPECT_NE(r.out.find("base: done (5 steps logged), skipped"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("no_sink: done (5 steps logged), skipped"), std::string::npos) << r.out;
  EXPECT_EQ(log_rows("base"), 5u);

  // an interrupted run (3 rows logged, no checkpoint left) is continued and ends with one row per step
  {
    std::ifstream in(dir / "sw/no_sink/log.jsonl");
    std::string kept, line;
    for (int i = 0; i < 3 && std::getline(in, line); i++) kept += line + "\n";
    in.close();
    std::ofstream(dir / "sw/no_sink/log.jsonl", std::ios::trunc) << kept;
  }
  fs::remove_all(dir / "sw/no_sink/checkpoints");
  r = kvmtrain("sweep " + (dir / "sweep.yaml").string(), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("no_sink: continuing from step 3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--resume auto"), std::string::npos) << r.out;
  EXPECT_EQ(log_rows("no_sink"), 5u);
}

// One sweep at a time in an out directory: a second is refused in one line naming the holder,
// before any run starts.
TEST_F(SweepCli, ASecondSweepOnTheSameOutIsRefused) {
  const DirLock held((dir / "sw").string(), "this test");  // as a running sweep holds it
  auto r = kvmtrain("sweep " + (dir / "sweep.yaml").string(), dir);
  EXPECT_EQ(r.status, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("kvmtrain: error: " + (dir / "sw").string() + ": in use by another kvmtrain process (pid " +
                       std::to_string(::getpid()) + "); sweep needs it alone"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(fs::exists(dir / "sw/base")) << "a run started although the sweep was refused";
}

// The recall lab's sweep form: data prepared first (skipped once there), each finished run
// evaluated (eval --task recall), the accuracy a summary column, tags and the plot they feed.
TEST_F(SweepCli, PreparesEvaluatesAndPlotsByTags) {
  const std::string data = (dir / "mqar").string();
  std::ofstream(dir / "mq.yaml")
      << "model: {vocab_size: 16, n_layer: 1, n_head: 2, d_model: 32, max_seq_len: 16}\n"
         "data: {train: " << data << "/train, val: " << data << "/val, tokenizer: mqar}\n"
         "train: {batch_size: 8, seq_len: 16, steps: 6, lr: 3e-3, eval_every: 6, eval_steps: 1, sample_tokens: 0}\n";
  std::ofstream(dir / "recall.yaml")
      << "base: mq.yaml\nout: " << (dir / "rs").string() << "\n"
         "prepare: [--synthetic mqar --vocab 16 --seq-len 16 --pairs 2 --examples 200 --val-examples 20 --output " << data
      << "]\neval: [recall]\nplot: {x: lr, y: recall_accuracy, lines: mixer}\n"
         "runs: [{name: slow, tags: {mixer: attn, lr: 1e-3}, set: {train.lr: 1e-3}},\n"
         "       {name: fast, tags: {mixer: attn, lr: 3e-3}}]\n";
  auto r = kvmtrain("sweep " + (dir / "recall.yaml").string(), dir);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_TRUE(fs::exists(dir / "mqar/manifest.json"));
  auto summary = json::parse(test_util::slurp(dir / "rs/summary.json"));
  ASSERT_EQ(summary.at("runs").array().size(), 2u);
  for (const auto& run : summary.at("runs").array()) {
    const std::string name = run.at("name").string();
    const auto recall = json::parse(test_util::slurp(dir / "rs" / name / "eval/recall.json"));
    EXPECT_EQ(run.at("recall_accuracy").number(), recall.at("accuracy").number()) << name;
    EXPECT_EQ(recall.at("queries").integer(), 40) << "20 val examples of 2 pairs";
    EXPECT_EQ(run.at("tags").at("lr").string(), name == "slow" ? "1e-3" : "3e-3");
  }
  EXPECT_EQ(summary.at("plot").at("x").string(), "lr");
  EXPECT_NE(test_util::slurp(dir / "rs/summary.md").find("| recall accuracy |"), std::string::npos);
  const std::string csv = test_util::slurp(dir / "rs/summary.csv");
  EXPECT_NE(csv.find(",recall_accuracy\n"), std::string::npos) << csv;

  // again: the data is ready, the runs done and evaluated, nothing is redone
  const auto before = fs::last_write_time(dir / "rs/slow/eval/recall.json");
  r = kvmtrain("sweep " + (dir / "recall.yaml").string(), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("prepare: " + data + " is ready, skipped"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("eval recall"), std::string::npos) << r.out;
  EXPECT_EQ(fs::last_write_time(dir / "rs/slow/eval/recall.json"), before);
  if (fs::exists("/usr/bin/python3")) EXPECT_TRUE(fs::exists(dir / "rs/recall_accuracy_vs_lr.png")) << r.err;
}

// Every shipped sweep file parses and resolves every run's config (a dry run).
TEST_F(SweepCli, ShippedSweepsResolve) {
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(fs::path(KVMTRAIN_SOURCE_DIR) / "sweeps")) {
    if (e.path().extension() != ".yaml") continue;
    files++;
    auto r = kvmtrain("sweep " + e.path().string() + " --dry-run", dir);
    EXPECT_EQ(r.status, 0) << e.path() << r.err;
  }
  EXPECT_GE(files, 4u);
}

TEST_F(SweepCli, GridNamesAndDryRun) {
  std::ofstream(dir / "grid.yaml") << "base: tiny.yaml\nout: " << (dir / "g").string()
                                   << "\nset: {train.steps: 2}\ngrid: {train.lr: [1e-3, 2e-3], model.kvm.sink: [0, 1]}\n";
  auto r = kvmtrain("sweep " + (dir / "grid.yaml").string() + " --dry-run", dir);
  ASSERT_EQ(r.status, 0) << r.err;
  for (const char* name : {"lr-1e-3_sink-0", "lr-1e-3_sink-1", "lr-2e-3_sink-0", "lr-2e-3_sink-1"})
    EXPECT_NE(r.out.find(name), std::string::npos) << name << "\n" << r.out;
  EXPECT_NE(r.out.find("[4/4]"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "g/lr-1e-3_sink-0/log.jsonl"));
}

TEST_F(SweepCli, BadSweepFilesAreOneLineErrors) {
  struct Case {
    std::string yaml, expect;
  };
  std::vector<Case> cases = {
      {"base: tiny.yaml\nout: o\ngrid: {train.lrr: [1]}\n", "unknown key 'train.lrr'"},
      {"base: tiny.yaml\nout: o\ngrid: {train.lr: 1}\n", "expected a non-empty list"},
      {"base: tiny.yaml\nout: o\n", "exactly one of grid"},
      {"base: nope.yaml\nout: o\nruns: [{name: a}]\n", "config file not found"},
      {"base: tiny.yaml\nout: o\nruns: [{name: a}, {name: a}]\n", "two runs are named 'a'"},
      {"base: tiny.yaml\nout: o\nrunz: []\n", "unknown key 'runz'"},
      {"base: [\n", "not valid YAML"},
      {"base: tiny.yaml\nout: o\nprepare: [--synthetic mqar]\nruns: [{name: a}]\n", "with --output DIR"},
      {"base: tiny.yaml\nout: o\neval: [loss]\nruns: [{name: a}]\n", "'loss' is not a task a sweep runs"},
      {"base: tiny.yaml\nout: o\neval: [recall]\nplot: {x: n, y: recall_accuracy, lines: m}\n"
       "runs: [{name: a, tags: {m: x}}]\n", "no run has the tag 'n'"},
      {"base: tiny.yaml\nout: o\nplot: {x: n, y: recall_accuracy, lines: m}\nruns: [{name: a, tags: {m: x, n: 1}}]\n",
       "recall_accuracy needs eval: [recall]"},
      {"base: tiny.yaml\nout: o\nruns: [{name: a, tag: {m: x}}]\n", "unknown key 'tag' (expected name, set, tags)"},
  };
  for (const auto& c : cases) {
    std::ofstream(dir / "bad.yaml", std::ios::trunc) << c.yaml;
    auto r = kvmtrain("sweep " + (dir / "bad.yaml").string(), dir);
    EXPECT_EQ(r.status, 2) << c.yaml << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << c.yaml << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << c.yaml << r.err;
  }
  auto r = kvmtrain("sweep " + (dir / "absent.yaml").string(), dir);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("sweep file not found"), std::string::npos) << r.err;
}

}  // namespace
