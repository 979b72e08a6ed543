#include "data/prepare.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <stdexcept>
#include <string_view>
#include <tuple>

#include "common/json.h"
#include "common/rng.h"
#include "common/sha256.h"
#include "common/usage_error.h"
#include "data/mqar.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace data {

namespace {

constexpr size_t kBatchBytes = 8u << 20;  // text read, tokenized in parallel, then written: bounds memory
constexpr size_t kPieceBytes = 1u << 20;  // documents longer than this are cut so that both cores work

bool ends_with(const std::string& s, const char* suffix) {
  size_t n = std::char_traits<char>::length(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// Yields the documents of the input files in order, a batch at a time, reading big .jsonl and
// --doc-sep files line by line so that memory stays bounded by the batch (or by one document).
class DocumentStream {
 public:
  DocumentStream(std::vector<std::string> files, const std::regex* doc_sep) : files_(std::move(files)), sep_(doc_sep) {}

  // Appends documents to `out` until they hold `budget` bytes or the input ends; false at the end.
  bool next_batch(std::vector<std::string>& out, size_t budget) {
    size_t bytes = 0;
    std::string line;
    while (bytes < budget) {
      if (!in_.is_open()) {
        if (next_file_ == files_.size()) break;
        open(files_[next_file_++]);
      }
      if (!jsonl_ && !sep_) {  // one document: the whole file
        std::string text(fs::file_size(path_), '\0');
        in_.read(text.data(), std::streamsize(text.size()));
        if (in_.gcount() != std::streamsize(text.size())) throw std::runtime_error(path_ + ": read error");
        consumed_ += text.size();
        bytes += text.size();
        if (!text.empty()) out.push_back(std::move(text));
        in_.close();
        continue;
      }
      if (!std::getline(in_, line)) {
        if (in_.bad()) throw std::runtime_error(path_ + ": read error");
        if (!pending_.empty()) bytes += pending_.size(), out.push_back(std::move(pending_));
        pending_.clear();
        in_.close();
        continue;
      }
      line_no_++;
      consumed_ += line.size() + 1;
      if (jsonl_) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        std::string text = jsonl_text(line);
        bytes += text.size();
        if (!text.empty()) out.push_back(std::move(text));
      } else if (std::regex_search(line, *sep_)) {
        if (!pending_.empty()) bytes += pending_.size(), out.push_back(std::move(pending_));
        pending_.clear();
      } else {
        pending_ += line;
        if (!in_.eof()) pending_ += '\n';  // the file's last line may lack one
      }
    }
    return !out.empty();
  }

  uint64_t consumed_bytes() const { return consumed_; }  // of the files, for the progress line

 private:
  void open(const std::string& path) {
    path_ = path;
    jsonl_ = ends_with(path, ".jsonl");
    line_no_ = 0;
    in_.open(path, std::ios::binary);
    if (!in_) throw std::runtime_error(path + ": cannot open input file");
  }

  std::string jsonl_text(const std::string& line) const {
    const char* want = ": expected a JSON object with a string \"text\" field";
    std::string where = path_ + ":" + std::to_string(line_no_);
    json::Value v;
    try {
      v = json::parse(line);
    } catch (const std::exception& e) {
      throw std::runtime_error(where + want + " (" + e.what() + ")");
    }
    if (!v.is_object() || !v.contains("text") || !v.at("text").is_string()) throw std::runtime_error(where + want);
    return v.at("text").string();
  }

  std::vector<std::string> files_;
  const std::regex* sep_;
  size_t next_file_ = 0;
  std::ifstream in_;
  std::string path_, pending_;
  bool jsonl_ = false;
  uint64_t line_no_ = 0, consumed_ = 0;
};

// Cuts `text` into pieces of about `target` bytes where every tokenizer we have encodes the pieces
// exactly as the whole: right after a "\n" that follows a printable ASCII character and precedes an
// ASCII letter. GPT-2's pre-tokenizer makes such a lone "\n" a pre-token of its own and starts a
// new one at the letter, so no BPE merge crosses the cut (bytes trivially never merge).
std::vector<std::string_view> cut_for_threads(std::string_view text, size_t target) {
  auto letter = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); };
  std::vector<std::string_view> out;
  size_t start = 0;
  for (size_t p = target; p < text.size(); p++) {
    if (text[p - 1] == '\n' && text[p - 2] > ' ' && text[p - 2] < 127 && letter(text[p])) {
      out.push_back(text.substr(start, p - start));
      start = p;
      p += target - 1;
    }
  }
  out.push_back(text.substr(start));
  return out;
}

// The ids of each document (EOT not included), on all OpenMP threads: dynamic scheduling over
// pieces of at most ~kPieceBytes, so one long document does not leave a core idle.
std::vector<std::vector<uint32_t>> tokenize(const Tokenizer& tok, const std::vector<std::string>& docs) {
  std::vector<std::pair<size_t, std::string_view>> pieces;  // (document, text)
  for (size_t d = 0; d < docs.size(); d++)
    for (auto p : cut_for_threads(docs[d], kPieceBytes)) pieces.push_back({d, p});
  std::vector<std::vector<uint32_t>> piece_ids(pieces.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < pieces.size(); i++) tok.encode(pieces[i].second, piece_ids[i]);
  std::vector<std::vector<uint32_t>> ids(docs.size());
  for (size_t i = 0; i < pieces.size(); i++) {
    auto& doc = ids[pieces[i].first];
    if (doc.empty()) doc = std::move(piece_ids[i]);
    else doc.insert(doc.end(), piece_ids[i].begin(), piece_ids[i].end());
  }
  return ids;
}

// One split's shards: DIR/shard_00000.h5, ... each closed at the first document end past the limit.
class SplitWriter {
 public:
  SplitWriter(std::string name, fs::path dir, ShardInfo info, uint64_t shard_tokens)
      : name_(std::move(name)), dir_(std::move(dir)), info_(std::move(info)), shard_tokens_(shard_tokens) {}

  // mask: the document's loss mask (shards with info.loss_mask), else null
  void add(const std::vector<uint32_t>& ids, const uint8_t* mask = nullptr) {
    if (!cur_) {
      char file[32];
      std::snprintf(file, sizeof file, "shard_%05zu.h5", files_.size());
      cur_ = std::make_unique<ShardWriter>((dir_ / file).string(), info_);
    }
    cur_->add_document(ids.data(), ids.size(), mask);
    totals_.documents++;
    totals_.tokens += ids.size() + (info_.doc_len > 0 ? 0 : 1);
    if (cur_->tokens() >= shard_tokens_) close();
  }

  void close() {
    if (!cur_) return;
    cur_->finish();
    files_.push_back(json::Object{{"path", name_ + "/" + fs::path(cur_->path()).filename().string()},
                                  {"split", name_},
                                  {"tokens", cur_->tokens()},
                                  {"documents", cur_->documents()},
                                  {"bytes", uint64_t(fs::file_size(cur_->path()))},
                                  {"sha256", sha256_file(cur_->path())}});
    totals_.shards++;
    cur_.reset();
  }

  const json::Array& files() const { return files_; }
  const SplitTotals& totals() const { return totals_; }

 private:
  std::string name_;
  fs::path dir_;
  ShardInfo info_;
  uint64_t shard_tokens_;
  std::unique_ptr<ShardWriter> cur_;
  json::Array files_;
  SplitTotals totals_;
};

// "prepare: 12.5/44.0 MB (28%)  9.3 MB/s" on stderr: redrawn in place on a terminal, else a
// line every 10 s so that logs stay readable.
class Progress {
 public:
  Progress(bool enabled, uint64_t total_bytes, Clock::time_point start)
      : enabled_(enabled), tty_(isatty(2)), total_(total_bytes), start_(start) {}
  void update(uint64_t done, bool last = false) {
    if (!enabled_) return;
    double now = std::chrono::duration<double>(Clock::now() - start_).count();
    if (!last && now - shown_ < (tty_ ? 0.25 : 10.0)) return;
    shown_ = now;
    std::fprintf(stderr, "%sprepare: %.1f/%.1f MB (%.0f%%)  %.1f MB/s%s", tty_ ? "\r" : "", done / 1e6, total_ / 1e6,
                 total_ ? 100.0 * done / total_ : 100.0, done / 1e6 / std::max(now, 1e-9), tty_ && !last ? "" : "\n");
  }

 private:
  bool enabled_, tty_;
  uint64_t total_;
  Clock::time_point start_;
  double shown_ = 0;
};

// Stale shards of an earlier run would be read as part of this one.
void clear_split_dir(const fs::path& dir) {
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (name.rfind("shard_", 0) == 0 && (ends_with(name, ".h5") || ends_with(name, ".h5.tmp"))) fs::remove(e.path());
  }
}

json::Value split_json(const SplitTotals& t) {
  return json::Object{{"documents", t.documents}, {"tokens", t.tokens}, {"shards", t.shards}};
}

// An output directory without a manifest (until this run writes its own) and with empty splits.
void start_output(const fs::path& out) {
  fs::remove(out / "manifest.json");
  clear_split_dir(out / "train");
  clear_split_dir(out / "val");
}

// manifest.json: `manifest` plus both splits' totals and files, written under a temporary name.
void write_manifest(const fs::path& out, json::Object manifest, const SplitWriter& train, const SplitWriter& val) {
  json::Array all = train.files();
  all.insert(all.end(), val.files().begin(), val.files().end());
  manifest["splits"] = json::Object{{"train", split_json(train.totals())}, {"val", split_json(val.totals())}};
  manifest["files"] = all;
  const fs::path tmp = out / "manifest.json.tmp";
  {
    std::ofstream f(tmp);
    f << json::dump(manifest, 2) << "\n";
    if (!f) throw std::runtime_error(tmp.string() + ": cannot write manifest");
  }
  fs::rename(tmp, out / "manifest.json");
}

}  // namespace

bool is_val_document(uint64_t i, double val_fraction) {
  if (i == 0 || val_fraction <= 0) return false;
  // f as q/1e9 in integers, so that the choice is exact and the same on every machine.
  const unsigned __int128 den = 1000000000;
  unsigned __int128 q = std::max<uint64_t>(1, uint64_t(std::llround(val_fraction * 1e9)));
  auto ceil_mul = [&](uint64_t k) { return (k * q + den - 1) / den; };
  return ceil_mul(i) > ceil_mul(i - 1);
}

std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(in); it != fs::recursive_directory_iterator(); ++it) {
        if (it->path().filename().string().rfind('.', 0) == 0) {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file()) found.push_back(it->path().string());
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(in, ec)) {
      files.push_back(in);
    } else {
      throw std::runtime_error(in + ": no such input file or directory");
    }
  }
  return files;
}

PrepareSummary prepare(const PrepareOptions& o) {
  const auto t0 = Clock::now();
  if (!(o.val_fraction >= 0 && o.val_fraction < 1))
    throw std::runtime_error("prepare: --val-fraction must be in [0, 1), got " + std::to_string(o.val_fraction));
  if (o.shard_tokens == 0) throw std::runtime_error("prepare: --shard-tokens must be at least 1");
  if (o.inputs.empty()) throw std::runtime_error("prepare: no --input given");
  std::unique_ptr<std::regex> sep;
  if (!o.doc_sep.empty()) {
    try {
      sep = std::make_unique<std::regex>(o.doc_sep, std::regex::ECMAScript | std::regex::optimize);
    } catch (const std::regex_error& e) {
      throw std::runtime_error("prepare: --doc-sep '" + o.doc_sep + "' is not a valid regex (" + e.what() + ")");
    }
  }
  auto tok = make_tokenizer(o.tokenizer);
  const std::vector<std::string> files = expand_inputs(o.inputs);
  uint64_t total_bytes = 0;
  for (const auto& f : files) total_bytes += fs::file_size(f);

  const fs::path out(o.output);
  if (fs::exists(out) && !fs::is_directory(out))
    throw std::runtime_error(o.output + ": output exists and is not a directory");
  // prepare clears the output's train/ and val/ first: an output inside an input would read the
  // shards of a previous run as text, and an input inside the output would be deleted
  const fs::path out_abs = fs::weakly_canonical(fs::absolute(out));
  auto within = [](const fs::path& p, const fs::path& dir) {
    auto [d, q] = std::mismatch(dir.begin(), dir.end(), p.begin(), p.end());
    return d == dir.end();
  };
  for (const auto& in : o.inputs) {
    const fs::path in_abs = fs::weakly_canonical(fs::absolute(in));
    if (fs::is_directory(in_abs) && within(out_abs, in_abs))
      throw std::runtime_error("prepare: --output " + o.output + " is inside --input " + in +
                               " (a second run would read the first's shards as text): choose an output outside it");
    if (within(in_abs, out_abs))
      throw std::runtime_error("prepare: --input " + in + " is inside --output " + o.output +
                               " (prepare clears its output first): choose an output outside it");
  }
  start_output(out);
  const ShardInfo info{tok->name(), tok->vocab_size(), tok->eot()};
  SplitWriter train("train", out / "train", info, o.shard_tokens), val("val", out / "val", info, o.shard_tokens);

  DocumentStream stream(files, sep.get());
  Progress progress(o.progress, total_bytes, t0);
  PrepareSummary sum;
  uint64_t doc_index = 0;
  std::vector<std::string> docs;
  for (;;) {
    docs.clear();
    if (!stream.next_batch(docs, kBatchBytes)) break;
    for (const auto& ids : tokenize(*tok, docs)) (is_val_document(doc_index++, o.val_fraction) ? val : train).add(ids);
    for (const auto& d : docs) sum.text_bytes += d.size();
    progress.update(stream.consumed_bytes());
  }
  if (doc_index == 0) throw std::runtime_error("prepare: the inputs hold no documents (all files empty?)");
  train.close();
  val.close();
  progress.update(stream.consumed_bytes(), true);

  json::Array inputs;
  for (const auto& in : o.inputs) inputs.push_back(in);
  json::Object manifest{{"format_version", kShardFormatVersion},
                        {"tokenizer", info.tokenizer},
                        {"vocab_size", info.vocab_size},
                        {"eot", info.eot},
                        {"inputs", inputs},
                        {"input_files", uint64_t(files.size())},
                        {"text_bytes", sum.text_bytes},
                        {"doc_sep", o.doc_sep},
                        {"val_fraction", o.val_fraction},
                        {"shard_tokens", o.shard_tokens}};
  write_manifest(out, manifest, train, val);
  sum.train = train.totals();
  sum.val = val.totals();
  sum.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return sum;
}

PrepareSummary prepare_mqar(const MqarPrepareOptions& o) {
  const auto t0 = Clock::now();
  check_mqar(o.spec);
  if (o.examples < 1) throw UsageError("prepare: --examples must be >= 1");
  if (o.val_examples < 1) throw UsageError("prepare: --val-examples must be >= 1");
  const fs::path out(o.output);
  if (fs::exists(out) && !fs::is_directory(out))
    throw std::runtime_error(o.output + ": output exists and is not a directory");
  start_output(out);
  ShardInfo info{"mqar", o.spec.vocab, 0};
  info.doc_len = o.spec.seq_len + 1;
  info.loss_mask = true;
  SplitWriter train("train", out / "train", info, o.shard_tokens), val("val", out / "val", info, o.shard_tokens);
  std::vector<uint32_t> tokens(size_t(info.doc_len));
  std::vector<uint8_t> mask(tokens.size());
  for (auto [split, rng, n] : {std::tuple{&train, Rng(o.seed), o.examples},
                               std::tuple{&val, Rng(mqar_val_seed(o.seed)), o.val_examples}}) {
    for (uint64_t i = 0; i < n; i++) {
      mqar_example(o.spec, rng, tokens.data(), mask.data());
      split->add(tokens, mask.data());
    }
    split->close();
  }
  json::Object manifest{{"format_version", info.format_version()},
                        {"tokenizer", info.tokenizer},
                        {"vocab_size", info.vocab_size},
                        {"eot", info.eot},
                        {"doc_len", info.doc_len},
                        {"synthetic", json::Object{{"task", "mqar"}, {"vocab", o.spec.vocab},
                                                   {"seq_len", o.spec.seq_len}, {"pairs", o.spec.pairs},
                                                   {"min_gap", o.spec.min_gap}, {"examples", o.examples},
                                                   {"val_examples", o.val_examples}, {"seed", o.seed}}},
                        {"shard_tokens", o.shard_tokens}};
  write_manifest(out, manifest, train, val);
  PrepareSummary sum;
  sum.train = train.totals();
  sum.val = val.totals();
  sum.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return sum;
}

}  // namespace data
