// Bindings of the regularised / normalised LSTM and GRU kernels (fusedrnn/lstm_ln.h): numpy arrays
// (preallocated by fusedrnn.regularised) into the argument structs, keywords read by name
// (Keywords, common.h), the GIL released around the call. dims is (T, N, C, H), or the LSTM's
// (T, N, C, H, P) with a projection (w_hr [P, H]; h-shaped arrays [.., P]); layer_norm is
// "none", "haste" or "tfa".
#include "common.h"
#include <array>
#include <type_traits>

#include "fusedrnn/lstm_ln.h"

namespace fusedrnn_py {

namespace {

fusedrnn::LayerNorm layer_norm_of(Keywords& kw) {
  const std::string s = kw.value<std::string>("layer_norm", "none");
  if (s == "none") return fusedrnn::LayerNorm::none;
  if (s == "haste") return fusedrnn::LayerNorm::haste;
  if (s == "tfa") return fusedrnn::LayerNorm::tfa;
  throw py::value_error("layer_norm must be 'none', 'haste' or 'tfa', got '" + s + "'");
}

// The dropout masks: recurrent_mask [N, R], or with gate_masks one per gate block, [G, N, R],
// and input_mask [G, N, C] (gate_masks only).
template <typename S, class A>
void read_masks(Keywords& kw, A& a, const fusedrnn::Dims& d, const Counts& n) {
  a.gate_masks = kw.value<bool>("gate_masks", false);
  const std::size_t G = n.GH / std::size_t(d.H);
  a.recurrent_mask = kw.opt_in<S>("recurrent_mask", a.gate_masks ? G * n.NR : n.NR);
  a.input_mask = kw.opt_in<S>("input_mask", G * std::size_t(d.N) * std::size_t(d.C));
}

// The arguments of both cells' kernels, read by name; the LSTM's (kLstm) have the cell state.
template <typename S, class A>
void read_forward(Keywords& kw, A& a, const fusedrnn::Dims& d, const Counts& n,
                  fusedrnn::LayerNorm mode, std::size_t cache_n) {
  constexpr bool kLstm = std::is_same_v<A, fusedrnn::LstmLnForwardArgs<S>>;
  a.x = kw.in<S>("x", n.TNC);
  a.w_ih = kw.in<S>("w_ih", n.GHC);
  a.w_hh = kw.in<S>("w_hh", n.GHR);
  a.b_ih = kw.opt_in<S>("b_ih", n.GH);
  a.b_hh = kw.opt_in<S>("b_hh", n.GH);
  a.h0 = kw.opt_in<S>("h0", n.NR);
  a.layer_norm = mode;
  a.ln_eps = kw.value<S>("ln_eps", S(1e-5));
  a.ln_gamma_ih = kw.opt_in<S>("ln_gamma_ih", n.GH);
  a.ln_beta_ih = kw.opt_in<S>("ln_beta_ih", n.GH);
  a.ln_gamma_hh = kw.opt_in<S>("ln_gamma_hh", n.GH);
  a.ln_beta_hh = kw.opt_in<S>("ln_beta_hh", n.GH);
  a.zoneout_h_mask = kw.opt_in<S>("zoneout_h_mask", n.TNR);
  a.zoneout_h = kw.value<S>("zoneout_h", 0);
  a.zoneout_draw = kw.value<bool>("zoneout_draw", false);
  a.zoneout_seed = kw.value<std::uint64_t>("zoneout_seed", 0);
  read_masks<S>(kw, a, d, n);
  a.lengths = kw.opt_in<std::int64_t>("lengths", n.N);
  a.y = kw.out<S>("y", n.TNR);
  a.h_n = kw.out<S>("h_n", n.NR);
  a.cache = kw.opt_out<S>("cache", cache_n);
  if constexpr (kLstm) {
    a.w_hr = kw.opt_in<S>("w_hr", n.PH);
    a.c0 = kw.opt_in<S>("c0", n.NH);
    a.ln_gamma_c = kw.opt_in<S>("ln_gamma_c", d.H);
    a.ln_beta_c = kw.opt_in<S>("ln_beta_c", d.H);
    a.zoneout_c_mask = kw.opt_in<S>("zoneout_c_mask", std::size_t(d.T) * n.NH);
    a.zoneout_c = kw.value<S>("zoneout_c", 0);
    a.c_n = kw.out<S>("c_n", n.NH);
  }
}

template <typename S, class A>
void read_backward(Keywords& kw, A& a, const fusedrnn::Dims& d, const Counts& n,
                   fusedrnn::LayerNorm mode, std::size_t cache_n) {
  constexpr bool kLstm = std::is_same_v<A, fusedrnn::LstmLnBackwardArgs<S>>;
  a.x = kw.in<S>("x", n.TNC);
  a.w_ih = kw.in<S>("w_ih", n.GHC);
  a.w_hh = kw.in<S>("w_hh", n.GHR);
  a.layer_norm = mode;
  a.ln_gamma_ih = kw.opt_in<S>("ln_gamma_ih", n.GH);
  a.ln_gamma_hh = kw.opt_in<S>("ln_gamma_hh", n.GH);
  a.zoneout_h_mask = kw.opt_in<S>("zoneout_h_mask", n.TNR);
  a.zoneout_h = kw.value<S>("zoneout_h", 0);
  a.zoneout_draw = kw.value<bool>("zoneout_draw", false);
  a.zoneout_seed = kw.value<std::uint64_t>("zoneout_seed", 0);
  read_masks<S>(kw, a, d, n);
  a.lengths = kw.opt_in<std::int64_t>("lengths", n.N);
  a.cache = kw.in<S>("cache", cache_n);
  a.dy = kw.opt_in<S>("dy", n.TNR);
  a.dh_n = kw.opt_in<S>("dh_n", n.NR);
  a.dx = kw.opt_out<S>("dx", n.TNC);
  a.dh0 = kw.opt_out<S>("dh0", n.NR);
  a.dw_ih = kw.opt_out<S>("dw_ih", n.GHC);
  a.dw_hh = kw.opt_out<S>("dw_hh", n.GHR);
  a.db_ih = kw.opt_out<S>("db_ih", n.GH);
  a.db_hh = kw.opt_out<S>("db_hh", n.GH);
  a.dln_gamma_ih = kw.opt_out<S>("dln_gamma_ih", n.GH);
  a.dln_beta_ih = kw.opt_out<S>("dln_beta_ih", n.GH);
  a.dln_gamma_hh = kw.opt_out<S>("dln_gamma_hh", n.GH);
  a.dln_beta_hh = kw.opt_out<S>("dln_beta_hh", n.GH);
  if constexpr (kLstm) {
    a.w_hr = kw.opt_in<S>("w_hr", n.PH);
    a.ln_gamma_c = kw.opt_in<S>("ln_gamma_c", d.H);
    a.zoneout_c_mask = kw.opt_in<S>("zoneout_c_mask", std::size_t(d.T) * n.NH);
    a.zoneout_c = kw.value<S>("zoneout_c", 0);
    a.dc_n = kw.opt_in<S>("dc_n", n.NH);
    a.dc0 = kw.opt_out<S>("dc0", n.NH);
    a.dln_gamma_c = kw.opt_out<S>("dln_gamma_c", d.H);
    a.dln_beta_c = kw.opt_out<S>("dln_beta_c", d.H);
    a.dw_hr = kw.opt_out<S>("dw_hr", n.PH);
  }
}

// One cell's three functions: <name>_sizes, <name>_forward, <name>_backward. Cell: sizes(d),
// forward<S>, backward<S> and the args templates.
template <template <typename> class FArgs, template <typename> class BArgs, class Sizes,
          class Fwd, class Bwd>
void register_cell(py::module_& m, const std::string& name, std::size_t G, Sizes sizes, Fwd fwd,
                   Bwd bwd, const char* fwd_doc, const char* bwd_doc) {
  m.def(
      (name + "_sizes").c_str(),
      [sizes](py::tuple dims) {
        const auto s = sizes(dims_of(dims));
        return py::make_tuple(s[0], s[1], s[2]);
      },
      py::arg("dims"), "(cache, forward workspace, backward workspace) sizes in scalars.");
  for (const bool forward : {true, false}) {
    const std::string fn = name + (forward ? "_forward" : "_backward");
    m.def(
        fn.c_str(),
        [=](py::tuple dims, py::kwargs kwargs) {
          Keywords kw(fn, std::move(kwargs));
          const auto d = dims_of(dims);
          const fusedrnn::Options opt = kw.options(/*packed=*/false);
          const auto s = sizes(d);  // checks dims
          const Counts n(d, G);
          const auto mode = layer_norm_of(kw);
          dispatch_dtype(kw.required("x"), [&](auto tag) {
            using S = decltype(tag);
            if (forward) {
              FArgs<S> a;
              read_forward<S>(kw, a, d, n, mode, s[0]);
              S* ws = kw.out<S>("workspace", s[1]);
              kw.done();
              py::gil_scoped_release nogil;
              fwd(d, a, opt, ws);
            } else {
              BArgs<S> a;
              read_backward<S>(kw, a, d, n, mode, s[0]);
              S* ws = kw.out<S>("workspace", s[2]);
              kw.done();
              py::gil_scoped_release nogil;
              bwd(d, a, opt, ws);
            }
          });
        },
        py::arg("dims"), forward ? fwd_doc : bwd_doc);
  }
}

}  // namespace

void register_lstm_ln(py::module_& m) {
  using fusedrnn::Dims;
  using Sz = std::array<std::size_t, 3>;
  register_cell<fusedrnn::LstmLnForwardArgs, fusedrnn::LstmLnBackwardArgs>(
      m, "lstm_ln", 4,
      [](const Dims& d) {
        return Sz{fusedrnn::lstm_ln_cache_size(d), fusedrnn::lstm_ln_forward_workspace_size(d),
                  fusedrnn::lstm_ln_backward_workspace_size(d)};
      },
      [](const Dims& d, const auto& a, const fusedrnn::Options& o, auto* ws) {
        fusedrnn::lstm_ln_forward(d, a, o, ws);
      },
      [](const Dims& d, const auto& a, const fusedrnn::Options& o, auto* ws) {
        fusedrnn::lstm_ln_backward(d, a, o, ws);
      },
      "Regularised / normalised LSTM forward into preallocated arrays. Keywords: x, w_ih, w_hh, "
      "w_hr (dims with P > 0), b_ih, b_hh, h0, c0, layer_norm, ln_eps, ln_gamma_ih, ln_beta_ih, ln_gamma_hh, "
      "ln_beta_hh, ln_gamma_c, ln_beta_c, zoneout_h_mask, zoneout_c_mask, zoneout_h, "
      "zoneout_c, zoneout_draw, zoneout_seed, recurrent_mask, gate_masks, input_mask, lengths, y, h_n, c_n, cache, workspace, and the options "
      "reverse, num_threads.",
      "Regularised / normalised LSTM backward into preallocated arrays (parameter gradients "
      "accumulate). Keywords: x, w_ih, w_hh, w_hr, layer_norm, ln_gamma_ih, ln_gamma_hh, "
      "ln_gamma_c, zoneout_h_mask, zoneout_c_mask, zoneout_h, zoneout_c, zoneout_draw, zoneout_seed, "
      "recurrent_mask, gate_masks, input_mask, lengths, cache, "
      "dy, dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dln_gamma_ih, dln_beta_ih, "
      "dln_gamma_hh, dln_beta_hh, dln_gamma_c, dln_beta_c, dw_hr, workspace, and the options reverse, "
      "num_threads.");
  register_cell<fusedrnn::GruLnForwardArgs, fusedrnn::GruLnBackwardArgs>(
      m, "gru_ln", 3,
      [](const Dims& d) {
        return Sz{fusedrnn::gru_ln_cache_size(d), fusedrnn::gru_ln_forward_workspace_size(d),
                  fusedrnn::gru_ln_backward_workspace_size(d)};
      },
      [](const Dims& d, const auto& a, const fusedrnn::Options& o, auto* ws) {
        fusedrnn::gru_ln_forward(d, a, o, ws);
      },
      [](const Dims& d, const auto& a, const fusedrnn::Options& o, auto* ws) {
        fusedrnn::gru_ln_backward(d, a, o, ws);
      },
      "Regularised / normalised GRU (reset_after) forward into preallocated arrays. Keywords: "
      "x, w_ih, w_hh, b_ih, b_hh, h0, layer_norm ('none' or 'haste'), ln_eps, ln_gamma_ih, "
      "ln_beta_ih, ln_gamma_hh, ln_beta_hh, zoneout_h_mask, zoneout_h, zoneout_draw, "
      "zoneout_seed, recurrent_mask, gate_masks, input_mask, "
      "lengths, y, h_n, cache, workspace, and the options reverse, num_threads.",
      "Regularised / normalised GRU backward into preallocated arrays (parameter gradients "
      "accumulate). Keywords: x, w_ih, w_hh, layer_norm, ln_gamma_ih, ln_gamma_hh, "
      "zoneout_h_mask, zoneout_h, zoneout_draw, zoneout_seed, recurrent_mask, gate_masks, "
      "input_mask, lengths, cache, dy, dh_n, dx, dh0, dw_ih, "
      "dw_hh, db_ih, db_hh, dln_gamma_ih, dln_beta_ih, dln_gamma_hh, dln_beta_hh, workspace, "
      "and the options reverse, num_threads.");
}

}  // namespace fusedrnn_py
