// The safetensors reader of safetensors.h: the whole file is read and every rule checked
// before a TensorFile is returned.
#include "fusedrnn/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

#include "fusedrnn/json.h"
#include "internal.h"

namespace fusedrnn {

namespace {

struct DTypeEntry {
  const char* name;
  DType dtype;
  std::size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {"BOOL", DType::boolean, 1}, {"U8", DType::u8, 1},   {"U16", DType::u16, 2},
    {"U32", DType::u32, 4},      {"U64", DType::u64, 8}, {"I8", DType::i8, 1},
    {"I16", DType::i16, 2},      {"I32", DType::i32, 4}, {"I64", DType::i64, 8},
    {"F16", DType::f16, 2},      {"F32", DType::f32, 4}, {"F64", DType::f64, 8},
};

std::string quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

[[noreturn]] void raise(const std::string& where, const std::string& what) {
  throw CheckpointError(where + ": " + what);
}

}  // namespace

const char* dtype_name(DType dtype) noexcept {
  for (const DTypeEntry& e : kDTypes)
    if (e.dtype == dtype) return e.name;
  return "?";
}
std::size_t dtype_size(DType dtype) noexcept {
  for (const DTypeEntry& e : kDTypes)
    if (e.dtype == dtype) return e.size;
  return 0;
}

namespace {
// The data length a safetensors header describes: its largest data_offsets end (0 when the
// header is not valid JSON; parse() then says what is wrong with it).
std::uint64_t described_data_length(std::string_view text) {
  std::uint64_t end = 0;
  try {
    JsonLimits limits;
    limits.max_depth = 16;
    const JsonValue header = parse_json(text, limits);
    if (!header.is_object()) return 0;
    for (std::size_t i = 0; i < header.size(); ++i) {
      const JsonValue& e = header[i];
      const JsonValue* off = e.is_object() ? e.find("data_offsets") : nullptr;
      if (off && off->is_array() && off->size() == 2 && (*off)[1].is_integer() &&
          (*off)[1].as_int() > 0)
        end = std::max(end, std::uint64_t((*off)[1].as_int()));
    }
  } catch (const JsonError&) {
    return 0;
  }
  return end;
}
}  // namespace

TensorFile TensorFile::load(const std::string& path) {
  const std::string where = "fusedrnn: " + quoted(path);
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw CheckpointError(where + ": cannot open (" + std::strerror(errno) + ")");
  std::vector<unsigned char> bytes;
  // Reads what the file says it holds, in order: the 8-byte header length, the header, then the
  // data it describes and one byte more (parse() refuses a longer file). A wrong or hostile
  // file (a gigabyte of something else, /dev/zero) is refused after its first bytes, and memory
  // never grows past the file's size plus one chunk. No reliance on the reported file size
  // (pipes, files that change).
  bool failed = false, eof = false;
  auto read_upto = [&](std::uint64_t want) {
    while (want > 0 && !eof) {
      const std::size_t chunk = std::size_t(std::min<std::uint64_t>(want, 1 << 20));
      const std::size_t old = bytes.size();
      try {
        bytes.resize(old + chunk);
      } catch (const std::bad_alloc&) {
        std::fclose(f);
        throw CheckpointError(where + ": out of memory reading the file");
      }
      const std::size_t got = std::fread(bytes.data() + old, 1, chunk, f);
      bytes.resize(old + got);
      want -= got;
      if (got < chunk) {
        failed = std::ferror(f) != 0;
        eof = true;
      }
    }
  };
  read_upto(8);
  if (bytes.size() == 8) {
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[std::size_t(i)];
    if (n <= kMaxHeaderBytes) {
      read_upto(n);
      if (bytes.size() == 8 + n) {
        const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8),
                                    std::size_t(n));
        const std::uint64_t data = described_data_length(text);
        // one allocation for a file of the size it says (up to 4 GiB reserved ahead; a file
        // that ends early just leaves the reservation unused)
        const std::uint64_t total = 8 + n + std::min<std::uint64_t>(data, 1ull << 32) + 1;
        try {
          bytes.reserve(std::size_t(total));
        } catch (const std::exception&) {
          // no reservation: the chunks grow the buffer as before
        }
        read_upto(data < ~std::uint64_t(0) ? data + 1 : data);
      }
    }
  }
  const int err = errno;
  std::fclose(f);
  if (failed) throw CheckpointError(where + ": read error (" + std::strerror(err) + ")");
  if (bytes.capacity() - bytes.size() > (std::size_t(1) << 20)) bytes.shrink_to_fit();
  return parse(std::move(bytes), where);
}

TensorFile TensorFile::parse(std::vector<unsigned char> bytes, const std::string& where) {
  TensorFile tf;
  tf.where_ = where;
  const std::size_t size = bytes.size();
  if (size < 8)
    raise(where, "the file is " + std::to_string(size) +
         " bytes, shorter than the 8-byte header length (not a safetensors file?)");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[std::size_t(i)];
  if (n > kMaxHeaderBytes)
    raise(where, "header length " + std::to_string(n) + " exceeds the " +
         std::to_string(kMaxHeaderBytes) + "-byte limit (not a safetensors file?)");
  if (n > size - 8)
    raise(where, "header length " + std::to_string(n) + " is larger than the " +
         std::to_string(size - 8) + " bytes after the length prefix (truncated?)");
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), std::size_t(n));
  if (text.empty() || text[0] != '{')
    raise(where, "the header must be a JSON object starting with '{'");
  JsonValue header;
  try {
    JsonLimits limits;
    limits.max_depth = 16;  // a header is two levels deep
    header = parse_json(text, limits);
  } catch (const JsonError& e) {
    raise(where, std::string("the header is not valid JSON (") + e.what() + ")");
  }
  if (!header.is_object()) raise(where, "the header must be a JSON object");

  struct Span {
    std::size_t begin, end, index;
  };
  std::vector<Span> spans;
  for (std::size_t i = 0; i < header.size(); ++i) {
    const std::string& name = header.key(i);
    const JsonValue& entry = header[i];
    if (name == "__metadata__") {
      if (!entry.is_object()) raise(where, "__metadata__ must be an object");
      for (std::size_t j = 0; j < entry.size(); ++j) {
        if (!entry[j].is_string())
          raise(where, "__metadata__ values must be strings, got " + quoted(entry.key(j)) + ": " +
               entry[j].dump().substr(0, 80));
        tf.metadata_.emplace_back(entry.key(j), entry[j].as_string());
      }
      continue;
    }
    const std::string what = "tensor " + quoted(name);
    if (!entry.is_object() || entry.size() != 3 || !entry.find("dtype") || !entry.find("shape") ||
        !entry.find("data_offsets"))
      raise(where, what + " must be an object with exactly 'dtype', 'shape' and 'data_offsets'");
    TensorInfo t;
    t.name = name;
    const JsonValue& dt = entry.at("dtype");
    const DTypeEntry* found = nullptr;
    if (dt.is_string())
      for (const DTypeEntry& e : kDTypes)
        if (dt.as_string() == e.name) found = &e;
    if (!found)
      raise(where, what + " has an unknown dtype " + dt.dump().substr(0, 40) +
           " (supported: BOOL, U8..U64, I8..I64, F16, F32, F64)");
    t.dtype = found->dtype;
    const JsonValue& shape = entry.at("shape");
    if (!shape.is_array()) raise(where, what + ": shape must be a list of non-negative integers");
    std::uint64_t numel = 1;
    for (std::size_t j = 0; j < shape.size(); ++j) {
      if (!shape[j].is_integer() || shape[j].as_int() < 0)
        raise(where, what + ": shape must be a list of non-negative integers, got " +
             shape.dump().substr(0, 80));
      const auto d = std::uint64_t(shape[j].as_int());
      t.shape.push_back(shape[j].as_int());
      if (!internal::checked_mul(numel, d, numel) || numel > (std::uint64_t(1) << 62))
        raise(where, what + ": shape " + shape.dump().substr(0, 80) + " has too many elements");
    }
    t.numel = std::int64_t(numel);
    const JsonValue& off = entry.at("data_offsets");
    if (!off.is_array() || off.size() != 2 || !off[0].is_integer() || !off[1].is_integer() ||
        off[0].as_int() < 0 || off[1].as_int() < 0)
      raise(where, what + ": data_offsets must be [begin, end] with non-negative integers, got " +
           off.dump().substr(0, 80));
    const auto begin = std::uint64_t(off[0].as_int()), end = std::uint64_t(off[1].as_int());
    if (end < begin) raise(where, what + ": data_offsets " + off.dump() + " are out of order");
    std::uint64_t nbytes = 0;
    if (!internal::checked_mul(numel, std::uint64_t(found->size), nbytes) ||
        end - begin != nbytes)
      raise(where, what + ": data_offsets " + off.dump() + " span " + std::to_string(end - begin) +
           " bytes but shape " + shape.dump().substr(0, 80) + " x " + found->name + " needs " +
           (nbytes == 0 && numel ? std::string("more") : std::to_string(nbytes)));
    if (end > size) raise(where, what + ": data_offsets " + off.dump() + " lie beyond the file");
    t.offset = std::size_t(begin);
    t.nbytes = std::size_t(nbytes);
    spans.push_back({t.offset, t.offset + t.nbytes, tf.tensors_.size()});
    tf.tensors_.push_back(std::move(t));
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::size_t expected = 0;
  for (const Span& s : spans) {
    if (s.begin != expected)
      raise(where, "tensor " + quoted(tf.tensors_[s.index].name) + " data_offsets [" +
           std::to_string(s.begin) + ", " + std::to_string(s.end) + "] " +
           (s.begin < expected ? "overlaps the previous tensor" : "leaves a gap") +
           " (expected it to start at " + std::to_string(expected) + ")");
    expected = s.end;
  }
  const std::size_t data_len = size - 8 - std::size_t(n);
  if (data_len != expected)
    raise(where, "the data section is " + std::to_string(data_len) + " bytes but the header describes " +
         std::to_string(expected) + (data_len < expected ? " (truncated)" : " (trailing bytes)"));
  tf.data_start_ = 8 + std::size_t(n);
  tf.bytes_ = std::move(bytes);
  for (const TensorInfo& t : tf.tensors_)
    if (t.dtype == DType::boolean) {
      const unsigned char* p = tf.bytes(t);
      for (std::size_t i = 0; i < t.nbytes; ++i)
        if (p[i] > 1) raise(where, "BOOL tensor " + quoted(t.name) + " holds bytes other than 0 and 1");
    }
  return tf;
}

const TensorInfo* TensorFile::find(std::string_view name) const noexcept {
  for (const TensorInfo& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const std::string* TensorFile::metadata_value(std::string_view key) const noexcept {
  for (const auto& kv : metadata_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

template <typename Scalar>
std::vector<Scalar> TensorFile::read(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (!t) throw CheckpointError(where_ + ": no tensor " + quoted(name));
  if (t->dtype != dtype_of<Scalar>())
    throw CheckpointError(where_ + ": tensor " + quoted(name) + " is " + dtype_name(t->dtype) +
                          ", not " + dtype_name(dtype_of<Scalar>()));
  std::vector<Scalar> out(std::size_t(t->numel));
  internal::copy_little_endian(bytes(*t), out.size(), out.data());
  return out;
}

template std::vector<float> TensorFile::read<float>(std::string_view) const;
template std::vector<double> TensorFile::read<double>(std::string_view) const;
template std::vector<std::int32_t> TensorFile::read<std::int32_t>(std::string_view) const;
template std::vector<std::int64_t> TensorFile::read<std::int64_t>(std::string_view) const;
template std::vector<std::uint8_t> TensorFile::read<std::uint8_t>(std::string_view) const;

}  // namespace fusedrnn
