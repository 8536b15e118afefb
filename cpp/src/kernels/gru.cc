// GRU forward and backward kernels, both formulas (PyTorch gate order r, z, n):
//   reset_after:  n = tanh(gx_n + b_in + r*(W_hn h + b_hn))     one recurrent GEMM per step
//   reset_before: n = tanh(gx_n + b_in + W_hn (r*h) + b_hn)     r first, then a second GEMM on r*h
//   h_t = (1 - z)*n + z*h_{t-1}
// The pointwise math: gru_pointwise.h.
#include "isa/copy.inc"
#include "kernels/gru_pointwise.h"
#include "kernels/ragged.h"
#include "kernels/layout.h"
#include "kernels/skeleton.h"
#include "lowp/bf16_backward.h"
#include "lowp/bf16_steps.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

using detail::Index;

namespace {

// ---------------------------------------------------------------------------------------------
// Layouts (layout.h): one description each, for the size query and the kernel.

// Cache: hs [T+1, N, H] (h before each step), gates [T, N, 4H]: activated r, z, n and a fourth
// block q = W_hn h + b_hn (reset_after) or q = r*h (reset_before). Step order.
template <typename T>
struct Cache {
  T *hs, *gates;
};
template <typename T>
Cache<T> cache_layout(const Dims& d, detail::Carver<T>& c) {
  Cache<T> k{};
  k.hs = c.take((d.T + 1) * d.N * d.H);
  k.gates = c.take(d.T * d.N * 4 * d.H);
  return k;
}

// Forward workspace: packed w_ih and w_hh first, at offsets that depend on C and H only
// (Options::weights_packed). w_hh's r, z rows and its n rows are packed apart for reset_before's
// two products; reset_after packs all 3H rows from whh_p on, into the room of both (packed_bound
// (H, 3H) <= packed_bound(H, 2H) + packed_bound(H, H)); none of them for lowp (the bf16 and
// int8 forwards keep theirs in their own block in front). Then a chunk of the input projection gx
// and the gathered inputs xs, gh [N, 3H], gates of one step [N, 4H] and the h double buffer.
template <typename T>
struct ForwardSpace {
  T *wih_p, *whh_p, *whn_p, *gx, *xs, *gh, *gstep, *hbuf, *order;
};
template <typename T>
ForwardSpace<T> forward_layout(const Dims& d, detail::Carver<T>& c, bool lowp) {
  using namespace detail;
  const Index N = d.N, H = d.H, GH = 3 * H, TC = proj_chunk_steps(d);
  ForwardSpace<T> w{};
  if (!lowp) {
    w.wih_p = c.take_aligned(packed_bound(d.C, GH));
    w.whh_p = c.take_aligned(packed_bound(H, 2 * H));
    w.whn_p = c.take_aligned(packed_bound(H, H));
  }
  w.gx = c.take(TC * N * GH);  // [TC * N, 3H], steps s0.. of the current chunk
  w.xs = c.take(TC * N * d.C);
  w.gh = c.take(N * GH);
  w.gstep = c.take(N * 4 * H);
  w.hbuf = c.take(2 * N * H);
  w.order = c.take_aligned(ragged_order_scalars(N));  // ragged inference (ragged.h)
  return w;
}

// Backward workspace: dgh [T, N, 3H] (step order), dgx [T, N, 3H] (time order), dh double
// buffer [2, N, H], d(r*h) [N, H], packed w_hh (r, z rows and n rows apart; reset_after packs
// all 3H rows from whh_q on) and w_ih; last, for lengths (ragged.h), dx of the valid positions
// [T*N, C] and the steps' bookkeeping.
template <typename T>
struct BackwardSpace {
  T *dgh, *dgx, *dhbuf, *drh, *whh_q, *whn_q, *wih_q, *dxc, *rag;
};
template <typename T>
BackwardSpace<T> backward_layout(const Dims& d, detail::Carver<T>& c, bool lowp = false) {
  using namespace detail;
  const Index N = d.N, H = d.H, GH = 3 * H;
  BackwardSpace<T> w{};
  w.dgh = c.take((lowp ? 1 : d.T) * N * GH);  // lowp: one step's (bf16_backward.h)
  w.dgx = c.take((lowp ? 1 : d.T) * N * GH);
  w.dhbuf = c.take(2 * N * H);
  w.drh = c.take(N * H);
  if (lowp) return w;  // the bf16 backward: its block follows (bf16_backward.h)
  w.whh_q = c.take_aligned(packed_bound(2 * H, H));
  w.whn_q = c.take_aligned(packed_bound(H, H));
  w.wih_q = c.take_aligned(packed_bound(GH, d.C));
  w.dxc = c.take(d.T * N * d.C);
  w.rag = c.take_aligned(ragged_steps_scalars(d.T, N));
  return w;
}

isa::Sizes sizes(const Dims& d) {
  detail::check_dims("gru_sizes", d);
  return detail::cell_sizes(d, &cache_layout<float>, &forward_layout<float>,
                            &backward_layout<float>);
}

// ---------------------------------------------------------------------------------------------

// With lengths (ragged.h): rows ordered by length, step s works on the running ones. Training
// writes the cache with ordered rows (slot s, row i). Arguments checked by forward().
template <typename Scalar>
void forward_ragged(const Dims& d, const GruForwardArgs<Scalar>& a, const Options& opt,
                    const ForwardSpace<Scalar>& w, const Cache<Scalar>& k, Index S) {
  using namespace detail;
  const Index N = d.N, H = d.H, GH = 3 * H, NH = N * H;
  const bool after = a.variant == GruVariant::reset_after, training = a.cache != nullptr;
  const Scalar *b_ih = a.b_ih, *b_hh = a.b_hh;
  Scalar* hs = training ? k.hs : w.hbuf;
  auto slot = [&](Index s) { return hs + (training ? s : s % 2) * NH; };
  // Gate row (r, z, n, q) of ordered row i at step s.
  auto gate_row = [&](Index s, Index i) {
    return (training ? k.gates + s * N * 4 * H : w.gstep) + i * 4 * H;
  };
  const RaggedOrder ro{a.lengths, reinterpret_cast<Index*>(w.order), N};
  ro.sort();
  parallel_region(thread_count(opt, d, 3), [&] {
    forward_prologue(d, opt, 3, a.w_ih, a.lengths, w.wih_p, a.y);
    if (!opt.weights_packed) {
      par_pack(a.w_hh, H, after ? GH : 2 * H, H, true, w.whh_p);
      if (!after) par_pack(a.w_hh + 2 * H * H, H, H, H, true, w.whn_p);
    }
    par_gather_rows(ro, a.h0, H, hs);
    const Index TC = proj_chunk_steps(d);
    Index na = N, row = 0;  // row: step s's first row in the chunk's projection w.gx
    for (Index s = 0; s < S; ++s) {
      if (s % TC == 0) {
        par_project_ragged(d, ro, opt.reverse, 3, s, std::min(S, s + TC), na, a.x, w.wih_p,
                           w.xs, w.gx);
        row = 0;
      }
      na = ro.active(s, na);
      const Scalar* h_prev = slot(s);
      Scalar* h_next = slot(s + 1);
      const Scalar* gx = w.gx + row * GH;
      row += na;
      par_gemm_packed(na, after ? GH : 2 * H, H, h_prev, H, w.whh_p, w.gh, GH, false);
      for_unit_blocks(na, H, [&](Index i, Index u0, Index bk, Index off) {
        const Index n = ro.order[i], t = ro.time(s, i, opt.reverse);
        const Scalar* gxr = gx + i * GH + u0;
        const Scalar* ghr = w.gh + i * GH + u0;
        const Scalar* bi = b_ih ? b_ih + u0 : nullptr;
        const Scalar* bh = b_hh ? b_hh + u0 : nullptr;
        Scalar* ar = gate_row(s, i) + u0;
        if (after)
          gru_after_pointwise_forward(bk, H, gxr, ghr, bi, bh, h_prev + off, h_next + off,
                                      a.y + (t * N + n) * H + u0, training ? ar : nullptr);
        else
          gru_before_pointwise_forward_rz(bk, H, gxr, ghr, bi, bh, h_prev + off, ar);
      });
      if (after) continue;
      // reset_before: gh_n = (r*h) w_hnᵀ, then the candidate and the new state.
      par_gemm_packed(na, H, H, gate_row(s, 0) + 3 * H, 4 * H, w.whn_p, w.gh + 2 * H, GH, false);
      for_unit_blocks(na, H, [&](Index i, Index u0, Index bk, Index off) {
        const Index n = ro.order[i], t = ro.time(s, i, opt.reverse);
        gru_before_pointwise_forward_n(bk, H, gx + i * GH + u0, w.gh + i * GH + u0,
                                       b_ih ? b_ih + u0 : nullptr, b_hh ? b_hh + u0 : nullptr,
                                       h_prev + off, h_next + off, a.y + (t * N + n) * H + u0,
                                       gate_row(s, i) + u0);
      });
    }
#ifdef _OPENMP
#pragma omp single
#endif
    scatter_final_state(ro, hs, H, a.h_n, training);
  });
}

template <typename Scalar>
void forward(const Dims& d, const GruForwardArgs<Scalar>& a, const Options& opt,
             Scalar* workspace) {
  using namespace detail;
  const char* fn = "gru_forward";
  check_dims(fn, d);
  check_forward_ptrs(fn, a, workspace);
  const Index S = check_lengths(fn, d, a.lengths);
  const Index N = d.N, H = d.H, GH = 3 * H, NH = N * H;
  const StepMap sm{a.lengths, d.T, opt.reverse};
  const bool training = a.cache != nullptr;
  const bool after = a.variant == GruVariant::reset_after;
  const Scalar *b_ih = a.b_ih, *b_hh = a.b_hh;
  Scalar* y = a.y;

  const Index TC = proj_chunk_steps(d);
  const LowpForward lp = lowp_forward_setup(fn, d, opt, 3, true, training, a.w_ih, a.w_hh,
                                            workspace);
  const bool int8 = lp.int8, lowpx = lp.any;
  const lowp::Tier tier = lp.tier;
  const lowp::Bf16Block& lb = lp.lb;
  const lowp::S8Block& qb = lp.qb;
  // bf16: which packed form of the weights this call packs (lowp.h: Bf16Block::formats)
  bool pack_panels = !opt.weights_packed;
  if constexpr (std::is_same_v<Scalar, float>) {
    if (lp.bf16) {
      if (lb.wf && after && !training && lowp::gru_fused_runs(d)) {  // the fused AMX step
        const bool pack = lowp::packs_form(lb, opt.weights_packed, lowp::kPackedFused);
        const lowp::LstmFusedArgs fa{a.x,     a.w_ih,    a.w_hh,      b_ih, b_hh,   nullptr,
                                     a.h0,    nullptr,   0.0f,        a.lengths,    opt.reverse,
                                     y,       a.h_n,     nullptr,     lb.wf, lb.xf, lb.hf};
        lowp::gru_fused_forward(d, fa, pack, thread_count(opt, d, 3));
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
  auto slot = [&](Index s) { return hs + (training ? s : s % 2) * NH; };
  // Gate row (r, z, n, q) of sequence n at step s.
  auto gate_row = [&](Index s, Index n) {
    return (training ? k.gates + s * N * 4 * H : w.gstep) + n * 4 * H;
  };

  const int threads = thread_count(opt, d, 3);
  const bool s8_split = int8 && !training && s8_rows_split(N, GH, H, threads);
  parallel_region(threads, [&] {
    const S8Rows rows(s8_split, N);  // int8 inference: maybe this thread's rows (bf16_steps.h)
    if (!lowpx) {
      forward_prologue(d, opt, 3, a.w_ih, a.lengths, w.wih_p, y);
      if (!opt.weights_packed) {
        par_pack(a.w_hh, H, after ? GH : 2 * H, H, true, w.whh_p);
        if (!after) par_pack(a.w_hh + 2 * H * H, H, H, H, true, w.whn_p);
      }
    } else if constexpr (std::is_same_v<Scalar, float>) {
      if (!opt.weights_packed && int8) {
        par_pack_s8(a.w_ih, GH, d.C, qb.wih);
        par_pack_s8(a.w_hh, after ? GH : 2 * H, H, qb.whh);
        if (!after) par_pack_s8(a.w_hh + 2 * H * H, H, H, qb.whn);
      } else if (lp.bf16 && pack_panels) {
        par_pack_bf16(a.w_ih, GH, d.C, lb.wih);
        // reset_after: all 3H rows, across the block's whh and whn pieces (sized for them)
        par_pack_bf16(a.w_hh, after ? GH : 2 * H, H, lb.whh);
        if (!after) par_pack_bf16(a.w_hh + 2 * H * H, H, H, lb.whn);
      }
      if (a.lengths) par_fill(y, d.T * N * H, Scalar(0));
    }
    par_copy_or_zero(hs, a.h0, NH);
    // The step loop, compiled once per precision (P: 0 float, 1 int8, 2 bf16), so that the
    // float loop carries none of the low-precision branches' code or live values.
    auto steps = [&](auto prec) {
      constexpr int P = decltype(prec)::value;
      for (Index s = 0; s < S; ++s) {
        const Scalar* h_prev = slot(s);
        Scalar* h_next = slot(s + 1);
        // reset_after: gh = h w_hhᵀ (all three blocks); reset_before: the r and z blocks only.
        if constexpr (P == 0) {
          if (s % TC == 0)
            project_steps(d, 3, sm, s, std::min(S, s + TC), a.x, w.wih_p, w.xs, w.gx);
          par_gemm_packed(N, after ? GH : 2 * H, H, h_prev, H, w.whh_p, w.gh, GH, false);
        } else if constexpr (P == 1) {
          if constexpr (std::is_same_v<Scalar, float>) {
            if (s % TC == 0) {
              if (s > 0) rows.sync();
              project_steps_s8(tier, d, 3, sm, s, std::min(S, s + TC), a.x, qb, w.gx);
            }
            gemm_rows_s8(tier, rows, N, after ? GH : 2 * H, H, h_prev, H, qb.hq, qb.hscale,
                         qb.whh, w.gh, GH);
          }
        } else if constexpr (std::is_same_v<Scalar, float>) {
          if (s % TC == 0)
            project_steps_bf16(tier, d, 3, sm, s, std::min(S, s + TC), a.x, lb, w.gx);
          gemm_rows_bf16(tier, N, after ? GH : 2 * H, H, h_prev, H, lb.hb, lb.whh, w.gh, GH);
        }
        unit_blocks(rows, N, H, [&](Index n, Index u0, Index bk, Index off) {
          const Index t = sm.time(s, n);
          Scalar* g = gate_row(s, n);
          Scalar *ar = g + u0, *aq = g + 3 * H + u0;
          if (t < 0) {
            carry(h_prev + off, h_next + off, bk);
            if (!after) std::fill(aq, aq + bk, Scalar(0));  // r*h feeds the next GEMM
            return;
          }
          const Scalar* gxr = w.gx + ((s % TC) * N + n) * GH + u0;
          const Scalar* ghr = w.gh + n * GH + u0;
          const Scalar* bi = b_ih ? b_ih + u0 : nullptr;
          const Scalar* bh = b_hh ? b_hh + u0 : nullptr;
          if (after)
            gru_after_pointwise_forward(bk, H, gxr, ghr, bi, bh, h_prev + off, h_next + off,
                                        y + (t * N + n) * H + u0, training ? ar : nullptr);
          else
            gru_before_pointwise_forward_rz(bk, H, gxr, ghr, bi, bh, h_prev + off, ar);
        });
        if (after) continue;
        // reset_before: gh_n = (r*h) w_hnᵀ, then the candidate and the new state.
        const Scalar* q = gate_row(s, 0) + 3 * H;
        if constexpr (P == 0)
          par_gemm_packed(N, H, H, q, 4 * H, w.whn_p, w.gh + 2 * H, GH, false);
        else if constexpr (P == 1) {
          if constexpr (std::is_same_v<Scalar, float>)
            gemm_rows_s8(tier, rows, N, H, H, q, 4 * H, qb.rq, qb.rscale, qb.whn, w.gh + 2 * H,
                         GH);
        } else if constexpr (std::is_same_v<Scalar, float>)
          gemm_rows_bf16(tier, N, H, H, q, 4 * H, lb.rhb, lb.whn, w.gh + 2 * H, GH);
        unit_blocks(rows, N, H, [&](Index n, Index u0, Index bk, Index off) {
          const Index t = sm.time(s, n);
          if (t < 0) return;
          gru_before_pointwise_forward_n(bk, H, w.gx + ((s % TC) * N + n) * GH + u0,
                                         w.gh + n * GH + u0, b_ih ? b_ih + u0 : nullptr,
                                         b_hh ? b_hh + u0 : nullptr, h_prev + off, h_next + off,
                                         y + (t * N + n) * H + u0, gate_row(s, n) + u0);
        });
      }
    };
    if (!lowpx) steps(std::integral_constant<int, 0>{});
    else if (int8) steps(std::integral_constant<int, 1>{});
    else steps(std::integral_constant<int, 2>{});
    rows.sync();  // the other threads' last rows (omp single has no barrier on entry)
#ifdef _OPENMP
#pragma omp single
#endif
    std::copy(slot(S), slot(S) + NH, a.h_n);
  });
}

// With lengths (ragged.h): the steps walk down over the running rows, the gradients stay
// compact (step s's rows at off[s]..) and the epilogue sums over the valid positions only.
// Arguments checked by backward().
template <typename Scalar>
void backward_ragged(const Dims& d, const GruBackwardArgs<Scalar>& a, const Options& opt,
                     const Cache<const Scalar>& k, const BackwardSpace<Scalar>& w, Index S) {
  using namespace detail;
  const Index N = d.N, H = d.H, GH = 3 * H, NH = N * H;
  const bool after = a.variant == GruVariant::reset_after;
  const Scalar* dy = a.dy;
  const RaggedSteps rs(a.lengths, d.T, N, S, opt.reverse, w.rag);
  const RaggedOrder& ro = rs.ro;
  // reset_after: the n block differs (dgh_n = dn_pre*r, dgx_n = dn_pre), so two buffers; both
  // compact in step order.
  Scalar *dgh = w.dgh, *dgx = after ? w.dgx : w.dgh, *dhbuf = w.dhbuf;

  parallel_region(thread_count(opt, d, 3), [&] {
    if (!opt.weights_packed) {
      par_pack(a.w_hh, after ? GH : 2 * H, H, H, false, w.whh_q);
      if (!after) par_pack(a.w_hh + 2 * H * H, H, H, H, false, w.whn_q);
    }
    par_gather_final_grad(ro, a.dh_n, H, dhbuf);
    Index na = 0;
    for (Index s = S - 1; s >= 0; --s) {
      na = ro.active_down(s, na);
      const Scalar* dh_cur = dhbuf + ((s + 1) % 2) * NH;
      Scalar* dh_nxt = dhbuf + (s % 2) * NH;
      Scalar* dgs = dgh + rs.off[s] * GH;  // [na, 3H]
      const Scalar* hp_s = k.hs + s * NH;
      const Scalar* gates = k.gates + s * N * 4 * H;
      for_unit_blocks(na, H, [&](Index i, Index u0, Index bk, Index off) {
        const Index n = ro.order[i], t = rs.time(s, i);
        if (i + 1 < na) {  // the next row's blocks (skeleton.h)
          prefetch_gate_blocks_for_write(dgs + (i + 1) * GH + u0, 3, H, bk);
          if (after) prefetch_gate_blocks_for_write(dgx + (rs.off[s] + i + 1) * GH + u0, 3, H, bk);
        }
        gru_pointwise_backward(bk, H, dh_cur + off, dy ? dy + (t * N + n) * H + u0 : nullptr,
                               gates + i * 4 * H + u0, hp_s + off, dgs + i * GH + u0,
                               dh_nxt + off,
                               after ? dgx + (rs.off[s] + i) * GH + u0 : nullptr);
      });
      if (after) {
        par_gemm_packed(na, H, GH, dgs, GH, w.whh_q, dh_nxt, H, true);
        continue;
      }
      // reset_before: d(r*h) = dn_pre W_hn, then dr and the direct term of dh_prev.
      par_gemm_packed(na, H, H, dgs + 2 * H, GH, w.whn_q, w.drh, H, false);
      for_unit_blocks(na, H, [&](Index i, Index u0, Index bk, Index off) {
        gru_before_pointwise_backward_r(bk, H, w.drh + off, gates + i * 4 * H + u0, hp_s + off,
                                        dgs + i * GH + u0, dh_nxt + off,
                                        static_cast<Scalar*>(nullptr));
      });
      par_gemm_packed(na, H, 2 * H, dgs, GH, w.whh_q, dh_nxt, H, true);
    }
#ifdef _OPENMP
#pragma omp single
#endif
    if (a.dh0) scatter_initial_grad(ro, dhbuf, H, a.dh0);
    ragged_backward_epilogue(d, rs, Index(3), H, a.x, a.w_ih, dgx, dgh, k.hs, w.wih_q, w.dxc,
                             a.dx, a.dw_ih, after ? a.dw_hh : nullptr, a.db_ih, a.db_hh,
                             opt.weights_packed);
    if (!after && a.dw_hh) {
      // The r and z blocks multiplied h, the n block multiplied q = r*h (cache block 4).
      par_gemm_tn_add(2 * H, H, rs.V, dgh, GH, k.hs, H, a.dw_hh, H, rs.step_c, rs.step_k);
      par_gemm_tn_add(H, H, rs.V, dgh + 2 * H, GH, k.gates + 3 * H, 4 * H, a.dw_hh + 2 * H * H,
                      H, rs.step_c, rs.step_k);
    }
  });
}

template <typename Scalar>
void backward(const Dims& d, const GruBackwardArgs<Scalar>& a, const Options& opt,
              Scalar* workspace) {
  using namespace detail;
  const char* fn = "gru_backward";
  check_dims(fn, d);
  check_backward_ptrs(fn, a, workspace);
  check_sink(fn, a, opt);
  const Index S = check_lengths(fn, d, a.lengths);
  const Index N = d.N, H = d.H, GH = 3 * H, NH = N * H;
  const StepMap sm{a.lengths, d.T, opt.reverse};
  const bool after = a.variant == GruVariant::reset_after;
  const Scalar* dy = a.dy;
  check_backward_precision(fn, opt, std::is_same_v<Scalar, float>);
  const bool bf16 = opt.precision == Precision::bfloat16;  // bf16_backward.h
  const lowp::Tier tier = bf16 ? lowp::active_tier() : lowp::Tier::baseline;
  Carver<const Scalar> cc(a.cache);
  const Cache<const Scalar> k = cache_layout(d, cc);
  const Scalar *hs = k.hs, *gates = k.gates;
  Carver<Scalar> wc(workspace);
  const BackwardSpace<Scalar> w = backward_layout(d, wc, bf16);
  Bf16Back lb;  // bf16: after the part of the float32 layout it uses
  if (bf16) lb = bf16_back_block(d, 3, !after, aligned64(workspace + wc.size()));
  // Lengths (ragged.h): float32 and float64 (a bfloat16 cache keeps the rectangular layout).
  if (a.lengths && opt.precision == Precision::float32)
    return backward_ragged(d, a, opt, k, w, S);
  Scalar* dgh = w.dgh;
  // reset_after: the n block differs (dgh_n = dn_pre*r, dgx_n = dn_pre), so two buffers; else
  // they differ only in order, and without reverse not even that.
  // bf16: one step's dgh and (reset_after) dgx; the bf16 block keeps every step's in bf16.
  Scalar* dgx = bf16 ? (after ? w.dgx : dgh) : (after || opt.reverse) ? w.dgx : dgh;
  Scalar* dhbuf = w.dhbuf;
  const Index kg = lowp::bf16_kpad(GH);

  parallel_region(thread_count(opt, d, 3), [&] {
    if (bf16) {
      if constexpr (std::is_same_v<Scalar, float>)
        par_bf16_back_prologue(d, S, GH, lb, GH, after ? H : 0, a.lengths != nullptr, a.dx);
    } else if (a.lengths) {
      par_fill(dgx, d.T * N * GH, Scalar(0));
    }
    // Packed unless an earlier backward of this precision did (Options::weights_packed).
    if (!opt.weights_packed) {
      if (!bf16) {
        par_pack(a.w_hh, after ? GH : 2 * H, H, H, false, w.whh_q);
        if (!after) par_pack(a.w_hh + 2 * H * H, H, H, H, false, w.whn_q);
      } else if constexpr (std::is_same_v<Scalar, float>) {
        par_pack_bf16_kn(a.w_hh, after ? GH : 2 * H, H, H, lb.whh);
        if (!after) par_pack_bf16_kn(a.w_hh + 2 * H * H, H, H, H, lb.whn);
        par_pack_bf16_kn(a.w_ih, GH, d.C, d.C, lb.wih);
      }
    }
    par_copy_or_zero(dhbuf + (S % 2) * NH, a.dh_n, NH);
    // The step loop, compiled once per precision (B: bf16), so that the float32 loop carries
    // none of the bf16 branches' code or live values (batch 1 spends microseconds a step here).
    auto steps = [&](auto bf16_tag) {
      constexpr bool B = decltype(bf16_tag)::value;
      for (Index s = S - 1; s >= 0; --s) {
        const Scalar* dh_cur = dhbuf + ((s + 1) % 2) * NH;
        Scalar* dh_nxt = dhbuf + (s % 2) * NH;
        Scalar* dgs = dgh + (B ? 0 : s * N * GH);
        const Scalar* hp_s = hs + s * NH;
        for_unit_blocks(N, H, [&](Index n, Index u0, Index bk, Index off) {
          const Index t = sm.time(s, n);
          Scalar* dg = dgs + n * GH + u0;
          if (!B && n + 1 < N) {  // the next row's blocks (skeleton.h)
            prefetch_gate_blocks_for_write(dg + GH, 3, H, bk);
            const Index t2 = sm.time(s, n + 1);
            if (after && t2 >= 0)
              prefetch_gate_blocks_for_write(dgx + (t2 * N + n + 1) * GH + u0, 3, H, bk);
          }
          if (t < 0) {
            zero_gate_blocks(dg, 3, H, bk);
            if (B && after) zero_gate_blocks(dgx + n * GH + u0, 3, H, bk);  // (one step's)
            carry(dh_cur + off, dh_nxt + off, bk);
            return;
          }
          gru_pointwise_backward(bk, H, dh_cur + off, dy ? dy + (t * N + n) * H + u0 : nullptr,
                                 gates + (s * N + n) * 4 * H + u0, hp_s + off, dg, dh_nxt + off,
                                 !after ? nullptr
                                 : B ? dgx + n * GH + u0
                                        : dgx + (t * N + n) * GH + u0);
        });
        if (after) {
          if constexpr (!B) {
            par_gemm_packed(N, H, GH, dgs, GH, w.whh_q, dh_nxt, H, true);
          } else if constexpr (std::is_same_v<Scalar, float>) {
            // One conversion of each of the step's dA_h (dgs) and dA_x (dgx; of its transposed
            // copy only the n block, where the two differ), then the products (bf16_backward.h).
            const Index ar = ab_row(lb, d, sm, s, S) * kg;
            par_convert_step(dgs, N, GH, GH, lb.ab + ar, kg, lb.at, 0, lb.ldt, s * N, a.db_hh,
                             nullptr);
            par_convert_step(dgx, N, GH, GH, lb.ab2 + ar, kg, lb.ex, 2 * H, lb.ldt, s * N, a.db_ih,
                             nullptr);
            lowp::par_gemm_bf16(tier, N, H, GH, lb.ab + ar, kg, lb.whh, nullptr, dh_nxt, H, true);
            dx_step_bf16(tier, d, sm, s, S, GH, lb.ab2, lb, a.dx);
          }
          continue;
        }
        // reset_before: n = tanh(... + W_hn (r*h) + b_hn), so d(r*h) = dn_pre W_hn, which gives
        // dr = d(r*h)*h and a direct term d(r*h)*r of dh_prev.
        if constexpr (!B)
          par_gemm_packed(N, H, H, dgs + 2 * H, GH, w.whn_q, w.drh, H, false);
        else if constexpr (std::is_same_v<Scalar, float>)
          gemm_rows_acc_bf16(tier, N, H, H, dgs + 2 * H, GH, lb.ab2, N, lb.whn, w.drh, H, false);
        for_unit_blocks(N, H, [&](Index n, Index u0, Index bk, Index off) {
          const Index t = sm.time(s, n);
          if (t < 0) return;
          gru_before_pointwise_backward_r(bk, H, w.drh + off, gates + (s * N + n) * 4 * H + u0,
                                          hp_s + off, dgs + n * GH + u0, dh_nxt + off,
                                          dgx != dgh ? dgx + (t * N + n) * GH + u0 : nullptr);
        });
        if constexpr (!B) {
          par_gemm_packed(N, H, 2 * H, dgs, GH, w.whh_q, dh_nxt, H, true);
        } else if constexpr (std::is_same_v<Scalar, float>) {
          std::uint16_t* ab = lb.ab + ab_row(lb, d, sm, s, S) * kg;
          par_convert_step(dgs, N, GH, GH, ab, kg, lb.at, 0, lb.ldt, s * N, a.db_ih, a.db_hh);
          if (2 * H % lowp::kBf16KStep == 0)  // the r, z columns of ab are a whole operand
            lowp::par_gemm_bf16(tier, N, H, 2 * H, ab, kg, lb.whh, nullptr, dh_nxt, H, true);
          else
            gemm_rows_acc_bf16(tier, N, H, 2 * H, dgs, GH, lb.ab2, N, lb.whh, dh_nxt, H, true);
          dx_step_bf16(tier, d, sm, s, S, GH, lb.ab, lb, a.dx);
        }
      }
    };
    if (bf16) steps(std::true_type{}); else steps(std::false_type{});
#ifdef _OPENMP
#pragma omp single
#endif
    if (a.dh0) std::copy(dhbuf, dhbuf + NH, a.dh0);
    if (bf16) {
      if constexpr (std::is_same_v<Scalar, float>) {
        // reset_after: dw_ih's n rows from dA_x's (ex), times the chunk of x; reset_before:
        // dw_hh's n rows multiplied q = r*h (cache block 4), packed into hp after h's product.
        weight_grads_bf16(tier, d, sm, S, after ? 2 * H : GH, after ? GH : 2 * H, H, a.x, hs, lb,
                          a.dw_ih, a.dw_hh, [&](Index k0, Index kc) {
          if (after && a.dw_ih)
            lowp::par_gemm_bf16(tier, H, d.C, kc, lb.ex + k0, lb.ldt, lb.xp, nullptr,
                                a.dw_ih + 2 * H * d.C, d.C, true);
          if (!after && a.dw_hh)
            wgrad_chunk(tier, H, H, k0, kc, lb.at + 2 * H * lb.ldt, lb.ldt,
                        [&](Index k) { return gates + k * 4 * H + 3 * H; }, lb.hp,
                        a.dw_hh + 2 * H * H, H);
        });
      }
      return;
    }
    backward_epilogue(d, S, Index(3), H, a.x, a.w_ih, dgx, dgh, hs, w.wih_q, a.dx, a.dw_ih,
                      after ? a.dw_hh : nullptr, a.db_ih, a.db_hh, opt.weights_packed,
                      a.wgrad_sink);
    if (!after && a.dw_hh) {
      // The r and z blocks multiplied h, the n block multiplied q = r*h (cache block 4).
      par_wgrad(a.wgrad_sink, 2 * H, H, S * N, dgh, GH, hs, H, a.dw_hh, H);
      par_wgrad(a.wgrad_sink, H, H, S * N, dgh + 2 * H, GH, gates + 3 * H, 4 * H,
                a.dw_hh + 2 * H * H, H);
    }
  });
}

}  // namespace

void fill_gru(isa::Table& t) {
  t.gru_sizes = &sizes;
  t.f32.gru_forward = &forward<float>;
  t.f32.gru_backward = &backward<float>;
  t.f64.gru_forward = &forward<double>;
  t.f64.gru_backward = &backward<double>;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
