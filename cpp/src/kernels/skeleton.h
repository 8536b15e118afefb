// The skeleton every cell's kernel shares around its pointwise passes: the chunked input
// projection, the forward prologue, state initialisation and the backward epilogue (the weight,
// input and bias gradients after the time loop). All are work-shared: call them from every
// thread of the kernel's parallel region.
#pragma once

#include <utility>

#include "packed_gemm.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// Work-shared loop of the element-wise gate passes: one job per (row, block of kUnitBlock units),
// rows 0..rows-1 of a state of H units, calling body(n, u0, bk, off) with n the row, u0 the first
// unit of the block, bk its units and off = n*H + u0 the block's offset in a [rows, H] state.
// A body that skips a job returns. Inlined, so the loop compiles as if written out.
template <class Body>
EIGEN_ALWAYS_INLINE void for_unit_blocks(Index rows, Index H, Body&& body) {
  const Index nub = ceil_div(H, kUnitBlock);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index job = 0; job < rows * nub; ++job) {
    const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
    body(n, u0, std::min(kUnitBlock, H - u0), n * H + u0);
  }
}

// for_unit_blocks' jobs of rows r0..r1-1, all by the calling thread (no work-sharing construct:
// a thread's own rows, the int8 step's row split).
template <class Body>
EIGEN_ALWAYS_INLINE void own_unit_blocks(Index r0, Index r1, Index H, Body&& body) {
  for (Index n = r0; n < r1; ++n)
    for (Index u0 = 0; u0 < H; u0 += kUnitBlock)
      body(n, u0, std::min(kUnitBlock, H - u0), n * H + u0);
}

// Work-shared loop over rows 0..rows-1, calling body(n) (a row's copies: the projection's output,
// a finished row's carry). A body that skips a row returns.
template <class Body>
EIGEN_ALWAYS_INLINE void for_rows(Index rows, Body&& body) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index n = 0; n < rows; ++n) body(n);
}

// The pointer arguments every cell's forward and backward need (the args structs share the
// names); the caller checks its cell's own (the LSTM's c_n).
template <class Args>
void check_forward_ptrs(const char* fn, const Args& a, const void* workspace) {
  for (auto [p, name] : {std::pair<const void*, const char*>{a.x, "x"}, {a.w_ih, "w_ih"},
                         {a.w_hh, "w_hh"}, {a.y, "y"}, {a.h_n, "h_n"}, {workspace, "workspace"}})
    check_ptr(fn, p, name);
}
template <class Args>
void check_backward_ptrs(const char* fn, const Args& a, const void* workspace) {
  for (auto [p, name] : {std::pair<const void*, const char*>{a.x, "x"}, {a.w_ih, "w_ih"},
                         {a.w_hh, "w_hh"}, {a.cache, "cache"}, {workspace, "workspace"}})
    check_ptr(fn, p, name);
}

// dst[0..n) = src[0..n): a finished sequence's state carried through a step, a row copied out.
template <typename Scalar>
inline void carry(const Scalar* src, Scalar* dst, Index n) {
  std::copy(src, src + n, dst);
}

// The pre-activation gradients of one unit block of a row that did not run at this step: zero in
// each of the G gate blocks (H apart), units 0..bk-1.
template <typename Scalar>
inline void zero_gate_blocks(Scalar* dg, Index G, Index H, Index bk) {
  for (Index g = 0; g < G; ++g) std::fill(dg + g * H, dg + g * H + bk, Scalar(0));
}

// Prefetch for writing: the G gate blocks (H apart) of units 0..bk-1 at dg. The backward's
// pointwise passes call it on the next row's block of the same step while they compute this
// row's: the gate gradients go to a fresh region of the [T, N, G*H] buffers at every step, and
// without it each of their cache lines is a miss that stalls the stores (about 6% of an LSTM
// backward at config a). Not across steps: prefetching the step before's blocks (batch 1) made
// the two-thread backward 4-6% slower at config d.
template <typename Scalar>
inline void prefetch_gate_blocks_for_write(const Scalar* dg, Index G, Index H, Index bk) {
  constexpr Index L = 64 / Index(sizeof(Scalar));
  for (Index g = 0; g < G; ++g)
    for (Index j = 0; j < bk; j += L) __builtin_prefetch(dg + g * H + j, 1, 3);
}

// The input projection gx = x w_ihᵀ runs in chunks of steps, just before the steps that read
// it: the chunk stays in cache, and forward memory does not grow with T (inference over a long
// sequence needs only the state and one chunk). About two row blocks of the GEMM per chunk.
constexpr Index proj_chunk_steps(const Dims& d) {
  return std::max<Index>(1, std::min<Index>(d.T, 2 * Panel<float>::MB / d.N));
}

// Forward prologue: packs w_ih into `packed` [packed_bound(C, G*H)] (unless the options say it
// is there from an earlier call); y [T, N, R] is zeroed when lengths leave padded steps unwritten.
template <typename Scalar>
void forward_prologue(const Dims& d, const Options& opt, Index G, const Scalar* w_ih,
                      const std::int64_t* lengths, Scalar* packed, Scalar* y) {
  if (!opt.weights_packed) par_pack(w_ih, d.C, G * d.H, d.C, true, packed);
  if (lengths) par_fill(y, d.T * d.N * rec_width(d), Scalar(0));
}

// Work-shared, at the first step s0 of each chunk: gxs [(s1 - s0) * N, G*H] = the inputs the
// steps s0..s1-1 read, x[t(s, n), n], times w_ihᵀ (packed), in step order (biases come later).
// Forward, step order is time order; reverse gathers the rows into xs first. Rows of finished
// sequences are computed but never read.
template <typename Scalar>
void project_steps(const Dims& d, Index G, const StepMap& sm, Index s0, Index s1, const Scalar* x,
                   const Scalar* packed, Scalar* xs, Scalar* gxs) {
  const Index N = d.N, C = d.C, rows = (s1 - s0) * N;
  const Scalar* a = x + s0 * N * C;
  if (sm.reverse) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (Index r = 0; r < rows; ++r) {
      const Index t = sm.time(s0 + r / N, r % N);
      if (t >= 0)
        std::copy(x + (t * N + r % N) * C, x + (t * N + r % N + 1) * C, xs + r * C);
      else
        std::fill(xs + r * C, xs + (r + 1) * C, Scalar(0));
    }
    a = xs;
  }
  par_gemm_packed(rows, G * d.H, C, a, C, packed, gxs, G * d.H, false);
}

// dst [count] = src, or zeros when src is null. Work-shared.
template <typename Scalar>
void par_copy_or_zero(Scalar* dst, const Scalar* src, Index count) {
  if (src) {
    const Index chunk = 1 << 14, tiles = ceil_div(count, chunk);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (Index t = 0; t < tiles; ++t)
      std::copy(src + t * chunk, src + std::min(count, (t + 1) * chunk), dst + t * chunk);
  } else {
    par_fill(dst, count, Scalar(0));
  }
}

// A weight-gradient product C[m, n] += Aᵀ B over k rows (par_gemm_tn_add), or, with a sink
// (WeightGradSink, common.h: the single-step cells defer them), handed to it on one thread.
// Work-shared either way (every thread calls it; the single has its barrier).
template <typename Scalar>
void par_wgrad(WeightGradSink<Scalar>* sink, Index m, Index n, Index k, const Scalar* A, Index lda,
               const Scalar* B, Index ldb, Scalar* C, Index ldc) {
  if (!sink) return par_gemm_tn_add(m, n, k, A, lda, B, ldb, C, ldc);
  if (k == 0 || m == 0 || n == 0) return;  // (par_gemm_tn_add adds nothing either)
#ifdef _OPENMP
#pragma omp single
#endif
  sink->add(C, ldc, m, n, k, A, lda, B, ldb);
}

// A backward's sink (WeightGradSink) is for the rectangular float32-precision path only.
template <class Args>
void check_sink(const char* fn, const Args& a, const Options& opt) {
  if (a.wgrad_sink && (a.lengths || opt.precision != Precision::float32))
    fail(std::string(fn) + ": wgrad_sink needs Precision::float32 and no lengths");
}

// Backward epilogue, after the time loop has produced the pre-activation gradients
//   dgx [T*N, G*H] in time order (zero at padded steps): the input-side gradients, and
//   dgh [S*N, G*H] in step order (zero for inactive rows): the recurrent-side gradients,
// with hs [S*N, R] the state each step read (R, the recurrent width: H, or the LSTM's projection
// size P). Forward computed gx = x w_ihᵀ and gh = h w_hhᵀ (w_hh [G*H, R]), so
//   dx = dgx w_ih,  dw_ih += dgxᵀ x,  dw_hh += dghᵀ hs,  db_ih += Σ rows dgx,  db_hh += Σ rows dgh.
// dw_hh may be null (a cell whose recurrent product does not read hs does its own); dx may be
// null (not wanted: the input is data). `packed` [packed_bound(G*H, C)] receives w_ih packed for
// dx (holds it already when `weights_packed`: Options::weights_packed of a backward call). It is
// packed without dx too, so that a later call with weights_packed finds it whether or not it
// wants dx.
template <typename Scalar>
void backward_epilogue(const Dims& d, Index S, Index G, Index R, const Scalar* x,
                       const Scalar* w_ih, const Scalar* dgx, const Scalar* dgh, const Scalar* hs,
                       Scalar* packed, Scalar* dx, Scalar* dw_ih, Scalar* dw_hh, Scalar* db_ih,
                       Scalar* db_hh, bool weights_packed = false,
                       WeightGradSink<Scalar>* sink = nullptr) {
  const Index TN = d.T * d.N, GH = G * d.H;
  if (!weights_packed) par_pack(w_ih, GH, d.C, d.C, false, packed);
  if (dx) par_gemm_packed(TN, d.C, GH, dgx, GH, packed, dx, d.C, false);
  if (dw_ih) par_wgrad(sink, GH, d.C, TN, dgx, GH, x, d.C, dw_ih, d.C);
  if (dw_hh) par_wgrad(sink, GH, R, S * d.N, dgh, GH, hs, R, dw_hh, R);
  if (db_ih && db_hh && dgx == dgh && S == d.T) {
    // Forward order without padding: both bias gradients are the same column sum of one buffer.
    par_colsum_add(TN, GH, dgx, GH, db_ih, db_hh);
  } else {
    if (db_ih) par_colsum_add(TN, GH, dgx, GH, db_ih);
    if (db_hh) par_colsum_add(S * d.N, GH, dgh, GH, db_hh);
  }
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
