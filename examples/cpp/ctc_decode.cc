// CTC recognition in C++: a checkpoint of `fusedrnn train --task recognise` (a CtcRecognizer:
// frames -> bidirectional LSTM/GRU -> K class scores, blank 0) decodes feature sequences with
// Model::ctc_greedy_decode, the same labels as Python's fusedrnn.ctc.ctc_greedy_decode.
//
//   ctc_decode CHECKPOINT FEATURES [BLANK]
//
// FEATURES: a safetensors file (fusedrnn.io.save_tensors) with "x" [T, N, F] float32 or
// float64 (the checkpoint's dtype; time-major, zero-padded) and optionally "lengths" [N] int64
// (frames per utterance, each in [0, T]; all T without it). With "labels" (int64, 1-D) and
// "label_counts" [N] int64 (counts >= 0 summing to the number of labels: a reference, e.g.
// tests/cpp/make_fixtures.py's ctc_recognise.io.safetensors) it also prints whether each
// utterance decodes to it. Labels print as ids (1..K-1 for the recognise task's digits 0..9).
// BLANK: the blank's class id, an integer in [0, K) (default 0).
//
// Exit status: 0 when done (and every utterance equals its reference), 1 when one differs or
// the checkpoint / features file cannot be read, 2 for arguments or tensors of the wrong form
// (a message names which and what it needs; checked before any decoding).
#include <fusedrnn/model.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

namespace {

// numpy's name of a dtype (as the features file was written), safetensors' for the rest.
const char* numpy_name(fusedrnn::DType d) {
  switch (d) {
    case fusedrnn::DType::f32: return "float32";
    case fusedrnn::DType::f64: return "float64";
    case fusedrnn::DType::i32: return "int32";
    case fusedrnn::DType::i64: return "int64";
    default: return fusedrnn::dtype_name(d);
  }
}

// "[d0, d1, ...] dtype" for error messages.
std::string describe(const fusedrnn::TensorInfo& t) {
  std::string s = "[";
  for (std::size_t i = 0; i < t.shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "] " + numpy_name(t.dtype);
}

template <typename Scalar>
int run(const fusedrnn::Model& model, const fusedrnn::TensorFile& io, std::int64_t blank) {
  const char* dtype = numpy_name(fusedrnn::dtype_of<Scalar>());
  const fusedrnn::TensorInfo* xi = io.find("x");
  if (!xi || xi->shape.size() != 3 || xi->shape[0] < 1 || xi->shape[1] < 1 ||
      xi->shape[2] != model.config().input_size || xi->dtype != fusedrnn::dtype_of<Scalar>()) {
    std::fprintf(stderr, "ctc_decode: FEATURES needs \"x\" [T, N, %lld] %s (T, N >= 1; the "
                 "checkpoint's dtype), not %s\n", (long long)model.config().input_size, dtype,
                 xi ? describe(*xi).c_str() : "absent");
    return 2;
  }
  const std::int64_t T = xi->shape[0], N = xi->shape[1];
  // Every other tensor is checked against N (and T) here, before anything is read through it:
  // the decoder and the comparison below index them by utterance with no bounds of their own.
  const fusedrnn::TensorInfo* li = io.find("lengths");
  if (li && (li->shape != std::vector<std::int64_t>{N} || li->dtype != fusedrnn::DType::i64)) {
    std::fprintf(stderr, "ctc_decode: FEATURES \"lengths\" must be [%lld] int64 (one per "
                 "utterance of \"x\" [%lld, %lld, %lld]), not %s\n", (long long)N,
                 (long long)T, (long long)N, (long long)xi->shape[2], describe(*li).c_str());
    return 2;
  }
  std::vector<std::int64_t> lengths(std::size_t(N), T);
  if (li) lengths = io.read<std::int64_t>("lengths");
  for (std::int64_t n = 0; n < N; ++n)
    if (lengths[std::size_t(n)] < 0 || lengths[std::size_t(n)] > T) {
      std::fprintf(stderr, "ctc_decode: FEATURES \"lengths\"[%lld] = %lld is outside [0, T = "
                   "%lld]\n", (long long)n, (long long)lengths[std::size_t(n)], (long long)T);
      return 2;
    }
  const fusedrnn::TensorInfo* ri = io.find("labels");
  const fusedrnn::TensorInfo* ci = io.find("label_counts");
  std::vector<std::int64_t> ref, counts;
  if (ri || ci) {
    if (!ri || !ci) {
      std::fprintf(stderr, "ctc_decode: FEATURES has \"%s\" without \"%s\" (the reference "
                   "needs both)\n", ri ? "labels" : "label_counts",
                   ri ? "label_counts" : "labels");
      return 2;
    }
    if (ri->shape.size() != 1 || ri->dtype != fusedrnn::DType::i64) {
      std::fprintf(stderr, "ctc_decode: FEATURES \"labels\" must be 1-D int64, not %s\n",
                   describe(*ri).c_str());
      return 2;
    }
    if (ci->shape != std::vector<std::int64_t>{N} || ci->dtype != fusedrnn::DType::i64) {
      std::fprintf(stderr, "ctc_decode: FEATURES \"label_counts\" must be [%lld] int64 (one per "
                   "utterance), not %s\n", (long long)N, describe(*ci).c_str());
      return 2;
    }
    ref = io.read<std::int64_t>("labels");
    counts = io.read<std::int64_t>("label_counts");
    std::int64_t total = 0;
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int64_t c = counts[std::size_t(n)];
      if (c < 0 || c > ri->shape[0] - total) {  // never overflows: total <= labels here
        std::fprintf(stderr, "ctc_decode: FEATURES \"label_counts\" must be >= 0 and sum to "
                     "the %lld \"labels\"; [%lld] = %lld %s\n", (long long)ri->shape[0],
                     (long long)n, (long long)c, c < 0 ? "is negative" : "runs past them");
        return 2;
      }
      total += c;
    }
    if (total != ri->shape[0]) {
      std::fprintf(stderr, "ctc_decode: FEATURES \"label_counts\" sum to %lld, not the %lld "
                   "\"labels\"\n", (long long)total, (long long)ri->shape[0]);
      return 2;
    }
  }
  const std::vector<Scalar> x = io.read<Scalar>("x");
  const auto decoded = model.ctc_greedy_decode<Scalar>(T, N, x.data(), lengths.data(), blank);
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
  if (argc < 3 || argc > 4) {
    std::fprintf(stderr, "usage: %s CHECKPOINT FEATURES [BLANK]\n", argv[0]);
    return 2;
  }
  // BLANK in full (atoll read "abc" as 0 and "1x" as 1); its range once the model is known.
  std::int64_t blank = 0;
  if (argc > 3) {
    const char* s = argv[3];
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(s, &end, 10);
    if (!(*s >= '0' && *s <= '9') || *end != '\0' || errno == ERANGE) {
      std::fprintf(stderr, "ctc_decode: BLANK must be a class id (an integer >= 0), not '%s'\n",
                   s);
      return 2;
    }
    blank = v;
  }
  try {
    const fusedrnn::Model model = fusedrnn::Model::load(argv[1]);
    if (model.config().token_input()) {
      std::fprintf(stderr, "ctc_decode: %s takes token ids; this example decodes feature "
                   "frames (a recognise checkpoint: fusedrnn train --task recognise)\n", argv[1]);
      return 2;
    }
    if (blank >= model.output_size()) {
      std::fprintf(stderr, "ctc_decode: BLANK %lld is not a class of %s (0..%lld)\n",
                   (long long)blank, argv[1], (long long)model.output_size() - 1);
      return 2;
    }
    const fusedrnn::TensorFile io = fusedrnn::TensorFile::load(argv[2]);
    std::printf("%s: %s, %lld classes (blank %lld)\n", argv[1], model.config().type.c_str(),
                (long long)model.output_size(), (long long)blank);
    return model.dtype() == fusedrnn::DType::f64 ? run<double>(model, io, blank)
                                                 : run<float>(model, io, blank);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ctc_decode: %s\n", e.what());
    return 1;
  }
}
