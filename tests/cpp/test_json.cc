// Tests of fusedrnn::parse_json (json.h): what RFC 8259 allows parses to the right values,
// everything else throws JsonError (with the byte offset), limits hold, dump() round-trips.
// Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
#include <fusedrnn/json.h>

#include <cstdio>
#include <string>
#include <vector>

using fusedrnn::JsonError;
using fusedrnn::JsonValue;
using fusedrnn::parse_json;

namespace {

int g_passed = 0, g_failed = 0;

void report(bool ok, const std::string& what, const std::string& detail = "") {
  std::printf("%-4s %-58s %s\n", ok ? "ok" : "FAIL", what.c_str(), detail.c_str());
  ++(ok ? g_passed : g_failed);
}

std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F) {
      out += char(c);
    } else {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    }
  }
  return out;
}

void expect_invalid(const std::string& text, const std::string& needle,
                    const fusedrnn::JsonLimits& limits = {}) {
  std::string got = "parsed";
  bool ok = false;
  try {
    parse_json(text, limits);
  } catch (const JsonError& e) {
    got = e.what();
    ok = got.find(needle) != std::string::npos && got.find(" at byte ") != std::string::npos;
  }
  report(ok, "rejects " + printable(text.substr(0, 40)), ok ? "" : "(" + got + ")");
}

void expect_dump(const std::string& text, const std::string& want) {
  std::string got;
  try {
    got = parse_json(text).dump();
  } catch (const JsonError& e) {
    got = std::string("error: ") + e.what();
  }
  report(got == want, "parses " + printable(text.substr(0, 40)), got == want ? "" : "(" + got + ")");
}

}  // namespace

int main() {
  // Values and their canonical dump.
  expect_dump(" {\"a\" : [1, -2, 3.5, -0.0, 1e3, 2E-2, true, false, null, \"x\"]} \n\t",
              "{\"a\":[1,-2,3.5,-0,1000,0.02,true,false,null,\"x\"]}");
  expect_dump("[]", "[]");
  expect_dump("{}", "{}");
  expect_dump("\"\"", "\"\"");
  expect_dump("0", "0");
  expect_dump("9223372036854775807", "9223372036854775807");
  expect_dump("-9223372036854775808", "-9223372036854775808");
  expect_dump("9223372036854775808", "9.2233720368547758e+18");  // beyond int64: a double
  expect_dump("[[[[[[1]]]]]]", "[[[[[[1]]]]]]");
  // Escapes and UTF-8.
  {
    const JsonValue v = parse_json(R"(["\"\\\/\b\f\n\r\t", "\u00e9\u20ac\ud83d\ude00", "é€😀"])");
    const std::string s0 = v[0].as_string(), s1 = v[1].as_string(), s2 = v[2].as_string();
    report(s0 == "\"\\/\b\f\n\r\t", "escapes decode");
    report(s1 == "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80" && s1 == s2,
           "\\u escapes (surrogate pair) decode to the same UTF-8 as raw text");
  }
  // Accessors.
  {
    const JsonValue v = parse_json(R"({"i": 42, "f": 0.5, "s": "t", "b": true, "a": [1, 2]})");
    bool ok = v.size() == 5 && v.key(0) == "i" && v.at("i").as_int() == 42 &&
              v.at("i").is_integer() && !v.at("f").is_integer() && v.at("f").as_double() == 0.5 &&
              v.at("s").as_string() == "t" && v.at("b").as_bool() && v.at("a").size() == 2 &&
              v.at("a")[1].as_int() == 2 && v.find("nope") == nullptr;
    report(ok, "accessors");
    int thrown = 0;
    for (auto f : {+[](const JsonValue& x) { x.at("s").as_int(); },
                   +[](const JsonValue& x) { x.at("f").as_int(); },
                   +[](const JsonValue& x) { x.at("i").as_string(); },
                   +[](const JsonValue& x) { x.at("a")[2]; },
                   +[](const JsonValue& x) { x.at("missing"); },
                   +[](const JsonValue& x) { x.at("i").size(); }}) {
      try {
        f(v);
      } catch (const JsonError&) {
        ++thrown;
      }
    }
    report(thrown == 6, "wrong-kind access throws JsonError", std::to_string(thrown) + "/6");
  }

  // Invalid documents.
  expect_invalid("", "unexpected end");
  expect_invalid("  ", "unexpected end");
  expect_invalid("{", "expected a string key");
  expect_invalid("{\"a\":1,}", "expected a string key");
  expect_invalid("[1,]", "expected a value");
  expect_invalid("[1 2]", "expected ',' or ']'");
  expect_invalid("{\"a\" 1}", "expected ':'");
  expect_invalid("{\"a\":1 \"b\":2}", "expected ',' or '}'");
  expect_invalid("{a:1}", "expected a string key");
  expect_invalid("{\"a\":1}{}", "unexpected text after");
  expect_invalid("{\"a\":1, \"a\":2}", "duplicate key \"a\"");
  expect_invalid("{\"k\":{\"x\":1,\"y\":2,\"x\":3}}", "duplicate key \"x\"");
  expect_invalid("01", "leading zero");
  expect_invalid("-", "expected a digit");
  expect_invalid("1.", "expected a digit after the decimal point");
  expect_invalid(".5", "unexpected character");
  expect_invalid("1e", "expected a digit in the exponent");
  expect_invalid("+1", "unexpected character");
  expect_invalid("1e999", "out of the range");
  expect_invalid("NaN", "unexpected character");
  expect_invalid("Infinity", "unexpected character");
  expect_invalid("-Infinity", "expected a digit");
  expect_invalid("tru", "invalid literal");
  expect_invalid("nul", "invalid literal");
  expect_invalid("\"abc", "unterminated string");
  expect_invalid("\"a\nb\"", "control character");
  expect_invalid("\"\\x\"", "invalid escape");
  expect_invalid("\"\\u12zz\"", "invalid hex digit");
  expect_invalid("\"\\u12", "truncated \\u escape");
  expect_invalid("\"\\ud800\"", "lone high surrogate");
  expect_invalid("\"\\udc00\"", "lone low surrogate");
  expect_invalid("\"\\ud800\\u0041\"", "not followed by a low one");
  expect_invalid("\"\xff\"", "invalid UTF-8 lead byte");
  expect_invalid("\"\xc3", "truncated UTF-8");
  expect_invalid("\"\xc3\"", "invalid UTF-8 continuation");
  expect_invalid("\"\xc3\x28\"", "invalid UTF-8 continuation");
  expect_invalid("\"\xc0\xaf\"", "invalid UTF-8 lead byte");    // overlong '/'
  expect_invalid("\"\xe0\x80\xaf\"", "overlong UTF-8");           // overlong '/'
  expect_invalid("\"\xed\xa0\x80\"", "UTF-8 encoded surrogate");  // U+D800
  expect_invalid("\"\xf4\x90\x80\x80\"", "above U+10FFFF");       // U+110000
  expect_invalid("\xef\xbb\xbf{}", "unexpected character");       // BOM
  expect_invalid(std::string("[1,\0]", 5), "expected a value");
  expect_invalid("// c\n{}", "unexpected character");
  expect_invalid("'a'", "unexpected character");

  // Limits.
  {
    fusedrnn::JsonLimits lim;
    lim.max_depth = 3;
    expect_invalid("[[[[1]]]]", "nesting deeper than 3", lim);
    bool ok = true;
    try {
      parse_json("[[[1]]]", lim);
    } catch (const JsonError&) {
      ok = false;
    }
    report(ok, "depth 3 within max_depth 3 parses");
    lim = {};
    lim.max_values = 5;
    expect_invalid("[1,2,3,4,5]", "more than 5 values", lim);
    // The default depth limit stops stack exhaustion on a hostile document.
    expect_invalid(std::string(100000, '['), "nesting deeper than 128");
  }
  // Many keys: the duplicate check stays fast (sorted, not quadratic).
  {
    std::string big = "{";
    for (int i = 0; i < 200000; ++i) big += (i ? ",\"" : "\"") + std::to_string(i) + "\":0";
    big += "}";
    const JsonValue v = parse_json(big);
    report(v.size() == 200000, "200000 distinct keys parse");
    expect_invalid(big.substr(0, big.size() - 1) + ",\"7\":1}", "duplicate key \"7\"");
  }

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
