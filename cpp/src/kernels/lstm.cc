// LSTM forward and backward kernels (PyTorch gate order i, f, g, o; optional peepholes; optional
// projection of the hidden state, PyTorch's proj_size).
// Recipe: one GEMM projects all T*N inputs; per step one blocked GEMM gives h_{t-1} w_hhᵀ, then a
// fused pass adds biases, applies the gates and updates c and h. Backward walks the steps in
// reverse with one fused pass producing the pre-activation gradients and one GEMM giving the
// state gradient; large GEMMs after the loop give the weight and input gradients.
// With projection (P > 0) the fused pass writes m = o*tanh(c) instead of h, and one more GEMM per
// step gives h = m w_hrᵀ; backward first forms dh (P units) and dm = dh w_hr, then runs the same
// fused pass on dm. The pointwise math: lstm_pointwise.h.
#include "isa/copy.inc"
#include "kernels/layout.h"
#include "kernels/lstm_pointwise.h"
#include "kernels/ragged.h"
#include "kernels/skeleton.h"
#include "lowp/bf16_backward.h"
#include "lowp/bf16_steps.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

using detail::Index;

namespace {

// ---------------------------------------------------------------------------------------------
// Layouts (layout.h): one description each, for the size query and the kernel.

// Cache: hs [T+1, N, R] (h before each step, step order), cs [T+1, N, H] (c likewise),
// gates [T, N, 4H] (activated i, f, g, o, step order) and, with projection, ms [T, N, H]
// (m = o*tanh(c) of each step, zero for inactive rows, step order). R = P if P > 0 else H.
template <typename T>
struct Cache {
  T *hs, *cs, *gates, *ms;
};
template <typename T>
Cache<T> cache_layout(const Dims& d, detail::Carver<T>& c) {
  const Index R = detail::rec_width(d), N = d.N, H = d.H;
  Cache<T> k{};
  k.hs = c.take((d.T + 1) * N * R);
  k.cs = c.take((d.T + 1) * N * H);
  k.gates = c.take(d.T * N * 4 * H);
  k.ms = d.P > 0 ? c.take(d.T * N * H) : nullptr;
  return k;
}

// Forward workspace: packed w_ih and w_hh (and w_hr with projection) first, at offsets that
// depend on C, H and P only (Options::weights_packed; lowp, the bf16 and int8 forwards, which
// keep their packed w_ih and w_hh in their own block in front: w_hr only), then a chunk of the input projection gx
// and, for reverse, the gathered inputs xs; gh [N, 4H], h and c double buffers [2, N, R] and
// [2, N, H] (used when no cache is given) and, with projection, m of one step [N, H]; last the
// order of the rows for ragged inference (ragged.h).
template <typename T>
struct ForwardSpace {
  T *wih_p, *whh_p, *whr_p, *gx, *xs, *gh, *hbuf, *cbuf, *mbuf, *order;
};
template <typename T>
ForwardSpace<T> forward_layout(const Dims& d, detail::Carver<T>& c, bool lowp) {
  using namespace detail;
  const Index R = rec_width(d), N = d.N, H = d.H, GH = 4 * H, TC = proj_chunk_steps(d);
  const bool proj = d.P > 0;
  ForwardSpace<T> w{};
  w.wih_p = lowp ? nullptr : c.take_aligned(packed_bound(d.C, GH));
  w.whh_p = lowp ? nullptr : c.take_aligned(packed_bound(R, GH));
  w.whr_p = proj ? c.take_aligned(packed_bound(H, d.P)) : nullptr;
  w.gx = c.take(TC * N * GH);  // [TC * N, 4H]: steps s0.. of the current chunk
  w.xs = c.take(TC * N * d.C);
  w.gh = c.take(N * GH);
  w.hbuf = c.take(2 * N * R);
  w.cbuf = c.take(2 * N * H);
  w.mbuf = proj ? c.take(N * H) : nullptr;
  w.order = c.take_aligned(ragged_order_scalars(N));  // ragged inference (ragged.h)
  return w;
}

// Backward workspace: dgh [T, N, 4H] (step order), dgx [T, N, 4H] (time order), dh and dc double
// buffers [2, N, R] and [2, N, H]; with projection also dh of every step [T, N, P] (step order,
// for dw_hr), dm of one step [N, H] and packed w_hr; then what only the float32 backward uses:
// packed w_hh and w_ih and, for lengths (ragged.h), dx of the valid positions [T*N, C] and the
// steps' bookkeeping. lowp (the bf16 backward, bf16_backward.h): dgh holds one step [N, 4H] and
// dgx none (the bf16 block keeps every step's gradients, in bf16), and the layout stops before
// that float32 part (its pointers null); the bf16 block follows.
template <typename T>
struct BackwardSpace {
  T *dgh, *dgx, *dhbuf, *dcbuf, *whh_q, *wih_q, *dhp, *dm, *whr_q, *dxc, *rag;
};
template <typename T>
BackwardSpace<T> backward_layout(const Dims& d, detail::Carver<T>& c, bool lowp = false) {
  using namespace detail;
  const Index R = rec_width(d), N = d.N, H = d.H, GH = 4 * H, P = d.P;
  const bool proj = P > 0;
  BackwardSpace<T> w{};
  w.dgh = c.take((lowp ? 1 : d.T) * N * GH);  // lowp: one step's (bf16_backward.h)
  w.dgx = c.take((lowp ? 0 : d.T) * N * GH);
  w.dhbuf = c.take(2 * N * R);
  w.dcbuf = c.take(2 * N * H);
  w.dhp = proj ? c.take(d.T * N * P) : nullptr;  // [T, N, P], step order
  w.dm = proj ? c.take(N * H) : nullptr;          // [N, H]
  w.whr_q = proj ? c.take_aligned(packed_bound(P, H)) : nullptr;
  if (lowp) return w;
  w.whh_q = c.take_aligned(packed_bound(GH, R));
  w.wih_q = c.take_aligned(packed_bound(GH, d.C));
  w.dxc = c.take(d.T * N * d.C);
  w.rag = c.take_aligned(ragged_steps_scalars(d.T, N));
  return w;
}

// ---------------------------------------------------------------------------------------------
// Argument checks: the kernel is the one authority on their consistency.

// cell_clip: 0 (none) or a positive bound.
void check_clip(const char* fn, double clip) {
  if (!(clip >= 0 && clip < HUGE_VAL))
    detail::fail(std::string(fn) + ": cell_clip must be a finite number >= 0 (0 = no clip), "
                 "got " + std::to_string(clip));
}

// w_hr must be given exactly when the dims ask for a projection.
void check_projection(const char* fn, const Dims& d, const void* w_hr) {
  if (w_hr == nullptr && d.P != 0)
    detail::fail(std::string(fn) + ": w_hr must not be null when P = " + std::to_string(d.P) +
                 " > 0");
  if (w_hr != nullptr && d.P <= 0)
    detail::fail(std::string(fn) + ": w_hr given but P = 0 (no projection)");
}

isa::Sizes sizes(const Dims& d) {
  detail::check_dims("lstm_sizes", d, true);
  return detail::cell_sizes(d, &cache_layout<float>, &forward_layout<float>,
                            &backward_layout<float>);
}

// ---------------------------------------------------------------------------------------------

// With lengths (ragged.h): rows ordered by length, step s works on the running ones. Training
// writes the cache with ordered rows (slot s, row i). Arguments checked by forward().
template <typename Scalar>
void forward_ragged(const Dims& d, const LstmForwardArgs<Scalar>& a, const Options& opt,
                    const ForwardSpace<Scalar>& w, const Cache<Scalar>& k, Index S) {
  using namespace detail;
  const Index N = d.N, H = d.H, GH = 4 * H, NH = N * H, P = d.P, R = rec_width(d), NR = N * R;
  const bool proj = P > 0, training = a.cache != nullptr;
  const Scalar *b_ih = a.b_ih, *b_hh = a.b_hh, *w_peep = a.w_peep;
  Scalar* hs = training ? k.hs : w.hbuf;
  Scalar* cs = training ? k.cs : w.cbuf;
  // State before step s: slot s of the cache, or slot s % 2 of the double buffer.
  auto slot = [&](Scalar* base, Index s, Index size) {
    return base + (training ? s : s % 2) * size;
  };
  const RaggedOrder ro{a.lengths, reinterpret_cast<Index*>(w.order), N};
  ro.sort();
  parallel_region(thread_count(opt, d, 4), [&] {
    forward_prologue(d, opt, 4, a.w_ih, a.lengths, w.wih_p, a.y);
    if (!opt.weights_packed) {
      par_pack(a.w_hh, R, GH, R, true, w.whh_p);
      if (proj) par_pack(a.w_hr, H, P, H, true, w.whr_p);
    }
    par_gather_rows(ro, a.h0, R, hs);
    par_gather_rows(ro, a.c0, H, cs);
    const Index TC = proj_chunk_steps(d);
    Index na = N, row = 0;  // row: step s's first row in the chunk's projection w.gx
    for (Index s = 0; s < S; ++s) {
      if (s % TC == 0) {
        par_project_ragged(d, ro, opt.reverse, 4, s, std::min(S, s + TC), na, a.x, w.wih_p,
                           w.xs, w.gx);
        row = 0;
      }
      na = ro.active(s, na);
      const Scalar* h_prev = slot(hs, s, NR);
      const Scalar* c_prev = slot(cs, s, NH);
      Scalar* h_next = slot(hs, s + 1, NR);
      Scalar* c_next = slot(cs, s + 1, NH);
      Scalar* m = proj ? (training ? k.ms + s * NH : w.mbuf) : nullptr;  // [na, H]
      const Scalar* gx = w.gx + row * GH;
      row += na;
      par_gemm_packed(na, GH, R, h_prev, R, w.whh_p, w.gh, GH, false);
      for_unit_blocks(na, H, [&](Index i, Index u0, Index bk, Index off) {
        const Index n = ro.order[i], t = ro.time(s, i, opt.reverse);
        lstm_pointwise_forward(bk, H, gx + i * GH + u0, w.gh + i * GH + u0,
                               b_ih ? b_ih + u0 : nullptr, b_hh ? b_hh + u0 : nullptr,
                               w_peep ? w_peep + u0 : nullptr, c_prev + off, c_next + off,
                               proj ? m + off : h_next + off,
                               proj ? nullptr : a.y + (t * N + n) * H + u0,
                               training ? k.gates + (s * N + i) * GH + u0 : nullptr,
                               a.cell_clip);
      });
      if (proj) {
        par_gemm_packed(na, P, H, m, H, w.whr_p, h_next, P, false);  // h = m w_hrᵀ
        for_rows(na, [&](Index i) {
          const Index n = ro.order[i], t = ro.time(s, i, opt.reverse);
          carry(h_next + i * P, a.y + (t * N + n) * P, P);
        });
      }
    }
#ifdef _OPENMP
#pragma omp single
#endif
    {
      scatter_final_state(ro, hs, R, a.h_n, training);
      scatter_final_state(ro, cs, H, a.c_n, training);
    }
  });
}

template <typename Scalar>
void forward(const Dims& d, const LstmForwardArgs<Scalar>& a, const Options& opt,
             Scalar* workspace) {
  using namespace detail;
  const char* fn = "lstm_forward";
  detail::check_dims(fn, d, true);
  check_forward_ptrs(fn, a, workspace);
  check_ptr(fn, a.c_n, "c_n");
  check_projection(fn, d, a.w_hr);
  check_clip(fn, double(a.cell_clip));
  const Index S = check_lengths(fn, d, a.lengths);
  const Index N = d.N, H = d.H, GH = 4 * H, NH = N * H, P = d.P, R = rec_width(d), NR = N * R;
  const bool proj = P > 0;
  const StepMap sm{a.lengths, d.T, opt.reverse};
  const bool training = a.cache != nullptr;
  const Scalar *b_ih = a.b_ih, *b_hh = a.b_hh, *w_peep = a.w_peep;
  Scalar* y = a.y;

  const Index TC = proj_chunk_steps(d);
  const LowpForward lp = lowp_forward_setup(fn, d, opt, 4, false, training, a.w_ih, a.w_hh,
                                            workspace);
  const bool bf16 = lp.bf16, int8 = lp.int8, lowpx = lp.any;
  const lowp::Tier tier = lp.tier;
  const lowp::Bf16Block& lb = lp.lb;
  const lowp::S8Block& qb = lp.qb;
  // bf16: which packed form of the weights this call packs (lowp.h: Bf16Block::formats)
  bool pack_panels = !opt.weights_packed;
  if constexpr (std::is_same_v<Scalar, float>) {
    if (bf16) {
      if (lb.wf && !training && lowp::lstm_fused_runs(d)) {  // the fused AMX step (amx_cells.cc)
        const bool pack = lowp::packs_form(lb, opt.weights_packed, lowp::kPackedFused);
        const lowp::LstmFusedArgs fa{a.x,   a.w_ih, a.w_hh, b_ih,   b_hh, w_peep, a.h0,
                                     a.c0,  a.cell_clip,    a.lengths, opt.reverse, y,
                                     a.h_n, a.c_n,  lb.wf,  lb.xf,  lb.hf};
        lowp::lstm_fused_forward(d, fa, pack, thread_count(opt, d, 4));
        return;
      }
      pack_panels = lowp::packs_form(lb, opt.weights_packed, lowp::kPackedPanels);
    }
  }
  Carver<Scalar> wc(workspace);
  const ForwardSpace<Scalar> w = forward_layout(d, wc, lowpx);
  Carver<Scalar> cc(a.cache);
  const Cache<Scalar> k = cache_layout(d, cc);
  // Lengths (ragged.h): float32 and float64; bfloat16 keeps the rectangular path.
  if (a.lengths && !lowpx) return forward_ragged(d, a, opt, w, k, S);
  Scalar* hs = training ? k.hs : w.hbuf;
  Scalar* cs = training ? k.cs : w.cbuf;
  // State before step s: slot s of the cache, or slot s % 2 of the double buffer.
  // `size`: the scalars of one slot (N*R for h, N*H for c).
  auto slot = [&](Scalar* base, Index s, Index size) {
    return base + (training ? s : s % 2) * size;
  };

  const int threads = thread_count(opt, d, 4);
  const bool s8_split = int8 && !training && !proj && s8_rows_split(N, GH, R, threads);
  parallel_region(threads, [&] {
    const S8Rows rows(s8_split, N);  // int8 inference: maybe this thread's rows (bf16_steps.h)
    if (!lowpx) {
      forward_prologue(d, opt, 4, a.w_ih, a.lengths, w.wih_p, y);
      if (!opt.weights_packed) {
        par_pack(a.w_hh, R, GH, R, true, w.whh_p);
        if (proj) par_pack(a.w_hr, H, P, H, true, w.whr_p);
      }
    } else if constexpr (std::is_same_v<Scalar, float>) {
      if (int8 && !opt.weights_packed) {
        par_pack_s8(a.w_ih, GH, d.C, qb.wih);
        par_pack_s8(a.w_hh, GH, R, qb.whh);
      } else if (bf16 && pack_panels) {
        par_pack_bf16(a.w_ih, GH, d.C, lb.wih);
        par_pack_bf16(a.w_hh, GH, R, lb.whh);
      }
      // The projection stays fp32, packed in the fp32 layout behind the low-precision block,
      // whose size depends on N: a frozen layer's smaller batch would find it moved, so it is
      // packed at every call (H x P, small beside the call's products).
      if (proj) par_pack(a.w_hr, H, P, H, true, w.whr_p);
      if (a.lengths) par_fill(y, d.T * N * R, Scalar(0));
    }
    par_copy_or_zero(hs, a.h0, NR);
    par_copy_or_zero(cs, a.c0, NH);
    for (Index s = 0; s < S; ++s) {
      const Scalar* h_prev = slot(hs, s, NR);
      const Scalar* c_prev = slot(cs, s, NH);
      Scalar* h_next = slot(hs, s + 1, NR);
      Scalar* c_next = slot(cs, s + 1, NH);
      Scalar* m = proj ? (training ? k.ms + s * NH : w.mbuf) : nullptr;  // [N, H]
      if (!lowpx) {
        if (s % TC == 0)
          project_steps(d, 4, sm, s, std::min(S, s + TC), a.x, w.wih_p, w.xs, w.gx);
        par_gemm_packed(N, GH, R, h_prev, R, w.whh_p, w.gh, GH, false);
      } else if constexpr (std::is_same_v<Scalar, float>) {
        if (int8) {
          if (s % TC == 0) {
            if (s > 0) rows.sync();
            project_steps_s8(tier, d, 4, sm, s, std::min(S, s + TC), a.x, qb, w.gx);
          }
          gemm_rows_s8(tier, rows, N, GH, R, h_prev, R, qb.hq, qb.hscale, qb.whh, w.gh, GH);
        } else {
          if (s % TC == 0)
            project_steps_bf16(tier, d, 4, sm, s, std::min(S, s + TC), a.x, lb, w.gx);
          gemm_rows_bf16(tier, N, GH, R, h_prev, R, lb.hb, lb.whh, w.gh, GH);
        }
      }
      unit_blocks(rows, N, H, [&](Index n, Index u0, Index bk, Index off) {
        const Index t = sm.time(s, n);
        if (t < 0) {  // finished sequence: carry its state through
          if (proj)   // m = 0: no gradient flows to w_hr; h is carried after the projection
            std::fill(m + off, m + off + bk, Scalar(0));
          else
            carry(h_prev + off, h_next + off, bk);
          carry(c_prev + off, c_next + off, bk);
          return;
        }
        // One fused pass: the gates, c, and h (m with projection; y then comes from h below).
        const Index gu = ((s % TC) * N + n) * GH + u0;
        lstm_pointwise_forward(bk, H, w.gx + gu, w.gh + n * GH + u0, b_ih ? b_ih + u0 : nullptr,
                               b_hh ? b_hh + u0 : nullptr, w_peep ? w_peep + u0 : nullptr,
                               c_prev + off, c_next + off, proj ? m + off : h_next + off,
                               proj ? nullptr : y + (t * N + n) * H + u0,
                               training ? k.gates + (s * N + n) * GH + u0 : nullptr,
                               a.cell_clip);
      });
      if (proj) {
        // h = m w_hrᵀ [N, P]; a finished sequence carries h_prev instead, an active one writes y.
        par_gemm_packed(N, P, H, m, H, w.whr_p, h_next, P, false);
        for_rows(N, [&](Index n) {
          const Index t = sm.time(s, n);
          if (t < 0)
            carry(h_prev + n * P, h_next + n * P, P);
          else
            carry(h_next + n * P, y + (t * N + n) * P, P);
        });
      }
    }
    rows.sync();  // the other threads' last rows (omp single has no barrier on entry)
#ifdef _OPENMP
#pragma omp single
#endif
    {
      std::copy(slot(hs, S, NR), slot(hs, S, NR) + NR, a.h_n);
      std::copy(slot(cs, S, NH), slot(cs, S, NH) + NH, a.c_n);
    }
  });
}

// With lengths (ragged.h): the steps walk down over the running rows, the gradients stay
// compact (step s's rows at off[s]..) and the epilogue sums over the valid positions only.
// Arguments checked by backward().
template <typename Scalar>
void backward_ragged(const Dims& d, const LstmBackwardArgs<Scalar>& a, const Options& opt,
                     const Cache<const Scalar>& k, const BackwardSpace<Scalar>& w, Index S) {
  using namespace detail;
  const Index N = d.N, H = d.H, GH = 4 * H, NH = N * H, P = d.P, R = rec_width(d), NR = N * R;
  const bool proj = P > 0;
  const Scalar *dy = a.dy, *w_peep = a.w_peep;
  const RaggedSteps rs(a.lengths, d.T, N, S, opt.reverse, w.rag);
  const RaggedOrder& ro = rs.ro;
  Scalar *dgh = w.dgh, *dhbuf = w.dhbuf, *dcbuf = w.dcbuf;

  parallel_region(thread_count(opt, d, 4), [&] {
    if (!opt.weights_packed) {
      par_pack(a.w_hh, GH, R, R, false, w.whh_q);
      if (proj) par_pack(a.w_hr, P, H, H, false, w.whr_q);
    }
    par_gather_final_grad(ro, a.dh_n, R, dhbuf);
    par_gather_final_grad(ro, a.dc_n, H, dcbuf);
    Index na = 0;
    for (Index s = S - 1; s >= 0; --s) {
      na = ro.active_down(s, na);
      const Scalar* dh_cur = dhbuf + ((s + 1) % 2) * NR;
      const Scalar* dc_cur = dcbuf + ((s + 1) % 2) * NH;
      Scalar* dh_nxt = dhbuf + (s % 2) * NR;
      Scalar* dc_nxt = dcbuf + (s % 2) * NH;
      Scalar* dgs = dgh + rs.off[s] * GH;  // [na, 4H]
      if (proj) {
        // dh = carried dh + dy[t] [na, P] (kept for dw_hr), dm = dh w_hr; dh_nxt starts at 0.
        Scalar* dhps = w.dhp + rs.off[s] * P;
        for_rows(na, [&](Index i) {
          const Index n = ro.order[i], t = rs.time(s, i);
          const Scalar* cur = dh_cur + i * P;
          const Scalar* dyr = dy ? dy + (t * N + n) * P : nullptr;
          Scalar* row = dhps + i * P;
          for (Index j = 0; j < P; ++j) row[j] = cur[j] + (dyr ? dyr[j] : Scalar(0));
          std::fill(dh_nxt + i * P, dh_nxt + (i + 1) * P, Scalar(0));
        });
        par_gemm_packed(na, H, P, dhps, P, w.whr_q, w.dm, H, false);
      }
      for_unit_blocks(na, H, [&](Index i, Index u0, Index bk, Index off) {
        const Index n = ro.order[i], t = rs.time(s, i);
        // The next row's blocks (skeleton.h).
        if (i + 1 < na) prefetch_gate_blocks_for_write(dgs + (i + 1) * GH + u0, 4, H, bk);
        lstm_pointwise_backward(
            bk, H, proj ? w.dm + off : dh_cur + off,
            dy && !proj ? dy + (t * N + n) * H + u0 : nullptr, k.gates + (s * N + i) * GH + u0,
            k.cs + s * NH + off, k.cs + (s + 1) * NH + off, dc_cur + off,
            w_peep ? w_peep + u0 : nullptr, dgs + i * GH + u0, dc_nxt + off,
            proj ? nullptr : dh_nxt + off, static_cast<Scalar*>(nullptr), a.cell_clip);
      });
      par_gemm_packed(na, R, GH, dgs, GH, w.whh_q, dh_nxt, R, true);
    }
#ifdef _OPENMP
#pragma omp single
#endif
    {
      if (a.dh0) scatter_initial_grad(ro, dhbuf, R, a.dh0);
      if (a.dc0) scatter_initial_grad(ro, dcbuf, H, a.dc0);
    }
    ragged_backward_epilogue(d, rs, Index(4), R, a.x, a.w_ih, dgh, dgh, k.hs, w.wih_q, w.dxc,
                             a.dx, a.dw_ih, a.dw_hh, a.db_ih, a.db_hh, opt.weights_packed);
    if (a.dw_hr)
      par_gemm_tn_add(P, H, rs.V, w.dhp, P, k.ms, H, a.dw_hr, H, rs.step_c, rs.step_k);
    if (a.dw_peep) {
      // As backward()'s, over the valid positions in step order.
      for_unit_blocks(3, H, [&](Index p, Index u0, Index bk, Index) {
        const Index gate = p == 2 ? 3 : p;
        const Index cshift = p == 2 ? NH : 0;
        Scalar acc[kUnitBlock] = {};
        for (Index j = 0; j < rs.V; ++j) {
          const Scalar* dg = dgh + rs.step_c[j] * GH + gate * H + u0;
          const Scalar* c = k.cs + rs.step_k[j] * H + cshift + u0;
          for (Index q = 0; q < bk; ++q) acc[q] += dg[q] * c[q];
        }
        for (Index q = 0; q < bk; ++q) a.dw_peep[p * H + u0 + q] += acc[q];
      });
    }
  });
}

// The bf16 backward's peephole gradients, one step at a time (it keeps no fp32 gradients of
// earlier steps): dp_i += Σ_n di_pre*c_prev, dp_f += Σ_n df_pre*c_prev, dp_o += Σ_n do_pre*c_t,
// dg [N, 4H] the step's pre-activation gradients, c_prev [N, H] and c_t = c_prev + N*H. Work-
// shared without a barrier (the caller's next work-shared loop ends in one); one job per block
// of units, so the sums are independent of the thread count.
inline void peep_step_sums(Index N, Index H, const float* dg, const float* c_prev,
                           float* dw_peep) {
  using namespace detail;
  const Index nub = ceil_div(H, kUnitBlock);
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
  for (Index job = 0; job < 3 * nub; ++job) {
    const Index p = job / nub, u0 = (job % nub) * kUnitBlock, bk = std::min(kUnitBlock, H - u0);
    const Index gate = p == 2 ? 3 : p;
    const float* c = c_prev + (p == 2 ? N * H : 0) + u0;
    float acc[kUnitBlock] = {};
    for (Index n = 0; n < N; ++n)
      for (Index j = 0; j < bk; ++j) acc[j] += dg[n * 4 * H + gate * H + u0 + j] * c[n * H + j];
    for (Index j = 0; j < bk; ++j) dw_peep[p * H + u0 + j] += acc[j];
  }
}

template <typename Scalar>
void backward(const Dims& d, const LstmBackwardArgs<Scalar>& a, const Options& opt,
              Scalar* workspace) {
  using namespace detail;
  const char* fn = "lstm_backward";
  detail::check_dims(fn, d, true);
  check_backward_ptrs(fn, a, workspace);
  check_projection(fn, d, a.w_hr);
  require(!a.dw_peep || a.w_peep, "lstm_backward: dw_peep given but w_peep is null");
  require(!a.dw_hr || a.w_hr, "lstm_backward: dw_hr given but w_hr is null (P = 0)");
  check_sink(fn, a, opt);
  check_clip(fn, double(a.cell_clip));
  const Index S = check_lengths(fn, d, a.lengths);
  const Index N = d.N, H = d.H, GH = 4 * H, NH = N * H, P = d.P, R = rec_width(d), NR = N * R;
  const bool proj = P > 0;
  const StepMap sm{a.lengths, d.T, opt.reverse};
  const Scalar *dy = a.dy, *w_peep = a.w_peep;
  check_backward_precision(fn, opt, std::is_same_v<Scalar, float>);
  const bool bf16 = opt.precision == Precision::bfloat16;  // bf16_backward.h
  const lowp::Tier tier = bf16 ? lowp::active_tier() : lowp::Tier::baseline;
  Carver<const Scalar> cc(a.cache);
  const Cache<const Scalar> k = cache_layout(d, cc);
  const Scalar *hs = k.hs, *cs = k.cs, *gates = k.gates, *ms = k.ms;
  Carver<Scalar> wc(workspace);
  const BackwardSpace<Scalar> w = backward_layout(d, wc, bf16);
  Bf16Back lb;  // bf16: after the part of the float32 layout it uses
  if (bf16) lb = bf16_back_block(d, 4, false, aligned64(workspace + wc.size()));
  // Lengths (ragged.h): float32 and float64 (a bfloat16 cache keeps the rectangular layout).
  if (a.lengths && opt.precision == Precision::float32)
    return backward_ragged(d, a, opt, k, w, S);
  Scalar* dgh = w.dgh;
  // Without reverse, step order is time order and one buffer serves both. bf16: dgh is one
  // step's (the bf16 block keeps them all) and no dgx.
  Scalar* dgx = bf16 ? dgh : opt.reverse ? w.dgx : dgh;
  Scalar *dhbuf = w.dhbuf, *dcbuf = w.dcbuf, *dhp = w.dhp, *dm = w.dm;

  parallel_region(thread_count(opt, d, 4), [&] {
    if (bf16) {
      if constexpr (std::is_same_v<Scalar, float>)
        par_bf16_back_prologue(d, S, GH, lb, GH, 0, a.lengths != nullptr, a.dx);
    } else if (a.lengths) {
      par_fill(dgx, d.T * N * GH, Scalar(0));
    }
    // Packed unless an earlier backward of this precision did (Options::weights_packed): fp32
    // w_hh here (w_ih in the epilogue), or bf16 w_hhᵀ and w_ihᵀ in the bf16 block.
    if (!opt.weights_packed) {
      if (!bf16) {
        par_pack(a.w_hh, GH, R, R, false, w.whh_q);
      } else if constexpr (std::is_same_v<Scalar, float>) {
        par_pack_bf16_kn(a.w_hh, GH, R, R, lb.whh);
        par_pack_bf16_kn(a.w_ih, GH, d.C, d.C, lb.wih);
      }
      // The projection stays fp32 in both precisions.
      if (proj) par_pack(a.w_hr, P, H, H, false, w.whr_q);
    }
    // dh and dc carried into step s live in slot (s + 1) % 2; the step writes slot s % 2.
    par_copy_or_zero(dhbuf + (S % 2) * NR, a.dh_n, NR);
    par_copy_or_zero(dcbuf + (S % 2) * NH, a.dc_n, NH);
    // The step loop, compiled once per precision (B: bf16), so that the float32 loop carries
    // none of the bf16 branches' code or live values (batch 1 spends microseconds a step here).
    auto steps = [&](auto bf16_tag) {
      constexpr bool B = decltype(bf16_tag)::value;
      for (Index s = S - 1; s >= 0; --s) {
        const Scalar* dh_cur = dhbuf + ((s + 1) % 2) * NR;
        const Scalar* dc_cur = dcbuf + ((s + 1) % 2) * NH;
        Scalar* dh_nxt = dhbuf + (s % 2) * NR;
        Scalar* dc_nxt = dcbuf + (s % 2) * NH;
        Scalar* dgs = dgh + (B ? 0 : s * N * GH);
        if (proj) {
          // Forward: h = m w_hrᵀ, and y[t] = h for active rows. dh = carried dh + dy[t] [N, P]
          // (kept for dw_hr += dhᵀ m); a finished row did nothing at this step: dh = 0 and its
          // carry passes through. Active rows of dh_nxt start at 0 for the recurrent product.
          Scalar* dhps = dhp + s * N * P;
          for_rows(N, [&](Index n) {
            const Index t = sm.time(s, n);
            const Scalar* cur = dh_cur + n * P;
            Scalar* row = dhps + n * P;
            Scalar* nxt = dh_nxt + n * P;
            if (t < 0) {
              std::fill(row, row + P, Scalar(0));
              carry(cur, nxt, P);
              return;
            }
            const Scalar* dyr = dy ? dy + (t * N + n) * P : nullptr;
            for (Index j = 0; j < P; ++j) row[j] = cur[j] + (dyr ? dyr[j] : Scalar(0));
            std::fill(nxt, nxt + P, Scalar(0));
          });
          par_gemm_packed(N, H, P, dhps, P, w.whr_q, dm, H, false);  // dm = dh w_hr [N, H]
        }
        for_unit_blocks(N, H, [&](Index n, Index u0, Index bk, Index off) {
          const Index t = sm.time(s, n);
          Scalar* dg = dgs + n * GH + u0;  // this row's d(i, f, g, o) pre-activations, units u0..
          if (!B && n + 1 < N) {  // the next row's blocks (skeleton.h)
            prefetch_gate_blocks_for_write(dg + GH, 4, H, bk);
            const Index t2 = sm.time(s, n + 1);
            if (dgx != dgh && t2 >= 0)
              prefetch_gate_blocks_for_write(dgx + (t2 * N + n + 1) * GH + u0, 4, H, bk);
          }
          if (t < 0) {  // inactive: no gradient enters the step; the carry passes through
            zero_gate_blocks(dg, 4, H, bk);
            if (!proj) carry(dh_cur + off, dh_nxt + off, bk);
            carry(dc_cur + off, dc_nxt + off, bk);
            return;
          }
          // d(o*tanh(c_t)): without projection dh_cur + dy[t], with it dm (dy is already in it).
          // The recurrent product below adds dg w_hh into dh_nxt (with projection, the pass above
          // zeroed it); dgx gets a copy of dg when it is a separate buffer.
          lstm_pointwise_backward(
              bk, H, proj ? dm + off : dh_cur + off,
              dy && !proj ? dy + (t * N + n) * H + u0 : nullptr, gates + (s * N + n) * GH + u0,
              cs + s * NH + off, cs + (s + 1) * NH + off, dc_cur + off,
              w_peep ? w_peep + u0 : nullptr, dg, dc_nxt + off, proj ? nullptr : dh_nxt + off,
              dgx != dgh ? dgx + (t * N + n) * GH + u0 : nullptr, a.cell_clip);
        });
        if constexpr (!B) {
          par_gemm_packed(N, R, GH, dgs, GH, w.whh_q, dh_nxt, R, true);
        } else if constexpr (std::is_same_v<Scalar, float>) {
          // The step's peephole sums (fp32, unrounded dA), then its one conversion to bf16 (rows
          // for the dh and dx products, the transposed copy for the weight gradients, the bias
          // sums), then the products.
          if (a.dw_peep) peep_step_sums(N, H, dgs, cs + s * NH, a.dw_peep);
          std::uint16_t* ab = lb.ab + ab_row(lb, d, sm, s, S) * lowp::bf16_kpad(GH);
          par_convert_step(dgs, N, GH, GH, ab, lowp::bf16_kpad(GH), lb.at, 0, lb.ldt, s * N,
                           a.db_ih, a.db_hh);
          lowp::par_gemm_bf16(tier, N, R, GH, ab, lowp::bf16_kpad(GH), lb.whh, nullptr, dh_nxt,
                              R, true);
          dx_step_bf16(tier, d, sm, s, S, GH, lb.ab, lb, a.dx);
        }
      }
    };
    if (bf16) steps(std::true_type{}); else steps(std::false_type{});
#ifdef _OPENMP
#pragma omp single
#endif
    {
      if (a.dh0) std::copy(dhbuf, dhbuf + NR, a.dh0);
      if (a.dc0) std::copy(dcbuf, dcbuf + NH, a.dc0);
    }
    if (!bf16)
      backward_epilogue(d, S, Index(4), R, a.x, a.w_ih, dgx, dgh, hs, w.wih_q, a.dx, a.dw_ih,
                        a.dw_hh, a.db_ih, a.db_hh, opt.weights_packed, a.wgrad_sink);
    else if constexpr (std::is_same_v<Scalar, float>)
      weight_grads_bf16(tier, d, sm, S, GH, R, a.x, hs, lb, a.dw_ih, a.dw_hh);
    // Forward: h = m w_hrᵀ at every step, so dw_hr += Σ dhᵀ m (inactive rows are zero in both).
    if (a.dw_hr) par_gemm_tn_add(P, H, S * N, dhp, P, ms, H, a.dw_hr, H);
    if (a.dw_peep && !bf16) {
      // p_i and p_f multiplied c_prev into i and f, p_o multiplied c_t into o:
      // dp_i = Σ di_pre*c_prev, dp_f = Σ df_pre*c_prev, dp_o = Σ do_pre*c_t (over steps, rows).
      for_unit_blocks(3, H, [&](Index p, Index u0, Index bk, Index) {
        const Index gate = p == 2 ? 3 : p;
        const Index cshift = p == 2 ? NH : 0;
        Scalar acc[kUnitBlock] = {};
        for (Index r = 0; r < S * N; ++r) {
          const Scalar* dg = dgh + r * GH + gate * H + u0;
          const Scalar* c = cs + r * H + cshift + u0;
          for (Index j = 0; j < bk; ++j) acc[j] += dg[j] * c[j];
        }
        for (Index j = 0; j < bk; ++j) a.dw_peep[p * H + u0 + j] += acc[j];
      });
    }
  });
}

}  // namespace

void fill_lstm(isa::Table& t) {
  t.lstm_sizes = &sizes;
  t.f32.lstm_forward = &forward<float>;
  t.f32.lstm_backward = &backward<float>;
  t.f64.lstm_forward = &forward<double>;
  t.f64.lstm_backward = &backward<double>;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
