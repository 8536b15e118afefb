// Consumer of an installed fusedrnn: the kernel API over raw pointers, and the Model / Stream
// API on a checkpoint written by the Python package (argument 1, e.g. a fixture of
// tests/cpp/make_fixtures.py). Exits non-zero if anything disagrees.
#include <fusedrnn/config.h>
#include <fusedrnn/fusedrnn.h>
#include <fusedrnn/model.h>
#include <fusedrnn/stream.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  const fusedrnn::BuildInfo info = fusedrnn::build_info();
  std::printf("fusedrnn %s (header %s), kernels %s\n", info.version.c_str(),
              FUSEDRNN_VERSION_STRING, info.instruction_set.c_str());
  if (info.version != FUSEDRNN_VERSION_STRING) return 1;

  // Kernel API: one GRU layer, T=4, N=2, C=3, H=5, caller-owned memory.
  const fusedrnn::Dims d{4, 2, 3, 5};
  std::vector<float> x(4 * 2 * 3, 0.5f), w_ih(15 * 3, 0.1f), w_hh(15 * 5, -0.1f);
  std::vector<float> y(4 * 2 * 5), h_n(2 * 5), ws(fusedrnn::gru_forward_workspace_size(d));
  fusedrnn::GruForwardArgs<float> args;  // optional tensors (biases, h0, lengths) left null
  args.variant = fusedrnn::GruVariant::reset_after;
  args.x = x.data(), args.w_ih = w_ih.data(), args.w_hh = w_hh.data();
  args.y = y.data(), args.h_n = h_n.data();
  fusedrnn::gru_forward<float>(d, args, {}, ws.data());
  std::printf("gru_forward: h_n[0] = %.6f\n", h_n[0]);
  if (!(std::abs(h_n[0]) > 0 && h_n[0] == y[3 * 2 * 5])) return 1;

  // Errors are typed: a missing file is a CheckpointError.
  try {
    fusedrnn::Model::load("/nonexistent.safetensors");
    return 1;
  } catch (const fusedrnn::CheckpointError& e) {
    std::printf("CheckpointError: %s\n", e.what());
  }
  if (argc < 2) return 0;

  // Model API: load a checkpoint trained in Python, run a batch, then stream the same input.
  const fusedrnn::Model model = fusedrnn::Model::load(argv[1]);
  const fusedrnn::ModelConfig& c = model.config();
  std::printf("model: %s, hidden %lld, %lld layer(s), output %lld, metadata %s\n",
              c.type.c_str(), (long long)c.hidden_size, (long long)c.num_layers,
              (long long)model.output_size(), model.metadata_json().c_str());
  if (c.dtype != fusedrnn::DType::f32 || c.token_input() || c.bidirectional) return 1;
  const std::int64_t T = 20, N = 1, C = c.input_size, O = model.output_size();
  std::vector<float> xs(T * C), ys(T * O), yt(O);
  for (std::int64_t i = 0; i < T * C; ++i) xs[i] = std::sin(0.1f * float(i));
  model.forward<float>(T, N, xs.data(), nullptr, nullptr, nullptr, ys.data(), nullptr, nullptr);
  fusedrnn::Stream<float> stream(model);
  for (std::int64_t t = 0; t < T; ++t) {
    stream.step(xs.data() + t * C, yt.data());
    for (std::int64_t o = 0; o < O; ++o)
      if (yt[o] != ys[t * O + o]) return 1;
  }
  std::printf("Model::forward and Stream agree over %lld steps; y[T-1] = %.6f\n", (long long)T,
              ys[(T - 1) * O]);
  return 0;
}
