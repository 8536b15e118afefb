// fusedrnn::Stream: weights packed once at construction; step() = per layer one call of the
// active instruction set's step: at batch 1 its fused step (kernels/fused_step.cc, weights laid
// out for it here), else isa::Kernels::step; then the head. No allocation, no OpenMP, no
// exception after construction (process() checks its arguments before it steps).
// A bfloat16 or int8 Model (Model::precision): each layer's step is instead one call of the batch
// kernel with T = 1 at that precision on the Stream's own workspace (allocated here; the
// weights are packed there by the first step and reused by the later ones), on one thread, so
// the results are bitwise Model::forward's at that precision. A model with issue 19's options
// that change the inference (ModelConfig::regularised_kernel: layer norm, zoneout) steps the same
// way with its regularised kernel (fusedrnn/lstm_ln.h), float32 or float64, bitwise
// Model::forward too; one with only the dropout options (training only) is a plain model here.
#include "fusedrnn/stream.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "fusedrnn/gru.h"
#include "fusedrnn/lstm.h"
#include "fusedrnn/lstm_ln.h"
#include "fusedrnn/rnn.h"
#include "kernels/fpenv.h"
#include "model_impl.h"

namespace fusedrnn {

template <typename Scalar>
struct Stream<Scalar>::Impl {
  Model model;
  const isa::Kernels<Scalar>* ops = nullptr;
  std::int64_t N = 0, L = 0, H = 0, R = 0, E = 0, O = 0;
  bool lstm = false, has_head = false;
  std::vector<isa::StepLayer<Scalar>> layers;
  internal::AlignedArray<Scalar> packed;   // every layer's packed weights
  internal::AlignedArray<Scalar> fused;    // the fused batch-1 step's weights (fused_step.cc)
  internal::AlignedArray<Scalar> h, c;     // state [L, N, R], [L, N, H]
  internal::AlignedArray<Scalar> scratch;  // one layer's step scratch
  internal::AlignedArray<Scalar> xbuf;     // embedded tokens [N, E]
  const Scalar* embed = nullptr;
  const Scalar* head_packed = nullptr;
  const Scalar* head_b = nullptr;
  // A bfloat16 or int8 Model, or one with issue 19's options (lowp: its step is one T = 1
  // kernel call per layer): per layer its kernel workspace and whether it holds the packed
  // weights; the previous state and one step's output of a layer.
  bool lowp = false;
  Precision precision = Precision::float32;
  std::vector<internal::AlignedArray<Scalar>> lp_ws;
  std::vector<char> lp_packed;
  internal::AlignedArray<Scalar> hprev, cprev, ystep;
  StreamOptions options;

  explicit Impl(const Model& m) : model(m) {}
  void lowp_step(const Scalar* in);
  void init_float();
  void init_lowp();

  // One step, the floating-point environment already set (FlushDenormals).
  void step(const Scalar* x_t, Scalar* y_t) noexcept {
    const Scalar* in = x_t;
    if (lowp) {
      lowp_step(x_t);
      in = h.data() + (L - 1) * N * R;
    } else {
      for (std::int64_t l = 0; l < L; ++l) {
        Scalar* hl = h.data() + l * N * R;
        Scalar* cl = lstm ? c.data() + l * N * H : nullptr;
        const isa::StepLayer<Scalar>& layer = layers[std::size_t(l)];
        if (layer.fused_steps && l == L - 1 && !has_head) {
          // The last layer writes y_t itself (no head: y_t is its state).
          layer.fused_steps(layer, in, 0, nullptr, 1, hl, cl, scratch.data(), y_t, 0);
          return;
        }
        if (layer.fused)
          layer.fused(layer, in, nullptr, hl, cl, scratch.data());
        else
          ops->step(layer, in, hl, cl, scratch.data());
        in = hl;
      }
    }
    head(in, y_t);
  }

  // The output of a step from the last layer's state `in` [N, R].
  void head(const Scalar* in, Scalar* y_t) noexcept {
    if (!has_head) {
      std::copy(in, in + N * R, y_t);
      return;
    }
    // The head, as Model::forward computes it: out head.weightᵀ, then + head.bias.
    ops->gemm(N, O, R, in, R, head_packed, y_t, O, 1);
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t o = 0; o < O; ++o) y_t[n * O + o] += head_b[o];
  }

  // process() at batch 1 with every layer fused: tiles of up to kTile steps, layer by layer,
  // each layer's steps in one call (fused_steps: the step inlined into its loop). A layer whose
  // input weights are worth reading once per tile (`wide`: 32 KiB or more; below that they stay
  // in L1 anyway, and forming the input sums inside the step measured faster: the core then
  // overlaps them with the previous step's activations, e.g. LSTM H = C = 32) gets its input
  // sums for the whole tile first (fused_in: one pass over the input weights for kTile steps),
  // the others form them inside each step. Each step's state is kept for the next layer (or the
  // head). A layer's step t reads its own previous state and its input at t only, so this order
  // computes every step exactly as step() does (the same functions on the same values): bitwise
  // step()'s results.
  static constexpr std::int64_t kTile = 16;
  bool tiled = false;
  std::vector<char> wide;                     // per layer: input sums per tile
  internal::AlignedArray<Scalar> tile_in;     // input sums [kTile][fin]
  internal::AlignedArray<Scalar> tile_h[2];   // layer outputs [kTile][R], ping-pong
  void tile(const Scalar* x, Scalar* y, std::int64_t T) noexcept {
    const Scalar* in = x;
    std::int64_t ld = E;
    for (std::int64_t l = 0; l < L; ++l) {
      const isa::StepLayer<Scalar>& layer = layers[std::size_t(l)];
      Scalar* hl = h.data() + l * R;
      Scalar* cl = lstm ? c.data() + l * H : nullptr;
      // The last layer of a model without head writes y directly (y_t = its state).
      const bool direct = l == L - 1 && !has_head;
      Scalar* out = direct ? y : tile_h[l & 1].data();
      if (wide[std::size_t(l)]) {
        layer.fused_in(layer, in, ld, T, tile_in.data());
        layer.fused_steps(layer, nullptr, 0, tile_in.data(), T, hl, cl, scratch.data(), out, R);
      } else {
        layer.fused_steps(layer, in, ld, nullptr, T, hl, cl, scratch.data(), out, R);
      }
      in = out, ld = R;
    }
    if (has_head)
      for (std::int64_t t = 0; t < T; ++t) head(in + t * R, y + t * O);
  }
};

template <typename Scalar>
void Stream<Scalar>::Impl::lowp_step(const Scalar* in) {
  const detail::ModelImpl& m = *model.impl();
  const ModelConfig& cfg = model.config();
  auto p = [](const void* v) { return static_cast<const Scalar*>(v); };
  for (std::int64_t l = 0; l < L; ++l) {
    const detail::LayerWeights& w = m.layers[std::size_t(l)];
    Scalar* h_l = h.data() + l * N * R;
    Scalar* c_l = lstm ? c.data() + l * N * H : nullptr;
    std::copy(h_l, h_l + N * R, hprev.data());
    if (lstm) std::copy(c_l, c_l + N * H, cprev.data());
    Options opt;
    opt.num_threads = 1;
    opt.precision = precision;
    opt.weights_packed = lp_packed[std::size_t(l)] != 0;
    Scalar* ws = lp_ws[std::size_t(l)].data();
    auto common = [&](auto a) {
      a.x = in, a.w_ih = p(w.w_ih), a.w_hh = p(w.w_hh), a.b_ih = p(w.b_ih), a.b_hh = p(w.b_hh);
      a.h0 = hprev.data(), a.y = ystep.data(), a.h_n = h_l;
      return a;
    };
    if (cfg.regularised_kernel()) {  // layer norm / zoneout: the regularised kernel, as forward
      if (lstm) {
        LstmLnForwardArgs<Scalar> a = common(LstmLnForwardArgs<Scalar>{});
        detail::set_regularised<Scalar>(a, cfg, w);
        a.c0 = cprev.data(), a.c_n = c_l;
        lstm_ln_forward(Dims{1, N, w.C, H, cfg.proj_size}, a, opt, ws);
      } else {
        GruLnForwardArgs<Scalar> a = common(GruLnForwardArgs<Scalar>{});
        detail::set_regularised<Scalar>(a, cfg, w);
        gru_ln_forward(Dims{1, N, w.C, H}, a, opt, ws);
      }
      in = h_l;
      continue;
    }
    if (lstm) {
      LstmForwardArgs<Scalar> a = common(LstmForwardArgs<Scalar>{});
      a.c0 = cprev.data(), a.c_n = c_l, a.w_peep = p(w.w_peep), a.w_hr = p(w.w_hr);
      lstm_forward(Dims{1, N, w.C, H, cfg.proj_size}, a, opt, ws);
    } else if (cfg.cell == CellType::gru) {
      GruForwardArgs<Scalar> a = common(GruForwardArgs<Scalar>{});
      a.variant = cfg.variant;
      gru_forward(Dims{1, N, w.C, H}, a, opt, ws);
    } else {
      RnnForwardArgs<Scalar> a = common(RnnForwardArgs<Scalar>{});
      a.nonlinearity = cfg.nonlinearity;
      rnn_forward(Dims{1, N, w.C, H}, a, opt, ws);
    }
    lp_packed[std::size_t(l)] = 1;
    in = h_l;
  }
}

// A float Model: every layer's weights packed for isa::Kernels::step, and at batch 1 laid out
// for the fused step (fused_step.cc; StreamOptions::fast: the reassociated one).
template <typename Scalar>
void Stream<Scalar>::Impl::init_float() {
  const ModelConfig& c = model.config();
  const detail::ModelImpl& m = *model.impl();
  const std::int64_t G = c.cell == CellType::lstm ? 4 : c.cell == CellType::gru ? 3 : 1;
  const std::int64_t P = c.proj_size;
  const bool before = c.cell == CellType::gru && c.variant == GruVariant::reset_before;

  // Packed layout per layer: w_ih [C -> GH], w_hh [R -> GH] (reset_before: [H -> 2H] and the
  // n rows [H -> H]), w_hr [H -> P].
  std::size_t total = 0;
  for (const detail::LayerWeights& w : m.layers) {
    total += ops->packed_size(w.C, G * H);
    total += before ? ops->packed_size(H, 2 * H) + ops->packed_size(H, H)
                    : ops->packed_size(R, G * H);
    if (P > 0) total += ops->packed_size(H, P);
  }
  packed.resize(total);
  Scalar* at = packed.data();
  auto p = [](const void* v) { return static_cast<const Scalar*>(v); };
  for (const detail::LayerWeights& w : m.layers) {
    isa::StepLayer<Scalar> sl;
    sl.cell = c.cell == CellType::lstm  ? isa::StepCell::lstm
              : c.cell == CellType::gru ? isa::StepCell::gru
                                        : isa::StepCell::rnn;
    sl.variant = c.variant;
    sl.act = c.nonlinearity;
    sl.N = N, sl.C = w.C, sl.H = H, sl.P = P;
    ops->pack(p(w.w_ih), w.C, G * H, w.C, true, at);
    sl.wih_p = at;
    at += ops->packed_size(w.C, G * H);
    if (before) {
      ops->pack(p(w.w_hh), H, 2 * H, H, true, at);
      sl.whh_p = at;
      at += ops->packed_size(H, 2 * H);
      ops->pack(p(w.w_hh) + 2 * H * H, H, H, H, true, at);
      sl.whn_p = at;
      at += ops->packed_size(H, H);
    } else {
      ops->pack(p(w.w_hh), R, G * H, R, true, at);
      sl.whh_p = at;
      at += ops->packed_size(R, G * H);
    }
    if (P > 0) {
      ops->pack(p(w.w_hr), H, P, H, true, at);
      sl.whr_p = at;
      at += ops->packed_size(H, P);
    }
    sl.b_ih = p(w.b_ih), sl.b_hh = p(w.b_hh), sl.w_peep = p(w.w_peep);
    layers.push_back(sl);
  }
  // Batch 1: the fused step, where the layer has one (fused_step.cc), laid out beside.
  if (ops->fused_size && ops->fuse) {
    std::size_t ftotal = 0;
    for (const isa::StepLayer<Scalar>& sl : layers) ftotal += ops->fused_size(sl);
    fused.resize(ftotal);
    Scalar* fat = fused.data();
    for (std::size_t l = 0; l < layers.size(); ++l) {
      const std::size_t n = ops->fused_size(layers[l]);
      if (n == 0) continue;
      // StreamOptions::fast: the reassociated step (same storage).
      const auto fuse = options.fast && ops->fuse_fast ? ops->fuse_fast : ops->fuse;
      fuse(layers[l], p(m.layers[l].w_ih), p(m.layers[l].w_hh), fat);
      fat += n;
    }
  }
}

// A bfloat16 Model: one T = 1 kernel call per layer and step on its own workspace (see the top
// of the file).
template <typename Scalar>
void Stream<Scalar>::Impl::init_lowp() {
  const ModelConfig& c = model.config();
  const detail::ModelImpl& m = *model.impl();
  lowp = true;
  precision = model.precision();
  for (std::size_t l = 0; l < m.layers.size(); ++l) {
    const detail::LayerWeights& w = m.layers[l];
    const Dims d{1, N, w.C, H, c.cell == CellType::lstm ? c.proj_size : 0};
    // (an int8 Model refused, when it was made, what the first step's quantisation and the
    // kernels would throw at: step() and process() cannot)
    const std::size_t n =
        c.regularised_kernel() ? (c.cell == CellType::lstm ? lstm_ln_forward_workspace_size(d)
                                                           : gru_ln_forward_workspace_size(d))
        : c.cell == CellType::lstm  ? lstm_forward_workspace_size(d, precision)
        : c.cell == CellType::gru ? gru_forward_workspace_size(d, precision)
                                  : rnn_forward_workspace_size(d, precision);
    lp_ws.emplace_back();
    lp_ws.back().resize(n);
  }
  lp_packed.assign(m.layers.size(), 0);
  hprev.resize(std::size_t(N * R));
  cprev.resize(lstm ? std::size_t(N * H) : 0);
  ystep.resize(std::size_t(N * R));
}

template <typename Scalar>
Stream<Scalar>::Stream(const Model& model, std::int64_t batch)
    : Stream(model, batch, StreamOptions()) {}

template <typename Scalar>
Stream<Scalar>::Stream(const Model& model, std::int64_t batch, const StreamOptions& options) {
  const ModelConfig& c = model.config();
  if (dtype_of<Scalar>() != c.dtype)
    throw std::invalid_argument(std::string("fusedrnn::Stream: the model is ") +
                                dtype_name(c.dtype) + ", the Stream " +
                                dtype_name(dtype_of<Scalar>()));
  if (c.bidirectional)
    throw ConfigError("fusedrnn::Stream: the model is bidirectional; its backward direction "
                      "reads the whole sequence, so it cannot run one step at a time (use "
                      "Model::forward)");
  if (batch < 1 || batch > (std::int64_t(1) << 24))
    throw std::invalid_argument("fusedrnn::Stream: batch must be in [1, 2^24], got " +
                                std::to_string(batch));
  auto impl = std::make_unique<Impl>(model);
  Impl& s = *impl;
  s.options = options;
  const detail::ModelImpl& m = *model.impl();
  s.ops = &isa::kernels<Scalar>();
  s.N = batch, s.L = c.num_layers, s.H = c.hidden_size, s.R = c.state_size();
  s.E = c.rnn_input_size(), s.O = c.output_size;
  s.lstm = c.cell == CellType::lstm;
  s.has_head = c.has_head;
  const std::int64_t G = c.cell == CellType::lstm ? 4 : c.cell == CellType::gru ? 3 : 1;
  // Construction by precision: a float32 Model gets the packed step weights (and at batch 1 the
  // fused step's layouts); a bfloat16 or int8 Model, or one with layer norm or zoneout, only the
  // workspaces of its T = 1 kernel calls (its step never reads the float layouts, so they are
  // not built).
  if (model.precision() != Precision::float32 || c.regularised_kernel())
    s.init_lowp();
  else
    s.init_float();
  const std::int64_t H = s.H, R = s.R, N = s.N;
  s.h.resize(std::size_t(s.L * N * R));
  s.c.resize(s.lstm ? std::size_t(s.L * N * H) : 0);
  if (!s.lowp) {
    s.scratch.resize(std::max(isa::step_scratch_size(N, H, G), isa::fused_scratch_size(H)));
    // process() in tiles (Impl::tile): batch 1, every layer with its fused step.
    s.tiled = N == 1 && !s.layers.empty();
    std::int64_t fin = 0;
    for (const isa::StepLayer<Scalar>& sl : s.layers) {
      s.tiled = s.tiled && sl.fused && sl.fused_in && sl.fused_steps;
      const bool w = sl.C * std::int64_t(G) * H * std::int64_t(sizeof(Scalar)) >= 32768;
      s.wide.push_back(w ? 1 : 0);
      if (w) fin = std::max(fin, sl.fin);
    }
    if (s.tiled) {
      s.tile_in.resize(std::size_t(Impl::kTile * fin));
      for (auto& b : s.tile_h) b.resize(std::size_t(Impl::kTile * R));
    }
  }
  auto p = [](const void* v) { return static_cast<const Scalar*>(v); };
  if (c.token_input()) {
    s.xbuf.resize(std::size_t(N * s.E));
    s.embed = p(m.embed);
  }
  if (c.has_head) {
    s.head_packed = reinterpret_cast<const Scalar*>(m.head_packed.data());
    s.head_b = p(m.head_b);
  }
  impl_ = std::move(impl);
  reset();
}

template <typename Scalar>
Stream<Scalar>::~Stream() = default;
template <typename Scalar>
Stream<Scalar>::Stream(Stream&&) noexcept = default;
template <typename Scalar>
Stream<Scalar>& Stream<Scalar>::operator=(Stream&&) noexcept = default;

// (FlushDenormals of kernels/fpenv.h as a public class: this file is compiled once, not per
// instruction-set copy, so external linkage is safe here.)
ScopedFlushDenormals::ScopedFlushDenormals() noexcept {
#ifdef FUSEDRNN_HAVE_MXCSR
  saved_ = _mm_getcsr();
  constexpr unsigned kFlags = FlushDenormals::kFtz | FlushDenormals::kDaz;
  if ((saved_ & kFlags) != kFlags) _mm_setcsr(saved_ | kFlags);
#else
  (void)saved_;
#endif
}

ScopedFlushDenormals::~ScopedFlushDenormals() {
#ifdef FUSEDRNN_HAVE_MXCSR
  constexpr unsigned kFlags = FlushDenormals::kFtz | FlushDenormals::kDaz;
  if ((saved_ & kFlags) != kFlags) _mm_setcsr(saved_);
#endif
}

template <typename Scalar>
void Stream<Scalar>::step(const Scalar* x_t, Scalar* y_t) noexcept {
  if (!x_t || !y_t) return;  // (documented: nothing happens; it cannot throw)
  const FlushDenormals fp;  // fpenv.h
  impl_->step(x_t, y_t);
}

template <typename Scalar>
void Stream<Scalar>::process(const Scalar* x, Scalar* y, std::int64_t steps) {
  if (steps < 0)
    throw std::invalid_argument("fusedrnn::Stream::process: steps must be >= 0, got " +
                                std::to_string(steps));
  if (!x || !y)
    throw std::invalid_argument(std::string("fusedrnn::Stream::process: ") +
                                (!x ? "x" : "y") + " is null");
  Impl& s = *impl_;
  const std::int64_t in = s.N * s.E, out = s.N * s.O;
  const FlushDenormals fp;  // once per block, not per step
  if (s.tiled) {
    for (std::int64_t t = 0; t < steps; t += Impl::kTile)
      s.tile(x + t * in, y + t * out, std::min(Impl::kTile, steps - t));
    return;
  }
  for (std::int64_t t = 0; t < steps; ++t) s.step(x + t * in, y + t * out);
}

template <typename Scalar>
bool Stream<Scalar>::step_tokens(const std::int64_t* tokens_t, Scalar* y_t) noexcept {
  Impl& s = *impl_;
  if (!s.embed || !tokens_t || !y_t) return false;
  const std::int64_t V = s.model.config().vocab_size;
  for (std::int64_t n = 0; n < s.N; ++n)
    if (tokens_t[n] < 0 || tokens_t[n] >= V) return false;
  for (std::int64_t n = 0; n < s.N; ++n)
    std::memcpy(s.xbuf.data() + n * s.E, s.embed + tokens_t[n] * s.E,
                std::size_t(s.E) * sizeof(Scalar));
  step(s.xbuf.data(), y_t);
  return true;
}

template <typename Scalar>
void Stream<Scalar>::reset() noexcept {
  set_state(nullptr, nullptr);
}

template <typename Scalar>
void Stream<Scalar>::set_state(const Scalar* h, const Scalar* c) noexcept {
  Impl& s = *impl_;
  if (h)
    std::copy(h, h + s.h.size(), s.h.data());
  else
    std::fill(s.h.data(), s.h.data() + s.h.size(), Scalar(0));
  if (c)
    std::copy(c, c + s.c.size(), s.c.data());
  else
    std::fill(s.c.data(), s.c.data() + s.c.size(), Scalar(0));
}

template <typename Scalar>
const Scalar* Stream<Scalar>::h() const noexcept {
  return impl_->h.data();
}
template <typename Scalar>
const Scalar* Stream<Scalar>::c() const noexcept {
  return impl_->lstm ? impl_->c.data() : nullptr;
}
template <typename Scalar>
std::int64_t Stream<Scalar>::batch() const noexcept {
  return impl_->N;
}
template <typename Scalar>
std::int64_t Stream<Scalar>::input_size() const noexcept {
  return impl_->E;
}
template <typename Scalar>
std::int64_t Stream<Scalar>::output_size() const noexcept {
  return impl_->O;
}
template <typename Scalar>
const Model& Stream<Scalar>::model() const noexcept {
  return impl_->model;
}

template <typename Scalar>
const StreamOptions& Stream<Scalar>::options() const noexcept {
  return impl_->options;
}

template class Stream<float>;
template class Stream<double>;

}  // namespace fusedrnn
