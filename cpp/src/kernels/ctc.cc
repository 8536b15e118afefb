// CTC loss kernel (one instruction-set copy, namespace fusedrnn::FUSEDRNN_ISA_NS; isa/ctc_dispatch.cc
// checks the arguments and picks the copy): log-space forward-backward (alpha-beta) over the
// blank-extended targets, one sequence per OpenMP task, and the fused log-softmax of the logits
// variant. Formulas in fusedrnn/ctc.h.
//
// Rows of S' = 2L + 1 states are stored with two pads on each side (state s at index s + 2), so
// the predecessors (s, s-1, s-2) of the forward step and the successors (s, s+1, s+2) of the
// backward step are shifted views. Each step is a log-sum-exp of up to three terms per state,
// computed with one exp and one log per state: the row is exponentiated once relative to its
// maximum m, p = exp(x - m), and out = m + log(p_s + p_{s±1} + keep_s p_{s±2}). States whose
// terms all lie far below m (where p underflows) are recomputed exactly; see lse_step.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fusedrnn/ctc.h"
#include "isa/copy.inc"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

template <typename S>
void ctc_kernel(const CtcArgs<S>& a);
std::size_t ctc_workspace_elements(std::int64_t T, std::int64_t N, std::int64_t Lmax);

namespace {

template <typename S>
using Arr = Eigen::Array<S, Eigen::Dynamic, 1>;
template <typename S>
using Vec = Eigen::Map<Arr<S>>;
template <typename S>
using CVec = Eigen::Map<const Arr<S>>;

// exp(x) for x < kUnder underflows (to subnormals: slow and inexact; then to 0) and is taken as
// 0. kFast: a state whose largest term is within kFast of the row maximum gets every term that
// matters at S's precision from the shared exponentials (a term dropped as underflowing is
// below e^(kUnder - kFast + log 3) ~ e^-26 (float) / e^-57 (double) of the largest term).
template <typename S>
constexpr S kUnder = std::is_same_v<S, float> ? S(-87) : S(-708);
template <typename S>
constexpr S kFast = std::is_same_v<S, float> ? S(-60) : S(-650);

// exp, log and sums in Eigen's packet code, every element through the same instructions (no
// scalar head or tail: a partial packet goes through a padded local copy), sums in an order
// fixed by n: results do not depend on the data's addresses. (Eigen 3.4 does not vectorise
// select(), and peels unaligned heads of mapped arrays into scalar std::exp.)
namespace ei = Eigen::internal;
template <typename S>
using Pk = typename ei::packet_traits<S>::type;
template <typename S>
constexpr int kP = ei::unpacket_traits<Pk<S>>::size;

// exp(x), or 0 where x < kUnder (Eigen's exp clamps there instead of returning 0).
template <typename S>
inline Pk<S> pexp_or_zero(const Pk<S>& x) {
  return ei::pselect(ei::pcmp_lt(x, ei::pset1<Pk<S>>(kUnder<S>)), ei::pzero(x), ei::pexp(x));
}

// Applies f (packet -> packet) to x[0, n) into y[0, n) (y may alias x); a tail shorter than a
// packet is padded with `pad`.
template <typename S, typename F>
inline void packet_map(const S* x, S* y, std::int64_t n, S pad, F f) {
  std::int64_t i = 0;
  for (; i + kP<S> <= n; i += kP<S>) ei::pstoreu(y + i, f(ei::ploadu<Pk<S>>(x + i)));
  if (i < n) {
    alignas(64) S buf[kP<S>];
    std::fill(buf, buf + kP<S>, pad);
    std::copy(x + i, x + n, buf);
    ei::pstore(buf, f(ei::pload<Pk<S>>(buf)));
    std::copy(buf, buf + (n - i), y + i);
  }
}

// e[i] = exp(x[i] + shift), 0 where x[i] + shift < kUnder (x may hold -inf). e may alias x.
template <typename S>
void exp_shifted(const S* x, S shift, S* e, std::int64_t n) {
  const Pk<S> sh = ei::pset1<Pk<S>>(shift);
  packet_map(x, e, n, -std::numeric_limits<S>::infinity(),
             [&](const Pk<S>& v) { return pexp_or_zero<S>(ei::padd(v, sh)); });
}

// y[i] = log(y[i]) + shift (log 0 = -inf).
template <typename S>
void log_shifted(S* y, S shift, std::int64_t n) {
  const Pk<S> sh = ei::pset1<Pk<S>>(shift);
  packet_map(y, y, n, S(1), [&](const Pk<S>& v) { return ei::padd(ei::plog(v), sh); });
}

// sum of f(packet) over x[0, n): packet partial sums (the tail as one more packet, padded with
// pad), then their lanes, in that order. The one order of sum_fixed and sum_exp_shifted, so that
// a loss computed with its gradient (exp_shifted then sum_fixed) and without (sum_exp_shifted)
// is the same bits whatever n % kP (two copies of this loop had added the tail at different
// points: AVX2's 4-double packets gave the two losses a different last bit at K = 5).
template <typename S, typename F>
S packet_sum(const S* x, std::int64_t n, S pad, F f) {
  Pk<S> acc = ei::pset1<Pk<S>>(S(0));
  std::int64_t i = 0;
  for (; i + kP<S> <= n; i += kP<S>) acc = ei::padd(acc, f(ei::ploadu<Pk<S>>(x + i)));
  if (i < n) {
    alignas(64) S buf[kP<S>];
    std::fill(buf, buf + kP<S>, pad);
    std::copy(x + i, x + n, buf);
    acc = ei::padd(acc, f(ei::pload<Pk<S>>(buf)));
  }
  alignas(64) S lanes[kP<S>];
  ei::pstore(lanes, acc);
  S s = 0;
  for (int j = 0; j < kP<S>; ++j) s += lanes[j];
  return s;
}

// sum of x[0, n) in packet_sum's order.
template <typename S>
S sum_fixed(const S* x, std::int64_t n) {
  return packet_sum(x, n, S(0), [](const Pk<S>& v) { return v; });
}

// sum of exp(x[i] + shift) over [0, n) (terms below e^kUnder as 0), in packet_sum's order.
template <typename S>
S sum_exp_shifted(const S* x, S shift, std::int64_t n) {
  const Pk<S> sh = ei::pset1<Pk<S>>(shift);
  return packet_sum(x, n, -std::numeric_limits<S>::infinity(),
                    [&](const Pk<S>& v) { return pexp_or_zero<S>(ei::padd(v, sh)); });
}

// One recursion step: out[i] = lse(x[i], x[i+d], keep[i] ? x[i+2d] : -inf) (+ em[i]) for i in
// [0, n). Forward: d = -1 (x = alpha_{t-1}); backward: d = +1 (x = beta_t + em_t). x and p must
// be addressable at [i + d] and [i + 2d]; keep holds 0 or 1. (The sums are plain arithmetic:
// packet or scalar, the same roundings.)
template <typename S>
void lse_step(const S* x, const S* keep, const S* em, S* p, S* out, std::int64_t n, int d) {
  const S ninf = -std::numeric_limits<S>::infinity();
  const std::int64_t lo = std::min(0, 2 * d), hi = n + std::max(0, 2 * d);
  const S m = CVec<S>(x + lo, hi - lo).maxCoeff();
  if (m == ninf) {  // nothing reachable
    std::fill(out, out + n, ninf);
    return;
  }
  exp_shifted(x + lo, -m, p + lo, hi - lo);
  Vec<S> O(out, n);
  O = CVec<S>(p, n) + CVec<S>(p + d, n) + CVec<S>(keep, n) * CVec<S>(p + 2 * d, n);
  log_shifted(out, m, n);
  // Sums below e^kFast: every term is far below m and may have underflowed; redo them exactly.
  const S limit = m + kFast<S>;
  for (std::int64_t i = 0; i < n; ++i) {
    if (!(out[i] < limit)) continue;
    const S u = x[i], v = x[i + d], w = keep[i] != S(0) ? x[i + 2 * d] : ninf;
    const S ml = std::max(u, std::max(v, w));
    out[i] = ml == ninf ? ninf
                        : ml + std::log(std::exp(u - ml) + std::exp(v - ml) + std::exp(w - ml));
  }
  if (em) O += CVec<S>(em, n);
}

template <typename S>
S lse2(S a, S b) {
  const S m = std::max(a, b);
  if (m == -std::numeric_limits<S>::infinity()) return m;
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

// Row width for targets of length <= Lmax: 2 Lmax + 1 states and two pads on each side, rounded
// up to 16 elements (64 bytes of float, 128 of double) so that every row starts at the same
// alignment.
std::int64_t row_width(std::int64_t max_target_length) {
  return (2 * max_target_length + 5 + 15) / 16 * 16;
}

// Per-sequence workspace: T alpha rows and T emission rows of width W, the rows keep, g, beta,
// post and p, then T log-normalisers (rounded up to a row). ctc_dispatch.cc sizes the whole.
std::int64_t block_size(std::int64_t T, std::int64_t W) {
  return 2 * T * W + 5 * W + (T + W - 1) / W * W;
}

template <typename S>
void one_sequence(const CtcArgs<S>& a, std::int64_t n, const std::int64_t* labels, S* ws,
                  std::int64_t W) {
  const S ninf = -std::numeric_limits<S>::infinity();
  const S inf = std::numeric_limits<S>::infinity();
  const std::int64_t T = a.T, N = a.N, K = a.K, blank = a.blank;
  const std::int64_t Tn = a.input_lengths[n], L = a.target_lengths[n], Sp = 2 * L + 1;
  S* alpha = ws;                  // [T, W]
  S* ems = alpha + T * W;         // [T, W] log-probabilities of the states' labels per frame
  S* keep = ems + T * W;          // [W] 1 where state s may be entered from s - 2
  S* g = keep + W;                // [W] beta_t + em_t
  S* beta = g + W;                // [W]
  S* post = beta + W;             // [W] posteriors of one frame
  S* p = post + W;                // [W] exp(row - max)
  S* lognorm = p + W;             // [T] log-softmax normalisers (logits)
  const S scale = a.grad_scale ? a.grad_scale[n] : S(1);
  auto in_row = [&](std::int64_t t) { return a.input + (t * N + n) * K; };
  auto grad_row = [&](std::int64_t t) { return a.grad + (t * N + n) * K; };
  // The states of frame t that lie on some complete alignment: s <= 2t + 1 (reached from the
  // start) and s >= S' - 2(T_n - t) (the end still reachable). Outside, alpha and beta are -inf.
  auto band_lo = [&](std::int64_t t) { return std::max<std::int64_t>(0, Sp - 2 * (Tn - t)); };
  auto band_hi = [&](std::int64_t t) { return std::min<std::int64_t>(Sp, 2 * t + 2); };

  // A NaN score on a valid frame makes the loss and the gradient's valid rows NaN, zero_infinity
  // or not (torch's ctc_loss). The recursions' max-shifted log-sum-exp would turn it into +inf,
  // which zero_infinity would then hide as a 0 loss. Scores past T_n are not read.
  bool has_nan = false;
  for (std::int64_t t = 0; t < Tn; ++t) {
    const S* r = in_row(t);
    for (std::int64_t k = 0; k < K; ++k) has_nan |= std::isnan(r[k]);
  }
  if (has_nan) {
    a.loss[n] = std::numeric_limits<S>::quiet_NaN();
    if (a.grad)
      for (std::int64_t t = 0; t < T; ++t)
        std::fill(grad_row(t), grad_row(t) + K,
                  t < Tn ? std::numeric_limits<S>::quiet_NaN() : S(0));
    return;
  }

  // Logits: the log-normalisers of the valid frames; with a gradient, exp(z - max) is kept in
  // the gradient row (scaled into the softmax below).
  if (a.logits) {
    for (std::int64_t t = 0; t < Tn; ++t) {
      const S* z = in_row(t);
      const S m = *std::max_element(z, z + K);
      S sum = 0;
      if (a.grad) {
        exp_shifted(z, -m, grad_row(t), K);
        sum = sum_fixed(grad_row(t), K);
      } else {
        sum = sum_exp_shifted(z, -m, K);
      }
      lognorm[t] = m + std::log(sum);
    }
  }

  // Repeats force a blank between them: the shortest alignment has L + repeats frames.
  std::int64_t repeats = 0;
  for (std::int64_t j = 1; j < L; ++j) repeats += labels[j] == labels[j - 1];

  S nll = inf;
  if (Tn == 0) {
    nll = L == 0 ? S(0) : inf;
  } else if (Tn >= L + repeats) {
    std::fill(keep, keep + W, S(0));
    for (std::int64_t j = 1; j < L; ++j)
      if (labels[j] != labels[j - 1]) keep[2 * j + 3] = S(1);  // state 2j+1 from 2j-1
    std::fill(p, p + W, S(0));
    // Forward: alpha_0, then alpha_t(s) = em_t(s) + lse(alpha_{t-1}(s, s-1, s-2 if keep)) on
    // the band; every other entry of the row (pads included) is -inf.
    for (std::int64_t t = 0; t < Tn; ++t) {
      S* row = alpha + t * W;
      S* em = ems + t * W;        // em[s + 2] = log y_t(l'_s)
      const S* r = in_row(t);
      em[2] = r[blank];
      for (std::int64_t j = 0; j < L; ++j) {
        em[2 * j + 3] = r[labels[j]];
        em[2 * j + 4] = r[blank];
      }
      if (a.logits) Vec<S>(em + 2, Sp) -= lognorm[t];
      const std::int64_t lo = band_lo(t), hi = band_hi(t);
      std::fill(row, row + W, ninf);
      if (t == 0) {
        for (std::int64_t s = lo; s < hi; ++s) row[s + 2] = em[s + 2];
      } else {
        lse_step(alpha + (t - 1) * W + 2 + lo, keep + 2 + lo, em + 2 + lo, p + 2 + lo,
                 row + 2 + lo, hi - lo, -1);
      }
    }
    const S* last = alpha + (Tn - 1) * W;
    nll = -(Sp > 1 ? lse2(last[Sp + 1], last[Sp]) : last[Sp + 1]);
  }
  const bool infinite = nll == inf;
  a.loss[n] = infinite && a.zero_infinity ? S(0) : nll;
  if (!a.grad) return;

  // Gradient rows: zero past the input length; on the valid frames the softmax (logits) or zero,
  // from which the posteriors are subtracted below. An infinite loss has no gradient: zero with
  // zero_infinity, NaN otherwise (as torch).
  for (std::int64_t t = Tn; t < T; ++t) std::fill(grad_row(t), grad_row(t) + K, S(0));
  if (infinite) {
    const S fill = a.zero_infinity ? S(0) : std::numeric_limits<S>::quiet_NaN();
    for (std::int64_t t = 0; t < Tn; ++t) std::fill(grad_row(t), grad_row(t) + K, fill);
    return;
  }
  for (std::int64_t t = 0; t < Tn; ++t) {
    if (a.logits) {
      Vec<S> gr(grad_row(t), K);
      gr *= scale / sum_fixed(grad_row(t), K);  // exp(z - max) / sum = softmax
    } else {
      std::fill(grad_row(t), grad_row(t) + K, S(0));
    }
  }
  // Backward: beta_{T_n-1}(s) = 0 for the two final states. At frame t the posteriors
  // gamma_t(s) = exp(alpha_t(s) + beta_t(s) + nll) leave the gradient (d nll / d em_t(s) =
  // -gamma_t(s)); then g = beta_t + em_t and beta_{t-1}(s) = lse(g(s), g(s+1), g(s+2) if keep),
  // both on the bands (g is -inf outside frame t's band, so beta_{t-1} is too).
  std::fill(beta, beta + W, ninf);
  std::fill(g, g + W, ninf);
  std::fill(p, p + W, S(0));
  std::fill(post, post + W, S(0));
  beta[Sp + 1] = S(0);
  if (Sp > 1) beta[Sp] = S(0);
  for (std::int64_t t = Tn - 1; t >= 0; --t) {
    const std::int64_t lo = band_lo(t), hi = band_hi(t), w = hi - lo;
    Vec<S> P(post + 2 + lo, w);
    P = CVec<S>(alpha + t * W + 2 + lo, w) + CVec<S>(beta + 2 + lo, w);
    exp_shifted(post + 2 + lo, nll, post + 2 + lo, w);
    P *= scale;
    S* gr = grad_row(t);
    S blank_sum = 0;
    for (std::int64_t s = lo + (lo & 1); s < hi; s += 2) blank_sum += post[s + 2];
    gr[blank] -= blank_sum;
    for (std::int64_t s = lo | 1; s < hi; s += 2) gr[labels[(s - 1) / 2]] -= post[s + 2];
    if (t == 0) break;
    Vec<S>(g + 2 + lo, w) = CVec<S>(beta + 2 + lo, w) + CVec<S>(ems + t * W + 2 + lo, w);
    const std::int64_t lo1 = band_lo(t - 1), hi1 = band_hi(t - 1);
    std::fill(beta, beta + W, ninf);
    lse_step(g + 2 + lo1, keep + 4 + lo1, static_cast<const S*>(nullptr), p + 2 + lo1,
             beta + 2 + lo1, hi1 - lo1, +1);
    std::fill(g + 2 + lo, g + 2 + hi, ninf);  // g back to all -inf for the next frame
  }
}

}  // namespace

// The arguments are checked (ctc_dispatch.cc). Nothing is allocated: sequence n's labels start
// at n * targets_width, or (concatenated) after the target lengths of the sequences before it.
// The workspace is used from its first 64-byte boundary on, so that every row has the same
// alignment on every call (ctc_workspace_size includes the slack).
template <typename S>
void ctc_kernel(const CtcArgs<S>& a) {
  const std::int64_t W = row_width(a.max_target_length);
  const std::int64_t block = block_size(a.T, W);
  S* base = a.workspace;
  while (reinterpret_cast<std::uintptr_t>(base) % 64 != 0) ++base;
#ifdef _OPENMP
  // No more threads than sequences (an idle thread would still join the region's barrier).
  const int threads = int(std::min<std::int64_t>(
      a.num_threads > 0 ? a.num_threads : omp_get_max_threads(), a.N));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
  for (std::int64_t n = 0; n < a.N; ++n) {
    std::int64_t offset = n * a.targets_width;
    if (a.targets_width == 0)
      for (std::int64_t m = 0; m < n; ++m) offset += a.target_lengths[m];
    one_sequence(a, n, a.targets + offset, base + n * block, W);
  }
}

std::size_t ctc_workspace_elements(std::int64_t T, std::int64_t N, std::int64_t Lmax) {
  return std::size_t(N * block_size(T, row_width(Lmax)) + 16);  // + the alignment slack
}

void fill_ctc(isa::Table& t) {
  t.ctc_workspace = &ctc_workspace_elements;
  t.f32.ctc = &ctc_kernel<float>;
  t.f64.ctc = &ctc_kernel<double>;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
