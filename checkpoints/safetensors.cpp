#include "checkpoints/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <stdexcept>

#include "common/file_io.h"
#include "common/json.h"
#include "kernels/bf16.h"

namespace ckpt {

namespace {

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void put_u64(std::string& s, uint64_t x) {
  for (int i = 0; i < 8; i++) s.push_back(char((x >> (8 * i)) & 0xff));
}

float f16_to_fp32(uint16_t h) {
  const uint32_t sign = uint32_t(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float mag;
  if (exp == 0) mag = std::ldexp(float(man), -24);                       // subnormal
  else if (exp == 31) mag = man ? NAN : INFINITY;
  else mag = std::ldexp(float(man | 0x400), int(exp) - 25);
  uint32_t bits;
  std::memcpy(&bits, &mag, 4);
  bits |= sign;
  std::memcpy(&mag, &bits, 4);
  return mag;
}

}  // namespace

uint16_t fp32_to_bf16(float x) { return kernels::bf16_round_nearest(x).bits; }

float bf16_to_fp32(uint16_t h) { return kernels::bf16_to_float(kernels::bf16{h}); }

const NamedTensor* SafetensorsFile::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const NamedTensor& SafetensorsFile::at(const std::string& name) const {
  const NamedTensor* t = find(name);
  if (!t) throw std::runtime_error("no tensor named " + name);
  return *t;
}

std::string safetensors_bytes(const std::vector<NamedTensor>& tensors, DType dtype,
                              const std::map<std::string, std::string>& metadata) {
  const size_t elem = dtype == DType::F32 ? 4 : 2;
  // The header is written by hand, in tensor order (readers sort nothing; this keeps it readable).
  std::string text = "{";
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__" || !seen.insert(t.name).second)
      throw std::runtime_error("safetensors: duplicate or reserved tensor name " + t.name);
    if (numel(t.shape) != int64_t(t.data.size()))
      throw std::runtime_error("safetensors: tensor " + t.name + " has " + std::to_string(t.data.size()) +
                               " values but its shape holds " + std::to_string(numel(t.shape)));
    const uint64_t end = offset + t.data.size() * elem;
    if (text.size() > 1) text += ",";
    text += json::quote(t.name) + ":{\"dtype\":\"" + (dtype == DType::F32 ? "F32" : "BF16") + "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); i++) {
      if (i) text += ',';
      text += std::to_string(t.shape[i]);
    }
    text += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(end) + "]}";
    offset = end;
  }
  if (!metadata.empty()) {
    if (text.size() > 1) text += ',';
    text += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) text += ',';
      text += json::quote(k);
      text += ':';
      text += json::quote(v);
      first = false;
    }
    text += "}";
  }
  text += "}";
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  std::string out;
  out.reserve(8 + text.size() + offset);
  put_u64(out, text.size());
  out += text;
  for (const auto& t : tensors) {
    if (dtype == DType::F32) {
      out.append(reinterpret_cast<const char*>(t.data.data()), t.data.size() * 4);  // little-endian host
    } else {
      for (float x : t.data) {
        uint16_t h = fp32_to_bf16(x);
        out.push_back(char(h & 0xff));
        out.push_back(char(h >> 8));
      }
    }
  }
  return out;
}

SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& origin) {
  auto bad = [&](const std::string& what) { return std::runtime_error(origin + ": not a valid safetensors file: " + what); };
  if (bytes.size() < 8) throw bad("shorter than its 8-byte header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; i++) n |= uint64_t(uint8_t(bytes[i])) << (8 * i);
  if (n > bytes.size() - 8) throw bad("header length " + std::to_string(n) + " exceeds the file");
  json::Value header;
  try {
    header = json::parse(bytes.substr(8, n));
  } catch (const std::exception& e) {
    throw bad(std::string("header: ") + e.what());
  }
  if (!header.is_object()) throw bad("header is not a JSON object");
  const size_t data0 = 8 + n, data_size = bytes.size() - data0;
  SafetensorsFile f;
  struct Span { uint64_t begin, end; size_t index; };
  std::vector<Span> spans;
  for (const auto& [name, entry] : header.object()) {
    if (name == "__metadata__") {
      for (const auto& [k, v] : entry.object()) {
        if (!v.is_string()) throw bad("__metadata__." + k + " is not a string");
        f.metadata[k] = v.string();
      }
      continue;
    }
    try {
      NamedTensor t;
      t.name = name;
      for (const auto& d : entry.at("shape").array()) {
        if (d.integer() < 0) throw bad("tensor " + name + " has a negative dimension");
        t.shape.push_back(d.integer());
      }
      const std::string& dtype = entry.at("dtype").string();
      size_t elem = dtype == "F32" ? 4 : (dtype == "BF16" || dtype == "F16") ? 2 : 0;
      if (!elem) throw bad("tensor " + name + " has dtype " + dtype + " (expected F32, BF16 or F16)");
      const auto& off = entry.at("data_offsets").array();
      if (off.size() != 2) throw bad("tensor " + name + ": data_offsets must be [begin, end]");
      uint64_t b = uint64_t(off[0].integer()), e = uint64_t(off[1].integer());
      uint64_t count = uint64_t(numel(t.shape));
      if (e < b || e > data_size || e - b != count * elem)
        throw bad("tensor " + name + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                  ") do not hold its shape in " + dtype + " within " + std::to_string(data_size) + " data bytes");
      t.data.resize(count);
      const char* p = bytes.data() + data0 + b;
      if (elem == 4) {
        std::memcpy(t.data.data(), p, count * 4);
      } else {
        for (uint64_t i = 0; i < count; i++) {
          uint16_t h = uint16_t(uint8_t(p[2 * i]) | (uint16_t(uint8_t(p[2 * i + 1])) << 8));
          t.data[i] = dtype == "BF16" ? bf16_to_fp32(h) : f16_to_fp32(h);
        }
      }
      spans.push_back({b, e, f.tensors.size()});
      f.tensors.push_back(std::move(t));
    } catch (const std::runtime_error& e) {
      std::string what = e.what();
      if (what.rfind(origin, 0) == 0) throw;
      throw bad("tensor " + name + ": " + what);
    }
  }
  // the data must be exactly covered, without holes or overlaps
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  uint64_t at = 0;
  for (const auto& s : spans) {
    if (s.begin != at) throw bad("tensor data is not contiguous at byte " + std::to_string(at));
    at = s.end;
  }
  if (at != data_size) throw bad("the data holds " + std::to_string(data_size - at) + " bytes after the last tensor");
  std::vector<NamedTensor> ordered;
  for (const auto& s : spans) ordered.push_back(std::move(f.tensors[s.index]));
  f.tensors = std::move(ordered);
  return f;
}

SafetensorsFile read_safetensors(const std::string& path) { return parse_safetensors(read_file(path), path); }

}  // namespace ckpt
