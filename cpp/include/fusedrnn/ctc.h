// Connectionist Temporal Classification loss (Graves et al. 2006): forward-backward in log space.
//
// Shape letters (beyond fusedrnn.h's): K classes (the blank included), L a sequence's target
// length, S' = 2L + 1 the blank-extended label sequence (blank, l_1, blank, ..., l_L, blank).
//
// For sequence n with input length T_n and targets l (length L):
//   alpha_t(s) = log P(the first t+1 frames emit the prefix of l' ending in state s)
//   alpha_0(0) = y_0(blank), alpha_0(1) = y_0(l'_1), every other alpha_0(s) = -inf
//   alpha_t(s) = y_t(l'_s) + logsumexp(alpha_{t-1}(s), alpha_{t-1}(s-1), [alpha_{t-1}(s-2)])
//     (the third term only when l'_s is not blank and l'_s != l'_{s-2}: a repeated label
//     needs a blank between its two copies)
//   loss_n = -logsumexp(alpha_{T_n-1}(S'-1), alpha_{T_n-1}(S'-2))
// beta is the same recursion run backwards; gamma_t(s) = exp(alpha_t(s) + beta_t(s) + loss_n)
// (beta without the frame-t emission) is the posterior of state s at frame t, and
//   d loss_n / d log_probs[t, n, k] = -sum_{s: l'_s = k} gamma_t(s)          (t < T_n)
//   d loss_n / d logits[t, n, k]    = softmax(logits[t, n])_k - that same sum (t < T_n)
// and zero for t >= T_n. The first is the true gradient with respect to free log-probabilities;
// torch's ctc_loss returns the second even for log_probs (it assumes they came from log_softmax).
//
// Impossible alignments (T_n < L + the number of adjacent repeats in l) give loss_n = +inf and a
// NaN gradient for that sequence (as torch), or loss 0 and gradient 0 with zero_infinity.
// A sequence with T_n = 0 has loss 0 when L = 0 and +inf otherwise. A NaN score on one of a
// sequence's T_n valid frames makes its loss NaN and its gradient's valid rows NaN, zero_infinity
// or not (as torch); scores past T_n are never read.
//
// Threads: one OpenMP task per sequence (dynamic schedule); each sequence's result is computed
// the same way whatever the thread count, so results are bitwise independent of it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "fusedrnn/common.h"

namespace fusedrnn {

template <typename Scalar>
struct CtcArgs {
  std::int64_t T = 0;  // frames (the first axis of log_probs)
  std::int64_t N = 0;  // batch
  std::int64_t K = 0;  // classes, the blank included
  // The largest target length the workspace was sized for (>= every target_lengths[n]).
  std::int64_t max_target_length = 0;
  std::int64_t blank = 0;  // the blank's class index, in [0, K)
  // false: `input` holds log-probabilities; true: unnormalised scores, the log-softmax over K is
  // fused (the loss and the gradient are then those of log_softmax(input)).
  bool logits = false;
  // An infinite loss (impossible alignment) becomes 0, with a zero gradient.
  bool zero_infinity = false;
  int num_threads = 0;  // 0 = the OpenMP default

  const Scalar* input = nullptr;  // [T, N, K] log-probabilities or logits (see `logits`)
  // Targets, in one of torch's two layouts:
  //  targets_width > 0: padded, [N, targets_width]; row n's first target_lengths[n] entries are
  //    its labels, the rest is ignored (targets_width >= max_target_length);
  //  targets_width == 0: concatenated, [sum(target_lengths)], sequence after sequence.
  const std::int64_t* targets = nullptr;
  std::int64_t targets_width = 0;
  const std::int64_t* input_lengths = nullptr;   // [N], in [0, T]
  const std::int64_t* target_lengths = nullptr;  // [N], in [0, max_target_length]
  // [N] (nullable = all 1): sequence n's gradient is multiplied by grad_scale[n] (the weights of
  // a reduction: 1 / (N max(L_n, 1)) for torch's "mean").
  const Scalar* grad_scale = nullptr;

  Scalar* loss = nullptr;  // [N] out: loss_n, the negative log-likelihood (overwritten)
  // [T, N, K] out (nullable: loss only, no backward pass): grad_scale[n] * d loss_n / d input,
  // overwritten everywhere (zero at t >= T_n).
  Scalar* grad = nullptr;
  Scalar* workspace = nullptr;  // ctc_workspace_size(T, N, max_target_length) elements
};

// Elements of Scalar the caller provides as CtcArgs::workspace (nothing allocates inside).
FUSEDRNN_API std::size_t ctc_workspace_size(std::int64_t T, std::int64_t N,
                                            std::int64_t max_target_length);

// Computes a.loss and (when a.grad is not null) a.grad. Throws std::invalid_argument, before any
// work, for sizes < 1 (T, N, K), a blank outside [0, K), a null required pointer, lengths out of
// range, or a label outside [0, K) or equal to the blank inside a target (padding is not read).
template <typename Scalar> FUSEDRNN_API
void ctc_loss(const CtcArgs<Scalar>& a);

// Greedy (best-path) decoding, Python's fusedrnn.ctc.ctc_greedy_decode: for sequence n, the
// argmax class of each frame t < input_lengths[n] (the first of equal maxima; a NaN counts as
// the maximum, the first one winning, as numpy.argmax), runs of one class merged, blanks
// dropped. scores [T, N, K] (log-probabilities or logits: the argmax is the same);
// input_lengths [N] in [0, T] (nullable: every sequence T frames). Returns N label lists.
// std::invalid_argument, before any work, for T, N or K < 1, null scores, a blank outside
// [0, K) or a length outside [0, T]. Model::ctc_greedy_decode (model.h) runs a model first.
template <typename Scalar> FUSEDRNN_API
std::vector<std::vector<std::int64_t>> ctc_greedy_decode(std::int64_t T, std::int64_t N,
                                                         std::int64_t K, const Scalar* scores,
                                                         const std::int64_t* input_lengths =
                                                             nullptr,
                                                         std::int64_t blank = 0);

}  // namespace fusedrnn
