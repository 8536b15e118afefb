// The pointwise math of the regularised / normalised LSTM (fusedrnn/lstm_ln.h has the formula),
// forward and backward side by side, for one row (one sequence) of one step. Layer norm needs
// statistics over a whole row, so the work unit is a row, not a block of units as in
// lstm_pointwise.h: the forward makes two passes over the H units (the gates and c̃; then n,
// h and the zoneout blend), the backward two as well (the second only with layer norm).
#pragma once

#include <cmath>

#include "activations.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// mean and 1/sqrt(var + eps) of v[0..n) (biased variance), two passes: whole packets summed
// lane-wise in Scalar (in order, unaligned loads: the result does not depend on the address),
// the lanes and the tail then added in double.
template <typename Scalar>
inline void ln_stats(const Scalar* v, Index n, Scalar eps, Scalar& mean, Scalar& inv) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  constexpr Index W = kPacketSize<Scalar>;
  const Index nw = n / W * W;
  alignas(64) Scalar lanes[W];
  P s = ei::pset1<P>(Scalar(0));
  for (Index j = 0; j < nw; j += W) s = ei::padd(s, ei::ploadu<P>(v + j));
  ei::pstore(lanes, s);
  double sum = 0;
  for (Index l = 0; l < W; ++l) sum += double(lanes[l]);
  for (Index j = nw; j < n; ++j) sum += double(v[j]);
  const double m = sum / double(n);
  const P pm = ei::pset1<P>(Scalar(m));
  P q = ei::pset1<P>(Scalar(0));
  for (Index j = 0; j < nw; j += W) {
    const P e = ei::psub(ei::ploadu<P>(v + j), pm);
    q = ei::padd(q, ei::pmul(e, e));
  }
  ei::pstore(lanes, q);
  double sq = 0;
  for (Index l = 0; l < W; ++l) sq += double(lanes[l]);
  for (Index j = nw; j < n; ++j) {
    const double e = double(v[j]) - double(Scalar(m));
    sq += e * e;
  }
  mean = Scalar(m);
  inv = Scalar(1.0 / std::sqrt(sq / double(n) + double(eps)));
}

// The arrays of one row at one step. Gate arrays point at gate i's units, gate g at + g*H.
template <typename Scalar>
struct LnRow {
  Index H = 0;
  bool ln = false, carry_normalised = false;
  // forward inputs
  const Scalar *gx = nullptr, *gh = nullptr;          // raw products [4H]
  const Scalar *b_ih = nullptr, *b_hh = nullptr;      // [4H] or null
  const Scalar *g_ih = nullptr, *be_ih = nullptr;     // LN gain / bias of the input product
  const Scalar *g_hh = nullptr, *be_hh = nullptr;     // ... of the recurrent product
  const Scalar *g_c = nullptr, *be_c = nullptr;       // ... of the cell [H]
  Scalar mx = 0, ix = 1, mh = 0, ih = 1, mc = 0, ic = 1;  // statistics (mean, 1/std)
  const Scalar *c_prev = nullptr, *h_prev = nullptr;  // [H]
  const Scalar *zh = nullptr, *zc = nullptr;          // zoneout mask rows [H] or null
  Scalar pzh = 0, pzc = 0;                            // the probabilities where no mask
  // forward outputs
  Scalar* gates = nullptr;                 // activated i, f, g, o [4H] (always written)
  Scalar *xhat = nullptr, *hhat = nullptr;  // normalised products [4H] (training, LN)
  Scalar* chat = nullptr;                  // normalised c̃ [H] (training, LN)
  Scalar* nn = nullptr;                    // n [H] (training)
  Scalar *c_next = nullptr, *h_next = nullptr, *y = nullptr;
};

// Forward pass 1: a, the gates, and c̃ = f c_prev + i g into c_next (a temporary there until
// pass 2). a_g = LN(gx_g) + LN(gh_g) + b_ih_g + b_hh_g with LN(v) = γ (v − mean) inv + β.
template <typename Scalar>
inline void ln_lstm_forward_gates(const LnRow<Scalar>& r) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  const Index H = r.H;
  const P mx = ei::pset1<P>(r.mx), ix = ei::pset1<P>(r.ix), mh = ei::pset1<P>(r.mh),
          ih = ei::pset1<P>(r.ih);
  for_packets<Scalar>(H, [&](auto ld, auto st) {
    P a[4];
    for (Index g = 0; g < 4; ++g) {
      P vx = ld(r.gx + g * H), vh = ld(r.gh + g * H);
      if (r.ln) {
        vx = ei::pmul(ei::psub(vx, mx), ix);
        vh = ei::pmul(ei::psub(vh, mh), ih);
        if (r.xhat) st(r.xhat + g * H, vx);
        if (r.hhat) st(r.hhat + g * H, vh);
        vx = ei::pmul(vx, ld(r.g_ih + g * H));
        if (r.be_ih) vx = ei::padd(vx, ld(r.be_ih + g * H));
        vh = ei::pmul(vh, ld(r.g_hh + g * H));
        if (r.be_hh) vh = ei::padd(vh, ld(r.be_hh + g * H));
      }
      P v = ei::padd(vx, vh);
      if (r.b_ih) v = ei::padd(v, ld(r.b_ih + g * H));
      if (r.b_hh) v = ei::padd(v, ld(r.b_hh + g * H));
      a[g] = v;
    }
    const P i = psigmoid(a[0]), f = psigmoid(a[1]), gg = ptanh(a[2]), o = psigmoid(a[3]);
    st(r.gates, i);
    st(r.gates + H, f);
    st(r.gates + 2 * H, gg);
    st(r.gates + 3 * H, o);
    st(r.c_next, ei::pmadd(f, ld(r.c_prev), ei::pmul(i, gg)));
  });
}

// Forward pass 2 (r.mc, r.ic: the statistics of c̃ with layer norm): n, h̃ = o tanh(n), the
// carried cell c' (c̃ or n), and the zoneout blends z prev + (1 − z) new.
template <typename Scalar>
inline void ln_lstm_forward_state(const LnRow<Scalar>& r) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  const Index H = r.H;
  const P mc = ei::pset1<P>(r.mc), ic = ei::pset1<P>(r.ic), one = ei::pset1<P>(Scalar(1));
  const P pzh = ei::pset1<P>(r.pzh), pzc = ei::pset1<P>(r.pzc);
  const bool zoh = r.zh || r.pzh > 0, zoc = r.zc || r.pzc > 0;
  for_packets<Scalar>(H, [&](auto ld, auto st) {
    const P ct = ld(r.c_next);
    P n = ct;
    if (r.ln) {
      const P ch = ei::pmul(ei::psub(ct, mc), ic);
      if (r.chat) st(r.chat, ch);
      n = ei::pmul(ch, ld(r.g_c));
      if (r.be_c) n = ei::padd(n, ld(r.be_c));
    }
    if (r.nn) st(r.nn, n);
    P h = ei::pmul(ld(r.gates + 3 * H), ptanh(n));
    P c = r.carry_normalised ? n : ct;
    if (zoc) {
      const P z = r.zc ? ld(r.zc) : pzc;
      c = ei::padd(ei::pmul(z, ld(r.c_prev)), ei::pmul(ei::psub(one, z), c));
    }
    if (zoh) {
      const P z = r.zh ? ld(r.zh) : pzh;
      h = ei::padd(ei::pmul(z, ld(r.h_prev)), ei::pmul(ei::psub(one, z), h));
    }
    st(r.c_next, c);
    st(r.h_next, h);
    if (r.y) st(r.y, h);
  });
}

// The arrays of one row at one step of the backward.
template <typename Scalar>
struct LnRowBack {
  Index H = 0;
  bool ln = false, carry_normalised = false;
  const Scalar *dhz = nullptr, *dhg = nullptr, *rmask = nullptr, *dy = nullptr;  // [H]
  const Scalar* dc_in = nullptr;                                                 // [H]
  const Scalar *gates = nullptr, *c_prev = nullptr, *nn = nullptr, *chat = nullptr;
  const Scalar* g_c = nullptr;
  Scalar ic = 1;
  const Scalar *zh = nullptr, *zc = nullptr;
  Scalar pzh = 0, pzc = 0;
  Scalar* da = nullptr;      // out: pre-activation gradients [4H]
  Scalar* dnl = nullptr;     // out (LN): the gradient of n [H]
  Scalar* dhz_out = nullptr; // out: z_h dh, the zoneout part of dh_{t-1} [H]
  Scalar* dc_out = nullptr;  // out: dc_{t-1} [H]
};

// Backward, derivation. dh = dhz + r∘dhg + dy is the gradient of h_t (dhg = the previous
// backward step's recurrent product dgh W_hh, r the recurrent mask); dc that of the carried c_t.
//   zoneout: dh̃ = (1 − z_h) dh, its dh_{t−1} part z_h dh; dc' = (1 − z_c) dc, dc_{t−1} part z_c dc
//   h̃ = o tanh(n):  do_pre = dh̃ tanh(n) o (1 − o);   dn = dh̃ o (1 − tanh² n)  (+ dc' with tfa)
//   n = LN(c̃): dc̃ = ic (γ dn − mean(γ dn) − ĉ mean(γ dn ĉ))   (+ dc' with haste / none)
//   c̃ = f c_prev + i g: di_pre = dc̃ g i(1−i), df_pre = dc̃ c_prev f(1−f), dg_pre = dc̃ i(1−g²),
//   dc_{t−1} = dc̃ f + z_c dc.
// Without layer norm one pass does it all; with it, pass 1 stores dn and returns its two means
// (m1 = mean γ dn, m2 = mean γ dn ĉ), pass 2 the rest.
template <typename Scalar>
inline void ln_lstm_backward_pass1(const LnRowBack<Scalar>& r, Scalar& m1, Scalar& m2) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  const Index H = r.H;
  const P one = ei::pset1<P>(Scalar(1)), pzh = ei::pset1<P>(r.pzh), pzc = ei::pset1<P>(r.pzc);
  const bool zoh = r.zh || r.pzh > 0, zoc = r.zc || r.pzc > 0;
  P s1 = ei::pzero(one), s2 = ei::pzero(one);
  for_packets<Scalar>(H, [&](auto ld, auto st) {
    P dhg = ld(r.dhg);
    if (r.rmask) dhg = ei::pmul(ld(r.rmask), dhg);
    P dh = ei::padd(ld(r.dhz), dhg);
    if (r.dy) dh = ei::padd(dh, ld(r.dy));
    if (zoh) {
      const P z = r.zh ? ld(r.zh) : pzh;
      st(r.dhz_out, ei::pmul(z, dh));
      dh = ei::pmul(ei::psub(one, z), dh);
    } else {
      st(r.dhz_out, ei::pzero(one));
    }
    const P dc = ld(r.dc_in);
    P dcand = dc, dcpz = ei::pzero(one);
    if (zoc) {
      const P z = r.zc ? ld(r.zc) : pzc;
      dcpz = ei::pmul(z, dc);
      dcand = ei::pmul(ei::psub(one, z), dc);
    }
    const P o = ld(r.gates + 3 * H), tn = ptanh(ld(r.nn));
    st(r.da + 3 * H, ei::pmul(ei::pmul(ei::pmul(dh, tn), o), ei::psub(one, o)));
    P dn = ei::pmul(ei::pmul(dh, o), ei::psub(one, ei::pmul(tn, tn)));
    if (r.carry_normalised) dn = ei::padd(dn, dcand);
    if (r.ln) {
      st(r.dnl, dn);
      const P gdn = ei::pmul(ld(r.g_c), dn);  // padding lanes: γ = 0 there
      s1 = ei::padd(s1, gdn);
      s2 = ei::padd(s2, ei::pmul(gdn, ld(r.chat)));
      return;
    }
    const P dct = r.carry_normalised ? dn : ei::padd(dn, dcand);
    const P i = ld(r.gates), f = ld(r.gates + H), g = ld(r.gates + 2 * H);
    st(r.da, ei::pmul(ei::pmul(ei::pmul(dct, g), i), ei::psub(one, i)));
    st(r.da + H, ei::pmul(ei::pmul(ei::pmul(dct, ld(r.c_prev)), f), ei::psub(one, f)));
    st(r.da + 2 * H, ei::pmul(ei::pmul(dct, i), ei::psub(one, ei::pmul(g, g))));
    st(r.dc_out, ei::padd(ei::pmul(dct, f), dcpz));
  });
  m1 = ei::predux(s1) / Scalar(H);
  m2 = ei::predux(s2) / Scalar(H);
}

template <typename Scalar>
inline void ln_lstm_backward_pass2(const LnRowBack<Scalar>& r, Scalar m1, Scalar m2) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  const Index H = r.H;
  const P one = ei::pset1<P>(Scalar(1)), pzc = ei::pset1<P>(r.pzc), ic = ei::pset1<P>(r.ic);
  const P pm1 = ei::pset1<P>(m1), pm2 = ei::pset1<P>(m2);
  const bool zoc = r.zc || r.pzc > 0;
  for_packets<Scalar>(H, [&](auto ld, auto st) {
    const P dc = ld(r.dc_in);
    P dcand = dc, dcpz = ei::pzero(one);
    if (zoc) {
      const P z = r.zc ? ld(r.zc) : pzc;
      dcpz = ei::pmul(z, dc);
      dcand = ei::pmul(ei::psub(one, z), dc);
    }
    P dct = ei::pmul(ic, ei::psub(ei::psub(ei::pmul(ld(r.g_c), ld(r.dnl)), pm1),
                                  ei::pmul(ld(r.chat), pm2)));
    if (!r.carry_normalised) dct = ei::padd(dct, dcand);
    const P i = ld(r.gates), f = ld(r.gates + H), g = ld(r.gates + 2 * H);
    st(r.da, ei::pmul(ei::pmul(ei::pmul(dct, g), i), ei::psub(one, i)));
    st(r.da + H, ei::pmul(ei::pmul(ei::pmul(dct, ld(r.c_prev)), f), ei::psub(one, f)));
    st(r.da + 2 * H, ei::pmul(ei::pmul(dct, i), ei::psub(one, ei::pmul(g, g))));
    st(r.dc_out, ei::padd(ei::pmul(dct, f), dcpz));
  });
}

// The backward of v ↦ γ (v − mean) inv + β over n units: dst = inv (γ da − mean(γ da)
// − v̂ mean(γ da v̂)), v̂ the cached normalised values.
template <typename Scalar>
inline void ln_backward_row(Index n, const Scalar* da, const Scalar* gamma, const Scalar* vhat,
                            Scalar inv, Scalar* dst) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  P s1 = ei::pset1<P>(Scalar(0)), s2 = s1;
  for_packets<Scalar>(n, [&](auto ld, auto) {
    const P gd = ei::pmul(ld(gamma), ld(da));
    s1 = ei::padd(s1, gd);
    s2 = ei::padd(s2, ei::pmul(gd, ld(vhat)));
  });
  const P m1 = ei::pset1<P>(ei::predux(s1) / Scalar(n)),
          m2 = ei::pset1<P>(ei::predux(s2) / Scalar(n)), pi = ei::pset1<P>(inv);
  for_packets<Scalar>(n, [&](auto ld, auto st) {
    const P gd = ei::pmul(ld(gamma), ld(da));
    st(dst, ei::pmul(pi, ei::psub(ei::psub(gd, m1), ei::pmul(ld(vhat), m2))));
  });
}

// ---------------------------------------------------------------------------------------------
// The GRU (reset_after; fusedrnn/lstm_ln.h has the formula): one pass forward, one backward.
// LnRow's fields serve it too: gx, gh [3H], the biases and gains [3H], h_prev, zh/pzh, gates
// (r, z, ñ and q = gh_n + b_hn: [4H]), xhat, hhat [3H], h_next, y. The statistics mx, ix,
// mh, ih as for the LSTM.
template <typename Scalar>
inline void ln_gru_forward_row(const LnRow<Scalar>& r) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  const Index H = r.H;
  const P mx = ei::pset1<P>(r.mx), ix = ei::pset1<P>(r.ix), mh = ei::pset1<P>(r.mh),
          ih = ei::pset1<P>(r.ih), one = ei::pset1<P>(Scalar(1)), pzh = ei::pset1<P>(r.pzh);
  const bool zoh = r.zh || r.pzh > 0;
  for_packets<Scalar>(H, [&](auto ld, auto st) {
    P ax[3], ah[3];
    for (Index g = 0; g < 3; ++g) {
      P vx = ld(r.gx + g * H), vh = ld(r.gh + g * H);
      if (r.ln) {
        vx = ei::pmul(ei::psub(vx, mx), ix);
        vh = ei::pmul(ei::psub(vh, mh), ih);
        if (r.xhat) st(r.xhat + g * H, vx);
        if (r.hhat) st(r.hhat + g * H, vh);
        vx = ei::pmul(vx, ld(r.g_ih + g * H));
        if (r.be_ih) vx = ei::padd(vx, ld(r.be_ih + g * H));
        vh = ei::pmul(vh, ld(r.g_hh + g * H));
        if (r.be_hh) vh = ei::padd(vh, ld(r.be_hh + g * H));
      }
      if (r.b_ih) vx = ei::padd(vx, ld(r.b_ih + g * H));
      if (r.b_hh) vh = ei::padd(vh, ld(r.b_hh + g * H));
      ax[g] = vx;
      ah[g] = vh;
    }
    const P rr = psigmoid(ei::padd(ax[0], ah[0])), z = psigmoid(ei::padd(ax[1], ah[1]));
    const P nt = ptanh(ei::padd(ax[2], ei::pmul(rr, ah[2])));
    const P hp = ld(r.h_prev);
    P h = ei::padd(ei::pmul(ei::psub(one, z), nt), ei::pmul(z, hp));
    if (zoh) {
      const P zz = r.zh ? ld(r.zh) : pzh;
      h = ei::padd(ei::pmul(zz, hp), ei::pmul(ei::psub(one, zz), h));
    }
    st(r.gates, rr);
    st(r.gates + H, z);
    st(r.gates + 2 * H, nt);
    st(r.gates + 3 * H, ah[2]);
    st(r.h_next, h);
    if (r.y) st(r.y, h);
  });
}

// Backward of one GRU row. dh = dhz + r_mask∘dhg + dy; zoneout: dh̃ = (1 − z_h) dh;
//   dñ_pre = dh̃ (1 − z)(1 − ñ²)  (the input product's n block; dq = r dñ_pre the recurrent's)
//   dz_pre = dh̃ (h − ñ) z (1 − z);  dr_pre = dñ_pre q r (1 − r)
//   the non-product part of dh_{t−1}: z_h dh + z dh̃.
// dax [3H]: the input side's pre-activation gradients (r, z, n); dah [3H]: the recurrent side's.
template <typename Scalar>
inline void ln_gru_backward_row(const LnRowBack<Scalar>& r, const Scalar* h_prev, Scalar* dax,
                                Scalar* dah) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  const Index H = r.H;
  const P one = ei::pset1<P>(Scalar(1)), pzh = ei::pset1<P>(r.pzh);
  const bool zoh = r.zh || r.pzh > 0;
  for_packets<Scalar>(H, [&](auto ld, auto st) {
    P dhg = ld(r.dhg);
    if (r.rmask) dhg = ei::pmul(ld(r.rmask), dhg);
    P dh = ei::padd(ld(r.dhz), dhg);
    if (r.dy) dh = ei::padd(dh, ld(r.dy));
    P carry = ei::pzero(one);
    if (zoh) {
      const P zz = r.zh ? ld(r.zh) : pzh;
      carry = ei::pmul(zz, dh);
      dh = ei::pmul(ei::psub(one, zz), dh);
    }
    const P rr = ld(r.gates), z = ld(r.gates + H), nt = ld(r.gates + 2 * H),
            q = ld(r.gates + 3 * H);
    const P dn = ei::pmul(ei::pmul(dh, ei::psub(one, z)), ei::psub(one, ei::pmul(nt, nt)));
    const P dz = ei::pmul(ei::pmul(ei::pmul(dh, ei::psub(ld(h_prev), nt)), z), ei::psub(one, z));
    const P dr = ei::pmul(ei::pmul(ei::pmul(dn, q), rr), ei::psub(one, rr));
    st(dax, dr);
    st(dax + H, dz);
    st(dax + 2 * H, dn);
    st(dah, dr);
    st(dah + H, dz);
    st(dah + 2 * H, ei::pmul(dn, rr));
    st(r.dhz_out, ei::padd(carry, ei::pmul(z, dh)));
  });
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
