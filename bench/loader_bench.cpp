// Loader throughput: windows/s through next() (prefetch thread included) for B=8, T=1024 on a
// synthetic GPT-2-vocab dataset, shuffled and in order, with few and with many shards (more shards
// than the loader keeps open: the cost of reopening). Max RSS shows that memory stays bounded.
// usage: loader_bench [--tokens N] [--out FILE]   (default 64M tokens: 128 MB of shards in /tmp)
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "common/json.h"
#include "data/loader.h"
#include "data/shard.h"

namespace fs = std::filesystem;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// `shards` shards holding `tokens` random GPT-2 ids in total, in documents of ~1000 tokens.
void make_dataset(const fs::path& dir, uint64_t tokens, int shards) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::mt19937 rng(1);
  std::vector<uint32_t> doc(999);
  for (int s = 0; s < shards; s++) {
    char name[32];
    std::snprintf(name, sizeof name, "shard_%05d.h5", s);
    data::ShardWriter w((dir / name).string(), {"gpt2", 50257, 50256});
    while (w.tokens() < tokens / shards) {
      for (auto& t : doc) t = rng() % 50256;
      w.add_document(doc.data(), doc.size());
    }
    w.finish();
  }
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t tokens = 64ull << 20;
  std::string out_path = "loader_bench.json";
  for (int i = 1; i + 1 < argc; i++) {
    std::string a = argv[i];
    if (a == "--out") out_path = argv[++i];
    else if (a == "--tokens") tokens = std::stoull(argv[++i]);
  }
  const int B = 8, T = 1024;
  const fs::path root = fs::temp_directory_path() / "kvmtrain_loader_bench";
  std::printf("dataset: %.1fM random GPT-2 ids; B=%d, T=%d\n\n%-7s %-9s %10s %12s %12s %10s\n", tokens / 1e6, B, T,
              "shards", "order", "windows", "windows/s", "Mtok/s", "setup s");
  json::Array rows;
  std::vector<int32_t> batch(size_t(B) * (T + 1));
  for (int shards : {4, 16}) {
    const fs::path dir = root / std::to_string(shards);
    make_dataset(dir, tokens, shards);
    for (bool shuffle : {true, false}) {
      double t0 = now();
      data::Loader l({{{dir.string(), 1.0}}, B, T, 42, 0, 1, shuffle, "gpt2", 50257});
      double setup = now() - t0;
      const uint64_t batches = std::min<uint64_t>(l.windows_per_epoch() / B, 4000);
      t0 = now();
      for (uint64_t i = 0; i < batches; i++) l.next(batch.data());
      double dt = now() - t0, wps = batches * B / dt;
      std::printf("%-7d %-9s %10llu %12.0f %12.1f %10.3f\n", shards, shuffle ? "shuffled" : "in order",
                  (unsigned long long)(batches * B), wps, wps * (T + 1) / 1e6, setup);
      json::Object row{{"shards", shards}, {"shuffle", shuffle}, {"batch_size", B}, {"seq_len", T},
                       {"windows", batches * B}, {"windows_per_s", wps}, {"setup_s", setup}};
      rows.emplace_back(std::move(row));
    }
  }
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("\nmax RSS %.0f MiB (dataset %.0f MiB on disk)\n", ru.ru_maxrss / 1024.0, tokens * 2 / 1048576.0);
  fs::remove_all(root);
  json::Object result{{"bench", "loader"}, {"tokens", tokens}, {"max_rss_mib", ru.ru_maxrss / 1024.0}};
  result["rows"] = std::move(rows);
  std::ofstream(out_path) << json::dump(result, 2) << "\n";
  std::printf("wrote %s\n", out_path.c_str());
  return 0;
}
