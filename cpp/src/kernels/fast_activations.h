// The activations of the fast batch-1 step (StreamOptions::fast, kernels/fused_step.cc): float
// tanh and sigmoid with fewer operations and a shorter dependency chain than the bitwise ones
// (activations.h), within the documented tolerance (stream.h: 8 u per activation, u = 2^-24).
// Float without FMA and double: the bitwise activations.
//
// fast_tanh: Eigen's rational function (activations.h: odd numerator of degree 13, even
// denominator of degree 6, the same coefficients and clamp) evaluated with a shorter dependency
// chain, which bounds a small step (two activations in a row per LSTM step): x clamped to
// ±7.9988 (AVX-512: one vrangeps) and x² = min(a², 7.9988²) (not waiting for the clamp); the
// numerator x (lo + x⁶ hi), lo of degree 2 in x² by Horner, hi of degree 3 as
// (h0 x² + h1) x⁴ + (h2 x² + h3); the denominator as two halves joined by x⁴; the quotient, in
// the AVX-512 copy, as n r (2 - q r) from the 14-bit reciprocal estimate r (one Newton step),
// else a division. No small-argument branch: below |a| = 0.0004 (where Eigen returns a) the
// rational function is a (1 - 1.3e-7), within 5e-11 of a (and -0 may come out +0).
// fast_sigmoid: 1/2 + tanh(x/2)/2 through the same evaluation, the halvings folded into the
// coefficients (powers of two: every intermediate is fast_tanh(x/2)'s scaled by a power of two,
// so the same roundings), no multiplication before and one addition after.
// Checked over every float in [-30, 30] (FTZ/DAZ on) against double tanh and 1/(1 + exp(-x)):
// tanh's absolute error <= 5.71 u (u = 2^-24), at most 7 u from the bitwise step's detail::ptanh;
// the sigmoid's <= 3.20 u, at most 4 u from detail::psigmoid: within the 8 u per activation of
// stream.h. NaN stays NaN; ±inf as ±7.9988: ±(1 - 2^-23) (tanh), 1 - 2^-24 and 2^-24 (sigmoid).
#pragma once

#include "kernels/activations.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {
namespace detail {

// kSig false: tanh(a); true: 1/2 + tanh(a/2)/2 (see above). Float, FMA copies only.
template <bool kSig, typename P>
inline P fast_tanh_eval(const P& a) {
  namespace ei = Eigen::internal;
  // x = a/2 (sigmoid) or a; the polynomials in X = a, X2 = a²: a coefficient of x^2j scaled by
  // 2^-2j (sigmoid), the numerator's by a further 1/4 (X = 2x, and the result halved).
  constexpr float c = 7.99881172180175781f * (kSig ? 2.0f : 1.0f);
  auto k = [](float v, int e) { return ei::pset1<P>(kSig ? v / float(1 << e) : v); };
#if defined(__AVX512DQ__)
  const P x = _mm512_range_ps(a, ei::pset1<P>(c), 0x2);  // min |.|, sign of a: clamp to ±c
#else
  const P x = ei::pmax(ei::pmin(a, ei::pset1<P>(c)), ei::pset1<P>(-c));
#endif
  // From a, not x: a NaN stays NaN here (vrangeps makes it ±c), and so in the quotient.
  const P x2 = ei::pmin(ei::pmul(a, a), ei::pset1<P>(c * c));
  const P x4 = ei::pmul(x2, x2);
  const P x6 = ei::pmul(x4, x2);
  const P lo = ei::pmadd(ei::pmadd(k(1.48572235717979e-05f, 6), x2, k(6.37261928875436e-04f, 4)),
                         x2, k(4.89352455891786e-03f, 2));
  const P hi = ei::pmadd(x4, ei::pmadd(k(-2.76076847742355e-16f, 14), x2, k(2.00018790482477e-13f, 12)),
                         ei::pmadd(k(-8.60467152213735e-11f, 10), x2, k(5.12229709037114e-08f, 8)));
  const P p = ei::pmadd(x6, hi, lo);
  const P q = ei::pmadd(x4,
                        ei::pmadd(x2, k(1.19825839466702e-06f, 6), k(1.18534705686654e-04f, 4)),
                        ei::pmadd(x2, k(2.26843463243900e-03f, 2), ei::pset1<P>(4.89352518554385e-03f)));
  const P num = ei::pmul(x, p);
#if defined(__AVX512F__)
  const P r = _mm512_rcp14_ps(q);
  const P e = _mm512_fnmadd_ps(q, r, ei::pset1<P>(1.0f));
  const P y = ei::pmul(num, r);
  const P t = ei::pmadd(y, e, y);
#else
  const P t = ei::pdiv(num, q);
#endif
  if constexpr (kSig) return ei::padd(t, ei::pset1<P>(0.5f));
  return t;
}

template <typename P>
inline P fast_tanh(const P& a) {
#if defined(__FMA__) || defined(__AVX512F__)
  using Scalar = typename Eigen::internal::unpacket_traits<P>::type;
  if constexpr (sizeof(Scalar) == 4) return fast_tanh_eval<false>(a);
#endif
  return ptanh(a);
}

template <typename P>
inline P fast_sigmoid(const P& a) {
#if defined(__FMA__) || defined(__AVX512F__)
  using Scalar = typename Eigen::internal::unpacket_traits<P>::type;
  if constexpr (sizeof(Scalar) == 4) return fast_tanh_eval<true>(a);
#endif
  return psigmoid(a);
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
