// The LSTM's pointwise math, forward and backward side by side: everything of a time step but
// the matrix products, for one block of units of one row, fused into one packet loop (values
// stay in registers). The batch kernel (lstm.cc) and a Stream's step (step.cc) call the same
// forward, so a Stream equals the batch forward bitwise, and inference equals training (the gate
// stores are the only difference).
//
// Arrays of a gate block point at the first gate's units of the block, gate g at + g*H (gates in
// PyTorch order i, f, g, o). Null biases / peepholes are skipped; null outputs are not written.
#pragma once

#include "activations.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// Forward. With pre-activations a_* = gx_* + gh_* + b_ih_* + b_hh_* and peepholes p_i, p_f, p_o:
//   i = σ(a_i + p_i c_prev)   f = σ(a_f + p_f c_prev)   g = tanh(a_g)
//   c = f c_prev + i g        o = σ(a_o + p_o c)        out = o tanh(c)
// `out` is h (or m = o tanh(c) when a projection follows); y, if given, gets a copy of it;
// `gates`, if given (training), gets the activated i, f, g, o for backward. c_prev and c_next
// may alias (a Stream updates c in place). cell_clip > 0: c = clip(f c_prev + i g, ±cell_clip)
// before o and h see it (a NaN stays NaN).
template <typename Scalar>
inline void lstm_pointwise_forward(Index n, Index H, const Scalar* gx, const Scalar* gh,
                                   const Scalar* b_ih, const Scalar* b_hh, const Scalar* w_peep,
                                   const Scalar* c_prev, Scalar* c_next, Scalar* out, Scalar* y,
                                   Scalar* gates, Scalar cell_clip = Scalar(0)) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  const P hi = ei::pset1<P>(cell_clip), lo = ei::pset1<P>(-cell_clip);
  for_packets<Scalar>(n, [&](auto ld, auto st) {
    const P cp = ld(c_prev);
    P pi = gate_pre(ld, 0, H, gx, gh, b_ih, b_hh);
    P pf = gate_pre(ld, 1, H, gx, gh, b_ih, b_hh);
    if (w_peep) {
      pi = ei::pmadd(ld(w_peep), cp, pi);
      pf = ei::pmadd(ld(w_peep + H), cp, pf);
    }
    const P i = psigmoid(pi), f = psigmoid(pf);
    const P g = ptanh(gate_pre(ld, 2, H, gx, gh, b_ih, b_hh));
    P c = ei::pmadd(f, cp, ei::pmul(i, g));
    if (cell_clip > 0)
      c = ei::pselect(ei::pcmp_lt(hi, c), hi, ei::pselect(ei::pcmp_lt(c, lo), lo, c));
    P po = gate_pre(ld, 3, H, gx, gh, b_ih, b_hh);
    if (w_peep) po = ei::pmadd(ld(w_peep + 2 * H), c, po);
    const P o = psigmoid(po);
    const P h = ei::pmul(o, ptanh(c));
    st(c_next, c);
    st(out, h);
    if (y) st(y, h);
    if (gates) {
      st(gates, i);
      st(gates + H, f);
      st(gates + 2 * H, g);
      st(gates + 3 * H, o);
    }
  });
}

// Backward of lstm_pointwise_forward. In: dh = dh_in (+ dy), the gradient of `out`; dc_in, the
// gradient of c carried from the next step; the cached activated gates, c_prev and c. Out: dg,
// the pre-activation gradients (i, f, g, o at + g*H); dc_prev; dh_zero, if given, zeroed (the
// recurrent product then adds dg w_hh into it); dgx, if given, a copy of dg.
// Derivation (σ' = σ(1 - σ), tanh' = 1 - tanh²):
//   do_pre = dh tanh(c) o(1 - o)
//   dc     = dc_in + dh o (1 - tanh²(c)) + do_pre p_o        (o saw c through p_o)
//   di_pre = dc g i(1 - i)     df_pre = dc c_prev f(1 - f)     dg_pre = dc i (1 - g²)
//   dc_prev = dc f + di_pre p_i + df_pre p_f                  (i, f saw c_prev through p_i, p_f)
// With cell_clip > 0, c = clip(c_pre): dc above is the gradient of the clipped c, and the clip
// passes it on where it was inactive only: dc := dc [|c| < cell_clip] (c the cached, clipped
// value) before the gate gradients.
template <typename Scalar>
inline void lstm_pointwise_backward(Index n, Index H, const Scalar* dh_in, const Scalar* dy,
                                    const Scalar* gates, const Scalar* c_prev, const Scalar* c,
                                    const Scalar* dc_in, const Scalar* w_peep, Scalar* dg,
                                    Scalar* dc_prev, Scalar* dh_zero, Scalar* dgx,
                                    Scalar cell_clip = Scalar(0)) {
  namespace ei = Eigen::internal;
  using Pk = Packet<Scalar>;
  const Pk clip = ei::pset1<Pk>(cell_clip);
  for_packets<Scalar>(n, [&](auto ld, auto st) {
    const Pk one = ei::pset1<Pk>(Scalar(1));
    Pk dh = ld(dh_in);
    if (dy) dh = ei::padd(dh, ld(dy));
    const Pk gi = ld(gates), gf = ld(gates + H), gg = ld(gates + 2 * H), go = ld(gates + 3 * H);
    const Pk cv = ld(c), tc = ptanh(cv);
    const Pk do_pre = ei::pmul(ei::pmul(ei::pmul(dh, tc), go), ei::psub(one, go));
    Pk dc = ei::padd(ld(dc_in), ei::pmul(ei::pmul(dh, go), ei::psub(one, ei::pmul(tc, tc))));
    if (w_peep) dc = ei::padd(dc, ei::pmul(do_pre, ld(w_peep + 2 * H)));
    if (cell_clip > 0) dc = ei::pselect(ei::pcmp_lt(ei::pabs(cv), clip), dc, ei::pzero(dc));
    const Pk di_pre = ei::pmul(ei::pmul(ei::pmul(dc, gg), gi), ei::psub(one, gi));
    const Pk df_pre = ei::pmul(ei::pmul(ei::pmul(dc, ld(c_prev)), gf), ei::psub(one, gf));
    const Pk dg_pre = ei::pmul(ei::pmul(dc, gi), ei::psub(one, ei::pmul(gg, gg)));
    Pk dcp = ei::pmul(dc, gf);
    if (w_peep)
      dcp = ei::padd(dcp, ei::padd(ei::pmul(di_pre, ld(w_peep)), ei::pmul(df_pre, ld(w_peep + H))));
    st(dg, di_pre);
    st(dg + H, df_pre);
    st(dg + 2 * H, dg_pre);
    st(dg + 3 * H, do_pre);
    st(dc_prev, dcp);
    if (dh_zero) st(dh_zero, ei::pzero(one));
    if (dgx) {
      st(dgx, di_pre);
      st(dgx + H, df_pre);
      st(dgx + 2 * H, dg_pre);
      st(dgx + 3 * H, do_pre);
    }
  });
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
