// The checkpoint room on its own: safetensors bytes against the spec, bf16 rounding, the
// checkpoint directory (manifest, verification naming the bad file, listing, pruning, best.json)
// and the GPT-2 name mapping's round trip.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "checkpoints/checkpoint.h"
#include "checkpoints/hf_gpt2.h"
#include "checkpoints/safetensors.h"
#include "common/dir_lock.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace ckpt;

namespace {

fs::path temp_dir(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / ("kvm_ckpt_unit_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(Safetensors, BytesFollowTheSpecAndRoundTrip) {
  std::vector<NamedTensor> ts = {{"b", {2, 3}, {1, 2, 3, 4, 5, 6}}, {"a", {1}, {-0.5f}}, {"empty", {0, 4}, {}}};
  std::string bytes = safetensors_bytes(ts, DType::F32, {{"k", "v"}});
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u) << "the data must start 8-byte aligned";
  EXPECT_EQ(bytes.size(), 8 + n + 7 * 4);
  auto header = json::parse(bytes.substr(8, n));
  EXPECT_EQ(header.at("b").at("dtype").string(), "F32");
  EXPECT_EQ(header.at("b").at("data_offsets").array()[1].integer(), 24);
  EXPECT_EQ(header.at("__metadata__").at("k").string(), "v");
  SafetensorsFile f = parse_safetensors(bytes, "mem");
  ASSERT_EQ(f.tensors.size(), 3u);
  EXPECT_EQ(f.at("b").data, ts[0].data);
  EXPECT_EQ(f.at("a").data, ts[1].data);
  EXPECT_EQ(f.at("empty").shape, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(f.metadata.at("k"), "v");
}

TEST(Safetensors, MalformedFilesAreNamed) {
  std::string good = safetensors_bytes({{"w", {4}, {1, 2, 3, 4}}}, DType::F32);
  for (const std::string& bad : {good.substr(0, 5), good.substr(0, good.size() - 1), good + "xx"}) {
    try {
      parse_safetensors(bad, "file.safetensors");
      FAIL() << "accepted a malformed file of " << bad.size() << " bytes";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("file.safetensors"), std::string::npos) << e.what();
    }
  }
}

TEST(Safetensors, Bf16RoundsToNearestEven) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(std::ldexp(1.0f, 0) + std::ldexp(1.0f, -8)), 0x3f80);   // tie -> even (down)
  EXPECT_EQ(fp32_to_bf16(1.0f + std::ldexp(3.0f, -8)), 0x3f82);                   // tie -> even (up)
  EXPECT_EQ(fp32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);  // above the tie
  EXPECT_EQ(fp32_to_bf16(-2.0f), 0xc000);
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(NAN))));
  EXPECT_EQ(bf16_to_fp32(fp32_to_bf16(INFINITY)), INFINITY);
  std::string b = safetensors_bytes({{"x", {2}, {1.0f, 3.0f}}}, DType::BF16);
  EXPECT_EQ(parse_safetensors(b, "mem").at("x").data, (std::vector<float>{1.0f, 3.0f}));
}

TEST(CheckpointDir, SaveVerifyListPruneBest) {
  fs::path root = temp_dir("dir");
  for (int64_t s : {4, 8, 12, 16}) save(root.string(), s, {{"a.bin", std::string(100, char(s))}, {"b.json", "{}"}});
  auto all = list(root.string());
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all.back().first, 16);
  EXPECT_EQ(fs::path(all.back().second).filename(), "step_00000016");
  auto m = verify(all.back().second);
  EXPECT_EQ(m.at("format_version").integer(), kFormatVersion);
  EXPECT_EQ(m.at("files").at("a.bin").at("bytes").integer(), 100);

  // corrupt the newest, truncate the one before: both named, newest_complete falls back to 8
  { std::fstream f(root / "step_00000016/a.bin", std::ios::in | std::ios::out | std::ios::binary); f.seekp(50); f.put('x'); }
  fs::resize_file(root / "step_00000012/b.json", 1);
  std::vector<std::string> warnings;
  EXPECT_EQ(fs::path(newest_complete(root.string(), warnings)).filename(), "step_00000008");
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[0].find("step_00000016/a.bin"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("sha256"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[1].find("step_00000012/b.json"), std::string::npos) << warnings[1];
  EXPECT_THROW(verify((root / "step_00000016").string()), std::runtime_error);
  // a truncated manifest is named (issue 21: "json: unterminated string" said not which file)
  fs::resize_file(root / "step_00000008/manifest.json", 20);
  try {
    verify((root / "step_00000008").string());
    ADD_FAILURE() << "a truncated manifest verified";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find((root / "step_00000008/manifest.json").string() + ": json"), std::string::npos)
        << e.what();
  }
  fs::remove(root / "step_00000008/manifest.json");
  EXPECT_THROW(verify((root / "step_00000008").string()), std::runtime_error);

  write_best(root.string(), {4, 1.5});
  prune(root.string(), 2, 16, read_best(root.string())->step);
  all = list(root.string());
  ASSERT_EQ(all.size(), 3u);  // 12, 16 kept; 4 is the best; 8 removed
  EXPECT_EQ(all[0].first, 4);
  EXPECT_EQ(read_best(root.string())->val_loss, 1.5);
  remove_best(root.string());
  EXPECT_FALSE(read_best(root.string()));
  remove_best(root.string());  // none: nothing to do
  // a best.json that cannot be removed is an error naming it (issue 21: it was dropped, and the
  // stale record outlived the run that made it)
  fs::create_directories(root / "best.json" / "in_the_way");
  try {
    remove_best(root.string());
    ADD_FAILURE() << "remove_best returned with best.json still there";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find((root / "best.json").string() + ": cannot remove"), std::string::npos) << e.what();
  }
  fs::remove_all(root);
}

// With no complete checkpoint, resolve's one-line error keeps every checkpoint's reason (issue 21).
TEST(CheckpointDir, NoCompleteCheckpointNamesEachReason) {
  fs::path root = temp_dir("none");
  for (int64_t s : {4, 8}) save(root.string(), s, {{"a.bin", std::string(100, char(s))}});
  fs::resize_file(root / "step_00000004/a.bin", 10);
  fs::remove(root / "step_00000008/manifest.json");
  std::vector<std::string> warnings;
  try {
    resolve(root.string(), false, warnings);
    ADD_FAILURE() << "resolved a directory without a complete checkpoint";
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(root.string() + ": no complete checkpoint ("), std::string::npos) << m;
    EXPECT_NE(m.find("step_00000004/a.bin: truncated"), std::string::npos) << m;
    EXPECT_NE(m.find("step_00000008: incomplete"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  fs::remove_all(root);
}

// A save that fails on a full disk (a file size limit) removes its own temporary directory and
// leaves the checkpoints before it as they were (issue 21: the .tmp-* stayed and filled the disk).
// The save runs in a forked child (this test binary has no other threads at that point).
TEST(CheckpointDir, FailedSaveRemovesItsTemporaryDirectory) {
  fs::path root = temp_dir("full");
  save(root.string(), 4, {{"a.bin", std::string(1000, 'a')}});
  const pid_t pid = fork();
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);  // a write past the limit then fails with EFBIG, as on a full disk
    const rlimit lim{100000, 100000};
    setrlimit(RLIMIT_FSIZE, &lim);
    int status = 0;
    try {
      save(root.string(), 8, {{"a.bin", std::string(1000, 'a')}, {"big.bin", std::string(300000, 'b')}});
    } catch (const std::exception&) {
      status = 2;
    }
    _exit(status);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 2) << "the save past the limit did not fail";
  for (const auto& e : fs::directory_iterator(root))
    EXPECT_NE(e.path().filename().string().rfind(".tmp-", 0), 0u) << e.path() << " left behind";
  auto all = list(root.string());
  ASSERT_EQ(all.size(), 1u);
  EXPECT_NO_THROW(verify(all[0].second));
  fs::remove_all(root);
}

// A leftover temporary directory is removed only when its lock is free (its save died): one
// another process is still writing stays (issue 21: a save deleted any .tmp-* it found).
TEST(CheckpointDir, ASaveLeavesALiveSavesTemporaryDirectory) {
  fs::path root = temp_dir("live");
  const fs::path live = root / ".tmp-step_00000002-999999", dead = root / ".tmp-step_00000001-999998";
  for (const auto& d : {live, dead}) {
    fs::create_directories(d);
    std::ofstream(d / "model.bin") << "partial";
  }
  // a child holds `live` as a running save does (flock on the directory) until told to go
  int go[2], ready[2];
  ASSERT_EQ(pipe(go), 0);
  ASSERT_EQ(pipe(ready), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    const auto held = HeldDirectory::try_hold(live.string());
    char c = held ? '1' : '0';
    if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1) _exit(3);
    _exit(0);
  }
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, '1') << "the child could not hold the directory";
  save(root.string(), 4, {{"a.bin", "a"}});
  EXPECT_TRUE(fs::exists(live / "model.bin")) << "a live save's directory was removed";
  EXPECT_FALSE(fs::exists(dead)) << "a dead save's directory was kept";
  ASSERT_EQ(write(go[1], "x", 1), 1);
  int st = 0;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  save(root.string(), 8, {{"a.bin", "a"}});  // its holder has ended: now it is garbage
  EXPECT_FALSE(fs::exists(live));
  EXPECT_EQ(list(root.string()).size(), 2u);
  fs::remove_all(root);
}

TEST(HfGpt2, NamesAndLayoutsRoundTrip) {
  const int64_t C = 4, V = 5, Vp = 8;
  std::vector<NamedTensor> ours;
  auto add = [&](const std::string& n, std::vector<int64_t> shape) {
    int64_t k = 1;
    for (auto d : shape) k *= d;
    NamedTensor t{n, shape, std::vector<float>(size_t(k))};
    for (int64_t i = 0; i < k; i++) t.data[size_t(i)] = float(i) + 0.25f * float(ours.size());
    ours.push_back(t);
  };
  add("wte", {Vp, C});
  for (int64_t r = V; r < Vp; r++)
    for (int64_t c = 0; c < C; c++) ours[0].data[size_t(r * C + c)] = 0;  // padding rows are zero
  add("wpe", {6, C});
  add("h.0.ln_1.weight", {C});
  add("h.0.attn.qkv.weight", {3 * C, C});
  add("h.0.attn.qkv.bias", {3 * C});
  add("h.0.mlp.fc.weight", {4 * C, C});
  add("ln_f.bias", {C});
  auto hf = gpt2_to_hf(ours, V);
  EXPECT_EQ(hf[0].name, "transformer.wte.weight");
  EXPECT_EQ(hf[0].shape, (std::vector<int64_t>{V, C}));
  EXPECT_EQ(hf[3].name, "transformer.h.0.attn.c_attn.weight");
  EXPECT_EQ(hf[3].shape, (std::vector<int64_t>{C, 3 * C}));
  EXPECT_EQ(hf[3].data[1], ours[3].data[C]);  // (in 0, out 1) = ours (out 1, in 0)
  EXPECT_EQ(hf[5].name, "transformer.h.0.mlp.c_fc.weight");
  auto back = gpt2_from_hf(hf, Vp);
  ASSERT_EQ(back.size(), ours.size());
  for (size_t i = 0; i < ours.size(); i++) {
    EXPECT_EQ(back[i].name, ours[i].name);
    EXPECT_EQ(back[i].shape, ours[i].shape);
    EXPECT_EQ(back[i].data, ours[i].data) << ours[i].name;
  }
  EXPECT_THROW(gpt2_to_hf({{"h.0.kvm.tau_front", {2}, {1, 2}}}, V), std::runtime_error);
}

}  // namespace
