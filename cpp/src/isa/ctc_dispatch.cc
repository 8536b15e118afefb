// The public CTC functions of fusedrnn/ctc.h: argument checks and workspace size; the kernel
// (kernels/ctc.cc, compiled once per copy like the cell kernels) runs through the active
// instruction-set table (isa/table.h), the copy the cell kernels use.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "fusedrnn/ctc.h"
#include "isa/table.h"

namespace fusedrnn {


namespace {

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("ctc_loss: ") + what);
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("ctc_loss: " + what);
}

}  // namespace

std::size_t ctc_workspace_size(std::int64_t T, std::int64_t N, std::int64_t max_target_length) {
  if (T < 1 || N < 1 || max_target_length < 0)
    throw std::invalid_argument(
        "ctc_workspace_size: T and N must be >= 1 and max_target_length >= 0");
  return isa::active().ctc_workspace(T, N, max_target_length);
}

template <typename S>
void ctc_loss(const CtcArgs<S>& a) {
  require(a.T >= 1 && a.N >= 1 && a.K >= 1, "T, N and K must be >= 1");
  require(a.max_target_length >= 0, "max_target_length must be >= 0");
  require(a.blank >= 0 && a.blank < a.K, "blank must lie in [0, K)");
  require(a.num_threads >= 0, "num_threads must be >= 0");
  require(a.input && a.input_lengths && a.target_lengths && a.loss && a.workspace,
          "input, input_lengths, target_lengths, loss and workspace must not be null");
  require(a.targets_width == 0 || a.targets_width >= a.max_target_length,
          "targets_width must be 0 (concatenated) or >= max_target_length");
  // Checked in one pass, without allocating: offset is where sequence n's labels start.
  std::int64_t offset = 0;
  for (std::int64_t n = 0; n < a.N; ++n) {
    const std::int64_t Tn = a.input_lengths[n], L = a.target_lengths[n];
    // (messages built only on failure: a passing check allocates nothing)
    if (Tn < 0 || Tn > a.T)
      require(false, "input_lengths[" + std::to_string(n) + "] = " + std::to_string(Tn) +
                         " is outside [0, T]");
    if (L < 0 || L > a.max_target_length)
      require(false, "target_lengths[" + std::to_string(n) + "] = " + std::to_string(L) +
                         " is outside [0, max_target_length]");
    require(L == 0 || a.targets, "targets must not be null");
    if (a.targets_width) offset = n * a.targets_width;
    const std::int64_t* l = a.targets ? a.targets + offset : nullptr;
    if (!a.targets_width) offset += L;
    for (std::int64_t j = 0; j < L; ++j)
      if (l[j] < 0 || l[j] >= a.K || l[j] == a.blank)
        require(false, "targets: label " + std::to_string(l[j]) + " of sequence " +
                           std::to_string(n) + " is outside [0, K) or is the blank");
  }
  if (!a.targets) {  // every target is empty: give the kernel a valid base pointer
    static const std::int64_t none = 0;
    CtcArgs<S> b = a;
    b.targets = &none;
    b.targets_width = 0;  // every offset 0: no pointer past `none`
    return ctc_loss(b);
  }
  isa::kernels<S>().ctc(a);
}

template FUSEDRNN_API void ctc_loss<float>(const CtcArgs<float>&);
template FUSEDRNN_API void ctc_loss<double>(const CtcArgs<double>&);

template <typename S>
std::vector<std::vector<std::int64_t>> ctc_greedy_decode(std::int64_t T, std::int64_t N,
                                                         std::int64_t K, const S* scores,
                                                         const std::int64_t* input_lengths,
                                                         std::int64_t blank) {
  auto fail = [](const std::string& what) {
    throw std::invalid_argument("ctc_greedy_decode: " + what);
  };
  if (T < 1 || N < 1 || K < 1)
    fail("T, N and K must be >= 1, got " + std::to_string(T) + ", " + std::to_string(N) +
         ", " + std::to_string(K));
  if (!scores) fail("scores [T, N, K] is null");
  if (blank < 0 || blank >= K)
    fail("blank must be in [0, K=" + std::to_string(K) + "), got " + std::to_string(blank));
  if (input_lengths)
    for (std::int64_t n = 0; n < N; ++n)
      if (input_lengths[n] < 0 || input_lengths[n] > T)
        fail("input_lengths[" + std::to_string(n) + "] = " + std::to_string(input_lengths[n]) +
             " is outside [0, T=" + std::to_string(T) + "]");
  std::vector<std::vector<std::int64_t>> out(static_cast<std::size_t>(N));
  for (std::int64_t n = 0; n < N; ++n) {
    const std::int64_t Tn = input_lengths ? input_lengths[n] : T;
    std::vector<std::int64_t>& labels = out[std::size_t(n)];
    std::int64_t prev = -1;
    for (std::int64_t t = 0; t < Tn; ++t) {
      const S* row = scores + (t * N + n) * K;
      // numpy.argmax: the first maximum; a NaN is the maximum (the first NaN wins).
      std::int64_t best = 0;
      if (!std::isnan(row[0]))
        for (std::int64_t k = 1; k < K; ++k) {
          if (std::isnan(row[k])) {
            best = k;
            break;
          }
          if (row[k] > row[best]) best = k;
        }
      if (best != prev && best != blank) labels.push_back(best);
      prev = best;
    }
  }
  return out;
}

template FUSEDRNN_API std::vector<std::vector<std::int64_t>> ctc_greedy_decode<float>(
    std::int64_t, std::int64_t, std::int64_t, const float*, const std::int64_t*, std::int64_t);
template FUSEDRNN_API std::vector<std::vector<std::int64_t>> ctc_greedy_decode<double>(
    std::int64_t, std::int64_t, std::int64_t, const double*, const std::int64_t*, std::int64_t);

}  // namespace fusedrnn
