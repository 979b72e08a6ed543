// Tokenizers against js-tiktoken (tests/fixtures/tokenizer, made by make_fixture.mjs), plus round
// trips on arbitrary bytes, the byte tokenizer and make_tokenizer's errors.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "common/json.h"
#include "data/tokenizer.h"

namespace {

std::string source_dir() {
  const char* env = std::getenv("KVMTRAIN_SOURCE_DIR");
  return env ? env : KVMTRAIN_SOURCE_DIR;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("test_tokenizer: cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Case {
  std::string text;
  std::vector<uint32_t> ids;
};

const std::vector<Case>& fixture() {
  static const std::vector<Case> cases = [] {
    json::Value root = json::parse(read_file(source_dir() + "/tests/fixtures/tokenizer/gpt2_cases.json"));
    std::vector<Case> out;
    for (const json::Value& c : root.at("cases").array()) {
      Case k{c.at("text").string(), {}};
      for (const json::Value& id : c.at("ids").array()) k.ids.push_back(uint32_t(id.integer()));
      out.push_back(std::move(k));
    }
    return out;
  }();
  return cases;
}

TEST(Gpt2Tokenizer, KnownIds) {
  auto tok = data::make_tokenizer("gpt2");
  EXPECT_EQ(tok->name(), "gpt2");
  EXPECT_EQ(tok->vocab_size(), 50257);
  EXPECT_EQ(tok->eot(), 50256);
  EXPECT_EQ(tok->encode("Hello world"), (std::vector<uint32_t>{15496, 995}));
  EXPECT_EQ(tok->encode(" The quick brown fox."), (std::vector<uint32_t>{383, 2068, 7586, 21831, 13}));
  std::vector<uint32_t> out{50256};
  tok->encode("Hello world", out);  // appends
  EXPECT_EQ(out, (std::vector<uint32_t>{50256, 15496, 995}));
}

TEST(Gpt2Tokenizer, MatchesJsTiktoken) {
  auto tok = data::make_tokenizer("gpt2");
  ASSERT_GT(fixture().size(), 300u);
  size_t bytes = 0;
  for (size_t i = 0; i < fixture().size(); i++) {
    const Case& c = fixture()[i];
    bytes += c.text.size();
    EXPECT_EQ(tok->encode(c.text), c.ids) << "case " << i << ": " << c.text.substr(0, 200);
    EXPECT_EQ(tok->decode(c.ids), c.text) << "case " << i;
  }
  EXPECT_GT(bytes, 100000u);  // the KJV excerpt is in
}

TEST(Gpt2Tokenizer, EndOfTextLiteralIsOrdinaryText) {
  auto tok = data::make_tokenizer("gpt2");
  std::vector<uint32_t> ids = tok->encode("a<|endoftext|>b");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 50256u), 0);
  EXPECT_EQ(tok->decode(ids), "a<|endoftext|>b");
  EXPECT_EQ(tok->decode(std::vector<uint32_t>{50256}), "<|endoftext|>");
}

TEST(Gpt2Tokenizer, RandomBytesRoundTrip) {
  auto tok = data::make_tokenizer("gpt2");
  std::mt19937 rng(7);
  // Half uniform bytes (mostly invalid UTF-8), half drawn from pieces that make near-valid UTF-8.
  const char* pieces[] = {"a", " ", "\n", "'", "s", "1", "\xC3", "\xA9", "\xE4\xB8", "\xAD", "\xF0\x9F",
                          "\x98\x80", "\xED\xA0\x80", "\xC0\xAF", "\xF4\x90\x80\x80", "\xE2\x80\xA8", "\x85"};
  for (int t = 0; t < 2000; t++) {
    std::string s;
    int n = rng() % 64;
    for (int k = 0; k < n; k++) {
      if (t % 2) s += char(rng() % 256);
      else s += pieces[rng() % std::size(pieces)];
    }
    std::vector<uint32_t> ids = tok->encode(s);
    for (uint32_t id : ids) ASSERT_LT(id, 50256u);
    ASSERT_EQ(tok->decode(ids), s) << "trial " << t;
  }
}

TEST(Gpt2Tokenizer, LongPiecesStayFast) {
  // One piece of a megabyte: quadratic merging would take hours.
  auto tok = data::make_tokenizer("gpt2");
  std::string letters, mixed;
  std::mt19937 rng(1);
  for (int i = 0; i < (1 << 20); i++) letters += char('a' + rng() % 26);
  for (int i = 0; i < (1 << 20); i++) mixed += "!?.-"[rng() % 4];
  for (const std::string& s : {letters, mixed, std::string(1 << 20, ' ')}) EXPECT_EQ(tok->decode(tok->encode(s)), s);
}

TEST(Gpt2Tokenizer, ThreadsAgree) {
  auto tok = data::make_tokenizer("gpt2");
  const Case& kjv = fixture()[fixture().size() - 2];
  std::vector<std::vector<uint32_t>> got(4);
  std::vector<std::thread> threads;
  for (auto& g : got) threads.emplace_back([&] { g = tok->encode(kjv.text); });
  for (auto& t : threads) t.join();
  for (const auto& g : got) EXPECT_EQ(g, kjv.ids);
}

// The tokenizer ranks merges by encoder.json id, as tiktoken does; that matches GPT-2's merge
// list only because vocab.bpe's merge i makes token 256 + i, which this checks.
TEST(Gpt2Tokenizer, VocabBpeMergeOrderIsIdOrder) {
  auto tok = data::make_tokenizer("gpt2");
  std::array<int, 324> byte_of;
  byte_of.fill(-1);
  for (int b = 0, shifted = 0; b < 256; b++) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    byte_of[printable ? b : 256 + shifted++] = b;
  }
  auto to_bytes = [&](const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size();) {
      uint32_t cp = uint8_t(s[i]);
      if (cp >= 0xC0) cp = (cp & 0x1F) << 6 | (uint8_t(s[i + 1]) & 0x3F), i += 2;
      else i += 1;
      out += char(byte_of.at(cp));
    }
    return out;
  };
  std::istringstream bpe(read_file(source_dir() + "/data/gpt2/vocab.bpe"));
  std::string line;
  std::getline(bpe, line);
  ASSERT_EQ(line, "#version: 0.2");
  uint32_t id = 256;
  while (std::getline(bpe, line) && !line.empty()) {
    size_t sp = line.find(' ');
    ASSERT_NE(sp, std::string::npos) << line;
    ASSERT_EQ(tok->decode(std::vector<uint32_t>{id}), to_bytes(line.substr(0, sp)) + to_bytes(line.substr(sp + 1)))
        << "merge " << id - 256 << ": " << line;
    id++;
  }
  EXPECT_EQ(id, 50256u);
}

TEST(Gpt2Tokenizer, DecodeRejectsIdsOutOfRange) {
  auto tok = data::make_tokenizer("gpt2");
  EXPECT_THROW(tok->decode(std::vector<uint32_t>{15496, 50257}), std::runtime_error);
}

TEST(ByteTokenizer, IdsAreBytes) {
  auto tok = data::make_tokenizer("byte");
  EXPECT_EQ(tok->name(), "byte");
  EXPECT_EQ(tok->vocab_size(), 257);
  EXPECT_EQ(tok->eot(), 256);
  EXPECT_EQ(tok->encode("Hi\xFF"), (std::vector<uint32_t>{72, 105, 255}));
  std::string all;
  for (int b = 0; b < 256; b++) all += char(b);
  EXPECT_EQ(tok->decode(tok->encode(all)), all);
  EXPECT_EQ(tok->decode(std::vector<uint32_t>{104, 256, 105}), "h<|endoftext|>i");
  EXPECT_THROW(tok->decode(std::vector<uint32_t>{257}), std::runtime_error);
}

TEST(MakeTokenizer, UnknownNameNamesTheAcceptedOnes) {
  try {
    data::make_tokenizer("gpt3");
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("gpt3"), std::string::npos) << what;
    EXPECT_NE(what.find("gpt2"), std::string::npos) << what;
    EXPECT_NE(what.find("byte"), std::string::npos) << what;
  }
}

}  // namespace
