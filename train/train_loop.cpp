#include "train/train_loop.h"

#include <omp.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unistd.h>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "checkpoints/checkpoint.h"
#include "kernels/backend.h"
#include "train/checkpointing.h"
#include "parallel/communicator.h"
#include "data/corpus_stats.h"
#include "parallel/data_parallel.h"
#include "model/flops.h"
#include "model/model.h"
#include "optim/optimizer.h"
#include "train/run_log.h"
#include "model/sample.h"
#include "common/unreachable.h"
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
void truncate_log(const std::string& dir, int64_t step) {
  const std::string path = dir + "/log.jsonl";
  std::ifstream in(path);
  if (!in) return;
  std::string kept, line;
  size_t dropped = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    int64_t row_step = -1;
    try {
      row_step = json::parse(line).at("step").integer();
    } catch (const std::exception&) {
      // a line cut by a crash mid-write: drop it with the rows after the checkpoint
    }
    if (row_step >= 1 && row_step <= step) kept += line + "\n";
    else dropped++;
  }
  in.close();
  if (dropped) {
    write_file_atomic(path, kept);
    std::printf("log: dropped %zu rows of %s after step %lld (they are recomputed)\n", dropped, path.c_str(),
                (long long)step);
  }
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

// Every rank must train the same model on the same recipe: a config that differs (another file
// on another node, say) stops the job with an error instead of a silent divergence or a hang.
void check_same_config(Communicator& world, const std::string& resolved) {
  if (world.size() == 1) return;
  uint64_t mine = 1469598103934665603ull;  // FNV-1a of the resolved YAML
  for (unsigned char c : resolved) mine = (mine ^ c) * 1099511628211ull;
  uint64_t leaders = mine;
  world.broadcast(&leaders, sizeof leaders, 0);
  float differs = leaders != mine ? 1.0f : 0.0f;
  world.all_reduce_sum(&differs, 1);
  if (differs > 0)
    throw std::runtime_error("parallel: the resolved config differs across ranks (" + std::to_string(int(differs)) +
                             " of " + std::to_string(world.size()) + " differ from rank 0's)");
}

// A signal reaches ranks at different moments: they agree after every step, so that all stop
// at the same one and none waits in a collective for a rank that left.
bool stop_requested(Communicator& world) {
  float flags[2] = {float(g_interrupts.load() > 0), float(g_save_signal.load() != 0)};
  world.all_reduce_sum(flags, 2);
  if (flags[0] > 0 && g_interrupts == 0) g_interrupts = 1;
  if (flags[1] > 0 && g_save_signal == 0) g_save_signal = SIGTERM;
  return flags[0] > 0 || flags[1] > 0;
}

// Rank 0's string, on every rank (collective).
std::string broadcast_string(Communicator& world, std::string s) {
  uint64_t n = s.size();
  world.broadcast(&n, sizeof n, 0);
  s.resize(size_t(n));
  if (n) world.broadcast(s.data(), size_t(n), 0);
  return s;
}

// Rank 0's decision, on every rank (collective; one rank: the value itself).
bool agree(Communicator& world, bool leaders) {
  if (world.size() == 1) return leaders;
  unsigned char b = leaders ? 1 : 0;
  world.broadcast(&b, 1, 0);
  return b != 0;
}

// Several non-finite steps in a row mean the run has diverged: stop instead of spinning.
constexpr int kMaxBadStepsInARow = 3;

std::vector<data::Source> to_sources(const std::vector<config::DataSource>& in) {
  std::vector<data::Source> out;
  for (const auto& s : in) out.push_back({s.path, s.weight});
  return out;
}

// A (B, T+1) window batch split into inputs (B, T) and next-token targets (B, T).
struct Batch {
  int B, T;
  std::vector<int32_t> windows;
  std::vector<int> inputs, targets;
  Batch(int B_, int T_) : B(B_), T(T_), windows(size_t(B_) * (T_ + 1)), inputs(size_t(B_) * T_), targets(size_t(B_) * T_) {}
  void load(data::Loader& loader) {
    loader.next(windows.data());
    for (int b = 0; b < B; b++)
      for (int t = 0; t < T; t++) {
        inputs[size_t(b) * T + t] = windows[size_t(b) * (T + 1) + t];
        targets[size_t(b) * T + t] = windows[size_t(b) * (T + 1) + t + 1];
      }
  }
};

// This rank's index among the ranks on its node (Open MPI, Slurm, MPICH), else its world rank:
// with cuda, the GPU it takes.
int local_rank(int world_rank) {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"})
    if (const char* v = std::getenv(var)) return std::atoi(v);
  return world_rank;
}

// train.device and train.attention_backend in the backend table's terms (kernels never see configs).
Backend::Device to_backend(config::Device device) {
  switch (device) {
    case config::Device::cpu: return Backend::Device::cpu;
    case config::Device::cuda: return Backend::Device::cuda;
  }
  unreachable();
}
Backend::Attention to_backend(config::AttentionBackend attention) {
  switch (attention) {
    case config::AttentionBackend::native: return Backend::Attention::native;
    case config::AttentionBackend::cudnn: return Backend::Attention::cudnn;
  }
  unreachable();
}

float evaluate(Model& model, data::Loader& val, Batch& batch, int steps) {
  val.set_position(0);  // the same windows every evaluation, so values are comparable
  double sum = 0;
  for (int i = 0; i < steps; i++) {
    batch.load(val);
    model.forward(batch.inputs.data(), batch.B, batch.T);
    sum += model.loss(batch.targets.data(), 0.0f);
  }
  return float(sum / steps);
}

}  // namespace

int run_training(const config::Config& cfg, const std::string& resume) {
  const auto& tc = cfg.train;
  if (cfg.data.train.empty()) throw std::runtime_error("data.train: no training shards configured");
  std::string resolved = config::to_yaml(cfg);

  // The grid of ranks: rank = data_rank * tensor + tensor_rank (a tensor group is consecutive
  // ranks, so that on one node its all-reduces stay close).
  auto world = make_world_communicator();
  const Backend& be = backend_for(to_backend(tc.device), local_rank(world->rank()), to_backend(tc.attention_backend));
  const int TP = cfg.parallel.tensor, DP = cfg.parallel.data;
  if (DP * TP != world->size())
    throw std::runtime_error("parallel: data (" + std::to_string(DP) + ") x tensor (" + std::to_string(TP) + ") = " +
                             std::to_string(DP * TP) + " ranks, but the job has " + std::to_string(world->size()) +
                             " (mpirun -np " + std::to_string(DP * TP) + ")");
  check_same_config(*world, resolved);
  auto tp_comm = world->split(world->rank() / TP, world->rank());
  auto dp_comm = world->split(world->rank() % TP, world->rank());
  std::unique_ptr<Communicator> tp_device;  // the tensor group over device memory (cuda)
#ifdef KVMTRAIN_HAS_CUDA
  // the gradients and activations live on the GPU: NCCL over the same ranks (its id travels over
  // MPI); the MPI tensor group stays for the host's gathers (checkpoints). Every rank creates them
  // in the same order, so no group waits for a rank that is creating another.
  if (!be.host) {
    dp_comm = make_nccl_communicator(*dp_comm);
    if (TP > 1) tp_device = make_nccl_communicator(*tp_comm);
  }
#endif
  const bool leader = world->rank() == 0;  // prints, writes the log and the run files
  if (!leader && !std::freopen("/dev/null", "w", stdout)) throw std::runtime_error("cannot silence rank output");

  std::printf("kvmtrain %s (commit %s): resolved config\n%s", KVMTRAIN_VERSION, KVMTRAIN_GIT_COMMIT, resolved.c_str());
  json::Object info{{"git_commit", KVMTRAIN_GIT_COMMIT}, {"version", KVMTRAIN_VERSION}, {"world_size", world->size()},
                    {"data_parallel", DP}, {"tensor_parallel", TP},
                    {"device", config::to_string(tc.device)}, {"precision", config::to_string(tc.precision)},
                    {"threads", omp_get_max_threads()}};
  if (leader) write_run_files(cfg.log.dir, resolved, info);

  const int B = tc.batch_size, T = tc.seq_len;
  const std::string tokenizer_name = config::to_string(cfg.data.tokenizer);  // as the shards carry it
  data::LoaderOptions lo{to_sources(cfg.data.train), B, T, uint64_t(tc.seed), dp_comm->rank(), DP, true,
                         tokenizer_name, cfg.model.vocab_size};
  data::Loader train(lo);
  std::unique_ptr<data::Loader> val;
  if (!cfg.data.val.empty()) {
    data::LoaderOptions vo = lo;
    vo.sources = to_sources(cfg.data.val);
    vo.shuffle = false;
    vo.rank = 0, vo.world = 1;  // every rank evaluates the same windows
    val = std::make_unique<data::Loader>(vo);
  }
  auto tokenizer = data::make_tokenizer(tokenizer_name);

  Model model(cfg.model, B, T, tc.recompute == config::Recompute::block, TP > 1 ? tp_comm.get() : nullptr, be,
              tp_device.get());
  model.init(uint64_t(tc.seed));
  switch (tc.precision) {
    case config::Precision::fp32: break;
    case config::Precision::bf16: model.use_bf16(); break;
  }
  // ZeRO-1 AdamW (this rank's range of the moments); gradient buckets reduced during the backward
  DataParallel dp(*dp_comm, model.table(), tc, size_t(cfg.parallel.bucket_mb * 1048576 / sizeof(float)), true, be);
  model.on_grads_ready([&dp](size_t begin, size_t end) { dp.gradients_ready(begin, end); });

  // --resume: every piece of state the loop carries comes back, so the steps after it are
  // bit-identical to an uninterrupted run (docs/checkpoint-format.md). Checkpoints are unsharded:
  // one written by any data x tensor layout resumes on any other (the same global batch gives
  // the same losses within reduction-order tolerance).
  const std::string ckpt_root = cfg.log.dir + "/checkpoints";
  LoopState st;
  st.sample_rng = uint64_t(tc.seed) ^ 0x5A5A5A5Aull;
  std::string resume_dir;
  if (leader) {  // rank 0 picks (and verifies) the checkpoint; every rank then reads that one
    if (resume == "auto") {
      std::vector<std::string> warnings;
      resume_dir = ckpt::newest_complete(ckpt_root, warnings);
      for (const auto& w : warnings) std::fprintf(stderr, "kvmtrain: warning: %s\n", w.c_str());
      if (resume_dir.empty()) std::printf("resume auto: no complete checkpoint in %s; starting fresh\n", ckpt_root.c_str());
    } else if (!resume.empty()) {
      resume_dir = resolve_checkpoint(resume, false);
    }
  }
  if (world->size() > 1 && !resume.empty()) resume_dir = broadcast_string(*world, resume_dir);
  if (!resume_dir.empty()) {
    st = restore_run_checkpoint(resume_dir, model, dp);
    train.set_position(st.loader_position);  // global windows: right for any data-parallel size
    std::string diff = first_difference(resolved, ckpt::read(resume_dir, "config.yaml"));
    if (!diff.empty() && leader)
      std::fprintf(stderr, "kvmtrain: warning: the config differs from the checkpoint's (%s); the resumed run is not "
                           "an exact continuation\n", diff.c_str());
    std::printf("resumed from %s (step %lld, %llu tokens seen)\n", resume_dir.c_str(), (long long)st.step,
                (unsigned long long)st.tokens_seen);
    // a best.json from steps after this checkpoint belongs to a discarded future
    if (auto best = ckpt::read_best(ckpt_root); leader && best && best->step > st.step) ckpt::remove_best(ckpt_root);
  } else if (!tc.init_from.empty()) {
    load_weights(tc.init_from, model);
    std::printf("initialised the weights from %s (optimizer, data position and step start fresh)\n",
                tc.init_from.c_str());
  }
  if (!resume.empty() && leader) truncate_log(cfg.log.dir, st.step);
  // the bf16 copy is a function of the masters and the step, so a resumed run remakes it exactly
  if (model.bf16()) model.refresh_bf16(uint64_t(tc.seed), uint64_t(st.step));
  // one reference shape for every model (GPT-2 124M's MLP), so MFU compares across configs
  const double peak = measure_gemm_peak(be, model.bf16(), std::max(256, std::min(B * T, 1024)), 3072, 768, 0.3);
  const double flops_per_step = 3.0 * model.flops_per_token(T) * B * T * tc.grad_accum;  // forward + 2x backward
  std::printf("model: %zu parameters, activations %.1f MiB; train windows per epoch %llu; %s GEMM peak %.1f GFLOP/s\n",
              model.num_params(), model.activation_bytes() / 1048576.0,
              (unsigned long long)train.windows_per_epoch(), config::to_string(tc.precision).c_str(), peak / 1e9);

  const UnigramEntropy unigram = unigram_entropy(cfg.data.train, tokenizer_name, cfg.model.vocab_size, 50000000);
  std::printf("unigram entropy of the training data: %.4f nats/token (over %llu tokens)\n", unigram.nats,
              (unsigned long long)unigram.tokens);

  std::unique_ptr<RunLog> log;
  if (leader) log = std::make_unique<RunLog>(cfg.log.dir);
  Batch batch(B, T);
  std::signal(SIGINT, on_sigint);
  std::signal(SIGTERM, on_save_signal);
  std::signal(SIGUSR1, on_save_signal);
  const float dloss = 1.0f / float(B * T * tc.grad_accum);
  const bool tty = isatty(fileno(stdout));
  int bad_in_a_row = st.bad_in_a_row;
  double total_time = st.time_s;
  float last_val = NAN;
  int64_t saved_step = -1;  // the step of the last checkpoint this run saved
  // Saves the checkpoint of `steps_done` steps, records the best and prunes old ones. Collective:
  // every rank gathers, rank 0 writes, best and prunes, and the others wait for it at a barrier.
  auto save = [&](int64_t steps_done, std::optional<double> val) {
    LoopState now;
    now.step = steps_done;
    now.tokens_seen = uint64_t(steps_done) * uint64_t(B) * T * tc.grad_accum * DP;
    now.loader_position = train.position();
    now.sample_rng = st.sample_rng;
    now.bad_in_a_row = bad_in_a_row;
    now.time_s = total_time;
    now.val_loss = val;
    std::string dir = save_run_checkpoint(cfg, resolved, model, dp, now, leader);
    if (leader) {
      auto best = ckpt::read_best(ckpt_root);
      if (val && (!best || *val < best->val_loss)) ckpt::write_best(ckpt_root, best.emplace(ckpt::Best{steps_done, *val}));
      ckpt::prune(ckpt_root, cfg.checkpoint.keep_last, steps_done, best ? std::optional<int64_t>(best->step) : std::nullopt);
    }
    if (world->size() > 1) world->barrier();
    saved_step = steps_done;
    return dir;
  };
  using clock = std::chrono::steady_clock;

  int step = int(st.step);
  for (; step < tc.steps && !stop_requested(*world); step++) {
    auto t0 = clock::now();
    model.zero_grad();
    double loss_sum = 0;
    for (int micro = 0; micro < tc.grad_accum; micro++) {
      batch.load(train);
      model.forward(batch.inputs.data(), B, T);
      loss_sum += model.loss(batch.targets.data(), dloss);
      if (micro + 1 == tc.grad_accum) dp.start_gradients(model.grads());  // the step's gradients are final
      model.backward();
    }
    dp.finish_gradients();
    const float loss = dp.mean(float(loss_sum / tc.grad_accum));
    const float norm = float(std::sqrt(dp.grad_norm_squared(model.grads(), model.tensor_comm())));
    const float lr = lr_at(tc, step);
    const bool finite = std::isfinite(loss) && std::isfinite(norm);
    if (finite) {
      dp.step(model.params(), model.grads(), lr, clip_scale(norm, float(tc.grad_clip)));
      bad_in_a_row = 0;
    } else {
      bad_in_a_row++;
    }
    if (model.bf16()) model.refresh_bf16(uint64_t(tc.seed), uint64_t(step + 1));
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    total_time += dt;

    const bool last = step + 1 == tc.steps;
    const bool do_eval = val && ((tc.eval_every > 0 && (step + 1) % tc.eval_every == 0) || last);
    float val_loss = NAN;
    if (do_eval) last_val = val_loss = evaluate(model, *val, batch, tc.eval_steps);

    const double tokens_per_s = double(B) * T * tc.grad_accum * DP / dt;
    const double mfu = flops_per_step / dt / peak / TP;  // per rank: each holds 1/TP of the model
    json::Object row{{"step", step + 1},      {"loss", double(loss)},     {"lr", double(lr)},
                     {"tokens_per_s", tokens_per_s}, {"grad_norm", double(norm)}, {"mfu", mfu},
                     {"mem_bytes", int64_t(peak_rss_bytes())}, {"time_s", total_time}};
    if (do_eval) row["val_loss"] = double(val_loss);
    if (!finite) row["skipped"] = true;
    if (log) log->write(row);

    const double eta = total_time / (step + 1) * (tc.steps - step - 1);
    char line[256];
    std::snprintf(line, sizeof line, "step %6d/%d | loss %.4f | lr %.2e | norm %.3f | %s tok/s | mfu %.0f%% | ETA %s",
                  step + 1, tc.steps, loss, lr, norm, format_count(tokens_per_s).c_str(), 100 * mfu,
                  format_duration(eta).c_str());
    const bool keep = (step + 1) % cfg.log.print_every == 0 || last || do_eval || !finite;
    if (keep || tty) std::printf(tty ? "\r%s\033[K" : "%s", line);
    if (keep) {
      if (do_eval) std::printf(" | val %.4f", val_loss);
      if (!finite) std::printf(" | non-finite: update skipped");
      std::printf("\n");
    }
    std::fflush(stdout);
    const int every = cfg.checkpoint.every;
    if (every > 0 && ((step + 1) % every == 0 || last))
      save(step + 1, do_eval ? std::optional<double>(val_loss) : std::nullopt);
    if (bad_in_a_row >= kMaxBadStepsInARow)
      throw std::runtime_error("training diverged: loss or gradient not finite for " +
                               std::to_string(kMaxBadStepsInARow) + " steps in a row (step " +
                               std::to_string(step + 1) + "); lower train.lr or raise train.warmup_steps");
  }
  // The loop's last check is skipped when it ran all steps: agree once more, so that a signal
  // that reached some ranks during the last step makes every rank take part in the save.
  if (world->size() > 1) stop_requested(*world);
  // the end of a run always has a checkpoint (with train.steps: 0, that of the initial weights);
  // rank 0 decides (the directory may be visible on its node only)
  if (cfg.checkpoint.every > 0 && step == tc.steps && saved_step != step && g_interrupts == 0 &&
      agree(*world, leader && !std::filesystem::exists(ckpt_root + "/" + ckpt::step_dir_name(step))))
    save(step, std::nullopt);
  if (g_interrupts) std::printf("\ninterrupted: stopped cleanly after the current step\n");
  std::signal(SIGINT, SIG_DFL);
  if (const int sig = g_save_signal) {
    std::string dir = saved_step == step ? ckpt_root + "/" + ckpt::step_dir_name(step) : save(step, std::nullopt);
    std::printf("\n%s: stopped after step %d; checkpoint %s (continue with --resume auto)\n", signal_name(sig), step,
                dir.c_str());
    std::fflush(stdout);
    return 0;
  }
  if (std::isfinite(last_val))
    std::printf("final val loss %.4f nats/token; unigram entropy of the training data %.4f nats/token\n", last_val,
                unigram.nats);

  if (tc.sample_tokens > 0 && TP == 1 && leader) {  // the sampler reads whole-vocabulary logits
    Rng rng(st.sample_rng);
    std::vector<int> tokens{tokenizer->eot()};
    sample_tokens(model, tokens, tc.sample_tokens, T, 0.8f, rng);
    std::vector<uint32_t> ids(tokens.begin() + 1, tokens.end());
    std::printf("sample (temperature 0.8):\n%s\n", tokenizer->decode(ids).c_str());
  }
  std::printf("log: %s/log.jsonl\n", cfg.log.dir.c_str());
  return g_interrupts ? 130 : 0;
}
