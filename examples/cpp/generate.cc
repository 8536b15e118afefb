// Text generation with a character language model trained in Python (`fusedrnn train`, or
// tests/cpp/make_fixtures.py): a RecurrentModel with token input, output_size = vocab_size, and
// user metadata {"vocab": ["a", "b", ...]} (one character per token id, in index order).
//
//   generate CHECKPOINT [PRIME] [LENGTH] [TEMPERATURE] [SEED]
//
// Feeds PRIME (default: the first vocabulary entry) one character at a time through a
// fusedrnn::Stream, then samples LENGTH (default 200) characters from softmax(logits /
// TEMPERATURE) (default 0.8; 0 = always the most likely) with a seeded generator (default 0),
// printing PRIME followed by the generated text. LENGTH: an integer in [0, 10^9] (characters are
// printed as they are drawn); TEMPERATURE: a finite number >= 0; SEED: an integer in
// [0, 2^64 - 1]. Exit status 2 for a malformed or out-of-range argument (checked before the
// checkpoint is read), a checkpoint that is not a character language model or a prime character
// outside its vocabulary; 1 when the checkpoint cannot be loaded.
#include <fusedrnn/model.h>
#include <fusedrnn/stream.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr long kMaxLength = 1000000000;

// The numeric arguments in full (atol / atof / strtoul read "abc" as 0, took "nan" and a
// negative temperature, and wrapped seed -1 to 2^64 - 1): false for anything but a whole
// number in range.
bool parse_length(const char* s, long& out) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s, &end, 10);
  if (!(*s >= '0' && *s <= '9') || *end != '\0' || errno == ERANGE || v > kMaxLength) return false;
  out = v;
  return true;
}
bool parse_temperature(const char* s, double& out) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s, &end);
  if (!*s || *s == ' ' || *end != '\0' || errno == ERANGE || !std::isfinite(v) || !(v >= 0))
    return false;
  out = v;
  return true;
}
bool parse_seed(const char* s, std::uint64_t& out) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s, &end, 10);  // would wrap "-1": digits only
  if (!(*s >= '0' && *s <= '9') || *end != '\0' || errno == ERANGE) return false;
  out = v;
  return true;
}

// The UTF-8 characters of s (one string per code point; s is assumed valid UTF-8).
std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

template <typename Scalar>
int generate(const fusedrnn::Model& model, const std::vector<std::string>& vocab,
             const std::string& prime, long length, double temperature, std::uint64_t seed) {
  const std::int64_t V = model.output_size();
  fusedrnn::Stream<Scalar> stream(model);  // batch 1
  std::vector<Scalar> logits(static_cast<std::size_t>(V));
  std::vector<double> p(static_cast<std::size_t>(V));
  std::mt19937_64 rng(seed);
  // The prime's ids first: a character outside the vocabulary is refused before any output.
  std::vector<std::int64_t> prime_ids;
  for (const std::string& ch : utf8_chars(prime)) {
    std::int64_t id = -1;
    for (std::int64_t v = 0; v < V; ++v)
      if (vocab[std::size_t(v)] == ch) id = v;
    if (id < 0) {
      std::fprintf(stderr, "generate: the prime's character '%s' is not in the vocabulary\n",
                   ch.c_str());
      return 2;
    }
    prime_ids.push_back(id);
  }
  std::fputs(prime.c_str(), stdout);
  std::int64_t token = 0;
  for (std::int64_t id : prime_ids) {
    token = id;
    stream.step_tokens(&token, logits.data());  // the logits after the last prime character
  }
  for (long i = 0; i < length; ++i) {
    std::int64_t next = 0;
    if (temperature <= 0) {
      for (std::int64_t v = 1; v < V; ++v)
        if (logits[std::size_t(v)] > logits[std::size_t(next)]) next = v;
    } else {
      double mx = -INFINITY, sum = 0;
      for (std::int64_t v = 0; v < V; ++v) mx = std::max(mx, double(logits[std::size_t(v)]));
      for (std::int64_t v = 0; v < V; ++v)
        sum += p[std::size_t(v)] = std::exp((double(logits[std::size_t(v)]) - mx) / temperature);
      double u = std::uniform_real_distribution<double>(0, sum)(rng);
      for (next = 0; next < V - 1; ++next)
        if ((u -= p[std::size_t(next)]) < 0) break;
    }
    std::fputs(vocab[std::size_t(next)].c_str(), stdout);  // as drawn: no text held in memory
    token = next;
    stream.step_tokens(&token, logits.data());
  }
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 6) {
    std::fprintf(stderr, "usage: %s CHECKPOINT [PRIME] [LENGTH] [TEMPERATURE] [SEED]\n", argv[0]);
    return 2;
  }
  long length = 200;
  double temperature = 0.8;
  std::uint64_t seed = 0;
  if (argc > 3 && !parse_length(argv[3], length)) {
    std::fprintf(stderr, "generate: LENGTH must be an integer in [0, %ld], not '%s'\n",
                 kMaxLength, argv[3]);
    return 2;
  }
  if (argc > 4 && !parse_temperature(argv[4], temperature)) {
    std::fprintf(stderr, "generate: TEMPERATURE must be a finite number >= 0 (0 = always the "
                 "most likely), not '%s'\n", argv[4]);
    return 2;
  }
  if (argc > 5 && !parse_seed(argv[5], seed)) {
    std::fprintf(stderr, "generate: SEED must be an integer in [0, 2^64 - 1], not '%s'\n",
                 argv[5]);
    return 2;
  }
  try {
    const fusedrnn::Model model = fusedrnn::Model::load(argv[1]);
    const fusedrnn::ModelConfig& c = model.config();
    const fusedrnn::JsonValue* vocab_json = model.metadata().find("vocab");
    if (!c.token_input() || !c.has_head || c.output_size != c.vocab_size || !vocab_json ||
        !vocab_json->is_array() || std::int64_t(vocab_json->size()) != c.vocab_size) {
      std::fprintf(stderr,
                   "generate: %s is not a character language model (token input, output_size = "
                   "vocab_size, metadata \"vocab\" with vocab_size strings)\n",
                   argv[1]);
      return 2;
    }
    std::vector<std::string> vocab;
    for (std::size_t i = 0; i < vocab_json->size(); ++i) vocab.push_back((*vocab_json)[i].as_string());
    const std::string prime = argc > 2 && *argv[2] ? argv[2] : vocab[0];
    if (model.dtype() == fusedrnn::DType::f64)
      return generate<double>(model, vocab, prime, length, temperature, seed);
    return generate<float>(model, vocab, prime, length, temperature, seed);
  } catch (const std::exception& e) {  // CheckpointError, ConfigError, JsonError
    std::fprintf(stderr, "generate: %s\n", e.what());
    return 1;
  }
}
