// MQAR (data/mqar.h, docs/recall.md): an independent Python implementation of the documented
// procedure (tests/reference/mqar_ref.py) generates byte-identical examples and masks to what
// `prepare --synthetic mqar` writes, train and val streams, for a few (V, T, N, G, seed); the
// distribution's properties over many examples (pairs at 0..2N-1, distinct keys, values in range,
// every key queried once with its own value at an even slot, gaps >= G, masks exactly on the
// answers, every key and value drawn); same flags give byte-identical shards; bad flags are one
// line naming the flag, exit 2.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>

#include "common/json.h"
#include "common/usage_error.h"
#include "data/mqar.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

struct TmpDir {
  fs::path path;
  explicit TmpDir(const std::string& tag)
      : path(fs::temp_directory_path() / ("kvmtrain_test_mqar_" + tag + "_" + std::to_string(getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TmpDir() { fs::remove_all(path); }
};

// Every token and mask value of a split's shards, in order.
void read_split(const fs::path& dir, int V, std::vector<uint16_t>& tokens, std::vector<uint8_t>& mask) {
  for (const auto& path : data::list_shards(dir.string())) {
    data::ShardReader r(path, "mqar", V);
    const size_t at = tokens.size();
    tokens.resize(at + r.size());
    mask.resize(at + r.size());
    r.read(0, r.size(), tokens.data() + at);
    r.read_mask(0, r.size(), mask.data() + at);
  }
}

std::string usage_error(const data::MqarSpec& s) {
  try {
    data::check_mqar(s);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Mqar, PythonReferenceGeneratesTheSameExamples) {
  TmpDir tmp("ref");
  const char* py = std::getenv("KVMTRAIN_PYTHON");
  struct Case {
    int V, T, N, G;
    uint64_t seed;
  } cases[] = {{16, 16, 2, 0, 1}, {256, 128, 16, 0, 1337}, {64, 100, 5, 37, 12345678901234ull}, {8, 13, 3, 0, 0}};
  for (const auto& c : cases) {
    SCOPED_TRACE("V " + std::to_string(c.V) + " T " + std::to_string(c.T) + " N " + std::to_string(c.N) + " G " +
                 std::to_string(c.G) + " seed " + std::to_string(c.seed));
    data::MqarPrepareOptions o;
    o.spec = {c.V, c.T, c.N, c.G};
    o.examples = 7, o.val_examples = 5, o.seed = c.seed;
    o.output = (tmp.path / "out").string();
    o.shard_tokens = uint64_t(3 * (c.T + 1));  // several shards: the stream runs on across them
    data::prepare_mqar(o);
    for (auto [split, count] : {std::pair{"train", 7}, std::pair{"val", 5}}) {
      std::vector<uint16_t> tokens;
      std::vector<uint8_t> mask;
      read_split(tmp.path / "out" / split, c.V, tokens, mask);
      const std::string ref = (tmp.path / split).string();
      const std::string cmd = std::string(py ? py : "/usr/bin/python3") + " " + KVMTRAIN_SOURCE_DIR +
                              "/tests/reference/mqar_ref.py " + std::to_string(c.V) + " " + std::to_string(c.T) + " " +
                              std::to_string(c.N) + " " + std::to_string(c.G) + " " + std::to_string(c.seed) + " " +
                              split + " " + std::to_string(count) + " " + ref;
      ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
      const std::string want_tokens = test_util::slurp(ref + ".tokens"), want_mask = test_util::slurp(ref + ".mask");
      ASSERT_EQ(tokens.size(), size_t(count) * (c.T + 1)) << split;
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2), want_tokens) << split;
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(mask.data()), mask.size()), want_mask) << split;
    }
  }
}

TEST(Mqar, DistributionProperties) {
  for (const data::MqarSpec s : {data::MqarSpec{32, 64, 6, 0}, data::MqarSpec{32, 64, 6, 21}, data::MqarSpec{8, 12, 3, 0}}) {
    SCOPED_TRACE("G " + std::to_string(s.min_gap) + " V " + std::to_string(s.vocab));
    const int V = s.vocab, T = s.seq_len, N = s.pairs, half = V / 2;
    Rng rng(42);
    std::vector<uint32_t> tokens(size_t(T) + 1);
    std::vector<uint8_t> mask(tokens.size());
    std::set<uint32_t> keys_seen, values_seen;
    int min_gap = T;
    for (int e = 0; e < 2000; e++) {
      data::mqar_example(s, rng, tokens.data(), mask.data());
      std::set<uint32_t> keys;
      for (int i = 0; i < N; i++) {
        const uint32_t k = tokens[size_t(2 * i)], v = tokens[size_t(2 * i + 1)];
        ASSERT_GE(k, 1u);
        ASSERT_LT(k, uint32_t(half));
        ASSERT_GE(v, uint32_t(half));
        ASSERT_LT(v, uint32_t(V));
        ASSERT_EQ(mask[size_t(2 * i)] + mask[size_t(2 * i + 1)], 0);
        keys.insert(k);
        keys_seen.insert(k), values_seen.insert(v);
      }
      ASSERT_EQ(keys.size(), size_t(N)) << "keys are distinct";
      // after the pairs: each key once at an even position q, its own value at q+1, mask 1 there
      // and only there, filler everywhere else
      int queries = 0;
      for (int p = 2 * N; p <= T; p++) {
        if (tokens[size_t(p)] == 0) {
          ASSERT_EQ(mask[size_t(p)], 0) << "position " << p;
          continue;
        }
        ASSERT_EQ(p % 2, 0) << "a query at an odd position " << p;
        ASSERT_LT(p, T - 1);
        ASSERT_GE(p, data::mqar_first_query_slot(s));
        int pair = -1;
        for (int i = 0; i < N; i++)
          if (tokens[size_t(2 * i)] == tokens[size_t(p)]) pair = i;
        ASSERT_GE(pair, 0) << "position " << p << " holds no key of the pairs";
        ASSERT_EQ(tokens[size_t(p + 1)], tokens[size_t(2 * pair + 1)]) << "its own value follows the key";
        ASSERT_EQ(mask[size_t(p)], 0);
        ASSERT_EQ(mask[size_t(p + 1)], 1);
        ASSERT_GE(p - 2 * pair, s.min_gap) << "gap";
        min_gap = std::min(min_gap, p - 2 * pair);
        queries++;
        p++;  // the value
      }
      ASSERT_EQ(queries, N) << "every key queried exactly once";
    }
    EXPECT_EQ(keys_seen.size(), size_t(half - 1)) << "every key id is drawn";
    EXPECT_EQ(values_seen.size(), size_t(half)) << "every value id is drawn";
    if (s.min_gap > 0) {
      EXPECT_LE(min_gap, s.min_gap + 1) << "the gap bound is reached, not exceeded by much";
    }
  }
}

TEST(Mqar, BadSpecsNameTheFlag) {
  EXPECT_EQ(usage_error({16, 16, 2, 0}), "");
  EXPECT_NE(usage_error({15, 16, 2, 0}).find("prepare: --vocab 15: expected an even number"), std::string::npos);
  EXPECT_NE(usage_error({2, 16, 1, 0}).find("--vocab 2"), std::string::npos);
  EXPECT_NE(usage_error({16, 16, 8, 0}).find("prepare: --pairs 8: expected 1 to V/2 - 1 = 7"), std::string::npos);
  EXPECT_NE(usage_error({16, 16, 0, 0}).find("--pairs 0"), std::string::npos);
  EXPECT_NE(usage_error({16, 16, 2, -1}).find("prepare: --min-gap -1: expected >= 0"), std::string::npos);
  // T 16, N 2: even slots 4..14 are 6; min-gap 12 starts them at 14: one slot for two queries
  EXPECT_EQ(usage_error({16, 16, 2, 10}), "");
  EXPECT_EQ(usage_error({16, 16, 2, 12}),
            "prepare: --seq-len 16: too short for --pairs 2 with --min-gap 12: the queries need 2 even positions in "
            "[14, T-1), there are 1");
  EXPECT_NE(usage_error({16, 5, 2, 0}).find("--seq-len 5"), std::string::npos);
}

TEST(MqarCli, DeterministicShardsAndOneLineErrors) {
  if (!std::getenv("KVMTRAIN_BIN")) GTEST_SKIP() << "KVMTRAIN_BIN not set (run through ctest)";
  TmpDir tmp("cli");
  const std::string flags = " --synthetic mqar --vocab 16 --seq-len 16 --pairs 2 --examples 50 --val-examples 10";
  for (const char* out : {"a", "b"}) {
    const auto r = test_util::kvmtrain("prepare" + flags + " --output " + (tmp.path / out).string(), tmp.path);
    ASSERT_EQ(r.status, 0) << r.err;
  }
  const auto manifest = json::parse(test_util::slurp(tmp.path / "a/manifest.json"));
  EXPECT_EQ(manifest.at("tokenizer").string(), "mqar");
  EXPECT_EQ(manifest.at("doc_len").integer(), 17);
  EXPECT_EQ(manifest.at("format_version").integer(), 2);
  EXPECT_EQ(manifest.at("splits").at("train").at("tokens").integer(), 50 * 17);
  EXPECT_EQ(manifest.at("splits").at("val").at("documents").integer(), 10);
  EXPECT_EQ(manifest.at("synthetic").at("pairs").integer(), 2);
  for (const char* f : {"train/shard_00000.h5", "val/shard_00000.h5"})
    EXPECT_EQ(test_util::slurp(tmp.path / "a" / f), test_util::slurp(tmp.path / "b" / f)) << f;

  const std::string out = " --output " + (tmp.path / "c").string();
  struct Case {
    std::string args, expect;
  } cases[] = {
      {"prepare --synthetic mqar --vocab 15 --seq-len 16 --pairs 2 --examples 5" + out, "--vocab 15: expected an even"},
      {"prepare --synthetic mqar --vocab 16 --seq-len 16 --pairs 9 --examples 5" + out, "--pairs 9"},
      {"prepare --synthetic mqar --vocab 16 --seq-len 16 --pairs 2" + out, "needs --examples"},
      {"prepare --synthetic mqar --vocab 16 --seq-len 16 --pairs 2 --examples 0" + out, "--examples"},
      {"prepare --synthetic mqar --vocab 16 --seq-len 16 --pairs 2 --examples 5 --tokenizer byte" + out,
       "--tokenizer does not apply to --synthetic mqar"},
      {"prepare --synthetic copy --vocab 16 --seq-len 16 --pairs 2 --examples 5" + out, "--synthetic copy (expected mqar)"},
      {"prepare --pairs 2 --input x" + out, "--pairs needs --synthetic mqar"},
  };
  for (const auto& c : cases) {
    const auto r = test_util::kvmtrain(c.args, tmp.path);
    EXPECT_EQ(r.status, 2) << c.args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_EQ(r.err.rfind("kvmtrain: error: prepare: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << c.args << ": " << r.err;
  }
}
