// CTC loss: log-space forward-backward (alpha-beta) over the blank-extended targets, one sequence
// per OpenMP task; the optional fused log-softmax of the logits variant. Formulas in ctc.h.
//
// Each recursion step is vectorised over the states s with Eigen arrays: a row of S' = 2L + 1
// states is stored with two -inf pads on each side (state s at index s + 2), so the three
// predecessors (s, s-1, s-2) of the forward step and the three successors (s, s+1, s+2) of the
// backward step are plain shifted views, and the "may skip a blank" rule is an additive row of
// 0 / -inf.
#include "fusedrnn/ctc.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fusedrnn {
namespace {

template <typename S>
using Arr = Eigen::Array<S, Eigen::Dynamic, 1>;
template <typename S>
using Vec = Eigen::Map<Arr<S>>;
template <typename S>
using CVec = Eigen::Map<const Arr<S>>;

// Row width for targets of length <= Lmax: 2 Lmax + 1 states and two pads on each side.
std::int64_t row_width(std::int64_t max_target_length) { return 2 * max_target_length + 5; }

// Per-sequence workspace: T alpha rows, 5 working rows (skip, emissions, beta + emission,
// beta, posteriors) and T log-normalisers (logits variant).
std::int64_t block_size(std::int64_t T, std::int64_t W) { return T * W + 5 * W + T; }

// out[i] = lse(a[i], b[i], c[i] + skip[i]) (+ em[i] when em is not null), i in [0, n).
template <typename S>
void lse3(const S* a, const S* b, const S* c, const S* skip, const S* em, S* out,
          std::int64_t n) {
  const S ninf = -std::numeric_limits<S>::infinity();
  CVec<S> A(a, n), B(b, n), C(c, n), K(skip, n);
  Vec<S> O(out, n);
  O = A.max(B).max(C + K);
  O = (O == ninf).select(S(0), O);  // all three -inf: exp(-inf - 0) = 0, log(0) = -inf
  O = O + ((A - O).exp() + (B - O).exp() + (C + K - O).exp()).log();
  if (em) O += CVec<S>(em, n);
}

template <typename S>
S lse2(S a, S b) {
  const S m = std::max(a, b);
  if (m == -std::numeric_limits<S>::infinity()) return m;
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

template <typename S>
void one_sequence(const CtcArgs<S>& a, std::int64_t n, const std::int64_t* labels, S* ws) {
  const S ninf = -std::numeric_limits<S>::infinity();
  const std::int64_t T = a.T, N = a.N, K = a.K, blank = a.blank;
  const std::int64_t Tn = a.input_lengths[n], L = a.target_lengths[n], Sp = 2 * L + 1;
  const std::int64_t W = row_width(a.max_target_length);
  S* alpha = ws;                  // [T, W]
  S* skip = alpha + T * W;        // [W]
  S* em = skip + W;               // [W] emissions of one frame
  S* g = em + W;                  // [W] beta + emission of frame t
  S* beta = g + W;                // [W]
  S* post = beta + W;             // [W]
  S* lognorm = post + W;          // [T] log-softmax normalisers (logits)
  const S scale = a.grad_scale ? a.grad_scale[n] : S(1);
  auto in_row = [&](std::int64_t t) { return a.input + (t * N + n) * K; };
  auto grad_row = [&](std::int64_t t) { return a.grad + (t * N + n) * K; };

  // Logits: log-normalisers of the valid frames; with a gradient, exp(z - max) is kept there.
  if (a.logits) {
    for (std::int64_t t = 0; t < Tn; ++t) {
      CVec<S> z(in_row(t), K);
      const S m = z.maxCoeff();
      S sum;
      if (a.grad) {
        Vec<S> gr(grad_row(t), K);
        gr = (z - m).exp();
        sum = gr.sum();
      } else {
        sum = (z - m).exp().sum();
      }
      lognorm[t] = m + std::log(sum);
    }
  }
  // em[s + 2] = log y_t(l'_s) for s in [0, S').
  auto emissions = [&](std::int64_t t) {
    const S* r = in_row(t);
    em[2] = r[blank];
    for (std::int64_t j = 0; j < L; ++j) {
      em[2 * j + 3] = r[labels[j]];
      em[2 * j + 4] = r[blank];
    }
    if (a.logits) Vec<S>(em + 2, Sp) -= lognorm[t];
  };

  // Repeats that force a blank between them: the shortest alignment has L + repeats frames.
  std::int64_t repeats = 0;
  for (std::int64_t j = 1; j < L; ++j) repeats += labels[j] == labels[j - 1];

  S nll = std::numeric_limits<S>::infinity();
  if (Tn == 0) {
    nll = L == 0 ? S(0) : nll;
  } else if (Tn >= L + repeats) {
    // skip[s + 2] = 0 when state s may be entered from s - 2 (a label unlike the one before).
    std::fill(skip, skip + W, ninf);
    for (std::int64_t j = 1; j < L; ++j)
      if (labels[j] != labels[j - 1]) skip[2 * j + 3] = S(0);  // state 2j+1
    // Forward: alpha_0, then alpha_t(s) = em_t(s) + lse(alpha_{t-1}(s, s-1, s-2 + skip)).
    for (std::int64_t t = 0; t < Tn; ++t) {
      S* row = alpha + t * W;
      row[0] = row[1] = row[Sp + 2] = row[Sp + 3] = ninf;
      emissions(t);
      if (t == 0) {
        std::fill(row + 2, row + Sp + 2, ninf);
        row[2] = em[2];
        if (Sp > 1) row[3] = em[3];
      } else {
        const S* prev = alpha + (t - 1) * W;
        lse3(prev + 2, prev + 1, prev, skip + 2, em + 2, row + 2, Sp);
      }
    }
    const S* last = alpha + (Tn - 1) * W;
    nll = -(Sp > 1 ? lse2(last[Sp + 1], last[Sp]) : last[Sp + 1]);
  }
  const bool infinite = nll == std::numeric_limits<S>::infinity();
  if (infinite && a.zero_infinity) nll = S(0);
  a.loss[n] = nll;
  if (!a.grad) return;

  // Gradient rows: zero past the input length; on the valid frames the softmax (logits) or zero,
  // from which the state posteriors are subtracted below. An infinite loss has no gradient:
  // zero with zero_infinity, NaN otherwise (as torch).
  for (std::int64_t t = Tn; t < T; ++t) std::fill(grad_row(t), grad_row(t) + K, S(0));
  if (infinite) {
    const S fill = a.zero_infinity ? S(0) : std::numeric_limits<S>::quiet_NaN();
    for (std::int64_t t = 0; t < Tn; ++t) std::fill(grad_row(t), grad_row(t) + K, fill);
    return;
  }
  for (std::int64_t t = 0; t < Tn; ++t) {
    if (a.logits) {
      Vec<S> gr(grad_row(t), K);
      gr *= scale / gr.sum();  // exp(z - max) / sum = softmax
    } else {
      std::fill(grad_row(t), grad_row(t) + K, S(0));
    }
  }
  // Backward: beta_{T_n-1}(s) = 0 for the two final states; at each frame t the posteriors
  // gamma_t(s) = exp(alpha_t(s) + beta_t(s) + nll) leave the gradient (d nll / d em_t(s) =
  // -gamma_t(s)); then g = beta_t + em_t and beta_{t-1}(s) = lse(g(s), g(s+1), g(s+2) + skip).
  std::fill(beta, beta + W, ninf);
  std::fill(g, g + W, ninf);
  beta[Sp + 1] = S(0);
  if (Sp > 1) beta[Sp] = S(0);
  for (std::int64_t t = Tn - 1; t >= 0; --t) {
    const S* arow = alpha + t * W;
    Vec<S> P(post + 2, Sp);
    P = (CVec<S>(arow + 2, Sp) + CVec<S>(beta + 2, Sp) + nll).exp() * scale;
    S* gr = grad_row(t);
    S blank_sum = 0;
    for (std::int64_t s = 0; s < Sp; s += 2) blank_sum += post[s + 2];
    gr[blank] -= blank_sum;
    for (std::int64_t j = 0; j < L; ++j) gr[labels[j]] -= post[2 * j + 3];
    if (t == 0) break;
    emissions(t);
    Vec<S>(g + 2, Sp) = CVec<S>(beta + 2, Sp) + CVec<S>(em + 2, Sp);
    lse3(g + 2, g + 3, g + 4, skip + 4, static_cast<const S*>(nullptr), beta + 2, Sp);
  }
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("ctc_loss: " + what);
}

}  // namespace

std::size_t ctc_workspace_size(std::int64_t T, std::int64_t N, std::int64_t max_target_length) {
  if (T < 1 || N < 1 || max_target_length < 0)
    throw std::invalid_argument("ctc_workspace_size: T and N must be >= 1, max_target_length >= 0");
  return std::size_t(N * block_size(T, row_width(max_target_length)));
}

template <typename S>
void ctc_loss(const CtcArgs<S>& a) {
  require(a.T >= 1 && a.N >= 1 && a.K >= 1, "T, N and K must be >= 1");
  require(a.max_target_length >= 0, "max_target_length must be >= 0");
  require(a.blank >= 0 && a.blank < a.K, "blank must lie in [0, K)");
  require(a.num_threads >= 0, "num_threads must be >= 0");
  require(a.input && a.input_lengths && a.target_lengths && a.loss && a.workspace,
          "input, input_lengths, target_lengths, loss and workspace must not be null");
  require(a.targets || a.max_target_length == 0, "targets must not be null");
  require(a.targets_width == 0 || a.targets_width >= a.max_target_length,
          "targets_width must be 0 (concatenated) or >= max_target_length");
  const std::int64_t N = a.N;
  std::vector<std::int64_t> offset(std::size_t(N), 0);
  std::int64_t total = 0;
  for (std::int64_t n = 0; n < N; ++n) {
    const std::int64_t Tn = a.input_lengths[n], L = a.target_lengths[n];
    require(Tn >= 0 && Tn <= a.T, "input_lengths[" + std::to_string(n) + "] = " +
                                      std::to_string(Tn) + " is outside [0, T]");
    require(L >= 0 && L <= a.max_target_length,
            "target_lengths[" + std::to_string(n) + "] = " + std::to_string(L) +
                " is outside [0, max_target_length]");
    offset[std::size_t(n)] = a.targets_width ? n * a.targets_width : total;
    total += L;
    const std::int64_t* l = a.targets + offset[std::size_t(n)];
    for (std::int64_t j = 0; j < L; ++j)
      require(l[j] >= 0 && l[j] < a.K && l[j] != a.blank,
              "targets: label " + std::to_string(l[j]) + " of sequence " + std::to_string(n) +
                  " is outside [0, K) or is the blank");
  }
  const std::int64_t block = block_size(a.T, row_width(a.max_target_length));
#ifdef _OPENMP
  const int threads = a.num_threads > 0 ? a.num_threads : omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
  for (std::int64_t n = 0; n < N; ++n)
    one_sequence(a, n, a.targets + offset[std::size_t(n)], a.workspace + n * block);
}

template FUSEDRNN_API void ctc_loss<float>(const CtcArgs<float>&);
template FUSEDRNN_API void ctc_loss<double>(const CtcArgs<double>&);

}  // namespace fusedrnn
