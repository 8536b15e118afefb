// Elman RNN forward and backward kernels: h_t = act(W_ih x + b_ih + W_hh h_{t-1} + b_hh).
// The pointwise math: rnn_pointwise.h.
#include "isa/copy.inc"
#include "kernels/layout.h"
#include "kernels/ragged.h"
#include "kernels/rnn_pointwise.h"
#include "kernels/skeleton.h"
#include "lowp/bf16_backward.h"
#include "lowp/bf16_steps.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

using detail::Index;

namespace {

// ---------------------------------------------------------------------------------------------
// Layouts (layout.h): one description each, for the size query and the kernel.

// Cache: hs [T+1, N, H], the state before each step (step order); the activation's derivative
// is taken from the activated value hs[s+1].
template <typename T>
struct Cache {
  T* hs;
};
template <typename T>
Cache<T> cache_layout(const Dims& d, detail::Carver<T>& c) {
  return {c.take((d.T + 1) * d.N * d.H)};
}

// Forward workspace: packed w_ih and w_hh first, at offsets that depend on C and H only
// (Options::weights_packed; not for lowp: the bf16 and int8 forwards keep theirs in their own
// block in front), then a chunk of the input projection gx and the gathered inputs xs,
// gh [N, H] and the h double buffer [2, N, H].
template <typename T>
struct ForwardSpace {
  T *wih_p, *whh_p, *gx, *xs, *gh, *hbuf, *order;
};
template <typename T>
ForwardSpace<T> forward_layout(const Dims& d, detail::Carver<T>& c, bool lowp) {
  using namespace detail;
  const Index N = d.N, H = d.H, TC = proj_chunk_steps(d);
  ForwardSpace<T> w{};
  w.wih_p = lowp ? nullptr : c.take_aligned(packed_bound(d.C, H));
  w.whh_p = lowp ? nullptr : c.take_aligned(packed_bound(H, H));
  w.gx = c.take(TC * N * H);  // [TC * N, H], steps s0.. of the current chunk
  w.xs = c.take(TC * N * d.C);
  w.gh = c.take(N * H);
  w.hbuf = c.take(2 * N * H);
  w.order = c.take_aligned(ragged_order_scalars(N));  // ragged inference (ragged.h)
  return w;
}

// Backward workspace: dgh [T, N, H] (step order), dgx [T, N, H] (time order), dh [2, N, H],
// packed w_hh and w_ih; last, for lengths (ragged.h), dx of the valid positions [T*N, C] and the
// steps' bookkeeping.
template <typename T>
struct BackwardSpace {
  T *dgh, *dgx, *dhbuf, *whh_q, *wih_q, *dxc, *rag;
};
template <typename T>
BackwardSpace<T> backward_layout(const Dims& d, detail::Carver<T>& c, bool lowp = false) {
  using namespace detail;
  const Index NH = d.N * d.H;
  BackwardSpace<T> w{};
  w.dgh = c.take((lowp ? 1 : d.T) * NH);  // lowp: one step's, and no dgx (bf16_backward.h)
  w.dgx = c.take((lowp ? 0 : d.T) * NH);
  w.dhbuf = c.take(2 * NH);
  if (lowp) return w;  // the bf16 backward: its block follows (bf16_backward.h)
  w.whh_q = c.take_aligned(packed_bound(d.H, d.H));
  w.wih_q = c.take_aligned(packed_bound(d.H, d.C));
  w.dxc = c.take(d.T * d.N * d.C);
  w.rag = c.take_aligned(ragged_steps_scalars(d.T, d.N));
  return w;
}

isa::Sizes sizes(const Dims& d) {
  detail::check_dims("rnn_sizes", d);
  return detail::cell_sizes(d, &cache_layout<float>, &forward_layout<float>,
                            &backward_layout<float>);
}

// ---------------------------------------------------------------------------------------------

// With lengths (ragged.h): rows ordered by length, step s works on the running ones. Training
// writes the cache with ordered rows (slot s, row i). Arguments checked by forward().
template <typename Scalar>
void forward_ragged(const Dims& d, const RnnForwardArgs<Scalar>& a, const Options& opt,
                    const ForwardSpace<Scalar>& w, Scalar* cache_hs, Index S) {
  using namespace detail;
  const Index N = d.N, H = d.H, NH = N * H;
  const bool tanh_act = a.nonlinearity == Nonlinearity::tanh, training = cache_hs != nullptr;
  Scalar* hs = training ? cache_hs : w.hbuf;
  auto slot = [&](Index s) { return hs + (training ? s : s % 2) * NH; };
  const RaggedOrder ro{a.lengths, reinterpret_cast<Index*>(w.order), N};
  ro.sort();
  parallel_region(thread_count(opt, d, 1), [&] {
    forward_prologue(d, opt, 1, a.w_ih, a.lengths, w.wih_p, a.y);
    if (!opt.weights_packed) par_pack(a.w_hh, H, H, H, true, w.whh_p);
    par_gather_rows(ro, a.h0, H, hs);
    const Index TC = proj_chunk_steps(d);
    Index na = N, row = 0;  // row: step s's first row in the chunk's projection w.gx
    for (Index s = 0; s < S; ++s) {
      if (s % TC == 0) {
        par_project_ragged(d, ro, opt.reverse, 1, s, std::min(S, s + TC), na, a.x, w.wih_p,
                           w.xs, w.gx);
        row = 0;
      }
      na = ro.active(s, na);
      const Scalar* h_prev = slot(s);
      Scalar* h_next = slot(s + 1);
      const Scalar* gx = w.gx + row * H;
      row += na;
      par_gemm_packed(na, H, H, h_prev, H, w.whh_p, w.gh, H, false);
      for_unit_blocks(na, H, [&](Index i, Index u0, Index bk, Index off) {
        const Index n = ro.order[i], t = ro.time(s, i, opt.reverse);
        rnn_pointwise_forward(bk, tanh_act, gx + off, w.gh + off,
                              a.b_ih ? a.b_ih + u0 : nullptr, a.b_hh ? a.b_hh + u0 : nullptr,
                              h_next + off, a.y + (t * N + n) * H + u0);
      });
    }
#ifdef _OPENMP
#pragma omp single
#endif
    scatter_final_state(ro, hs, H, a.h_n, training);
  });
}

template <typename Scalar>
void forward(const Dims& d, const RnnForwardArgs<Scalar>& a, const Options& opt,
             Scalar* workspace) {
  using namespace detail;
  const char* fn = "rnn_forward";
  check_dims(fn, d);
  check_forward_ptrs(fn, a, workspace);
  const Index S = check_lengths(fn, d, a.lengths);
  const Index N = d.N, H = d.H, NH = N * H;
  const StepMap sm{a.lengths, d.T, opt.reverse};
  const bool training = a.cache != nullptr;
  const bool tanh_act = a.nonlinearity == Nonlinearity::tanh;

  const Index TC = proj_chunk_steps(d);
  const LowpForward lp = lowp_forward_setup(fn, d, opt, 1, false, training, a.w_ih, a.w_hh,
                                            workspace);
  const bool int8 = lp.int8, lowpx = lp.any;
  const lowp::Tier tier = lp.tier;
  const lowp::Bf16Block& lb = lp.lb;
  const lowp::S8Block& qb = lp.qb;
  Carver<Scalar> wc(workspace);
  const ForwardSpace<Scalar> w = forward_layout(d, wc, lowpx);
  Carver<Scalar> cc(a.cache);
  Scalar* hs = training ? cache_layout(d, cc).hs : w.hbuf;
  // Lengths (ragged.h): float32 and float64; bfloat16 keeps the rectangular path.
  if (a.lengths && !lowpx) return forward_ragged(d, a, opt, w, training ? hs : nullptr, S);
  auto slot = [&](Index s) { return hs + (training ? s : s % 2) * NH; };

  const int threads = thread_count(opt, d, 1);
  const bool s8_split = int8 && !training && s8_rows_split(N, H, H, threads);
  parallel_region(threads, [&] {
    const S8Rows rows(s8_split, N);  // int8 inference: maybe this thread's rows (bf16_steps.h)
    if (!lowpx) {
      forward_prologue(d, opt, 1, a.w_ih, a.lengths, w.wih_p, a.y);
      if (!opt.weights_packed) par_pack(a.w_hh, H, H, H, true, w.whh_p);
    } else if constexpr (std::is_same_v<Scalar, float>) {
      if (!opt.weights_packed && int8) {
        par_pack_s8(a.w_ih, H, d.C, qb.wih);
        par_pack_s8(a.w_hh, H, H, qb.whh);
      } else if (!opt.weights_packed) {
        par_pack_bf16(a.w_ih, H, d.C, lb.wih);
        par_pack_bf16(a.w_hh, H, H, lb.whh);
      }
      if (a.lengths) par_fill(a.y, d.T * N * H, Scalar(0));
    }
    par_copy_or_zero(hs, a.h0, NH);
    for (Index s = 0; s < S; ++s) {
      const Scalar* h_prev = slot(s);
      Scalar* h_next = slot(s + 1);
      if (!lowpx) {
        if (s % TC == 0)
          project_steps(d, 1, sm, s, std::min(S, s + TC), a.x, w.wih_p, w.xs, w.gx);
        par_gemm_packed(N, H, H, h_prev, H, w.whh_p, w.gh, H, false);
      } else if (int8) {
        if constexpr (std::is_same_v<Scalar, float>) {
          if (s % TC == 0) {
            if (s > 0) rows.sync();
            project_steps_s8(tier, d, 1, sm, s, std::min(S, s + TC), a.x, qb, w.gx);
          }
          gemm_rows_s8(tier, rows, N, H, H, h_prev, H, qb.hq, qb.hscale, qb.whh, w.gh, H);
        }
      } else if constexpr (std::is_same_v<Scalar, float>) {
        if (s % TC == 0)
          project_steps_bf16(tier, d, 1, sm, s, std::min(S, s + TC), a.x, lb, w.gx);
        gemm_rows_bf16(tier, N, H, H, h_prev, H, lb.hb, lb.whh, w.gh, H);
      }
      unit_blocks(rows, N, H, [&](Index n, Index u0, Index bk, Index off) {
        const Index t = sm.time(s, n);
        Scalar* hn = h_next + off;
        if (t < 0) {
          carry(h_prev + off, hn, bk);
          return;
        }
        rnn_pointwise_forward(bk, tanh_act, w.gx + ((s % TC) * N + n) * H + u0, w.gh + off,
                              a.b_ih ? a.b_ih + u0 : nullptr, a.b_hh ? a.b_hh + u0 : nullptr,
                              hn, a.y + (t * N + n) * H + u0);
      });
    }
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
void backward_ragged(const Dims& d, const RnnBackwardArgs<Scalar>& a, const Options& opt,
                     const Scalar* hs, const BackwardSpace<Scalar>& w, Index S) {
  using namespace detail;
  const Index N = d.N, H = d.H, NH = N * H;
  const bool tanh_act = a.nonlinearity == Nonlinearity::tanh;
  const RaggedSteps rs(a.lengths, d.T, N, S, opt.reverse, w.rag);
  const RaggedOrder& ro = rs.ro;
  Scalar *dgh = w.dgh, *dhbuf = w.dhbuf;

  parallel_region(thread_count(opt, d, 1), [&] {
    if (!opt.weights_packed) par_pack(a.w_hh, H, H, H, false, w.whh_q);
    par_gather_final_grad(ro, a.dh_n, H, dhbuf);
    Index na = 0;
    for (Index s = S - 1; s >= 0; --s) {
      na = ro.active_down(s, na);
      const Scalar* dh_cur = dhbuf + ((s + 1) % 2) * NH;
      Scalar* dh_nxt = dhbuf + (s % 2) * NH;
      Scalar* dgs = dgh + rs.off[s] * H;  // [na, H]
      for_unit_blocks(na, H, [&](Index i, Index u0, Index bk, Index off) {
        const Index n = ro.order[i], t = rs.time(s, i);
        if (i + 1 < na) prefetch_gate_blocks_for_write(dgs + off + H, 1, H, bk);  // next row's
        rnn_pointwise_backward(bk, tanh_act, dh_cur + off,
                               a.dy ? a.dy + (t * N + n) * H + u0 : nullptr,
                               hs + (s + 1) * NH + off, dgs + off, dh_nxt + off,
                               static_cast<Scalar*>(nullptr));
      });
      par_gemm_packed(na, H, H, dgs, H, w.whh_q, dh_nxt, H, true);
    }
#ifdef _OPENMP
#pragma omp single
#endif
    if (a.dh0) scatter_initial_grad(ro, dhbuf, H, a.dh0);
    ragged_backward_epilogue(d, rs, Index(1), H, a.x, a.w_ih, dgh, dgh, hs, w.wih_q, w.dxc,
                             a.dx, a.dw_ih, a.dw_hh, a.db_ih, a.db_hh, opt.weights_packed);
  });
}

template <typename Scalar>
void backward(const Dims& d, const RnnBackwardArgs<Scalar>& a, const Options& opt,
              Scalar* workspace) {
  using namespace detail;
  const char* fn = "rnn_backward";
  check_dims(fn, d);
  check_backward_ptrs(fn, a, workspace);
  check_sink(fn, a, opt);
  const Index S = check_lengths(fn, d, a.lengths);
  const Index N = d.N, H = d.H, NH = N * H;
  const StepMap sm{a.lengths, d.T, opt.reverse};
  const bool tanh_act = a.nonlinearity == Nonlinearity::tanh;
  check_backward_precision(fn, opt, std::is_same_v<Scalar, float>);
  const bool bf16 = opt.precision == Precision::bfloat16;  // bf16_backward.h
  const lowp::Tier tier = bf16 ? lowp::active_tier() : lowp::Tier::baseline;
  Carver<const Scalar> cc(a.cache);
  const Scalar* hs = cache_layout(d, cc).hs;
  Carver<Scalar> wc(workspace);
  const BackwardSpace<Scalar> w = backward_layout(d, wc, bf16);
  Bf16Back lb;  // bf16: after the part of the float32 layout it uses
  if (bf16) lb = bf16_back_block(d, 1, false, aligned64(workspace + wc.size()));
  // Lengths (ragged.h): float32 and float64 (a bfloat16 cache keeps the rectangular layout).
  if (a.lengths && opt.precision == Precision::float32)
    return backward_ragged(d, a, opt, hs, w, S);
  Scalar* dgh = w.dgh;
  Scalar* dgx = bf16 ? dgh : opt.reverse ? w.dgx : dgh;  // bf16: one step's dgh, no dgx
  Scalar* dhbuf = w.dhbuf;

  parallel_region(thread_count(opt, d, 1), [&] {
    if (bf16) {
      if constexpr (std::is_same_v<Scalar, float>)
        par_bf16_back_prologue(d, S, H, lb, H, 0, a.lengths != nullptr, a.dx);
    } else if (a.lengths) {
      par_fill(dgx, d.T * NH, Scalar(0));
    }
    // Packed unless an earlier backward of this precision did (Options::weights_packed).
    if (!opt.weights_packed) {
      if (!bf16) {
        par_pack(a.w_hh, H, H, H, false, w.whh_q);
      } else if constexpr (std::is_same_v<Scalar, float>) {
        par_pack_bf16_kn(a.w_hh, H, H, H, lb.whh);
        par_pack_bf16_kn(a.w_ih, H, d.C, d.C, lb.wih);
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
        Scalar* dgs = dgh + (B ? 0 : s * NH);
        for_unit_blocks(N, H, [&](Index n, Index u0, Index bk, Index off) {
          const Index t = sm.time(s, n);
          // The next row's block (skeleton.h).
          if (!B && n + 1 < N) prefetch_gate_blocks_for_write(dgs + off + H, 1, H, bk);
          if (t < 0) {
            zero_gate_blocks(dgs + off, 1, H, bk);
            carry(dh_cur + off, dh_nxt + off, bk);
            return;
          }
          rnn_pointwise_backward(bk, tanh_act, dh_cur + off,
                                 a.dy ? a.dy + (t * N + n) * H + u0 : nullptr,
                                 hs + (s + 1) * NH + off, dgs + off, dh_nxt + off,
                                 dgx != dgh ? dgx + (t * N + n) * H + u0 : nullptr);
        });
        if constexpr (!B) {
          par_gemm_packed(N, H, H, dgs, H, w.whh_q, dh_nxt, H, true);
        } else if constexpr (std::is_same_v<Scalar, float>) {  // (as the LSTM's)
          std::uint16_t* ab = lb.ab + ab_row(lb, d, sm, s, S) * lowp::bf16_kpad(H);
          par_convert_step(dgs, N, H, H, ab, lowp::bf16_kpad(H), lb.at, 0, lb.ldt, s * N,
                           a.db_ih, a.db_hh);
          lowp::par_gemm_bf16(tier, N, H, H, ab, lowp::bf16_kpad(H), lb.whh, nullptr, dh_nxt, H,
                              true);
          dx_step_bf16(tier, d, sm, s, S, H, lb.ab, lb, a.dx);
        }
      }
    };
    if (bf16) steps(std::true_type{}); else steps(std::false_type{});
#ifdef _OPENMP
#pragma omp single
#endif
    if (a.dh0) std::copy(dhbuf, dhbuf + NH, a.dh0);
    if (!bf16)
      backward_epilogue(d, S, Index(1), H, a.x, a.w_ih, dgx, dgh, hs, w.wih_q, a.dx, a.dw_ih,
                        a.dw_hh, a.db_ih, a.db_hh, opt.weights_packed, a.wgrad_sink);
    else if constexpr (std::is_same_v<Scalar, float>)
      weight_grads_bf16(tier, d, sm, S, H, H, a.x, hs, lb, a.dw_ih, a.dw_hh);
  });
}

}  // namespace

void fill_rnn(isa::Table& t) {
  t.rnn_sizes = &sizes;
  t.f32.rnn_forward = &forward<float>;
  t.f32.rnn_backward = &backward<float>;
  t.f64.rnn_forward = &forward<double>;
  t.f64.rnn_backward = &backward<double>;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
