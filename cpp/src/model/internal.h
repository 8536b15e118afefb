// Private helpers of the model layer (never installed): overflow-checked sizes, little-endian
// copies, aligned buffers. The instruction-set-specific operations a Stream and the model's head
// need (packing weights, products with packed weights, one recurrent step): isa/table.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

#include "fusedrnn/common.h"

namespace fusedrnn {
namespace internal {

// out = a * b; false on overflow.
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  return !__builtin_mul_overflow(a, b, &out);
}
inline bool checked_mul(std::int64_t a, std::int64_t b, std::int64_t& out) {
  return !__builtin_mul_overflow(a, b, &out);
}

inline bool host_is_little_endian() {
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
  return __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
#else
  const std::uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
#endif
}

// dst[0..n) = the n little-endian elements at src (any alignment), in native order.
template <typename Scalar>
void copy_little_endian(const unsigned char* src, std::size_t n, Scalar* dst) {
  static_assert(std::is_trivially_copyable<Scalar>::value, "plain data only");
  if (n == 0) return;
  std::memcpy(dst, src, n * sizeof(Scalar));
  if (host_is_little_endian() || sizeof(Scalar) == 1) return;
  for (std::size_t i = 0; i < n; ++i) {
    unsigned char* p = reinterpret_cast<unsigned char*>(dst + i);
    for (std::size_t a = 0, b = sizeof(Scalar) - 1; a < b; ++a, --b) std::swap(p[a], p[b]);
  }
}

constexpr std::size_t kAlign = 64;

inline std::size_t align_up(std::size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// An owning, 64-byte aligned array of trivially copyable elements (uninitialised).
template <typename Scalar>
class AlignedArray {
 public:
  AlignedArray() = default;
  explicit AlignedArray(std::size_t n) { resize(n); }
  ~AlignedArray() { release(); }
  AlignedArray(AlignedArray&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  AlignedArray& operator=(AlignedArray&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_, n_ = o.n_;
      o.p_ = nullptr, o.n_ = 0;
    }
    return *this;
  }
  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;

  void resize(std::size_t n) {  // contents are lost
    release();
    if (n) p_ = static_cast<Scalar*>(::operator new(n * sizeof(Scalar), std::align_val_t(kAlign)));
    n_ = n;
  }
  Scalar* data() noexcept { return p_; }
  const Scalar* data() const noexcept { return p_; }
  std::size_t size() const noexcept { return n_; }

 private:
  void release() noexcept {
    if (p_) ::operator delete(p_, std::align_val_t(kAlign));
    p_ = nullptr, n_ = 0;
  }
  Scalar* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace internal
}  // namespace fusedrnn
