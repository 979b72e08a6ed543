// kvmtrain prepare: flags -> data::prepare (text) or data::prepare_mqar (--synthetic mqar), then a
// one-line summary.
#include <cstdint>
#include <cstdio>
#include <string>

#include "common/usage_error.h"
#include "data/manifest.h"
#include "data/prepare.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"

namespace {

int verify(const std::string& dir) {
  size_t shards = 0;
  std::string first;
  const size_t problems = data::verify_prepared(dir, [&](const std::string& path, const std::string& problem) {
    shards++;
    std::printf("%-32s %s\n", path.c_str(), problem.empty() ? "ok" : problem.c_str());
    if (!problem.empty() && first.empty()) first = path + ": " + problem;
  });
  if (problems)
    throw UsageError(dir + ": " + std::to_string(problems) + " of " + std::to_string(shards) +
                     " shards do not match manifest.json; the first: " + first);
  std::printf("prepare --verify: %zu shards match %s/manifest.json\n", shards, dir.c_str());
  return 0;
}

void print_summary(const data::PrepareSummary& s, const std::string& output) {
  std::printf("train %llu documents, %llu tokens, %llu shards; val %llu documents, %llu tokens, %llu shards -> "
              "%s/manifest.json\n",
              (unsigned long long)s.train.documents, (unsigned long long)s.train.tokens,
              (unsigned long long)s.train.shards, (unsigned long long)s.val.documents,
              (unsigned long long)s.val.tokens, (unsigned long long)s.val.shards, output.c_str());
}

// --synthetic mqar: its own flags only (the text ones mean nothing to it, so they are refused).
int prepare_synthetic(const cli::Args& args, const std::string& output, uint64_t shard_tokens) {
  const std::string task = args.str("synthetic");
  if (task != "mqar") throw UsageError("prepare: --synthetic " + task + " (expected mqar)");
  for (const char* text_flag : {"input", "tokenizer", "val-fraction", "doc-sep"})
    if (args.has(text_flag))
      throw UsageError(std::string("prepare: --") + text_flag + " does not apply to --synthetic mqar");
  for (const char* required : {"vocab", "seq-len", "pairs", "examples"})
    if (!args.has(required))
      throw UsageError(std::string("prepare: --synthetic mqar needs --") + required + " (see kvmtrain prepare --help)");
  data::MqarPrepareOptions o;
  o.spec.vocab = int(args.integer("vocab", INT32_MIN, INT32_MAX));
  o.spec.seq_len = int(args.integer("seq-len", INT32_MIN, INT32_MAX));
  o.spec.pairs = int(args.integer("pairs", INT32_MIN, INT32_MAX));
  o.spec.min_gap = int(args.integer("min-gap", INT32_MIN, INT32_MAX));
  o.examples = uint64_t(args.integer("examples", 1));
  o.val_examples = uint64_t(args.integer("val-examples", 1));
  o.seed = uint64_t(args.integer("seed", 0));
  o.output = output;
  o.shard_tokens = shard_tokens;
  const data::PrepareSummary s = data::prepare_mqar(o);
  std::printf("prepare: mqar V %d, T %d, %d pairs, min gap %d, seed %llu in %.2f s: ", o.spec.vocab, o.spec.seq_len,
              o.spec.pairs, o.spec.min_gap, (unsigned long long)o.seed, s.seconds);
  print_summary(s, output);
  return 0;
}

}  // namespace

int cmd_prepare(int argc, char** argv) {
  cli::Args args("prepare",
                 "Tokenize text into HDF5 token shards: OUTPUT/train/shard_NNNNN.h5, OUTPUT/val/shard_NNNNN.h5 and\n"
                 "OUTPUT/manifest.json. Inputs are text files (one document each, unless --doc-sep), directories of\n"
                 "them (recursive, sorted) and .jsonl files (one document per line, in its \"text\" field). Each\n"
                 "document is followed by EOT. Document i goes to val when ceil(i*F) > ceil((i-1)*F): evenly spaced,\n"
                 "the second document always, so val holds >= 1 document whenever there are >= 2.\n"
                 "Or, with --synthetic mqar, multi-query associative recall examples (docs/recall.md): shards of\n"
                 "fixed-length documents of T+1 tokens with loss masks on the queries' answers, tokenizer mqar.");
  args.multi("input", "PATH", "text file, directory or .jsonl file (repeatable)");
  args.option("output", "DIR", "output directory (its old shard_* files are replaced)");
  args.option("tokenizer", "NAME", "gpt2 or byte", "gpt2");
  args.option("val-fraction", "F", "share of the documents for val/, in [0, 1)", "0.1");
  args.option("shard-tokens", "N", "a shard closes at the first document end past N tokens", "134217728");
  args.option("doc-sep", "REGEX", "in text files, a line matching REGEX (ECMAScript, searched) ends a document");
  args.option("verify", "DIR", "instead of preparing: check every shard of DIR against DIR/manifest.json (sha256, "
                               "sizes, token and document counts, none missing or unlisted); exit 2 on a mismatch");
  args.flag("quiet", "no progress line on stderr");
  args.option("synthetic", "mqar", "generate a synthetic task instead of reading --input");
  args.option("vocab", "V", "mqar: vocabulary (even, >= 4): 0 filler, keys [1, V/2), values [V/2, V)");
  args.option("seq-len", "T", "mqar: an example is T+1 tokens (train.seq_len T)");
  args.option("pairs", "N", "mqar: key-value pairs per example, each queried once (1 to V/2 - 1)");
  args.option("min-gap", "G", "mqar: every query is >= G positions after its key's pair", "0");
  args.option("examples", "M", "mqar: training examples");
  args.option("val-examples", "K", "mqar: validation examples (their own random stream)", "1000");
  args.option("seed", "S", "mqar: seed of the training stream (validation: docs/recall.md)", "1337");
  args.parse(argc, argv, 2);
  if (args.has("verify")) return verify(args.str("verify"));

  if (!args.has("output")) throw UsageError("prepare: --output DIR is required (see kvmtrain prepare --help)");
  int64_t shard_tokens = args.integer("shard-tokens");
  if (shard_tokens < 1) throw UsageError("prepare: --shard-tokens must be >= 1, got " + args.str("shard-tokens"));
  if (args.has("synthetic")) return prepare_synthetic(args, args.str("output"), uint64_t(shard_tokens));
  for (const char* mqar_flag : {"vocab", "seq-len", "pairs", "min-gap", "examples", "val-examples", "seed"})
    if (args.has(mqar_flag)) throw UsageError(std::string("prepare: --") + mqar_flag + " needs --synthetic mqar");

  data::PrepareOptions o;
  o.inputs = args.list("input");
  if (o.inputs.empty()) throw UsageError("prepare: --input PATH is required (see kvmtrain prepare --help)");
  o.output = args.str("output");
  o.tokenizer = args.str("tokenizer");
  o.val_fraction = args.number("val-fraction");
  if (!(o.val_fraction >= 0 && o.val_fraction < 1))
    throw UsageError("prepare: --val-fraction must be in [0, 1), got " + args.str("val-fraction"));
  o.shard_tokens = uint64_t(shard_tokens);
  o.doc_sep = args.str("doc-sep");
  o.progress = !args.has("quiet");

  data::PrepareSummary s = data::prepare(o);
  std::printf("prepare: %.1f MB of text in %.2f s (%.1f MB/s): ", s.text_bytes / 1e6, s.seconds,
              s.text_bytes / 1e6 / (s.seconds > 0 ? s.seconds : 1e-9));
  print_summary(s, o.output);
  return 0;
}
