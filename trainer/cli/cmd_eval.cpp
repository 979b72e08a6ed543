// kvmtrain eval: what a checkpoint has learned.
//   loss           validation loss and perplexity over (B, T) windows of the val shards (or --data),
//                  the windows the training loop's validation reads, in order from the first
//   position-loss  next-token loss by position, in blocks of --block tokens, over the first
//                  --seq-len + 1 tokens of long documents (also past the training length)
//   passkey        needle in a haystack: a 5-digit pass key hidden at a depth of filler text and
//                  asked for at the end, greedy decoding, accuracy by context length and depth
//   recall         next-token accuracy at the scored positions of (T+1)-token examples (loss-masked
//                  shards such as MQAR's, or --jsonl), overall and by the query's gap (docs/recall.md)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/json.h"
#include "data/batch.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "trainer/train/checkpointing.h"
#include "trainer/cli/args.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/model_device.h"
#include "trainer/train/evaluate.h"
#include "trainer/model/model.h"
#include "common/rng.h"
#include "trainer/train/run_log.h"

namespace fs = std::filesystem;

namespace {

// A model with learned positions has no embedding for positions >= max_seq_len.
void check_length(const config::ModelConfig& m, int T, const std::string& what) {
  if (T <= m.max_seq_len) return;
  if (m.pos == config::Pos::learned)
    throw UsageError("eval: " + what + " needs " + std::to_string(T) + " positions, but this model has learned " +
                          "positions (model.pos: learned) only up to model.max_seq_len " +
                          std::to_string(m.max_seq_len) + "; only RoPE models (model.pos: rope) go past it");
}

std::vector<data::Source> eval_sources(const cli::Args& args, const config::Config& cfg) {
  std::vector<data::Source> out;
  if (args.has("data")) {
    fs::path d = args.str("data");
    out.push_back({fs::is_directory(d / "val") ? (d / "val").string() : d.string(), 1.0});
    return out;
  }
  for (const auto& s : cfg.data.val) out.push_back({s.path, s.weight});
  if (out.empty())
    throw UsageError("eval: the checkpoint's config has no data.val; give --data DIR (a shard directory)");
  return out;
}

// Next-token cross-entropy of row t of the logits against `target`, in double.
double nll_at(const float* row, int V, int target) {
  double maxv = row[0], sum = 0;
  for (int v = 1; v < V; v++) maxv = std::max(maxv, double(row[v]));
  for (int v = 0; v < V; v++) sum += std::exp(double(row[v]) - maxv);
  return maxv + std::log(sum) - double(row[target]);
}

std::vector<double> parse_numbers(const std::string& text, const std::string& flag) {
  std::vector<double> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    char* end = nullptr;
    double x = std::strtod(item.c_str(), &end);
    if (item.empty() || *end != '\0') throw UsageError("eval: --" + flag + " expects numbers separated by commas, got '" + text + "'");
    out.push_back(x);
  }
  if (out.empty()) throw UsageError("eval: --" + flag + " is empty");
  return out;
}

// Documents of the val shards with at least `min_len` tokens (their first min_len tokens), up to `max_docs`.
std::vector<std::vector<int>> long_documents(const std::vector<data::Source>& sources, const config::Config& cfg,
                                             size_t min_len, size_t max_docs, size_t& longest) {
  std::vector<std::vector<int>> docs;
  longest = 0;
  for (const auto& src : sources)
    for (const auto& path : data::list_shards(src.path)) {
      data::ShardReader r(path, config::to_string(cfg.data.tokenizer), cfg.model.vocab_size);
      auto offs = r.doc_offsets();
      for (size_t i = 0; i < offs.size() && docs.size() < max_docs; i++) {
        const uint64_t b = uint64_t(offs[i]), e = i + 1 < offs.size() ? uint64_t(offs[i + 1]) : r.size();
        longest = std::max<size_t>(longest, e - b);
        if (e - b < min_len) continue;
        std::vector<uint16_t> buf(min_len);
        r.read(b, min_len, buf.data());
        docs.emplace_back(buf.begin(), buf.end());
      }
    }
  return docs;
}

std::string out_dir(const cli::Args& args, const std::string& ckpt) {
  std::string d = args.has("out") ? args.str("out") : eval::default_out_dir(args.str("CKPT_OR_RUN"), ckpt);
  fs::create_directories(d);
  return d;
}

int task_loss(const cli::Args& args, const config::Config& cfg, const std::string& ckpt) {
  const int T = args.has("seq-len") ? int(args.integer("seq-len")) : cfg.train.seq_len;
  const int B = args.has("batch") ? int(args.integer("batch")) : cfg.train.batch_size;
  if (T < 1 || B < 1) throw UsageError("eval: expected --seq-len >= 1 and --batch >= 1");
  check_length(cfg.model, T, "--seq-len " + std::to_string(T));
  const auto sources = eval_sources(args, cfg);
  eval::Validation validation(cfg, sources, B, T);  // the windows the training loop's validation reads
  int64_t batches = args.integer("batches");
  if (batches <= 0) batches = std::max<int64_t>(1, int64_t(validation.windows_per_epoch() / uint64_t(B)));
  Model model(cfg.model, B, T, false, nullptr, device_backend(args, cfg));
  load_weights(ckpt, model);
  const double loss = validation.loss(model, batches);
  json::Object o{{"task", "loss"}, {"checkpoint", ckpt}, {"seq_len", T}, {"batch_size", B},
                 {"batches", batches}, {"tokens", int64_t(batches) * B * T}, {"loss", loss},
                 {"perplexity", std::exp(loss)}, {"bits_per_token", loss / std::log(2.0)},
                 {"windows_per_epoch", validation.windows_per_epoch()}};
  json::Array src;
  for (const auto& s : sources) src.push_back(s.path);
  o["data"] = src;
  const std::string path = out_dir(args, ckpt) + "/loss.json";
  write_file_atomic(path, json::dump(o, 2) + "\n");
  std::printf("eval loss: %.6f nats/token, perplexity %.3f over %lld batches of %d x %d tokens -> %s\n", loss,
              std::exp(loss), (long long)batches, B, T, path.c_str());
  return 0;
}

int task_position_loss(const cli::Args& args, const config::Config& cfg, const std::string& ckpt) {
  const int T = args.has("seq-len") ? int(args.integer("seq-len")) : cfg.train.seq_len;
  const int block = int(args.integer("block"));
  const int max_docs = int(args.integer("max-docs"));
  if (T < 2 || block < 1 || max_docs < 1) throw UsageError("eval: expected --seq-len >= 2, --block >= 1, --max-docs >= 1");
  check_length(cfg.model, T, "--seq-len " + std::to_string(T));
  const auto sources = eval_sources(args, cfg);
  size_t longest = 0;
  const auto docs = long_documents(sources, cfg, size_t(T) + 1, size_t(max_docs), longest);
  if (docs.empty())
    throw UsageError("eval: position-loss: no document of the validation data has " + std::to_string(T + 1) +
                          " tokens (the longest has " + std::to_string(longest) + "); lower --seq-len");
  Model model(cfg.model, 1, T, false, nullptr, device_backend(args, cfg));
  load_weights(ckpt, model);
  const int V = model.softmax_width(), Vp = model.logits_width();
  std::vector<double> sum(T, 0.0);
  std::vector<float> copy;  // the logits on the host, where the backend's are not
  for (const auto& d : docs) {
    model.forward(d.data(), 1, T);
    const float* rows = model.logits_host(0, size_t(T), copy);
    for (int t = 0; t < T; t++) sum[t] += nll_at(rows + size_t(t) * Vp, V, d[t + 1]);
  }
  json::Array blocks;
  std::printf("eval position-loss: %zu documents, %d tokens each (trained at %d), blocks of %d\n", docs.size(), T,
              cfg.train.seq_len, block);
  for (int b0 = 0; b0 < T; b0 += block) {
    const int b1 = std::min(T, b0 + block);
    double s = 0;
    for (int t = b0; t < b1; t++) s += sum[t];
    const double loss = s / (double(b1 - b0) * docs.size());
    blocks.push_back(json::Object{{"start", b0}, {"end", b1}, {"loss", loss}});
    std::printf("  positions [%6d, %6d): loss %.4f%s\n", b0, b1, loss, b0 >= cfg.train.seq_len ? "  (past training length)" : "");
  }
  json::Object o{{"task", "position-loss"}, {"checkpoint", ckpt}, {"seq_len", T},
                 {"train_seq_len", cfg.train.seq_len}, {"max_seq_len", cfg.model.max_seq_len},
                 {"pos", config::to_string(cfg.model.pos)},
                 {"block", block}, {"documents", int64_t(docs.size())}, {"blocks", blocks}};
  const std::string dir = out_dir(args, ckpt);
  write_file_atomic(dir + "/position_loss.json", json::dump(o, 2) + "\n");
  eval::plot({"position-loss", dir + "/position_loss.json", dir + "/position_loss.png"});
  std::printf("-> %s/position_loss.json, %s/position_loss.png\n", dir.c_str(), dir.c_str());
  return 0;
}

// A fixed public-domain filler (the passkey test's classic sentences, Mohtashami & Jaggi 2023).
const char* kFixedFiller = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

std::vector<int> encode(const data::Tokenizer& tok, const std::string& s) {
  std::vector<int> v;
  for (uint32_t id : tok.encode(s)) v.push_back(int(id));
  return v;
}

// --lengths, or train.seq_len x 0.5, 1, 2 (those a model with learned positions can take).
std::vector<int> passkey_lengths(const cli::Args& args, const config::Config& cfg) {
  std::vector<int> lengths;
  if (args.has("lengths")) {
    for (double x : parse_numbers(args.str("lengths"), "lengths")) lengths.push_back(int(x));
  } else {
    for (int x : {cfg.train.seq_len / 2, cfg.train.seq_len, 2 * cfg.train.seq_len})
      if (cfg.model.pos != config::Pos::learned || x <= cfg.model.max_seq_len) lengths.push_back(x);
  }
  return lengths;
}

// The tokens the needle hides in (--filler): the validation text without its end-of-text tokens
// (up to 2^20 tokens of each shard), or kFixedFiller.
std::vector<int> passkey_filler(const cli::Args& args, const config::Config& cfg, const data::Tokenizer& tok) {
  const std::string filler_kind = args.str("filler");
  std::vector<int> filler;
  if (filler_kind == "val") {
    std::vector<data::Source> sources;
    try {
      sources = eval_sources(args, cfg);
    } catch (const UsageError&) {
    }
    for (const auto& src : sources)
      for (const auto& path : data::list_shards(src.path)) {
        data::ShardReader r(path, config::to_string(cfg.data.tokenizer), cfg.model.vocab_size);
        const size_t n = size_t(std::min<uint64_t>(r.size(), 1u << 20));
        std::vector<uint16_t> buf(n);
        r.read(0, n, buf.data());
        for (uint16_t id : buf)
          if (int(id) != tok.eot()) filler.push_back(int(id));
      }
    if (filler.empty()) throw UsageError("eval: passkey: no validation text for --filler val; use --filler fixed");
  } else if (filler_kind == "fixed") {
    filler = encode(tok, kFixedFiller);
  } else {
    throw UsageError("eval: --filler " + filler_kind + " (expected val or fixed)");
  }
  return filler;
}

// F tokens of filler from `start` (wrapping around) with the needle before filler token `at`
// (after the last when at >= F), then the question.
std::vector<int> haystack(const std::vector<int>& filler, size_t start, int F, int at, const std::vector<int>& needle,
                          const std::vector<int>& question) {
  std::vector<int> seq;
  for (int i = 0; i < F; i++) {
    if (i == at) seq.insert(seq.end(), needle.begin(), needle.end());
    seq.push_back(filler[(start + size_t(i)) % filler.size()]);
  }
  if (at >= F) seq.insert(seq.end(), needle.begin(), needle.end());
  seq.insert(seq.end(), question.begin(), question.end());
  return seq;
}

// The n tokens greedy decoding appends to `seq` (a forward over the whole sequence per token).
std::vector<uint32_t> greedy_continuation(Model& model, std::vector<int>& seq, int n_tokens, int V) {
  std::vector<uint32_t> out;
  std::vector<float> copy;  // the last row on the host, where the backend's logits are not
  for (int j = 0; j < n_tokens; j++) {
    const int n = int(seq.size());
    model.forward(seq.data(), 1, n);
    const float* row = model.logits_host(size_t(n - 1), 1, copy);
    const int next = int(std::max_element(row, row + V) - row);
    seq.push_back(next);
    out.push_back(uint32_t(next));
  }
  return out;
}

// passkey.md: accuracy by depth (rows) and length (columns).
std::string passkey_table(const std::vector<int>& lengths, const std::vector<double>& depths,
                          const std::vector<std::vector<double>>& acc, int trials, const std::string& ckpt,
                          const config::Config& cfg) {
  std::ostringstream md;
  md << "Passkey retrieval accuracy (" << trials << " trials per cell, greedy decoding; " << ckpt
     << "; trained at " << cfg.train.seq_len << " tokens)\n\n| depth \\ length |";
  for (int L : lengths) md << " " << L << " |";
  md << "\n|---|";
  for (size_t i = 0; i < lengths.size(); i++) md << "---|";
  md << "\n";
  for (size_t di = 0; di < depths.size(); di++) {
    char d[32];
    std::snprintf(d, sizeof d, "%.2f", depths[di]);
    md << "| " << d << " |";
    for (size_t li = 0; li < lengths.size(); li++) {
      char a[32];
      std::snprintf(a, sizeof a, "%.2f", acc[di][li]);
      md << " " << a << " |";
    }
    md << "\n";
  }
  return md.str();
}

int task_passkey(const cli::Args& args, const config::Config& cfg, const std::string& ckpt) {
  auto tok = data::make_tokenizer(config::to_string(cfg.data.tokenizer), cfg.model.vocab_size);
  const std::vector<int> lengths = passkey_lengths(args, cfg);
  const std::vector<double> depths = parse_numbers(args.str("depths"), "depths");
  for (double d : depths)
    if (d < 0 || d > 1) throw UsageError("eval: --depths: each depth is a fraction in [0, 1]");
  const int trials = int(args.integer("trials"));
  if (trials < 1) throw UsageError("eval: --trials expects an integer >= 1");
  const std::vector<int> filler = passkey_filler(args, cfg, *tok);

  const std::vector<int> question = encode(*tok, " What is the pass key? The pass key is");
  const int n_answer = int(encode(*tok, " 12345").size()) + 1;
  const int longest = *std::max_element(lengths.begin(), lengths.end());
  check_length(cfg.model, longest + n_answer, "--lengths " + std::to_string(longest) + " (plus " +
                                                   std::to_string(n_answer) + " answer tokens)");
  Model model(cfg.model, 1, longest + n_answer, false, nullptr, device_backend(args, cfg));
  load_weights(ckpt, model);
  Rng rng(uint64_t(args.integer("seed")));

  json::Array cells;
  std::vector<std::vector<double>> acc(depths.size(), std::vector<double>(lengths.size(), 0));
  for (size_t li = 0; li < lengths.size(); li++)
    for (size_t di = 0; di < depths.size(); di++) {
      const int L = lengths[li];
      int correct = 0;
      json::Array answers;
      for (int tr = 0; tr < trials; tr++) {
        const int key = 10000 + int(rng.next_u64() % 90000);
        const std::string ks = std::to_string(key);
        const std::vector<int> needle =
            encode(*tok, " The pass key is " + ks + ". Remember it. " + ks + " is the pass key.");
        const int F = L - int(needle.size()) - int(question.size());
        if (F < 0)
          throw UsageError("eval: --lengths " + std::to_string(L) + " is shorter than the needle and question (" +
                                std::to_string(needle.size() + question.size()) + " tokens)");
        const size_t start = size_t(rng.next_u64() % filler.size());
        std::vector<int> seq = haystack(filler, start, F, int(std::lround(depths[di] * F)), needle, question);
        const std::vector<uint32_t> out = greedy_continuation(model, seq, n_answer, cfg.model.vocab_size);
        std::string text = tok->decode(out.data(), out.size());
        text.erase(0, text.find_first_not_of(" \t\n"));
        const bool ok = text.rfind(ks, 0) == 0;
        correct += ok;
        answers.push_back(json::Object{{"key", ks}, {"answer", text}, {"correct", ok}});
      }
      acc[di][li] = double(correct) / trials;
      cells.push_back(json::Object{{"length", L}, {"depth", depths[di]}, {"trials", trials},
                                   {"correct", correct}, {"accuracy", acc[di][li]}, {"answers", answers}});
    }

  const std::string md = passkey_table(lengths, depths, acc, trials, ckpt, cfg);
  json::Array jl, jd, ja;
  for (int L : lengths) jl.push_back(L);
  for (double d : depths) jd.push_back(d);
  for (const auto& row : acc) {
    json::Array r;
    for (double a : row) r.push_back(a);
    ja.push_back(r);
  }
  json::Object o{{"task", "passkey"}, {"checkpoint", ckpt}, {"lengths", jl}, {"depths", jd},
                 {"accuracy", ja}, {"trials", trials}, {"filler", args.str("filler")},
                 {"train_seq_len", cfg.train.seq_len}, {"cells", cells}};
  const std::string dir = out_dir(args, ckpt);
  write_file_atomic(dir + "/passkey.json", json::dump(o, 2) + "\n");
  write_file_atomic(dir + "/passkey.md", md);
  eval::plot({"passkey", dir + "/passkey.json", dir + "/passkey.png"});
  std::fputs(md.c_str(), stdout);
  std::printf("-> %s/passkey.{json,md,png}\n", dir.c_str());
  return 0;
}

// ---- recall ---------------------------------------------------------------------------------

// Queries and correct answers, overall and by gap bucket: a query at p (its answer tokens[p+1])
// has gap p - j for the last j < p with tokens[j] == tokens[p] (the distance back to the key's
// earlier occurrence), or none (-1); buckets are [1, 1], [2, 3], [4, 7], ... by powers of two,
// and one for queries whose token does not occur earlier.
class RecallTally {
 public:
  void add(const int* tokens, int p, bool correct) {
    int gap = -1;
    for (int j = p - 1; j >= 0 && gap < 0; j--)
      if (tokens[j] == tokens[p]) gap = p - j;
    int64_t lo = gap;
    if (gap > 0)
      for (lo = 1; lo * 2 <= gap;) lo *= 2;
    auto& [q, c] = buckets_[lo];
    q++, c += correct;
    queries_++, correct_ += correct;
  }
  int64_t queries() const { return queries_; }
  double accuracy() const { return queries_ ? double(correct_) / double(queries_) : 0.0; }

  // recall.json's fields, and the table printed
  void write(json::Object& o, std::string& table) const {
    o["queries"] = queries_;
    o["correct"] = correct_;
    o["accuracy"] = accuracy();
    json::Array by_gap;
    char line[160];
    table = "  gap              queries  accuracy\n";
    for (const auto& [lo, qc] : buckets_) {
      const int64_t hi = lo < 0 ? -1 : 2 * lo - 1;
      const double acc = double(qc.second) / double(qc.first);
      by_gap.push_back(json::Object{{"min_gap", lo}, {"max_gap", hi}, {"queries", qc.first}, {"correct", qc.second},
                                    {"accuracy", acc}});
      const std::string range = lo < 0 ? "none earlier" : "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
      std::snprintf(line, sizeof line, "  %-14s %9lld  %.4f\n", range.c_str(), (long long)qc.first, acc);
      table += line;
    }
    std::snprintf(line, sizeof line, "  %-14s %9lld  %.4f\n", "all", (long long)queries_, accuracy());
    table += line;
    o["by_gap"] = by_gap;
  }

 private:
  std::map<int64_t, std::pair<int64_t, int64_t>> buckets_;  // lower bound (-1: none) -> queries, correct
  int64_t queries_ = 0, correct_ = 0;
};

// Examples of T+1 tokens and their scored positions p (tokens[p+1] is the answer), in batches.
struct RecallBatch {
  int T;
  std::vector<int> windows;              // (n, T+1)
  std::vector<std::vector<int>> scored;  // per example
  int size() const { return int(scored.size()); }
  void clear() { windows.clear(), scored.clear(); }
};

// Scores a batch: the argmax over the real vocabulary at each scored position against its answer.
void score(Model& model, const RecallBatch& batch, int V, RecallTally& tally) {
  const int n = batch.size(), T = batch.T;
  if (n == 0) return;
  std::vector<int> inputs(size_t(n) * T);
  for (int b = 0; b < n; b++)
    std::copy_n(batch.windows.begin() + ptrdiff_t(b) * (T + 1), T, inputs.begin() + ptrdiff_t(b) * T);
  model.forward(inputs.data(), n, T);
  std::vector<float> copy;
  const float* logits = model.logits_host(0, size_t(n) * T, copy);
  for (int b = 0; b < n; b++) {
    const int* tokens = batch.windows.data() + size_t(b) * (T + 1);
    for (int p : batch.scored[size_t(b)]) {
      const float* row = logits + (size_t(b) * T + p) * model.logits_width();
      const int predicted = int(std::max_element(row, row + V) - row);
      tally.add(tokens, p, predicted == tokens[p + 1]);
    }
  }
}

// --jsonl FILE: one {"tokens": [T+1 ids], "scored": [p, ...]} per line; a bad line is one error
// naming FILE:LINE and what was expected.
std::vector<RecallBatch> recall_jsonl(const std::string& path, int T, int V, int B) {
  std::ifstream in(path);
  if (!in) throw UsageError("eval: --jsonl " + path + ": cannot open");
  std::vector<RecallBatch> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); n++) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto bad = [&](const std::string& what) -> void {
      throw UsageError("eval: " + path + ":" + std::to_string(n) + ": " + what);
    };
    const std::string shape = "expected a JSON object {\"tokens\": [" + std::to_string(T + 1) +
                              " ids], \"scored\": [positions]}";
    json::Value v;
    try {
      v = json::parse(line);
    } catch (const std::exception& e) {
      bad(shape + " (" + e.what() + ")");
    }
    if (!v.is_object() || !v.contains("tokens") || !v.contains("scored") || !v.at("tokens").is_array() ||
        !v.at("scored").is_array())
      bad(shape);
    auto integer_in = [&](const json::Value& x, int64_t lo, int64_t hi, const std::string& what) {
      if (!x.is_number() || x.number() != std::floor(x.number()) || x.number() < double(lo) || x.number() > double(hi))
        bad(what + " in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + json::dump(x));
      return int(x.number());
    };
    const auto& tokens = v.at("tokens").array();
    if (tokens.size() != size_t(T) + 1)
      bad("expected \"tokens\" of T+1 = " + std::to_string(T + 1) + " ids (train.seq_len or --seq-len " +
          std::to_string(T) + "), got " + std::to_string(tokens.size()));
    if (out.empty() || out.back().size() == B) out.push_back(RecallBatch{T, {}, {}});
    RecallBatch& batch = out.back();
    for (const auto& t : tokens) batch.windows.push_back(integer_in(t, 0, V - 1, "expected token ids"));
    std::vector<int> scored;
    for (const auto& p : v.at("scored").array())
      scored.push_back(integer_in(p, 0, T - 1, "expected \"scored\" positions p (tokens[p+1] is the answer)"));
    batch.scored.push_back(std::move(scored));
  }
  return out;
}

int task_recall(const cli::Args& args, const config::Config& cfg, const std::string& ckpt) {
  const int T = args.has("seq-len") ? int(args.integer("seq-len")) : cfg.train.seq_len;
  const int B = args.has("batch") ? int(args.integer("batch")) : cfg.train.batch_size;
  if (T < 1 || B < 1) throw UsageError("eval: expected --seq-len >= 1 and --batch >= 1");
  if (args.has("jsonl") && args.has("data")) throw UsageError("eval: recall takes --data DIR or --jsonl FILE, not both");
  check_length(cfg.model, T, "--seq-len " + std::to_string(T));
  const int V = cfg.model.vocab_size;
  Model model(cfg.model, B, T, false, nullptr, device_backend(args, cfg));
  load_weights(ckpt, model);
  RecallTally tally;
  json::Array source;
  int64_t examples = 0;
  if (args.has("jsonl")) {
    source.push_back(args.str("jsonl"));
    for (const auto& batch : recall_jsonl(args.str("jsonl"), T, V, B)) {
      score(model, batch, V, tally);
      examples += batch.size();
    }
  } else {
    // every window of the shards once, in order, with the positions their loss masks score
    const auto sources = eval_sources(args, cfg);
    for (const auto& s : sources) source.push_back(s.path);
    data::Loader loader({sources, B, T, uint64_t(cfg.train.seed), 0, 1, false, config::to_string(cfg.data.tokenizer), V});
    const int64_t windows = int64_t(loader.windows_per_epoch());
    data::Batch batch(B, T);
    RecallBatch rb{T, {}, {}};
    for (int64_t done = 0; done < windows; done += B) {
      batch.load(loader);
      rb.clear();
      const int n = int(std::min<int64_t>(B, windows - done));  // the last batch: the epoch's rest
      rb.windows.assign(batch.windows.begin(), batch.windows.begin() + ptrdiff_t(n) * (T + 1));
      for (int b = 0; b < n; b++) {
        std::vector<int> scored;
        for (int t = 0; t < T; t++)
          if (batch.targets[size_t(b) * T + t] != -1) scored.push_back(t);
        rb.scored.push_back(std::move(scored));
      }
      score(model, rb, V, tally);
    }
    examples = windows;
  }
  if (tally.queries() == 0)
    throw UsageError("eval: recall: " + json::dump(source) + " holds no scored position (no loss mask or \"scored\" entry)");
  json::Object o{{"task", "recall"}, {"checkpoint", ckpt}, {"data", source}, {"seq_len", T}, {"examples", examples}};
  std::string table;
  tally.write(o, table);
  const std::string path = out_dir(args, ckpt) + "/recall.json";
  write_file_atomic(path, json::dump(o, 2) + "\n");
  std::printf("eval recall: %lld examples, %lld queries, accuracy %.4f (argmax next token at the scored positions; "
              "gap: positions back to the query token's previous occurrence)\n%s-> %s\n",
              (long long)examples, (long long)tally.queries(), tally.accuracy(), table.c_str(), path.c_str());
  return 0;
}

}  // namespace

int cmd_eval(int argc, char** argv) {
  cli::Args args("eval", "Evaluate the model of a checkpoint: validation loss and perplexity (loss), next-token loss "
                         "by position on long documents (position-loss), passkey retrieval (passkey), or recall "
                         "accuracy at the scored positions of loss-masked examples, by gap (recall, docs/recall.md). "
                         "Writes JSON (and Markdown, PNG) into --out.");
  args.positional("CKPT_OR_RUN", "a checkpoint directory, or a run directory (its newest complete checkpoint)");
  args.option("task", "loss|passkey|position-loss|recall", "what to measure", "loss");
  args.option("data", "DIR", "shards to evaluate on (DIR/val when it exists); default: the config's data.val");
  args.option("jsonl", "FILE", "recall: examples, one {\"tokens\": [T+1 ids], \"scored\": [p, ...]} per line");
  args.option("out", "DIR", "where results go; default: <run>/eval");
  args.option("seq-len", "T", "loss, position-loss, recall: tokens per window (default: train.seq_len; past it for RoPE models)");
  args.option("batch", "B", "loss, recall: windows per batch (default: train.batch_size)");
  args.option("batches", "N", "loss: batches from the first window; 0: one pass over the data", "0");
  args.option("block", "N", "position-loss: positions per block", "256");
  args.option("max-docs", "N", "position-loss: documents of at least T+1 tokens to average over", "64");
  args.option("lengths", "L,L,...", "passkey: context lengths in tokens (default: train.seq_len x 0.5, 1, 2)");
  args.option("depths", "D,D,...", "passkey: needle depths as fractions of the filler", "0,0.25,0.5,0.75,1");
  args.option("trials", "N", "passkey: keys per (length, depth)", "5");
  args.option("filler", "val|fixed", "passkey: filler from the validation text, or fixed public-domain sentences", "val");
  args.option("seed", "S", "passkey: seed of keys and filler offsets", "1337");
  args.flag("best", "with a run directory: the checkpoint with the best validation loss (best.json)");
  add_device_option(args);
  args.parse(argc, argv, 2);
  const std::string task = args.str("task");
  if (task != "loss" && task != "passkey" && task != "position-loss" && task != "recall")
    throw UsageError("eval: --task " + task + " (expected loss, passkey, position-loss or recall)");
  const std::string ckpt = resolve_checkpoint(args.str("CKPT_OR_RUN"), args.has("best"));
  const config::Config cfg = checkpoint_config(ckpt);
  if (task == "loss") return task_loss(args, cfg, ckpt);
  if (task == "position-loss") return task_position_loss(args, cfg, ckpt);
  if (task == "recall") return task_recall(args, cfg, ckpt);
  return task_passkey(args, cfg, ckpt);
}
