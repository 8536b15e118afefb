// The Elman RNN's pointwise math, forward and backward side by side, for one block of units of
// one row: h = act(gx + gh + b_ih + b_hh), act = tanh or relu. The batch kernel (rnn.cc) and a
// Stream's step (step.cc) call the same forward.
#pragma once

#include "activations.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// Forward: h = act(pre), tanh or relu (relu keeps NaN and -0). y, if given, gets a copy.
template <typename Scalar>
inline void rnn_pointwise_forward(Index n, bool tanh_act, const Scalar* gx, const Scalar* gh,
                                  const Scalar* b_ih, const Scalar* b_hh, Scalar* h_next,
                                  Scalar* y) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  for_packets<Scalar>(n, [&](auto ld, auto st) {
    const P v = gate_pre(ld, 0, 0, gx, gh, b_ih, b_hh);
    const P zero = ei::pzero(v);
    const P h = tanh_act ? ptanh(v) : ei::pselect(ei::pcmp_lt(v, zero), zero, v);
    st(h_next, h);
    if (y) st(y, h);
  });
}

// Backward. In: dh = dh_in (+ dy) and the activated h of this step. Derivation: the slope is
// taken from the activated value, tanh' = 1 - h², relu' = [h > 0]; dg = dh slope. Out: dg;
// dh_zero zeroed (the recurrent product then adds dg w_hh into it); dgx, if given, a copy.
template <typename Scalar>
inline void rnn_pointwise_backward(Index n, bool tanh_act, const Scalar* dh_in, const Scalar* dy,
                                   const Scalar* h, Scalar* dg, Scalar* dh_zero, Scalar* dgx) {
  namespace ei = Eigen::internal;
  using Pk = Packet<Scalar>;
  for_packets<Scalar>(n, [&](auto ld, auto st) {
    const Pk one = ei::pset1<Pk>(Scalar(1)), zero = ei::pzero(one);
    Pk dh = ld(dh_in);
    if (dy) dh = ei::padd(dh, ld(dy));
    const Pk hv = ld(h);
    const Pk slope = tanh_act ? ei::psub(one, ei::pmul(hv, hv))
                              : ei::pselect(ei::pcmp_lt(zero, hv), one, zero);
    const Pk g = ei::pmul(dh, slope);
    st(dg, g);
    st(dh_zero, zero);
    if (dgx) st(dgx, g);
  });
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
