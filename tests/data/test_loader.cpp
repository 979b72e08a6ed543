// The loader: windows in order (unshuffled), an epoch covering every window once (shuffled),
// N ranks (2, 3) reading together exactly one process's batches, exact resume (also onto another
// rank count), a weighted mixture, and errors from shards surfacing through next(). Shards of
// fixed-length documents with loss masks: window k is document k with its mask, a mixture with an
// unmasked source scores all of that one, data::Batch turns unscored targets into -1, and a
// doc_len that is not seq_len + 1 is an error naming the shard and both values.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "data/batch.h"
#include "data/loader.h"
#include "data/shard.h"

namespace fs = std::filesystem;
using Window = std::vector<int32_t>;

namespace {

constexpr int T = 16;

struct TmpDir {
  fs::path path;
  explicit TmpDir(const std::string& tag)
      : path(fs::temp_directory_path() / ("kvmtrain_test_loader_" + tag + "_" + std::to_string(getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TmpDir() { fs::remove_all(path); }
};

// A shard of `n` random byte tokens (in a few documents); returns its tokens.
std::vector<int32_t> write_shard(const fs::path& path, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> ids(n);
  for (auto& t : ids) t = rng() % 256;
  data::ShardWriter w(path.string(), {"byte", 257, 256});
  size_t doc = n / 3;  // three documents: (doc + 1) + (doc + 1) + (n - 2 doc - 2 + 1) = n tokens
  w.add_document(ids.data(), doc);
  w.add_document(ids.data() + doc, doc);
  w.add_document(ids.data() + 2 * doc, n - 2 * doc - 2 - 1);
  w.finish();
  data::ShardReader r(path.string(), "byte", 257);
  std::vector<uint16_t> got(r.size());
  r.read(0, got.size(), got.data());
  return std::vector<int32_t>(got.begin(), got.end());
}

// Source 'a': 3 shards (2 full of windows, one with a ragged tail, and one too short for any).
struct Data {
  TmpDir dir{"data"};
  std::vector<Window> windows;  // all windows of source 'a', in order
  Data() {
    fs::create_directories(dir.path / "a");
    std::vector<size_t> sizes{10 * T + 1, 7 * T + 5, T};
    for (size_t i = 0; i < sizes.size(); i++) {
      auto tokens = write_shard(dir.path / "a" / ("shard_0000" + std::to_string(i) + ".h5"), sizes[i], 10 + i);
      for (size_t k = 0; (k + 1) * T + 1 <= tokens.size(); k++)
        windows.emplace_back(tokens.begin() + k * T, tokens.begin() + k * T + T + 1);
    }
    std::ofstream(dir.path / "a" / "shard_00003.h5.tmp") << "an interrupted write: ignored";
  }
  data::LoaderOptions options(int B, bool shuffle = true, int rank = 0, int world = 1) const {
    return {{{(dir.path / "a").string(), 1.0}}, B, T, 1234, rank, world, shuffle, "byte", 257};
  }
};

const Data& data_set() {
  static Data d;
  return d;
}

std::vector<Window> batch(data::Loader& l, int B) {
  std::vector<int32_t> buf(size_t(B) * (T + 1));
  l.next(buf.data());
  std::vector<Window> out;
  for (int b = 0; b < B; b++) out.emplace_back(buf.begin() + b * (T + 1), buf.begin() + (b + 1) * (T + 1));
  return out;
}

std::string error_of(const data::LoaderOptions& o) {
  try {
    data::Loader l(o);
    for (int i = 0; i < 100; i++) batch(l, o.batch_size);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Loader, InOrderWhenUnshuffledAndWraps) {
  const auto& d = data_set();
  ASSERT_EQ(d.windows.size(), 17u);  // 10 + 7 + 0
  data::Loader l(d.options(1, false));
  EXPECT_EQ(l.windows_per_epoch(), 17u);
  for (int epoch = 0; epoch < 2; epoch++) {
    for (size_t k = 0; k < d.windows.size(); k++) {
      EXPECT_EQ(l.epoch(), epoch);
      ASSERT_EQ(batch(l, 1)[0], d.windows[k]) << "epoch " << epoch << " window " << k;
    }
  }
  EXPECT_EQ(l.position(), 34u);
  EXPECT_EQ(l.epoch(), 2);
}

TEST(Loader, ShuffledEpochIsAPermutation) {
  const auto& d = data_set();
  data::Loader l(d.options(1));
  std::vector<Window> e0, e1;
  for (size_t k = 0; k < d.windows.size(); k++) e0.push_back(batch(l, 1)[0]);
  for (size_t k = 0; k < d.windows.size(); k++) e1.push_back(batch(l, 1)[0]);
  EXPECT_NE(e0, d.windows);
  EXPECT_NE(e0, e1);  // a new order each epoch
  for (auto* e : {&e0, &e1}) {
    std::sort(e->begin(), e->end());
    auto all = d.windows;
    std::sort(all.begin(), all.end());
    EXPECT_EQ(*e, all);
  }
  data::Loader same(d.options(1)), other_seed([&] { auto o = d.options(1); o.seed = 99; return o; }());
  std::vector<Window> a, b;
  for (int k = 0; k < 17; k++) a.push_back(batch(same, 1)[0]), b.push_back(batch(other_seed, 1)[0]);
  std::vector<Window> e0_again;
  data::Loader again(d.options(1));
  for (int k = 0; k < 17; k++) e0_again.push_back(batch(again, 1)[0]);
  EXPECT_EQ(a, e0_again);
  EXPECT_NE(a, b);
}

TEST(Loader, RanksTogetherReadOneProcessBatches) {
  const auto& d = data_set();
  for (int world : {2, 3}) {
    const int B = 2, steps = 12;  // 12 * world * B windows: crosses epochs
    data::Loader single(d.options(world * B));
    std::vector<std::unique_ptr<data::Loader>> ranks;
    for (int r = 0; r < world; r++) ranks.push_back(std::make_unique<data::Loader>(d.options(B, true, r, world)));
    std::vector<Window> stream;  // the single process's windows, in order
    for (int s = 0; s < steps; s++) {
      auto want = batch(single, world * B);
      stream.insert(stream.end(), want.begin(), want.end());
      std::vector<Window> got;
      for (int r = 0; r < world; r++) {
        auto part = batch(*ranks[r], B);
        for (int j = 0; j < B; j++) EXPECT_EQ(part[j], want[j * world + r]) << "rank " << r << " takes r, r+N, ...";
        got.insert(got.end(), part.begin(), part.end());
        EXPECT_EQ(ranks[r]->position(), single.position());
      }
      std::sort(got.begin(), got.end());
      std::sort(want.begin(), want.end());
      EXPECT_EQ(got, want) << "world " << world << " step " << s;
    }
    // The first epoch of the combined stream: disjoint across ranks and covering every window.
    std::vector<Window> epoch(stream.begin(), stream.begin() + 17), all = d.windows;
    std::sort(epoch.begin(), epoch.end());
    std::sort(all.begin(), all.end());
    EXPECT_EQ(epoch, all);
  }
}

TEST(Loader, ExactResumeAlsoOntoAnotherRankCount) {
  const auto& d = data_set();
  data::Loader a(d.options(3));
  for (int i = 0; i < 4; i++) batch(a, 3);
  const uint64_t pos = a.position();
  ASSERT_EQ(pos, 12u);
  std::vector<std::vector<Window>> want;
  for (int i = 0; i < 6; i++) want.push_back(batch(a, 3));

  data::Loader b(d.options(3));
  batch(b, 3);  // a prefetched, even consumed, batch must not leak into the resumed stream
  b.set_position(pos);
  EXPECT_EQ(b.position(), pos);
  for (int i = 0; i < 6; i++) EXPECT_EQ(batch(b, 3), want[i]) << "batch " << i;

  // Onto 3 ranks of batch 1: step i's union is the single process's batch i.
  std::vector<std::unique_ptr<data::Loader>> ranks;
  for (int r = 0; r < 3; r++) {
    ranks.push_back(std::make_unique<data::Loader>(d.options(1, true, r, 3)));
    ranks.back()->set_position(pos);
  }
  for (int i = 0; i < 6; i++) {
    std::vector<Window> got;
    for (auto& r : ranks) got.push_back(batch(*r, 1)[0]);
    EXPECT_EQ(got, want[i]) << "batch " << i;
  }
  // And back to the start.
  b.set_position(0);
  data::Loader fresh(d.options(3));
  EXPECT_EQ(batch(b, 3), batch(fresh, 3));
}

TEST(Loader, WeightedMixture) {
  const auto& d = data_set();
  TmpDir dir("mix");
  write_shard(dir.path / "b.h5", 40 * T + 1, 77);
  std::set<Window> from_a(d.windows.begin(), d.windows.end());
  auto o = d.options(4);
  o.sources.push_back({(dir.path / "b.h5").string(), 3.0});
  EXPECT_EQ(data::Loader(o).windows_per_epoch(), 17u + 40u);

  data::Loader l(o);
  int a = 0, n = 0;
  std::vector<std::vector<Window>> batches;
  for (int i = 0; i < 250; i++) {
    batches.push_back(batch(l, 4));
    for (const auto& w : batches.back()) a += from_a.count(w), n++;
  }
  EXPECT_NEAR(double(a) / n, 0.25, 0.04);  // weights 1 : 3
  // Resume mid-stream replays the choices: same batches, also onto 2 ranks of batch 2.
  data::Loader r(o);
  r.set_position(4 * 100);
  for (int i = 100; i < 110; i++) EXPECT_EQ(batch(r, 4), batches[i]);
  auto o2 = o;
  o2.batch_size = 2;
  o2.world = 2;
  data::Loader r0(o2), r1([&] { auto x = o2; x.rank = 1; return x; }());
  r0.set_position(4 * 200);
  r1.set_position(4 * 200);
  for (int i = 200; i < 210; i++) {
    auto b0 = batch(r0, 2), b1 = batch(r1, 2);
    EXPECT_EQ((std::vector<Window>{b0[0], b1[0], b0[1], b1[1]}), batches[i]);
  }
}

TEST(Loader, ErrorsNameTheShard) {
  const auto& d = data_set();
  auto o = d.options(2);
  o.tokenizer = "gpt2";
  o.vocab_size = 50257;
  std::string m = error_of(o);
  EXPECT_NE(m.find((d.dir.path / "a" / "shard_00000.h5").string()), std::string::npos) << m;
  EXPECT_NE(m.find("tokenizer 'byte'"), std::string::npos) << m;

  o = d.options(2);
  o.sources[0].path = (d.dir.path / "nowhere").string();
  EXPECT_NE(error_of(o).find("nowhere: no such shard file"), std::string::npos);

  // A token id >= vocab_size deep in a shard surfaces from the prefetch thread through next().
  TmpDir dir("bad");
  const std::string bad = (dir.path / "bad.h5").string();
  {
    std::vector<uint32_t> ids(20 * T, 5);
    ids[13 * T + 3] = 290;
    data::ShardWriter w(bad, {"byte", 300, 256});
    w.add_document(ids.data(), ids.size());
    w.finish();
    hid_t f = H5Fopen(bad.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t a = H5Aopen(f, "vocab_size", H5P_DEFAULT);
    int v = 257;
    H5Awrite(a, H5T_NATIVE_INT, &v);
    H5Aclose(a);
    H5Fclose(f);
  }
  o = d.options(2, false);
  o.sources[0].path = bad;
  m = error_of(o);
  EXPECT_EQ(m, bad + ": token id 290 >= vocab_size 257 at offset " + std::to_string(13 * T + 3));

  o = d.options(2, false);
  o.seq_len = 1000;
  EXPECT_NE(error_of(o).find("no window of seq_len+1 = 1001 tokens"), std::string::npos);
}

namespace {

// A shard of `docs` fixed-length documents of T+1 random byte tokens with random loss masks; returns
// the documents and their masks.
std::pair<std::vector<Window>, std::vector<std::vector<uint8_t>>> write_masked_shard(const fs::path& path, int docs,
                                                                                       uint32_t seed) {
  std::mt19937 rng(seed);
  data::ShardInfo info{"byte", 257, 256};
  info.doc_len = T + 1;
  info.loss_mask = true;
  data::ShardWriter w(path.string(), info);
  std::vector<Window> windows;
  std::vector<std::vector<uint8_t>> masks;
  for (int d = 0; d < docs; d++) {
    std::vector<uint32_t> ids(T + 1);
    std::vector<uint8_t> mask(T + 1);
    for (int i = 0; i <= T; i++) ids[i] = rng() % 256, mask[i] = uint8_t(rng() % 3 == 0);
    w.add_document(ids.data(), ids.size(), mask.data());
    windows.emplace_back(ids.begin(), ids.end());
    masks.push_back(mask);
  }
  w.finish();
  return {windows, masks};
}

}  // namespace

TEST(Loader, FixedLengthDocumentsAreWindowsWithTheirMasks) {
  TmpDir dir("masked");
  fs::create_directories(dir.path / "m");
  auto [windows, masks] = write_masked_shard(dir.path / "m" / "shard_00000.h5", 7, 5);
  data::Loader l({{{(dir.path / "m").string(), 1.0}}, 1, T, 1, 0, 1, false, "byte", 257});
  EXPECT_TRUE(l.masked());
  EXPECT_EQ(l.windows_per_epoch(), 7u);  // one per document, none across two
  for (int k = 0; k < 7; k++) {
    Window w(T + 1);
    std::vector<uint8_t> m(T + 1);
    l.next(w.data(), m.data());
    EXPECT_EQ(w, windows[size_t(k)]) << "window " << k;
    EXPECT_EQ(m, masks[size_t(k)]) << "window " << k;
  }

  // A batch: inputs are the window's first T tokens, targets its last T, -1 where the mask says 0.
  data::Loader l2({{{(dir.path / "m").string(), 1.0}}, 2, T, 1, 0, 1, false, "byte", 257});
  data::Batch batch(2, T);
  batch.load(l2);
  int64_t scored = 0;
  for (int b = 0; b < 2; b++)
    for (int t = 0; t < T; t++) {
      EXPECT_EQ(batch.inputs[size_t(b * T + t)], windows[size_t(b)][size_t(t)]);
      const int want = masks[size_t(b)][size_t(t + 1)] ? windows[size_t(b)][size_t(t + 1)] : -1;
      EXPECT_EQ(batch.targets[size_t(b * T + t)], want) << "b " << b << " t " << t;
      scored += want != -1;
    }
  EXPECT_EQ(batch.scored, scored);
  EXPECT_GT(scored, 0);
  EXPECT_LT(scored, 2 * T);

  // A mixture with the unmasked source 'a': its windows come with a mask of ones.
  const auto& d = data_set();
  data::Loader mix({{{(dir.path / "m").string(), 1.0}, {(d.dir.path / "a").string(), 1.0}}, 1, T, 3, 0, 1, true,
                    "byte", 257});
  int from_a = 0;
  for (int i = 0; i < 40; i++) {
    Window w(T + 1);
    std::vector<uint8_t> m(T + 1);
    mix.next(w.data(), m.data());
    if (std::find(d.windows.begin(), d.windows.end(), w) != d.windows.end()) {
      from_a++;
      EXPECT_EQ(m, std::vector<uint8_t>(T + 1, 1));
    } else {
      auto it = std::find(windows.begin(), windows.end(), w);
      ASSERT_NE(it, windows.end());
      EXPECT_EQ(m, masks[size_t(it - windows.begin())]);
    }
  }
  EXPECT_GT(from_a, 0);
  EXPECT_LT(from_a, 40);

  // An unmasked source alone: data::Batch scores every target, as before masks existed.
  data::Loader plain(d.options(2, false));
  EXPECT_FALSE(plain.masked());
  data::Batch all(2, T);
  all.load(plain);
  EXPECT_EQ(all.scored, 2 * T);
  EXPECT_TRUE(all.mask.empty());
  for (int t = 0; t < T; t++) EXPECT_EQ(all.targets[size_t(t)], d.windows[0][size_t(t + 1)]);

  // doc_len must be seq_len + 1
  const std::string shard = (dir.path / "m" / "shard_00000.h5").string();
  std::string m = error_of({{{shard, 1.0}}, 1, T + 2, 1, 0, 1, false, "byte", 257});
  EXPECT_EQ(m, shard + ": its documents are doc_len " + std::to_string(T + 1) +
                   " tokens, one window each, but train.seq_len + 1 is " + std::to_string(T + 3) + " (set train.seq_len to " +
                   std::to_string(T) + ")");
}
