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
// (H, 3H) <= packed_bound(H, 2H) + packed_bound(H, H)). Then a chunk of the input projection gx
// and the gathered inputs xs, gh [N, 3H], gates of one step [N, 4H] and the h double buffer.
template <typename T>
struct ForwardSpace {
  T *wih_p, *whh_p, *whn_p, *gx, *xs, *gh, *gstep, *hbuf, *order;
};
template <typename T>
ForwardSpace<T> forward_layout(const Dims& d, detail::Carver<T>& c) {
  using namespace detail;
  const Index N = d.N, H = d.H, GH = 3 * H, TC = proj_chunk_steps(d);
  ForwardSpace<T> w{};
  w.wih_p = c.take_aligned(packed_bound(d.C, GH));
  w.whh_p = c.take_aligned(packed_bound(H, 2 * H));
  w.whn_p = c.take_aligned(packed_bound(H, H));
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
// all 3H rows from whh_q on) and w_ih.
template <typename T>
struct BackwardSpace {
  T *dgh, *dgx, *dhbuf, *drh, *whh_q, *whn_q, *wih_q;
};
template <typename T>
BackwardSpace<T> backward_layout(const Dims& d, detail::Carver<T>& c) {
  using namespace detail;
  const Index N = d.N, H = d.H, GH = 3 * H;
  BackwardSpace<T> w{};
  w.dgh = c.take(d.T * N * GH);
  w.dgx = c.take(d.T * N * GH);
  w.dhbuf = c.take(2 * N * H);
  w.drh = c.take(N * H);
  w.whh_q = c.take_aligned(packed_bound(2 * H, H));
  w.whn_q = c.take_aligned(packed_bound(H, H));
  w.wih_q = c.take_aligned(packed_bound(GH, d.C));
  return w;
}

isa::Sizes sizes(const Dims& d) {
  detail::check_dims("gru_sizes", d);
  return {detail::measure(d, &cache_layout<float>), detail::measure(d, &forward_layout<float>),
          detail::measure(d, &backward_layout<float>)};
}

// ---------------------------------------------------------------------------------------------

// Inference with lengths (ragged.h): rows ordered by length, step s works on the running ones.
// Arguments checked by forward().
template <typename Scalar>
void forward_ragged(const Dims& d, const GruForwardArgs<Scalar>& a, const Options& opt,
                    const ForwardSpace<Scalar>& w, Index S) {
  using namespace detail;
  const Index N = d.N, H = d.H, GH = 3 * H, NH = N * H;
  const Index nub = ceil_div(H, kUnitBlock);
  const bool after = a.variant == GruVariant::reset_after;
  const Scalar *b_ih = a.b_ih, *b_hh = a.b_hh;
  const RaggedOrder ro{a.lengths, reinterpret_cast<Index*>(w.order), N};
  ro.sort();
  parallel_region(thread_count(opt, d, 3), [&] {
    forward_prologue(d, opt, 3, a.w_ih, a.lengths, w.wih_p, a.y);
    if (!opt.weights_packed) {
      par_pack(a.w_hh, H, after ? GH : 2 * H, H, true, w.whh_p);
      if (!after) par_pack(a.w_hh + 2 * H * H, H, H, H, true, w.whn_p);
    }
    par_gather_rows(ro, a.h0, H, w.hbuf);
    Index na = N;
    for (Index s = 0; s < S; ++s) {
      na = ro.active(s, na);
      const Scalar* h_prev = w.hbuf + (s % 2) * NH;
      Scalar* h_next = w.hbuf + ((s + 1) % 2) * NH;
      par_gather_step_inputs(d, ro, opt.reverse, s, na, a.x, w.xs);
      par_gemm_packed(na, GH, d.C, w.xs, d.C, w.wih_p, w.gx, GH, false);
      par_gemm_packed(na, after ? GH : 2 * H, H, h_prev, H, w.whh_p, w.gh, GH, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < na * nub; ++job) {
        const Index i = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = i * H + u0;
        const Index n = ro.order[i], t = ro.time(s, i, opt.reverse);
        const Scalar* gxr = w.gx + i * GH + u0;
        const Scalar* ghr = w.gh + i * GH + u0;
        const Scalar* bi = b_ih ? b_ih + u0 : nullptr;
        const Scalar* bh = b_hh ? b_hh + u0 : nullptr;
        if (after)
          gru_after_pointwise_forward(bk, H, gxr, ghr, bi, bh, h_prev + off, h_next + off,
                                      a.y + (t * N + n) * H + u0, static_cast<Scalar*>(nullptr));
        else
          gru_before_pointwise_forward_rz(bk, H, gxr, ghr, bi, bh, h_prev + off,
                                          w.gstep + i * 4 * H + u0);
      }
      if (after) continue;
      // reset_before: gh_n = (r*h) w_hnᵀ, then the candidate and the new state.
      par_gemm_packed(na, H, H, w.gstep + 3 * H, 4 * H, w.whn_p, w.gh + 2 * H, GH, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < na * nub; ++job) {
        const Index i = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = i * H + u0;
        const Index n = ro.order[i], t = ro.time(s, i, opt.reverse);
        gru_before_pointwise_forward_n(bk, H, w.gx + i * GH + u0, w.gh + i * GH + u0,
                                       b_ih ? b_ih + u0 : nullptr, b_hh ? b_hh + u0 : nullptr,
                                       h_prev + off, h_next + off, a.y + (t * N + n) * H + u0,
                                       w.gstep + i * 4 * H + u0);
      }
    }
#ifdef _OPENMP
#pragma omp single
#endif
    scatter_final_state(ro, w.hbuf, H, a.h_n);
  });
}

template <typename Scalar>
void forward(const Dims& d, const GruForwardArgs<Scalar>& a, const Options& opt,
             Scalar* workspace) {
  using namespace detail;
  const char* fn = "gru_forward";
  check_dims(fn, d);
  for (auto [p, name] : {std::pair<const void*, const char*>{a.x, "x"}, {a.w_ih, "w_ih"},
                         {a.w_hh, "w_hh"}, {a.y, "y"}, {a.h_n, "h_n"}, {workspace, "workspace"}})
    check_ptr(fn, p, name);
  const Index S = check_lengths(fn, d, a.lengths);
  const Index N = d.N, H = d.H, GH = 3 * H, NH = N * H;
  const Index nub = ceil_div(H, kUnitBlock);
  const StepMap sm{a.lengths, d.T, opt.reverse};
  const bool training = a.cache != nullptr;
  const bool after = a.variant == GruVariant::reset_after;
  const Scalar *b_ih = a.b_ih, *b_hh = a.b_hh;
  Scalar* y = a.y;

  const Index TC = proj_chunk_steps(d);
  check_precision(fn, opt, std::is_same_v<Scalar, float>, training);
  const bool bf16 = opt.precision == Precision::bfloat16;
  const lowp::Tier tier = bf16 ? lowp::active_tier() : lowp::Tier::baseline;
  lowp::Bf16Block lb;  // precision bfloat16: the bf16 block in front of the float32 layout
  if (bf16) {
    lb = lowp::bf16_block(d, 3, true, aligned64(workspace));
    workspace += lb.floats;
  }
  Carver<Scalar> wc(workspace);
  const ForwardSpace<Scalar> w = forward_layout(d, wc);
  // Ragged inference (ragged.h) runs in float32 only; bfloat16 keeps the rectangular path.
  if (a.lengths && !training && !bf16) return forward_ragged(d, a, opt, w, S);
  Carver<Scalar> cc(a.cache);
  const Cache<Scalar> k = cache_layout(d, cc);
  Scalar* hs = training ? k.hs : w.hbuf;
  auto slot = [&](Index s) { return hs + (training ? s : s % 2) * NH; };
  // Gate row (r, z, n, q) of sequence n at step s.
  auto gate_row = [&](Index s, Index n) {
    return (training ? k.gates + s * N * 4 * H : w.gstep) + n * 4 * H;
  };

  parallel_region(thread_count(opt, d, 3), [&] {
    if (!bf16) {
      forward_prologue(d, opt, 3, a.w_ih, a.lengths, w.wih_p, y);
      if (!opt.weights_packed) {
        par_pack(a.w_hh, H, after ? GH : 2 * H, H, true, w.whh_p);
        if (!after) par_pack(a.w_hh + 2 * H * H, H, H, H, true, w.whn_p);
      }
    } else if constexpr (std::is_same_v<Scalar, float>) {
      if (!opt.weights_packed) {
        par_pack_bf16(a.w_ih, GH, d.C, lb.wih);
        // reset_after: all 3H rows, across the block's whh and whn pieces (sized for them)
        par_pack_bf16(a.w_hh, after ? GH : 2 * H, H, lb.whh);
        if (!after) par_pack_bf16(a.w_hh + 2 * H * H, H, H, lb.whn);
      }
      if (a.lengths) par_fill(y, d.T * N * H, Scalar(0));
    }
    par_copy_or_zero(hs, a.h0, NH);
    for (Index s = 0; s < S; ++s) {
      const Scalar* h_prev = slot(s);
      Scalar* h_next = slot(s + 1);
      // reset_after: gh = h w_hhᵀ (all three blocks); reset_before: the r and z blocks only.
      if (!bf16) {
        if (s % TC == 0)
          project_steps(d, 3, sm, s, std::min(S, s + TC), a.x, w.wih_p, w.xs, w.gx);
        par_gemm_packed(N, after ? GH : 2 * H, H, h_prev, H, w.whh_p, w.gh, GH, false);
      } else if constexpr (std::is_same_v<Scalar, float>) {
        if (s % TC == 0)
          project_steps_bf16(tier, d, 3, sm, s, std::min(S, s + TC), a.x, lb, w.gx);
        gemm_rows_bf16(tier, N, after ? GH : 2 * H, H, h_prev, H, lb.hb, lb.whh, w.gh, GH);
      }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        Scalar* g = gate_row(s, n);
        Scalar *ar = g + u0, *aq = g + 3 * H + u0;
        if (t < 0) {
          std::copy(h_prev + off, h_prev + off + bk, h_next + off);
          if (!after) std::fill(aq, aq + bk, Scalar(0));  // r*h feeds the next GEMM
          continue;
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
      }
      if (after) continue;
      // reset_before: gh_n = (r*h) w_hnᵀ, then the candidate and the new state.
      const Scalar* q = gate_row(s, 0) + 3 * H;
      if (!bf16)
        par_gemm_packed(N, H, H, q, 4 * H, w.whn_p, w.gh + 2 * H, GH, false);
      else if constexpr (std::is_same_v<Scalar, float>)
        gemm_rows_bf16(tier, N, H, H, q, 4 * H, lb.rhb, lb.whn, w.gh + 2 * H, GH);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        if (t < 0) continue;
        gru_before_pointwise_forward_n(bk, H, w.gx + ((s % TC) * N + n) * GH + u0,
                                       w.gh + n * GH + u0, b_ih ? b_ih + u0 : nullptr,
                                       b_hh ? b_hh + u0 : nullptr, h_prev + off, h_next + off,
                                       y + (t * N + n) * H + u0, gate_row(s, n) + u0);
      }
    }
#ifdef _OPENMP
#pragma omp single
#endif
    std::copy(slot(S), slot(S) + NH, a.h_n);
  });
}

template <typename Scalar>
void backward(const Dims& d, const GruBackwardArgs<Scalar>& a, const Options& opt,
              Scalar* workspace) {
  using namespace detail;
  const char* fn = "gru_backward";
  check_dims(fn, d);
  for (auto [p, name] : {std::pair<const void*, const char*>{a.x, "x"}, {a.w_ih, "w_ih"},
                         {a.w_hh, "w_hh"}, {a.cache, "cache"}, {a.dx, "dx"},
                         {workspace, "workspace"}})
    check_ptr(fn, p, name);
  const Index S = check_lengths(fn, d, a.lengths);
  const Index N = d.N, H = d.H, GH = 3 * H, NH = N * H;
  const Index nub = ceil_div(H, kUnitBlock);
  const StepMap sm{a.lengths, d.T, opt.reverse};
  const bool after = a.variant == GruVariant::reset_after;
  const Scalar* dy = a.dy;

  Carver<const Scalar> cc(a.cache);
  const Cache<const Scalar> k = cache_layout(d, cc);
  const Scalar *hs = k.hs, *gates = k.gates;
  Carver<Scalar> wc(workspace);
  const BackwardSpace<Scalar> w = backward_layout(d, wc);
  Scalar* dgh = w.dgh;
  // reset_after: the n block differs (dgh_n = dn_pre*r, dgx_n = dn_pre), so two buffers; else
  // they differ only in order, and without reverse not even that.
  Scalar* dgx = (after || opt.reverse) ? w.dgx : dgh;
  Scalar* dhbuf = w.dhbuf;

  parallel_region(thread_count(opt, d, 3), [&] {
    if (a.lengths) par_fill(dgx, d.T * N * GH, Scalar(0));
    if (!opt.weights_packed) {
      par_pack(a.w_hh, after ? GH : 2 * H, H, H, false, w.whh_q);
      if (!after) par_pack(a.w_hh + 2 * H * H, H, H, H, false, w.whn_q);
    }
    par_copy_or_zero(dhbuf + (S % 2) * NH, a.dh_n, NH);
    for (Index s = S - 1; s >= 0; --s) {
      const Scalar* dh_cur = dhbuf + ((s + 1) % 2) * NH;
      Scalar* dh_nxt = dhbuf + (s % 2) * NH;
      Scalar* dgs = dgh + s * N * GH;
      const Scalar* hp_s = hs + s * NH;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        Scalar* dg = dgs + n * GH + u0;
        if (t < 0) {
          for (Index g = 0; g < 3; ++g) std::fill(dg + g * H, dg + g * H + bk, Scalar(0));
          std::copy(dh_cur + off, dh_cur + off + bk, dh_nxt + off);
          continue;
        }
        gru_pointwise_backward(bk, H, dh_cur + off, dy ? dy + (t * N + n) * H + u0 : nullptr,
                               gates + (s * N + n) * 4 * H + u0, hp_s + off, dg, dh_nxt + off,
                               after ? dgx + (t * N + n) * GH + u0 : nullptr);
      }
      if (after) {
        par_gemm_packed(N, H, GH, dgs, GH, w.whh_q, dh_nxt, H, true);
        continue;
      }
      // reset_before: n = tanh(... + W_hn (r*h) + b_hn), so d(r*h) = dn_pre W_hn, which gives
      // dr = d(r*h)*h and a direct term d(r*h)*r of dh_prev.
      par_gemm_packed(N, H, H, dgs + 2 * H, GH, w.whn_q, w.drh, H, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        if (t < 0) continue;
        gru_before_pointwise_backward_r(bk, H, w.drh + off, gates + (s * N + n) * 4 * H + u0,
                                        hp_s + off, dgs + n * GH + u0, dh_nxt + off,
                                        dgx != dgh ? dgx + (t * N + n) * GH + u0 : nullptr);
      }
      par_gemm_packed(N, H, 2 * H, dgs, GH, w.whh_q, dh_nxt, H, true);
    }
#ifdef _OPENMP
#pragma omp single
#endif
    if (a.dh0) std::copy(dhbuf, dhbuf + NH, a.dh0);
    backward_epilogue(d, S, Index(3), H, a.x, a.w_ih, dgx, dgh, hs, w.wih_q, a.dx, a.dw_ih,
                      after ? a.dw_hh : nullptr, a.db_ih, a.db_hh, opt.weights_packed);
    if (!after && a.dw_hh) {
      // The r and z blocks multiplied h, the n block multiplied q = r*h (cache block 4).
      par_gemm_tn_add(2 * H, H, S * N, dgh, GH, hs, H, a.dw_hh, H);
      par_gemm_tn_add(H, H, S * N, dgh + 2 * H, GH, gates + 3 * H, 4 * H, a.dw_hh + 2 * H * H,
                      H);
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
