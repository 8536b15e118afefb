// The strict JSON parser of json.h: recursive descent over bytes, depth and value count bounded.
#include "fusedrnn/json.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <locale>
#include <sstream>

#if __has_include(<charconv>)
#include <charconv>
#endif

namespace fusedrnn {

namespace {

const char* kind_name(JsonValue::Kind k) {
  switch (k) {
    case JsonValue::Kind::null: return "null";
    case JsonValue::Kind::boolean: return "a boolean";
    case JsonValue::Kind::number: return "a number";
    case JsonValue::Kind::string: return "a string";
    case JsonValue::Kind::array: return "an array";
    default: return "an object";
  }
}

[[noreturn]] void wrong_kind(JsonValue::Kind have, const char* want) {
  throw JsonError(std::string("JSON value is ") + kind_name(have) + ", not " + want);
}

// Parses the decimal text of a JSON number (already checked against the grammar) as a double.
bool to_double(const char* b, const char* e, double& out) {
#if defined(__cpp_lib_to_chars) && __cpp_lib_to_chars >= 201611L
  const auto r = std::from_chars(b, e, out);
  return r.ec == std::errc() && r.ptr == e && std::isfinite(out);
#else
  std::istringstream in(std::string(b, e));
  in.imbue(std::locale::classic());  // never the global locale's decimal separator
  in >> out;
  return !in.fail() && std::isfinite(out);
#endif
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// JsonValue accessors

bool JsonValue::as_bool() const {
  if (kind_ != Kind::boolean) wrong_kind(kind_, "a boolean");
  return bool_;
}
double JsonValue::as_double() const {
  if (kind_ != Kind::number) wrong_kind(kind_, "a number");
  return number_;
}
std::int64_t JsonValue::as_int() const {
  if (kind_ != Kind::number) wrong_kind(kind_, "an integer");
  if (!integer_) throw JsonError("JSON number is not an integer within int64");
  return int_;
}
const std::string& JsonValue::as_string() const {
  if (kind_ != Kind::string) wrong_kind(kind_, "a string");
  return string_;
}
std::size_t JsonValue::size() const {
  if (kind_ != Kind::array && kind_ != Kind::object) wrong_kind(kind_, "an array or object");
  return items_.size();
}
const JsonValue& JsonValue::operator[](std::size_t i) const {
  if (i >= size()) throw JsonError("JSON index " + std::to_string(i) + " out of range");
  return items_[i];
}
const std::string& JsonValue::key(std::size_t i) const {
  if (kind_ != Kind::object) wrong_kind(kind_, "an object");
  if (i >= keys_.size()) throw JsonError("JSON index " + std::to_string(i) + " out of range");
  return keys_[i];
}
const JsonValue* JsonValue::find(std::string_view key) const {
  if (kind_ != Kind::object) wrong_kind(kind_, "an object");
  for (std::size_t i = 0; i < keys_.size(); ++i)
    if (keys_[i] == key) return &items_[i];
  return nullptr;
}
const JsonValue& JsonValue::at(std::string_view key) const {
  const JsonValue* v = find(key);
  if (!v) throw JsonError("JSON object has no key \"" + std::string(key) + "\"");
  return *v;
}

namespace {

void dump_string(const std::string& s, std::string& out) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
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
  out += '"';
}

void dump_value(const JsonValue& v, std::string& out) {
  switch (v.kind()) {
    case JsonValue::Kind::null: out += "null"; break;
    case JsonValue::Kind::boolean: out += v.as_bool() ? "true" : "false"; break;
    case JsonValue::Kind::number:
      if (v.is_integer()) {
        out += std::to_string(v.as_int());
      } else {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.17g", v.as_double());
        // The C locale of snprintf may use a decimal comma; JSON needs a point.
        for (char* p = buf; *p; ++p)
          if (*p == ',') *p = '.';
        out += buf;
      }
      break;
    case JsonValue::Kind::string: dump_string(v.as_string(), out); break;
    case JsonValue::Kind::array:
      out += '[';
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (i) out += ',';
        dump_value(v[i], out);
      }
      out += ']';
      break;
    case JsonValue::Kind::object:
      out += '{';
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (i) out += ',';
        dump_string(v.key(i), out);
        out += ':';
        dump_value(v[i], out);
      }
      out += '}';
      break;
  }
}

}  // namespace

std::string JsonValue::dump() const {
  std::string out;
  dump_value(*this, out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Parser

class JsonParser {
 public:
  JsonParser(std::string_view text, const JsonLimits& limits) : s_(text), limits_(limits) {}

  JsonValue parse() {
    JsonValue v;
    skip_ws();
    value(v, 0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected text after the JSON value");
    return v;
  }

 private:
  std::string_view s_;
  JsonLimits limits_;
  std::size_t pos_ = 0;
  std::size_t values_ = 0;

  [[noreturn]] void fail(const std::string& what) const { fail_at(what, pos_); }
  [[noreturn]] void fail_at(const std::string& what, std::size_t at) const {
    throw JsonError("JSON: " + what + " at byte " + std::to_string(at));
  }

  bool at_end() const { return pos_ >= s_.size(); }
  unsigned char peek() const { return static_cast<unsigned char>(s_[pos_]); }

  void skip_ws() {
    while (!at_end()) {
      const char c = s_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  void expect_literal(const char* lit) {
    const std::size_t n = std::strlen(lit);
    if (s_.compare(pos_, n, lit) != 0) fail("invalid literal");
    pos_ += n;
  }

  void value(JsonValue& v, std::size_t depth) {
    if (++values_ > limits_.max_values)
      fail("more than " + std::to_string(limits_.max_values) + " values");
    if (at_end()) fail("unexpected end of text, expected a value");
    switch (peek()) {
      case '{': object(v, depth + 1); break;
      case '[': array(v, depth + 1); break;
      case '"':
        v.kind_ = JsonValue::Kind::string;
        string(v.string_);
        break;
      case 't':
        expect_literal("true");
        v.kind_ = JsonValue::Kind::boolean;
        v.bool_ = true;
        break;
      case 'f':
        expect_literal("false");
        v.kind_ = JsonValue::Kind::boolean;
        v.bool_ = false;
        break;
      case 'n':
        expect_literal("null");
        v.kind_ = JsonValue::Kind::null;
        break;
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9'))
          number(v);
        else
          fail("unexpected character, expected a value");
    }
  }

  void check_depth(std::size_t depth) {
    if (depth > limits_.max_depth)
      fail("nesting deeper than " + std::to_string(limits_.max_depth));
  }

  void array(JsonValue& v, std::size_t depth) {
    check_depth(depth);
    v.kind_ = JsonValue::Kind::array;
    ++pos_;  // [
    skip_ws();
    if (!at_end() && peek() == ']') {
      ++pos_;
      return;
    }
    for (;;) {
      skip_ws();
      v.items_.emplace_back();
      value(v.items_.back(), depth);
      skip_ws();
      if (at_end()) fail("unexpected end of text in an array");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return;
      }
      fail("expected ',' or ']' in an array");
    }
  }

  void object(JsonValue& v, std::size_t depth) {
    check_depth(depth);
    v.kind_ = JsonValue::Kind::object;
    const std::size_t start = pos_;
    ++pos_;  // {
    skip_ws();
    if (!at_end() && peek() == '}') {
      ++pos_;
      return;
    }
    for (;;) {
      skip_ws();
      if (at_end() || peek() != '"') fail("expected a string key in an object");
      v.keys_.emplace_back();
      string(v.keys_.back());
      skip_ws();
      if (at_end() || peek() != ':') fail("expected ':' after an object key");
      ++pos_;
      skip_ws();
      v.items_.emplace_back();
      value(v.items_.back(), depth);
      skip_ws();
      if (at_end()) fail("unexpected end of text in an object");
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        break;
      }
      fail("expected ',' or '}' in an object");
    }
    // Duplicate keys: sort a copy (n log n, whatever the object's size).
    std::vector<const std::string*> keys;
    keys.reserve(v.keys_.size());
    for (const std::string& k : v.keys_) keys.push_back(&k);
    std::sort(keys.begin(), keys.end(),
              [](const std::string* a, const std::string* b) { return *a < *b; });
    for (std::size_t i = 1; i < keys.size(); ++i)
      if (*keys[i] == *keys[i - 1]) fail_at("duplicate key \"" + *keys[i] + "\" in the object", start);
  }

  unsigned hex4() {
    if (s_.size() - pos_ < 4) fail("truncated \\u escape");
    unsigned u = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_++];
      u <<= 4;
      if (c >= '0' && c <= '9')
        u |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f')
        u |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        u |= unsigned(c - 'A' + 10);
      else
        fail("invalid hex digit in a \\u escape");
    }
    return u;
  }

  static void append_utf8(std::string& out, unsigned cp) {
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

  // One UTF-8 encoded character starting at pos_ (lead byte >= 0x80), validated and copied.
  void utf8_char(std::string& out) {
    const std::size_t start = pos_;
    const unsigned char c0 = peek();
    int n;
    unsigned cp, min;
    if (c0 >= 0xC2 && c0 <= 0xDF) {
      n = 1, cp = c0 & 0x1F, min = 0x80;
    } else if (c0 >= 0xE0 && c0 <= 0xEF) {
      n = 2, cp = c0 & 0x0F, min = 0x800;
    } else if (c0 >= 0xF0 && c0 <= 0xF4) {
      n = 3, cp = c0 & 0x07, min = 0x10000;
    } else {
      fail("invalid UTF-8 lead byte");
    }
    if (s_.size() - pos_ < std::size_t(n) + 1) fail("truncated UTF-8 sequence");
    for (int i = 1; i <= n; ++i) {
      const unsigned char c = static_cast<unsigned char>(s_[pos_ + i]);
      if ((c & 0xC0) != 0x80) fail("invalid UTF-8 continuation byte");
      cp = (cp << 6) | (c & 0x3F);
    }
    if (cp < min) fail("overlong UTF-8 sequence");
    if (cp >= 0xD800 && cp <= 0xDFFF) fail("UTF-8 encoded surrogate");
    if (cp > 0x10FFFF) fail("UTF-8 code point above U+10FFFF");
    pos_ += n + 1;
    out.append(s_.data() + start, n + 1);
  }

  void string(std::string& out) {
    ++pos_;  // opening quote
    for (;;) {
      if (at_end()) fail("unterminated string");
      const unsigned char c = peek();
      if (c == '"') {
        ++pos_;
        return;
      }
      if (c < 0x20) fail("control character in a string");
      if (c >= 0x80) {
        utf8_char(out);
        continue;
      }
      if (c != '\\') {
        out += char(c);
        ++pos_;
        continue;
      }
      ++pos_;  // backslash
      if (at_end()) fail("unterminated escape");
      const char e = s_[pos_++];
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
          unsigned cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in a \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.size() - pos_ < 2 || s_[pos_] != '\\' || s_[pos_ + 1] != 'u')
              fail("lone high surrogate in a \\u escape");
            pos_ += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("high surrogate not followed by a low one");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail("invalid escape character");
      }
    }
  }

  void number(JsonValue& v) {
    const std::size_t start = pos_;
    auto digit = [&] { return !at_end() && peek() >= '0' && peek() <= '9'; };
    if (peek() == '-') ++pos_;
    if (!digit()) fail("expected a digit");
    if (peek() == '0') {
      ++pos_;
      if (digit()) fail("leading zero in a number");
    } else {
      while (digit()) ++pos_;
    }
    bool integer = true;
    if (!at_end() && peek() == '.') {
      integer = false;
      ++pos_;
      if (!digit()) fail("expected a digit after the decimal point");
      while (digit()) ++pos_;
    }
    if (!at_end() && (peek() == 'e' || peek() == 'E')) {
      integer = false;
      ++pos_;
      if (!at_end() && (peek() == '+' || peek() == '-')) ++pos_;
      if (!digit()) fail("expected a digit in the exponent");
      while (digit()) ++pos_;
    }
    const char* b = s_.data() + start;
    const char* e = s_.data() + pos_;
    v.kind_ = JsonValue::Kind::number;
    if (integer) {
      // Exact int64 when it fits (checked digit by digit); else only the double.
      std::int64_t acc = 0;
      bool fits = true;
      const bool neg = *b == '-';
      for (const char* p = b + (neg ? 1 : 0); p < e; ++p) {
        const int d = *p - '0';
        // acc*10 + d (or - d) without overflow
        if (!neg ? acc > (std::numeric_limits<std::int64_t>::max() - d) / 10
                 : acc < (std::numeric_limits<std::int64_t>::min() + d) / 10) {
          fits = false;
          break;
        }
        acc = neg ? acc * 10 - d : acc * 10 + d;
      }
      if (fits) {
        v.integer_ = true;
        v.int_ = acc;
        v.number_ = double(acc);
        return;
      }
    }
    if (!to_double(b, e, v.number_)) fail_at("number out of the range of a double", start);
  }
};

JsonValue parse_json(std::string_view text, const JsonLimits& limits) {
  return JsonParser(text, limits).parse();
}

}  // namespace fusedrnn
