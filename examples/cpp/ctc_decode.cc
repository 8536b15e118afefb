// CTC recognition in C++: a checkpoint of `fusedrnn train --task recognise` (a CtcRecognizer:
// frames -> bidirectional LSTM/GRU -> K class scores, blank 0) decodes feature sequences with
// Model::ctc_greedy_decode, the same labels as Python's fusedrnn.ctc.ctc_greedy_decode.
//
//   ctc_decode CHECKPOINT FEATURES [BLANK]
//
// FEATURES: a safetensors file (fusedrnn.io.save_tensors) with "x" [T, N, F] float32 or
// float64 (the checkpoint's dtype; time-major, zero-padded) and optionally "lengths" [N] int64
// (frames per utterance; all T without it). With "labels" / "label_counts" (a reference, e.g.
// tests/cpp/make_fixtures.py's ctc_recognise.io.safetensors) it also prints whether each
// utterance decodes to it. Labels print as ids (1..K-1 for the recognise task's digits 0..9).
#include <fusedrnn/model.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

namespace {

template <typename Scalar>
int run(const fusedrnn::Model& model, const fusedrnn::TensorFile& io, std::int64_t blank) {
  const fusedrnn::TensorInfo* xi = io.find("x");
  if (!xi || xi->shape.size() != 3 || xi->shape[2] != model.config().input_size) {
    std::fprintf(stderr, "ctc_decode: FEATURES needs \"x\" [T, N, %lld]\n",
                 (long long)model.config().input_size);
    return 2;
  }
  const std::int64_t T = xi->shape[0], N = xi->shape[1];
  const std::vector<Scalar> x = io.read<Scalar>("x");
  std::vector<std::int64_t> lengths(std::size_t(N), T);
  if (io.find("lengths")) lengths = io.read<std::int64_t>("lengths");
  const auto decoded = model.ctc_greedy_decode<Scalar>(T, N, x.data(), lengths.data(), blank);
  std::vector<std::int64_t> ref, counts;
  if (io.find("labels") && io.find("label_counts")) {
    ref = io.read<std::int64_t>("labels");
    counts = io.read<std::int64_t>("label_counts");
  }
  std::size_t at = 0;
  int mismatches = 0;
  for (std::int64_t n = 0; n < N; ++n) {
    const auto& d = decoded[std::size_t(n)];
    std::printf("utterance %lld (%lld frames):", (long long)n, (long long)lengths[std::size_t(n)]);
    for (std::int64_t v : d) std::printf(" %lld", (long long)v);
    if (!counts.empty()) {
      const std::size_t c = std::size_t(counts[std::size_t(n)]);
      const bool same = c == d.size() && std::equal(d.begin(), d.end(), ref.begin() + at);
      std::printf("   [reference: %s]", same ? "equal" : "DIFFERS");
      mismatches += !same;
      at += c;
    }
    std::printf("\n");
  }
  return mismatches ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CHECKPOINT FEATURES [BLANK]\n", argv[0]);
    return 2;
  }
  try {
    const fusedrnn::Model model = fusedrnn::Model::load(argv[1]);
    const fusedrnn::TensorFile io = fusedrnn::TensorFile::load(argv[2]);
    const std::int64_t blank = argc > 3 ? std::atoll(argv[3]) : 0;
    std::printf("%s: %s, %lld classes (blank %lld)\n", argv[1], model.config().type.c_str(),
                (long long)model.output_size(), (long long)blank);
    return model.dtype() == fusedrnn::DType::f64 ? run<double>(model, io, blank)
                                                 : run<float>(model, io, blank);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ctc_decode: %s\n", e.what());
    return 1;
  }
}
