// Interop: Debian's h5py (/usr/bin/python3, env KVMTRAIN_PYTHON) reads a shard written by
// `prepare` to the same ids, offsets and attributes that our reader sees.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/json.h"
#include "data/prepare.h"
#include "data/shard.h"

namespace fs = std::filesystem;

TEST(ShardsH5py, ReadsTheSameIds) {
  const char* python = std::getenv("KVMTRAIN_PYTHON");
  if (!python) GTEST_SKIP() << "KVMTRAIN_PYTHON not set (run through ctest)";
  const fs::path tmp = fs::temp_directory_path() / ("kvmtrain_test_h5py_" + std::to_string(getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  std::string text;
  for (int i = 0; i < 30000; i++) text += "In the beginning God created the heaven and the earth " + std::to_string(i) + ". ";
  std::ofstream(tmp / "a.txt") << text;
  std::ofstream(tmp / "b.txt") << "Hello world";
  data::PrepareOptions o;
  o.inputs = {(tmp / "a.txt").string(), (tmp / "b.txt").string()};
  o.output = (tmp / "out").string();
  o.tokenizer = "gpt2";
  o.val_fraction = 0;
  o.progress = false;
  data::prepare(o);
  const std::string shard = (tmp / "out" / "train" / "shard_00000.h5").string();

  std::string cmd = std::string(python) + " " + KVMTRAIN_SOURCE_DIR "/tests/data/read_shard.py " + shard;
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ASSERT_EQ(pclose(p), 0) << cmd;
  json::Value v = json::parse(out);

  data::ShardReader r(shard, "gpt2", 50257);
  std::vector<uint16_t> ids(r.size());
  r.read(0, ids.size(), ids.data());
  ASSERT_GT(ids.size(), 65536u * 2);  // several chunks
  EXPECT_EQ(v.at("tokens_dtype").string(), "uint16");
  EXPECT_EQ(v.at("doc_offsets_dtype").string(), "int64");
  EXPECT_EQ(v.at("chunks").array().at(0).integer(), 65536);
  const auto& tokens = v.at("tokens").array();
  ASSERT_EQ(tokens.size(), ids.size());
  for (size_t i = 0; i < ids.size(); i++) ASSERT_EQ(tokens[i].integer(), ids[i]) << "token " << i;
  const auto& offsets = v.at("doc_offsets").array();
  ASSERT_EQ(offsets.size(), 2u);
  EXPECT_EQ(offsets[0].integer(), 0);
  EXPECT_EQ(offsets[1].integer(), r.doc_offsets()[1]);
  EXPECT_EQ(ids.size() - offsets[1].integer(), 3u);  // "Hello world" EOT
  const auto& a = v.at("attrs");
  EXPECT_EQ(a.at("format_version").integer(), 1);
  EXPECT_EQ(a.at("tokenizer").string(), "gpt2");
  EXPECT_EQ(a.at("vocab_size").integer(), 50257);
  EXPECT_EQ(a.at("eot").integer(), 50256);
  fs::remove_all(tmp);
}
