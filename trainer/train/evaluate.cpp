#include "trainer/train/evaluate.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

namespace fs = std::filesystem;

namespace eval {

Validation::Validation(const config::Config& cfg, std::vector<data::Source> sources, int B, int T)
    : loader_({std::move(sources), B, T, uint64_t(cfg.train.seed), 0, 1, false, config::to_string(cfg.data.tokenizer),
               cfg.model.vocab_size}),
      batch_(B, T) {}

double Validation::loss(Model& model, int64_t batches) {
  loader_.set_position(0);
  double sum = 0;  // over the scored targets
  int64_t scored = 0;
  for (int64_t i = 0; i < batches; i++) {
    batch_.load(loader_);
    model.forward(batch_.inputs.data(), batch_.B, batch_.T);
    sum += double(model.loss(batch_.targets.data(), 0.0f)) * double(batch_.scored);
    scored += batch_.scored;
  }
  return scored > 0 ? sum / double(scored) : 0.0;
}

bool plot(const std::vector<std::string>& args) {
  const char* py = std::getenv("KVMTRAIN_PYTHON");
  const char* script = std::getenv("KVMTRAIN_PLOT");
  const std::string python = py && *py ? py : "/usr/bin/python3";
  const std::string path = script && *script ? script : std::string(KVMTRAIN_SOURCE_DIR) + "/launch/plot.py";
  if (!fs::exists(path)) {
    std::fprintf(stderr, "kvmtrain: warning: no plot: %s not found (set KVMTRAIN_PLOT)\n", path.c_str());
    return false;
  }
  std::fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    sigset_t none;  // a training run blocks its stop signals (install_stop_signals): not the plotter's
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    std::vector<char*> argv{const_cast<char*>(python.c_str()), const_cast<char*>(path.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int ws = 0;
  if (pid < 0 || waitpid(pid, &ws, 0) < 0 || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
    std::fprintf(stderr, "kvmtrain: warning: no plot: %s %s %s failed (is python3-matplotlib installed?)\n",
                 python.c_str(), path.c_str(), args.empty() ? "" : args[0].c_str());
    return false;
  }
  return true;
}

std::string default_out_dir(const std::string& ckpt_or_run, const std::string& resolved_checkpoint) {
  fs::path c = fs::weakly_canonical(resolved_checkpoint);
  if (c.parent_path().filename() == "checkpoints") return (c.parent_path().parent_path() / "eval").string();
  fs::path given = fs::weakly_canonical(ckpt_or_run);
  if (given != c) return (fs::path(ckpt_or_run) / "eval").string();
  return (c.parent_path() / "eval").string();
}

}  // namespace eval
