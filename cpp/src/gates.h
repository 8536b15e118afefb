// The element-wise gate passes of one time step, fused: for one block of units of one row, one
// packet loop loads the input and recurrent products and the biases, applies the activations,
// updates the state and stores it (with the output and, in training, the activated gates) while
// the values are in registers. The batch kernels (lstm.cc, gru.cc, rnn.cc) and a Stream's step
// (step.cc) both call these, so a Stream equals the batch forward bitwise, and inference equals
// training (the gate stores are the only difference).
//
// Arrays of a gate block: `gx`, `gh`, the biases and `gates` point at the first gate's units of
// the block, gate g at + g*H. Null biases are skipped; null outputs are not written.
#pragma once

#include "kernel.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// Sum ((gx + gh) + b_ih) + b_hh of gate g, a bias skipped when null.
template <typename Scalar, typename Ld>
inline Packet<Scalar> gate_pre(Ld& ld, Index g, Index H, const Scalar* gx, const Scalar* gh,
                               const Scalar* b_ih, const Scalar* b_hh) {
  namespace ei = Eigen::internal;
  Packet<Scalar> v = ei::padd(ld(gx + g * H), ld(gh + g * H));
  if (b_ih) v = ei::padd(v, ld(b_ih + g * H));
  if (b_hh) v = ei::padd(v, ld(b_hh + g * H));
  return v;
}

// LSTM (gates i, f, g, o): c = f*c_prev + i*g, out = o*tanh(c) (h, or m with projection), y a
// copy of out. w_peep: p_i of the block (p_f at + H, p_o at + 2H) or null; i and f see c_prev
// through it, o sees c. c_prev and c_next may alias (a Stream updates c in place).
template <typename Scalar>
inline void lstm_gates_forward(Index n, Index H, const Scalar* gx, const Scalar* gh,
                               const Scalar* b_ih, const Scalar* b_hh, const Scalar* w_peep,
                               const Scalar* c_prev, Scalar* c_next, Scalar* out, Scalar* y,
                               Scalar* gates) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
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
    const P c = ei::pmadd(f, cp, ei::pmul(i, g));
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

// h = n + z*(h_prev - n), the GRU's (1 - z)*n + z*h_prev with one multiply-add.
template <typename P>
inline P gru_update(const P& z, const P& n, const P& hp) {
  namespace ei = Eigen::internal;
  return ei::pmadd(z, ei::psub(hp, n), n);
}

// GRU reset_after (gates r, z, n; gh holds all three products): q = gh_n + b_hn,
// n = tanh(gx_n + b_in + r*q). `gates`: r, z, n, q, or null. h_prev and h_next may alias.
template <typename Scalar>
inline void gru_after_gates_forward(Index n, Index H, const Scalar* gx, const Scalar* gh,
                                    const Scalar* b_ih, const Scalar* b_hh, const Scalar* h_prev,
                                    Scalar* h_next, Scalar* y, Scalar* gates) {
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

// GRU reset_before, first pass (gh holds the r and z products): r, z and q = r*h_prev into
// `gates` (r, z, -, q); q is the next product's input.
template <typename Scalar>
inline void gru_before_gates_rz(Index n, Index H, const Scalar* gx, const Scalar* gh,
                                const Scalar* b_ih, const Scalar* b_hh, const Scalar* h_prev,
                                Scalar* gates) {
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

// GRU reset_before, second pass (gh_n = (r*h) w_hnᵀ now): n = tanh(gx_n + b_in + gh_n + b_hn)
// (stored into gates + 2H when `gates` is given; z is read from gates + H), then h.
template <typename Scalar>
inline void gru_before_gates_n(Index n, Index H, const Scalar* gx, const Scalar* gh,
                               const Scalar* b_ih, const Scalar* b_hh, const Scalar* h_prev,
                               Scalar* h_next, Scalar* y, Scalar* gates) {
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

// Elman RNN: h = act(gx + gh + b_ih + b_hh), tanh or relu (relu keeps NaN and -0).
template <typename Scalar>
inline void rnn_gates_forward(Index n, bool tanh_act, const Scalar* gx, const Scalar* gh,
                              const Scalar* b_ih, const Scalar* b_hh, Scalar* h_next, Scalar* y) {
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

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
