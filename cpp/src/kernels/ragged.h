// Ragged batches: work proportional to the valid (t, n) positions, inference and training.
//
// With `lengths`, a forward kernel orders the sequences by length (longest first, ties by
// index: a permutation kept in its workspace; callers never sort), so that the sequences still
// running at step s are a prefix of the ordered rows. The input projection x w_ihᵀ covers only
// the running rows of each step, a chunk of steps at a time (par_project_ragged); step s then
// runs the recurrent product and the gate pass on its running rows only, and writes each row's
// output at its caller's position. A finished row is
// never touched again: its final state stays in the state slot it last wrote (slot len % 2 of
// the double buffer in inference, slot len of the cache in training) and is copied out in the
// caller's order at the end.
//
// Training: the cache keeps the rectangular sizes; slot s of its per-step arrays holds ordered
// row i at row i (rows past the running ones unwritten). Backward sorts the same way (the same
// lengths give the same order), walks the steps down over the running rows (a row's dh_n enters
// at its last step from slot len % 2 of the dh double buffer, and its dh0 leaves from slot 0),
// and keeps the pre-activation gradients compact: step s's rows at off[s].., V rows in all.
// After the loop, dx = dg w_ih is one product over the V rows, scattered to the caller's (t, n)
// (padded rows zero); the weight and bias gradients sum over the valid positions only, through
// row maps (packed_gemm.h: par_gemm_tn_add; kernel.h: par_colsum_add) listing them in the order
// the rectangular loop summed all rows: time order for the input side, step order (and the
// caller's row order within a step) for the recurrent side.
//
// Bit for bit the rectangular path's values: every output element of the packed GEMM is one
// accumulation over k in order whatever the number and position of the rows (packed_gemm.h),
// the gate passes are per row, and the rectangular loop's weight-gradient sums differed only by
// the exact zeros of padded positions. Padded outputs and padded dx stay zero.
#pragma once

#include <algorithm>

#include "kernels/packed_gemm.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// Scalars of workspace that hold the order of N rows (N Index values, for float or double).
constexpr Index ragged_order_scalars(Index N) { return 2 * N; }

struct RaggedOrder {
  const std::int64_t* lengths;
  Index* order;  // order[i]: the caller's row of ordered row i
  Index N;

  // On one thread, before the parallel region. In place (std::sort allocates nothing).
  void sort() const {
    for (Index i = 0; i < N; ++i) order[i] = i;
    const std::int64_t* len = lengths;
    std::sort(order, order + N, [len](Index a, Index b) {
      return len[a] != len[b] ? len[a] > len[b] : a < b;
    });
  }
  Index len(Index i) const { return lengths[order[i]]; }
  // Ordered rows still running at step s, from the count at an earlier step (every thread keeps
  // its own count; all compute the same one).
  Index active(Index s, Index prev) const {
    while (prev > 0 && len(prev - 1) <= s) --prev;
    return prev;
  }
  // The same, from the count at a later step (backward walks the steps down).
  Index active_down(Index s, Index prev) const {
    while (prev < N && len(prev) > s) ++prev;
    return prev;
  }
  // Time step that ordered row i processes at step s (i active).
  Index time(Index s, Index i, bool reverse) const { return reverse ? len(i) - 1 - s : s; }
};

// Work-shared: dst[i] = src[order[i]] (rows of `width`), or zeros when src is null.
template <typename Scalar>
void par_gather_rows(const RaggedOrder& r, const Scalar* src, Index width, Scalar* dst) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index i = 0; i < r.N; ++i) {
    if (src)
      std::copy(src + r.order[i] * width, src + (r.order[i] + 1) * width, dst + i * width);
    else
      std::fill(dst + i * width, dst + (i + 1) * width, Scalar(0));
  }
}

// Work-shared, at the first step s0 of each chunk of steps s0..s1-1 (the forward's projection
// chunks, proj_chunk_steps; `na`: the running count of an earlier step): the inputs of each
// step's running rows are gathered into xs step after step (step s's rows follow those of the
// chunk's earlier steps), then projected in one product, gxs [rows, G*H] = xs w_ihᵀ (packed), so
// that w_ih streams once per chunk, not once per step. Bit for bit
// the per-step products: each output element is one accumulation over k whatever the rows.
template <typename Scalar>
void par_project_ragged(const Dims& d, const RaggedOrder& r, bool reverse, Index G, Index s0,
                        Index s1, Index na, const Scalar* x, const Scalar* packed, Scalar* xs,
                        Scalar* gxs) {
  const Index C = d.C;
  Index rows = 0;
  for (Index s = s0; s < s1; ++s) {  // every thread walks the steps; the copies are shared
    na = r.active(s, na);
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
    for (Index i = 0; i < na; ++i) {
      const Scalar* src = x + (r.time(s, i, reverse) * d.N + r.order[i]) * C;
      std::copy(src, src + C, xs + (rows + i) * C);
    }
    rows += na;
  }
#ifdef _OPENMP
#pragma omp barrier
#endif
  par_gemm_packed(rows, G * d.H, C, xs, C, packed, gxs, G * d.H, false);
}

// Serial (inside a single construct): the final state of each caller row n, which its ordered
// row i last wrote into slot len % 2 of the double buffer `buf` [2, N, width], or with
// `cache`, into slot len of the cache's [T+1, N, width].
template <typename Scalar>
void scatter_final_state(const RaggedOrder& r, const Scalar* buf, Index width, Scalar* out,
                         bool cache = false) {
  for (Index i = 0; i < r.N; ++i) {
    const Scalar* src = buf + ((cache ? r.len(i) : r.len(i) % 2) * r.N + i) * width;
    std::copy(src, src + width, out + r.order[i] * width);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

// Scalars of workspace for RaggedSteps (Index values, for float or double): order, pos, off and
// the four row maps.
constexpr Index ragged_steps_scalars(Index T, Index N) { return 2 * (2 * N + T + 1 + 4 * T * N); }

// The backward's bookkeeping, built once per call on one thread before the parallel region.
struct RaggedSteps {
  RaggedOrder ro;
  bool reverse;
  Index S, V;   // steps run, valid positions
  Index* pos;   // pos[n]: the ordered row of caller row n
  Index* off;   // off[s]: compact rows before step s (off[S] = V)
  // Valid positions in step order, the caller's row order within a step (the order of the
  // recurrent-side sums): their compact row (step_c) and their cache row s*N + i (step_k).
  Index *step_c, *step_k;
  // Valid positions in time order (t, then n; the order of the input-side sums): their
  // compact row (time_c) and their row t*N + n of x (time_x).
  Index *time_c, *time_x;

  Index na(Index s) const { return off[s + 1] - off[s]; }
  Index time(Index s, Index i) const { return ro.time(s, i, reverse); }

  // mem: ragged_steps_scalars(T, N) scalars, 8-byte aligned.
  RaggedSteps(const std::int64_t* lengths, Index T, Index N, Index S_, bool reverse_, void* mem)
      : ro{lengths, static_cast<Index*>(mem), N}, reverse(reverse_), S(S_) {
    Index* p = ro.order + N;
    pos = p, p += N;
    off = p, p += T + 1;
    step_c = p, p += T * N;
    step_k = p, p += T * N;
    time_c = p, p += T * N;
    time_x = p;
    ro.sort();
    for (Index i = 0; i < N; ++i) pos[ro.order[i]] = i;
    off[0] = 0;
    for (Index s = 0, na = N; s < S; ++s) {
      na = ro.active(s, na);
      off[s + 1] = off[s] + na;
    }
    V = off[S];
    Index j = 0;
    for (Index s = 0; s < S; ++s)
      for (Index n = 0; n < N; ++n)
        if (lengths[n] > s) step_c[j] = off[s] + pos[n], step_k[j] = s * N + pos[n], ++j;
    j = 0;
    for (Index t = 0; t < S; ++t)
      for (Index n = 0; n < N; ++n)
        if (lengths[n] > t) {
          const Index s = reverse ? lengths[n] - 1 - t : t;
          time_c[j] = off[s] + pos[n], time_x[j] = t * N + n, ++j;
        }
  }
};

// Work-shared: row i of the double buffer `buf` [2, N, width] in slot len(i) % 2, where the
// backward's step len(i) - 1 reads it, = src[order[i]] (dh_n, dc_n), or zeros when src is null.
template <typename Scalar>
void par_gather_final_grad(const RaggedOrder& r, const Scalar* src, Index width, Scalar* buf) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index i = 0; i < r.N; ++i) {
    Scalar* dst = buf + ((r.len(i) % 2) * r.N + i) * width;
    if (src)
      std::copy(src + r.order[i] * width, src + (r.order[i] + 1) * width, dst);
    else
      std::fill(dst, dst + width, Scalar(0));
  }
}

// Serial: out[order[i]] = row i of slot 0 of `buf` [2, N, width] (dh0, dc0: rows that ran wrote
// it at step 0, the others kept their dh_n there).
template <typename Scalar>
void scatter_initial_grad(const RaggedOrder& r, const Scalar* buf, Index width, Scalar* out) {
  for (Index i = 0; i < r.N; ++i)
    std::copy(buf + i * width, buf + (i + 1) * width, out + r.order[i] * width);
}

// Backward epilogue with lengths, skeleton.h's backward_epilogue over the valid positions only:
// dgx and dgh [V, G*H] compact (the input-side and recurrent-side pre-activation gradients; the
// same buffer when they are equal), hs the cache's h slots (ordered rows), dxc [V, C] scratch,
// `packed` [packed_bound(G*H, C)] for w_ih (holding it already when `weights_packed`,
// Options::weights_packed: the same place as the rectangular backward's); dx null: not computed.
// Work-shared.
template <typename Scalar>
void ragged_backward_epilogue(const Dims& d, const RaggedSteps& rs, Index G, Index R,
                              const Scalar* x, const Scalar* w_ih, const Scalar* dgx,
                              const Scalar* dgh, const Scalar* hs, Scalar* packed, Scalar* dxc,
                              Scalar* dx, Scalar* dw_ih, Scalar* dw_hh, Scalar* db_ih,
                              Scalar* db_hh, bool weights_packed) {
  const Index N = d.N, C = d.C, GH = G * d.H, V = rs.V;
  const std::int64_t* lengths = rs.ro.lengths;
  if (!weights_packed) par_pack(w_ih, GH, C, C, false, packed);
  if (dx && V > 0) par_gemm_packed(V, C, GH, dgx, GH, packed, dxc, C, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index r = 0; r < (dx ? d.T * N : 0); ++r) {  // dx [T, N, C]: valid rows from dxc,
                                                     // padded rows zero
    const Index t = r / N, n = r % N, len = lengths[n];
    if (t < len) {
      const Scalar* src = dxc + (rs.off[rs.reverse ? len - 1 - t : t] + rs.pos[n]) * C;
      std::copy(src, src + C, dx + r * C);
    } else {
      std::fill(dx + r * C, dx + (r + 1) * C, Scalar(0));
    }
  }
  if (dw_ih) par_gemm_tn_add(GH, C, V, dgx, GH, x, C, dw_ih, C, rs.time_c, rs.time_x);
  if (dw_hh) par_gemm_tn_add(GH, R, V, dgh, GH, hs, R, dw_hh, R, rs.step_c, rs.step_k);
  if (db_ih && db_hh && dgx == dgh && !rs.reverse) {
    // Forward order: time order is step order, and both bias gradients are one column sum.
    par_colsum_add(V, GH, dgx, GH, db_ih, db_hh, rs.time_c);
  } else {
    if (db_ih) par_colsum_add(V, GH, dgx, GH, db_ih, static_cast<Scalar*>(nullptr), rs.time_c);
    if (db_hh) par_colsum_add(V, GH, dgh, GH, db_hh, static_cast<Scalar*>(nullptr), rs.step_c);
  }
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
