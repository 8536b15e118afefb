// Reading safetensors files (https://github.com/huggingface/safetensors), the layout of
// fusedrnn checkpoints: an 8-byte little-endian header length L, L bytes of UTF-8 JSON
// {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..], "data_offsets":
// [begin, end]}, ...}, then the raw little-endian tensor bytes.
//
// The whole file is validated before anything is returned, with the same rules as
// fusedrnn.io.load_tensors in Python: header length within 100 MB and within the file, strict
// JSON, known dtypes, non-negative integer shapes and offsets, each tensor's byte span equal
// to its shape times its dtype size, tensors contiguous without gaps or overlaps, the data
// section exactly as long as they are, BOOL bytes 0 or 1. Anything else throws CheckpointError
// naming the file and the problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fusedrnn/errors.h"
#include "fusedrnn/export.h"

namespace fusedrnn {

enum class DType { boolean, u8, u16, u32, u64, i8, i16, i32, i64, f16, f32, f64 };

FUSEDRNN_API const char* dtype_name(DType dtype) noexcept;  // safetensors name: "F32", "I64", ...
FUSEDRNN_API std::size_t dtype_size(DType dtype) noexcept;  // bytes per element

// The DType of a C++ element type (float, double and the fixed-width integers).
template <typename Scalar>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<std::int8_t>() { return DType::i8; }
template <> constexpr DType dtype_of<std::int16_t>() { return DType::i16; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<std::uint8_t>() { return DType::u8; }
template <> constexpr DType dtype_of<std::uint16_t>() { return DType::u16; }
template <> constexpr DType dtype_of<std::uint32_t>() { return DType::u32; }
template <> constexpr DType dtype_of<std::uint64_t>() { return DType::u64; }

struct TensorInfo {
  std::string name;
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  std::int64_t numel = 0;   // product of shape (1 for a scalar)
  std::size_t offset = 0;   // bytes from the start of the data section
  std::size_t nbytes = 0;
};

class FUSEDRNN_API TensorFile {
 public:
  static constexpr std::size_t kMaxHeaderBytes = 100000000;  // as the safetensors package

  // Reads and validates a file (CheckpointError if it cannot be read or is invalid).
  static TensorFile load(const std::string& path);
  // Validates a file image held in memory; `where` names it in error messages.
  static TensorFile parse(std::vector<unsigned char> bytes, const std::string& where = "buffer");

  const std::vector<TensorInfo>& tensors() const noexcept { return tensors_; }  // header order
  const TensorInfo* find(std::string_view name) const noexcept;
  // __metadata__ (empty when absent), in header order.
  const std::vector<std::pair<std::string, std::string>>& metadata() const noexcept {
    return metadata_;
  }
  const std::string* metadata_value(std::string_view key) const noexcept;
  // The tensor's raw bytes (little-endian, no alignment guarantee).
  const unsigned char* bytes(const TensorInfo& t) const noexcept {
    return bytes_.data() + data_start_ + t.offset;
  }
  // A copy of tensor `name` in native byte order. Throws CheckpointError if there is no such
  // tensor or its dtype is not Scalar's (no conversions). Scalar: float, double, int32_t,
  // int64_t, uint8_t.
  template <typename Scalar>
  std::vector<Scalar> read(std::string_view name) const;
  const std::string& where() const noexcept { return where_; }

 private:
  std::vector<unsigned char> bytes_;
  std::size_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  std::string where_;
};

}  // namespace fusedrnn
