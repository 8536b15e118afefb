// Private building blocks of the kernels: argument checks, the step/time map of variable-length
// and reversed sequences, blocked GEMMs inside a parallel region, accurate vector activations.
// Eigen stays in this file and the .cc files; public headers never see it.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fusedrnn/common.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

using Index = std::int64_t;

// ---------------------------------------------------------------------------------------------
// Argument checks (called before any parallel region; never inside one).

// Messages are built only on failure: a valid call allocates nothing (Model::forward with a
// Context, and Stream, promise that).
[[noreturn]] inline void fail(const std::string& what) { throw std::invalid_argument(what); }

inline void require(bool ok, const char* what) {
  if (!ok) fail(what);
}

// `projection`: the kernel accepts Dims::P > 0 (the LSTM); the others require P = 0.
inline void check_dims(const char* fn, const Dims& d, bool projection = false) {
  if (!(d.T >= 1 && d.N >= 1 && d.C >= 1 && d.H >= 1))
    fail(std::string(fn) + ": dims must be positive (T, N, C, H >= 1)");
  if (projection && d.P < 0)
    fail(std::string(fn) + ": Dims::P = " + std::to_string(d.P) +
         " must be >= 0 (0 = no projection)");
  if (!projection && d.P != 0)
    fail(std::string(fn) + ": Dims::P = " + std::to_string(d.P) +
         ": projection is an LSTM option, P must be 0 here");
}

// R, the width of the hidden state, the output and the recurrent product's input: the LSTM's
// projection size P when it has one, else H.
constexpr Index rec_width(const Dims& d) { return d.P > 0 ? d.P : d.H; }

inline void check_ptr(const char* fn, const void* p, const char* name) {
  if (p == nullptr) fail(std::string(fn) + ": " + name + " must not be null");
}

// Returns S, the number of steps actually run (max length, or T).
inline Index check_lengths(const char* fn, const Dims& d, const std::int64_t* lengths) {
  if (!lengths) return d.T;
  Index S = 0;
  for (Index n = 0; n < d.N; ++n) {
    if (!(lengths[n] >= 0 && lengths[n] <= d.T))
      fail(std::string(fn) + ": lengths[" + std::to_string(n) + "] = " +
           std::to_string(lengths[n]) + " is outside [0, T=" + std::to_string(d.T) + "]");
    S = std::max<Index>(S, lengths[n]);
  }
  return S;
}

// Threads for one call: Options::num_threads (0 = OpenMP's default), but one thread when a time
// step's recurrent products are too small to split (below ~1-2 us, a fork/join and a barrier per
// step cost more than they save: batch 1 with a small hidden size). Results do not depend on it.
// Measured at batch 1, T=100, inference, 1 vs 2 threads (ms): RNN H=256 (131K flops per step)
// 0.31 vs 0.36, LSTM H=128 (131K) 0.33 vs 0.33, GRU H=192 (221K) 0.56 vs 0.54, LSTM H=160
// (205K) 0.51 vs 0.44, RNN H=512 (524K) 1.29 vs 0.90.
constexpr double kMinStepFlopsToSplit = 2.0e5;

inline int thread_count(const Options& opt, const Dims& d, Index G) {
#ifdef _OPENMP
  const int n = opt.num_threads > 0 ? opt.num_threads : omp_get_max_threads();
  // h w_hhᵀ [N, R] x [R, G*H], plus the projection m w_hrᵀ [N, H] x [H, P] when there is one.
  const double step_flops =
      2.0 * double(d.N) * double(G * d.H) * double(rec_width(d)) +
      2.0 * double(d.N) * double(d.H) * double(d.P);
  return step_flops < kMinStepFlopsToSplit ? 1 : n;
#else
  (void)opt, (void)d, (void)G;
  return 1;
#endif
}

// Runs body() as the kernel's one parallel region on n threads. One thread outside any parallel
// region runs it as a plain call: its work-sharing constructs then bind to no team and cost
// nothing, where libgomp's team of one still made a futex system call at every barrier (about
// 20% of an LSTM T=1000 N=1 H=64 inference). Inside a caller's parallel region a nested region
// of one thread keeps the constructs from binding to the caller's team.
template <typename F>
inline void parallel_region(int n, F&& body) {
#ifdef _OPENMP
  if (n > 1 || omp_in_parallel()) {
#pragma omp parallel num_threads(n)
    body();
    return;
  }
#else
  (void)n;
#endif
  body();
}

// ---------------------------------------------------------------------------------------------
// Step s of the loop processes, for sequence n, time t = s (forward) or len_n - 1 - s (reverse);
// the sequence is active at step s iff s < len_n. Returns -1 when inactive.
struct StepMap {
  const std::int64_t* lengths;
  Index T;
  bool reverse;
  Index time(Index s, Index n) const {
    const Index len = lengths ? lengths[n] : T;
    if (s >= len) return -1;
    return reverse ? len - 1 - s : s;
  }
};

// ---------------------------------------------------------------------------------------------
// Matrices over raw row-major memory with a leading dimension.
template <typename Scalar>
using RowMat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename Scalar>
using MatMap = Eigen::Map<RowMat<Scalar>, 0, Eigen::OuterStride<>>;
template <typename Scalar>
using CMatMap = Eigen::Map<const RowMat<Scalar>, 0, Eigen::OuterStride<>>;

template <typename Scalar>
MatMap<Scalar> mat(Scalar* p, Index rows, Index cols, Index ld) {
  return MatMap<Scalar>(p, rows, cols, Eigen::OuterStride<>(ld));
}
template <typename Scalar>
CMatMap<Scalar> cmat(const Scalar* p, Index rows, Index cols, Index ld) {
  return CMatMap<Scalar>(p, rows, cols, Eigen::OuterStride<>(ld));
}

// Fixed tile sizes: the split of every work-shared loop is independent of the thread count, and
// each tile is computed by one thread in one fixed order, so results are bitwise reproducible.
constexpr Index kTileCols = 128;
constexpr Index kUnitBlock = 64;  // hidden units per block of the element-wise gate passes

inline Index ceil_div(Index a, Index b) { return (a + b - 1) / b; }

// Work-shared: dst[j] += sum over rows r of src[r * ld + j], rows in order (deterministic); the
// same sum is also added to dst2 when given (one pass over src for two bias gradients).
template <typename Scalar>
void par_colsum_add(Index rows, Index cols, const Scalar* src, Index ld, Scalar* dst,
                    Scalar* dst2 = nullptr) {
  const Index tn = ceil_div(cols, kTileCols);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index tile = 0; tile < tn; ++tile) {
    const Index j0 = tile * kTileCols, nj = std::min(kTileCols, cols - j0);
    Scalar acc[kTileCols];
    for (Index j = 0; j < nj; ++j) acc[j] = Scalar(0);
    for (Index r = 0; r < rows; ++r) {
      const Scalar* row = src + r * ld + j0;
      for (Index j = 0; j < nj; ++j) acc[j] += row[j];
    }
    for (Index j = 0; j < nj; ++j) dst[j0 + j] += acc[j];
    if (dst2)
      for (Index j = 0; j < nj; ++j) dst2[j0 + j] += acc[j];
  }
}

// Work-shared fill of n scalars.
template <typename Scalar>
void par_fill(Scalar* p, Index n, Scalar v) {
  const Index chunk = 1 << 14, tiles = ceil_div(n, chunk);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index t = 0; t < tiles; ++t) std::fill(p + t * chunk, p + std::min(n, (t + 1) * chunk), v);
}

// ---------------------------------------------------------------------------------------------
// Activations, written on Eigen's packet primitives (its exp is accurate to about 1 ulp in float
// and double). No fast-math anywhere. NaN inputs give NaN.
//
// Every element takes the packet path, the last partial packet of a run through a zero-padded
// buffer: a scalar exp could differ from the packet exp in the last bit, and the value of an
// element would then depend on its address or position.

template <typename Scalar>
using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
template <typename Scalar>
constexpr Index kPacketSize = Eigen::internal::unpacket_traits<Packet<Scalar>>::size;

// σ(x) = 1 / (1 + exp(-x)) of one packet. A NaN flows through Eigen's exp (its clamps keep the
// NaN operand) and the quotient, so it needs no select of its own.
template <typename P>
inline P psigmoid(const P& x) {
  namespace ei = Eigen::internal;
  using Scalar = typename ei::unpacket_traits<P>::type;
  const P one = ei::pset1<P>(Scalar(1));
  return ei::pdiv(one, ei::padd(one, ei::pexp(ei::pnegate(x))));
}

// tanh(x) of one packet.
// float: Eigen's ptanh, a minimax rational function (odd numerator of degree 13, even
// denominator of degree 6) on |x| clamped to 7.99 (7.91 without FMA), where it rounds to 1;
// |x| < 0.0004 returns x. Checked here over every float in [0, 10) against double tanh: largest
// relative error 2.9e-7 (4.9 ulp; 4.1e-7 in the SSE2 copy), against 4.0e-7 (6.3 ulp) for the
// exp-based quotient below, at 2-3x the speed (AVX-512: 0.29 vs 0.55 ns per value). NaN stays
// NaN, ±inf gives ±1, -0 stays -0.
// double: sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) for |x| >= 1/8 (the sign bit of x copied
// onto the quotient); below, where that quotient loses relative accuracy, the Taylor series of
// tanh to x¹³ (truncation error < 2 ulp). NaN flows through the exp like in psigmoid.
template <typename P>
inline P ptanh(const P& x) {
  namespace ei = Eigen::internal;
  using Scalar = typename ei::unpacket_traits<P>::type;
  if constexpr (sizeof(Scalar) == 4) {
    return ei::ptanh(x);
  } else {
    const P one = ei::pset1<P>(Scalar(1));
    const P ax = ei::pabs(x);
    const P e = ei::pexp(ei::pmul(ei::pset1<P>(Scalar(-2)), ax));
    const P q = ei::pdiv(ei::psub(one, e), ei::padd(one, e));
    const P big = ei::pxor(q, ei::pandnot(x, ax));  // x & ~|x| is x's sign bit
    // tanh x = x (1 - x²/3 + 2x⁴/15 - 17x⁶/315 + 62x⁸/2835 - 1382x¹⁰/155925 + 21844x¹²/6081075)
    const P x2 = ei::pmul(x, x);
    P p = ei::pset1<P>(Scalar(21844.0 / 6081075));
    for (double c : {-1382.0 / 155925, 62.0 / 2835, -17.0 / 315, 2.0 / 15, -1.0 / 3, 1.0})
      p = ei::pmadd(p, x2, ei::pset1<P>(Scalar(c)));
    return ei::pselect(ei::pcmp_lt(x2, ei::pset1<P>(Scalar(1.0 / 64))), ei::pmul(x, p), big);
  }
}

// Runs body(ld, st) once per packet over the units [0, n) of a run: inside it, ld(p) loads the
// packet of array p at the current position and st(p, v) stores v there. The last partial packet
// loads from and stores through zero-padded buffers (its padding lanes are computed and dropped),
// so every element goes through the same packet arithmetic whatever its position or address.
// Lanes never mix, so a lane's result depends only on its own inputs.
template <typename Scalar, typename F>
inline void for_packets(Index n, F&& body) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  constexpr Index W = kPacketSize<Scalar>;
  Index j = 0;
  for (; j + W <= n; j += W)
    body([j](const Scalar* p) { return ei::ploadu<P>(p + j); },
         [j](Scalar* p, const P& v) { ei::pstoreu(p + j, v); });
  if (j < n) {
    const Index r = n - j;
    body(
        [j, r](const Scalar* p) {
          alignas(64) Scalar buf[W];
          std::fill(buf, buf + W, Scalar(0));
          std::copy(p + j, p + j + r, buf);
          return ei::pload<P>(buf);
        },
        [j, r](Scalar* p, const P& v) {
          alignas(64) Scalar buf[W];
          ei::pstore(buf, v);
          std::copy(buf, buf + r, p + j);
        });
  }
}

// out = σ(in) and out = tanh(in) over a run; in and out may alias.
template <typename Scalar>
inline void sigmoid_array(const Scalar* in, Scalar* out, Index n) {
  for_packets<Scalar>(n, [&](auto ld, auto st) { st(out, psigmoid(ld(in))); });
}
template <typename Scalar>
inline void tanh_array(const Scalar* in, Scalar* out, Index n) {
  for_packets<Scalar>(n, [&](auto ld, auto st) { st(out, ptanh(ld(in))); });
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
