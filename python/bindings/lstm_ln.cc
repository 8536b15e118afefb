// Bindings of the regularised / normalised LSTM kernels (fusedrnn/lstm_ln.h): numpy arrays
// (preallocated by fusedrnn.regularised) into the argument structs, the GIL released around the
// call. dims is (T, N, C, H); layer_norm is "none", "haste" or "tfa".
#include "common.h"
#include "fusedrnn/lstm_ln.h"

namespace fusedrnn_py {

namespace {

fusedrnn::LayerNorm layer_norm_of(const std::string& s) {
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
      [](py::tuple dims, py::handle x, py::handle w_ih, py::handle w_hh, py::handle b_ih,
         py::handle b_hh, py::handle h0, py::handle c0, const std::string& layer_norm,
         double ln_eps, py::handle ln_gamma_ih, py::handle ln_beta_ih, py::handle ln_gamma_hh,
         py::handle ln_beta_hh, py::handle ln_gamma_c, py::handle ln_beta_c,
         py::handle zoneout_h_mask, py::handle zoneout_c_mask, double zoneout_h,
         double zoneout_c, py::handle recurrent_mask, py::handle lengths, py::handle y,
         py::handle h_n, py::handle c_n, py::handle cache, py::handle workspace, bool reverse,
         int num_threads) {
        const auto d = dims_of(dims);
        const std::size_t cache_n = fusedrnn::lstm_ln_cache_size(d);  // checks dims
        const std::size_t ws_n = fusedrnn::lstm_ln_forward_workspace_size(d);
        const Counts n(d, 4);
        const auto mode = layer_norm_of(layer_norm);
        dispatch_dtype(x, [&](auto tag) {
          using S = decltype(tag);
          fusedrnn::LstmLnForwardArgs<S> a;
          a.x = in<S>(x, "x", n.TNC);
          a.w_ih = in<S>(w_ih, "w_ih", n.GHC);
          a.w_hh = in<S>(w_hh, "w_hh", n.GHR);
          a.b_ih = opt_in<S>(b_ih, "b_ih", n.GH);
          a.b_hh = opt_in<S>(b_hh, "b_hh", n.GH);
          a.h0 = opt_in<S>(h0, "h0", n.NR);
          a.c0 = opt_in<S>(c0, "c0", n.NH);
          a.layer_norm = mode;
          a.ln_eps = S(ln_eps);
          a.ln_gamma_ih = opt_in<S>(ln_gamma_ih, "ln_gamma_ih", n.GH);
          a.ln_beta_ih = opt_in<S>(ln_beta_ih, "ln_beta_ih", n.GH);
          a.ln_gamma_hh = opt_in<S>(ln_gamma_hh, "ln_gamma_hh", n.GH);
          a.ln_beta_hh = opt_in<S>(ln_beta_hh, "ln_beta_hh", n.GH);
          a.ln_gamma_c = opt_in<S>(ln_gamma_c, "ln_gamma_c", d.H);
          a.ln_beta_c = opt_in<S>(ln_beta_c, "ln_beta_c", d.H);
          a.zoneout_h_mask = opt_in<S>(zoneout_h_mask, "zoneout_h_mask", n.TNR);
          a.zoneout_c_mask = opt_in<S>(zoneout_c_mask, "zoneout_c_mask", n.TNR);
          a.zoneout_h = S(zoneout_h);
          a.zoneout_c = S(zoneout_c);
          a.recurrent_mask = opt_in<S>(recurrent_mask, "recurrent_mask", n.NH);
          a.lengths = opt_in<std::int64_t>(lengths, "lengths", n.N);
          a.y = out<S>(y, "y", n.TNR);
          a.h_n = out<S>(h_n, "h_n", n.NR);
          a.c_n = out<S>(c_n, "c_n", n.NH);
          a.cache = opt_out<S>(cache, "cache", cache_n);
          S* ws = out<S>(workspace, "workspace", ws_n);
          py::gil_scoped_release nogil;
          fusedrnn::lstm_ln_forward<S>(d, a, options_of(reverse, num_threads), ws);
        });
      },
      py::arg("dims"), py::kw_only(), py::arg("x"), py::arg("w_ih"), py::arg("w_hh"),
      py::arg("b_ih") = py::none(), py::arg("b_hh") = py::none(), py::arg("h0") = py::none(),
      py::arg("c0") = py::none(), py::arg("layer_norm") = "none", py::arg("ln_eps") = 1e-5,
      py::arg("ln_gamma_ih") = py::none(), py::arg("ln_beta_ih") = py::none(),
      py::arg("ln_gamma_hh") = py::none(), py::arg("ln_beta_hh") = py::none(),
      py::arg("ln_gamma_c") = py::none(), py::arg("ln_beta_c") = py::none(),
      py::arg("zoneout_h_mask") = py::none(), py::arg("zoneout_c_mask") = py::none(),
      py::arg("zoneout_h") = 0.0, py::arg("zoneout_c") = 0.0,
      py::arg("recurrent_mask") = py::none(), py::arg("lengths") = py::none(), py::arg("y"),
      py::arg("h_n"), py::arg("c_n"), py::arg("cache") = py::none(), py::arg("workspace"),
      py::arg("reverse") = false, py::arg("num_threads") = 0,
      "Regularised / normalised LSTM forward into preallocated arrays.");
  m.def(
      "lstm_ln_backward",
      [](py::tuple dims, py::handle x, py::handle w_ih, py::handle w_hh,
         const std::string& layer_norm, py::handle ln_gamma_ih, py::handle ln_gamma_hh,
         py::handle ln_gamma_c, py::handle zoneout_h_mask, py::handle zoneout_c_mask,
         double zoneout_h, double zoneout_c, py::handle recurrent_mask, py::handle lengths,
         py::handle cache, py::handle dy, py::handle dh_n, py::handle dc_n, py::handle dx,
         py::handle dh0, py::handle dc0, py::handle dw_ih, py::handle dw_hh, py::handle db_ih,
         py::handle db_hh, py::handle dln_gamma_ih, py::handle dln_beta_ih,
         py::handle dln_gamma_hh, py::handle dln_beta_hh, py::handle dln_gamma_c,
         py::handle dln_beta_c, py::handle workspace, bool reverse, int num_threads) {
        const auto d = dims_of(dims);
        const std::size_t cache_n = fusedrnn::lstm_ln_cache_size(d);  // checks dims
        const std::size_t ws_n = fusedrnn::lstm_ln_backward_workspace_size(d);
        const Counts n(d, 4);
        const auto mode = layer_norm_of(layer_norm);
        dispatch_dtype(x, [&](auto tag) {
          using S = decltype(tag);
          fusedrnn::LstmLnBackwardArgs<S> a;
          a.x = in<S>(x, "x", n.TNC);
          a.w_ih = in<S>(w_ih, "w_ih", n.GHC);
          a.w_hh = in<S>(w_hh, "w_hh", n.GHR);
          a.layer_norm = mode;
          a.ln_gamma_ih = opt_in<S>(ln_gamma_ih, "ln_gamma_ih", n.GH);
          a.ln_gamma_hh = opt_in<S>(ln_gamma_hh, "ln_gamma_hh", n.GH);
          a.ln_gamma_c = opt_in<S>(ln_gamma_c, "ln_gamma_c", d.H);
          a.zoneout_h_mask = opt_in<S>(zoneout_h_mask, "zoneout_h_mask", n.TNR);
          a.zoneout_c_mask = opt_in<S>(zoneout_c_mask, "zoneout_c_mask", n.TNR);
          a.zoneout_h = S(zoneout_h);
          a.zoneout_c = S(zoneout_c);
          a.recurrent_mask = opt_in<S>(recurrent_mask, "recurrent_mask", n.NH);
          a.lengths = opt_in<std::int64_t>(lengths, "lengths", n.N);
          a.cache = in<S>(cache, "cache", cache_n);
          a.dy = opt_in<S>(dy, "dy", n.TNR);
          a.dh_n = opt_in<S>(dh_n, "dh_n", n.NR);
          a.dc_n = opt_in<S>(dc_n, "dc_n", n.NH);
          a.dx = out<S>(dx, "dx", n.TNC);
          a.dh0 = opt_out<S>(dh0, "dh0", n.NR);
          a.dc0 = opt_out<S>(dc0, "dc0", n.NH);
          a.dw_ih = opt_out<S>(dw_ih, "dw_ih", n.GHC);
          a.dw_hh = opt_out<S>(dw_hh, "dw_hh", n.GHR);
          a.db_ih = opt_out<S>(db_ih, "db_ih", n.GH);
          a.db_hh = opt_out<S>(db_hh, "db_hh", n.GH);
          a.dln_gamma_ih = opt_out<S>(dln_gamma_ih, "dln_gamma_ih", n.GH);
          a.dln_beta_ih = opt_out<S>(dln_beta_ih, "dln_beta_ih", n.GH);
          a.dln_gamma_hh = opt_out<S>(dln_gamma_hh, "dln_gamma_hh", n.GH);
          a.dln_beta_hh = opt_out<S>(dln_beta_hh, "dln_beta_hh", n.GH);
          a.dln_gamma_c = opt_out<S>(dln_gamma_c, "dln_gamma_c", d.H);
          a.dln_beta_c = opt_out<S>(dln_beta_c, "dln_beta_c", d.H);
          S* ws = out<S>(workspace, "workspace", ws_n);
          py::gil_scoped_release nogil;
          fusedrnn::lstm_ln_backward<S>(d, a, options_of(reverse, num_threads), ws);
        });
      },
      py::arg("dims"), py::kw_only(), py::arg("x"), py::arg("w_ih"), py::arg("w_hh"),
      py::arg("layer_norm") = "none", py::arg("ln_gamma_ih") = py::none(),
      py::arg("ln_gamma_hh") = py::none(), py::arg("ln_gamma_c") = py::none(),
      py::arg("zoneout_h_mask") = py::none(), py::arg("zoneout_c_mask") = py::none(),
      py::arg("zoneout_h") = 0.0, py::arg("zoneout_c") = 0.0,
      py::arg("recurrent_mask") = py::none(), py::arg("lengths") = py::none(),
      py::arg("cache"), py::arg("dy") = py::none(), py::arg("dh_n") = py::none(),
      py::arg("dc_n") = py::none(), py::arg("dx"), py::arg("dh0") = py::none(),
      py::arg("dc0") = py::none(), py::arg("dw_ih") = py::none(), py::arg("dw_hh") = py::none(),
      py::arg("db_ih") = py::none(), py::arg("db_hh") = py::none(),
      py::arg("dln_gamma_ih") = py::none(), py::arg("dln_beta_ih") = py::none(),
      py::arg("dln_gamma_hh") = py::none(), py::arg("dln_beta_hh") = py::none(),
      py::arg("dln_gamma_c") = py::none(), py::arg("dln_beta_c") = py::none(),
      py::arg("workspace"), py::arg("reverse") = false, py::arg("num_threads") = 0,
      "Regularised / normalised LSTM backward into preallocated arrays (parameter gradients "
      "accumulate).");
}

}  // namespace fusedrnn_py
