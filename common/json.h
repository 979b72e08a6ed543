#pragma once
// A small JSON value with a strict parser and a writer: enough for manifests, the tokenizer's
// encoder.json and the JSONL training log. Objects keep their keys sorted (std::map).
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace json {

struct Value;
using Array = std::vector<Value>;
using Object = std::map<std::string, Value>;

struct Value {
  std::variant<std::nullptr_t, bool, double, std::string, Array, Object> v;

  Value() : v(nullptr) {}
  Value(std::nullptr_t) : v(nullptr) {}
  Value(bool b) : v(b) {}
  Value(double d) : v(d) {}
  Value(int i) : v(double(i)) {}
  Value(int64_t i) : v(double(i)) {}
  Value(uint64_t i) : v(double(i)) {}
  Value(const char* s) : v(std::string(s)) {}
  Value(std::string s) : v(std::move(s)) {}
  Value(Array a) : v(std::move(a)) {}
  Value(Object o) : v(std::move(o)) {}

  bool is_null() const { return std::holds_alternative<std::nullptr_t>(v); }
  bool is_number() const { return std::holds_alternative<double>(v); }
  bool is_string() const { return std::holds_alternative<std::string>(v); }
  bool is_array() const { return std::holds_alternative<Array>(v); }
  bool is_object() const { return std::holds_alternative<Object>(v); }

  // Typed access; throws std::runtime_error naming the expected type.
  double number() const;
  int64_t integer() const;
  bool boolean() const;
  const std::string& string() const;
  const Array& array() const;
  const Object& object() const;
  Object& object();
  // Object member; throws naming the key when it is missing.
  const Value& at(const std::string& key) const;
  bool contains(const std::string& key) const;
};

// Throws std::runtime_error("json: ... at offset N") on malformed input.
Value parse(const std::string& text);
// Compact one-line form (what JSONL wants); indent > 0 pretty-prints.
std::string dump(const Value& value, int indent = 0);
// Escapes a string for embedding in JSON, quotes included.
std::string quote(const std::string& s);

}  // namespace json
