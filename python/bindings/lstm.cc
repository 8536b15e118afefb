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
                              fusedrnn::lstm_backward_workspace_size(d, precision));
      },
      py::arg("dims"), py::arg("precision") = fusedrnn::Precision::float32,
      "(cache, forward workspace, backward workspace) sizes in scalars.");
  def_kernel(
      m, "lstm_forward",
      [](py::tuple dims, Keywords& kw) {
        const auto d = dims_of(dims);
        const fusedrnn::Options opt = kw.options();
        const std::size_t cache_n = fusedrnn::lstm_cache_size(d);  // checks dims
        const std::size_t ws_n = fusedrnn::lstm_forward_workspace_size(d, opt.precision);
        const Counts n(d, 4);
        dispatch_dtype(kw.required("x"), [&](auto tag) {
          using S = decltype(tag);
          fusedrnn::LstmForwardArgs<S> a;
          a.x = kw.in<S>("x", n.TNC);
          a.w_ih = kw.in<S>("w_ih", n.GHC);
          a.w_hh = kw.in<S>("w_hh", n.GHR);
          a.b_ih = kw.opt_in<S>("b_ih", n.GH);
          a.b_hh = kw.opt_in<S>("b_hh", n.GH);
          a.h0 = kw.opt_in<S>("h0", n.NR);
          a.c0 = kw.opt_in<S>("c0", n.NH);
          a.w_peep = kw.opt_in<S>("w_peep", n.H3);
          a.w_hr = kw.opt_in<S>("w_hr", d.P > 0 ? n.PH : kAnySize);
          a.lengths = kw.opt_in<std::int64_t>("lengths", n.N);
          a.cell_clip = kw.value<S>("cell_clip", 0);
          a.y = kw.out<S>("y", n.TNR);
          a.h_n = kw.out<S>("h_n", n.NR);
          a.c_n = kw.out<S>("c_n", n.NH);
          a.cache = kw.opt_out<S>("cache", cache_n);
          S* ws = kw.out<S>("workspace", ws_n);
          kw.done();
          py::gil_scoped_release nogil;
          fusedrnn::lstm_forward<S>(d, a, opt, ws);
        });
      },
      "LSTM forward into preallocated arrays. Keywords: x, w_ih, w_hh, b_ih, b_hh, h0, c0, "
      "w_peep, w_hr, lengths, cell_clip, y, h_n, c_n, cache, workspace, and the options "
      "reverse, num_threads, weights_packed, precision.");
  def_kernel(
      m, "lstm_backward",
      [](py::tuple dims, Keywords& kw) {
        const auto d = dims_of(dims);
        const fusedrnn::Options opt = kw.options();
        const std::size_t cache_n = fusedrnn::lstm_cache_size(d);  // checks dims
        const std::size_t ws_n = fusedrnn::lstm_backward_workspace_size(d, opt.precision);
        const Counts n(d, 4);
        dispatch_dtype(kw.required("x"), [&](auto tag) {
          using S = decltype(tag);
          fusedrnn::LstmBackwardArgs<S> a;
          a.x = kw.in<S>("x", n.TNC);
          a.w_ih = kw.in<S>("w_ih", n.GHC);
          a.w_hh = kw.in<S>("w_hh", n.GHR);
          a.w_peep = kw.opt_in<S>("w_peep", n.H3);
          a.w_hr = kw.opt_in<S>("w_hr", d.P > 0 ? n.PH : kAnySize);
          a.lengths = kw.opt_in<std::int64_t>("lengths", n.N);
          a.cell_clip = kw.value<S>("cell_clip", 0);
          a.cache = kw.in<S>("cache", cache_n);
          a.dy = kw.opt_in<S>("dy", n.TNR);
          a.dh_n = kw.opt_in<S>("dh_n", n.NR);
          a.dc_n = kw.opt_in<S>("dc_n", n.NH);
          a.dx = kw.opt_out<S>("dx", n.TNC);
          a.dh0 = kw.opt_out<S>("dh0", n.NR);
          a.dc0 = kw.opt_out<S>("dc0", n.NH);
          a.dw_ih = kw.opt_out<S>("dw_ih", n.GHC);
          a.dw_hh = kw.opt_out<S>("dw_hh", n.GHR);
          a.db_ih = kw.opt_out<S>("db_ih", n.GH);
          a.db_hh = kw.opt_out<S>("db_hh", n.GH);
          a.dw_peep = kw.opt_out<S>("dw_peep", n.H3);
          a.dw_hr = kw.opt_out<S>("dw_hr", d.P > 0 ? n.PH : kAnySize);
          S* ws = kw.out<S>("workspace", ws_n);
          kw.done();
          py::gil_scoped_release nogil;
          fusedrnn::lstm_backward<S>(d, a, opt, ws);
        });
      },
      "LSTM backward into preallocated arrays (parameter gradients accumulate). Keywords: x, "
      "w_ih, w_hh, w_peep, w_hr, lengths, cell_clip, cache, dy, dh_n, dc_n, dx, dh0, dc0, dw_ih, "
      "dw_hh, db_ih, db_hh, dw_peep, dw_hr, workspace, and the options reverse, num_threads, "
      "weights_packed, precision.");
}

}  // namespace fusedrnn_py
