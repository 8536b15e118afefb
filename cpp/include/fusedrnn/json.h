// A small strict JSON parser (RFC 8259) for checkpoint headers and their metadata; no
// third-party code. Strict: UTF-8 validated (no overlong forms, no surrogates, nothing above
// U+10FFFF), \u escapes with surrogate pairs only, no control characters in strings, no NaN /
// Infinity / comments / trailing commas / leading zeros, duplicate object keys rejected, one
// value per text (surrounding whitespace allowed). Limits on nesting depth and value count keep
// hostile input bounded in stack and memory. Errors throw JsonError with the byte offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fusedrnn/errors.h"
#include "fusedrnn/export.h"

namespace fusedrnn {

// The limits of Model::load for a checkpoint's user metadata (fusedrnn.save refuses metadata
// beyond them, so that what Python saves, C++ loads).
inline constexpr std::size_t kMaxMetadataDepth = 512;
inline constexpr std::size_t kMaxMetadataValues = std::size_t(1) << 23;

struct JsonLimits {
  std::size_t max_depth = 128;         // nesting of arrays and objects
  std::size_t max_values = 1u << 20;   // values in one document (each costs ~100 bytes)
};

class FUSEDRNN_API JsonValue {
 public:
  enum class Kind { null, boolean, number, string, array, object };

  JsonValue() = default;  // null

  Kind kind() const noexcept { return kind_; }
  bool is_null() const noexcept { return kind_ == Kind::null; }
  bool is_bool() const noexcept { return kind_ == Kind::boolean; }
  bool is_number() const noexcept { return kind_ == Kind::number; }
  bool is_string() const noexcept { return kind_ == Kind::string; }
  bool is_array() const noexcept { return kind_ == Kind::array; }
  bool is_object() const noexcept { return kind_ == Kind::object; }
  // A number written without fraction or exponent whose value fits in int64.
  bool is_integer() const noexcept { return kind_ == Kind::number && integer_; }

  // Each throws JsonError when the value is of another kind.
  bool as_bool() const;
  double as_double() const;       // any number (integers above 2^53 rounded)
  std::int64_t as_int() const;    // is_integer() numbers only
  const std::string& as_string() const;  // UTF-8

  // Arrays and objects (JsonError otherwise): elements, or members in document order.
  std::size_t size() const;
  const JsonValue& operator[](std::size_t i) const;  // array element / object member value
  const std::string& key(std::size_t i) const;       // object member key
  const JsonValue* find(std::string_view key) const;  // object member or nullptr
  const JsonValue& at(std::string_view key) const;    // object member; JsonError if missing

  // Compact JSON text of the value (keys in document order; numbers as they were parsed,
  // integers exactly, others with 17 significant digits).
  std::string dump() const;

 private:
  friend class JsonParser;
  Kind kind_ = Kind::null;
  bool bool_ = false;
  bool integer_ = false;
  double number_ = 0;
  std::int64_t int_ = 0;
  std::string string_;
  std::vector<JsonValue> items_;   // array elements or object values
  std::vector<std::string> keys_;  // object keys, parallel to items_
};

// Parses one JSON document. Throws JsonError ("JSON: <reason> at byte <offset>").
FUSEDRNN_API JsonValue parse_json(std::string_view text, const JsonLimits& limits = {});

}  // namespace fusedrnn
