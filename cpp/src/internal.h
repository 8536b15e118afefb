// Private helpers of the model layer (never installed): overflow-checked sizes, little-endian
// copies, aligned buffers, and the instruction-set-specific operations a Stream and the model's
// head need (packing weights into panels, products with packed weights, one recurrent step).
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

// ---------------------------------------------------------------------------------------------
// One recurrent layer of a Stream, its weights packed by the active instruction-set copy.
// Packed operands: op(B) = [K, ncols] laid out in panels (see packed_gemm.h).
enum class StepCell { lstm, gru, rnn };

template <typename Scalar>
struct StepLayer {
  StepCell cell = StepCell::lstm;
  GruVariant variant = GruVariant::reset_after;
  Nonlinearity act = Nonlinearity::tanh;
  std::int64_t N = 0, C = 0, H = 0, P = 0;  // batch, input width, hidden, LSTM projection
  const Scalar* wih_p = nullptr;  // w_ih packed: [C -> G*H]
  const Scalar* whh_p = nullptr;  // w_hh packed: [R -> G*H]; GRU reset_before: rows 0..2H only
  const Scalar* whn_p = nullptr;  // GRU reset_before: w_hh rows 2H..3H packed [H -> H]
  const Scalar* whr_p = nullptr;  // LSTM projection: w_hr packed [H -> P]
  const Scalar* b_ih = nullptr;   // [G*H] (nullable)
  const Scalar* b_hh = nullptr;   // [G*H] (nullable)
  const Scalar* w_peep = nullptr; // LSTM peepholes [3, H] (nullable)
};

// Scalars of the scratch one step of a layer needs: gx, gh [N, G*H], gates [N, 4H], m [N, H].
inline std::size_t step_scratch_size(std::int64_t N, std::int64_t H, std::int64_t G) {
  return std::size_t(2 * N * G * H + 4 * N * H + N * H);
}

// The operations of one instruction-set copy (step.cc, compiled per copy).
template <typename Scalar>
struct IsaOps {
  // Scalars that a packed [K, ncols] right-hand side needs.
  std::size_t (*packed_size)(std::int64_t K, std::int64_t ncols);
  // Packs op(B) = [K, ncols]: transposed: B stored [ncols][K] (a weight [out, in] for x Wᵀ).
  void (*pack)(const Scalar* B, std::int64_t K, std::int64_t ncols, std::int64_t ld,
               bool transposed, Scalar* out);
  // C[m, ncols] = A[m, K] op(B), op(B) packed. num_threads 1: the caller's thread only (no
  // OpenMP construct at all); otherwise an OpenMP region (0: the default thread count).
  void (*gemm)(std::int64_t m, std::int64_t ncols, std::int64_t K, const Scalar* A,
               std::int64_t lda, const Scalar* packed, Scalar* C, std::int64_t ldc,
               int num_threads);
  // One time step of one layer for all N rows: x [N, C] -> h [N, R], c [N, H] (LSTM), in place;
  // scratch [step_scratch_size]. Bitwise the batch kernel's step.
  void (*step)(const StepLayer<Scalar>& layer, const Scalar* x, Scalar* h, Scalar* c,
               Scalar* scratch);
};

// The copy in use (the one the kernels dispatch to). dispatch_step.cc.
template <typename Scalar>
const IsaOps<Scalar>& isa_ops();

}  // namespace internal
}  // namespace fusedrnn
