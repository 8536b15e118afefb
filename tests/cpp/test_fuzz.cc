// Deterministic mutation fuzzing of the checkpoint loader (TensorFile + Model).
//
// Seeds: checkpoints written here (checkpoint_writer.h) for several models, one with non-ASCII
// user metadata. Each iteration mutates one seed: bit flips (anywhere or in the header), byte
// overwrites, truncation, a changed or random length prefix, digit edits in the header (shapes,
// offsets, config sizes), token splices into the header (JSON punctuation, null, huge numbers,
// escapes), byte insertions and deletions, or an entirely random file. Loading must either
// succeed or throw CheckpointError / ConfigError; any other exception is a failure (a crash or
// a sanitizer report fails the test too). A model that loads is run, batch and streaming, on a
// small input. Fixed seed, fixed iteration count: the same inputs every run.
//
//   test_fuzz [iterations]        (default 50000: about a second, ~15 s under ASan)
#include <fusedrnn/model.h>
#include <fusedrnn/stream.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "checkpoint_writer.h"

using Bytes = std::vector<unsigned char>;

namespace {

std::uint64_t header_len(const Bytes& b) {
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | b[std::size_t(i)];
  return n;
}

void set_header_len(Bytes& b, std::uint64_t n) {
  for (int i = 0; i < 8; ++i) b[std::size_t(i)] = static_cast<unsigned char>(n >> (8 * i));
}

// The header's byte range [8, 8 + L) clipped to the buffer.
std::pair<std::size_t, std::size_t> header_range(const Bytes& b) {
  if (b.size() < 8) return {0, 0};
  const std::uint64_t n = header_len(b);
  return {8, std::size_t(std::min<std::uint64_t>(8 + n, b.size()))};
}

const char* kTokens[] = {"null", "true", "false", "[]", "{}", "\"", "\\", "\\u0000", "\\ud800",
                         "-1", "0", "1e309", "99999999999999999999", "4611686018427387904",
                         ",", ":", "[", "]", "{", "}", "\"__metadata__\"", "\"F64\"", "\"BOOL\"",
                         "\"shape\"", "\"data_offsets\"", "1.5", "\xff", "\xc3\xa9", " "};

template <typename Scalar>
void run_model(const fusedrnn::Model& m, std::mt19937_64& rng) {
  const fusedrnn::ModelConfig& c = m.config();
  const std::int64_t T = 3, N = 2, E = c.rnn_input_size(), S = m.num_states();
  const auto x = testutil::uniform<Scalar>(rng, std::size_t(T * N * E), 1.0);
  std::vector<std::int64_t> tok(std::size_t(T * N), 0);
  std::vector<Scalar> y(std::size_t(T * N * m.output_size()));
  std::vector<Scalar> hn(std::size_t(S * N * c.state_size())), cn(std::size_t(S * N * c.hidden_size));
  const std::int64_t len[2] = {3, 1};
  if (c.token_input())
    m.forward_tokens<Scalar>(T, N, tok.data(), nullptr, nullptr, len, y.data(), hn.data(),
                             cn.data());
  else
    m.forward<Scalar>(T, N, x.data(), nullptr, nullptr, len, y.data(), hn.data(), cn.data());
  if (!c.bidirectional) {
    fusedrnn::Stream<Scalar> s(m, N);
    std::vector<Scalar> yt(std::size_t(N * m.output_size()));
    for (int t = 0; t < 3; ++t) s.step(x.data(), yt.data());
  }
}

}  // namespace

int main(int argc, char** argv) {
  const long iterations = argc > 1 ? std::atol(argv[1]) : 50000;
  std::vector<Bytes> seeds;
  {
    testutil::Spec a;  // LSTM, tokens, 2 layers, projection, peepholes
    a.cell = "lstm", a.tokens = true, a.num_layers = 2, a.proj_size = 3, a.peepholes = true;
    seeds.push_back(testutil::make_checkpoint(a, 1, "{\"vocab\":[\"a\",\"\\u00e9\",\"\\n\"]}"));
    testutil::Spec b;  // GRU reset_before, dense, bidirectional, float64
    b.cell = "gru", b.variant = "reset_before", b.bidirectional = true, b.float64 = true;
    seeds.push_back(testutil::make_checkpoint(b, 2));
    testutil::Spec c;  // bare RNN layer without bias
    c.cell = "rnn", c.bare = true, c.bias = false, c.nonlinearity = "relu", c.num_layers = 2;
    seeds.push_back(testutil::make_checkpoint(c, 3));
    testutil::Spec d;  // GRU, one layer, dense
    d.cell = "gru";
    seeds.push_back(testutil::make_checkpoint(d, 4));
  }
  std::mt19937_64 rng(20261126);
  auto pick = [&](std::size_t n) { return n ? std::size_t(rng() % n) : 0; };
  long loaded = 0, rejected = 0, failures = 0;
  long by_kind[10] = {};
  const auto t0 = std::chrono::steady_clock::now();
  for (long it = 0; it < iterations; ++it) {
    Bytes b = seeds[pick(seeds.size())];
    const int kind = int(rng() % 10);
    ++by_kind[kind];
    const auto [h0, h1] = header_range(b);
    switch (kind) {
      case 0:  // bit flips anywhere
        for (int k = 1 + int(pick(8)); k > 0; --k) b[pick(b.size())] ^= 1u << pick(8);
        break;
      case 1:  // bit flips in the header
        for (int k = 1 + int(pick(4)); k > 0; --k) b[h0 + pick(h1 - h0)] ^= 1u << pick(8);
        break;
      case 2:  // truncation
        b.resize(pick(b.size()));
        break;
      case 3:  // byte overwrites
        for (int k = 1 + int(pick(16)); k > 0; --k) b[pick(b.size())] = (unsigned char)rng();
        break;
      case 4: {  // digit edits in the header (shapes, offsets, sizes in the model config)
        for (int k = 1 + int(pick(3)); k > 0; --k) {
          std::vector<std::size_t> digits;
          for (std::size_t i = h0; i < h1; ++i)
            if (b[i] >= '0' && b[i] <= '9') digits.push_back(i);
          if (!digits.empty()) b[digits[pick(digits.size())]] = '0' + (unsigned char)pick(10);
        }
        break;
      }
      case 5: {  // token splice into the header, length prefix kept consistent
        const std::string tok = kTokens[pick(sizeof kTokens / sizeof *kTokens)];
        const std::size_t at = h0 + pick(h1 - h0), cut = std::min(pick(6), h1 - at);
        b.erase(b.begin() + long(at), b.begin() + long(at + cut));
        b.insert(b.begin() + long(at), tok.begin(), tok.end());
        set_header_len(b, header_len(b) - cut + tok.size());
        break;
      }
      case 6:  // the length prefix
        if (rng() % 2)
          set_header_len(b, header_len(b) + std::uint64_t(std::int64_t(pick(33)) - 16));
        else
          set_header_len(b, rng() >> pick(64));
        break;
      case 7: {  // insert or delete a byte (header length unchanged: shifts everything)
        const std::size_t at = pick(b.size());
        if (rng() % 2)
          b.insert(b.begin() + long(at), (unsigned char)rng());
        else
          b.erase(b.begin() + long(at));
        break;
      }
      case 8: {  // data bytes only: a valid file with other weights (NaN, Inf, huge)
        const std::size_t data0 = h1;
        for (int k = 1 + int(pick(32)); k > 0 && data0 < b.size(); --k)
          b[data0 + pick(b.size() - data0)] = (unsigned char)rng();
        break;
      }
      default: {  // random bytes, sometimes behind a plausible length prefix
        b.assign(pick(512), 0);
        for (auto& v : b) v = (unsigned char)rng();
        if (b.size() >= 8 && rng() % 2) set_header_len(b, pick(b.size()));
        break;
      }
    }
    try {
      const fusedrnn::Model m = fusedrnn::Model::from_bytes(b.data(), b.size(), "fuzz");
      ++loaded;
      try {
        if (m.dtype() == fusedrnn::DType::f32)
          run_model<float>(m, rng);
        else
          run_model<double>(m, rng);
      } catch (const std::exception& e) {
        if (++failures <= 10)
          std::printf("FAIL iteration %ld (mutation %d): a loaded model failed to run: %s\n", it,
                      kind, e.what());
      }
    } catch (const fusedrnn::CheckpointError&) {
      ++rejected;
    } catch (const fusedrnn::ConfigError&) {
      ++rejected;
    } catch (const std::exception& e) {
      if (++failures <= 10)
        std::printf("FAIL iteration %ld (mutation %d): unexpected exception: %s\n", it, kind,
                    e.what());
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%ld iterations in %.2f s: %ld loaded (and ran), %ld rejected with "
              "CheckpointError/ConfigError, %ld failures\n",
              iterations, secs, loaded, rejected, failures);
  std::printf("mutations:");
  for (long k : by_kind) std::printf(" %ld", k);
  std::printf("\n");
  // Both outcomes must occur, or the mutations are not reaching the interesting cases.
  const bool ok = failures == 0 && loaded > iterations / 50 && rejected > iterations / 2;
  std::printf("%s\n", ok ? "ok" : "FAIL");
  return ok ? 0 : 1;
}
