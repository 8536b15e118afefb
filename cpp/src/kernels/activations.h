// The math seam's bottom layer: vector activations and the packet loop that every pointwise
// pass of every cell runs on (kernels/*_pointwise.h). Nothing here knows a cell.
#pragma once

#include "kernel.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// Activations, written on Eigen's packet primitives (its exp is accurate to about 1 ulp in float
// and double). No fast-math anywhere. NaN inputs give NaN.
//
// Every element takes the packet path, the last partial packet of a run through a zero-padded
// buffer: a scalar exp could differ from the packet exp in the last bit, and the value of an
// element would then depend on its address or position.

template <typename Scalar>
using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
template <typename Scalar>
constexpr Index kPacketSize = Eigen::internal::unpacket_traits<Packet<Scalar>>::size;

// σ(x) = 1 / (1 + exp(-x)) of one packet. A NaN flows through Eigen's exp (its clamps keep the
// NaN operand) and the quotient, so it needs no select of its own.
template <typename P>
inline P psigmoid(const P& x) {
  namespace ei = Eigen::internal;
  using Scalar = typename ei::unpacket_traits<P>::type;
  const P one = ei::pset1<P>(Scalar(1));
  return ei::pdiv(one, ei::padd(one, ei::pexp(ei::pnegate(x))));
}

// tanh(x) of one packet.
// float: Eigen's ptanh, a minimax rational function (odd numerator of degree 13, even
// denominator of degree 6) on |x| clamped to 7.99 (7.91 without FMA), where it rounds to 1;
// |x| < 0.0004 returns x. Checked here over every float in [0, 10) against double tanh: largest
// relative error 2.9e-7 (4.9 ulp; 4.1e-7 in the SSE2 copy), against 4.0e-7 (6.3 ulp) for the
// exp-based quotient below, at 2-3x the speed (AVX-512: 0.29 vs 0.55 ns per value). NaN stays
// NaN, ±inf gives ±1, -0 stays -0.
// double: sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) for |x| >= 1/8 (the sign bit of x copied
// onto the quotient); below, where that quotient loses relative accuracy, the Taylor series of
// tanh to x¹³ (truncation error < 2 ulp). NaN flows through the exp like in psigmoid.
template <typename P>
inline P ptanh(const P& x) {
  namespace ei = Eigen::internal;
  using Scalar = typename ei::unpacket_traits<P>::type;
  if constexpr (sizeof(Scalar) == 4) {
    return ei::ptanh(x);
  } else {
    const P one = ei::pset1<P>(Scalar(1));
    const P ax = ei::pabs(x);
    const P e = ei::pexp(ei::pmul(ei::pset1<P>(Scalar(-2)), ax));
    const P q = ei::pdiv(ei::psub(one, e), ei::padd(one, e));
    const P big = ei::pxor(q, ei::pandnot(x, ax));  // x & ~|x| is x's sign bit
    // tanh x = x (1 - x²/3 + 2x⁴/15 - 17x⁶/315 + 62x⁸/2835 - 1382x¹⁰/155925 + 21844x¹²/6081075)
    const P x2 = ei::pmul(x, x);
    P p = ei::pset1<P>(Scalar(21844.0 / 6081075));
    for (double c : {-1382.0 / 155925, 62.0 / 2835, -17.0 / 315, 2.0 / 15, -1.0 / 3, 1.0})
      p = ei::pmadd(p, x2, ei::pset1<P>(Scalar(c)));
    return ei::pselect(ei::pcmp_lt(x2, ei::pset1<P>(Scalar(1.0 / 64))), ei::pmul(x, p), big);
  }
}

// Runs body(ld, st) once per packet over the units [0, n) of a run: inside it, ld(p) loads the
// packet of array p at the current position and st(p, v) stores v there. The last partial packet
// loads from and stores through zero-padded buffers (its padding lanes are computed and dropped),
// so every element goes through the same packet arithmetic whatever its position or address.
// Lanes never mix, so a lane's result depends only on its own inputs.
template <typename Scalar, typename F>
inline void for_packets(Index n, F&& body) {
  namespace ei = Eigen::internal;
  using P = Packet<Scalar>;
  constexpr Index W = kPacketSize<Scalar>;
  Index j = 0;
  for (; j + W <= n; j += W)
    body([j](const Scalar* p) { return ei::ploadu<P>(p + j); },
         [j](Scalar* p, const P& v) { ei::pstoreu(p + j, v); });
  if (j < n) {
    const Index r = n - j;
    body(
        [j, r](const Scalar* p) {
          alignas(64) Scalar buf[W];
          std::fill(buf, buf + W, Scalar(0));
          std::copy(p + j, p + j + r, buf);
          return ei::pload<P>(buf);
        },
        [j, r](Scalar* p, const P& v) {
          alignas(64) Scalar buf[W];
          ei::pstore(buf, v);
          std::copy(buf, buf + r, p + j);
        });
  }
}

// out = σ(in) and out = tanh(in) over a run; in and out may alias.

// The pre-activation of gate g of a block: ((gx + gh) + b_ih) + b_hh, a bias skipped when null.
// `gx`, `gh` and the biases point at the first gate's units of the block, gate g at + g*H.
template <typename Scalar, typename Ld>
inline Packet<Scalar> gate_pre(Ld& ld, Index g, Index H, const Scalar* gx, const Scalar* gh,
                               const Scalar* b_ih, const Scalar* b_hh) {
  namespace ei = Eigen::internal;
  Packet<Scalar> v = ei::padd(ld(gx + g * H), ld(gh + g * H));
  if (b_ih) v = ei::padd(v, ld(b_ih + g * H));
  if (b_hh) v = ei::padd(v, ld(b_hh + g * H));
  return v;
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
