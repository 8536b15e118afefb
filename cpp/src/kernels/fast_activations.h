// The activations of the fast batch-1 step (StreamOptions::fast, kernels/fused_step.cc): float
// tanh and sigmoid with fewer operations or a shorter dependency chain than the bitwise ones
// (activations.h), within the documented tolerance (stream.h: 8 u per activation, u = 2^-24).
// Two kinds; fused_step.cc picks one per layer (an LSTM or GRU layer of one block of units, an
// Elman layer of up to two: short chain; wider: few operations). Float without FMA and double:
// the bitwise activations.
//
// Short chain (fast_tanh, fast_sigmoid; FMA copies):
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
//
// Few operations (fast_few; AVX-512 float, elsewhere the short-chain ones): from e = 2^t
// (fast_exp2_scaled): sigmoid = 1 / (1 + e), t = -a log2 e; tanh = (1 - e) / (1 + e),
// t = -2a log2 e; one rounding to an integer, a polynomial of degree 5 by Horner, vscalefps and
// one division: 13-14 vector operations, 6 of them multiplications or multiply-adds, against
// 19-20 and 16 (one polynomial instead of the rational function's two, and a division, which
// Zen 4 runs beside the multiply-adds, instead of a Newton step), but a chain about 30% longer.
// Zen 4, one core, independent values (a probe outside the repository): 13.3 (sigmoid) and
// 16.0 (tanh) cycles a vector against 18.3 and 17.8; latency 50 against 37-39 cycles. Checked
// over every float in [-30, 30] (FTZ/DAZ on): the sigmoid's absolute error <= 1.76 u, at most
// 2 u from detail::psigmoid; tanh's <= 2.30 u, at most 5 u from detail::ptanh. tanh(0) = 0,
// sigmoid(0) = 1/2; NaN stays NaN; ±inf as ±87 (sigmoid: 1 and 1.6e-38) and ±40 (tanh: ±1);
// tiny |a| (< 2^-26) give tanh 0.
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

#if defined(__AVX512F__)
// AVX-512 float: from 2^t instead of a rational function (see the top of the file).
// e = 2^t, t = s a, |a| <= amax: n = t rounded to an integer (vrndscaleps), f = t - n in
// [-1/2, 1/2] (exact), 2^f = 1 + f q(f), q of degree 4 by Horner (relative error <= 1.8 u over
// [-1/2, 1/2], the coefficients a minimax fit with 2^0 = 1 exactly), scaled by 2^n (vscalefps).
// The clamp (min, then max: a NaN passes both) keeps 2^t finite (at the low end it may be
// subnormal, or 0 with FTZ, where it only meets 1 + e); a NaN stays NaN.
inline __m512 fast_exp2_scaled(__m512 a, float s, float amax) {
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-amax), _mm512_min_ps(_mm512_set1_ps(amax), a));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(s));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 q =
      _mm512_fmadd_ps(f, _mm512_set1_ps(1.326472731e-03f), _mm512_set1_ps(9.671512991e-03f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(5.550733581e-02f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(2.402224243e-01f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(6.931470037e-01f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(q, n);
}
// 1 / (1 + 2^(-a log2 e)), |a| clamped to 87 (2^125.5 at most).
inline __m512 fast_sigmoid_exp(__m512 a) {
  const __m512 e = fast_exp2_scaled(a, -1.44269504088896341f, 87.0f);
  return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f)));
}
// (1 - e) / (1 + e), e = 2^(-2 a log2 e), |a| clamped to 40 (tanh(40) = 1 in float).
inline __m512 fast_tanh_exp(__m512 a) {
  const __m512 e = fast_exp2_scaled(a, -2.88539008177792682f, 40.0f);
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
}
#endif

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

// The same functions with fewer operations and a longer chain (kSig false: tanh, true: the
// sigmoid): the AVX-512 float copies from 2^t (fast_tanh_exp, fast_sigmoid_exp); elsewhere
// fast_tanh and fast_sigmoid.
template <bool kSig, typename P>
inline P fast_few(const P& a) {
#if defined(__AVX512F__)
  using Scalar = typename Eigen::internal::unpacket_traits<P>::type;
  if constexpr (sizeof(Scalar) == 4 && sizeof(P) == 64)
    return kSig ? fast_sigmoid_exp(a) : fast_tanh_exp(a);
#endif
  return kSig ? fast_sigmoid(a) : fast_tanh(a);
}

}  // namespace detail
}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
