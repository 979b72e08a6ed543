// kvmtrain generate: stream text from a checkpoint's model.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "data/tokenizer.h"
#include "trainer/train/checkpointing.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/model_device.h"
#include "trainer/model/sample.h"

int cmd_generate(int argc, char** argv) {
  cli::Args args("generate", "Stream text sampled from the model of a checkpoint and report tokens/s.");
  args.positional("CKPT_OR_RUN", "a checkpoint directory, or a run directory (its newest complete checkpoint)");
  args.option("prompt", "TEXT", "the text to continue (empty: start from <|endoftext|>)", "");
  args.option("n", "N", "tokens to generate (-n N works too)", "64");
  args.option("temperature", "X", "softmax temperature; 0 is greedy", "0.8");
  args.option("top-k", "K", "sample among the K most likely tokens; 0: all", "0");
  args.option("top-p", "P", "sample among the smallest set of tokens whose probability reaches P", "1");
  args.option("seed", "S", "sampling seed", "1337");
  args.option("decode", "recompute|cache",
              "recompute: re-run the context for every token; cache: the model's decode caches", "cache");
  args.flag("best", "with a run directory: the checkpoint with the best validation loss (best.json)");
  add_device_option(args);
  // `-n N` as the issue spells it: the parser knows only --long options
  std::vector<char*> av(argv, argv + argc);
  static char long_n[] = "--n";
  for (int i = 2; i < argc; i++)
    if (std::strcmp(av[i], "-n") == 0) av[i] = long_n;
  args.parse(argc, av.data(), 2);

  SampleOptions o;
  o.temperature = float(args.number("temperature"));
  o.top_k = int(args.integer("top-k", 0, INT32_MAX));
  o.top_p = float(args.number("top-p"));
  const int n = int(args.integer("n", 0, INT32_MAX));
  const std::string decode = args.str("decode");
  if (o.temperature < 0 || o.top_k < 0 || !(o.top_p > 0 && o.top_p <= 1) || n < 0)
    throw UsageError("generate: expected --temperature >= 0, --top-k >= 0, 0 < --top-p <= 1, -n >= 0");
  if (decode != "recompute" && decode != "cache")
    throw UsageError("generate: --decode " + decode + " (expected recompute or cache)");

  const std::string dir = resolve_checkpoint(args.str("CKPT_OR_RUN"), args.has("best"));
  const config::Config cfg = checkpoint_config(dir);
  auto tok = data::make_tokenizer(config::to_string(cfg.data.tokenizer), cfg.model.vocab_size);
  const int T = cfg.model.max_seq_len;
  Model model(cfg.model, 1, T, false, nullptr, device_backend(args, cfg));
  load_weights(dir, model);

  std::vector<int> tokens;
  for (uint32_t id : tok->encode(args.str("prompt"))) tokens.push_back(int(id));
  if (tokens.empty()) tokens.push_back(tok->eot());
  const size_t prompt_len = tokens.size();
  // the decode caches hold at most max_seq_len positions: refuse before streaming, not midway
  if (decode == "cache" && n > 0 && prompt_len + size_t(n) - 1 > size_t(T))
    throw UsageError("generate: a prompt of " + std::to_string(prompt_len) + " tokens and -n " + std::to_string(n) +
                     " need " + std::to_string(prompt_len + size_t(n) - 1) +
                     " positions in the decode cache, model.max_seq_len is " + std::to_string(T) +
                     " (--decode recompute slides the context instead)");
  std::fputs(args.str("prompt").c_str(), stdout);
  std::fflush(stdout);

  Rng rng(uint64_t(args.integer("seed")));
  LogitsSource source(model, T, decode == "cache");
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; i++) {
    const int next = sample_next(source.next(tokens), cfg.model.vocab_size, o, rng);
    tokens.push_back(next);
    const uint32_t id = uint32_t(next);
    std::fputs(tok->decode(&id, 1).c_str(), stdout);
    std::fflush(stdout);
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("\n");
  std::fprintf(stderr, "generate: %zu tokens in %.2f s, %.1f tokens/s (%s, prompt %zu tokens)\n",
               tokens.size() - prompt_len, dt, double(tokens.size() - prompt_len) / (dt > 0 ? dt : 1e-9),
               decode == "cache" ? "decode cache" : "recompute, no cache", prompt_len);
  if (decode == "cache")
    std::fprintf(stderr, "generate: decode cache %.1f KiB (KV caches, KVM states and windows)\n",
                 model.decode_cache_bytes() / 1024.0);
  return 0;
}
