#include "trainer/train_loop.h"

#include <omp.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <stdexcept>
#include <unistd.h>

#include "data/loader.h"
#include "data/tokenizer.h"
#include "trainer/corpus_stats.h"
#include "trainer/flops.h"
#include "trainer/model.h"
#include "trainer/optimizer.h"
#include "trainer/run_log.h"
#include "trainer/sample.h"
#include "version.h"

namespace {

std::atomic<int> g_interrupts{0};

// First Ctrl-C: finish the current step and stop cleanly. Second: leave at once.
void on_sigint(int) {
  if (g_interrupts.fetch_add(1) >= 1) _exit(130);
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

int run_training(const config::Config& cfg) {
  const auto& tc = cfg.train;
  if (tc.device != "cpu") throw std::runtime_error("train.device: cuda training arrives with the CUDA backend; use cpu");
  if (cfg.parallel.data * cfg.parallel.tensor != 1)
    throw std::runtime_error("parallel: multi-process training arrives with the distributed issue; use data: 1, tensor: 1");
  if (cfg.data.train.empty()) throw std::runtime_error("data.train: no training shards configured");

  std::string resolved = config::to_yaml(cfg);
  std::printf("kvmtrain %s (commit %s): resolved config\n%s", KVMTRAIN_VERSION, KVMTRAIN_GIT_COMMIT, resolved.c_str());
  json::Object info{{"git_commit", KVMTRAIN_GIT_COMMIT}, {"version", KVMTRAIN_VERSION}, {"world_size", 1},
                    {"device", tc.device},         {"precision", "fp32"},       {"threads", omp_get_max_threads()}};
  write_run_files(cfg.log.dir, resolved, info);

  const int B = tc.batch_size, T = tc.seq_len;
  data::LoaderOptions lo{to_sources(cfg.data.train), B, T, uint64_t(tc.seed), 0, 1, true, cfg.data.tokenizer,
                         cfg.model.vocab_size};
  data::Loader train(lo);
  std::unique_ptr<data::Loader> val;
  if (!cfg.data.val.empty()) {
    data::LoaderOptions vo = lo;
    vo.sources = to_sources(cfg.data.val);
    vo.shuffle = false;
    val = std::make_unique<data::Loader>(vo);
  }
  auto tokenizer = data::make_tokenizer(cfg.data.tokenizer);

  Model model(cfg.model, B, T);
  model.init(uint64_t(tc.seed));
  AdamW opt(model.table(), tc);
  const double peak = measure_sgemm_peak(std::min(B * T, 1024), 4 * cfg.model.d_model, cfg.model.d_model, 0.3);
  const double flops_per_step = 3.0 * model.flops_per_token(T) * B * T * tc.grad_accum;  // forward + 2x backward
  std::printf("model: %zu parameters, activations %.1f MiB; train windows per epoch %llu; sgemm peak %.1f GFLOP/s\n",
              model.num_params(), model.activation_bytes() / 1048576.0,
              (unsigned long long)train.windows_per_epoch(), peak / 1e9);

  const UnigramEntropy unigram = unigram_entropy(cfg.data.train, cfg.data.tokenizer, cfg.model.vocab_size, 50000000);
  std::printf("unigram entropy of the training data: %.4f nats/token (over %llu tokens)\n", unigram.nats,
              (unsigned long long)unigram.tokens);

  RunLog log(cfg.log.dir);
  Batch batch(B, T);
  std::signal(SIGINT, on_sigint);
  const float dloss = 1.0f / float(B * T * tc.grad_accum);
  const bool tty = isatty(fileno(stdout));
  int bad_in_a_row = 0;
  double total_time = 0;
  float last_val = NAN;
  using clock = std::chrono::steady_clock;

  for (int step = 0; step < tc.steps && g_interrupts == 0; step++) {
    auto t0 = clock::now();
    model.zero_grad();
    double loss_sum = 0;
    for (int micro = 0; micro < tc.grad_accum; micro++) {
      batch.load(train);
      model.forward(batch.inputs.data(), B, T);
      loss_sum += model.loss(batch.targets.data(), dloss);
      model.backward();
    }
    const float loss = float(loss_sum / tc.grad_accum);
    const float norm = grad_norm(model.grads(), model.table().total());
    const float lr = lr_at(tc, step);
    const bool finite = std::isfinite(loss) && std::isfinite(norm);
    if (finite) {
      opt.step(model.params(), model.grads(), lr, clip_scale(norm, float(tc.grad_clip)));
      bad_in_a_row = 0;
    } else {
      bad_in_a_row++;
    }
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    total_time += dt;

    const bool last = step + 1 == tc.steps;
    const bool do_eval = val && ((tc.eval_every > 0 && (step + 1) % tc.eval_every == 0) || last);
    float val_loss = NAN;
    if (do_eval) last_val = val_loss = evaluate(model, *val, batch, tc.eval_steps);

    const double tokens_per_s = double(B) * T * tc.grad_accum / dt;
    const double mfu = flops_per_step / dt / peak;
    json::Object row{{"step", step + 1},      {"loss", double(loss)},     {"lr", double(lr)},
                     {"tokens_per_s", tokens_per_s}, {"grad_norm", double(norm)}, {"mfu", mfu},
                     {"mem_bytes", int64_t(peak_rss_bytes())}, {"time_s", total_time}};
    if (do_eval) row["val_loss"] = double(val_loss);
    if (!finite) row["skipped"] = true;
    log.write(row);

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
    if (bad_in_a_row >= kMaxBadStepsInARow)
      throw std::runtime_error("training diverged: loss or gradient not finite for " +
                               std::to_string(kMaxBadStepsInARow) + " steps in a row (step " +
                               std::to_string(step + 1) + "); lower train.lr or raise train.warmup_steps");
  }
  if (g_interrupts) std::printf("\ninterrupted: stopped cleanly after the current step\n");
  std::signal(SIGINT, SIG_DFL);
  if (std::isfinite(last_val))
    std::printf("final val loss %.4f nats/token; unigram entropy of the training data %.4f nats/token\n", last_val,
                unigram.nats);

  if (tc.sample_tokens > 0) {
    Rng rng(uint64_t(tc.seed) ^ 0x5A5A5A5Aull);
    std::vector<int> tokens{tokenizer->eot()};
    sample_tokens(model, tokens, tc.sample_tokens, T, 0.8f, rng);
    std::vector<uint32_t> ids(tokens.begin() + 1, tokens.end());
    std::printf("sample (temperature 0.8):\n%s\n", tokenizer->decode(ids).c_str());
  }
  std::printf("log: %s/log.jsonl\n", cfg.log.dir.c_str());
  return g_interrupts ? 130 : 0;
}
