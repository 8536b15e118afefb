// The GRU's pointwise math, forward and backward side by side, both formulas (gates in PyTorch
// order r, z, n), for one block of units of one row, fused into packet loops. The batch kernel
// (gru.cc) and a Stream's step (step.cc) call the same forward passes (bitwise equal results).
//
//   reset_after:  n = tanh(gx_n + b_in + r*q),  q = W_hn h_prev + b_hn    (one product per step)
//   reset_before: n = tanh(gx_n + b_in + W_hn q + b_hn),  q = r*h_prev   (r first, then W_hn q)
//   h = (1 - z)*n + z*h_prev
//
// Arrays of a gate block point at the first gate's units, gate g at + g*H. The cached `gates`
// row holds r, z, n, q. Null biases are skipped; null outputs are not written.
#pragma once

#include "activations.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// h = n + z*(h_prev - n), the GRU's (1 - z)*n + z*h_prev with one multiply-add.
template <typename P>
inline P gru_update(const P& z, const P& n, const P& hp) {
  namespace ei = Eigen::internal;
  return ei::pmadd(z, ei::psub(hp, n), n);
}

// Forward, reset_after (gh holds all three products): r = σ(a_r), z = σ(a_z),
// q = gh_n + b_hn, n = tanh(gx_n + b_in + r*q), h. `gates`: r, z, n, q, or null.
// h_prev and h_next may alias.
template <typename Scalar>
inline void gru_after_pointwise_forward(Index n, Index H, const Scalar* gx, const Scalar* gh,
                                        const Scalar* b_ih, const Scalar* b_hh,
                                        const Scalar* h_prev, Scalar* h_next, Scalar* y,
                                        Scalar* gates) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  for_packets<Scalar>(n, [&](auto ld, auto st) {
    const P r = psigmoid(gate_pre(ld, 0, H, gx, gh, b_ih, b_hh));
    const P z = psigmoid(gate_pre(ld, 1, H, gx, gh, b_ih, b_hh));
    P q = ld(gh + 2 * H);
    if (b_hh) q = ei::padd(q, ld(b_hh + 2 * H));
    P xn = ld(gx + 2 * H);
    if (b_ih) xn = ei::padd(xn, ld(b_ih + 2 * H));
    const P nn = ptanh(ei::pmadd(r, q, xn));
    const P h = gru_update(z, nn, ld(h_prev));
    st(h_next, h);
    if (y) st(y, h);
    if (gates) {
      st(gates, r);
      st(gates + H, z);
      st(gates + 2 * H, nn);
      st(gates + 3 * H, q);
    }
  });
}

// Forward, reset_before, first pass (gh holds the r and z products): r, z and q = r*h_prev into
// `gates` (r, z, -, q); q is the next product's input.
template <typename Scalar>
inline void gru_before_pointwise_forward_rz(Index n, Index H, const Scalar* gx, const Scalar* gh,
                                            const Scalar* b_ih, const Scalar* b_hh,
                                            const Scalar* h_prev, Scalar* gates) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  for_packets<Scalar>(n, [&](auto ld, auto st) {
    const P r = psigmoid(gate_pre(ld, 0, H, gx, gh, b_ih, b_hh));
    const P z = psigmoid(gate_pre(ld, 1, H, gx, gh, b_ih, b_hh));
    st(gates, r);
    st(gates + H, z);
    st(gates + 3 * H, ei::pmul(r, ld(h_prev)));
  });
}

// Forward, reset_before, second pass (gh_n = (r*h) w_hnᵀ now): n = tanh(gx_n + b_in + gh_n +
// b_hn) (stored into gates + 2H; z is read from gates + H), then h.
template <typename Scalar>
inline void gru_before_pointwise_forward_n(Index n, Index H, const Scalar* gx, const Scalar* gh,
                                           const Scalar* b_ih, const Scalar* b_hh,
                                           const Scalar* h_prev, Scalar* h_next, Scalar* y,
                                           Scalar* gates) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  for_packets<Scalar>(n, [&](auto ld, auto st) {
    P v = ld(gx + 2 * H);
    if (b_ih) v = ei::padd(v, ld(b_ih + 2 * H));
    v = ei::padd(v, ld(gh + 2 * H));
    if (b_hh) v = ei::padd(v, ld(b_hh + 2 * H));
    const P nn = ptanh(v);
    const P h = gru_update(ld(gates + H), nn, ld(h_prev));
    st(gates + 2 * H, nn);
    st(h_next, h);
    if (y) st(y, h);
  });
}

// Backward, first pass, both formulas. In: dh = dh_in (+ dy), the cached gates row (r, z, n, q)
// and h_prev. Out: dg (r, z, n pre-activation gradients at + g*H, see below), dh_prev's direct
// term dh*z, and with `dgx` (reset_after) the input-side gradients.
// Derivation, from h = (1 - z)*n + z*h_prev:
//   dn_pre = dh (1 - z)(1 - n²)      dz_pre = dh (h_prev - n) z(1 - z)      dh_prev += dh z
// reset_after (n = tanh(x_n + r*q), q = W_hn h + b_hn): dr_pre = dn_pre q r(1 - r); the
//   recurrent side of the n block is dq = dn_pre r, the input side dn_pre: dg gets (dr_pre,
//   dz_pre, dn_pre r), dgx gets (dr_pre, dz_pre, dn_pre).
// reset_before: r's gradient needs d(r*h) = dn_pre W_hn first (the second pass): dg gets dz_pre
//   and dn_pre now.
template <typename Scalar>
inline void gru_pointwise_backward(Index n, Index H, const Scalar* dh_in, const Scalar* dy,
                                   const Scalar* gates, const Scalar* h_prev, Scalar* dg,
                                   Scalar* dh_prev, Scalar* dgx) {
  namespace ei = Eigen::internal;
  using Pk = Packet<Scalar>;
  for_packets<Scalar>(n, [&](auto ld, auto st) {
    const Pk one = ei::pset1<Pk>(Scalar(1));
    Pk dh = ld(dh_in);
    if (dy) dh = ei::padd(dh, ld(dy));
    const Pk z = ld(gates + H), nn = ld(gates + 2 * H);
    const Pk one_z = ei::psub(one, z);
    const Pk dn_pre = ei::pmul(ei::pmul(dh, one_z), ei::psub(one, ei::pmul(nn, nn)));
    const Pk dz_pre = ei::pmul(ei::pmul(ei::pmul(dh, ei::psub(ld(h_prev), nn)), z), one_z);
    st(dg + H, dz_pre);
    st(dh_prev, ei::pmul(dh, z));
    if (dgx) {
      const Pk r = ld(gates);
      const Pk dr_pre = ei::pmul(ei::pmul(ei::pmul(dn_pre, ld(gates + 3 * H)), r),
                                 ei::psub(one, r));
      st(dg, dr_pre);
      st(dg + 2 * H, ei::pmul(dn_pre, r));
      st(dgx, dr_pre);
      st(dgx + H, dz_pre);
      st(dgx + 2 * H, dn_pre);
    } else {
      st(dg + 2 * H, dn_pre);
    }
  });
}

// Backward, reset_before, second pass. In: dq = d(r*h) = dn_pre W_hn (the product between the
// passes), r (gates row), h_prev. Derivation, from q = r*h_prev:
//   dr_pre = dq h_prev r(1 - r)      dh_prev += dq r
// dgx, if given (reverse: a buffer of its own), gets a copy of the row's dr, dz, dn.
template <typename Scalar>
inline void gru_before_pointwise_backward_r(Index n, Index H, const Scalar* dq,
                                            const Scalar* gates, const Scalar* h_prev,
                                            Scalar* dg, Scalar* dh_prev, Scalar* dgx) {
  namespace ei = Eigen::internal;
  using Pk = Packet<Scalar>;
  for_packets<Scalar>(n, [&](auto ld, auto st) {
    const Pk one = ei::pset1<Pk>(Scalar(1));
    const Pk rr = ld(gates), d = ld(dq);
    const Pk dr_pre = ei::pmul(ei::pmul(ei::pmul(d, ld(h_prev)), rr), ei::psub(one, rr));
    st(dg, dr_pre);
    st(dh_prev, ei::padd(ld(dh_prev), ei::pmul(d, rr)));
    if (dgx) {
      st(dgx, dr_pre);
      st(dgx + H, ld(dg + H));
      st(dgx + 2 * H, ld(dg + 2 * H));
    }
  });
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
