#include "data/shard.h"

#include <glob.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>

namespace fs = std::filesystem;

namespace data {

namespace {

constexpr hsize_t kChunkTokens = 1 << 16;        // 128 KiB chunks: cheap random windows, fast appends
constexpr size_t kFlushTokens = 1 << 22;         // writer buffer: 8 MiB
// Chunk cache of a reader. Compressed chunks (shards from other writers) must be decompressed
// whole, so a window would cost a chunk each without a cache big enough for the chunks in use:
// 64 MiB. Uncompressed chunks (ours) are read by HDF5 straight into the window when the cache is
// smaller than a chunk: 4x the random windows/s of a 64 MiB cache (which copies in 128 KiB per
// 2 KiB window) and no memory per open shard.
constexpr size_t kCompressedCacheBytes = 64u << 20;
constexpr size_t kChunkCacheSlots = 10007;  // prime, ~20x the 512 chunks of 128 KiB that fit in 64 MiB

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

// HDF5 prints its error stack to stderr by default; we report our own one-line errors instead.
// The setting is per thread in a thread-safe build, so every entry point calls this.
void quiet_hdf5() {
  // No clean-up at exit: every file is closed explicitly, and after a close that failed (a full
  // disk) HDF5's own clean-up retries the flush and crashes (issue 21: a segfault after the error).
  static const bool no_atexit = [] { return H5dont_atexit() >= 0; }();
  (void)no_atexit;
  thread_local bool done = false;
  if (!done) H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr), done = true;
}

void write_int_attr(hid_t loc, const char* name, int value) {
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(loc, name, H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT);
  herr_t st = attr < 0 ? -1 : H5Awrite(attr, H5T_NATIVE_INT, &value);
  if (attr >= 0) H5Aclose(attr);
  H5Sclose(space);
  if (st < 0) throw std::runtime_error(std::string("cannot write attribute ") + name);
}

// A variable-length UTF-8 string: h5py reads it back as str.
void write_string_attr(hid_t loc, const char* name, const std::string& value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  const char* p = value.c_str();
  herr_t st = attr < 0 ? -1 : H5Awrite(attr, type, &p);
  if (attr >= 0) H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
  if (st < 0) throw std::runtime_error(std::string("cannot write attribute ") + name);
}

int read_int_attr(const std::string& path, hid_t loc, const char* name) {
  if (H5Aexists(loc, name) <= 0) fail(path, std::string("not a kvmtrain shard (no '") + name + "' attribute)");
  hid_t attr = H5Aopen(loc, name, H5P_DEFAULT);
  int value = 0;
  herr_t st = attr < 0 ? -1 : H5Aread(attr, H5T_NATIVE_INT, &value);
  if (attr >= 0) H5Aclose(attr);
  if (st < 0) fail(path, std::string("attribute '") + name + "' is not an integer");
  return value;
}

// Accepts variable- and fixed-length strings (other writers, e.g. h5py, may use either).
std::string read_string_attr(const std::string& path, hid_t loc, const char* name) {
  if (H5Aexists(loc, name) <= 0) fail(path, std::string("not a kvmtrain shard (no '") + name + "' attribute)");
  hid_t attr = H5Aopen(loc, name, H5P_DEFAULT);
  hid_t type = attr < 0 ? -1 : H5Aget_type(attr);
  std::string value;
  herr_t st = -1;
  if (type >= 0 && H5Tget_class(type) == H5T_STRING) {
    if (H5Tis_variable_str(type) > 0) {
      char* p = nullptr;
      hid_t mem = H5Tcopy(H5T_C_S1);
      H5Tset_size(mem, H5T_VARIABLE);
      H5Tset_cset(mem, H5Tget_cset(type));  // HDF5 will not convert between ASCII and UTF-8
      st = H5Aread(attr, mem, &p);
      if (st >= 0 && p) value = p, H5free_memory(p);
      H5Tclose(mem);
    } else {
      std::string buf(H5Tget_size(type), '\0');
      st = H5Aread(attr, type, buf.data());
      value = buf.substr(0, buf.find('\0'));
    }
  }
  if (type >= 0) H5Tclose(type);
  if (attr >= 0) H5Aclose(attr);
  if (st < 0) fail(path, std::string("attribute '") + name + "' is not a string");
  return value;
}

// Opens a 1-D dataset of integers of `bytes` size, unsigned or signed; returns its id and length.
// A signed token dataset is refused: its ids would be read through a conversion (-1 as 65535).
hid_t open_vector(const std::string& path, hid_t file, const char* name, hid_t dapl, size_t bytes, bool is_signed,
                  uint64_t* length) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) fail(path, std::string("missing dataset '") + name + "'");
  hid_t ds = H5Dopen2(file, name, dapl);
  if (ds < 0) fail(path, std::string("cannot open dataset '") + name + "'");
  hid_t type = H5Dget_type(ds), space = H5Dget_space(ds);
  bool ok = H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) == bytes &&
            (H5Tget_sign(type) == H5T_SGN_2) == is_signed && H5Sget_simple_extent_ndims(space) == 1;
  hsize_t dims[1] = {0};
  if (ok) H5Sget_simple_extent_dims(space, dims, nullptr);
  H5Tclose(type);
  H5Sclose(space);
  if (!ok) {
    H5Dclose(ds);
    fail(path, std::string("dataset '") + name + "' is not a 1-D array of " + std::to_string(8 * bytes) + "-bit " +
                   (is_signed ? "signed" : "unsigned") + " integers");
  }
  *length = dims[0];
  return ds;
}

// A 1-D dataset of `type` that grows by appends, in kChunkTokens chunks.
hid_t create_growing(hid_t file, const char* name, hid_t type) {
  hsize_t dims[1] = {0}, maxdims[1] = {H5S_UNLIMITED}, chunk[1] = {kChunkTokens};
  hid_t space = H5Screate_simple(1, dims, maxdims);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 1, chunk);
  H5Pset_obj_track_times(dcpl, 0);
  hid_t ds = H5Dcreate2(file, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Pclose(dcpl);
  H5Sclose(space);
  return ds;
}

// Appends `n` values of `buf` to the 1-D dataset `ds` that holds `written` of them.
herr_t append(hid_t ds, hid_t mem_type, uint64_t written, size_t n, const void* buf) {
  hsize_t start[1] = {written}, count[1] = {n}, size[1] = {written + n};
  herr_t st = H5Dset_extent(ds, size);
  hid_t file_space = H5Dget_space(ds);
  hid_t mem_space = H5Screate_simple(1, count, nullptr);
  if (st >= 0) st = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, nullptr, count, nullptr);
  if (st >= 0) st = H5Dwrite(ds, mem_type, mem_space, file_space, H5P_DEFAULT, buf);
  H5Sclose(mem_space);
  H5Sclose(file_space);
  return st;
}

}  // namespace

// ---- writer ------------------------------------------------------------------------------

ShardWriter::ShardWriter(std::string path, ShardInfo info)
    : path_(std::move(path)), tmp_path_(path_ + ".tmp"), info_(std::move(info)) {
  quiet_hdf5();
  if (info_.vocab_size > 65536)
    fail(path_, "vocab_size " + std::to_string(info_.vocab_size) + " does not fit uint16 ids");
  if (info_.doc_len < 0) fail(path_, "doc_len must be >= 0 (0: documents of any length), got " + std::to_string(info_.doc_len));
  // no object times: the same tokens make the same bytes, so a shard is checked by its sha256
  hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
  H5Pset_obj_track_times(fcpl, 0);
  file_ = H5Fcreate(tmp_path_.c_str(), H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
  H5Pclose(fcpl);
  if (file_ < 0) fail(tmp_path_, "cannot create shard file");
  tokens_ = create_growing(file_, "tokens", H5T_STD_U16LE);
  if (tokens_ < 0) fail(tmp_path_, "cannot create dataset 'tokens'");
  if (info_.loss_mask) {
    mask_ = create_growing(file_, "loss_mask", H5T_STD_U8LE);
    if (mask_ < 0) fail(tmp_path_, "cannot create dataset 'loss_mask'");
    mask_buf_.reserve(kFlushTokens);
  }
  buf_.reserve(kFlushTokens);
}

ShardWriter::~ShardWriter() {
  if (file_ < 0) return;
  H5Dclose(tokens_);
  if (mask_ >= 0) H5Dclose(mask_);
  H5Fclose(file_);
  std::error_code ec;
  fs::remove(tmp_path_, ec);
}

void ShardWriter::add_document(const uint32_t* ids, size_t n, const uint8_t* mask) {
  if (info_.doc_len > 0 && n != size_t(info_.doc_len))
    fail(path_, "a document of " + std::to_string(n) + " tokens in a shard of doc_len " + std::to_string(info_.doc_len));
  if (info_.loss_mask != (mask != nullptr))
    fail(path_, info_.loss_mask ? "a document without the loss mask this shard carries"
                                : "a loss mask for a shard written without one");
  doc_offsets_.push_back(int64_t(tokens()));
  auto push = [&](uint32_t id, uint8_t scored) {
    buf_.push_back(uint16_t(id));
    if (mask) mask_buf_.push_back(scored);
    if (buf_.size() == kFlushTokens) flush();
  };
  for (size_t i = 0; i < n; i++) {
    if (ids[i] >= uint32_t(info_.vocab_size))
      fail(path_, "token id " + std::to_string(ids[i]) + " >= vocab_size " + std::to_string(info_.vocab_size));
    if (mask && mask[i] > 1) fail(path_, "loss mask value " + std::to_string(mask[i]) + " (expected 0 or 1)");
    push(ids[i], mask ? mask[i] : 1);
  }
  if (info_.doc_len == 0) push(uint32_t(info_.eot), 1);
}

void ShardWriter::flush() {
  if (buf_.empty()) return;
  herr_t st = append(tokens_, H5T_NATIVE_UINT16, tokens_written_, buf_.size(), buf_.data());
  if (st < 0) fail(tmp_path_, "cannot write tokens (disk full?)");
  if (mask_ >= 0 && append(mask_, H5T_NATIVE_UINT8, tokens_written_, mask_buf_.size(), mask_buf_.data()) < 0)
    fail(tmp_path_, "cannot write loss_mask (disk full?)");
  tokens_written_ += buf_.size();
  buf_.clear();
  mask_buf_.clear();
}

void ShardWriter::finish() {
  flush();
  hsize_t n[1] = {doc_offsets_.size()};
  hid_t space = H5Screate_simple(1, n, nullptr);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_obj_track_times(dcpl, 0);
  hid_t ds = H5Dcreate2(file_, "doc_offsets", H5T_STD_I64LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Pclose(dcpl);
  herr_t st = ds < 0 ? -1 : 0;
  if (st >= 0 && n[0] > 0) st = H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, doc_offsets_.data());
  if (ds >= 0 && H5Dclose(ds) < 0) st = -1;
  H5Sclose(space);
  if (st < 0) fail(tmp_path_, "cannot write dataset 'doc_offsets'");
  try {
    write_int_attr(file_, "format_version", info_.format_version());
    write_string_attr(file_, "tokenizer", info_.tokenizer);
    write_int_attr(file_, "vocab_size", info_.vocab_size);
    write_int_attr(file_, "eot", info_.eot);
    if (info_.doc_len > 0) write_int_attr(file_, "doc_len", info_.doc_len);
  } catch (const std::exception& e) {
    fail(tmp_path_, e.what());
  }
  // closing the dataset flushes its chunk cache: a full disk shows here (issue 21: unchecked, a
  // shard with half its tokens zero was renamed into place)
  st = H5Dclose(tokens_);
  if (mask_ >= 0 && H5Dclose(mask_) < 0) st = -1;
  const herr_t fst = H5Fclose(file_);
  file_ = tokens_ = mask_ = -1;
  if (st < 0 || fst < 0) fail(tmp_path_, "cannot close shard file (disk full?)");
  // read back before the rename: what goes into place holds every token and document written
  try {
    ShardReader check(tmp_path_, info_.tokenizer, info_.vocab_size);
    if (check.size() != tokens_written_ || check.documents() != doc_offsets_.size() ||
        check.info().loss_mask != info_.loss_mask || check.info().doc_len != info_.doc_len)
      fail(tmp_path_, "read back " + std::to_string(check.size()) + " tokens, " + std::to_string(check.documents()) +
                          " documents; wrote " + std::to_string(tokens_written_) + ", " +
                          std::to_string(doc_offsets_.size()));
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove(tmp_path_, ec);
    throw;
  }
  std::error_code ec;
  fs::rename(tmp_path_, path_, ec);
  if (ec) fail(path_, "cannot rename from " + tmp_path_ + ": " + ec.message());
}

// ---- reader ------------------------------------------------------------------------------

ShardReader::ShardReader(const std::string& path, const std::string& tokenizer, int vocab_size) : path_(path) {
  quiet_hdf5();
  std::error_code ec;
  if (!fs::is_regular_file(path_, ec)) fail(path_, "no such shard file");
  // STRONG: closing the file closes every object still open in it, so a reader never pins a file
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
  file_ = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  if (file_ < 0 && H5Fis_hdf5(path_.c_str()) <= 0) fail(path_, "not an HDF5 file (corrupt shard?)");
  if (file_ < 0) fail(path_, "cannot open as HDF5 (truncated or corrupt shard?)");
  try {
    int version = read_int_attr(path_, file_, "format_version");
    if (version != kShardFormatVersion && version != kShardFormatVersionMasked)
      fail(path_, "unknown shard format_version " + std::to_string(version) + " (this build reads " +
                      std::to_string(kShardFormatVersion) + " and " + std::to_string(kShardFormatVersionMasked) + ")");
    info_.tokenizer = read_string_attr(path_, file_, "tokenizer");
    info_.vocab_size = read_int_attr(path_, file_, "vocab_size");
    info_.eot = read_int_attr(path_, file_, "eot");
    if (info_.tokenizer != tokenizer || info_.vocab_size != vocab_size)
      fail(path_, "made by tokenizer '" + info_.tokenizer + "' (" + std::to_string(info_.vocab_size) +
                      " ids) but the model expects '" + tokenizer + "' (" + std::to_string(vocab_size) + " ids)");
    hid_t dapl = H5Pcreate(H5P_DATASET_ACCESS);
    try {
      H5Pset_chunk_cache(dapl, kChunkCacheSlots, 0, 1.0);
      tokens_ = open_vector(path_, file_, "tokens", dapl, 2, false, &n_tokens_);
      hid_t dcpl = H5Dget_create_plist(tokens_);
      bool compressed = H5Pget_nfilters(dcpl) > 0;
      H5Pclose(dcpl);
      if (compressed) {  // reopen with a cache (the cache is fixed when a dataset is opened)
        H5Dclose(tokens_);
        tokens_ = -1;
        H5Pset_chunk_cache(dapl, kChunkCacheSlots, kCompressedCacheBytes, 1.0);
        tokens_ = open_vector(path_, file_, "tokens", dapl, 2, false, &n_tokens_);
        cache_bytes_ = kCompressedCacheBytes;
      }
    } catch (...) {
      H5Pclose(dapl);
      throw;
    }
    H5Pclose(dapl);
    H5Dclose(open_vector(path_, file_, "doc_offsets", H5P_DEFAULT, 8, true, &n_docs_));
    space_ = H5Dget_space(tokens_);
    if (H5Aexists(file_, "doc_len") > 0) {
      info_.doc_len = read_int_attr(path_, file_, "doc_len");
      if (info_.doc_len < 1 || n_tokens_ % uint64_t(info_.doc_len) != 0 ||
          n_docs_ != n_tokens_ / uint64_t(info_.doc_len))
        fail(path_, "doc_len " + std::to_string(info_.doc_len) + " does not divide its " + std::to_string(n_tokens_) +
                        " tokens into its " + std::to_string(n_docs_) + " documents");
    }
    if (H5Lexists(file_, "loss_mask", H5P_DEFAULT) > 0) {
      uint64_t n_mask = 0;
      mask_ = open_vector(path_, file_, "loss_mask", H5P_DEFAULT, 1, false, &n_mask);
      info_.loss_mask = true;
      if (n_mask != n_tokens_)
        fail(path_, "dataset 'loss_mask' holds " + std::to_string(n_mask) + " values for " +
                        std::to_string(n_tokens_) + " tokens");
    }
  } catch (...) {
    if (space_ >= 0) H5Sclose(space_);
    if (mask_ >= 0) H5Dclose(mask_);
    if (tokens_ >= 0) H5Dclose(tokens_);
    H5Fclose(file_);
    throw;
  }
}

ShardReader::~ShardReader() {
  H5Sclose(space_);
  if (mask_ >= 0) H5Dclose(mask_);
  H5Dclose(tokens_);
  H5Fclose(file_);
}

void ShardReader::read(uint64_t offset, size_t n, uint16_t* out) {
  quiet_hdf5();
  if (offset + n > n_tokens_)
    fail(path_, "read of tokens [" + std::to_string(offset) + ", " + std::to_string(offset + n) + ") past its " +
                    std::to_string(n_tokens_) + " tokens");
  hsize_t start[1] = {offset}, count[1] = {n};
  hid_t mem = H5Screate_simple(1, count, nullptr);
  herr_t st = H5Sselect_hyperslab(space_, H5S_SELECT_SET, start, nullptr, count, nullptr);
  if (st >= 0) st = H5Dread(tokens_, H5T_NATIVE_UINT16, mem, space_, H5P_DEFAULT, out);
  H5Sclose(mem);
  if (st < 0) fail(path_, "cannot read tokens at offset " + std::to_string(offset) + " (truncated or corrupt shard?)");
  uint16_t max = 0;
  for (size_t i = 0; i < n; i++) max = std::max(max, out[i]);  // vectorises; the search below runs only on failure
  if (max >= info_.vocab_size) {
    size_t i = 0;
    while (out[i] < info_.vocab_size) i++;
    fail(path_, "token id " + std::to_string(out[i]) + " >= vocab_size " + std::to_string(info_.vocab_size) +
                    " at offset " + std::to_string(offset + i));
  }
}

void ShardReader::read_mask(uint64_t offset, size_t n, uint8_t* out) {
  quiet_hdf5();
  if (mask_ < 0) fail(path_, "has no loss_mask");
  if (offset + n > n_tokens_)
    fail(path_, "read of loss_mask [" + std::to_string(offset) + ", " + std::to_string(offset + n) + ") past its " +
                    std::to_string(n_tokens_) + " values");
  hsize_t start[1] = {offset}, count[1] = {n};
  hid_t mem = H5Screate_simple(1, count, nullptr);
  hid_t space = H5Dget_space(mask_);
  herr_t st = H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr);
  if (st >= 0) st = H5Dread(mask_, H5T_NATIVE_UINT8, mem, space, H5P_DEFAULT, out);
  H5Sclose(space);
  H5Sclose(mem);
  if (st < 0) fail(path_, "cannot read loss_mask at offset " + std::to_string(offset) + " (truncated or corrupt shard?)");
  for (size_t i = 0; i < n; i++)
    if (out[i] > 1)
      fail(path_, "loss_mask value " + std::to_string(out[i]) + " (expected 0 or 1) at offset " +
                      std::to_string(offset + i));
}

std::vector<int64_t> ShardReader::doc_offsets() {
  quiet_hdf5();
  std::vector<int64_t> out(n_docs_);
  hid_t ds = H5Dopen2(file_, "doc_offsets", H5P_DEFAULT);
  herr_t st = ds < 0 ? -1 : 0;
  if (st >= 0 && !out.empty()) st = H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data());
  if (ds >= 0) H5Dclose(ds);
  if (st < 0) fail(path_, "cannot read dataset 'doc_offsets'");
  return out;
}

// ---- listing -----------------------------------------------------------------------------

std::vector<std::string> list_shards(const std::string& source) {
  auto is_shard = [](const std::string& p) { return p.size() > 3 && p.compare(p.size() - 3, 3, ".h5") == 0; };
  std::vector<std::string> out;
  std::error_code ec;
  if (fs::is_directory(source, ec)) {
    for (const auto& e : fs::directory_iterator(source, ec))
      if (e.is_regular_file() && is_shard(e.path().string())) out.push_back(e.path().string());
  } else if (source.find_first_of("*?[") != std::string::npos) {
    glob_t g;
    if (glob(source.c_str(), 0, nullptr, &g) == 0)
      for (size_t i = 0; i < g.gl_pathc; i++)
        if (is_shard(g.gl_pathv[i])) out.push_back(g.gl_pathv[i]);
    globfree(&g);
  } else {
    if (!fs::exists(source, ec)) fail(source, "no such shard file or directory");
    out.push_back(source);
  }
  if (out.empty()) fail(source, "no .h5 shards found");
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace data
