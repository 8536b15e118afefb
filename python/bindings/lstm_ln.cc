// Bindings of the regularised / normalised LSTM kernels (fusedrnn/lstm_ln.h): numpy arrays
// (preallocated by fusedrnn.regularised) into the argument structs, keywords read by name
// (Keywords, common.h), the GIL released around the call. dims is (T, N, C, H); layer_norm is
// "none", "haste" or "tfa".
#include "common.h"
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

}  // namespace

void register_lstm_ln(py::module_& m) {
  m.def(
      "lstm_ln_sizes",
      [](py::tuple dims) {
        const auto d = dims_of(dims);
        return py::make_tuple(fusedrnn::lstm_ln_cache_size(d),
                              fusedrnn::lstm_ln_forward_workspace_size(d),
                              fusedrnn::lstm_ln_backward_workspace_size(d));
      },
      py::arg("dims"), "(cache, forward workspace, backward workspace) sizes in scalars.");
  m.def(
      "lstm_ln_forward",
      [](py::tuple dims, py::kwargs kwargs) {
        Keywords kw("lstm_ln_forward", std::move(kwargs));
        const auto d = dims_of(dims);
        const fusedrnn::Options opt = kw.options(/*packed=*/false);
        const std::size_t cache_n = fusedrnn::lstm_ln_cache_size(d);  // checks dims
        const std::size_t ws_n = fusedrnn::lstm_ln_forward_workspace_size(d);
        const Counts n(d, 4);
        const auto mode = layer_norm_of(kw);
        dispatch_dtype(kw.required("x"), [&](auto tag) {
          using S = decltype(tag);
          fusedrnn::LstmLnForwardArgs<S> a;
          a.x = kw.in<S>("x", n.TNC);
          a.w_ih = kw.in<S>("w_ih", n.GHC);
          a.w_hh = kw.in<S>("w_hh", n.GHR);
          a.b_ih = kw.opt_in<S>("b_ih", n.GH);
          a.b_hh = kw.opt_in<S>("b_hh", n.GH);
          a.h0 = kw.opt_in<S>("h0", n.NR);
          a.c0 = kw.opt_in<S>("c0", n.NH);
          a.layer_norm = mode;
          a.ln_eps = kw.value<S>("ln_eps", S(1e-5));
          a.ln_gamma_ih = kw.opt_in<S>("ln_gamma_ih", n.GH);
          a.ln_beta_ih = kw.opt_in<S>("ln_beta_ih", n.GH);
          a.ln_gamma_hh = kw.opt_in<S>("ln_gamma_hh", n.GH);
          a.ln_beta_hh = kw.opt_in<S>("ln_beta_hh", n.GH);
          a.ln_gamma_c = kw.opt_in<S>("ln_gamma_c", d.H);
          a.ln_beta_c = kw.opt_in<S>("ln_beta_c", d.H);
          a.zoneout_h_mask = kw.opt_in<S>("zoneout_h_mask", n.TNR);
          a.zoneout_c_mask = kw.opt_in<S>("zoneout_c_mask", n.TNR);
          a.zoneout_h = kw.value<S>("zoneout_h", 0);
          a.zoneout_c = kw.value<S>("zoneout_c", 0);
          a.recurrent_mask = kw.opt_in<S>("recurrent_mask", n.NH);
          a.lengths = kw.opt_in<std::int64_t>("lengths", n.N);
          a.y = kw.out<S>("y", n.TNR);
          a.h_n = kw.out<S>("h_n", n.NR);
          a.c_n = kw.out<S>("c_n", n.NH);
          a.cache = kw.opt_out<S>("cache", cache_n);
          S* ws = kw.out<S>("workspace", ws_n);
          kw.done();
          py::gil_scoped_release nogil;
          fusedrnn::lstm_ln_forward<S>(d, a, opt, ws);
        });
      },
      py::arg("dims"),
      "Regularised / normalised LSTM forward into preallocated arrays. Keywords: x, w_ih, w_hh, "
      "b_ih, b_hh, h0, c0, layer_norm, ln_eps, ln_gamma_ih, ln_beta_ih, ln_gamma_hh, "
      "ln_beta_hh, ln_gamma_c, ln_beta_c, zoneout_h_mask, zoneout_c_mask, zoneout_h, "
      "zoneout_c, recurrent_mask, lengths, y, h_n, c_n, cache, workspace, and the options "
      "reverse, num_threads.");
  m.def(
      "lstm_ln_backward",
      [](py::tuple dims, py::kwargs kwargs) {
        Keywords kw("lstm_ln_backward", std::move(kwargs));
        const auto d = dims_of(dims);
        const fusedrnn::Options opt = kw.options(/*packed=*/false);
        const std::size_t cache_n = fusedrnn::lstm_ln_cache_size(d);  // checks dims
        const std::size_t ws_n = fusedrnn::lstm_ln_backward_workspace_size(d);
        const Counts n(d, 4);
        const auto mode = layer_norm_of(kw);
        dispatch_dtype(kw.required("x"), [&](auto tag) {
          using S = decltype(tag);
          fusedrnn::LstmLnBackwardArgs<S> a;
          a.x = kw.in<S>("x", n.TNC);
          a.w_ih = kw.in<S>("w_ih", n.GHC);
          a.w_hh = kw.in<S>("w_hh", n.GHR);
          a.layer_norm = mode;
          a.ln_gamma_ih = kw.opt_in<S>("ln_gamma_ih", n.GH);
          a.ln_gamma_hh = kw.opt_in<S>("ln_gamma_hh", n.GH);
          a.ln_gamma_c = kw.opt_in<S>("ln_gamma_c", d.H);
          a.zoneout_h_mask = kw.opt_in<S>("zoneout_h_mask", n.TNR);
          a.zoneout_c_mask = kw.opt_in<S>("zoneout_c_mask", n.TNR);
          a.zoneout_h = kw.value<S>("zoneout_h", 0);
          a.zoneout_c = kw.value<S>("zoneout_c", 0);
          a.recurrent_mask = kw.opt_in<S>("recurrent_mask", n.NH);
          a.lengths = kw.opt_in<std::int64_t>("lengths", n.N);
          a.cache = kw.in<S>("cache", cache_n);
          a.dy = kw.opt_in<S>("dy", n.TNR);
          a.dh_n = kw.opt_in<S>("dh_n", n.NR);
          a.dc_n = kw.opt_in<S>("dc_n", n.NH);
          a.dx = kw.out<S>("dx", n.TNC);
          a.dh0 = kw.opt_out<S>("dh0", n.NR);
          a.dc0 = kw.opt_out<S>("dc0", n.NH);
          a.dw_ih = kw.opt_out<S>("dw_ih", n.GHC);
          a.dw_hh = kw.opt_out<S>("dw_hh", n.GHR);
          a.db_ih = kw.opt_out<S>("db_ih", n.GH);
          a.db_hh = kw.opt_out<S>("db_hh", n.GH);
          a.dln_gamma_ih = kw.opt_out<S>("dln_gamma_ih", n.GH);
          a.dln_beta_ih = kw.opt_out<S>("dln_beta_ih", n.GH);
          a.dln_gamma_hh = kw.opt_out<S>("dln_gamma_hh", n.GH);
          a.dln_beta_hh = kw.opt_out<S>("dln_beta_hh", n.GH);
          a.dln_gamma_c = kw.opt_out<S>("dln_gamma_c", d.H);
          a.dln_beta_c = kw.opt_out<S>("dln_beta_c", d.H);
          S* ws = kw.out<S>("workspace", ws_n);
          kw.done();
          py::gil_scoped_release nogil;
          fusedrnn::lstm_ln_backward<S>(d, a, opt, ws);
        });
      },
      py::arg("dims"),
      "Regularised / normalised LSTM backward into preallocated arrays (parameter gradients "
      "accumulate). Keywords: x, w_ih, w_hh, layer_norm, ln_gamma_ih, ln_gamma_hh, ln_gamma_c, "
      "zoneout_h_mask, zoneout_c_mask, zoneout_h, zoneout_c, recurrent_mask, lengths, cache, "
      "dy, dh_n, dc_n, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dln_gamma_ih, dln_beta_ih, "
      "dln_gamma_hh, dln_beta_hh, dln_gamma_c, dln_beta_c, workspace, and the options reverse, "
      "num_threads.");
}

}  // namespace fusedrnn_py
