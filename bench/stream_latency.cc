// Per-step latency of fusedrnn::Stream: one LSTM or GRU layer (a bare layer checkpoint with
// random weights, input size = H), batch 1, one thread, for H = 32, 64, 128, float32 and
// float64. For comparison, the per-step cost of the batch API on a long sequence (Model::forward,
// T = 1000, amortised) and of calling it one step at a time (T = 1, which re-packs the weights
// every call).
//
//   stream_latency [steps]      (default 20000 timed steps per configuration)
#include <fusedrnn/fusedrnn.h>
#include <fusedrnn/model.h>
#include <fusedrnn/stream.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "checkpoint_writer.h"

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

}  // namespace

int main(int argc, char** argv) {
  const long steps = argc > 1 ? std::max(100L, std::atol(argv[1])) : 20000;
  const fusedrnn::BuildInfo b = fusedrnn::build_info();
  std::printf("fusedrnn %s, kernels %s, %s; %ld timed steps each, batch 1, one thread\n\n",
              b.version.c_str(), b.instruction_set.c_str(), b.compiler.c_str(), steps);
  std::printf("| cell | H (= input) | dtype | Stream::step median us | p99 us | "
              "Model::forward T=1000, per step us | Model::forward T=1, per call us |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const char* cell : {"lstm", "gru"})
    for (std::int64_t H : {32, 64, 128}) bench<float>(cell, H, steps);
  for (const char* cell : {"lstm", "gru"})
    for (std::int64_t H : {32, 64, 128}) bench<double>(cell, H, steps);
  return 0;
}
