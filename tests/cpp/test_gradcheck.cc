// C++-only gradient check of the fused kernels, in double precision (no Python, no framework).
//
// For one small problem per cell (LSTM forward/reverse with peepholes, LSTM with projection
// (P < H down to P = 1 and up to P = H - 1, with and without peepholes), GRU reset_after and reset_before, RNN tanh and
// relu; biases, initial states and variable lengths throughout) it
// compares every element of every analytic gradient with central finite differences of
//   L = sum(y*dy) + sum(h_n*dh_n) [+ sum(c_n*dc_n)],
// and checks the documented contracts of fusedrnn.h: padded outputs are zero, the inference
// forward matches the training forward, parameter gradients accumulate while dx/dh0/dc0 are
// overwritten, a null dx leaves the other gradients as they were, Options::weights_packed takes
// the weights an earlier forward packed into the workspace, and invalid arguments throw
// std::invalid_argument before any work. Workspace and cache (sized by the *_size functions)
// start as NaN, so reading unwritten memory fails.
// Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
#include <fusedrnn/fusedrnn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace fusedrnn;
using Vec = std::vector<double>;

// Fills workspace and cache before each call: a kernel reading what it did not write gives NaN.
const double kJunk = std::numeric_limits<double>::quiet_NaN();

namespace {

int g_passed = 0, g_failed = 0;

void report(bool ok, const std::string& what, const std::string& detail) {
  std::printf("%-4s %-46s %s\n", ok ? "ok" : "FAIL", what.c_str(), detail.c_str());
  ++(ok ? g_passed : g_failed);
}

// max() that keeps a NaN (std::max would drop it, hiding a kernel that reads junk).
double nan_max(double a, double b) { return std::isnan(b) || b > a ? b : a; }

// A check of a maximum error against a tolerance.
void report_err(const std::string& what, double err, double tol) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "max err %.2e", err);
  report(err <= tol, what, buf);
}

Vec random_vec(std::mt19937_64& rng, std::size_t n, double scale) {
  std::uniform_real_distribution<double> u(-scale, scale);
  Vec v(n);
  for (double& e : v) e = u(rng);
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) s += a[i] * b[i];
  return s;
}

// Largest |fd - an| / max(1, |an|) over every element of p, fd the central difference of loss.
double fd_max_error(const std::function<double()>& loss, Vec& p, const Vec& analytic) {
  const double eps = 1e-6;
  double worst = 0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    const double keep = p[i];
    p[i] = keep + eps;
    const double lp = loss();
    p[i] = keep - eps;
    const double lm = loss();
    p[i] = keep;
    const double fd = (lp - lm) / (2 * eps);
    worst = nan_max(worst, std::abs(fd - analytic[i]) / std::max(1.0, std::abs(analytic[i])));
  }
  return worst;
}

// A differentiable input or parameter with its gradient buffer.
struct Tensor {
  std::string name;
  Vec v, g;
  bool accumulates;  // parameter gradient (+=) rather than input/state gradient (=)
};

// One problem: tensors, upstream gradients, outputs and the cell's forward/backward calls.
struct Case {
  std::string name;
  Dims d{3, 3, 3, 4};
  Options opt;
  std::vector<std::int64_t> lengths;
  std::vector<Tensor> t;
  Vec dy, dhn, dcn, y, hn, cn, cache;
  std::function<void(double* cache)> forward;  // writes y, hn (, cn); cache may be null
  std::function<void()> backward;              // reads cache, writes/accumulates t[i].g

  Tensor& at(const std::string& n) {
    for (Tensor& e : t)
      if (e.name == n) return e;
    throw std::logic_error("no tensor " + n);
  }
  bool has(const std::string& n) const {
    for (const Tensor& e : t)
      if (e.name == n) return true;
    return false;
  }
  // Pointers to a tensor's values / gradient; null once the vector is emptied, or (for the
  // optional w_peep and w_hr) when the case has no such tensor.
  double* v(const std::string& n) { Vec& e = at(n).v; return e.empty() ? nullptr : e.data(); }
  double* g(const std::string& n) { Vec& e = at(n).g; return e.empty() ? nullptr : e.data(); }
  double* v_opt(const std::string& n) { return has(n) ? v(n) : nullptr; }
  double* g_opt(const std::string& n) { return has(n) ? g(n) : nullptr; }
  double loss() { return dot(y, dy) + dot(hn, dhn) + dot(cn, dcn); }
  double eval() { forward(nullptr); return loss(); }  // inference path
};

// Random tensors for a cell with G gates; with_c adds c0/dc_n (LSTM), peep adds w_peep, and
// c.d.P > 0 the projection w_hr [P, H] (h0, w_hh's columns, y, h_n then have P units).
void fill_case(Case& c, const std::string& name, bool reverse, std::vector<std::int64_t> lengths,
               std::uint64_t seed, int G, bool with_c, bool peep) {
  c.name = name + (reverse ? " reverse" : "");
  c.opt.reverse = reverse;
  c.lengths = lengths;
  std::mt19937_64 rng(seed);
  const auto [T, N, C, H, P] = c.d;
  const std::int64_t R = P > 0 ? P : H;  // width of h
  auto add = [&](const char* tname, std::int64_t n, double scale, bool acc) {
    c.t.push_back({tname, random_vec(rng, n, scale), Vec(n), acc});
  };
  c.t.clear();
  add("x", T * N * C, 1.0, false);
  add("h0", N * R, 1.0, false);
  if (with_c) add("c0", N * H, 1.0, false);
  add("w_ih", G * H * C, 0.6, true);
  add("w_hh", G * H * R, 0.6, true);
  add("b_ih", G * H, 0.5, true);
  add("b_hh", G * H, 0.5, true);
  if (peep) add("w_peep", 3 * H, 0.5, true);
  c.dy = random_vec(rng, T * N * R, 1.0);
  c.dhn = random_vec(rng, N * R, 1.0);
  c.dcn = with_c ? random_vec(rng, N * H, 1.0) : Vec();
  if (P > 0) add("w_hr", P * H, 0.6, true);
  c.y.assign(T * N * R, 0);
  c.hn.assign(N * R, 0);
  c.cn.assign(with_c ? N * H : 0, 0);
}

// The kernels' argument structs over a case's tensors.
LstmForwardArgs<double> lstm_forward_args(Case& c, double* cache) {
  LstmForwardArgs<double> a;
  a.x = c.v("x"), a.w_ih = c.v("w_ih"), a.w_hh = c.v("w_hh"), a.b_ih = c.v("b_ih");
  a.b_hh = c.v("b_hh"), a.h0 = c.v("h0"), a.c0 = c.v("c0"), a.w_peep = c.v_opt("w_peep");
  a.w_hr = c.v_opt("w_hr"), a.lengths = c.lengths.data();
  a.y = c.y.data(), a.h_n = c.hn.data(), a.c_n = c.cn.data(), a.cache = cache;
  return a;
}
LstmBackwardArgs<double> lstm_backward_args(Case& c) {
  LstmBackwardArgs<double> a;
  a.x = c.v("x"), a.w_ih = c.v("w_ih"), a.w_hh = c.v("w_hh"), a.w_peep = c.v_opt("w_peep");
  a.w_hr = c.v_opt("w_hr"), a.lengths = c.lengths.data(), a.cache = c.cache.data();
  a.dy = c.dy.data(), a.dh_n = c.dhn.data(), a.dc_n = c.dcn.data();
  a.dx = c.g("x"), a.dh0 = c.g("h0"), a.dc0 = c.g("c0"), a.dw_ih = c.g("w_ih");
  a.dw_hh = c.g("w_hh"), a.db_ih = c.g("b_ih"), a.db_hh = c.g("b_hh");
  a.dw_peep = c.g_opt("w_peep"), a.dw_hr = c.g_opt("w_hr");
  return a;
}
// GRU and RNN (the cell's formula is set by the caller).
template <typename Args>
Args single_forward_args(Case& c, double* cache) {
  Args a;
  a.x = c.v("x"), a.w_ih = c.v("w_ih"), a.w_hh = c.v("w_hh"), a.b_ih = c.v("b_ih");
  a.b_hh = c.v("b_hh"), a.h0 = c.v("h0"), a.lengths = c.lengths.data();
  a.y = c.y.data(), a.h_n = c.hn.data(), a.cache = cache;
  return a;
}
template <typename Args>
Args single_backward_args(Case& c) {
  Args a;
  a.x = c.v("x"), a.w_ih = c.v("w_ih"), a.w_hh = c.v("w_hh"), a.lengths = c.lengths.data();
  a.cache = c.cache.data(), a.dy = c.dy.data(), a.dh_n = c.dhn.data();
  a.dx = c.g("x"), a.dh0 = c.g("h0"), a.dw_ih = c.g("w_ih"), a.dw_hh = c.g("w_hh");
  a.db_ih = c.g("b_ih"), a.db_hh = c.g("b_hh");
  return a;
}

// P > 0: with projection w_hr [P, H].
void make_lstm(Case& c, bool reverse, std::vector<std::int64_t> lengths, std::int64_t P = 0,
               bool peep = true) {
  c.d.P = P;
  const std::string name = P > 0 ? "lstm proj P=" + std::to_string(P) + (peep ? " peep" : "")
                                 : "lstm";
  fill_case(c, name, reverse, lengths, 11 + reverse + 2 * P, 4, true, peep);
  c.cache.assign(lstm_cache_size(c.d), kJunk);
  c.forward = [&c](double* cache) {
    Vec ws(lstm_forward_workspace_size(c.d), kJunk);
    lstm_forward(c.d, lstm_forward_args(c, cache), c.opt, ws.data());
  };
  c.backward = [&c] {
    Vec ws(lstm_backward_workspace_size(c.d), kJunk);
    lstm_backward(c.d, lstm_backward_args(c), c.opt, ws.data());
  };
}

void make_gru(Case& c, GruVariant var, bool reverse, std::vector<std::int64_t> lengths) {
  const bool after = var == GruVariant::reset_after;
  fill_case(c, after ? "gru reset_after" : "gru reset_before", reverse, lengths, 21 + after, 3,
            false, false);
  c.cache.assign(gru_cache_size(c.d), kJunk);
  c.forward = [&c, var](double* cache) {
    Vec ws(gru_forward_workspace_size(c.d), kJunk);
    GruForwardArgs<double> a = single_forward_args<GruForwardArgs<double>>(c, cache);
    a.variant = var;
    gru_forward(c.d, a, c.opt, ws.data());
  };
  c.backward = [&c, var] {
    Vec ws(gru_backward_workspace_size(c.d), kJunk);
    GruBackwardArgs<double> a = single_backward_args<GruBackwardArgs<double>>(c);
    a.variant = var;
    gru_backward(c.d, a, c.opt, ws.data());
  };
}

void make_rnn(Case& c, Nonlinearity act, bool reverse, std::vector<std::int64_t> lengths,
              std::uint64_t seed) {
  fill_case(c, act == Nonlinearity::tanh ? "rnn tanh" : "rnn relu", reverse, lengths, seed, 1,
            false, false);
  c.cache.assign(rnn_cache_size(c.d), kJunk);
  c.forward = [&c, act](double* cache) {
    Vec ws(rnn_forward_workspace_size(c.d), kJunk);
    RnnForwardArgs<double> a = single_forward_args<RnnForwardArgs<double>>(c, cache);
    a.nonlinearity = act;
    rnn_forward(c.d, a, c.opt, ws.data());
  };
  c.backward = [&c, act] {
    Vec ws(rnn_backward_workspace_size(c.d), kJunk);
    RnnBackwardArgs<double> a = single_backward_args<RnnBackwardArgs<double>>(c);
    a.nonlinearity = act;
    rnn_backward(c.d, a, c.opt, ws.data());
  };
}

// Smallest |pre-activation| of an RNN case over the steps actually run, recomputed here from
// the forward's own outputs (relu is not differentiable at 0, so FD needs a margin).
double rnn_min_abs_preact(Case& c) {
  c.forward(nullptr);
  const auto [T, N, C, H, P] = c.d;
  (void)P;
  const double *x = c.v("x"), *wi = c.v("w_ih"), *wh = c.v("w_hh"), *bi = c.v("b_ih"),
               *bh = c.v("b_hh");
  double m = std::numeric_limits<double>::infinity();
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t s = 0, len = c.lengths[n]; s < len; ++s) {
      const std::int64_t t = c.opt.reverse ? len - 1 - s : s, tp = c.opt.reverse ? t + 1 : t - 1;
      const double* hp = s == 0 ? c.v("h0") + n * H : c.y.data() + (tp * N + n) * H;
      for (std::int64_t i = 0; i < H; ++i) {
        double pre = bi[i] + bh[i];
        for (std::int64_t k = 0; k < C; ++k) pre += wi[i * C + k] * x[(t * N + n) * C + k];
        for (std::int64_t k = 0; k < H; ++k) pre += wh[i * H + k] * hp[k];
        m = std::min(m, std::abs(pre));
      }
    }
  return m;
}

void run_case(Case& c) {
  const std::int64_t T = c.d.T, N = c.d.N, R = c.d.P > 0 ? c.d.P : c.d.H;  // R: width of y
  // Junk in every output proves the kernels write (or zero) what they must.
  std::fill(c.y.begin(), c.y.end(), 7.0);
  for (Tensor& e : c.t) std::fill(e.g.begin(), e.g.end(), e.accumulates ? 0.0 : 1e3);
  c.forward(c.cache.data());
  const double l_train = c.loss();
  double pad = 0;
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t n = 0; n < N; ++n)
      if (t >= c.lengths[n])
        for (std::int64_t j = 0; j < R; ++j)
          pad = nan_max(pad, std::abs(c.y[(t * N + n) * R + j]));
  report_err(c.name + ": y zero at padded steps", pad, 0);
  c.backward();
  const double l_inf = c.eval();
  report_err(c.name + ": inference == training forward",
             std::abs(l_inf - l_train) / std::max(1.0, std::abs(l_train)), 1e-12);

  for (Tensor& e : c.t) {
    const double err = fd_max_error([&c] { return c.eval(); }, e.v, e.g);
    report_err(c.name + ": d" + e.name + " vs FD", err, 1e-6);
  }

  // Second backward from the same cache: parameter gradients double, the others stay.
  std::vector<Vec> first;
  for (Tensor& e : c.t) first.push_back(e.g);
  c.backward();
  double acc_err = 0, ovw_err = 0;
  for (std::size_t k = 0; k < c.t.size(); ++k)
    for (std::size_t i = 0; i < first[k].size(); ++i) {
      const double g1 = first[k][i], g2 = c.t[k].g[i];
      if (c.t[k].accumulates)
        acc_err = nan_max(acc_err, std::abs(g2 - 2 * g1) / std::max(1.0, std::abs(2 * g1)));
      else
        ovw_err = nan_max(ovw_err, std::abs(g2 - g1) / std::max(1.0, std::abs(g1)));
    }
  report_err(c.name + ": parameter grads accumulate (2nd call)", acc_err, 1e-12);
  report_err(c.name + ": input/state grads overwritten (2nd call)", ovw_err, 1e-12);

  // Third backward with dx null (not computed): every other gradient as before, bit for bit
  // (parameter gradients: added a third time onto exactly twice the first).
  Vec dx_kept;
  dx_kept.swap(c.at("x").g);
  std::vector<Vec> second;
  for (Tensor& e : c.t) second.push_back(e.g);
  for (std::size_t k = 0; k < c.t.size(); ++k)
    if (c.t[k].accumulates) std::fill(c.t[k].g.begin(), c.t[k].g.end(), 0.0);
  c.backward();
  bool same = true;
  for (std::size_t k = 0; k < c.t.size(); ++k)
    same = same && (c.t[k].accumulates ? c.t[k].g == first[k] : c.t[k].g == second[k]);
  report(same, c.name + ": dx null: other grads unchanged", same ? "bitwise" : "differ");
  c.at("x").g.swap(dx_kept);
}

// f() must throw std::invalid_argument and leave the buffer `untouched` as it was.
void expect_invalid(const std::string& what, const std::function<void()>& f, const Vec& untouched) {
  const Vec before = untouched;
  std::string got = "no exception";
  try {
    f();
  } catch (const std::invalid_argument& e) {
    got = std::string("invalid_argument: ") + e.what();
  } catch (const std::exception& e) {
    got = std::string("wrong exception: ") + e.what();
  }
  const bool ok = got.rfind("invalid_argument", 0) == 0 && untouched == before;
  report(ok, what, untouched == before ? got : got + " (output modified)");
}

// Builds a case in place (its calls capture it by reference) and runs every check on it.
// Options::weights_packed: a forward on the workspace an earlier forward packed the weights into
// takes them from there and does not read the weight arrays (NaN here), with the same or the
// other direction. `fwd(opt, ws)` runs the case's forward into c.y with the case's tensors.
void check_weights_packed(Case& c, std::size_t ws_size,
                          const std::function<void(const Options&, double*)>& fwd) {
  Vec ws(ws_size, kJunk), fresh(ws_size, kJunk);
  Options o = c.opt;
  fwd(o, ws.data());  // packs into ws
  const Vec y_same = c.y;
  o.reverse = !o.reverse;
  fwd(o, fresh.data());
  const Vec y_other = c.y;
  std::vector<std::pair<std::string, Vec>> kept;
  for (const char* w : {"w_ih", "w_hh", "w_hr"})
    if (c.has(w)) {
      kept.emplace_back(w, c.at(w).v);
      std::fill(c.at(w).v.begin(), c.at(w).v.end(), kJunk);
    }
  o.weights_packed = true;
  o.reverse = c.opt.reverse;
  fwd(o, ws.data());
  bool ok = c.y == y_same;
  o.reverse = !o.reverse;
  fwd(o, ws.data());
  ok = ok && c.y == y_other;
  for (auto& [w, v] : kept) c.at(w).v = v;
  report(ok, c.name + ": weights_packed reuses the workspace",
         ok ? "bitwise equal" : "differs");
}

// Options::weights_packed in backward: a backward on the workspace an earlier backward (same
// dims) packed the weights into takes them from there and does not read the weight arrays (NaN
// here); every gradient is bitwise the packing call's, in either direction.
// `bwd(opt, ws)` runs the case's backward on its cache with the case's tensors.
void check_backward_weights_packed(Case& c, std::size_t ws_size,
                                   const std::function<void(const Options&, double*)>& bwd) {
  Vec ws(ws_size, kJunk);
  bool ok = true;
  for (bool reverse : {c.opt.reverse, !c.opt.reverse}) {
    Options o = c.opt;
    o.reverse = reverse;
    std::swap(c.opt, o);
    c.forward(c.cache.data());
    std::swap(c.opt, o);
    auto grads = [&](const Options& opt, double* w) {
      for (Tensor& e : c.t) std::fill(e.g.begin(), e.g.end(), 0.0);
      bwd(opt, w);
      std::vector<Vec> out;
      for (Tensor& e : c.t) out.push_back(e.g);
      return out;
    };
    const auto want = grads(o, ws.data());  // packs into ws
    std::vector<std::pair<std::string, Vec>> kept;
    for (const char* w : {"w_ih", "w_hh", "w_hr"})
      if (c.has(w)) {
        kept.emplace_back(w, c.at(w).v);
        std::fill(c.at(w).v.begin(), c.at(w).v.end(), kJunk);
      }
    o.weights_packed = true;
    ok = ok && grads(o, ws.data()) == want;
    for (auto& [w, v] : kept) c.at(w).v = v;
  }
  report(ok, c.name + ": backward weights_packed reuses the workspace",
         ok ? "bitwise equal" : "differs");
}

// WeightGradSink (common.h): a sink that keeps copies of the terms, then applies them with
// gemm_tn_add_terms (grouped by target, in order). Three backward calls with it, applied at
// once, must give the gradients of three immediate calls bit for bit, leave dw_ih and dw_hh
// untouched until applied, and every other output as the immediate call's.
struct RecordSink final : WeightGradSink<double> {
  struct Term {
    double* c;
    std::int64_t ldc, m, n, k;
    Vec a, b;
  };
  std::vector<Term> terms;
  void add(double* c, std::int64_t ldc, std::int64_t m, std::int64_t n, std::int64_t k,
           const double* a, std::int64_t lda, const double* b, std::int64_t ldb) noexcept override {
    Term t{c, ldc, m, n, k, Vec(k * m), Vec(k * n)};
    for (std::int64_t r = 0; r < k; ++r) {
      std::copy(a + r * lda, a + r * lda + m, t.a.begin() + r * m);
      std::copy(b + r * ldb, b + r * ldb + n, t.b.begin() + r * n);
    }
    terms.push_back(std::move(t));
  }
  void apply(int threads) {
    std::vector<bool> done(terms.size());
    for (std::size_t i = 0; i < terms.size(); ++i) {
      if (done[i]) continue;
      std::vector<TnTerm<double>> list;
      for (std::size_t j = i; j < terms.size(); ++j)
        if (!done[j] && terms[j].c == terms[i].c) {
          done[j] = true;
          list.push_back({terms[j].a.data(), terms[j].m, terms[j].b.data(), terms[j].n,
                          terms[j].k});
        }
      gemm_tn_add_terms<double>(terms[i].m, terms[i].n, list.data(),
                                std::int64_t(list.size()), terms[i].c, terms[i].ldc, threads);
    }
    terms.clear();
  }
};

// bwd(sink, lengths): the case's backward (lengths: the case's, else none); the case's forward
// ran without lengths.
void check_sink(Case& c, const std::function<void(WeightGradSink<double>*, bool)>& bwd) {
  for (int threads : {1, 2}) {
    c.opt.num_threads = threads;
    std::mt19937_64 rng(5);
    std::vector<Vec> start;  // parameter gradients start from values, as in a training loop
    for (Tensor& e : c.t) start.push_back(random_vec(rng, e.g.size(), 1.0));
    auto reset = [&] {
      for (std::size_t k = 0; k < c.t.size(); ++k) c.t[k].g = start[k];
    };
    reset();
    for (int i = 0; i < 3; ++i) bwd(nullptr, false);
    std::vector<Vec> want;
    for (Tensor& e : c.t) want.push_back(e.g);
    reset();
    RecordSink sink;
    for (int i = 0; i < 3; ++i) bwd(&sink, false);
    bool untouched = true;
    for (std::size_t k = 0; k < c.t.size(); ++k)
      if (c.t[k].name == "w_ih" || c.t[k].name == "w_hh")
        untouched = untouched && c.t[k].g == start[k];
    sink.apply(threads);
    bool same = true;
    for (std::size_t k = 0; k < c.t.size(); ++k) same = same && c.t[k].g == want[k];
    const std::string th = " (" + std::to_string(threads) + " thread(s))";
    report(untouched, c.name + ": sink: dw_ih, dw_hh untouched" + th,
           untouched ? "yes" : "written");
    report(same, c.name + ": sink + gemm_tn_add_terms == 3 immediate backward calls" + th,
           same ? "bitwise" : "differ");
  }
  RecordSink sink;
  expect_invalid(c.name + ": sink with lengths", [&] { bwd(&sink, true); }, c.at("w_ih").g);
}

void sink_cases() {
  // T = 3, N = 2 (k = 6 rows a term), C = 5, H = 7: partial row and column tiles.
  auto dims = [](Case& c) { c.d = Dims{3, 2, 5, 7}; };
  {
    Case c;
    dims(c);
    make_lstm(c, false, {3, 3}, 4, true);
    c.name = "lstm proj peep";
    Vec ws(lstm_forward_workspace_size(c.d));
    LstmForwardArgs<double> f = lstm_forward_args(c, c.cache.data());
    f.lengths = nullptr;
    lstm_forward(c.d, f, c.opt, ws.data());
    check_sink(c, [&c](WeightGradSink<double>* s, bool lengths) {
      Vec w(lstm_backward_workspace_size(c.d));
      LstmBackwardArgs<double> a = lstm_backward_args(c);
      if (!lengths) a.lengths = nullptr;
      a.wgrad_sink = s;
      lstm_backward(c.d, a, c.opt, w.data());
    });
  }
  for (GruVariant var : {GruVariant::reset_after, GruVariant::reset_before}) {
    Case c;
    dims(c);
    make_gru(c, var, false, {3, 3});
    Vec ws(gru_forward_workspace_size(c.d));
    GruForwardArgs<double> f = single_forward_args<GruForwardArgs<double>>(c, c.cache.data());
    f.lengths = nullptr, f.variant = var;
    gru_forward(c.d, f, c.opt, ws.data());
    check_sink(c, [&c, var](WeightGradSink<double>* s, bool lengths) {
      Vec w(gru_backward_workspace_size(c.d));
      GruBackwardArgs<double> a = single_backward_args<GruBackwardArgs<double>>(c);
      if (!lengths) a.lengths = nullptr;
      a.variant = var, a.wgrad_sink = s;
      gru_backward(c.d, a, c.opt, w.data());
    });
  }
  {
    Case c;
    dims(c);
    make_rnn(c, Nonlinearity::tanh, false, {3, 3}, 31);
    Vec ws(rnn_forward_workspace_size(c.d));
    RnnForwardArgs<double> f = single_forward_args<RnnForwardArgs<double>>(c, c.cache.data());
    f.lengths = nullptr;
    rnn_forward(c.d, f, c.opt, ws.data());
    check_sink(c, [&c](WeightGradSink<double>* s, bool lengths) {
      Vec w(rnn_backward_workspace_size(c.d));
      RnnBackwardArgs<double> a = single_backward_args<RnnBackwardArgs<double>>(c);
      if (!lengths) a.lengths = nullptr;
      a.wgrad_sink = s;
      rnn_backward(c.d, a, c.opt, w.data());
    });
  }
  // gemm_tn_add_terms' checks
  Vec a(33 * 4), b(33 * 4), cc(16);
  TnTerm<double> t{a.data(), 4, b.data(), 4, 33};
  expect_invalid("gemm_tn_add_terms: k = 33", [&] {
    gemm_tn_add_terms<double>(4, 4, &t, 1, cc.data(), 4, 1);
  }, cc);
  t.k = 2, t.lda = 3;
  expect_invalid("gemm_tn_add_terms: lda < m", [&] {
    gemm_tn_add_terms<double>(4, 4, &t, 1, cc.data(), 4, 1);
  }, cc);
}

void check(const std::function<void(Case&)>& make) {
  Case c;
  make(c);
  run_case(c);
}

}  // namespace

int main() {
  sink_cases();
  check([](Case& c) { make_lstm(c, false, {3, 2, 0}); });
  check([](Case& c) { make_lstm(c, true, {2, 3, 1}); });
  check([](Case& c) { make_lstm(c, false, {3, 2, 0}, 2, false); });  // P < H = 4
  check([](Case& c) { make_lstm(c, true, {2, 3, 1}, 2, true); });
  check([](Case& c) { make_lstm(c, false, {1, 3, 2}, 3, true); });   // P = H - 1
  check([](Case& c) { make_lstm(c, true, {3, 0, 2}, 1, false); });
  check([](Case& c) { make_gru(c, GruVariant::reset_after, false, {3, 1, 0}); });
  check([](Case& c) { make_gru(c, GruVariant::reset_before, false, {2, 1, 2}); });  // max len < T
  check([](Case& c) { make_gru(c, GruVariant::reset_before, true, {3, 2, 0}); });
  check([](Case& c) { make_rnn(c, Nonlinearity::tanh, true, {3, 1, 2}, 31); });
  check([](Case& c) {  // reseed until every relu pre-activation is >= 0.01 away from the kink
    std::uint64_t seed = 41;
    do make_rnn(c, Nonlinearity::relu, false, {3, 2, 0}, seed++);
    while (rnn_min_abs_preact(c) < 1e-2 && seed < 141);
    const double m = rnn_min_abs_preact(c);
    report(m >= 1e-2, "rnn relu: min |pre-activation| >= 0.01", "min " + std::to_string(m));
  });

  // Options::weights_packed (the forward workspace keeps the packed weights between calls).
  {
    Case l, g, r;
    make_lstm(l, true, {2, 3, 1}, 2, true);
    check_weights_packed(l, lstm_forward_workspace_size(l.d), [&l](const Options& o, double* ws) {
      lstm_forward(l.d, lstm_forward_args(l, nullptr), o, ws);
    });
    for (GruVariant var : {GruVariant::reset_after, GruVariant::reset_before}) {
      make_gru(g, var, false, {3, 1, 2});
      check_weights_packed(g, gru_forward_workspace_size(g.d),
                           [&g, var](const Options& o, double* ws) {
        GruForwardArgs<double> a = single_forward_args<GruForwardArgs<double>>(g, nullptr);
        a.variant = var;
        gru_forward(g.d, a, o, ws);
      });
    }
    make_rnn(r, Nonlinearity::tanh, false, {3, 2, 1}, 31);
    check_weights_packed(r, rnn_forward_workspace_size(r.d), [&r](const Options& o, double* ws) {
      rnn_forward(r.d, single_forward_args<RnnForwardArgs<double>>(r, nullptr), o, ws);
    });
  }

  // Options::weights_packed in backward (the backward workspace keeps the packed weights).
  {
    Case l, g, r;
    make_lstm(l, true, {2, 3, 1}, 2, true);
    check_backward_weights_packed(l, lstm_backward_workspace_size(l.d),
                                  [&l](const Options& o, double* ws) {
      lstm_backward(l.d, lstm_backward_args(l), o, ws);
    });
    for (GruVariant var : {GruVariant::reset_after, GruVariant::reset_before}) {
      make_gru(g, var, false, {3, 1, 2});
      check_backward_weights_packed(g, gru_backward_workspace_size(g.d),
                                    [&g, var](const Options& o, double* ws) {
        GruBackwardArgs<double> a = single_backward_args<GruBackwardArgs<double>>(g);
        a.variant = var;
        gru_backward(g.d, a, o, ws);
      });
    }
    make_rnn(r, Nonlinearity::tanh, false, {3, 2, 1}, 31);
    check_backward_weights_packed(r, rnn_backward_workspace_size(r.d),
                                  [&r](const Options& o, double* ws) {
      rnn_backward(r.d, single_backward_args<RnnBackwardArgs<double>>(r), o, ws);
    });
  }

  // Invalid arguments must throw std::invalid_argument before writing any output.
  Case c, g, r;
  make_lstm(c, false, {3, 2, 0});
  std::fill(c.y.begin(), c.y.end(), 5.0);
  c.lengths[0] = c.d.T + 1;
  expect_invalid("lstm_forward lengths[0] = T+1 throws", [&c] { c.forward(c.cache.data()); }, c.y);
  c.lengths[0] = -1;
  expect_invalid("lstm_forward lengths[0] = -1 throws", [&c] { c.forward(c.cache.data()); }, c.y);
  c.lengths[0] = 3;
  c.at("x").v.clear();  // Case::v() gives null for an empty tensor
  expect_invalid("lstm_backward x = null throws", [&c] { c.backward(); }, c.at("w_ih").g);
  make_gru(g, GruVariant::reset_after, false, {3, 1, 0});
  std::fill(g.y.begin(), g.y.end(), 5.0);
  g.at("x").v.clear();
  expect_invalid("gru_forward x = null throws", [&g] { g.forward(g.cache.data()); }, g.y);
  make_rnn(r, Nonlinearity::tanh, false, {3, 1, 0}, 31);
  r.d.H = 0;
  expect_invalid("rnn_backward H = 0 throws", [&r] { r.backward(); }, r.at("x").g);

  // Projection: w_hr must be given exactly when P > 0; P >= 0; GRU and RNN require P = 0.
  Case p, q, g2, r2;
  make_lstm(p, false, {3, 2, 0}, 2, true);
  std::fill(p.y.begin(), p.y.end(), 5.0);
  p.forward(p.cache.data());  // a valid cache for the backward checks below
  std::fill(p.y.begin(), p.y.end(), 5.0);
  p.d.P = -1;
  expect_invalid("lstm_forward P = -1 throws", [&p] { p.forward(p.cache.data()); }, p.y);
  expect_invalid("lstm_backward P = -1 throws", [&p] { p.backward(); }, p.at("w_ih").g);
  for (std::int64_t P : {p.d.H, p.d.H + 1}) {  // PyTorch's rule, the kernel's: P < H
    p.d.P = P;
    expect_invalid("lstm_forward P = " + std::to_string(P) + " >= H throws",
                   [&p] { p.forward(p.cache.data()); }, p.y);
    expect_invalid("lstm_backward P >= H throws", [&p] { p.backward(); }, p.at("w_ih").g);
  }
  p.d.P = 0;  // w_hr given, P = 0
  expect_invalid("lstm_forward w_hr given, P = 0 throws", [&p] { p.forward(p.cache.data()); },
                 p.y);
  expect_invalid("lstm_backward w_hr given, P = 0 throws", [&p] { p.backward(); },
                 p.at("w_hr").g);
  p.d.P = 2;
  const Vec w_hr = p.at("w_hr").v;
  p.at("w_hr").v.clear();  // P = 2, w_hr null
  expect_invalid("lstm_forward P > 0, w_hr null throws", [&p] { p.forward(p.cache.data()); },
                 p.y);
  expect_invalid("lstm_backward P > 0, w_hr null throws", [&p] { p.backward(); },
                 p.at("w_ih").g);
  p.at("w_hr").v = w_hr;
  make_lstm(q, false, {3, 2, 0});  // no projection; a dw_hr buffer given anyway
  q.forward(q.cache.data());
  Vec dw_hr(2 * q.d.H, 0.0);
  expect_invalid("lstm_backward dw_hr given, P = 0 throws", [&q, &dw_hr] {
    Vec ws(lstm_backward_workspace_size(q.d), kJunk);
    LstmBackwardArgs<double> a = lstm_backward_args(q);
    a.w_hr = nullptr;
    a.dw_hr = dw_hr.data();
    lstm_backward(q.d, a, q.opt, ws.data());
  }, dw_hr);
  make_gru(g2, GruVariant::reset_before, false, {3, 1, 0});
  std::fill(g2.y.begin(), g2.y.end(), 5.0);
  g2.d.P = 1;
  expect_invalid("gru_forward P = 1 throws", [&g2] { g2.forward(g2.cache.data()); }, g2.y);
  make_rnn(r2, Nonlinearity::relu, true, {3, 1, 0}, 31);
  std::fill(r2.y.begin(), r2.y.end(), 5.0);
  r2.d.P = 1;
  expect_invalid("rnn_forward P = 1 throws", [&r2] { r2.forward(r2.cache.data()); }, r2.y);
  expect_invalid("rnn_backward P = 1 throws", [&r2] { r2.backward(); }, r2.at("w_ih").g);

  // reference_gemm (the benchmark's GEMM peak) computes c = a b, in both dtypes, on 1 and 3
  // threads (more threads than columns), against a plain loop in double.
  {
    const std::int64_t m = 5, k = 7, n = 2;
    Vec a(m * k), b(k * n), want(m * n, 0.0);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = std::sin(1.0 + double(i));
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = std::cos(2.0 + double(i));
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j)
        for (std::int64_t q = 0; q < k; ++q) want[i * n + j] += a[i * k + q] * b[q * n + j];
    for (int threads : {1, 3}) {
      Vec c(m * n, kJunk);
      reference_gemm<double>(m, n, k, a.data(), b.data(), c.data(), threads);
      std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end()), cf(m * n, 0.f);
      reference_gemm<float>(m, n, k, af.data(), bf.data(), cf.data(), threads);
      double e64 = 0, e32 = 0;
      for (std::int64_t i = 0; i < m * n; ++i) {
        e64 = std::max(e64, std::abs(c[i] - want[i]));
        e32 = std::max(e32, std::abs(double(cf[i]) - want[i]));
      }
      report_err("reference_gemm double, " + std::to_string(threads) + " thread(s)", e64, 1e-14);
      report_err("reference_gemm float, " + std::to_string(threads) + " thread(s)", e32, 1e-5);
    }
    Vec c(m * n, 5.0);
    expect_invalid("reference_gemm m = 0 throws", [&] {
      reference_gemm<double>(0, n, k, a.data(), b.data(), c.data(), 1);
    }, c);
  }

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
