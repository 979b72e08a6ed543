#pragma once
// `kvmtrain prepare`: text -> tokenized HDF5 shards, a train/ and a val/ split, and a manifest.
//   DIR/train/shard_00000.h5 ...   DIR/val/shard_00000.h5 ...   DIR/manifest.json
// Documents are tokenized on all OpenMP threads and written in input order, each followed by EOT.
// Or synthetic examples (prepare_mqar).
#include <cstdint>
#include <string>
#include <vector>

#include "data/mqar.h"

namespace data {

struct PrepareOptions {
  std::vector<std::string> inputs;  // text files, directories of them (recursive, sorted), .jsonl files
  std::string output;               // DIR
  std::string tokenizer = "gpt2";
  double val_fraction = 0.1;        // of the documents, in [0, 1); see is_val_document
  uint64_t shard_tokens = 1ull << 27;  // a shard closes at the first document end past this (256 MiB of uint16)
  std::string doc_sep;              // ECMAScript regex: a line of a text file that matches it (regex_search)
                                    // ends a document and is dropped; "" = one document per file
  bool progress = true;             // a progress line on stderr: MB done, MB/s
};

struct SplitTotals {
  uint64_t documents = 0, tokens = 0, shards = 0;
};

struct PrepareSummary {
  uint64_t text_bytes = 0;  // of the documents, separators and JSON syntax excluded
  SplitTotals train, val;
  double seconds = 0;
};

// Throws std::runtime_error (one line naming the file) on unreadable input, a malformed .jsonl
// line, a bad option, or inputs with no documents at all.
PrepareSummary prepare(const PrepareOptions& options);

// `kvmtrain prepare --synthetic mqar`: `examples` training and `val_examples` validation examples
// of data/mqar.h as shards of fixed-length documents (doc_len T+1) with loss masks, tokenizer
// "mqar" with V ids, and the manifest (its "synthetic" object holds the flags). The training
// examples come from one Rng (common/rng.h) started at seed, the validation ones from one started
// at mqar_val_seed(seed), each example's draws in the order docs/recall.md gives.
struct MqarPrepareOptions {
  MqarSpec spec;
  uint64_t examples = 0;
  uint64_t val_examples = 1000;
  uint64_t seed = 1337;
  std::string output;
  uint64_t shard_tokens = 1ull << 27;  // as PrepareOptions: a shard closes at the first example end past it
};
PrepareSummary prepare_mqar(const MqarPrepareOptions& options);

// Whether document i (0-based, input order) goes to val: when ceil(i*f) > ceil((i-1)*f). Evenly
// spaced, ceil((n-1)*f) of n documents, so the 2nd document is always val (>= 1 whenever n >= 2).
bool is_val_document(uint64_t i, double val_fraction);

// The input files in processing order: each input as given; a directory's regular files
// (recursively, hidden ones skipped) sorted by path. Throws naming an input that does not exist.
std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs);

}  // namespace data
