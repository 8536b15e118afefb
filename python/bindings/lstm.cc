// Bindings of the LSTM kernels: numpy arrays (preallocated by fusedrnn.functional) into the
// kernel's argument structs, the GIL released around the call. dims is (T, N, C, H) or, with
// projection, (T, N, C, H, P); R below is the width of h: P if P > 0, else H.
#include "common.h"
#include "fusedrnn/lstm.h"

namespace fusedrnn_py {

void register_lstm(py::module_& m) {
  m.def(
      "lstm_sizes",
      [](py::tuple dims, fusedrnn::Precision precision) {
        const auto d = dims_of(dims);
        return py::make_tuple(fusedrnn::lstm_cache_size(d),
                              fusedrnn::lstm_forward_workspace_size(d, precision),
                              fusedrnn::lstm_backward_workspace_size(d));
      },
      py::arg("dims"), py::arg("precision") = fusedrnn::Precision::float32,
      "(cache, forward workspace, backward workspace) sizes in scalars.");
  m.def(
      "lstm_forward",
      [](py::tuple dims, py::handle x, py::handle w_ih, py::handle w_hh, py::handle b_ih,
         py::handle b_hh, py::handle h0, py::handle c0, py::handle w_peep, py::handle w_hr,
         py::handle lengths, py::handle y, py::handle h_n, py::handle c_n, py::handle cache,
         py::handle workspace, double cell_clip, bool reverse, int num_threads,
         bool weights_packed, fusedrnn::Precision precision) {
        const auto d = dims_of(dims);
        const std::size_t cache_n = fusedrnn::lstm_cache_size(d);  // checks dims
        const std::size_t ws_n = fusedrnn::lstm_forward_workspace_size(d, precision);
        const Counts n(d, 4);
        dispatch_dtype(x, [&](auto tag) {
          using S = decltype(tag);
          fusedrnn::LstmForwardArgs<S> a;
          a.x = in<S>(x, "x", n.TNC);
          a.w_ih = in<S>(w_ih, "w_ih", n.GHC);
          a.w_hh = in<S>(w_hh, "w_hh", n.GHR);
          a.b_ih = opt_in<S>(b_ih, "b_ih", n.GH);
          a.b_hh = opt_in<S>(b_hh, "b_hh", n.GH);
          a.h0 = opt_in<S>(h0, "h0", n.NR);
          a.c0 = opt_in<S>(c0, "c0", n.NH);
          a.w_peep = opt_in<S>(w_peep, "w_peep", n.H3);
          a.w_hr = opt_in<S>(w_hr, "w_hr", d.P > 0 ? n.PH : kAnySize);
          a.lengths = opt_in<std::int64_t>(lengths, "lengths", n.N);
          a.cell_clip = S(cell_clip);
          a.y = out<S>(y, "y", n.TNR);
          a.h_n = out<S>(h_n, "h_n", n.NR);
          a.c_n = out<S>(c_n, "c_n", n.NH);
          a.cache = opt_out<S>(cache, "cache", cache_n);
          S* ws = out<S>(workspace, "workspace", ws_n);
          py::gil_scoped_release nogil;
          fusedrnn::lstm_forward<S>(d, a,
                                    options_of(reverse, num_threads, weights_packed, precision),
                                    ws);
        });
      },
      py::arg("dims"), py::kw_only(), py::arg("x"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih") = py::none(),
      py::arg("b_hh") = py::none(), py::arg("h0") = py::none(), py::arg("c0") = py::none(),
      py::arg("w_peep") = py::none(), py::arg("w_hr") = py::none(),
      py::arg("lengths") = py::none(), py::arg("y"), py::arg("h_n"), py::arg("c_n"),
      py::arg("cache") = py::none(), py::arg("workspace"), py::arg("cell_clip") = 0.0,
      py::arg("reverse") = false, py::arg("num_threads") = 0, py::arg("weights_packed") = false,
      py::arg("precision") = fusedrnn::Precision::float32,
      "LSTM forward into preallocated arrays.");
  m.def(
      "lstm_backward",
      [](py::tuple dims, py::handle x, py::handle w_ih, py::handle w_hh, py::handle w_peep,
         py::handle w_hr, py::handle lengths, py::handle cache, py::handle dy, py::handle dh_n,
         py::handle dc_n, py::handle dx, py::handle dh0, py::handle dc0, py::handle dw_ih,
         py::handle dw_hh, py::handle db_ih, py::handle db_hh, py::handle dw_peep,
         py::handle dw_hr, py::handle workspace, double cell_clip, bool reverse,
         int num_threads, bool weights_packed) {
        const auto d = dims_of(dims);
        const std::size_t cache_n = fusedrnn::lstm_cache_size(d);  // checks dims
        const std::size_t ws_n = fusedrnn::lstm_backward_workspace_size(d);
        const Counts n(d, 4);
        dispatch_dtype(x, [&](auto tag) {
          using S = decltype(tag);
          fusedrnn::LstmBackwardArgs<S> a;
          a.x = in<S>(x, "x", n.TNC);
          a.w_ih = in<S>(w_ih, "w_ih", n.GHC);
          a.w_hh = in<S>(w_hh, "w_hh", n.GHR);
          a.w_peep = opt_in<S>(w_peep, "w_peep", n.H3);
          a.w_hr = opt_in<S>(w_hr, "w_hr", d.P > 0 ? n.PH : kAnySize);
          a.lengths = opt_in<std::int64_t>(lengths, "lengths", n.N);
          a.cell_clip = S(cell_clip);
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
          a.dw_peep = opt_out<S>(dw_peep, "dw_peep", n.H3);
          a.dw_hr = opt_out<S>(dw_hr, "dw_hr", d.P > 0 ? n.PH : kAnySize);
          S* ws = out<S>(workspace, "workspace", ws_n);
          py::gil_scoped_release nogil;
          fusedrnn::lstm_backward<S>(d, a, options_of(reverse, num_threads, weights_packed), ws);
        });
      },
      py::arg("dims"), py::kw_only(), py::arg("x"), py::arg("w_ih"), py::arg("w_hh"),
      py::arg("w_peep") = py::none(), py::arg("w_hr") = py::none(),
      py::arg("lengths") = py::none(), py::arg("cache"), py::arg("dy") = py::none(),
      py::arg("dh_n") = py::none(), py::arg("dc_n") = py::none(), py::arg("dx"),
      py::arg("dh0") = py::none(), py::arg("dc0") = py::none(), py::arg("dw_ih") = py::none(),
      py::arg("dw_hh") = py::none(), py::arg("db_ih") = py::none(),
      py::arg("db_hh") = py::none(), py::arg("dw_peep") = py::none(),
      py::arg("dw_hr") = py::none(), py::arg("workspace"), py::arg("cell_clip") = 0.0,
      py::arg("reverse") = false, py::arg("num_threads") = 0, py::arg("weights_packed") = false,
      "LSTM backward into preallocated arrays (parameter gradients accumulate).");
}

}  // namespace fusedrnn_py
