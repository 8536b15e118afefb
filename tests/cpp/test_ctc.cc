// Tests of fusedrnn::ctc_loss (ctc.h) through the installed C++ API: the gradient of both
// variants against central finite differences (double), float against double, a brute-force
// probability, impossible alignments, zero_infinity, and argument errors that throw before any
// work. Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
#include <fusedrnn/ctc.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int g_passed = 0, g_failed = 0;

void report(bool ok, const std::string& what, double detail) {
  std::printf("%-4s %-60s %.3g\n", ok ? "ok" : "FAIL", what.c_str(), detail);
  ++(ok ? g_passed : g_failed);
}

// One problem: T frames, N sequences, K classes, padded targets.
struct Problem {
  std::int64_t T = 6, N = 3, K = 4, S = 3;
  std::vector<std::int64_t> targets{1, 1, 2, 3, 2, 0, 0, 0, 0};  // row 2 empty (padding 0)
  std::vector<std::int64_t> input_lengths{6, 4, 5};
  std::vector<std::int64_t> target_lengths{3, 2, 0};
};

template <typename S>
std::vector<S> run(const Problem& p, const std::vector<S>& input, bool logits,
                   std::vector<S>* grad, bool zero_infinity = false,
                   const std::vector<std::int64_t>* il = nullptr, int threads = 0) {
  std::vector<S> loss(std::size_t(p.N));
  std::vector<S> ws(fusedrnn::ctc_workspace_size(p.T, p.N, p.S));
  fusedrnn::CtcArgs<S> a;
  a.T = p.T;
  a.N = p.N;
  a.K = p.K;
  a.max_target_length = p.S;
  a.logits = logits;
  a.zero_infinity = zero_infinity;
  a.num_threads = threads;
  a.input = input.data();
  a.targets = p.targets.data();
  a.targets_width = p.S;
  a.input_lengths = il ? il->data() : p.input_lengths.data();
  a.target_lengths = p.target_lengths.data();
  a.loss = loss.data();
  if (grad) {
    grad->assign(std::size_t(p.T * p.N * p.K), S(0));
    a.grad = grad->data();
  }
  a.workspace = ws.data();
  fusedrnn::ctc_loss<S>(a);
  return loss;
}

std::vector<double> log_softmax(const std::vector<double>& z, std::int64_t K) {
  std::vector<double> out(z.size());
  for (std::size_t r = 0; r < z.size() / std::size_t(K); ++r) {
    const double* zr = z.data() + r * std::size_t(K);
    const double m = *std::max_element(zr, zr + K);
    double s = 0;
    for (std::int64_t k = 0; k < K; ++k) s += std::exp(zr[k] - m);
    for (std::int64_t k = 0; k < K; ++k) out[r * std::size_t(K) + std::size_t(k)] =
        zr[k] - m - std::log(s);
  }
  return out;
}

double sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

bool throws(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return std::string(e.what()).find(needle) != std::string::npos;
  }
  return false;
}

}  // namespace

int main() {
  Problem p;
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  std::vector<double> z(std::size_t(p.T * p.N * p.K));
  for (double& v : z) v = normal(rng);
  const std::vector<double> lp = log_softmax(z, p.K);

  // Gradients against central differences of the summed loss, both variants.
  for (bool logits : {false, true}) {
    const std::vector<double>& x0 = logits ? z : lp;
    std::vector<double> grad;
    run<double>(p, x0, logits, &grad);
    double worst = 0;
    for (std::size_t i = 0; i < x0.size(); ++i) {
      std::vector<double> up = x0, down = x0;
      up[i] += 1e-6;
      down[i] -= 1e-6;
      const double fd = (sum(run<double>(p, up, logits, nullptr)) -
                         sum(run<double>(p, down, logits, nullptr))) / 2e-6;
      worst = std::max(worst, std::abs(fd - grad[i]));
    }
    report(worst < 1e-7, std::string("finite differences, ") + (logits ? "logits" : "log_probs"),
           worst);
  }

  // Brute force: sequence 1 (4 frames, targets 3 2) sums every path that collapses to it.
  {
    const std::vector<double> loss = run<double>(p, lp, false, nullptr);
    double total = 0;
    const std::int64_t T1 = 4;
    for (std::int64_t code = 0; code < 256; ++code) {  // 4^4 paths
      std::vector<std::int64_t> path(static_cast<std::size_t>(T1));
      std::int64_t c = code;
      for (auto& k : path) k = c % 4, c /= 4;
      std::vector<std::int64_t> out;
      for (std::int64_t t = 0; t < T1; ++t)
        if (path[std::size_t(t)] != 0 && (t == 0 || path[std::size_t(t - 1)] != path[std::size_t(t)]))
          out.push_back(path[std::size_t(t)]);
      if (out == std::vector<std::int64_t>{3, 2}) {
        double lpp = 0;
        for (std::int64_t t = 0; t < T1; ++t)
          lpp += lp[std::size_t((t * p.N + 1) * p.K + path[std::size_t(t)])];
        total += std::exp(lpp);
      }
    }
    const double err = std::abs(std::exp(-loss[1]) - total) / total;
    report(err < 1e-12, "brute-force probability of a labelling", err);
  }

  // float against double, and independence of the thread count.
  {
    std::vector<float> zf(z.begin(), z.end());
    std::vector<float> gf, gf3;
    std::vector<double> gd;
    const auto lf = run<float>(p, zf, true, &gf);
    const auto lf3 = run<float>(p, zf, true, &gf3, false, nullptr, 3);
    const auto ld = run<double>(p, z, true, &gd);
    double worst = 0;
    for (std::size_t i = 0; i < gd.size(); ++i) worst = std::max(worst, std::abs(gf[i] - gd[i]));
    for (std::size_t n = 0; n < ld.size(); ++n)
      worst = std::max(worst, std::abs(double(lf[n]) - ld[n]) / std::max(1.0, ld[n]));
    report(worst < 1e-5, "float matches double", worst);
    report(lf == lf3 && gf == gf3, "bitwise the same on 1 and 3 threads", 0);
  }

  // Impossible alignment: sequence 0 needs 4 frames (1 1 2 has a repeat); give it 3.
  {
    const std::vector<std::int64_t> il{3, 4, 5};
    std::vector<double> grad;
    auto loss = run<double>(p, lp, false, &grad, false, &il);
    bool nan_rows = true;
    for (std::int64_t t = 0; t < 3; ++t)
      for (std::int64_t k = 0; k < p.K; ++k)
        nan_rows = nan_rows && std::isnan(grad[std::size_t((t * p.N) * p.K + k)]);
    report(std::isinf(loss[0]) && nan_rows && std::isfinite(loss[1]),
           "impossible alignment: inf loss, NaN gradient", 0);
    loss = run<double>(p, lp, false, &grad, true, &il);
    double mx = 0;
    for (std::int64_t t = 0; t < p.T; ++t)
      for (std::int64_t k = 0; k < p.K; ++k)
        mx = std::max(mx, std::abs(grad[std::size_t((t * p.N) * p.K + k)]));
    report(loss[0] == 0 && mx == 0, "zero_infinity: loss 0, gradient 0", mx);
  }

  // A NaN score on a valid frame: NaN loss and NaN gradient rows, zero_infinity or not; a NaN
  // past a sequence's input length is not read. Both variants, both types.
  for (bool zi : {false, true})
    for (bool logits : {false, true}) {
      std::vector<double> x = logits ? z : lp;
      x[std::size_t((2 * p.N + 0) * p.K + 1)] = NAN;  // frame 2 of sequence 0 (length 6)
      for (std::int64_t k = 0; k < p.K; ++k)
        x[std::size_t((4 * p.N + 1) * p.K + k)] = NAN;  // frame 4 of sequence 1 (length 4)
      std::vector<double> grad;
      const auto clean = run<double>(p, logits ? z : lp, logits, nullptr, zi);
      const auto loss = run<double>(p, x, logits, &grad, zi);
      std::vector<float> xf(x.begin(), x.end()), gf;
      const auto lossf = run<float>(p, xf, logits, &gf, zi);
      bool ok = std::isnan(loss[0]) && std::isnan(lossf[0]) && loss[1] == clean[1] &&
                loss[2] == clean[2];
      for (std::int64_t t = 0; t < p.T; ++t)
        for (std::int64_t n = 0; n < p.N; ++n)
          for (std::int64_t k = 0; k < p.K; ++k) {
            const std::size_t i = std::size_t((t * p.N + n) * p.K + k);
            ok = ok && std::isnan(grad[i]) == (n == 0) && std::isnan(gf[i]) == (n == 0);
          }
      report(ok, std::string("NaN score: NaN loss and gradient, ") +
                     (logits ? "logits" : "log_probs") + (zi ? ", zero_infinity" : ""), 0);
    }

  // Argument errors throw std::invalid_argument before any work.
  {
    std::vector<double> grad;
    Problem bad = p;
    bad.targets[1] = 0;  // the blank inside a target
    report(throws([&] { run<double>(bad, lp, false, &grad); }, "targets"),
           "a blank inside the targets throws", 0);
    bad = p;
    bad.targets[0] = 4;  // out of range
    report(throws([&] { run<double>(bad, lp, false, &grad); }, "targets"),
           "a label out of range throws", 0);
    const std::vector<std::int64_t> il{7, 4, 5};
    report(throws([&] { run<double>(p, lp, false, &grad, false, &il); }, "input_lengths"),
           "an input length above T throws", 0);
    bad = p;
    bad.target_lengths[0] = -1;
    report(throws([&] { run<double>(bad, lp, false, &grad); }, "target_lengths"),
           "a negative target length throws", 0);
    report(throws([] { fusedrnn::ctc_workspace_size(0, 1, 1); }, "T and N"),
           "ctc_workspace_size rejects T = 0", 0);
  }

  // Greedy decoding (ctc_greedy_decode): argmax per frame, repeats merged, blanks dropped.
  {
    using V = std::vector<std::int64_t>;
    // T = 7, N = 2, K = 3; sequence 0's best path 1 1 0 1 2 2 0 -> [1, 1, 2]; sequence 1's
    // 2 0 2 2 (then past its length 4) -> [2, 2].
    const std::int64_t T = 7, N = 2, K = 3;
    const int path0[7] = {1, 1, 0, 1, 2, 2, 0}, path1[7] = {2, 0, 2, 2, 1, 1, 1};
    std::vector<float> sc(std::size_t(T * N * K), -1.0f);
    for (std::int64_t t = 0; t < T; ++t) {
      sc[std::size_t((t * N + 0) * K + path0[t])] = 0.5f;
      sc[std::size_t((t * N + 1) * K + path1[t])] = 0.5f;
    }
    const std::vector<std::int64_t> len{7, 4};
    auto d = fusedrnn::ctc_greedy_decode<float>(T, N, K, sc.data(), len.data(), 0);
    report(d.size() == 2 && d[0] == V{1, 1, 2} && d[1] == V{2, 2},
           "greedy decode: repeats merged, blanks dropped, lengths", 0);
    // Without lengths sequence 1 runs all T frames: 2 0 2 2 1 1 1 -> [2, 2, 1].
    d = fusedrnn::ctc_greedy_decode<float>(T, N, K, sc.data());
    report(d[1] == V{2, 2, 1}, "greedy decode: null lengths = all T", 0);
    // Blank 2: sequence 0 -> 1 1 0 1 2 2 0 -> [1, 0, 1, 0].
    d = fusedrnn::ctc_greedy_decode<float>(T, N, K, sc.data(), len.data(), 2);
    report(d[0] == V{1, 0, 1, 0}, "greedy decode: another blank", 0);
    // Ties take the first class, a NaN wins (numpy.argmax); a zero length decodes to nothing.
    const std::vector<double> tie{0.0, 3.0, 3.0, 1.0, NAN, 5.0, 1.0, 2.0, 2.0};  // T 3, N 1
    const std::vector<std::int64_t> l3{3}, l0{0};
    auto e = fusedrnn::ctc_greedy_decode<double>(3, 1, 3, tie.data(), l3.data(), 0);
    report(e[0] == V{1}, "greedy decode: first maximum and NaN as numpy.argmax", 0);
    e = fusedrnn::ctc_greedy_decode<double>(3, 1, 3, tie.data(), l0.data(), 0);
    report(e.size() == 1 && e[0].empty(), "greedy decode: length 0", 0);
    report(throws([&] { fusedrnn::ctc_greedy_decode<double>(3, 1, 3, tie.data(), nullptr, 3); },
                  "blank"),
           "greedy decode: a blank outside [0, K) throws", 0);
    const std::vector<std::int64_t> l4{4};
    report(throws([&] { fusedrnn::ctc_greedy_decode<double>(3, 1, 3, tie.data(), l4.data()); },
                  "input_lengths"),
           "greedy decode: a length above T throws", 0);
    report(throws([] { fusedrnn::ctc_greedy_decode<double>(3, 1, 3, nullptr); }, "null"),
           "greedy decode: null scores throw", 0);
    report(throws([&] { fusedrnn::ctc_greedy_decode<double>(0, 1, 3, tie.data()); }, "T, N"),
           "greedy decode: T = 0 throws", 0);
  }

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
