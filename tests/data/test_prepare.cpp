// `prepare` end to end: loading the shards back gives exactly the tokenizer's output of the
// documents joined with EOT; the val split; no document spans two shards; the manifest; input
// forms (directories, .jsonl, --doc-sep); and the CLI's layout and its one-line errors (exit 2).
#include <gtest/gtest.h>

#include "tests/test_util.h"
#include <sys/wait.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "common/json.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "common/sha256.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace {

struct TmpDir {
  fs::path path;
  explicit TmpDir(const std::string& tag)
      : path(fs::temp_directory_path() / ("kvmtrain_test_prepare_" + tag + "_" + std::to_string(getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TmpDir() { fs::remove_all(path); }
};

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Every token of a split, shard after shard.
std::vector<uint32_t> split_tokens(const fs::path& dir, const std::string& tok, int vocab) {
  std::vector<uint32_t> out;
  for (const auto& path : data::list_shards(dir.string())) {
    data::ShardReader r(path, tok, vocab);
    std::vector<uint16_t> buf(r.size());
    r.read(0, buf.size(), buf.data());
    out.insert(out.end(), buf.begin(), buf.end());
  }
  return out;
}

std::vector<uint32_t> joined(const data::Tokenizer& tok, const std::vector<std::string>& docs) {
  std::vector<uint32_t> out;
  for (const auto& d : docs) {
    tok.encode(d, out);
    out.push_back(uint32_t(tok.eot()));
  }
  return out;
}

data::PrepareOptions options(const fs::path& out, std::vector<std::string> inputs, const std::string& tok = "byte") {
  data::PrepareOptions o;
  o.inputs = std::move(inputs);
  o.output = out.string();
  o.tokenizer = tok;
  o.progress = false;
  return o;
}

std::string random_text(size_t bytes, uint32_t seed) {
  static const char* words[] = {"the", "and", "of", "LORD", "unto", "said", "he", "in", "shall", "é", "Día",
                                "1611", "it's", "  ", ",", ".", ";", "?", "'re", "\t", "(x)", "$5"};
  std::mt19937 rng(seed);
  std::string s;
  while (s.size() < bytes) {
    s += words[rng() % (sizeof words / sizeof *words)];
    uint32_t r = rng() % 100;
    s += r < 6 ? "\n" : r < 8 ? "\n\n" : r < 9 ? " \n" : " ";
  }
  return s;
}

}  // namespace

TEST(Prepare, LoadingGivesTheDocumentsJoinedWithEot) {
  TmpDir tmp("load");
  std::vector<std::string> docs;  // in processing order
  for (int i = 0; i < 12; i++) docs.push_back(random_text(200 + 97 * i, i));
  write(tmp.path / "in" / "a.txt", docs[0]);
  write(tmp.path / "in" / "b" / "c.txt", docs[1]);
  write(tmp.path / "in" / "b" / "d.txt", docs[2]);
  write(tmp.path / "in" / ".hidden", "skipped");
  write(tmp.path / "in" / "empty.txt", "");  // no document
  std::string jsonl;
  for (int i = 3; i < 8; i++) jsonl += json::dump(json::Object{{"text", docs[i]}, {"id", i}}) + (i == 5 ? "\n\n" : "\n");
  write(tmp.path / "docs.jsonl", jsonl);
  for (int i = 8; i < 12; i++) write(tmp.path / ("z" + std::to_string(i) + ".txt"), docs[i]);

  auto o = options(tmp.path / "out", {(tmp.path / "in").string(), (tmp.path / "docs.jsonl").string()});
  for (int i = 8; i < 12; i++) o.inputs.push_back((tmp.path / ("z" + std::to_string(i) + ".txt")).string());
  o.val_fraction = 0.25;
  auto sum = data::prepare(o);

  std::vector<std::string> train, val;
  for (size_t i = 0; i < docs.size(); i++) (data::is_val_document(i, 0.25) ? val : train).push_back(docs[i]);
  EXPECT_EQ(val.size(), 3u);  // ceil(11 * 0.25)
  EXPECT_EQ(sum.train.documents, train.size());
  EXPECT_EQ(sum.val.documents, val.size());
  auto tok = data::make_tokenizer("byte");
  const auto want_train = joined(*tok, train), want_val = joined(*tok, val);
  EXPECT_EQ(split_tokens(tmp.path / "out" / "train", "byte", 257), want_train);
  EXPECT_EQ(split_tokens(tmp.path / "out" / "val", "byte", 257), want_val);

  // The unshuffled loader streams the same tokens: windows of T+1 at stride T.
  const int T = 64;
  data::Loader l({{{(tmp.path / "out" / "train").string(), 1.0}}, 1, T, 7, 0, 1, false, "byte", 257});
  ASSERT_EQ(l.windows_per_epoch(), (want_train.size() - 1) / T);
  std::vector<int32_t> w(T + 1);
  for (uint64_t k = 0; k < l.windows_per_epoch(); k++) {
    l.next(w.data());
    ASSERT_TRUE(std::equal(w.begin(), w.end(), want_train.begin() + k * T)) << "window " << k;
  }
}

TEST(Prepare, ValSplitHoldsADocumentWheneverTwo) {
  for (double f : {1e-12, 0.001, 0.1, 0.25, 0.5, 0.9}) {
    uint64_t val = 0;
    for (uint64_t n = 1; n <= 2000; n++) {
      val += data::is_val_document(n - 1, f);
      if (n >= 2) {
        ASSERT_GE(val, 1u) << "f " << f << " n " << n;
      }
      ASSERT_LE(std::abs(double(val) - double(n) * f), 1.0 + 1e-9) << "f " << f << " n " << n;
    }
  }
  EXPECT_FALSE(data::is_val_document(0, 0.5));
  EXPECT_FALSE(data::is_val_document(5, 0.0));

  TmpDir tmp("two");
  write(tmp.path / "in" / "1.txt", "first");
  write(tmp.path / "in" / "2.txt", "second");
  auto sum = data::prepare(options(tmp.path / "out", {(tmp.path / "in").string()}));
  EXPECT_EQ(sum.train.documents, 1u);
  EXPECT_EQ(sum.val.documents, 1u);
}

TEST(Prepare, NoDocumentSpansTwoShardsAndTheManifestAddsUp) {
  TmpDir tmp("shards");
  std::mt19937 rng(3);
  std::vector<std::string> docs;
  std::string jsonl;
  for (int i = 0; i < 60; i++) {
    docs.push_back(random_text(1 + rng() % 400, 100 + i));
    jsonl += json::dump(json::Object{{"text", docs.back()}}) + "\n";
  }
  write(tmp.path / "d.jsonl", jsonl);
  auto o = options(tmp.path / "out", {(tmp.path / "d.jsonl").string()});
  o.shard_tokens = 1000;
  // A first run with other settings leaves more shards behind: they must not survive.
  o.val_fraction = 0.0;
  o.shard_tokens = 300;
  data::prepare(o);
  o.val_fraction = 0.1;
  o.shard_tokens = 1000;
  auto sum = data::prepare(o);

  json::Value m = json::parse(read(tmp.path / "out" / "manifest.json"));
  EXPECT_EQ(m.at("format_version").integer(), 1);
  EXPECT_EQ(m.at("tokenizer").string(), "byte");
  EXPECT_EQ(m.at("vocab_size").integer(), 257);
  EXPECT_EQ(m.at("eot").integer(), 256);
  EXPECT_EQ(m.at("inputs").array().size(), 1u);
  uint64_t docs_seen = 0, tokens_seen = 0, shards = 0;
  for (const auto& f : m.at("files").array()) {
    const fs::path path = tmp.path / "out" / f.at("path").string();
    EXPECT_EQ(f.at("sha256").string(), data::sha256_file(path.string()));
    data::ShardReader r(path.string(), "byte", 257);
    EXPECT_EQ(uint64_t(f.at("tokens").integer()), r.size());
    EXPECT_EQ(uint64_t(f.at("documents").integer()), r.documents());
    std::vector<uint16_t> t(r.size());
    r.read(0, t.size(), t.data());
    auto offsets = r.doc_offsets();
    // Each document starts right after an EOT and the shard ends with one: none crosses over.
    ASSERT_FALSE(offsets.empty());
    EXPECT_EQ(offsets[0], 0);
    EXPECT_EQ(t.back(), 256);
    for (size_t i = 1; i < offsets.size(); i++) EXPECT_EQ(t[offsets[i] - 1], 256);
    EXPECT_EQ(size_t(std::count(t.begin(), t.end(), 256)), offsets.size());
    // A shard closes at the first document end past 1000 tokens (only the last of a split is short).
    uint64_t before_last = uint64_t(offsets.back());
    EXPECT_LT(before_last, 1000u) << path;
    docs_seen += r.documents();
    tokens_seen += r.size();
    shards++;
  }
  EXPECT_EQ(docs_seen, 60u);
  EXPECT_EQ(tokens_seen, sum.train.tokens + sum.val.tokens);
  EXPECT_EQ(shards, sum.train.shards + sum.val.shards);
  EXPECT_GE(sum.train.shards, 3u);
  EXPECT_EQ(data::list_shards((tmp.path / "out" / "train").string()).size(), sum.train.shards);
  EXPECT_EQ(m.at("splits").at("val").at("documents").integer(), 6);  // ceil(59 * 0.1)
}

TEST(Prepare, DocSepSplitsTextFiles) {
  TmpDir tmp("sep");
  write(tmp.path / "t.txt", "A\n=== one\nB\nC\n===\n\nD");
  auto o = options(tmp.path / "out", {(tmp.path / "t.txt").string()});
  o.doc_sep = "^===";
  o.val_fraction = 0;
  data::prepare(o);
  auto tok = data::make_tokenizer("byte");
  EXPECT_EQ(split_tokens(tmp.path / "out" / "train", "byte", 257), joined(*tok, {"A\n", "B\nC\n", "\nD"}));
}

TEST(Prepare, Gpt2LongDocumentCutForThreadsEncodesAsAWhole) {
  TmpDir tmp("gpt2");
  std::string doc = random_text(2600000, 42);  // cut into ~1 MiB pieces
  write(tmp.path / "big.txt", doc);
  write(tmp.path / "small.txt", "Hello world");
  auto o = options(tmp.path / "out", {(tmp.path / "big.txt").string(), (tmp.path / "small.txt").string()}, "gpt2");
  o.val_fraction = 0.5;
  data::prepare(o);
  auto tok = data::make_tokenizer("gpt2");
  EXPECT_EQ(split_tokens(tmp.path / "out" / "train", "gpt2", 50257), joined(*tok, {doc}));
  EXPECT_EQ(split_tokens(tmp.path / "out" / "val", "gpt2", 50257), (std::vector<uint32_t>{15496, 995, 50256}));
}

TEST(Prepare, InputErrors) {
  TmpDir tmp("errors");
  auto message = [&](data::PrepareOptions o) -> std::string {
    try {
      data::prepare(o);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "";
  };
  write(tmp.path / "bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": \"no\"}\n");
  EXPECT_EQ(message(options(tmp.path / "out", {(tmp.path / "bad.jsonl").string()})),
            (tmp.path / "bad.jsonl").string() + ":2: expected a JSON object with a string \"text\" field");
  EXPECT_EQ(message(options(tmp.path / "out", {(tmp.path / "nope.txt").string()})),
            (tmp.path / "nope.txt").string() + ": no such input file or directory");
  write(tmp.path / "empty.txt", "");
  EXPECT_NE(message(options(tmp.path / "out", {(tmp.path / "empty.txt").string()})).find("no documents"), std::string::npos);
  auto o = options(tmp.path / "out", {(tmp.path / "empty.txt").string()});
  o.doc_sep = "(";
  EXPECT_NE(message(o).find("--doc-sep"), std::string::npos);
  // an output inside an input, an input inside the output (issue 21: a second run deleted the
  // first's shards, then failed): refused before anything is written or removed
  fs::create_directories(tmp.path / "corpus");
  write(tmp.path / "corpus" / "a.txt", "In the beginning.\n");
  const std::string inside = (tmp.path / "corpus" / "shards").string();
  EXPECT_NE(message(options(inside, {(tmp.path / "corpus").string()})).find("--output " + inside + " is inside --input"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(inside));
  EXPECT_NE(message(options(tmp.path / "corpus", {(tmp.path / "corpus" / "a.txt").string()})).find("is inside --output"),
            std::string::npos);
  EXPECT_TRUE(fs::exists(tmp.path / "corpus" / "a.txt"));
}

// The same inputs and flags give the same bytes (issue 21: HDF5 recorded object times, so two runs'
// shards differed and could not be checked by their sha256).
TEST(Prepare, IsByteDeterministic) {
  TmpDir tmp("determinism");
  write(tmp.path / "in.txt", random_text(200000, 3));
  auto o = options(tmp.path / "a", {(tmp.path / "in.txt").string()});
  o.shard_tokens = 30000;
  data::prepare(o);
  o.output = (tmp.path / "b").string();
  data::prepare(o);
  EXPECT_EQ(test_util::slurp(tmp.path / "a/manifest.json"), test_util::slurp(tmp.path / "b/manifest.json"));
  for (const auto& e : fs::directory_iterator(tmp.path / "a/train"))
    EXPECT_EQ(test_util::slurp(e.path()), test_util::slurp(tmp.path / "b/train" / e.path().filename()))
        << e.path().filename();
}

// Disk full (a file size limit: writes past it fail as on a full disk): `prepare` exits 2 with one
// line naming the shard and leaves no shard behind (issue 21: a shard with half its tokens read
// back as zero was renamed into place and accepted).
TEST(PrepareCli, DiskFullLeavesNoShard) {
  const char* bin = std::getenv("KVMTRAIN_BIN");
  if (!bin) GTEST_SKIP() << "KVMTRAIN_BIN not set (run through ctest)";
  TmpDir tmp("full");
  write(tmp.path / "in.txt", random_text(400000, 4));
  const std::string err = (tmp.path / "err.txt").string(), in = (tmp.path / "in.txt").string(),
                    out = (tmp.path / "out").string();
  const pid_t pid = fork();
  if (pid == 0) {  // only async-signal-safe calls until exec: the test process may have threads
    signal(SIGXFSZ, SIG_IGN);  // kept across exec: a write past the limit fails with EFBIG
    const rlimit lim{150000, 150000};
    setrlimit(RLIMIT_FSIZE, &lim);
    const int fd = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    execl(bin, bin, "prepare", "--quiet", "--tokenizer", "byte", "--shard-tokens", "1000000", "--input", in.c_str(),
          "--output", out.c_str(), (char*)nullptr);
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  const std::string m = test_util::slurp(err);
  ASSERT_TRUE(WIFEXITED(st)) << "killed by signal " << WTERMSIG(st) << ": " << m;
  EXPECT_EQ(WEXITSTATUS(st), 2) << m;
  EXPECT_EQ(m.rfind("kvmtrain: error: ", 0), 0u) << m;
  EXPECT_NE(m.find("shard_00000.h5"), std::string::npos) << m;
  EXPECT_EQ(std::count(m.begin(), m.end(), '\n'), 1) << m;
  size_t shards = 0;
  if (fs::exists(tmp.path / "out/train"))
    for (const auto& e : fs::directory_iterator(tmp.path / "out/train")) shards += e.path().extension() == ".h5";
  EXPECT_EQ(shards, 0u) << "a shard was renamed into place";
  EXPECT_FALSE(fs::exists(tmp.path / "out/manifest.json"));
}

// ---- the CLI -----------------------------------------------------------------------------

namespace {

using test_util::CliResult;
using test_util::kvmtrain;

}  // namespace

TEST(PrepareCli, LayoutAndManifest) {
  if (!std::getenv("KVMTRAIN_BIN")) GTEST_SKIP() << "KVMTRAIN_BIN not set (run through ctest)";
  TmpDir tmp("cli");
  for (int i = 0; i < 5; i++) write(tmp.path / "in" / (std::to_string(i) + ".txt"), random_text(1000, i));
  CliResult r = kvmtrain("prepare --input " + (tmp.path / "in").string() + " --output " + (tmp.path / "out").string() +
                       " --tokenizer byte --val-fraction 0.2 --quiet",
                   tmp.path);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("train 4 documents"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::is_regular_file(tmp.path / "out" / "train" / "shard_00000.h5"));
  EXPECT_TRUE(fs::is_regular_file(tmp.path / "out" / "val" / "shard_00000.h5"));
  json::Value m = json::parse(read(tmp.path / "out" / "manifest.json"));
  EXPECT_EQ(m.at("files").array().size(), 2u);
  EXPECT_EQ(m.at("splits").at("val").at("documents").integer(), 1);
}

// The manifest's sha256 and counts are checked: `prepare --verify` reads every byte; train's
// start-up compares sizes and counts (issue 21: the sha256 in a manifest was never checked).
TEST(PrepareCli, VerifyAndTrainCheckShardsAgainstTheManifest) {
  if (!std::getenv("KVMTRAIN_BIN")) GTEST_SKIP() << "KVMTRAIN_BIN not set (run through ctest)";
  TmpDir tmp("verify");
  for (int i = 0; i < 8; i++) write(tmp.path / "in" / (std::to_string(i) + ".txt"), random_text(3000, i));
  const fs::path out = tmp.path / "out", train = out / "train";
  ASSERT_EQ(kvmtrain("prepare --quiet --tokenizer byte --shard-tokens 6000 --val-fraction 0.2 --input " +
                         (tmp.path / "in").string() + " --output " + out.string(), tmp.path).status, 0);
  ASSERT_TRUE(fs::exists(train / "shard_00002.h5"));
  const fs::path pristine = tmp.path / "pristine";
  fs::copy(out, pristine, fs::copy_options::recursive);
  auto restore = [&] {
    fs::remove_all(out);
    fs::copy(pristine, out, fs::copy_options::recursive);
  };
  std::ofstream(tmp.path / "tiny.yaml") << "model: {vocab_size: 257, n_layer: 1, n_head: 2, d_model: 16, max_seq_len: 16}\n"
                                           "data: {train: " << train.string() << ", val: " << (out / "val").string()
                                        << ", tokenizer: byte}\n"
                                           "train: {batch_size: 2, seq_len: 16, steps: 1, sample_tokens: 0}\n";
  auto train_run = [&] {
    return kvmtrain("train " + (tmp.path / "tiny.yaml").string() + " --overwrite --set log.dir=" +
                        (tmp.path / "run").string(), tmp.path);
  };
  auto expect_one_line = [](const CliResult& r, const std::string& what) {
    EXPECT_EQ(r.status, 2) << r.out << r.err;
    EXPECT_EQ(r.err.rfind("kvmtrain: error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
  };

  CliResult r = kvmtrain("prepare --verify " + out.string(), tmp.path);
  ASSERT_EQ(r.status, 0) << r.err;
  const size_t listed = json::parse(read(out / "manifest.json")).at("files").array().size();
  EXPECT_NE(r.out.find(std::to_string(listed) + " shards match"), std::string::npos) << r.out;
  EXPECT_EQ(train_run().status, 0);

  {  // one token changed in place: sizes and counts agree, only the sha256 tells
    const std::string path = (train / "shard_00001.h5").string();
    std::vector<uint16_t> toks(8);
    data::ShardReader(path, "byte", 257).read(100, toks.size(), toks.data());
    std::string bytes = read(path);
    const size_t at = bytes.find(std::string(reinterpret_cast<const char*>(toks.data()), toks.size() * 2));
    ASSERT_NE(at, std::string::npos);
    bytes[at] = char(toks[0] == 'q' ? 'x' : 'q');
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  }
  expect_one_line(kvmtrain("prepare --verify " + out.string(), tmp.path),
                  "1 of " + std::to_string(listed) + " shards do not match manifest.json; the first: "
                  "train/shard_00001.h5: sha256 ");
  EXPECT_EQ(train_run().status, 0) << "train's start-up check reads sizes and counts only";

  restore();  // another shard in its place (the same HDF5 size here): counts differ
  fs::copy_file(train / "shard_00000.h5", train / "shard_00001.h5", fs::copy_options::overwrite_existing);
  expect_one_line(kvmtrain("prepare --verify " + out.string(), tmp.path), "train/shard_00001.h5: tokens ");
  expect_one_line(train_run(), (train / "shard_00001.h5").string() + ": tokens ");

  restore();  // a shard missing
  fs::remove(train / "shard_00002.h5");
  expect_one_line(kvmtrain("prepare --verify " + out.string(), tmp.path), "train/shard_00002.h5: missing");
  expect_one_line(train_run(), (train / "shard_00002.h5").string() + ": missing");

  restore();  // a shard the manifest does not list
  fs::copy_file(train / "shard_00000.h5", train / "shard_00009.h5");
  expect_one_line(kvmtrain("prepare --verify " + out.string(), tmp.path), "train/shard_00009.h5: not in the manifest");
  expect_one_line(train_run(), (train / "shard_00009.h5").string() + ": a shard the manifest does not list");

  restore();  // a truncated manifest is named (issue 21: "json: unterminated string")
  const std::string text = read(out / "manifest.json");
  std::ofstream(out / "manifest.json", std::ios::trunc) << text.substr(0, text.size() / 2);
  const std::string named = (out / "manifest.json").string() + ": not a prepare manifest (json: ";
  expect_one_line(kvmtrain("prepare --verify " + out.string(), tmp.path), named);
  expect_one_line(train_run(), named);
}

TEST(PrepareCli, BadInputExitsTwoWithOneLine) {
  if (!std::getenv("KVMTRAIN_BIN")) GTEST_SKIP() << "KVMTRAIN_BIN not set (run through ctest)";
  TmpDir tmp("cli_errors");
  write(tmp.path / "a.txt", "text");
  const std::string out = " --output " + (tmp.path / "out").string();
  const std::string a = " --input " + (tmp.path / "a.txt").string();
  struct Case {
    std::string args, expect;
  } cases[] = {
      {"prepare --input " + (tmp.path / "missing.txt").string() + out, "missing.txt: no such input file or directory"},
      {"prepare" + a + out + " --val-fraction 1.5", "--val-fraction must be in [0, 1), got 1.5"},
      {"prepare" + a + out + " --val-fraction abc", "--val-fraction expects a number"},
      {"prepare" + a + out + " --tokenizer nope", "unknown name 'nope'"},
      {"prepare" + a, "--output DIR is required"},
  };
  for (const auto& c : cases) {
    CliResult r = kvmtrain(c.args, tmp.path);
    EXPECT_EQ(r.status, 2) << c.args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.rfind("kvmtrain: error: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
  }
}
