#include "trainer/train/trainer.h"

#include <omp.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <pthread.h>
#include <unistd.h>

#include "checkpoints/checkpoint.h"
#include "common/rng.h"
#include "common/usage_error.h"
#include "data/corpus_stats.h"
#include "data/manifest.h"
#include "trainer/model/flops.h"
#include "trainer/model/sample.h"
#include "trainer/optim/optimizer.h"
#include "trainer/train/backend_choice.h"
#include "trainer/train/checkpointing.h"
#include "version.h"

namespace {

std::atomic<int> g_interrupts{0};
std::atomic<int> g_save_signal{0};

// First Ctrl-C: finish the current step and stop cleanly. Second: leave at once.
void on_sigint(int) {
  if (g_interrupts.fetch_add(1) >= 1) _exit(130);
}

// SIGTERM, SIGUSR1 (what Slurm sends before preemption): finish the current step, save a
// checkpoint and exit with status 0.
void on_save_signal(int sig) { g_save_signal = sig; }

const char* signal_name(int sig) { return sig == SIGTERM ? "SIGTERM" : sig == SIGUSR1 ? "SIGUSR1" : "a signal"; }

// A resumed run re-logs the steps after its checkpoint: rows of later steps (written before a
// crash) are dropped so that log.jsonl stays one row per step, in order.
void truncate_log(const std::string& dir, int64_t step, const json::Array& unlogged) {
  const std::string path = dir + "/log.jsonl";
  std::ifstream in(path);
  std::string kept, line;
  size_t dropped = 0;
  int64_t last = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    int64_t row_step = -1;
    try {
      row_step = json::parse(line).at("step").integer();
    } catch (const std::exception&) {
      // a line cut by a crash mid-write: drop it with the rows after the checkpoint
    }
    if (row_step >= 1 && row_step <= step) {
      kept += line + "\n";
      last = std::max(last, row_step);
    } else {
      dropped++;
    }
  }
  in.close();
  // the rows a failed write could not append, which the checkpoint kept
  size_t appended = 0;
  for (const json::Value& row : unlogged)
    if (row.at("step").integer() > last) {
      kept += json::dump(row) + "\n";
      last = row.at("step").integer();
      appended++;
    }
  if (dropped || appended) write_file_atomic(path, kept);
  if (dropped)
    std::printf("log: dropped %zu rows of %s after step %lld (they are recomputed)\n", dropped, path.c_str(),
                (long long)step);
  if (appended) std::printf("log: appended %zu rows the checkpoint kept for %s\n", appended, path.c_str());
}

// The first line where two resolved configs differ, or "".
std::string first_difference(const std::string& a, const std::string& b) {
  std::istringstream sa(a), sb(b);
  std::string la, lb;
  while (true) {
    bool ha = bool(std::getline(sa, la)), hb = bool(std::getline(sb, lb));
    if (!ha && !hb) return "";
    if (ha && hb && la == lb) continue;
    std::string out = "'";
    out += ha ? la : "(end)";
    out += "' vs the checkpoint's '";
    out += hb ? lb : "(end)";
    return out + "'";
  }
}

// A signal reaches ranks at different moments: they agree after every step, so that all stop
// at the same one and none waits in a collective for a rank that left.
// log_failed: in, this rank's log failed; out, some rank's did.
bool stop_requested(Communicator& world, bool& log_failed) {
  float flags[3] = {float(g_interrupts.load() > 0), float(g_save_signal.load() != 0), float(log_failed)};
  world.all_reduce_sum(flags, 3);
  if (flags[0] > 0 && g_interrupts == 0) g_interrupts = 1;
  if (flags[1] > 0 && g_save_signal == 0) g_save_signal = SIGTERM;
  log_failed = flags[2] > 0;
  return flags[0] > 0 || flags[1] > 0 || log_failed;
}

// Rank 0's string, on every rank (collective).
std::string broadcast_string(Communicator& world, std::string s) {
  uint64_t n = s.size();
  world.broadcast(&n, sizeof n, 0);
  s.resize(size_t(n));
  if (n) world.broadcast(s.data(), size_t(n), 0);
  return s;
}

// Several non-finite steps in a row mean the run has diverged: stop instead of spinning.
constexpr int kMaxBadStepsInARow = 3;

std::vector<data::Source> to_sources(const std::vector<config::DataSource>& in) {
  std::vector<data::Source> out;
  for (const auto& s : in) out.push_back({s.path, s.weight});
  return out;
}

}  // namespace

Trainer::Trainer(const config::Config& cfg, const RunStart& start)
    : cfg_(cfg),
      resolved_(config::to_yaml(cfg)),
      ckpt_root_(cfg.log.dir + "/checkpoints"),
      micro_(size_t(cfg.train.grad_accum), data::Batch(cfg.train.batch_size, cfg.train.seq_len)) {
  if (cfg_.data.train.empty()) throw std::runtime_error("data.train: no training shards configured");
  set_up_mesh();
  claim_run_dir(start.resume, start.overwrite);
  record_run();
  set_up_data();
  set_up_model();
  restore(start);
  measure();
  if (leader_) log_ = std::make_unique<RunLog>(cfg_.log.dir);
  tty_ = isatty(fileno(stdout));
}

void Trainer::set_up_mesh() {
  const auto& tc = cfg_.train;
  auto world = make_world_communicator();
  // with cuda, a rank takes the GPU of its index on its node
  backend_ = &backend_of(tc.device, tc.attention_backend, node_local_rank(world->rank()));
  mesh_ = std::make_unique<Mesh>(std::move(world), cfg_.parallel, *backend_, resolved_);
  leader_ = mesh_->rank() == 0;
  if (!leader_ && !std::freopen("/dev/null", "w", stdout)) throw std::runtime_error("cannot silence rank output");
}

// Rank 0 locks log.dir before anything is written to it (issue 21: two runs in one directory
// interleaved their logs and deleted each other's saves), and a fresh run does not mix with a run
// already there: it is refused, or with --overwrite that run's files are removed first.
void Trainer::claim_run_dir(const std::string& resume, bool overwrite) {
  if (!leader_) return;
  const std::string& dir = cfg_.log.dir;
  run_lock_ = std::make_unique<DirLock>(dir, "train");
  if (!resume.empty()) return;
  std::error_code ec;
  const bool logged = std::filesystem::file_size(dir + "/log.jsonl", ec) > 0 && !ec;
  if (!logged && ckpt::list(ckpt_root_).empty()) return;
  if (!overwrite)
    throw UsageError(dir + " holds a run (log.jsonl or checkpoints/): continue it with --resume auto, replace it "
                           "with --overwrite, or choose another log.dir");
  for (const char* f : {"log.jsonl", "config.yaml", "run.json", "checkpoints"}) {
    std::filesystem::remove_all(std::filesystem::path(dir) / f, ec);
    if (ec) throw std::runtime_error(dir + "/" + f + ": cannot remove the old run's file (" + ec.message() + ")");
  }
  std::printf("--overwrite: removed the run in %s\n", dir.c_str());
}

// The resolved config on stdout; config.yaml and run.json in the run directory.
void Trainer::record_run() {
  const auto& tc = cfg_.train;
  std::printf("kvmtrain %s (commit %s): resolved config\n%s", KVMTRAIN_VERSION, KVMTRAIN_GIT_COMMIT, resolved_.c_str());
  json::Object info{{"git_commit", KVMTRAIN_GIT_COMMIT}, {"version", KVMTRAIN_VERSION}, {"world_size", mesh_->world_size()},
                    {"data_parallel", mesh_->data_size()}, {"tensor_parallel", mesh_->tensor_size()},
                    {"device", config::to_string(tc.device)}, {"precision", config::to_string(tc.precision)},
                    {"threads", omp_get_max_threads()}};
  if (leader_) write_run_files(cfg_.log.dir, resolved_, info);
}

void Trainer::set_up_data() {
  const auto& tc = cfg_.train;
  const int B = tc.batch_size, T = tc.seq_len;
  // shards against their manifest (sizes and counts: cheap), naming the first that differs
  for (const auto* sources : {&cfg_.data.train, &cfg_.data.val})
    for (const auto& source : to_sources(*sources)) data::check_source(source.path);
  data::LoaderOptions lo{to_sources(cfg_.data.train), B, T, uint64_t(tc.seed), mesh_->data_rank(), mesh_->data_size(),
                         true, config::to_string(cfg_.data.tokenizer), cfg_.model.vocab_size};
  train_ = std::make_unique<data::Loader>(lo);
  if (!cfg_.data.val.empty()) val_ = std::make_unique<eval::Validation>(cfg_, to_sources(cfg_.data.val), B, T);
  tokenizer_ = data::make_tokenizer(config::to_string(cfg_.data.tokenizer), cfg_.model.vocab_size);
}

void Trainer::set_up_model() {
  const auto& tc = cfg_.train;
  model_ = std::make_unique<Model>(cfg_.model, tc.batch_size, tc.seq_len, tc.recompute == config::Recompute::block, mesh_->tensor(),
                                   *backend_, mesh_->tensor_device());
  Model& model = *model_;
  model.init(uint64_t(tc.seed));
  switch (tc.precision) {
    case config::Precision::fp32: break;
    case config::Precision::bf16: model.use_bf16(); break;
  }
  // ZeRO-1 AdamW (this rank's range of the moments); gradient buckets reduced during the backward
  dp_ = std::make_unique<DataParallel>(mesh_->data(), model.table(), tc,
                                       size_t(cfg_.parallel.bucket_mb * 1048576 / sizeof(float)), true, *backend_);
  model.on_grads_ready([dp = dp_.get()](size_t begin, size_t end) { dp->gradients_ready(begin, end); });
}

// Rank 0 picks (and verifies) the checkpoint `resume` means, "" for none; every rank then reads
// that one.
std::string Trainer::checkpoint_to_resume(const std::string& resume) {
  std::string resume_dir;
  if (leader_) {
    if (resume == "auto") {
      std::vector<std::string> warnings;
      resume_dir = ckpt::newest_complete(ckpt_root_, warnings);
      for (const auto& w : warnings) std::fprintf(stderr, "kvmtrain: warning: %s\n", w.c_str());
      if (resume_dir.empty())
        std::printf("resume auto: no complete checkpoint in %s; starting fresh\n", ckpt_root_.c_str());
    } else if (!resume.empty()) {
      resume_dir = resolve_checkpoint(resume, false);
    }
  }
  if (mesh_->world_size() > 1 && !resume.empty()) resume_dir = broadcast_string(mesh_->world(), resume_dir);
  return resume_dir;
}

// --resume: every piece of state the loop carries comes back, so the steps after it are
// bit-identical to an uninterrupted run (docs/checkpoint-format.md). Checkpoints are unsharded:
// one written by any data x tensor layout resumes on any other (the same global batch gives
// the same losses within reduction-order tolerance).
void Trainer::restore(const RunStart& start) {
  const auto& tc = cfg_.train;
  Model& model = *model_;
  LoopState st;
  st.sample_rng = uint64_t(tc.seed) ^ 0x5A5A5A5Aull;
  const std::string resume_dir = checkpoint_to_resume(start.resume);
  if (!resume_dir.empty()) {
    st = restore_run_checkpoint(resume_dir, model, *dp_);
    const std::string saved = ckpt::read(resume_dir, "config.yaml");
    // The data position counts windows of the saved seq_len in the saved sources, and a step takes
    // the saved global batch (sequences per step over every data-parallel rank and micro-step,
    // however split): with another one the run is not the one it claims to continue (issue 21:
    // it only warned). --rederive-data-position accepts the change and re-derives the position.
    const config::Config was = config::load_string(saved, resume_dir + "/config.yaml");
    auto per_step = [](const config::Config& c) {
      return int64_t(c.train.batch_size) * c.train.grad_accum * c.parallel.data;
    };
    auto sources = [](const config::Config& c) {
      std::string out;
      for (const auto& s : c.data.train) {
        char weight[32];
        std::snprintf(weight, sizeof weight, " x%g", s.weight);
        out += (out.empty() ? "" : ", ") + s.path + weight;
      }
      return out;
    };
    for (const auto& [key, now, then] :
         {std::tuple{"train.seq_len", std::to_string(tc.seq_len), std::to_string(was.train.seq_len)},
          std::tuple{"the global batch (train.batch_size x train.grad_accum x parallel.data)",
                     std::to_string(per_step(cfg_)), std::to_string(per_step(was))},
          std::tuple{"data.train", sources(cfg_), sources(was)}})
      if (now != then && !start.rederive_data_position)
        throw UsageError(std::string(key) + " is " + now + " but the checkpoint " + resume_dir + " was trained with " +
                         then + ": --resume continues a run exactly; add --rederive-data-position to continue "
                         "with the change, or start a new run (train.init_from)");
    uint64_t position = st.loader_position;
    if (start.rederive_data_position) {
      // as many tokens consumed, in windows of the new length; which windows come next is the new
      // layout's own order (docs: exact for a batch change, not for a length or a source change)
      position = st.loader_position * uint64_t(was.train.seq_len) / uint64_t(tc.seq_len);
      std::printf("--rederive-data-position: %llu windows of %d tokens consumed, continuing at window %llu of %d tokens\n",
                  (unsigned long long)st.loader_position, was.train.seq_len, (unsigned long long)position, tc.seq_len);
    }
    train_->set_position(position);  // global windows: right for any data-parallel size
    std::string diff = first_difference(resolved_, saved);
    if (!diff.empty() && leader_)
      std::fprintf(stderr, "kvmtrain: warning: the config differs from the checkpoint's (%s); the resumed run is not "
                           "an exact continuation\n", diff.c_str());
    std::printf("resumed from %s (step %lld, %llu tokens seen)\n", resume_dir.c_str(), (long long)st.step,
                (unsigned long long)st.tokens_seen);
    // a best.json from steps after this checkpoint belongs to a discarded future
    if (auto best = ckpt::read_best(ckpt_root_); leader_ && best && best->step > st.step) ckpt::remove_best(ckpt_root_);
  } else if (!tc.init_from.empty()) {
    load_weights(tc.init_from, model);
    std::printf("initialised the weights from %s (optimizer, data position and step start fresh)\n",
                tc.init_from.c_str());
  }
  if (!start.resume.empty() && leader_) truncate_log(cfg_.log.dir, st.step, st.unlogged_rows);
  step_ = int(st.step);
  if (!resume_dir.empty()) resumed_step_ = st.step;
  sample_rng_ = st.sample_rng;
  bad_in_a_row_ = st.bad_in_a_row;
  total_time_ = st.time_s;
  // the bf16 copy is a function of the masters and the step, so a resumed run remakes it exactly
  if (model.bf16()) model.refresh_bf16(uint64_t(tc.seed), uint64_t(st.step));
}

// MFU's denominator and numerator, and the loss a model that ignores context reaches.
void Trainer::measure() {
  const auto& tc = cfg_.train;
  const int B = tc.batch_size, T = tc.seq_len;
  Model& model = *model_;
  measure_peak(0.3);
  flops_per_step_ = 3.0 * model.flops_per_token(T) * B * T * tc.grad_accum;  // forward + 2x backward
  std::printf("model: %zu parameters, activations %.1f MiB; train windows per epoch %llu; %s GEMM peak %.1f GFLOP/s\n",
              model.num_params(), model.activation_bytes() / 1048576.0,
              (unsigned long long)train_->windows_per_epoch(), config::to_string(tc.precision).c_str(), peak_ / 1e9);

  const UnigramEntropy unigram = unigram_entropy(cfg_.data.train, config::to_string(cfg_.data.tokenizer), cfg_.model.vocab_size,
                                                 50000000);
  std::printf("unigram entropy of the training data: %.4f nats/token (over %llu tokens)\n", unigram.nats,
              (unsigned long long)unigram.tokens);
  unigram_nats_ = unigram.nats;
}

// One reference shape for every model, so MFU compares across configs: on the CPU GPT-2 124M's
// MLP; on a GPU 8192^3, where a GEMM of GPT-2's size is too short for the launches and the wait
// not to weigh (its rate would read far below the GPU's, and MFU high).
void Trainer::measure_peak(double seconds) {
  const auto& tc = cfg_.train;
  const bool cpu = backend_->host;
  const int M = cpu ? std::max(256, std::min(tc.batch_size * tc.seq_len, 1024)) : 8192;
  double measured = measure_gemm_peak(*backend_, model_->bf16(), M, cpu ? 3072 : M, cpu ? 768 : M, seconds);
  // test hook: the start-up measurement taken in a very slow moment
  if (peak_ == 0 && std::getenv("KVMTRAIN_TEST_SLOW_PEAK")) measured /= 1e6;
  peak_ = std::max(peak_, measured);
  peak_measured_at_ = total_time_;
}

// The stop signals are taken by a thread of their own (sigwait) and blocked in this thread, so in
// every thread started after it (OpenMP's, the loaders'): a handler run on a thread interrupted
// inside oneDNN's sgemm left the heap corrupted (glibc "corrupted size vs. prev_size", in the
// backward of the step after a SIGTERM: 3 runs in 150, none in 6000 steps without a signal). That
// thread runs the handler installed at the time, or dies of the signal when the disposition is the
// default. Threads started before (OpenBLAS's pool, idle) may still take one: the handlers serve
// them too.
void install_stop_signals() {
  std::signal(SIGINT, on_sigint);
  std::signal(SIGTERM, on_save_signal);
  std::signal(SIGUSR1, on_save_signal);
  static std::once_flag started;
  std::call_once(started, [] {
    sigset_t stops;
    sigemptyset(&stops);
    for (int sig : {SIGINT, SIGTERM, SIGUSR1}) sigaddset(&stops, sig);
    pthread_sigmask(SIG_BLOCK, &stops, nullptr);
    std::thread([stops] {
      for (;;) {
        int sig = 0;
        if (sigwait(&stops, &sig) != 0) continue;
        struct sigaction now {};
        sigaction(sig, nullptr, &now);
        if (now.sa_handler == SIG_DFL) {  // as if it had not been blocked
          sigset_t one;
          sigemptyset(&one);
          sigaddset(&one, sig);
          pthread_sigmask(SIG_UNBLOCK, &one, nullptr);
          raise(sig);
        } else if (now.sa_handler != SIG_IGN) {
          now.sa_handler(sig);
        }
      }
    }).detach();
  });
}

int Trainer::run() {
  const auto& tc = cfg_.train;
  for (; step_ < tc.steps && !stop_requested(mesh_->world(), log_failed_); step_++) {
    const StepStats stats = step();
    const bool last = step_ + 1 == tc.steps;
    std::optional<float> val_loss;
    if (val_ && ((tc.eval_every > 0 && (step_ + 1) % tc.eval_every == 0) || last)) val_loss = evaluate();
    log(stats, val_loss);
    const int every = cfg_.checkpoint.every;
    if (every > 0 && ((step_ + 1) % every == 0 || last))
      save(step_ + 1, val_loss ? std::optional<double>(*val_loss) : std::nullopt);
    if (bad_in_a_row_ >= kMaxBadStepsInARow)
      throw std::runtime_error("training diverged: loss or gradient not finite for " +
                               std::to_string(kMaxBadStepsInARow) + " steps in a row (step " +
                               std::to_string(step_ + 1) + "); lower train.lr or raise train.warmup_steps");
  }
  return finish();
}

Trainer::StepStats Trainer::step() {
  const auto& tc = cfg_.train;
  const int B = tc.batch_size, T = tc.seq_len;
  Model& model = *model_;
  const auto t0 = std::chrono::steady_clock::now();
  model.zero_grad();
  // The step's loss is the mean over every scored target of all its micro-batches and
  // data-parallel ranks, so its count is needed before the first backward. The ranks average
  // their gradients, so each scales by D / count; without masks count / D is B*T*accum and
  // dloss is 1 / (B*T*accum) exactly as always.
  int64_t scored = 0;
  for (auto& batch : micro_) {
    batch.load(*train_);
    scored += batch.scored;
  }
  // unmasked data scores every target on every rank: no collective needed to count them
  const int64_t global_scored = train_->masked() ? dp_->sum_count(scored) : scored * mesh_->data_size();
  const double per_rank = double(global_scored) / double(mesh_->data_size());
  const float dloss = global_scored > 0 ? 1.0f / float(per_rank) : 0.0f;  // none scored: no gradient
  double loss_sum = 0;  // over this rank's scored targets
  for (int micro = 0; micro < tc.grad_accum; micro++) {
    const data::Batch& batch = micro_[size_t(micro)];
    model.forward(batch.inputs.data(), B, T);
    loss_sum += double(model.loss(batch.targets.data(), dloss)) * double(batch.scored);
    if (micro + 1 == tc.grad_accum) dp_->start_gradients(model.grads());  // the step's gradients are final
    model.backward();
  }
  dp_->finish_gradients();
  StepStats s;
  s.loss = global_scored > 0 ? float(dp_->sum(loss_sum) / double(global_scored)) : 0.0f;
  s.scored = global_scored;
  s.grad_norm = float(std::sqrt(dp_->grad_norm_squared(model.grads(), model.tensor_comm())));
  s.lr = lr_at(tc, step_);
  s.finite = std::isfinite(s.loss) && std::isfinite(s.grad_norm);
  if (s.finite) {
    dp_->step(model.params(), model.grads(), s.lr, clip_scale(s.grad_norm, float(tc.grad_clip)));
    bad_in_a_row_ = 0;
  } else {
    bad_in_a_row_++;
  }
  if (model.bf16()) model.refresh_bf16(uint64_t(tc.seed), uint64_t(step_ + 1));
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  total_time_ += s.seconds;
  return s;
}

float Trainer::evaluate() {
  last_val_ = float(val_->loss(*model_, cfg_.train.eval_steps));
  return last_val_;
}

void Trainer::log(const StepStats& s, std::optional<float> val_loss) {
  const auto& tc = cfg_.train;
  const int B = tc.batch_size, T = tc.seq_len;
  const double tokens_per_s = double(B) * T * tc.grad_accum * mesh_->data_size() / s.seconds;
  // per rank: each holds 1/TP of the model
  const double achieved = flops_per_step_ / s.seconds / mesh_->tensor_size();
  if (total_time_ - peak_measured_at_ >= kPeakEvery) measure_peak(0.1);
  peak_ = std::max(peak_, achieved);
  const double mfu = achieved / peak_;
  const bool warmup = ++steps_this_process_ <= kWarmupSteps;
  if (!warmup) steady_seconds_ += s.seconds, steady_steps_++;
  json::Object row{{"step", step_ + 1},      {"loss", double(s.loss)},     {"lr", double(s.lr)},
                   {"tokens_per_s", tokens_per_s}, {"grad_norm", double(s.grad_norm)}, {"mfu", mfu},
                   {"peak_flops", peak_}, {"mem_bytes", int64_t(peak_rss_bytes())}, {"time_s", total_time_}};
  if (warmup) row["warmup"] = true;
  if (val_loss) row["val_loss"] = double(*val_loss);
  if (!s.finite) row["skipped"] = true;
  if (train_->masked()) row["scored"] = s.scored;
  if (log_ && !log_failed_) {
    try {
      log_->write(row);
    } catch (const std::exception& e) {
      log_error_ = e.what();
      log_failed_ = true;  // the run stops after this step (stop_requested)
    }
  }
  if (log_failed_) unlogged_.push_back(row);

  const double per_step = steady_steps_ ? steady_seconds_ / steady_steps_ : s.seconds;
  const double eta = per_step * (tc.steps - step_ - 1);
  char line[256];
  std::snprintf(line, sizeof line, "step %6d/%d | loss %.4f | lr %.2e | norm %.3f | %s tok/s | mfu %.0f%% | ETA %s",
                step_ + 1, tc.steps, s.loss, s.lr, s.grad_norm, format_count(tokens_per_s).c_str(), 100 * mfu,
                format_duration(eta).c_str());
  const bool last = step_ + 1 == tc.steps;
  const bool keep = (step_ + 1) % cfg_.log.print_every == 0 || last || val_loss || !s.finite;
  if (keep || tty_) std::printf(tty_ ? "\r%s\033[K" : "%s", line);
  if (keep) {
    if (val_loss) std::printf(" | val %.4f", *val_loss);
    if (!s.finite) std::printf(" | non-finite: update skipped");
    std::printf("\n");
  }
  std::fflush(stdout);
}

// Saves the checkpoint of `steps_done` steps, records the best and prunes old ones. Collective:
// every rank gathers, rank 0 writes, best and prunes, and the others wait for it at a barrier.
std::string Trainer::save(int64_t steps_done, std::optional<double> val_loss) {
  const auto& tc = cfg_.train;
  LoopState now;
  now.step = steps_done;
  now.tokens_seen = uint64_t(steps_done) * uint64_t(tc.batch_size) * tc.seq_len * tc.grad_accum * mesh_->data_size();
  now.loader_position = train_->position();
  now.sample_rng = sample_rng_;
  now.bad_in_a_row = bad_in_a_row_;
  now.time_s = total_time_;
  now.val_loss = val_loss;
  now.unlogged_rows = unlogged_;
  std::string dir = save_run_checkpoint(cfg_, resolved_, *model_, *dp_, now, leader_);
  if (leader_) {
    auto best = ckpt::read_best(ckpt_root_);
    if (val_loss && (!best || *val_loss < best->val_loss))
      ckpt::write_best(ckpt_root_, best.emplace(ckpt::Best{steps_done, *val_loss}));
    ckpt::prune(ckpt_root_, cfg_.checkpoint.keep_last, steps_done,
                best ? std::optional<int64_t>(best->step) : std::nullopt);
  }
  if (mesh_->world_size() > 1) mesh_->world().barrier();
  saved_step_ = steps_done;
  return dir;
}

// The log could not take a row (a full disk): the run stops with status 2 after saving the
// checkpoint of this step, which keeps the rows the log lacks for a resume to append, so that
// neither the training nor its log loses a step (issue 21: rows were dropped and the run went on).
int Trainer::stop_for_log(int step) {
  std::string dir;
  try {
    dir = saved_step_ == step ? ckpt_root_ + "/" + ckpt::step_dir_name(step) : save(step, std::nullopt);
  } catch (const std::exception& e) {
    throw std::runtime_error(log_error_ + "; the checkpoint of step " + std::to_string(step) +
                             " could not be saved either (" + e.what() +
                             "): free space, then --resume auto continues from the newest checkpoint");
  }
  std::fflush(stdout);
  if (leader_)
    std::fprintf(stderr, "kvmtrain: error: %s; saved %s with the %zu log rows it lacks: free space, then --resume auto\n",
                 log_error_.c_str(), dir.c_str(), unlogged_.size());
  return 2;
}

// After the loop: the final checkpoint, what stopped the run, the final validation loss and the
// sample. Returns the exit status.
int Trainer::finish() {
  const auto& tc = cfg_.train;
  Communicator& world = mesh_->world();
  const int step = step_;
  // The loop's last check is skipped when it ran all steps: agree once more, so that a signal
  // that reached some ranks during the last step makes every rank take part in the save.
  if (world.size() > 1) stop_requested(world, log_failed_);
  if (log_failed_) return stop_for_log(step);
  // the end of a run always has a checkpoint of this run (with train.steps: 0, that of the
  // initial weights): one already there is kept only when the run resumed from it and trained no
  // step, else it is another history's and is replaced (issue 21: it was kept)
  if (cfg_.checkpoint.every > 0 && step == tc.steps && saved_step_ != step && g_interrupts == 0 &&
      !(step == resumed_step_ && resumed_step_ >= 0))
    save(step, std::nullopt);
  if (g_interrupts) std::printf("\ninterrupted: stopped cleanly after the current step\n");
  std::signal(SIGINT, SIG_DFL);
  if (const int sig = g_save_signal) {
    std::string dir = saved_step_ == step ? ckpt_root_ + "/" + ckpt::step_dir_name(step) : save(step, std::nullopt);
    std::printf("\n%s: stopped after step %d; checkpoint %s (continue with --resume auto)\n", signal_name(sig), step,
                dir.c_str());
    std::fflush(stdout);
    return 0;
  }
  if (std::isfinite(last_val_))
    std::printf("final val loss %.4f nats/token; unigram entropy of the training data %.4f nats/token\n", last_val_,
                unigram_nats_);
  // the sampler reads whole-vocabulary logits
  if (tc.sample_tokens > 0 && mesh_->tensor_size() == 1 && leader_) sample();
  std::printf("log: %s/log.jsonl\n", cfg_.log.dir.c_str());
  return g_interrupts ? 130 : 0;
}

void Trainer::sample() {
  const auto& tc = cfg_.train;
  Rng rng(sample_rng_);
  std::vector<int> tokens{tokenizer_->eot()};
  sample_tokens(*model_, tokens, tc.sample_tokens, tc.seq_len, 0.8f, rng);
  std::vector<uint32_t> ids(tokens.begin() + 1, tokens.end());
  std::printf("sample (temperature 0.8):\n%s\n", tokenizer_->decode(ids).c_str());
}

int run_training(const config::Config& cfg, const RunStart& start) {
  install_stop_signals();  // before the set-up, which takes seconds (issue 21: SIGTERM then exited 143)
  Trainer trainer(cfg, start);
  return trainer.run();
}
