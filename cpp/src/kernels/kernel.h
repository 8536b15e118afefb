// Private building blocks of the kernels: argument checks, the step/time map of variable-length
// and reversed sequences, thread counts, Eigen maps, column sums. Activations: activations.h.
// Eigen stays in the kernels' files; public headers never see it.
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

#include "fpenv.h"
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
  // the one authority on projection sizes (the LSTM's kernels, plain and regularised):
  // PyTorch's rule, P < H (a projection narrows h)
  if (projection && d.P >= d.H)
    fail(std::string(fn) + ": proj_size P = " + std::to_string(d.P) +
         " must be < hidden_size H = " + std::to_string(d.H) +
         " (PyTorch's rule: the projection narrows h)");
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
// int8 (inference only): the s8 products run at about 4x the float32 rate (vpdpbusd; tdpbssd
// faster still), so the step counts a quarter of its multiply-adds. Measured at batch 1, T=100,
// Zen 4, best of 3 rounds, 1 vs 2 threads (ms): GRU H=256 (393K) 0.344 vs 0.458, LSTM H=256
// (524K) 0.460 vs 0.615, RNN H=512 (524K) 0.463 vs 0.511, GRU H=512 (1.57M) 1.365 vs 1.201,
// LSTM H=512 (2.1M) 1.931 vs 1.751.
constexpr double kMinStepFlopsToSplit = 2.0e5;
constexpr double kInt8StepFlopsFactor = 0.25;

inline int thread_count(const Options& opt, const Dims& d, Index G) {
#ifdef _OPENMP
  const int n = opt.num_threads > 0 ? opt.num_threads : omp_get_max_threads();
  // h w_hhᵀ [N, R] x [R, G*H], plus the projection m w_hrᵀ [N, H] x [H, P] when there is one.
  const double step_flops =
      2.0 * double(d.N) * double(G * d.H) * double(rec_width(d)) +
      2.0 * double(d.N) * double(d.H) * double(d.P);
  const double scale = opt.precision == Precision::int8 ? kInt8StepFlopsFactor : 1.0;
  return step_flops * scale < kMinStepFlopsToSplit ? 1 : n;
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
    {
      const FlushDenormals fp;  // each team thread, for this region only (fpenv.h)
      body();
    }
    return;
  }
#else
  (void)n;
#endif
  const FlushDenormals fp;
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
// same sum is also added to dst2 when given (one pass over src for two bias gradients). With a
// row map, row r is row map[r] of src (the ragged backward's valid positions).
template <typename Scalar>
void par_colsum_add(Index rows, Index cols, const Scalar* src, Index ld, Scalar* dst,
                    Scalar* dst2 = nullptr, const Index* map = nullptr) {
  const Index tn = ceil_div(cols, kTileCols);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index tile = 0; tile < tn; ++tile) {
    const Index j0 = tile * kTileCols, nj = std::min(kTileCols, cols - j0);
    Scalar acc[kTileCols];
    for (Index j = 0; j < nj; ++j) acc[j] = Scalar(0);
    for (Index r = 0; r < rows; ++r) {
      const Scalar* row = src + (map ? map[r] : r) * ld + j0;
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

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
