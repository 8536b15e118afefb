// Per-step latency of fusedrnn::Stream: one LSTM or GRU layer (a bare layer checkpoint with
// random weights, input size = H), batch 1, one thread, for H = 32, 64, 128, float32 and
// float64. For comparison, the per-step cost of the batch API on a long sequence (Model::forward,
// T = 1000, amortised) and of calling it one step at a time (T = 1, which re-packs the weights
// every call).
//
//
// Then the real-time table: fusedrnn's Stream at batch 1, float32, input width 1 and H, against
// RTNeural (its Eigen and xsimd backends, compile-time ModelT API) when built with
// -DFUSEDRNN_RTNEURAL_DIR=<an RTNeural checkout> (README: C++ benchmark). Same weights in every
// contender (outputs compared, the largest difference printed). The contenders are
// interleaved block by block (and call by call), so a load change hits them alike:
//   block:  blocks of 100 steps, ns per step = block time / 100: Stream::process(x, y, 100), a
//           loop of 100 Stream::step calls, the same two with StreamOptions::fast, RTNeural's
//           forward in a loop of 100 (inlined);
//   single: every call timed on its own (Stream::step bitwise and fast, RTNeural forward +
//           output copy); these
//           include the clock's own cost, printed beside them.
// Median and p99 over the blocks (calls).
//
//   stream_latency [steps] [peer_steps] [--rt-only] [--ftz] [--rows=ROWS]   (defaults 20000 and
//   50000 timed steps per configuration, each an integer in [100, 10^7]; the flags may stand
//   anywhere, before or after the numbers; --rt-only: the real-time table only; --ftz: the whole
//   run with subnormals flushed on the thread (MXCSR FTZ and DAZ), every contender alike;
//   --rows: only these rows of the real-time table, e.g. --rows=lstm:32:1,gru:128:128: cell
//   lstm or gru, H 16, 32, 64 or 128, input 1 or H). Exit status 2 for an unknown flag, a
//   malformed or out-of-range number or a row that is not in the table; 1 when a run fails
//   (e.g. FUSEDRNN_ISA naming a kernel copy this machine cannot run).
#include <fusedrnn/fusedrnn.h>
#include <fusedrnn/model.h>
#include <fusedrnn/stream.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint_writer.h"
#ifdef FUSEDRNN_WITH_RTNEURAL
#include "rtneural_peer.h"
#endif

namespace {

using Clock = std::chrono::steady_clock;

double ns_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
}

template <typename Scalar>
void bench(const char* cell, std::int64_t H, long steps) {
  testutil::Spec s;
  s.cell = cell, s.bare = true, s.input_size = H, s.hidden_size = H, s.float64 = sizeof(Scalar) == 8;
  const auto bytes = testutil::make_checkpoint(s, 7);
  const fusedrnn::Model model = fusedrnn::Model::from_bytes(bytes.data(), bytes.size());
  fusedrnn::Stream<Scalar> stream(model);
  std::mt19937_64 rng(1);
  const auto xs = testutil::uniform<Scalar>(rng, std::size_t(1000 * H), 1.0);
  std::vector<Scalar> y(static_cast<std::size_t>(H));
  for (long t = 0; t < 2000; ++t) stream.step(xs.data() + (t % 1000) * H, y.data());  // warm-up
  std::vector<double> ns(static_cast<std::size_t>(steps));
  for (long t = 0; t < steps; ++t) {
    const auto t0 = Clock::now();
    stream.step(xs.data() + (t % 1000) * H, y.data());
    ns[std::size_t(t)] = ns_since(t0);
  }
  std::sort(ns.begin(), ns.end());
  const double med = ns[ns.size() / 2], p99 = ns[std::size_t(0.99 * double(ns.size()))];

  // Batch API: T = 1000 amortised, and T = 1 per call.
  fusedrnn::Context ctx(1);
  std::vector<Scalar> yb(std::size_t(1000 * H));
  double best_batch = 1e30;
  for (int r = 0; r < 7; ++r) {
    const auto t0 = Clock::now();
    model.forward<Scalar>(1000, 1, xs.data(), nullptr, nullptr, nullptr, yb.data(), nullptr,
                          nullptr, &ctx);
    best_batch = std::min(best_batch, ns_since(t0) / 1000);
  }
  std::vector<double> one(2000);
  for (std::size_t t = 0; t < one.size(); ++t) {
    const auto t0 = Clock::now();
    model.forward<Scalar>(1, 1, xs.data() + (t % 1000) * H, nullptr, nullptr, nullptr, yb.data(),
                          nullptr, nullptr, &ctx);
    one[t] = ns_since(t0);
  }
  std::sort(one.begin(), one.end());
  std::printf("| %s | %lld | %s | %.2f | %.2f | %.2f | %.2f |\n", cell[0] == 'l' ? "LSTM" : "GRU",
              (long long)H, sizeof(Scalar) == 4 ? "float32" : "float64", med / 1e3, p99 / 1e3,
              best_batch / 1e3, one[one.size() / 2] / 1e3);
}

struct Stats {
  double med = 0, p99 = 0;
};
Stats stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v[std::min(v.size() - 1, std::size_t(0.99 * double(v.size())))]};
}

// The real-time table: one row per cell, H, input width.
void peer_row(const char* cell, std::int64_t H, std::int64_t C, long steps) {
  testutil::Spec sp;
  sp.cell = cell, sp.bare = true, sp.input_size = C, sp.hidden_size = H;
  const auto bytes = testutil::make_checkpoint(sp, 11);
  const fusedrnn::Model model = fusedrnn::Model::from_bytes(bytes.data(), bytes.size());
  fusedrnn::Stream<float> stream(model);
  fusedrnn::StreamOptions fo;
  fo.fast = true;
  fusedrnn::Stream<float> fstream(model, 1, fo);  // StreamOptions::fast
  constexpr long B = 100;  // steps per block
  const long T = 1000;     // distinct inputs, cycled
  std::mt19937_64 rng(3);
  // Inputs 64-byte aligned (RTNeural's ModelT loads its input with aligned loads).
  const auto x0 = testutil::uniform<float>(rng, std::size_t(T * C), 1.0);
  std::vector<float> xstore(x0.size() + 16);
  float* xs_p = reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(xstore.data()) + 63) &
                                         ~std::uintptr_t(63));
  std::copy(x0.begin(), x0.end(), xs_p);
  struct {
    float* p;
    float* data() const { return p; }
  } xs{xs_p};
  std::vector<float> y(std::size_t(T * H)), ys(std::size_t(T * H));

  std::vector<std::pair<std::string, std::function<void(const float*, float*, long)>>> run;
  run.emplace_back("process", [&](const float* x, float* yy, long n) { stream.process(x, yy, n); });
  run.emplace_back("step", [&](const float* x, float* yy, long n) {
    for (long t = 0; t < n; ++t) stream.step(x + t * C, yy + t * H);
  });
  run.emplace_back("process fast",
                   [&](const float* x, float* yy, long n) { fstream.process(x, yy, n); });
  run.emplace_back("step fast", [&](const float* x, float* yy, long n) {
    for (long t = 0; t < n; ++t) fstream.step(x + t * C, yy + t * H);
  });
  // Single-call timing: every contender but the process() ones.
  auto single = [&](std::size_t j) { return run[j].first.rfind("process", 0) != 0; };
  double diff = 0, diff_fast = 0;
  {  // the fast Stream against the bitwise one: 1000 steps from zero state
    stream.reset();
    stream.process(xs.data(), ys.data(), T);
    fstream.reset();
    fstream.process(xs.data(), y.data(), T);
    for (std::size_t j = 0; j < y.size(); ++j)
      diff_fast = std::max(diff_fast, double(std::abs(y[j] - ys[j])));
  }
#ifdef FUSEDRNN_WITH_RTNEURAL
  const float* w_ih = model.parameter("weight_ih_l0").as<float>();
  const float* w_hh = model.parameter("weight_hh_l0").as<float>();
  const float* b_ih = model.parameter("bias_ih_l0").as<float>();
  const float* b_hh = model.parameter("bias_hh_l0").as<float>();
  std::unique_ptr<rtneural_peer::Net> peers[2] = {
      rtneural_peer::make_eigen(cell[0], int(C), int(H), w_ih, w_hh, b_ih, b_hh),
      rtneural_peer::make_xsimd(cell[0], int(C), int(H), w_ih, w_hh, b_ih, b_hh)};
  const char* names[2] = {"RTNeural Eigen", "RTNeural xsimd"};
  for (int i = 0; i < 2; ++i) {
    if (!peers[i]) continue;
    rtneural_peer::Net* net = peers[i].get();
    run.emplace_back(names[i], [net](const float* x, float* yy, long n) { net->run(x, yy, n); });
    // Same weights, same outputs (to rounding): 1000 steps from zero state.
    stream.reset();
    stream.process(xs.data(), ys.data(), T);
    net->reset();
    net->run(xs.data(), y.data(), T);
    for (std::size_t j = 0; j < y.size(); ++j) diff = std::max(diff, double(std::abs(y[j] - ys[j])));
  }
#endif
  const std::size_t K = run.size();
  for (long w = 0; w < 20; ++w)  // warm-up
    for (auto& r : run) r.second(xs.data() + (w % (T / B)) * B * C, y.data(), B);
  // Block timing, interleaved, the order rotating.
  std::vector<std::vector<double>> blk(K);
  const long nblocks = std::max(20L, steps / B);
  for (long b = 0; b < nblocks; ++b)
    for (std::size_t j = 0; j < K; ++j) {
      auto& r = run[(j + std::size_t(b)) % K];
      const float* x = xs.data() + (b % (T / B)) * B * C;
      const auto t0 = Clock::now();
      r.second(x, y.data(), B);
      blk[(j + std::size_t(b)) % K].push_back(ns_since(t0) / double(B));
    }
  // Single calls, interleaved (step vs the peers' one-step run).
  std::vector<std::vector<double>> one(K);
  std::vector<double> clock_ns;
  for (long t = 0; t < steps; ++t) {
    const float* x = xs.data() + (t % T) * C;
    for (std::size_t j = 0; j < K; ++j) {
      if (!single(j)) continue;
      const auto t0 = Clock::now();
      run[j].second(x, y.data(), 1);
      one[j].push_back(ns_since(t0));
    }
    const auto t0 = Clock::now();
    clock_ns.push_back(ns_since(t0));
  }
  const Stats c = stats(clock_ns);
  std::printf("| %s | %lld | %lld |", cell[0] == 'l' ? "LSTM" : "GRU", (long long)H,
              (long long)C);
  for (std::size_t j = 0; j < K; ++j) {
    const Stats s = stats(blk[j]);
    std::printf(" %.0f / %.0f |", s.med, s.p99);
  }
  for (std::size_t j = 0; j < K; ++j) {
    if (!single(j)) continue;
    const Stats s = stats(one[j]);
    std::printf(" %.0f / %.0f |", s.med, s.p99);
  }
#ifdef FUSEDRNN_WITH_RTNEURAL
  std::printf(" %.0f | %.1g | %.1g |\n", c.med, diff, diff_fast);
#else
  (void)diff;  // no peer to compare with: no column for it
  std::printf(" %.0f | %.1g |\n", c.med, diff_fast);
#endif
  std::fflush(stdout);
}

constexpr long kMinSteps = 100, kMaxSteps = 10000000;
const char* const kCells[] = {"lstm", "gru"};
const std::int64_t kHs[] = {16, 32, 64, 128};

// A step count in full, in [kMinSteps, kMaxSteps] (atol read "--rt-only" as 0, then 100 steps;
// a huge count ended in bad_alloc or ran for days).
bool parse_steps(const char* s, long& out) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s, &end, 10);
  if (!(*s >= '0' && *s <= '9') || *end != '\0' || errno == ERANGE || v < kMinSteps ||
      v > kMaxSteps)
    return false;
  out = v;
  return true;
}

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [steps] [peer_steps] [--rt-only] [--ftz] [--rows=cell:H:C,...]"
               "\n  steps, peer_steps: integers in [%ld, %ld]; cell lstm or gru, H 16, 32, 64 "
               "or 128, C 1 or H\n", argv0, kMinSteps, kMaxSteps);
  return 2;
}

int run(long steps, long peer_steps, bool rt_only, bool ftz, const std::string& rows) {
  // --ftz: the thread flushes subnormals (x86: MXCSR FTZ and DAZ) for the whole run, as audio
  // hosts commonly do around their callbacks (fusedrnn::ScopedFlushDenormals); every contender
  // runs under it alike. Stream::step then leaves the floating-point environment alone (it only
  // switches it when the flags are off).
  std::optional<fusedrnn::ScopedFlushDenormals> flush;
  if (ftz) flush.emplace();
#if !defined(__x86_64__) && !defined(__i386__)
  if (ftz) std::printf("--ftz: no effect on this architecture\n");
#endif
  const fusedrnn::BuildInfo b = fusedrnn::build_info();
  std::printf("fusedrnn %s, kernels %s, %s; %ld timed steps each, batch 1, one thread%s\n\n",
              b.version.c_str(), b.instruction_set.c_str(), b.compiler.c_str(), steps,
              ftz ? ", subnormals flushed (--ftz)" : "");
  if (!rt_only) {
  std::printf("| cell | H (= input) | dtype | Stream::step median us | p99 us | "
              "Model::forward T=1000, per step us | Model::forward T=1, per call us |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const char* cell : {"lstm", "gru"})
    for (std::int64_t H : {32, 64, 128}) bench<float>(cell, H, steps);
  for (const char* cell : {"lstm", "gru"})
    for (std::int64_t H : {32, 64, 128}) bench<double>(cell, H, steps);
  }
  std::printf("\nReal time, batch 1, float32, ns per step, median / p99 (%ld steps each; "
              "block: blocks of 100 steps; single: each call timed, the clock's cost included)"
              "\n\n", peer_steps);
#ifdef FUSEDRNN_WITH_RTNEURAL
  std::printf("| cell | H | input | block: process | block: step | block: process fast | "
              "block: step fast | block: RTNeural Eigen | block: RTNeural xsimd | single: step | "
              "single: step fast | single: RTNeural Eigen | single: RTNeural xsimd | clock ns | "
              "max abs diff RTNeural | max abs diff fast |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
#else
  std::printf("| cell | H | input | block: process | block: step | block: process fast | "
              "block: step fast | single: step | single: step fast | clock ns | "
              "max abs diff fast |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
#endif
  for (const char* cell : kCells)
    for (std::int64_t H : kHs)
      for (std::int64_t C : {std::int64_t(1), H})
        if (rows.empty() || rows.find("," + std::string(cell) + ":" + std::to_string(H) + ":" +
                                      std::to_string(C) + ",") != std::string::npos)
          peer_row(cell, H, C, peer_steps);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Flags anywhere, the numbers in order among them (README: `stream_latency 2000 20000
  // --rt-only`, and `stream_latency --rt-only` with the default counts).
  long counts[2] = {20000, 50000};
  int npos = 0;
  bool rt_only = false, ftz = false;
  std::string rows;  // --rows=cell:H:C,...: empty = every row
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--rt-only") {
      rt_only = true;
    } else if (a == "--ftz") {
      ftz = true;
    } else if (a.rfind("--rows=", 0) == 0) {
      rows = "," + a.substr(7) + ",";
      // Each entry must be a row of the table: one matching nothing printed an empty table.
      for (std::size_t at = 1; at < rows.size();) {
        const std::size_t next = rows.find(',', at);
        const std::string want = rows.substr(at, next - at);
        bool known = false;
        for (const char* cell : kCells)
          for (std::int64_t H : kHs)
            for (std::int64_t C : {std::int64_t(1), H})
              known = known || want == std::string(cell) + ":" + std::to_string(H) + ":" +
                                           std::to_string(C);
        if (!known) {
          std::fprintf(stderr, "stream_latency: --rows: '%s' is not a row of the table "
                       "(cell:H:C, cell lstm or gru, H 16, 32, 64 or 128, C 1 or H)\n",
                       want.c_str());
          return 2;
        }
        at = next + 1;
      }
    } else if (a.rfind("-", 0) == 0 && !(a.size() > 1 && a[1] >= '0' && a[1] <= '9')) {
      std::fprintf(stderr, "stream_latency: unknown flag '%s'\n", a.c_str());
      return usage(argv[0]);
    } else if (npos == 2) {
      std::fprintf(stderr, "stream_latency: a third number '%s'\n", a.c_str());
      return usage(argv[0]);
    } else if (!parse_steps(argv[i], counts[npos++])) {
      std::fprintf(stderr, "stream_latency: %s must be an integer in [%ld, %ld], not '%s'\n",
                   npos == 1 ? "steps" : "peer_steps", kMinSteps, kMaxSteps, argv[i]);
      return 2;
    }
  }
  try {
    return run(counts[0], counts[1], rt_only, ftz, rows);
  } catch (const std::exception& e) {  // FUSEDRNN_ISA naming no usable copy, bad_alloc, ...
    std::fprintf(stderr, "stream_latency: %s\n", e.what());
    return 1;
  }
}
