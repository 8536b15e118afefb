// Text generation with a character language model trained in Python (`fusedrnn train`, or
// tests/cpp/make_fixtures.py): a RecurrentModel with token input, output_size = vocab_size, and
// user metadata {"vocab": ["a", "b", ...]} (one character per token id, in index order).
//
//   generate CHECKPOINT [PRIME] [LENGTH] [TEMPERATURE] [SEED]
//
// Feeds PRIME (default: the first vocabulary entry) one character at a time through a
// fusedrnn::Stream, then samples LENGTH (default 200) characters from softmax(logits /
// TEMPERATURE) (default 0.8; 0 = always the most likely) with a seeded generator (default 0),
// printing PRIME followed by the generated text.
#include <fusedrnn/model.h>
#include <fusedrnn/stream.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <vector>

namespace {

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
             const std::string& prime, long length, double temperature, unsigned long seed) {
  const std::int64_t V = model.output_size();
  fusedrnn::Stream<Scalar> stream(model);  // batch 1
  std::vector<Scalar> logits(static_cast<std::size_t>(V));
  std::vector<double> p(static_cast<std::size_t>(V));
  std::mt19937_64 rng(seed);
  std::string out;
  std::int64_t token = 0;
  for (const std::string& ch : utf8_chars(prime)) {
    std::int64_t id = -1;
    for (std::int64_t v = 0; v < V; ++v)
      if (vocab[std::size_t(v)] == ch) id = v;
    if (id < 0) {
      std::fprintf(stderr, "generate: the prime's character '%s' is not in the vocabulary\n",
                   ch.c_str());
      return 2;
    }
    out += ch;
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
    out += vocab[std::size_t(next)];
    token = next;
    stream.step_tokens(&token, logits.data());
  }
  std::printf("%s\n", out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT [PRIME] [LENGTH] [TEMPERATURE] [SEED]\n", argv[0]);
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
    const long length = argc > 3 ? std::atol(argv[3]) : 200;
    const double temperature = argc > 4 ? std::atof(argv[4]) : 0.8;
    const unsigned long seed = argc > 5 ? std::strtoul(argv[5], nullptr, 10) : 0;
    if (model.dtype() == fusedrnn::DType::f64)
      return generate<double>(model, vocab, prime, length, temperature, seed);
    return generate<float>(model, vocab, prime, length, temperature, seed);
  } catch (const std::exception& e) {  // CheckpointError, ConfigError, JsonError
    std::fprintf(stderr, "generate: %s\n", e.what());
    return 1;
  }
}
