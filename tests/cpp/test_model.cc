// C++-only tests of fusedrnn::Model and fusedrnn::Stream over checkpoints written by the test
// itself (checkpoint_writer.h, random weights), for every cell, option and dtype:
//   * the config and parameters come back as written;
//   * Model::forward: the same result with and without a Context, with 1 and 2 threads, and a
//     repeated call with a Context allocates nothing;
//   * Stream: stepping T times equals Model::forward bitwise (outputs and final states, from a
//     given initial state, batch 1 and 3), reset() restarts it, step() allocates nothing,
//     bidirectional models are refused with ConfigError, bad token ids change nothing;
//   * argument errors throw std::invalid_argument; broken or unsupported checkpoints throw
//     CheckpointError / ConfigError with a message naming the problem.
// Prints one line per check and "N passed, M failed"; exits non-zero on any failure.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // operator new below uses malloc

#include <fusedrnn/model.h>
#include <fusedrnn/stream.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "checkpoint_writer.h"
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

// ---- allocation counter (every operator new of the process goes through these) --------------
static std::atomic<long> g_allocs{0};

void* operator new(std::size_t n) {
  ++g_allocs;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, std::align_val_t a) {
  ++g_allocs;
  const std::size_t al = std::size_t(a);
  if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) { return operator new(n, a); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using fusedrnn::CheckpointError;
using fusedrnn::ConfigError;
using fusedrnn::Model;
using testutil::Spec;

namespace {

int g_passed = 0, g_failed = 0;

// StreamOptions::fast over 203 steps against the bitwise Stream, relative to max(1, max |y|)
// (stream.h); measured up to 9.5e-7 (float32) and 4.4e-16 (float64) on this grid.
constexpr double kSeqTolF32 = 1e-5, kSeqTolF64 = 1e-13;

void report(bool ok, const std::string& what, const std::string& detail = "") {
  std::printf("%-4s %-60s %s\n", ok ? "ok" : "FAIL", what.c_str(), detail.c_str());
  std::fflush(stdout);
  ++(ok ? g_passed : g_failed);
}

// Largest |a - b| (NaN if either has a NaN where the other has not).
template <typename Scalar>
double max_diff(const Scalar* a, const Scalar* b, std::size_t n) {
  double m = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double d = std::abs(double(a[i]) - double(b[i]));
    if (std::isnan(d) && !(std::isnan(double(a[i])) && std::isnan(double(b[i])))) return NAN;
    if (d > m) m = d;
  }
  return m;
}

std::string fmt(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "max diff %.3g", v);
  return buf;
}

// Runs f; expects an exception of type E whose message contains `needle`.
template <typename E>
void expect_throw(const std::string& what, const std::function<void()>& f,
                  const std::string& needle) {
  std::string got = "no exception";
  bool ok = false;
  try {
    f();
  } catch (const E& e) {
    got = e.what();
    ok = got.find(needle) != std::string::npos;
  } catch (const std::exception& e) {
    got = std::string("other exception: ") + e.what();
  }
  report(ok, what, ok ? "" : "(" + got + ")");
}

// One model: forward contracts, then the Stream against the batch output.
template <typename Scalar>
void check_spec(const Spec& spec, std::uint64_t seed) {
  const std::string name = spec.name();
  const std::vector<unsigned char> bytes = testutil::make_checkpoint(spec, seed,
                                                                     "{\"note\":\"t\"}");
  const Model model = Model::from_bytes(bytes.data(), bytes.size(), name);
  const fusedrnn::ModelConfig& c = model.config();
  const std::int64_t L = c.num_layers, D = c.num_directions(), H = c.hidden_size,
                     R = c.state_size(), O = model.output_size();
  const bool lstm = c.cell == fusedrnn::CellType::lstm;
  {
    bool ok = c.hidden_size == spec.hidden_size && c.num_layers == spec.num_layers &&
              c.bidirectional == spec.bidirectional && c.proj_size == spec.proj_size &&
              c.peepholes == spec.peepholes && c.token_input() == (!spec.bare && spec.tokens) &&
              c.has_head == !spec.bare && c.bias == spec.bias &&
              O == (spec.bare ? spec.D() * spec.R() : spec.output_size) &&
              model.dtype() == fusedrnn::dtype_of<Scalar>() &&
              model.metadata().at("note").as_string() == "t";
    const auto tensors = spec.float64 ? testutil::model_tensors<double>(spec, seed)
                                      : testutil::model_tensors<float>(spec, seed);
    ok = ok && model.parameters().size() == tensors.size();
    for (const auto& t : tensors) {
      const fusedrnn::Parameter* p = model.find_parameter(t.name);
      ok = ok && p && p->shape == t.shape &&
           std::memcmp(p->as<Scalar>(), t.bytes.data(), t.bytes.size()) == 0 &&
           reinterpret_cast<std::uintptr_t>(p->data) % 64 == 0;
    }
    report(ok, name + ": config, metadata, parameters");
  }

  const std::int64_t T = 9, N = 3, E = c.rnn_input_size();
  std::mt19937_64 rng(seed + 1);
  const auto x = testutil::uniform<Scalar>(rng, std::size_t(T * N * E), 1.0);
  std::vector<std::int64_t> tokens(std::size_t(T * N));
  for (auto& v : tokens) v = std::int64_t(rng() % std::uint64_t(c.vocab_size ? c.vocab_size : 1));
  const auto h0 = testutil::uniform<Scalar>(rng, std::size_t(L * D * N * R), 0.5);
  const auto c0 = testutil::uniform<Scalar>(rng, std::size_t(L * D * N * H), 0.5);
  const std::vector<std::int64_t> lengths = {T, 4, 0};
  auto run = [&](fusedrnn::Context* ctx, const std::int64_t* len, std::vector<Scalar>& y,
                 std::vector<Scalar>& hn, std::vector<Scalar>& cn) {
    y.assign(std::size_t(T * N * O), Scalar(-7));
    hn.assign(std::size_t(L * D * N * R), Scalar(-7));
    cn.assign(std::size_t(L * D * N * H), Scalar(-7));
    if (c.token_input())
      model.forward_tokens<Scalar>(T, N, tokens.data(), h0.data(), lstm ? c0.data() : nullptr,
                                   len, y.data(), hn.data(), lstm ? cn.data() : nullptr, ctx);
    else
      model.forward<Scalar>(T, N, x.data(), h0.data(), lstm ? c0.data() : nullptr, len, y.data(),
                            hn.data(), lstm ? cn.data() : nullptr, ctx);
  };
  std::vector<Scalar> y1, h1, k1, y2, h2, k2, y3, h3, k3;
  fusedrnn::Context ctx1(1), ctx2(2);
  run(nullptr, lengths.data(), y1, h1, k1);
  run(&ctx1, lengths.data(), y2, h2, k2);
  const long before = g_allocs.load();
  run(&ctx2, lengths.data(), y3, h3, k3);  // first call with ctx2: grows it
  run(&ctx2, lengths.data(), y3, h3, k3);
  const long grow = g_allocs.load() - before;
  bool same = y1 == y2 && h1 == h2 && k1 == k2 && y1 == y3 && h1 == h3 && k1 == k3;
  report(same, name + ": forward equal without/with Context, 1 and 2 threads");
  // The repeated call: y.assign etc. do not allocate (same sizes); the Context grew once.
  const long a0 = g_allocs.load();
  run(&ctx2, lengths.data(), y3, h3, k3);
  const long repeat = g_allocs.load() - a0;
  report(repeat == 0 && grow >= 1, name + ": repeated forward allocates nothing",
         std::to_string(repeat) + " allocations (first call " + std::to_string(grow) + ")");
  // Padded steps: the recurrent output is zero there, so the output is the head's bias.
  {
    bool ok = true;
    const fusedrnn::Parameter* hb = model.find_parameter("head.bias");
    for (std::int64_t t = 4; t < T; ++t)
      for (std::int64_t o = 0; o < O; ++o) {
        const Scalar want = hb ? hb->as<Scalar>()[o] : Scalar(0);
        ok = ok && y1[std::size_t((t * N + 1) * O + o)] == want;
      }
    for (std::int64_t i = 0; i < L * D; ++i)  // length 0: the final state is the initial one
      for (std::int64_t j = 0; j < R; ++j)
        ok = ok && h1[std::size_t((i * N + 2) * R + j)] == h0[std::size_t((i * N + 2) * R + j)];
    report(ok, name + ": padded steps give the bias, length 0 keeps the state");
  }

  if (c.bidirectional) {
    expect_throw<ConfigError>(name + ": Stream refuses a bidirectional model",
                              [&] { fusedrnn::Stream<Scalar> s(model); }, "bidirectional");
    return;
  }
  // Stream vs batch, no lengths.
  std::vector<Scalar> yb, hb, cb;
  run(nullptr, nullptr, yb, hb, cb);
  for (std::int64_t n_stream : {std::int64_t(1), N}) {
    fusedrnn::Stream<Scalar> stream(model, n_stream);
    // The stream runs sequences 0..n_stream-1 of the batch: initial state rows of those.
    std::vector<Scalar> sh(std::size_t(L * n_stream * R)), sc(std::size_t(L * n_stream * H));
    for (std::int64_t l = 0; l < L; ++l) {
      std::copy(h0.begin() + l * N * R, h0.begin() + l * N * R + n_stream * R,
                sh.begin() + l * n_stream * R);
      std::copy(c0.begin() + l * N * H, c0.begin() + l * N * H + n_stream * H,
                sc.begin() + l * n_stream * H);
    }
    std::vector<Scalar> xt(std::size_t(n_stream * E)), yt(std::size_t(n_stream * O));
    std::vector<std::int64_t> tt(static_cast<std::size_t>(n_stream));
    double worst_y = 0, worst_h = 0;
    long step_allocs = 0;
    for (int pass = 0; pass < 2; ++pass) {  // pass 1 after reset(): the same again
      stream.reset();
      stream.set_state(sh.data(), lstm ? sc.data() : nullptr);
      for (std::int64_t t = 0; t < T; ++t) {
        for (std::int64_t n = 0; n < n_stream; ++n) {
          std::copy(x.begin() + (t * N + n) * E, x.begin() + (t * N + n + 1) * E,
                    xt.begin() + n * E);
          tt[std::size_t(n)] = tokens[std::size_t(t * N + n)];
        }
        const long a = g_allocs.load();
        if (c.token_input()) {
          if (!stream.step_tokens(tt.data(), yt.data())) worst_y = NAN;
        } else {
          stream.step(xt.data(), yt.data());
        }
        step_allocs += g_allocs.load() - a;
        worst_y = std::max(worst_y, max_diff(yt.data(), yb.data() + t * N * O,
                                             std::size_t(n_stream * O)));
      }
      for (std::int64_t l = 0; l < L; ++l) {
        worst_h = std::max(worst_h, max_diff(stream.h() + l * n_stream * R,
                                             hb.data() + l * N * R, std::size_t(n_stream * R)));
        if (lstm)
          worst_h = std::max(worst_h, max_diff(stream.c() + l * n_stream * H,
                                               cb.data() + l * N * H, std::size_t(n_stream * H)));
      }
    }
    report(worst_y == 0 && worst_h == 0,
           name + ": Stream(N=" + std::to_string(n_stream) + ") == forward bitwise",
           fmt(std::max(worst_y, worst_h)));
    report(step_allocs == 0, name + ": Stream::step allocates nothing",
           std::to_string(step_allocs) + " allocations");
  }
  // process(): blocks of steps (4, 0, the rest) on sequence 0 equal forward bitwise; bad
  // arguments throw before anything is written or the state changes.
  if (!c.token_input()) {
    std::vector<Scalar> x0(std::size_t(T * E)), y0(std::size_t(T * O)), yp(std::size_t(T * O), -7);
    for (std::int64_t t = 0; t < T; ++t)
      std::copy(x.begin() + t * N * E, x.begin() + (t * N + 1) * E, x0.begin() + t * E);
    model.forward<Scalar>(T, 1, x0.data(), nullptr, nullptr, nullptr, y0.data(), nullptr, nullptr);
    fusedrnn::Stream<Scalar> st(model);
    const long a = g_allocs.load();
    st.process(x0.data(), yp.data(), 4);
    st.process(x0.data() + 4 * E, yp.data() + 4 * O, 0);
    st.process(x0.data() + 4 * E, yp.data() + 4 * O, T - 4);
    const long allocs = g_allocs.load() - a;
    report(max_diff(yp.data(), y0.data(), yp.size()) == 0 && allocs == 0,
           name + ": Stream::process in blocks of 4, 0, 5 steps == forward bitwise, allocates "
                  "nothing",
           fmt(max_diff(yp.data(), y0.data(), yp.size())) + ", " + std::to_string(allocs) +
               " allocations");
    std::vector<Scalar> yo(std::size_t(O), Scalar(5));
    const std::vector<Scalar> h_before(st.h(), st.h() + L * R);
    expect_throw<std::invalid_argument>(name + ": process(null x) throws",
                                        [&] { st.process(nullptr, yo.data(), 1); }, "x is null");
    expect_throw<std::invalid_argument>(name + ": process(null y) throws",
                                        [&] { st.process(x0.data(), nullptr, 1); }, "y is null");
    expect_throw<std::invalid_argument>(name + ": process(steps < 0) throws",
                                        [&] { st.process(x0.data(), yo.data(), -1); },
                                        "steps must be >= 0, got -1");
    report(yo == std::vector<Scalar>(std::size_t(O), Scalar(5)) &&
               std::vector<Scalar>(st.h(), st.h() + L * R) == h_before,
           name + ": a refused process writes nothing, keeps the state");
  }
  if (c.token_input()) {
    fusedrnn::Stream<Scalar> stream(model, 2);
    std::vector<Scalar> yt(std::size_t(2 * O), Scalar(5));
    const std::int64_t bad[2] = {0, c.vocab_size};
    const std::vector<Scalar> h_before(stream.h(), stream.h() + L * 2 * R);
    const bool refused = !stream.step_tokens(bad, yt.data());
    const bool untouched = std::vector<Scalar>(stream.h(), stream.h() + L * 2 * R) == h_before &&
                           yt == std::vector<Scalar>(std::size_t(2 * O), Scalar(5));
    report(refused && untouched, name + ": step_tokens refuses an id = vocab_size, changes nothing");
  }
}

std::vector<Spec> grid() {
  std::vector<Spec> specs;
  for (bool f64 : {false, true})
    for (const char* cell : {"lstm", "gru", "rnn"})
      for (int variant = 0; variant < 2; ++variant)
        for (bool tokens : {false, true})
          for (bool bidir : {false, true}) {
            Spec s;
            s.cell = cell;
            s.float64 = f64;
            s.tokens = tokens;
            s.bidirectional = bidir;
            s.num_layers = tokens ? 2 : 1;
            if (s.cell == "gru") s.variant = variant ? "reset_before" : "reset_after";
            if (s.cell == "rnn") s.nonlinearity = variant ? "relu" : "tanh";
            if (s.cell == "lstm") {
              s.proj_size = variant ? 4 : 0;
              s.peepholes = tokens != bool(variant);
              s.num_layers = 2;
            }
            if (variant && !tokens) s.hidden_size = 70;  // more than one unit block, odd width
            specs.push_back(s);
          }
  for (const char* cell : {"lstm", "gru", "rnn"})  // bare layers, with and without bias
    for (bool bias : {true, false}) {
      Spec s;
      s.cell = cell;
      s.bare = true;
      s.bias = bias;
      s.num_layers = 2;
      s.bidirectional = !bias;
      s.float64 = bias;
      if (s.cell == "lstm") s.proj_size = 3, s.peepholes = true;
      specs.push_back(s);
    }
  // The sizes a Stream's fused batch-1 step has specialised code for (8, 16, 32, 48, 64), a
  // larger one, input width 1 and H, every cell variant (fused_step.cc).
  int i = 0;
  for (std::int64_t H : {8, 16, 32, 48, 64, 128})
    for (int cv = 0; cv < 6; ++cv, ++i) {
      Spec s;
      s.cell = cv < 2 ? "lstm" : cv < 4 ? "gru" : "rnn";
      s.hidden_size = H;
      s.input_size = i % 2 ? H : 1;
      s.float64 = i % 3 == 0;
      s.bare = i % 4 != 1;
      s.num_layers = i % 5 == 2 ? 2 : 1;
      if (s.cell == "lstm") s.peepholes = cv == 1, s.proj_size = (cv == 1 && H == 16) ? 5 : 0;
      if (s.cell == "gru") s.variant = cv == 3 ? "reset_before" : "reset_after";
      if (s.cell == "rnn") s.nonlinearity = cv == 5 ? "relu" : "tanh";
      s.bias = i % 7 != 3;
      if (!s.bare) s.bias = true;
      specs.push_back(s);
    }
  // Layers narrower than a packet and odd ones (H = 1, 3, 5, 7; one and two layers): their
  // unit blocks can be narrower than the chains a fast pass splits each sum into (packets of 2
  // doubles in the SSE2 copy, up to 4 chains), where the sums left over after the whole groups
  // of chains must not read a state an earlier block's epilogue already overwrote.
  int j = 0;
  for (std::int64_t H : {1, 3, 5, 7})
    for (const char* cell : {"lstm", "gru", "rnn"})
      for (bool f64 : {false, true}) {
        Spec s;
        s.cell = cell;
        s.hidden_size = H;
        s.input_size = 1 + j % 3;
        s.float64 = f64;
        s.bare = j % 2 == 0;
        s.num_layers = j % 4 == 1 ? 2 : 1;
        if (s.cell == "rnn" && j % 3 == 0) s.nonlinearity = "relu";
        ++j;
        specs.push_back(s);
      }
  // Large layers (the fused step's weights of 256 KiB or more per product): GRU float64
  // H = C = 128, Elman RNN float32 H = C = 256, LSTM float64 H = C = 128 in a two-layer stack.
  for (int q = 0; q < 3; ++q) {
    Spec s;
    s.cell = q == 0 ? "gru" : q == 1 ? "rnn" : "lstm";
    s.hidden_size = s.input_size = q == 1 ? 256 : 128;
    s.float64 = q != 1;
    s.bare = q != 2;
    s.num_layers = q == 2 ? 2 : 1;
    specs.push_back(s);
  }
  return specs;
}

void check_errors() {
  Spec spec;
  spec.cell = "gru";
  const std::vector<unsigned char> good = testutil::make_checkpoint(spec, 3);
  const Model model = Model::from_bytes(good.data(), good.size());
  std::vector<float> y(100), x(100);
  const std::int64_t bad_len[2] = {3, 4};
  expect_throw<std::invalid_argument>("forward<double> on a float32 model throws",
                                      [&] {
                                        std::vector<double> xd(10), yd(10);
                                        model.forward<double>(1, 1, xd.data(), nullptr, nullptr,
                                                              nullptr, yd.data(), nullptr,
                                                              nullptr);
                                      },
                                      "the model is F32");
  expect_throw<std::invalid_argument>("lengths[1] > T throws",
                                      [&] {
                                        model.forward<float>(3, 2, x.data(), nullptr, nullptr,
                                                             bad_len, y.data(), nullptr, nullptr);
                                      },
                                      "lengths[1] = 4");
  expect_throw<std::invalid_argument>("forward_tokens on a dense model throws",
                                      [&] {
                                        const std::int64_t tok[1] = {0};
                                        model.forward_tokens<float>(1, 1, tok, nullptr, nullptr,
                                                                    nullptr, y.data(), nullptr,
                                                                    nullptr);
                                      },
                                      "call forward");
  expect_throw<std::invalid_argument>("Stream<double> of a float32 model throws",
                                      [&] { fusedrnn::Stream<double> s(model); }, "F32");
  expect_throw<std::invalid_argument>("Model::parameter of an unknown name throws",
                                      [&] { model.parameter("rnn.nope"); }, "rnn.nope");
  {
    Spec ts = spec;
    ts.tokens = true;
    const auto b = testutil::make_checkpoint(ts, 4);
    const Model tm = Model::from_bytes(b.data(), b.size());
    expect_throw<std::invalid_argument>("token id = vocab_size throws",
                                        [&] {
                                          const std::int64_t tok[2] = {1, 11};
                                          tm.forward_tokens<float>(2, 1, tok, nullptr, nullptr,
                                                                   nullptr, y.data(), nullptr,
                                                                   nullptr);
                                        },
                                        "tokens[1, 0] = 11");
  }

  {
    // int8: what the int8 kernels refuse at their call (a non-finite weight_ih / weight_hh, an
    // input or hidden size over 133,144) is refused when the int8 Model is made: a Stream's
    // step() cannot throw (it had aborted the program), and Model::forward had thrown after
    // earlier layers wrote their final states
    Spec ls;
    ls.num_layers = 2;
    auto t = testutil::model_tensors<float>(ls, 5);
    for (auto& tensor : t)
      if (tensor.name == "rnn.weight_hh_l1") {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::memcpy(tensor.bytes.data() + 7 * sizeof(float), &nan, sizeof(float));
      }
    const auto b = testutil::checkpoint_of(ls, t);
    expect_throw<std::invalid_argument>("an int8 Model of a NaN weight_hh is refused when loaded",
                                        [&] {
                                          Model::from_bytes(b.data(), b.size(), "nan",
                                                            fusedrnn::Precision::int8);
                                        },
                                        "weight_hh_l1, which has a non-finite value at flat "
                                        "index 7");
    const Model f = Model::from_bytes(b.data(), b.size(), "nan");   // float32: NaN out, no throw
    expect_throw<std::invalid_argument>("with_precision(int8) of a NaN weight_hh is refused",
                                        [&] { (void)f.with_precision(fusedrnn::Precision::int8); },
                                        "precision int8 quantises weight_hh_l1");
    {
      Spec wide;
      wide.cell = "rnn", wide.bare = true, wide.input_size = 133145, wide.hidden_size = 1;
      const auto wb = testutil::checkpoint_of(wide, testutil::model_tensors<float>(wide, 3));
      expect_throw<std::invalid_argument>("an int8 Model wider than the s32 sums is refused",
                                          [&] {
                                            Model::from_bytes(wb.data(), wb.size(), "wide",
                                                              fusedrnn::Precision::int8);
                                          },
                                          "input_size and hidden_size <= 133144");
      const Model wf = Model::from_bytes(wb.data(), wb.size(), "wide");   // float32 runs
      fusedrnn::Stream<float> ws(wf);
      std::vector<float> wx(133145, 0.5f), wy(1);
      ws.step(wx.data(), wy.data());
      report(std::isfinite(wy[0]), "a float32 Stream of a 133,145-wide RNN runs");
    }
    fusedrnn::Stream<float> fs(f);
    std::vector<float> xs(std::size_t(ls.input_size), 0.5f), ys(std::size_t(ls.output_size));
    fs.step(xs.data(), ys.data());
    report(std::isnan(ys[0]), "a float32 Stream of a NaN weight runs (NaN out)");
    // null pointers: step does nothing, step_tokens returns false
    fusedrnn::Stream<float> ok(model);
    std::vector<float> x3(3 * 100), y3(3 * 100, 7.0f);
    ok.step(nullptr, y3.data());
    ok.step(x3.data(), nullptr);
    bool unchanged = y3[0] == 7.0f;
    const std::int64_t state = model.config().num_layers * model.config().state_size();
    for (std::int64_t i = 0; i < state; ++i) unchanged = unchanged && ok.h()[i] == 0;
    report(unchanged, "Stream::step with a null x_t or y_t does nothing");
  }

  // Files.
  expect_throw<CheckpointError>("missing file", [] { Model::load("/nonexistent/x.safetensors"); },
                                "cannot open");
  auto from = [](std::vector<unsigned char> b) { Model::from_bytes(b.data(), b.size()); };
#ifdef __linux__
  // load reads the 8-byte length, the header, then the data the header describes: an endless
  // input is refused after its first bytes (it had been read until memory ran out)
  expect_throw<CheckpointError>("an endless file (/dev/zero)", [] { Model::load("/dev/zero"); },
                                "the header must be a JSON object");
#endif
  {
    const std::string path = "test_model_trailing.safetensors";
    auto write = [&](const std::vector<unsigned char>& b) {
      std::FILE* f = std::fopen(path.c_str(), "wb");
      std::fwrite(b.data(), 1, b.size(), f);
      std::fclose(f);
    };
    write(good);
    Model::load(path);  // exactly the bytes the header describes: loads
    auto longer = good;
    longer.insert(longer.end(), 5000, 7);
    write(longer);
    expect_throw<CheckpointError>("a file longer than its header says (load)",
                                  [&] { Model::load(path); }, "trailing bytes");
    std::remove(path.c_str());
    const Model m = Model::from_bytes(good.data(), good.size());
    const float x0 = 0;
    expect_throw<std::invalid_argument>(
        "ctc_greedy_decode: T * N * output_size overflowing is refused",
        [&] { m.ctc_greedy_decode<float>(1, std::int64_t(1) << 62, &x0); }, "too large");
  }
  expect_throw<CheckpointError>("empty file", [&] { from({}); }, "shorter than the 8-byte");
  expect_throw<CheckpointError>("truncated data",
                                [&] { from({good.begin(), good.end() - 1}); }, "truncated");
  expect_throw<CheckpointError>("trailing bytes",
                                [&] {
                                  auto b = good;
                                  b.push_back(0);
                                  from(b);
                                },
                                "trailing bytes");
  expect_throw<CheckpointError>("header length beyond the file",
                                [&] { from({good.begin(), good.begin() + 40}); },
                                "larger than the");
  // Header edits.
  auto with_header = [&](const std::string& header) {
    std::vector<unsigned char> b(8 + header.size());
    for (int i = 0; i < 8; ++i) b[std::size_t(i)] = (header.size() >> (8 * i)) & 0xFF;
    std::memcpy(b.data() + 8, header.data(), header.size());
    return b;
  };
  expect_throw<CheckpointError>("header not JSON", [&] { from(with_header("{\"a\":}")); },
                                "not valid JSON");
  expect_throw<CheckpointError>("header duplicate key",
                                [&] { from(with_header("{\"__metadata__\":{},\"__metadata__\":{}}")); },
                                "duplicate key");
  expect_throw<CheckpointError>("header not an object", [&] { from(with_header("[1]")); },
                                "starting with '{'");
  expect_throw<CheckpointError>("unknown dtype",
                                [&] {
                                  from(with_header(
                                      "{\"w\":{\"dtype\":\"F8\",\"shape\":[],\"data_offsets\":[0,1]}}"));
                                },
                                "unknown dtype");
  expect_throw<CheckpointError>("offsets that do not match the shape",
                                [&] {
                                  from(with_header(
                                      "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}"));
                                },
                                "needs 8");
  expect_throw<CheckpointError>("shape overflow",
                                [&] {
                                  from(with_header("{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,"
                                                   "4294967296],\"data_offsets\":[0,0]}}"));
                                },
                                "too many elements");
  expect_throw<CheckpointError>("not a fusedrnn checkpoint", [&] { from(with_header("{}")); },
                                "not a fusedrnn checkpoint");

  // Metadata and tensors against the config.
  auto rewrite = [&](const Spec& s, const std::function<void(std::vector<testutil::Tensor>&,
                                                             std::string&)>& edit) {
    auto tensors = testutil::model_tensors<float>(s, 5);
    std::string config = testutil::config_json(s);
    edit(tensors, config);
    return testutil::write_safetensors(
        tensors, {{"format", "fusedrnn"}, {"format_version", "1"}, {"model", config}});
  };
  using TV = std::vector<testutil::Tensor>;
  expect_throw<CheckpointError>("missing tensor",
                                [&] { from(rewrite(spec, [](TV& t, std::string&) { t.pop_back(); })); },
                                "missing tensor 'head.bias'");
  expect_throw<CheckpointError>("unexpected tensor",
                                [&] {
                                  from(rewrite(spec, [](TV& t, std::string&) {
                                    t.push_back(testutil::make_tensor<float>("extra", {1}, {1.f}));
                                  }));
                                },
                                "unexpected tensor 'extra'");
  expect_throw<CheckpointError>("shape mismatch",
                                [&] {
                                  from(rewrite(spec, [](TV& t, std::string&) {
                                    t[1].shape = {6, 18};  // weight_hh [18, 6] transposed
                                  }));
                                },
                                "has shape [6, 18] but the model config needs [18, 6]");
  expect_throw<CheckpointError>("dtype mismatch",
                                [&] {
                                  from(rewrite(spec, [](TV& t, std::string&) {
                                    t[0] = testutil::make_tensor<double>(
                                        t[0].name, t[0].shape,
                                        std::vector<double>(std::size_t(18 * 5)));
                                  }));
                                },
                                "is F64 but the model's dtype is F32");
  expect_throw<CheckpointError>("optimizer tensors are ignored, other reserved names are not",
                                [&] {
                                  from(rewrite(spec, [](TV& t, std::string&) {
                                    t.push_back(testutil::make_tensor<float>(
                                        "__optimizer__/state/0/exp_avg", {1}, {1.f}));
                                    t.push_back(testutil::make_tensor<float>("__x", {1}, {1.f}));
                                  }));
                                },
                                "unknown reserved tensor '__x'");
  auto config_edit = [&](const std::string& from_s, const std::string& to_s) {
    return rewrite(spec, [&](TV&, std::string& cfg) {
      const auto at = cfg.find(from_s);
      if (at != std::string::npos) cfg.replace(at, from_s.size(), to_s);
    });
  };
  expect_throw<ConfigError>("unsupported cell",
                            [&] { from(config_edit("\"cell\":\"gru\"", "\"cell\":\"lru\"")); },
                            "cell must be");
  expect_throw<ConfigError>("unsupported type",
                            [&] { from(config_edit("RecurrentModel", "Transformer")); },
                            "type 'Transformer' is not supported");
  expect_throw<ConfigError>("unknown config key",
                            [&] { from(config_edit("\"seed\":null", "\"seed\":null,\"x\":1")); },
                            "unknown key 'x'");
  expect_throw<ConfigError>("hidden_size not an integer",
                            [&] { from(config_edit("\"hidden_size\":6", "\"hidden_size\":6.0")); },
                            "hidden_size must be an integer");
  expect_throw<ConfigError>("both vocab_size and input_size",
                            [&] { from(config_edit("\"vocab_size\":null", "\"vocab_size\":3")); },
                            "exactly one of vocab_size and input_size");
  expect_throw<ConfigError>("proj_size with a GRU",
                            [&] { from(config_edit("\"proj_size\":0", "\"proj_size\":2")); },
                            "need cell 'lstm'");
  // the other cells' options are checked too (Python refuses any other value): the spec is a
  // GRU, whose config carries the RNN's nonlinearity
  expect_throw<ConfigError>("an unknown nonlinearity on a GRU",
                            [&] {
                              from(config_edit("\"nonlinearity\":\"tanh\"",
                                               "\"nonlinearity\":\"gelu\""));
                            },
                            "nonlinearity must be 'tanh' or 'relu', got 'gelu'");
  // Issue 19's options: read where they apply, refused by name where not (the spec is a GRU).
  const auto add = [&](const std::string& kv) { return config_edit("\"seed\":null", "\"seed\":null," + kv); };
  expect_throw<ConfigError>("zoneout_c with a GRU", [&] { from(add("\"zoneout_c\":0.1")); },
                            "zoneout_c needs cell 'lstm'");
  expect_throw<ConfigError>("layer_norm tfa with a GRU",
                            [&] { from(add("\"layer_norm\":\"tfa\"")); },
                            "layer_norm 'tfa' needs cell 'lstm'");
  expect_throw<ConfigError>("an unknown layer_norm", [&] { from(add("\"layer_norm\":\"batch\"")); },
                            "layer_norm must be null, 'haste' or 'tfa'");
  expect_throw<ConfigError>("zoneout_h out of range", [&] { from(add("\"zoneout_h\":1.0")); },
                            "zoneout_h must be in [0, 1)");
  expect_throw<ConfigError>("ln_eps without layer_norm", [&] { from(add("\"ln_eps\":0.001")); },
                            "ln_eps needs layer_norm");
  // values the float32 kernel would see as 1 or 0 (every forward threw; Stream::step, noexcept,
  // terminated the process)
  expect_throw<ConfigError>("zoneout_h rounding to 1 in float32",
                            [&] { from(add("\"zoneout_h\":0.99999999")); },
                            "zoneout_h rounds to 1 in float32");
  expect_throw<ConfigError>("ln_eps rounding to 0 in float32",
                            [&] { from(add("\"layer_norm\":\"haste\",\"ln_eps\":1e-50")); },
                            "ln_eps must be a normal float32 number");
  expect_throw<ConfigError>("cell_clip is named as unsupported, not as a newer key",
                            [&] { from(add("\"cell_clip\":3.0")); },
                            "cell_clip is not supported by the C++ Model");
  expect_throw<ConfigError>("an unknown option is still refused",
                            [&] { from(add("\"zoneout\":0.1")); }, "unknown key 'zoneout'");
  expect_throw<ConfigError>("options with reset_before",
                            [&] {
                              from(rewrite(spec, [](TV&, std::string& cfg) {
                                const auto at = cfg.find("reset_after");
                                if (at != std::string::npos) cfg.replace(at, 11, "reset_before");
                                cfg.replace(cfg.find("\"seed\":null"), 11,
                                            "\"seed\":null,\"zoneout_h\":0.1");
                              }));
                            },
                            "zoneout_h needs variant 'reset_after'");
  expect_throw<CheckpointError>("layer_norm without its tensors",
                                [&] { from(add("\"layer_norm\":\"haste\"")); },
                                "missing tensor 'rnn.ln_gamma_ih_l0'");
  from(add("\"recurrent_dropout\":0.2"));  // training only: loads (the plain model)
  from(rewrite(spec, [](TV&, std::string& cfg) {  // the dropouts alone need no reset_after
    const auto at = cfg.find("reset_after");
    if (at != std::string::npos) cfg.replace(at, 11, "reset_before");
    cfg.replace(cfg.find("\"seed\":null"), 11, "\"seed\":null,\"weight_drop\":0.3");
  }));
  expect_throw<CheckpointError>("model config not JSON",
                                [&] { from(config_edit("{\"type\"", "{type")); },
                                "__metadata__['model'] is not valid JSON");
  expect_throw<ConfigError>("no model config",
                            [&] {
                              from(testutil::write_safetensors(
                                  {}, {{"format", "fusedrnn"}, {"format_version", "1"}}));
                            },
                            "no model config");
  expect_throw<CheckpointError>("format_version 2",
                                [&] {
                                  from(testutil::write_safetensors(
                                      {}, {{"format", "fusedrnn"}, {"format_version", "2"}}));
                                },
                                "unsupported checkpoint format_version '2'");
}

}  // namespace

// StreamOptions::fast against the bitwise Stream (stream.h's tolerance).
//  * One step of a one-layer bare model from the same random state: every output within the
//    bound derived from the summation orders: a pre-activation with n terms t_k (n = C + R + 2,
//    the peephole term too) differs by at most d = 2 gamma_n sum |t_k| (gamma_n = n u / (1 - n u));
//    through sigma (slope <= 1/4), tanh (<= 1), the cell's products and the update, plus
//    eps = 8u per activation evaluation and 4u per element-wise product-sum.
//  * 203 steps of every model in the grid: y within kSeqTol relative to max(1, max |y|), and
//    process() bitwise the fast step().
template <typename Scalar>
void check_fast(const Spec& spec, std::uint64_t seed) {
  if (spec.bidirectional) return;
  const std::string name = spec.name() + " fast";
  const std::vector<unsigned char> bytes = testutil::make_checkpoint(spec, seed);
  const Model model = Model::from_bytes(bytes.data(), bytes.size());
  const fusedrnn::ModelConfig& c = model.config();
  fusedrnn::StreamOptions fast;
  fast.fast = true;
  fusedrnn::Stream<Scalar> sb(model), sf(model, 1, fast), sp(model, 1, fast);
  const bool f64 = sizeof(Scalar) == 8;
  const double u = f64 ? 0x1p-53 : 0x1p-24, eps = 8 * u;
  const std::int64_t E = sb.input_size(), O = sb.output_size(), H = c.hidden_size;
  const std::int64_t L = c.num_layers, R = c.state_size();
  std::mt19937_64 rng(seed);
  const bool lstm = c.cell == fusedrnn::CellType::lstm;

  if (spec.bare && L == 1 && c.proj_size == 0 && !spec.tokens &&
      !(c.cell == fusedrnn::CellType::gru && c.variant == fusedrnn::GruVariant::reset_before)) {
    const auto x = testutil::uniform<Scalar>(rng, std::size_t(E), 1.0);
    const auto h0 = testutil::uniform<Scalar>(rng, std::size_t(H), 0.9);
    const auto c0 = testutil::uniform<Scalar>(rng, std::size_t(H), 2.0);
    sb.set_state(h0.data(), c0.data());
    sf.set_state(h0.data(), c0.data());
    std::vector<Scalar> yb(static_cast<std::size_t>(O)), yf(static_cast<std::size_t>(O));
    sb.step(x.data(), yb.data());
    sf.step(x.data(), yf.data());
    const std::int64_t C = E;
    const Scalar* wih = model.parameter("weight_ih_l0").as<Scalar>();
    const Scalar* whh = model.parameter("weight_hh_l0").as<Scalar>();
    const fusedrnn::Parameter* bi = model.find_parameter("bias_ih_l0");
    const fusedrnn::Parameter* bh = model.find_parameter("bias_hh_l0");
    const fusedrnn::Parameter* pe = model.find_parameter("weight_peep_l0");
    const double n = double(C + R + 3), gam = n * u / (1 - n * u);
    // sum |t_k| of gate g, unit j: input part, recurrent part, biases.
    auto absx = [&](std::int64_t g, std::int64_t j) {
      double a = 0;
      for (std::int64_t k = 0; k < C; ++k) a += std::abs(double(wih[(g * H + j) * C + k] * x[k]));
      return a + (bi ? std::abs(double(bi->as<Scalar>()[g * H + j])) : 0.0);
    };
    auto absh = [&](std::int64_t g, std::int64_t j) {
      double a = 0;
      for (std::int64_t k = 0; k < R; ++k) a += std::abs(double(whh[(g * H + j) * R + k] * h0[k]));
      return a + (bh ? std::abs(double(bh->as<Scalar>()[g * H + j])) : 0.0);
    };
    double worst = 0;  // largest |diff| / bound
    bool ok = true;
    const Scalar* cf = sf.c();
    const Scalar* cb = sb.c();
    for (std::int64_t j = 0; j < H; ++j) {
      double bound_h = 0, bound_c = -1;
      if (lstm) {
        double d[4];
        for (int g = 0; g < 4; ++g) {
          double a = absx(g, j) + absh(g, j);
          if (pe && g < 2) a += std::abs(double(pe->as<Scalar>()[g * H + j] * c0[j]));
          d[g] = 2 * gam * a;
        }
        const double cp = std::abs(double(c0[j]));
        const double di = d[0] / 4 + eps, df = d[1] / 4 + eps, dg = d[2] + eps;
        bound_c = cp * df + di + dg + 4 * u * (cp + 1);
        const double po = pe ? std::abs(double(pe->as<Scalar>()[2 * H + j])) : 0.0;
        const double cmax = cp + 1 + bound_c;  // |c| after the step, bounded
        const double d_o = (2 * gam * (absx(3, j) + absh(3, j) + po * cmax) + po * bound_c) / 4 + eps;
        bound_h = d_o + bound_c + eps + 2 * u;
      } else if (c.cell == fusedrnn::CellType::gru) {
        const double dr = 2 * gam * (absx(0, j) + absh(0, j)) / 4 + eps;
        const double dz = 2 * gam * (absx(1, j) + absh(1, j)) / 4 + eps;
        const double hn = absh(2, j), xn = absx(2, j);
        const double dn = 2 * gam * xn + hn * dr + 2 * gam * hn + 4 * u * (xn + hn) + eps;
        bound_h = (std::abs(double(h0[j])) + 1) * dz + 2 * dn + 4 * u * (std::abs(double(h0[j])) + 2);
      } else {
        bound_h = 2 * gam * (absx(0, j) + absh(0, j)) + eps;
      }
      const double dh = std::abs(double(yf[std::size_t(j)]) - double(yb[std::size_t(j)]));
      ok = ok && dh <= bound_h;
      worst = std::max(worst, dh / bound_h);
      if (bound_c >= 0) {
        const double dc = std::abs(double(cf[j]) - double(cb[j]));
        ok = ok && dc <= bound_c;
        worst = std::max(worst, dc / bound_c);
      }
    }
    char buf[80];
    std::snprintf(buf, sizeof buf, "largest diff / bound %.3g", worst);
    report(ok, name + ": one step within the derived bound", buf);
    sb.reset();
    sf.reset();
  }

  // A sequence: 203 steps from zero state (process(): 12 tiles of 16 steps and one of 11, so the
  // input sums formed several steps at once end in a remainder of single steps).
  const std::int64_t T = 203;
  const auto xs = testutil::uniform<Scalar>(rng, std::size_t(T * E), 1.0);
  std::vector<Scalar> yb(std::size_t(T * O)), yf(yb.size()), yp(yb.size());
  std::vector<std::int64_t> tok(static_cast<std::size_t>(T));
  for (std::int64_t t = 0; t < T; ++t) {
    if (spec.tokens) {
      tok[std::size_t(t)] = std::int64_t(rng() % std::uint64_t(c.vocab_size));
      sb.step_tokens(&tok[std::size_t(t)], yb.data() + t * O);
      sf.step_tokens(&tok[std::size_t(t)], yf.data() + t * O);
    } else {
      sb.step(xs.data() + t * E, yb.data() + t * O);
      sf.step(xs.data() + t * E, yf.data() + t * O);
    }
  }
  double scale = 1;
  for (Scalar v : yb) scale = std::max(scale, std::abs(double(v)));
  const double rel = max_diff(yf.data(), yb.data(), yb.size()) / scale;
  const double tol = f64 ? kSeqTolF64 : kSeqTolF32;
  bool proc = true;
  if (!spec.tokens) {
    sp.process(xs.data(), yp.data(), T);
    proc = std::equal(yp.begin(), yp.end(), yf.begin());
  }
  char buf[96];
  std::snprintf(buf, sizeof buf, "203 steps: rel diff %.3g (tol %.0e)%s", rel, tol,
                proc ? "" : ", process != step");
  report(rel <= tol && proc, name + ": sequence vs bitwise", buf);
  (void)L;
}

// The fast step's activations alone, through the public API: a bare float32 Elman RNN (tanh) and
// a reset-after GRU, input width 1, no biases, W_hh = 0 and W_ih = 1 (RNN) or 1 in z's rows and
// 0 elsewhere (GRU): the RNN's step gives tanh(x) in every unit and, from h = 1, the GRU's gives
// z = sigmoid(x) (n = tanh(0) = 0, h' = (1 - z) n + z h). H = 16 (one block: the short-chain
// functions) and 48 (three: the few-operation ones), x = +-every 1021st float in [0, 30]
// (2.2 million), against double tanh and 1/(1 + exp(-x)), absolute error in u = 2^-24: within
// the largest errors that fast_activations.h measured over every float there (avx512: 5.71 /
// 3.20 u short chain, 2.30 / 1.76 u few operations; avx2: 5.71 / 3.20 u for both), else (and
// in the copies without FMA, the bitwise activations) within stream.h's 8 u. NaN in, NaN out.
void check_fast_activations() {
  const std::string isa = fusedrnn::build_info().instruction_set;
  std::vector<float> xs;  // +-v for every 1021st float v in [0, 30] (bit patterns 0, 1021, ...)
  std::uint32_t top;
  const float thirty = 30.0f;
  std::memcpy(&top, &thirty, 4);
  for (std::uint32_t b = 0; b <= top; b += 1021) {
    float v;
    std::memcpy(&v, &b, 4);
    xs.push_back(v);
    xs.push_back(-v);
  }
  fusedrnn::StreamOptions fast;
  fast.fast = true;
  for (std::int64_t H : {16, 48}) {
    const bool few = H > 16;
    for (const char* cell : {"rnn", "gru"}) {
      const bool gru = cell[0] == 'g';
      const std::int64_t G = gru ? 3 : 1;
      std::vector<float> wih(static_cast<std::size_t>(G * H), gru ? 0.0f : 1.0f);
      const std::vector<float> whh(static_cast<std::size_t>(G * H * H), 0.0f);
      if (gru) std::fill(wih.begin() + H, wih.begin() + 2 * H, 1.0f);
      Spec spec;
      spec.cell = cell;
      spec.bare = true;
      spec.bias = false;
      spec.input_size = 1;
      spec.hidden_size = H;
      const std::vector<unsigned char> bytes = testutil::checkpoint_of(
          spec, {testutil::make_tensor<float>("weight_ih_l0", {G * H, 1}, wih),
                 testutil::make_tensor<float>("weight_hh_l0", {G * H, H}, whh)});
      const Model model = Model::from_bytes(bytes.data(), bytes.size());
      fusedrnn::Stream<float> st(model, 1, fast);
      const std::vector<float> ones(static_cast<std::size_t>(H), 1.0f);
      std::vector<float> y(static_cast<std::size_t>(H));
      double worst = 0, at = 0;
      bool same = true;
      for (float x : xs) {
        if (gru) st.set_state(ones.data(), nullptr);
        st.step(&x, y.data());
        const double e = gru ? 1.0 / (1.0 + std::exp(-double(x))) : std::tanh(double(x));
        const double d = std::abs(double(y[0]) - e) * 0x1p24;
        if (d > worst) worst = d, at = x;
        same = same && std::all_of(y.begin(), y.end(), [&](float v) { return v == y[0]; });
      }
      double bound = 8;
      if (isa == "avx512") bound = gru ? (few ? 1.76 : 3.20) : (few ? 2.30 : 5.71);
      if (isa == "avx2") bound = gru ? 3.20 : 5.71;
      const float nan = std::numeric_limits<float>::quiet_NaN();
      if (gru) st.set_state(ones.data(), nullptr);
      st.step(&nan, y.data());
      const bool nan_out = std::isnan(y[0]);
      char buf[120];
      std::snprintf(buf, sizeof buf, "%s, %zu values: largest error %.3f u at %.9g (bound %.2f)%s",
                    isa.c_str(), xs.size(), worst, at, bound, nan_out ? "" : ", NaN lost");
      report(worst <= bound && same && nan_out,
             std::string("fast ") + (gru ? "sigmoid" : "tanh") +
                 (few ? " (few operations)" : " (short chain)"),
             buf);
    }
  }
}

// fusedrnn::ScopedFlushDenormals (stream.h): FTZ and DAZ set inside, the previous MXCSR back
// after (nested scopes too); a Stream's outputs the same bits inside a scope and outside, and
// step() and process() outside one leave the flags as they found them.
void check_flush_scope() {
#if defined(__x86_64__) || defined(__i386__)
  constexpr unsigned kFlags = 0x8040u;  // FTZ | DAZ
  const unsigned entry = _mm_getcsr();
  _mm_setcsr(entry & ~kFlags);
  const unsigned off = _mm_getcsr();
  volatile float tiny = 1e-39f, one = 1.0f;
  {
    fusedrnn::ScopedFlushDenormals outer;
    report((_mm_getcsr() & kFlags) == kFlags, "ScopedFlushDenormals: FTZ and DAZ set");
    {
      fusedrnn::ScopedFlushDenormals inner;
    }
    report((_mm_getcsr() & kFlags) == kFlags, "ScopedFlushDenormals: a nested scope keeps them");
    const float r = tiny * one;
    report(r == 0.0f, "ScopedFlushDenormals: a subnormal operand reads as zero inside");
  }
  report(_mm_getcsr() == off, "ScopedFlushDenormals: the previous MXCSR restored");
  const float r = tiny * one;
  report(r != 0.0f, "ScopedFlushDenormals: subnormals again after the scope");

  for (const bool fast : {false, true}) {
    for (const char* cell : {"lstm", "gru"}) {
      Spec sp;
      sp.cell = cell, sp.bare = true, sp.input_size = 1, sp.hidden_size = 16;
      const std::vector<unsigned char> bytes = testutil::make_checkpoint(sp, 9);
      const Model model = Model::from_bytes(bytes.data(), bytes.size());
      fusedrnn::StreamOptions o;
      o.fast = fast;
      fusedrnn::Stream<float> st(model, 1, o);
      const std::int64_t T = 50, E = st.input_size(), O = st.output_size();
      std::mt19937_64 rng(4);
      // inputs with subnormal values among them
      std::vector<float> x = testutil::uniform<float>(rng, std::size_t(T * E), 1.0);
      for (std::size_t i = 0; i < x.size(); i += 3) x[i] *= 1e-38f;
      std::vector<float> y_out(std::size_t(T * O)), y_in(y_out.size()), y_proc(y_out.size());
      for (std::int64_t t = 0; t < T; ++t) st.step(x.data() + t * E, y_out.data() + t * O);
      // (the control bits: the status flags, bits 0-5, record the test's own arithmetic)
      const bool kept_step = (_mm_getcsr() & ~0x3fu) == (off & ~0x3fu);
      st.reset();
      st.process(x.data(), y_proc.data(), T);
      const bool kept_process = (_mm_getcsr() & ~0x3fu) == (off & ~0x3fu);
      st.reset();
      {
        fusedrnn::ScopedFlushDenormals scope;
        for (std::int64_t t = 0; t < T; ++t) st.step(x.data() + t * E, y_in.data() + t * O);
      }
      const std::string name = std::string("ScopedFlushDenormals: ") + cell +
                               (fast ? " fast" : "") + " Stream";
      report(kept_step && kept_process, name + ": step() and process() restore MXCSR");
      report(std::memcmp(y_out.data(), y_in.data(), y_out.size() * sizeof(float)) == 0 &&
                 std::memcmp(y_out.data(), y_proc.data(), y_out.size() * sizeof(float)) == 0,
             name + ": the same bits inside a scope, outside, and by process()");
    }
  }
  _mm_setcsr(entry);
#else
  { fusedrnn::ScopedFlushDenormals scope; }
  report(true, "ScopedFlushDenormals: no effect on this architecture");
#endif
}

int main() {
  for (const Spec& s : grid()) {
    try {
      if (s.float64)
        check_fast<double>(s, 7 + std::uint64_t(g_passed));
      else
        check_fast<float>(s, 7 + std::uint64_t(g_passed));
    } catch (const std::exception& e) {
      report(false, s.name() + " fast", std::string("exception: ") + e.what());
    }
  }
  for (const Spec& s : grid()) {
    try {
      if (s.float64)
        check_spec<double>(s, 42 + std::uint64_t(g_passed));
      else
        check_spec<float>(s, 42 + std::uint64_t(g_passed));
    } catch (const std::exception& e) {
      report(false, s.name(), std::string("exception: ") + e.what());
    }
  }
  check_errors();
  check_fast_activations();
  check_flush_scope();
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
