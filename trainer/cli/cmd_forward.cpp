// kvmtrain forward: logits and loss of given token sequences, for debugging and for comparisons
// with other implementations (the PyTorch reference, Hugging Face).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "common/file_io.h"
#include "checkpoints/safetensors.h"
#include "trainer/train/checkpointing.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/model_device.h"

namespace {

// One sequence per line, whitespace-separated ids, every line of one length (blank lines skipped).
std::vector<std::vector<int>> read_token_file(const std::string& path, int vocab_size) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read token file " + path);
  std::vector<std::vector<int>> seqs;
  std::string line;
  for (int ln = 1; std::getline(in, line); ln++) {
    const std::string where = path + ":" + std::to_string(ln);
    std::istringstream words(line);
    std::vector<int> seq;
    for (std::string w; words >> w;) {
      size_t used = 0;
      long long id = -1;
      try {
        id = std::stoll(w, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != w.size() || id < 0)
        throw std::runtime_error(where + ": '" + w + "' is not a token id (expected a non-negative integer)");
      if (id >= vocab_size)
        throw std::runtime_error(where + ": token id " + w + " is out of range (vocab_size " + std::to_string(vocab_size) + ")");
      seq.push_back(int(id));
    }
    if (seq.empty()) continue;
    if (!seqs.empty() && seq.size() != seqs[0].size())
      throw std::runtime_error(where + ": " + std::to_string(seq.size()) + " tokens, but the first sequence has " +
                               std::to_string(seqs[0].size()) + " (every line must have one length T)");
    seqs.push_back(std::move(seq));
  }
  if (seqs.empty()) throw std::runtime_error(path + ": no token sequences (expected one per line)");
  return seqs;
}

}  // namespace

int cmd_forward(int argc, char** argv) {
  cli::Args args("forward", "Run the model of a checkpoint on token sequences and write the logits (N, T, vocab_size) "
                            "fp32 and the mean next-token cross-entropy `loss` as safetensors.");
  args.positional("CKPT_OR_RUN", "a checkpoint directory, or a run directory (its newest complete checkpoint)");
  args.option("tokens", "FILE", "token ids, whitespace-separated, one sequence per line, all of one length T");
  args.option("output", "OUT", "the safetensors file to write (logits, loss)");
  args.flag("best", "with a run directory: the checkpoint with the best validation loss (best.json)");
  add_device_option(args);
  args.parse(argc, argv, 2);
  if (!args.has("tokens")) throw UsageError("forward: missing --tokens FILE");
  if (!args.has("output")) throw UsageError("forward: missing --output OUT");

  const std::string dir = resolve_checkpoint(args.str("CKPT_OR_RUN"), args.has("best"));
  const config::Config cfg = checkpoint_config(dir);
  const int V = cfg.model.vocab_size, Vp = cfg.model.padded_vocab_size;
  const auto seqs = read_token_file(args.str("tokens"), V);
  const int N = int(seqs.size()), T = int(seqs[0].size());
  if (T < 2)
    throw UsageError(args.str("tokens") + ": sequences of " + std::to_string(T) +
                     " token have no next token to score (expected at least 2 per line)");
  if (T > cfg.model.max_seq_len)
    throw std::runtime_error(args.str("tokens") + ": sequences of " + std::to_string(T) +
                             " tokens exceed model.max_seq_len " + std::to_string(cfg.model.max_seq_len));

  Model model(cfg.model, 1, T, false, nullptr, device_backend(args, cfg));
  load_weights(dir, model);
  std::vector<float> copy;  // the logits on the host, where the backend's are not
  ckpt::NamedTensor logits{"logits", {N, T, V}, std::vector<float>(size_t(N) * T * V)};
  // cross-entropy in double from the logits themselves: log-sum-exp minus the target's logit
  double nll = 0;
  for (int n = 0; n < N; n++) {
    model.forward(seqs[n].data(), 1, T);
    const float* rows = model.logits_host(0, size_t(T), copy);
    for (int t = 0; t < T; t++) {
      const float* row = rows + size_t(t) * Vp;
      std::copy(row, row + V, logits.data.begin() + (size_t(n) * T + t) * V);
      if (t + 1 == T) continue;
      double maxv = row[0], sum = 0;
      for (int v = 1; v < V; v++) maxv = std::max(maxv, double(row[v]));
      for (int v = 0; v < V; v++) sum += std::exp(double(row[v]) - maxv);
      nll += maxv + std::log(sum) - double(row[seqs[n][t + 1]]);
    }
  }
  const float loss = float(nll / (double(N) * (T - 1)));
  ckpt::NamedTensor loss_t{"loss", {1}, {loss}};
  ckpt::write_file_synced(args.str("output"), ckpt::safetensors_bytes({logits, loss_t}, ckpt::DType::F32,
                                                                      {{"checkpoint", dir}}));
  std::printf("forward: %d sequences of %d tokens from %s: loss %.6f -> %s\n", N, T, dir.c_str(), loss,
              args.str("output").c_str());
  return 0;
}
