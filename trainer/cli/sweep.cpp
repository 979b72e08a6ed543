#include "trainer/cli/sweep.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "common/dir_lock.h"
#include "common/file_io.h"
#include "common/json.h"
#include "kernels/kvm.h"
#include "trainer/model/model.h"
#include "common/usage_error.h"
#include "trainer/train/evaluate.h"
#include "trainer/train/run_log.h"

namespace fs = std::filesystem;

namespace sweep {

namespace {

std::string flow(const YAML::Node& n) {
  if (n.IsScalar()) return n.Scalar();
  YAML::Emitter e;
  e << YAML::Flow << n;
  return e.c_str();
}

std::string at_line(const std::string& file, const YAML::Node& n) {
  return file + ":" + std::to_string(n.Mark().line + 1);
}

// A directory name from a value: letters, digits, '.', '-' kept, the rest '_' (runs collapsed).
std::string sanitize(const std::string& s) {
  std::string out;
  for (char c : s) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-';
    if (ok) out += c;
    else if (!out.empty() && out.back() != '_') out += '_';
  }
  while (!out.empty() && out.back() == '_') out.pop_back();
  return out.empty() ? "x" : out;
}

Overrides read_set(const YAML::Node& n, const std::string& file, const std::string& what) {
  if (!n.IsMap()) throw UsageError(at_line(file, n) + ": " + what + ": expected a map of config keys to values");
  Overrides out;
  for (auto it = n.begin(); it != n.end(); ++it) out.emplace_back(it->first.as<std::string>(), flow(it->second));
  return out;
}

std::atomic<int> g_stop{0};
std::atomic<pid_t> g_child{0};
void on_signal(int sig) {
  if (sig != SIGINT) {  // SIGTERM / SIGUSR1: the child saves a checkpoint and stops
    pid_t c = g_child.load();
    if (c > 0) kill(c, sig);
  }
  g_stop = sig;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string fmt(std::optional<double> v, const char* f = "%.4f") {
  if (!v) return "";
  char b[64];
  std::snprintf(b, sizeof b, f, *v);
  return b;
}

std::string overrides_text(const Overrides& o) {
  std::string s;
  for (const auto& [k, v] : o) s += (s.empty() ? "" : "; ") + k + "=" + v;
  return s;
}

// The accuracy in <run_dir>/eval/recall.json, when the run was evaluated (eval writes it whole).
std::optional<double> recall_accuracy(const std::string& run_dir) {
  const std::string path = run_dir + "/eval/recall.json";
  if (!fs::exists(path)) return std::nullopt;
  return json::parse(ckpt::read_file(path)).at("accuracy").number();
}

// The --output DIR of a prepare argument list ("" when it has none).
std::string prepared_dir(const std::vector<std::string>& words) {
  for (size_t i = 0; i + 1 < words.size(); i++)
    if (words[i] == "--output") return words[i + 1];
  return "";
}

// grid: the cartesian product of its axes, the last varying fastest; runs named by key-value.
std::vector<Run> grid_runs(const YAML::Node& g, const std::string& path) {
  std::vector<Run> runs;
  if (!g.IsMap() || g.size() == 0)
    throw UsageError(at_line(path, g) + ": grid: expected a map of config keys to lists of values");
  std::vector<std::pair<std::string, std::vector<std::string>>> axes;
  for (auto it = g.begin(); it != g.end(); ++it) {
    const std::string k = it->first.as<std::string>();
    if (!it->second.IsSequence() || it->second.size() == 0)
      throw UsageError(at_line(path, it->second) + ": grid: " + k + ": expected a non-empty list of values");
    std::vector<std::string> vals;
    for (const auto& v : it->second) vals.push_back(flow(v));
    axes.emplace_back(k, vals);
  }
  size_t total = 1;
  for (const auto& ax : axes) total *= ax.second.size();
  for (size_t i = 0; i < total; i++) {  // the last axis varies fastest
    Run r;
    std::vector<size_t> idx(axes.size());
    size_t rest = i;
    for (size_t a = axes.size(); a-- > 0;) {
      idx[a] = rest % axes[a].second.size();
      rest /= axes[a].second.size();
    }
    for (size_t a = 0; a < axes.size(); a++) {
      const std::string& k = axes[a].first;
      const std::string& v = axes[a].second[idx[a]];
      r.overrides.emplace_back(k, v);
      const size_t dot = k.rfind('.');
      const std::string tag = dot == std::string::npos ? k : k.substr(dot + 1);
      r.tags.emplace_back(tag, v);
      if (!r.name.empty()) r.name += '_';
      r.name += sanitize(tag) + "-" + sanitize(v);
    }
    runs.push_back(r);
  }
  return runs;
}

// runs: a list of {name, set}.
std::vector<Run> listed_runs(const YAML::Node& list, const std::string& path) {
  std::vector<Run> runs;
  if (!list.IsSequence() || list.size() == 0)
    throw UsageError(at_line(path, list) + ": runs: expected a list of {name, set}");
  for (const auto& item : list) {
    if (!item.IsMap() || !item["name"] || !item["name"].IsScalar())
      throw UsageError(at_line(path, item) + ": runs: each entry needs name: (and set: {key: value})");
    for (auto it = item.begin(); it != item.end(); ++it) {
      const std::string k = it->first.as<std::string>();
      if (k != "name" && k != "set" && k != "tags")
        throw UsageError(at_line(path, it->first) + ": runs: unknown key '" + k + "' (expected name, set, tags)");
    }
    Run r;
    r.name = item["name"].Scalar();
    if (r.name.empty() || sanitize(r.name) != r.name)
      throw UsageError(at_line(path, item["name"]) + ": runs: name '" + r.name +
                            "' must be a directory name (letters, digits, '.', '-', '_')");
    if (item["set"]) r.overrides = read_set(item["set"], path, "runs: " + r.name + ": set");
    if (item["tags"]) r.tags = read_set(item["tags"], path, "runs: " + r.name + ": tags");
    runs.push_back(r);
  }
  return runs;
}

}  // namespace

Sweep load(const std::string& path, const std::string& out) {
  if (!fs::is_regular_file(path)) throw UsageError("sweep file not found: " + path);
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw UsageError(path + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
  }
  if (!root.IsMap()) throw UsageError(path + ": expected a map with base: and grid: or runs:");
  Sweep s;
  s.file = path;
  static const std::set<std::string> known = {"base", "out", "set", "grid", "runs", "mpirun_np", "prepare", "eval", "plot"};
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string k = it->first.as<std::string>();
    if (!known.count(k))
      throw UsageError(at_line(path, it->first) + ": unknown key '" + k +
                            "' (expected base, out, set, grid, runs, mpirun_np, prepare, eval, plot)");
  }
  if (!root["base"] || !root["base"].IsScalar()) throw UsageError(path + ": base: missing (the config every run starts from)");
  fs::path base = root["base"].Scalar();
  if (base.is_relative()) base = fs::path(path).parent_path() / base;
  s.base = base.lexically_normal().string();
  if (!fs::is_regular_file(s.base))
    throw UsageError(at_line(path, root["base"]) + ": base: config file not found: " + s.base);
  s.out = out;
  if (s.out.empty()) {
    if (!root["out"] || !root["out"].IsScalar()) throw UsageError(path + ": out: missing (the sweep directory)");
    s.out = root["out"].Scalar();
  }
  if (root["set"]) s.common = read_set(root["set"], path, "set");
  if (root["mpirun_np"]) {
    int np = 0;
    if (!root["mpirun_np"].IsScalar() || !YAML::convert<int>::decode(root["mpirun_np"], np) || np < 1)
      throw UsageError(at_line(path, root["mpirun_np"]) + ": mpirun_np: expected an integer >= 1");
    s.mpirun_np = np;
  }
  if (const YAML::Node p = root["prepare"]) {
    if (!p.IsSequence()) throw UsageError(at_line(path, p) + ": prepare: expected a list of argument lines");
    for (const auto& line : p) {
      std::vector<std::string> words;
      std::istringstream in(line.IsScalar() ? line.Scalar() : "");
      for (std::string w; in >> w;) words.push_back(w);
      if (!line.IsScalar() || prepared_dir(words).empty())
        throw UsageError(at_line(path, line) + ": prepare: expected a line of kvmtrain prepare arguments with --output DIR");
      s.prepare.push_back(words);
    }
  }
  if (const YAML::Node e = root["eval"]) {
    if (!e.IsSequence()) throw UsageError(at_line(path, e) + ": eval: expected a list of tasks (recall)");
    for (const auto& t : e) {
      if (!t.IsScalar() || t.Scalar() != "recall")
        throw UsageError(at_line(path, t) + ": eval: '" + flow(t) + "' is not a task a sweep runs (expected recall)");
      s.evals.push_back(t.Scalar());
    }
  }
  const bool has_grid = bool(root["grid"]), has_runs = bool(root["runs"]);
  if (has_grid == has_runs)
    throw UsageError(path + ": expected exactly one of grid: (a cartesian product) or runs: (a list)");
  s.runs = has_grid ? grid_runs(root["grid"], path) : listed_runs(root["runs"], path);
  std::set<std::string> names;
  for (const auto& r : s.runs)
    if (!names.insert(r.name).second) throw UsageError(path + ": two runs are named '" + r.name + "'");
  if (const YAML::Node p = root["plot"]) {
    if (!p.IsMap() || !p["x"] || !p["y"] || !p["lines"] || p.size() != 3)
      throw UsageError(at_line(path, p) + ": plot: expected {x: TAG, y: COLUMN, lines: TAG}");
    Plot plot{p["x"].as<std::string>(), p["y"].as<std::string>(), p["lines"].as<std::string>()};
    static const std::set<std::string> columns = {"recall_accuracy", "final_val_loss", "best_val_loss", "tokens_per_s"};
    if (!columns.count(plot.y))
      throw UsageError(at_line(path, p["y"]) + ": plot: y: '" + plot.y +
                       "' (expected recall_accuracy, final_val_loss, best_val_loss or tokens_per_s)");
    if (plot.y == "recall_accuracy" && s.evals.empty())
      throw UsageError(at_line(path, p["y"]) + ": plot: y: recall_accuracy needs eval: [recall]");
    // runs without both tags are left out of the plot
    for (const std::string& tag : {plot.x, plot.lines})
      if (std::none_of(s.runs.begin(), s.runs.end(), [&](const Run& r) {
            return std::any_of(r.tags.begin(), r.tags.end(), [&](const auto& t) { return t.first == tag; });
          }))
        throw UsageError(at_line(path, p) + ": plot: no run has the tag '" + tag + "'");
    s.plot = plot;
  }
  // every run's config must resolve before anything trains
  for (const auto& r : s.runs) run_config(s, r);
  return s;
}

namespace {

// The --set list that defines run r's config: the sweep's, the run's, log.dir, parallel.data.
std::vector<std::string> config_sets(const Sweep& s, const Run& r) {
  std::vector<std::string> sets;
  bool has_parallel = false;
  for (const Overrides* o : {&s.common, &r.overrides})
    for (const auto& [k, v] : *o) {
      sets.push_back(k + "=" + v);
      has_parallel |= k.rfind("parallel.", 0) == 0;
    }
  sets.push_back("log.dir=" + (fs::path(s.out) / r.name).string());
  if (s.mpirun_np > 0 && !has_parallel) sets.push_back("parallel.data=" + std::to_string(s.mpirun_np));
  return sets;
}

}  // namespace

config::Config run_config(const Sweep& s, const Run& r) {
  try {
    return config::load(s.base, config_sets(s, r));
  } catch (const std::exception& e) {
    throw UsageError(s.file + ": run '" + r.name + "': " + e.what());
  }
}

std::vector<std::string> train_overrides(const Sweep& s, const Run& r) {
  const config::Config cfg = run_config(s, r);
  std::vector<std::string> sets = config_sets(s, r);
  // checkpoints let a rerun of the sweep continue an interrupted run
  if (cfg.checkpoint.every == 0) {
    const int every = cfg.train.eval_every > 0 ? cfg.train.eval_every : std::max(1, cfg.train.steps / 10);
    sets.push_back("checkpoint.every=" + std::to_string(every));
  }
  return sets;
}

std::string state_slots(const config::ModelConfig& m, int T) {
  std::string out;
  std::set<config::Mixer> seen;
  for (config::Mixer kind : m.mixers) {
    if (!seen.insert(kind).second) continue;
    int slots = T;
    switch (kind) {
      case config::Mixer::attn: break;  // every token
      case config::Mixer::swa: slots = std::min(m.swa_window, T); break;
      case config::Mixer::bswa: slots = std::min(m.kvm.chunk * m.kvm.window_chunks, T); break;
      case config::Mixer::kvm: {
        kernels::KvmParams p;
        p.C = m.kvm.chunk, p.W = m.kvm.window_chunks, p.S = m.kvm.sink;
        p.budget = to_kernels(m.kvm.budget);
        p.min_len = m.kvm.min_len, p.power_f = m.kvm.power_f, p.power_e = m.kvm.power_e, p.sat_n = m.kvm.sat_n;
        p.max_slots = m.kvm.max_slots ? m.kvm.max_slots : 1 << 30;
        // the final training state after T tokens: chunk 0, then one update after each read-out
        // but the last (as tests/kernels/test_kvm.cpp's slots_after, doc section 9)
        int M = std::min(T, p.C);
        for (int qe = p.W * p.C + p.C; qe < T; qe += p.C) {
          const int avail = qe + p.C - p.W * p.C;
          M += std::clamp(kernels::kvm_budget(p, qe, avail, M) - M, 0, p.C);
        }
        slots = M;
        break;
      }
    }
    out += (out.empty() ? "" : " / ") + config::to_string(kind) + " " + std::to_string(slots);
  }
  return out;
}

Result summarize(const std::string& run_dir, const config::Config& cfg) {
  Result r;
  r.steps_total = cfg.train.steps;
  r.state = state_slots(cfg.model, cfg.train.seq_len);
  std::vector<double> tps;
  std::ifstream log(run_dir + "/log.jsonl");
  for (std::string line; std::getline(log, line);) {
    json::Value row;
    try {
      row = json::parse(line);
    } catch (const std::exception&) {
      continue;  // a line cut by a crash
    }
    if (!row.is_object() || !row.contains("step")) continue;
    r.steps_done = std::max(r.steps_done, row.at("step").integer());
    if (row.contains("tokens_per_s") && row.at("tokens_per_s").is_number()) tps.push_back(row.at("tokens_per_s").number());
    if (row.contains("val_loss") && row.at("val_loss").is_number()) {
      const double v = row.at("val_loss").number();
      r.final_val = v;
      if (!r.best_val || v < *r.best_val) r.best_val = v;
    }
  }
  if (!tps.empty()) {
    std::nth_element(tps.begin(), tps.begin() + tps.size() / 2, tps.end());
    r.tokens_per_s = tps[tps.size() / 2];
  }
  std::ifstream out(run_dir + "/train.out");
  const std::string tag = "model: ";
  for (std::string line; std::getline(out, line);)
    if (line.rfind(tag, 0) == 0 && line.find(" parameters") != std::string::npos) r.params = std::atoll(line.c_str() + tag.size());
  r.status = r.steps_done >= r.steps_total ? "done" : r.steps_done > 0 ? "partial" : "pending";
  r.recall_accuracy = recall_accuracy(run_dir);
  return r;
}

void write_summary(const Sweep& s, const std::vector<std::string>& failed) {
  fs::create_directories(s.out);
  std::ostringstream csv, md;
  const bool recall = std::find(s.evals.begin(), s.evals.end(), "recall") != s.evals.end();
  csv << "run,status,overrides,steps,final_val_loss,best_val_loss,tokens_per_s,parameters,state_slots"
      << (recall ? ",recall_accuracy" : "") << "\n";
  md << "| run | status | overrides | steps | final val loss | best val loss | tokens/s | parameters | state slots |"
     << (recall ? " recall accuracy |" : "") << "\n|---|---|---|---|---|---|---|---|---|" << (recall ? "---|" : "")
     << "\n";
  json::Array runs;
  for (const auto& run : s.runs) {
    const config::Config cfg = run_config(s, run);
    Result r = summarize(cfg.log.dir, cfg);
    if (std::find(failed.begin(), failed.end(), run.name) != failed.end()) r.status = "failed";
    const std::string ov = overrides_text(run.overrides);
    const std::string steps = std::to_string(r.steps_done) + "/" + std::to_string(r.steps_total);
    const std::string tps = r.tokens_per_s > 0 ? fmt(r.tokens_per_s, "%.0f") : "";
    const std::string params = r.params ? std::to_string(r.params) : "";
    csv << csv_field(run.name) << "," << r.status << "," << csv_field(ov) << "," << steps << "," << fmt(r.final_val)
        << "," << fmt(r.best_val) << "," << tps << "," << params << "," << csv_field(r.state)
        << (recall ? "," + fmt(r.recall_accuracy) : "") << "\n";
    std::string ov_md = ov;
    for (size_t p = 0; (p = ov_md.find('|', p)) != std::string::npos; p += 2) ov_md.replace(p, 1, "\\|");
    md << "| " << run.name << " | " << r.status << " | " << (ov_md.empty() ? "(base)" : "`" + ov_md + "`") << " | "
       << steps << " | " << fmt(r.final_val) << " | " << fmt(r.best_val) << " | " << tps << " | " << params << " | "
       << r.state << " |" << (recall ? " " + fmt(r.recall_accuracy) + " |" : "") << "\n";
    json::Object o{{"name", run.name}, {"status", r.status}, {"overrides", ov},
                   {"log", cfg.log.dir + "/log.jsonl"}, {"steps_done", r.steps_done}, {"steps", r.steps_total},
                   {"tokens_per_s", r.tokens_per_s}, {"parameters", r.params}, {"state_slots", r.state},
                   {"seq_len", cfg.train.seq_len}, {"batch_size", cfg.train.batch_size}};
    if (r.final_val) o["final_val_loss"] = *r.final_val;
    if (r.best_val) o["best_val_loss"] = *r.best_val;
    if (r.recall_accuracy) o["recall_accuracy"] = *r.recall_accuracy;
    json::Object tags;
    for (const auto& [k, v] : run.tags) tags[k] = v;
    o["tags"] = tags;
    runs.push_back(o);
  }
  const std::string out = s.out;
  write_file_atomic(out + "/summary.csv", csv.str());
  write_file_atomic(out + "/summary.md", "# Sweep " + s.file + "\n\nBase config: `" + s.base + "`" +
                                             (s.common.empty() ? "" : "; every run: `" + overrides_text(s.common) + "`") +
                                             "\n\n" + md.str());
  json::Object summary{{"sweep", s.file}, {"base", s.base}, {"runs", runs}};
  if (s.plot) summary["plot"] = json::Object{{"x", s.plot->x}, {"y", s.plot->y}, {"lines", s.plot->lines}};
  write_file_atomic(out + "/summary.json", json::dump(summary, 2) + "\n");
  eval::plot({"sweep", out + "/summary.json", out + "/loss_curves.png"});
}

namespace {

// The command line that trains one run: kvmtrain train (under mpiexec with mpirun_np).
std::vector<std::string> train_argv(const Sweep& s, const Run& run, const std::string& self) {
  std::vector<std::string> argv;
  if (s.mpirun_np > 0) {
    const char* mpi = std::getenv("KVMTRAIN_MPIEXEC");
    argv = {mpi && *mpi ? mpi : "mpiexec", "-n", std::to_string(s.mpirun_np)};
  }
  argv.insert(argv.end(), {self, "train", s.base});
  for (const auto& o : train_overrides(s, run)) argv.insert(argv.end(), {"--set", o});
  argv.insert(argv.end(), {"--resume", "auto"});
  return argv;
}

// Runs argv as a child with stdout and stderr appended to `log` (a signal to the sweep reaches it
// through g_child) and returns its exit status (128 + the signal that killed it).
int run_child(const std::vector<std::string>& argv, const std::string& log) {
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("sweep: fork failed: " + std::string(std::strerror(errno)));
  if (pid == 0) {
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    execvp(cargv[0], cargv.data());
    std::fprintf(stderr, "kvmtrain: error: sweep: cannot run %s: %s\n", cargv[0], std::strerror(errno));
    _exit(127);
  }
  g_child = pid;
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  g_child = 0;
  return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

std::string shown(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) out += (out.empty() ? "" : " ") + a;
  return out;
}

// The sweep's eval tasks on a finished run, each unless its result is there; false when one failed.
bool evaluate(const Sweep& s, const config::Config& cfg, const std::string& self, const std::string& tag,
              bool dry_run) {
  for (const std::string& task : s.evals) {
    const std::string result = cfg.log.dir + "/eval/" + task + ".json";
    if (fs::exists(result)) continue;
    const std::vector<std::string> argv{self, "eval", cfg.log.dir, "--task", task};
    std::printf("%s: eval %s -> %s/eval.out\n  %s\n", tag.c_str(), task.c_str(), cfg.log.dir.c_str(),
                shown(argv).c_str());
    std::fflush(stdout);
    if (dry_run) continue;
    const int code = run_child(argv, cfg.log.dir + "/eval.out");
    if (code != 0) {
      std::printf("%s: eval %s FAILED with status %d; see %s/eval.out\n", tag.c_str(), task.c_str(), code,
                  cfg.log.dir.c_str());
      return false;
    }
    if (const auto accuracy = recall_accuracy(cfg.log.dir)) std::printf("%s: recall accuracy %.4f\n", tag.c_str(), *accuracy);
  }
  return true;
}

}  // namespace

int run(const Sweep& s, bool dry_run) {
  // one sweep at a time writes its out directory (each run's train holds its own run directory)
  std::optional<DirLock> lock;
  if (!dry_run) lock.emplace(s.out, "sweep");
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::vector<std::string> failed;
  int status = 0;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {}, old_usr1 {};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGUSR1, &sa, &old_usr1);
  // the data the runs read: each prepare line whose --output holds no manifest yet
  for (const auto& words : s.prepare) {
    const std::string dir = prepared_dir(words);
    std::vector<std::string> argv{self, "prepare"};
    argv.insert(argv.end(), words.begin(), words.end());
    if (fs::exists(fs::path(dir) / "manifest.json")) {
      std::printf("sweep: prepare: %s is ready, skipped\n", dir.c_str());
      continue;
    }
    std::printf("sweep: prepare: %s -> %s/prepare.out\n", shown(argv).c_str(), s.out.c_str());
    std::fflush(stdout);
    if (dry_run) continue;
    const int code = run_child(argv, s.out + "/prepare.out");
    if (code != 0) {
      std::printf("sweep: prepare FAILED with status %d; see %s/prepare.out\n", code, s.out.c_str());
      return 1;
    }
  }
  const int n = int(s.runs.size());
  for (int i = 0; i < n && !g_stop; i++) {
    const Run& run = s.runs[i];
    const config::Config cfg = run_config(s, run);
    const Result before = summarize(cfg.log.dir, cfg);
    const std::string tag = "sweep: [" + std::to_string(i + 1) + "/" + std::to_string(n) + "] " + run.name;
    if (before.status == "done") {
      std::printf("%s: done (%lld steps logged), skipped\n", tag.c_str(), (long long)before.steps_done);
      if (!evaluate(s, cfg, self, tag, dry_run)) failed.push_back(run.name), status = 1;
      continue;
    }
    const std::vector<std::string> argv = train_argv(s, run, self);
    std::printf("%s: %s -> %s/train.out\n  %s\n", tag.c_str(),
                before.status == "partial" ? ("continuing from step " + std::to_string(before.steps_done)).c_str()
                                           : "training",
                cfg.log.dir.c_str(), shown(argv).c_str());
    std::fflush(stdout);
    if (dry_run) continue;
    fs::create_directories(cfg.log.dir);
    const auto t0 = std::chrono::steady_clock::now();
    const int code = run_child(argv, cfg.log.dir + "/train.out");
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const Result after = summarize(cfg.log.dir, cfg);
    if (code == 0 && after.status == "done") {
      std::printf("%s: done in %s, final val loss %s\n", tag.c_str(), format_duration(dt).c_str(),
                  after.final_val ? fmt(after.final_val).c_str() : "(no validation)");
      if (!evaluate(s, cfg, self, tag, dry_run)) failed.push_back(run.name), status = 1;
    } else if (code == 130 || g_stop) {
      std::printf("%s: interrupted at step %lld (rerun the sweep to continue)\n", tag.c_str(),
                  (long long)after.steps_done);
      status = 130;
      break;
    } else if (code == 0) {
      std::printf("%s: stopped at step %lld (rerun the sweep to continue)\n", tag.c_str(), (long long)after.steps_done);
    } else {
      std::printf("%s: FAILED with status %d after %s; see %s/train.out\n", tag.c_str(), code,
                  format_duration(dt).c_str(), cfg.log.dir.c_str());
      failed.push_back(run.name);
      status = 1;
    }
    std::fflush(stdout);
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  sigaction(SIGUSR1, &old_usr1, nullptr);
  if (g_stop && status == 0) status = 130;
  if (!dry_run) {
    write_summary(s, failed);
    std::printf("sweep: summary %s/summary.md, %s/summary.csv, curves %s/loss_curves.png\n", s.out.c_str(),
                s.out.c_str(), s.out.c_str());
  }
  return status;
}

}  // namespace sweep
