// kvmtrain prepare: flags -> data::prepare, then a one-line summary.
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

}  // namespace

int cmd_prepare(int argc, char** argv) {
  cli::Args args("prepare",
                 "Tokenize text into HDF5 token shards: OUTPUT/train/shard_NNNNN.h5, OUTPUT/val/shard_NNNNN.h5 and\n"
                 "OUTPUT/manifest.json. Inputs are text files (one document each, unless --doc-sep), directories of\n"
                 "them (recursive, sorted) and .jsonl files (one document per line, in its \"text\" field). Each\n"
                 "document is followed by EOT. Document i goes to val when ceil(i*F) > ceil((i-1)*F): evenly spaced,\n"
                 "the second document always, so val holds >= 1 document whenever there are >= 2.");
  args.multi("input", "PATH", "text file, directory or .jsonl file (repeatable)");
  args.option("output", "DIR", "output directory (its old shard_* files are replaced)");
  args.option("tokenizer", "NAME", "gpt2 or byte", "gpt2");
  args.option("val-fraction", "F", "share of the documents for val/, in [0, 1)", "0.1");
  args.option("shard-tokens", "N", "a shard closes at the first document end past N tokens", "134217728");
  args.option("doc-sep", "REGEX", "in text files, a line matching REGEX (ECMAScript, searched) ends a document");
  args.option("verify", "DIR", "instead of preparing: check every shard of DIR against DIR/manifest.json (sha256, "
                               "sizes, token and document counts, none missing or unlisted); exit 2 on a mismatch");
  args.flag("quiet", "no progress line on stderr");
  args.parse(argc, argv, 2);
  if (args.has("verify")) return verify(args.str("verify"));

  data::PrepareOptions o;
  o.inputs = args.list("input");
  if (o.inputs.empty()) throw UsageError("prepare: --input PATH is required (see kvmtrain prepare --help)");
  if (!args.has("output")) throw UsageError("prepare: --output DIR is required (see kvmtrain prepare --help)");
  o.output = args.str("output");
  o.tokenizer = args.str("tokenizer");
  o.val_fraction = args.number("val-fraction");
  if (!(o.val_fraction >= 0 && o.val_fraction < 1))
    throw UsageError("prepare: --val-fraction must be in [0, 1), got " + args.str("val-fraction"));
  int64_t shard_tokens = args.integer("shard-tokens");
  if (shard_tokens < 1) throw UsageError("prepare: --shard-tokens must be >= 1, got " + args.str("shard-tokens"));
  o.shard_tokens = uint64_t(shard_tokens);
  o.doc_sep = args.str("doc-sep");
  o.progress = !args.has("quiet");

  data::PrepareSummary s = data::prepare(o);
  std::printf("prepare: %.1f MB of text in %.2f s (%.1f MB/s): train %llu documents, %llu tokens, %llu shards; "
              "val %llu documents, %llu tokens, %llu shards -> %s/manifest.json\n",
              s.text_bytes / 1e6, s.seconds, s.text_bytes / 1e6 / (s.seconds > 0 ? s.seconds : 1e-9),
              (unsigned long long)s.train.documents, (unsigned long long)s.train.tokens,
              (unsigned long long)s.train.shards,
              (unsigned long long)s.val.documents, (unsigned long long)s.val.tokens, (unsigned long long)s.val.shards,
              o.output.c_str());
  return 0;
}
