// Real-time inference: a dense-input model (e.g. the sine-predicting GRU of
// tests/cpp/make_fixtures.py) runs on a signal one sample at a time through a fusedrnn::Stream,
// as it would inside an audio or control callback: no allocation, no threads, no exceptions per
// step. Prints a few predictions, the prediction error, and the per-step latency.
//
//   stream CHECKPOINT [STEPS]
//
// STEPS: an integer in [1, 10^7] (default 5000; every step's latency is kept for the
// percentiles, 8 bytes a step). Exit status 2 for a malformed or out-of-range STEPS or a
// token-input checkpoint, 1 when the checkpoint cannot be loaded or streamed.
//
// The signal is sin(0.1 t) on every input feature; the model's first output is read as its
// prediction of the next sample.
#include <fusedrnn/model.h>
#include <fusedrnn/stream.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <vector>

namespace {

constexpr long kMaxSteps = 10000000;

// STEPS in full: atol read "abc" as 0, "1e3" as 1 and "-5" as -5 (then clamped to 1 step).
bool parse_steps(const char* s, long& out) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s, &end, 10);
  if (!(*s >= '0' && *s <= '9') || *end != '\0' || errno == ERANGE || v < 1 || v > kMaxSteps)
    return false;
  out = v;
  return true;
}

template <typename Scalar>
int run(const fusedrnn::Model& model, long steps) {
  fusedrnn::Stream<Scalar> stream(model);  // batch 1, state zero; weights packed here, once
  const std::int64_t C = stream.input_size(), O = stream.output_size();
  std::vector<Scalar> x(static_cast<std::size_t>(C)), y(static_cast<std::size_t>(O));
  std::vector<double> ns(static_cast<std::size_t>(steps));
  double err = 0;
  long counted = 0;
  std::printf("    t   sample  predicted next   actual next\n");
  for (long t = 0; t < steps; ++t) {
    const double sample = std::sin(0.1 * double(t));
    std::fill(x.begin(), x.end(), Scalar(sample));
    const auto t0 = std::chrono::steady_clock::now();
    stream.step(x.data(), y.data());
    const auto t1 = std::chrono::steady_clock::now();
    ns[std::size_t(t)] = std::chrono::duration<double, std::nano>(t1 - t0).count();
    const double next = std::sin(0.1 * double(t + 1));
    if (t >= 20) {  // after a short warm-up of the state
      err += std::abs(double(y[0]) - next);
      ++counted;
    }
    if (t < 5 || (t % (steps / 5 + 1) == 0))
      std::printf("%5ld %8.4f %17.4f %13.4f\n", t, sample, double(y[0]), next);
  }
  std::sort(ns.begin(), ns.end());
  auto pct = [&](double q) { return ns[std::min(ns.size() - 1, std::size_t(q * double(ns.size())))]; };
  const fusedrnn::ModelConfig& c = model.config();
  std::printf("mean |prediction - next sample| over steps 20..%ld: %.4f\n", steps - 1,
              counted ? err / double(counted) : 0.0);
  std::printf("per-step latency (%s, %s, H=%lld, %lld layer(s), kernels %s): median %.2f us, "
              "p99 %.2f us, max %.2f us over %ld steps\n",
              c.cell == fusedrnn::CellType::lstm  ? "LSTM"
              : c.cell == fusedrnn::CellType::gru ? "GRU"
                                                  : "RNN",
              fusedrnn::dtype_name(c.dtype), (long long)c.hidden_size, (long long)c.num_layers,
              fusedrnn::build_info().instruction_set.c_str(), pct(0.5) / 1e3, pct(0.99) / 1e3,
              ns.back() / 1e3, steps);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s CHECKPOINT [STEPS]\n", argv[0]);
    return 2;
  }
  long steps = 5000;
  if (argc > 2 && !parse_steps(argv[2], steps)) {
    std::fprintf(stderr, "stream: STEPS must be an integer in [1, %ld], not '%s'\n", kMaxSteps,
                 argv[2]);
    return 2;
  }
  try {
    const fusedrnn::Model model = fusedrnn::Model::load(argv[1]);
    if (model.config().token_input()) {
      std::fprintf(stderr, "stream: %s takes token ids; this example feeds a signal\n", argv[1]);
      return 2;
    }
    if (model.config().num_directions() == 2) {
      std::fprintf(stderr, "stream: %s is bidirectional: a stream runs forward in time only\n",
                   argv[1]);
      return 2;
    }
    if (model.dtype() == fusedrnn::DType::f64) return run<double>(model, steps);
    return run<float>(model, steps);
  } catch (const std::exception& e) {  // CheckpointError, ConfigError, ...
    std::fprintf(stderr, "stream: %s\n", e.what());
    return 1;
  }
}
