// Shard files: write/read round trip, listing (.tmp ignored), and every validation error names
// the file: missing, garbage, truncated, missing dataset, unknown format_version, tokenizer or
// vocab mismatch, token id >= vocab_size (with its offset). Loss masks and fixed-length documents
// (format_version 2): round trip, a plain shard stays version 1, and their errors.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "common/sha256.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace {

const data::ShardInfo kByte{"byte", 257, 256};

struct TmpDir {
  fs::path path;
  TmpDir() : path(fs::temp_directory_path() / ("kvmtrain_test_shards_" + std::to_string(getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TmpDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

// Documents of random bytes (never EOT) with lengths 0..max_len.
std::vector<std::vector<uint32_t>> random_docs(int n, int max_len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<uint32_t>> docs(n);
  for (auto& d : docs) {
    d.resize(rng() % (max_len + 1));
    for (auto& t : d) t = rng() % 256;
  }
  return docs;
}

void write_shard(const std::string& path, const std::vector<std::vector<uint32_t>>& docs,
                 const data::ShardInfo& info = kByte) {
  data::ShardWriter w(path, info);
  for (const auto& d : docs) w.add_document(d.data(), d.size());
  w.finish();
}

// The one-line message of the error that opening (and reading all of) `path` raises.
std::string open_error(const std::string& path, const std::string& tokenizer = "byte", int vocab = 257) {
  try {
    data::ShardReader r(path, tokenizer, vocab);
    std::vector<uint16_t> buf(r.size());
    r.read(0, r.size(), buf.data());
  } catch (const std::runtime_error& e) {
    std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_EQ(m.rfind(path, 0), 0u) << "error does not start with the file name: " << m;
    return m;
  }
  return "";
}

void set_int_attr(const std::string& path, const char* name, int value) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  ASSERT_GE(H5Awrite(a, H5T_NATIVE_INT, &value), 0);
  H5Aclose(a);
  H5Fclose(f);
}

}  // namespace

TEST(Shards, RoundTrip) {
  TmpDir tmp;
  auto docs = random_docs(50, 3000, 1);
  write_shard(tmp / "shard_00000.h5", docs);
  EXPECT_FALSE(fs::exists(tmp / "shard_00000.h5.tmp"));

  std::vector<uint16_t> want;
  std::vector<int64_t> offsets;
  for (const auto& d : docs) {
    offsets.push_back(int64_t(want.size()));
    want.insert(want.end(), d.begin(), d.end());
    want.push_back(256);
  }
  data::ShardReader r(tmp / "shard_00000.h5", "byte", 257);
  EXPECT_EQ(r.info().tokenizer, "byte");
  EXPECT_EQ(r.info().eot, 256);
  ASSERT_EQ(r.size(), want.size());
  EXPECT_EQ(r.documents(), docs.size());
  EXPECT_EQ(r.doc_offsets(), offsets);
  std::vector<uint16_t> got(want.size());
  r.read(0, got.size(), got.data());
  EXPECT_EQ(got, want);
  std::vector<uint16_t> window(1025);  // a window across chunk boundaries
  r.read(65000, window.size(), window.data());
  EXPECT_TRUE(std::equal(window.begin(), window.end(), want.begin() + 65000));
  EXPECT_THROW(r.read(want.size() - 10, 11, window.data()), std::runtime_error);
}

// Shards from other writers may be compressed: they get a 64 MiB chunk cache (ours need none).
TEST(Shards, ReadsCompressedShards) {
  TmpDir tmp;
  const std::string path = tmp / "gzip.h5";
  write_shard(path, random_docs(5, 100, 6));
  std::vector<uint16_t> want;
  {
    data::ShardReader plain(path, "byte", 257);
    EXPECT_EQ(plain.cache_bytes(), 0u);
    want.resize(plain.size());
    plain.read(0, want.size(), want.data());
  }
  // Rewrite 'tokens' deflated, as h5py's compression="gzip" would.
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (f < 0) H5Eprint2(H5E_DEFAULT, stdout);
  ASSERT_GE(f, 0);
  H5Ldelete(f, "tokens", H5P_DEFAULT);
  hsize_t n[1] = {want.size()}, chunk[1] = {64};
  hid_t space = H5Screate_simple(1, n, nullptr), dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, chunk);
  H5Pset_deflate(dcpl, 4);
  hid_t d = H5Dcreate2(f, "tokens", H5T_STD_U16LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ASSERT_GE(H5Dwrite(d, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, want.data()), 0);
  H5Dclose(d);
  H5Pclose(dcpl);
  H5Sclose(space);
  H5Fclose(f);
  data::ShardReader gz(path, "byte", 257);
  EXPECT_EQ(gz.cache_bytes(), 64u << 20);
  std::vector<uint16_t> got(want.size() - 100);
  gz.read(100, got.size(), got.data());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin() + 100));
}

TEST(Shards, UnfinishedWriteLeavesNothing) {
  TmpDir tmp;
  {
    data::ShardWriter w(tmp / "shard_00000.h5", kByte);
    uint32_t ids[3] = {1, 2, 3};
    w.add_document(ids, 3);
    EXPECT_TRUE(fs::exists(tmp / "shard_00000.h5.tmp"));
  }
  EXPECT_FALSE(fs::exists(tmp / "shard_00000.h5.tmp"));
  EXPECT_FALSE(fs::exists(tmp / "shard_00000.h5"));
  data::ShardWriter w(tmp / "x.h5", kByte);
  uint32_t bad = 257;
  EXPECT_THROW(w.add_document(&bad, 1), std::runtime_error);
}

TEST(Shards, ListingIgnoresTmpAndSorts) {
  TmpDir tmp;
  write_shard(tmp / "shard_00001.h5", random_docs(2, 10, 2));
  write_shard(tmp / "shard_00000.h5", random_docs(2, 10, 3));
  std::ofstream(tmp / "shard_00002.h5.tmp") << "an interrupted write";
  std::ofstream(tmp / "notes.txt") << "not a shard";
  std::vector<std::string> want{tmp / "shard_00000.h5", tmp / "shard_00001.h5"};
  EXPECT_EQ(data::list_shards(tmp.path.string()), want);
  EXPECT_EQ(data::list_shards(tmp / "shard_*"), want);
  EXPECT_EQ(data::list_shards(tmp / "shard_00001.h5"), std::vector<std::string>{tmp / "shard_00001.h5"});
  EXPECT_THROW(data::list_shards(tmp / "nothing_*.h5"), std::runtime_error);
  EXPECT_THROW(data::list_shards(tmp / "missing"), std::runtime_error);
}

TEST(Shards, ErrorsNameTheFile) {
  TmpDir tmp;
  auto docs = random_docs(20, 5000, 4);
  const std::string good = tmp / "good.h5";
  write_shard(good, docs);
  EXPECT_EQ(open_error(good), "");

  EXPECT_NE(open_error(tmp / "missing.h5").find("no such shard file"), std::string::npos);

  std::ofstream(tmp / "garbage.h5") << std::string(5000, 'x');
  EXPECT_NE(open_error(tmp / "garbage.h5").find("not an HDF5 file"), std::string::npos);

  fs::copy_file(good, tmp / "truncated.h5");
  fs::resize_file(tmp / "truncated.h5", fs::file_size(good) / 2);
  EXPECT_NE(open_error(tmp / "truncated.h5").find("truncated"), std::string::npos);

  fs::copy_file(good, tmp / "v7.h5");
  set_int_attr(tmp / "v7.h5", "format_version", 7);
  EXPECT_NE(open_error(tmp / "v7.h5").find("unknown shard format_version 7"), std::string::npos);

  std::string m = open_error(good, "gpt2", 50257);
  EXPECT_NE(m.find("tokenizer 'byte'"), std::string::npos) << m;
  EXPECT_NE(open_error(good, "byte", 300).find("300"), std::string::npos);

  // An HDF5 file without doc_offsets.
  const std::string no_offsets = tmp / "no_offsets.h5";
  {
    hid_t f = H5Fcreate(no_offsets.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t s = H5Screate(H5S_SCALAR);
    int one = 1, vocab = 257;
    for (auto [name, v] : {std::pair{"format_version", &one}, std::pair{"vocab_size", &vocab}, std::pair{"eot", &one}}) {
      hid_t a = H5Acreate2(f, name, H5T_STD_I32LE, s, H5P_DEFAULT, H5P_DEFAULT);
      H5Awrite(a, H5T_NATIVE_INT, v);
      H5Aclose(a);
    }
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, 4);
    hid_t a = H5Acreate2(f, "tokenizer", t, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, "byte");
    H5Aclose(a);
    H5Tclose(t);
    hsize_t n[1] = {4};
    hid_t ds_space = H5Screate_simple(1, n, nullptr);
    hid_t d = H5Dcreate2(f, "tokens", H5T_STD_U16LE, ds_space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    uint16_t ids[4] = {1, 2, 3, 256};
    H5Dwrite(d, H5T_NATIVE_UINT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids);
    H5Dclose(d);
    H5Sclose(ds_space);
    H5Sclose(s);
    H5Fclose(f);
  }
  EXPECT_NE(open_error(no_offsets).find("missing dataset 'doc_offsets'"), std::string::npos);

  // Signed 16-bit tokens (issue 21: all -1 were read as one id, 65535) are refused.
  const std::string signed_tokens = tmp / "signed_tokens.h5";
  fs::copy_file(no_offsets, signed_tokens);
  {
    hid_t f = H5Fopen(signed_tokens.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "tokens", H5P_DEFAULT);
    hsize_t n[1] = {4};
    hid_t sp = H5Screate_simple(1, n, nullptr);
    hid_t d = H5Dcreate2(f, "tokens", H5T_STD_I16LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const int16_t ids[4] = {-1, -1, -1, -1};
    H5Dwrite(d, H5T_NATIVE_INT16, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids);
    H5Dclose(d);
    hsize_t one[1] = {1};
    hid_t osp = H5Screate_simple(1, one, nullptr);
    hid_t o = H5Dcreate2(f, "doc_offsets", H5T_STD_I64LE, osp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const int64_t zero = 0;
    H5Dwrite(o, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &zero);
    H5Dclose(o);
    H5Sclose(osp);
    H5Sclose(sp);
    H5Fclose(f);
  }
  m = open_error(signed_tokens);
  EXPECT_NE(m.find("dataset 'tokens' is not a 1-D array of 16-bit unsigned integers"), std::string::npos) << m;
  EXPECT_NE(m.find(signed_tokens), std::string::npos) << m;

  // Ids below 300 written, then the shard relabelled as 257 ids: the reader catches id 280.
  const std::string bad_ids = tmp / "bad_ids.h5";
  auto docs2 = random_docs(3, 100, 5);
  docs2[2][7] = 280;
  size_t offset = docs2[0].size() + 1 + docs2[1].size() + 1 + 7;
  write_shard(bad_ids, docs2, {"byte", 300, 256});
  set_int_attr(bad_ids, "vocab_size", 257);
  m = open_error(bad_ids);
  EXPECT_NE(m.find("token id 280 >= vocab_size 257 at offset " + std::to_string(offset)), std::string::npos) << m;
}

int int_attr(const std::string& path, const char* name) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  int v = -1;
  H5Aread(a, H5T_NATIVE_INT, &v);
  H5Aclose(a);
  H5Fclose(f);
  return v;
}

TEST(Shards, MaskedFixedLengthDocumentsRoundTrip) {
  TmpDir tmp;
  const int doc_len = 9;
  std::mt19937 rng(3);
  std::vector<uint32_t> ids(40000 * doc_len);  // past a 64Ki chunk, so masks cross chunk boundaries too
  std::vector<uint8_t> mask(ids.size());
  for (size_t i = 0; i < ids.size(); i++) ids[i] = rng() % 256, mask[i] = uint8_t(rng() % 2);
  data::ShardInfo info = kByte;
  info.doc_len = doc_len;
  info.loss_mask = true;
  const std::string path = tmp / "masked.h5";
  {
    data::ShardWriter w(path, info);
    for (size_t d = 0; d < ids.size() / doc_len; d++) w.add_document(&ids[d * doc_len], doc_len, &mask[d * doc_len]);
    w.finish();
  }
  EXPECT_EQ(int_attr(path, "format_version"), 2);
  data::ShardReader r(path, "byte", 257);
  EXPECT_EQ(r.info().doc_len, doc_len);
  EXPECT_TRUE(r.info().loss_mask);
  ASSERT_EQ(r.size(), ids.size());  // no EOT after fixed-length documents
  ASSERT_EQ(r.documents(), ids.size() / doc_len);
  std::vector<int64_t> offsets = r.doc_offsets();
  for (size_t d = 0; d < offsets.size(); d++) ASSERT_EQ(offsets[d], int64_t(d * doc_len));
  std::vector<uint16_t> got(ids.size());
  std::vector<uint8_t> got_mask(ids.size());
  r.read(0, got.size(), got.data());
  r.read_mask(0, got_mask.size(), got_mask.data());
  EXPECT_TRUE(std::equal(got.begin(), got.end(), ids.begin()));
  EXPECT_EQ(got_mask, mask);
  std::vector<uint8_t> window(1000);
  r.read_mask(65000, window.size(), window.data());
  EXPECT_TRUE(std::equal(window.begin(), window.end(), mask.begin() + 65000));

  // a plain shard is version 1 without the new fields; a masked one of variable-length documents
  // scores the EOT the writer adds
  write_shard(tmp / "plain.h5", random_docs(3, 50, 2));
  EXPECT_EQ(int_attr(tmp / "plain.h5", "format_version"), 1);
  data::ShardReader plain(tmp / "plain.h5", "byte", 257);
  EXPECT_EQ(plain.info().doc_len, 0);
  EXPECT_FALSE(plain.info().loss_mask);
  EXPECT_THROW(plain.read_mask(0, 1, window.data()), std::runtime_error);
  data::ShardInfo masked_docs = kByte;
  masked_docs.loss_mask = true;
  {
    data::ShardWriter w(tmp / "masked_docs.h5", masked_docs);
    const uint32_t doc[3] = {1, 2, 3};
    const uint8_t m[3] = {0, 1, 0};
    w.add_document(doc, 3, m);
    w.finish();
  }
  data::ShardReader md(tmp / "masked_docs.h5", "byte", 257);
  ASSERT_EQ(md.size(), 4u);
  uint8_t m4[4];
  md.read_mask(0, 4, m4);
  EXPECT_EQ(std::vector<uint8_t>(m4, m4 + 4), (std::vector<uint8_t>{0, 1, 0, 1}));
}

TEST(Shards, MaskAndDocLenErrorsNameTheFile) {
  TmpDir tmp;
  data::ShardInfo info = kByte;
  info.doc_len = 4;
  info.loss_mask = true;
  const uint32_t ids[5] = {1, 2, 3, 4, 5};
  const uint8_t mask[5] = {0, 1, 2, 1, 0};
  auto writer_error = [&](const std::function<void(data::ShardWriter&)>& f, const data::ShardInfo& in) {
    try {
      data::ShardWriter w(tmp / "w.h5", in);
      f(w);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(writer_error([&](auto& w) { w.add_document(ids, 5, mask); }, info).find("a document of 5 tokens in a shard of doc_len 4"),
            std::string::npos);
  EXPECT_NE(writer_error([&](auto& w) { w.add_document(ids, 4, nullptr); }, info).find("without the loss mask"),
            std::string::npos);
  EXPECT_NE(writer_error([&](auto& w) { w.add_document(ids, 4, mask); }, info).find("loss mask value 2"),
            std::string::npos);
  EXPECT_NE(writer_error([&](auto& w) { w.add_document(ids, 4, mask); }, kByte).find("a loss mask for a shard"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(tmp / "w.h5")) << "a failed write leaves no shard";

  const uint8_t ok_mask[8] = {0, 1, 0, 1, 1, 1, 0, 0};
  const uint32_t ids8[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::string good = tmp / "good.h5";
  {
    data::ShardWriter w(good, info);
    w.add_document(ids8, 4, ok_mask);
    w.add_document(ids8 + 4, 4, ok_mask + 4);
    w.finish();
  }
  EXPECT_EQ(open_error(good), "");
  fs::copy_file(good, tmp / "doc_len3.h5");
  set_int_attr(tmp / "doc_len3.h5", "doc_len", 3);
  std::string m = open_error(tmp / "doc_len3.h5");
  EXPECT_NE(m.find("doc_len 3 does not divide its 8 tokens into its 2 documents"), std::string::npos) << m;

  // a mask value other than 0 or 1, and a mask shorter than the tokens, written behind the writer's back
  fs::copy_file(good, tmp / "mask7.h5");
  {
    hid_t f = H5Fopen((tmp / "mask7.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "loss_mask", H5P_DEFAULT);
    const uint8_t bad[8] = {0, 1, 0, 1, 7, 1, 0, 0};
    H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bad);
    H5Dclose(d);
    H5Fclose(f);
  }
  data::ShardReader r7(tmp / "mask7.h5", "byte", 257);
  uint8_t out[8];
  try {
    r7.read_mask(0, 8, out);
    ADD_FAILURE() << "a mask value of 7 was read";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), tmp / "mask7.h5" + ": loss_mask value 7 (expected 0 or 1) at offset 4");
  }
  fs::copy_file(good, tmp / "short_mask.h5");
  {
    hid_t f = H5Fopen((tmp / "short_mask.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "loss_mask", H5P_DEFAULT);
    hsize_t n[1] = {5};
    H5Dset_extent(d, n);
    H5Dclose(d);
    H5Fclose(f);
  }
  m = open_error(tmp / "short_mask.h5");
  EXPECT_NE(m.find("dataset 'loss_mask' holds 5 values for 8 tokens"), std::string::npos) << m;
}

TEST(Sha256, KnownDigests) {
  EXPECT_EQ(data::sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(data::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(data::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(data::sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}
