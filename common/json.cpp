#include "common/json.h"

#include <cmath>
#include <cstdio>
#include <cstring>

namespace json {

namespace {

[[noreturn]] void type_error(const char* want) {
  throw std::runtime_error(std::string("json: expected ") + want);
}

struct Parser {
  const std::string& s;
  size_t i = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("json: " + what + " at offset " + std::to_string(i));
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) i++;
  }
  char peek() {
    ws();
    if (i >= s.size()) fail("unexpected end of input");
    return s[i];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    i++;
  }
  void literal(const char* word) {
    size_t n = std::strlen(word);
    if (s.compare(i, n, word) != 0) fail(std::string("expected ") + word);
    i += n;
  }
  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (i + 4 > s.size()) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
      char c = s[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else fail("bad \\u escape");
    }
    return v;
  }
  std::string str() {
    expect('"');
    std::string out;
    while (true) {
      if (i >= s.size()) fail("unterminated string");
      char c = s[i++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i >= s.size()) fail("unterminated escape");
      char e = s[i++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && i + 1 < s.size() && s[i] == '\\' && s[i + 1] == 'u') {
            i += 2;
            uint32_t lo = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
  }
  Value value() {
    char c = peek();
    if (c == '{') {
      i++;
      Object o;
      if (peek() == '}') { i++; return o; }
      while (true) {
        std::string k = str();
        expect(':');
        o[k] = value();
        char d = peek();
        i++;
        if (d == '}') return o;
        if (d != ',') fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      i++;
      Array a;
      if (peek() == ']') { i++; return a; }
      while (true) {
        a.push_back(value());
        char d = peek();
        i++;
        if (d == ']') return a;
        if (d != ',') fail("expected ',' or ']'");
      }
    }
    if (c == '"') return str();
    if (c == 't') { literal("true"); return true; }
    if (c == 'f') { literal("false"); return false; }
    if (c == 'n') { literal("null"); return nullptr; }
    const char* begin = s.c_str() + i;
    char* end = nullptr;
    double d = std::strtod(begin, &end);
    if (end == begin) fail("unexpected character");
    i += size_t(end - begin);
    return d;
  }
};

void dump_into(std::string& out, const Value& v, int indent, int depth) {
  auto newline = [&](int d) {
    if (indent > 0) {
      out += '\n';
      out.append(size_t(indent * d), ' ');
    }
  };
  if (v.is_null()) {
    out += "null";
  } else if (auto b = std::get_if<bool>(&v.v)) {
    out += *b ? "true" : "false";
  } else if (auto d = std::get_if<double>(&v.v)) {
    char buf[32];
    if (!std::isfinite(*d)) std::snprintf(buf, sizeof buf, "null");
    else if (*d == std::floor(*d) && std::fabs(*d) < 9.007199254740992e15) std::snprintf(buf, sizeof buf, "%.0f", *d);
    else std::snprintf(buf, sizeof buf, "%.9g", *d);
    out += buf;
  } else if (auto s = std::get_if<std::string>(&v.v)) {
    out += quote(*s);
  } else if (auto a = std::get_if<Array>(&v.v)) {
    out += '[';
    for (size_t k = 0; k < a->size(); k++) {
      if (k) out += indent > 0 ? "," : ",";
      newline(depth + 1);
      dump_into(out, (*a)[k], indent, depth + 1);
    }
    if (!a->empty()) newline(depth);
    out += ']';
  } else if (auto o = std::get_if<Object>(&v.v)) {
    out += '{';
    bool first = true;
    for (const auto& [k, x] : *o) {
      if (!first) out += ',';
      first = false;
      newline(depth + 1);
      out += quote(k);
      out += indent > 0 ? ": " : ":";
      dump_into(out, x, indent, depth + 1);
    }
    if (!o->empty()) newline(depth);
    out += '}';
  }
}

}  // namespace

double Value::number() const {
  if (auto d = std::get_if<double>(&v)) return *d;
  type_error("a number");
}
int64_t Value::integer() const {
  double d = number();
  if (d != std::floor(d)) type_error("an integer");
  return int64_t(d);
}
bool Value::boolean() const {
  if (auto b = std::get_if<bool>(&v)) return *b;
  type_error("a boolean");
}
const std::string& Value::string() const {
  if (auto s = std::get_if<std::string>(&v)) return *s;
  type_error("a string");
}
const Array& Value::array() const {
  if (auto a = std::get_if<Array>(&v)) return *a;
  type_error("an array");
}
const Object& Value::object() const {
  if (auto o = std::get_if<Object>(&v)) return *o;
  type_error("an object");
}
Object& Value::object() {
  if (auto o = std::get_if<Object>(&v)) return *o;
  type_error("an object");
}
const Value& Value::at(const std::string& key) const {
  const Object& o = object();
  auto it = o.find(key);
  if (it == o.end()) throw std::runtime_error("json: missing key \"" + key + "\"");
  return it->second;
}
bool Value::contains(const std::string& key) const {
  return is_object() && object().count(key) > 0;
}

Value parse(const std::string& text) {
  Parser p{text};
  Value v = p.value();
  p.ws();
  if (p.i != text.size()) p.fail("trailing characters");
  return v;
}

std::string dump(const Value& value, int indent) {
  std::string out;
  dump_into(out, value, indent, 0);
  return out;
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += char(c);
        }
    }
  }
  return out + "\"";
}

}  // namespace json
