// Bindings of the LSTM kernels. Arrays come preallocated from fusedrnn.functional; this file
// checks them, releases the GIL and calls the kernel. dims is (T, N, C, H) or, with projection,
// (T, N, C, H, P); R below is the width of h: P if P > 0, else H.
#include "common.h"
#include "fusedrnn/lstm.h"

namespace fusedrnn_py {

namespace {

// w_hr (or dw_hr) must be given exactly when dims has P > 0.
void check_projection(const fusedrnn::Dims& d, const py::handle& w, const char* name) {
  if (d.P > 0 && w.is_none())
    throw py::value_error(std::string(name) + " must not be None when P > 0");
  if (d.P == 0 && !w.is_none())
    throw py::value_error(std::string(name) + " given but dims has no projection (P = 0)");
}

}  // namespace

void register_lstm(py::module_& m) {
  m.def("lstm_sizes", [](py::tuple dims, int precision) {
    const auto d = dims_of(dims, true);
    return py::make_tuple(fusedrnn::lstm_cache_size(d),
                          fusedrnn::lstm_forward_workspace_size(d, precision_of(precision)),
                          fusedrnn::lstm_backward_workspace_size(d));
  }, py::arg("dims"), py::arg("precision") = 0);
  m.def(
      "lstm_forward",
      [](py::tuple dims, bool reverse, int num_threads, bool weights_packed, int precision,
         py::handle x, py::handle w_ih, py::handle w_hh, py::handle b_ih, py::handle b_hh,
         py::handle h0, py::handle c0, py::handle w_peep, py::handle w_hr, py::handle lengths,
         py::handle y, py::handle h_n, py::handle c_n, py::handle cache, py::handle workspace) {
        const auto d = dims_of(dims, true);
        fusedrnn::Options opt{reverse, num_threads, weights_packed};
        opt.precision = precision_of(precision);
        const std::size_t G = 4, T = d.T, N = d.N, C = d.C, H = d.H, P = d.P;
        const std::size_t R = P > 0 ? P : H;
        dispatch_dtype(x, [&](auto tag) {
          using S = decltype(tag);
          auto px = data_of<S>(x, "x", T * N * C, false, false);
          auto pwi = data_of<S>(w_ih, "w_ih", G * H * C, false, false);
          auto pwh = data_of<S>(w_hh, "w_hh", G * H * R, false, false);
          auto pbi = data_of<S>(b_ih, "b_ih", G * H, true, false);
          auto pbh = data_of<S>(b_hh, "b_hh", G * H, true, false);
          auto ph0 = data_of<S>(h0, "h0", N * R, true, false);
          auto pc0 = data_of<S>(c0, "c0", N * H, true, false);
          auto pp = data_of<S>(w_peep, "w_peep", 3 * H, true, false);
          check_projection(d, w_hr, "w_hr");
          auto pr = data_of<S>(w_hr, "w_hr", P * H, true, false);
          auto pl = data_of<std::int64_t>(lengths, "lengths", N, true, false);
          auto py_ = data_of<S>(y, "y", T * N * R, false, true);
          auto phn = data_of<S>(h_n, "h_n", N * R, false, true);
          auto pcn = data_of<S>(c_n, "c_n", N * H, false, true);
          auto pc = data_of<S>(cache, "cache", fusedrnn::lstm_cache_size(d), true, true);
          auto pw = data_of<S>(workspace, "workspace",
                               fusedrnn::lstm_forward_workspace_size(d, opt.precision),
                               false, true);
          py::gil_scoped_release nogil;
          fusedrnn::LstmForwardArgs<S> a;
          a.x = px, a.w_ih = pwi, a.w_hh = pwh, a.b_ih = pbi, a.b_hh = pbh, a.h0 = ph0;
          a.c0 = pc0, a.w_peep = pp, a.w_hr = pr, a.lengths = pl;
          a.y = py_, a.h_n = phn, a.c_n = pcn, a.cache = pc;
          fusedrnn::lstm_forward<S>(d, a, opt, pw);
        });
      },
      "Low-level LSTM forward into preallocated arrays.");
  m.def(
      "lstm_backward",
      [](py::tuple dims, bool reverse, int num_threads, py::handle x, py::handle w_ih,
         py::handle w_hh, py::handle w_peep, py::handle w_hr, py::handle lengths,
         py::handle cache, py::handle dy, py::handle dh_n, py::handle dc_n, py::handle dx,
         py::handle dh0, py::handle dc0, py::handle dw_ih, py::handle dw_hh, py::handle db_ih,
         py::handle db_hh, py::handle dw_peep, py::handle dw_hr, py::handle workspace) {
        const auto d = dims_of(dims, true);
        const fusedrnn::Options opt{reverse, num_threads};
        const std::size_t G = 4, T = d.T, N = d.N, C = d.C, H = d.H, P = d.P;
        const std::size_t R = P > 0 ? P : H;
        dispatch_dtype(x, [&](auto tag) {
          using S = decltype(tag);
          auto px = data_of<S>(x, "x", T * N * C, false, false);
          auto pwi = data_of<S>(w_ih, "w_ih", G * H * C, false, false);
          auto pwh = data_of<S>(w_hh, "w_hh", G * H * R, false, false);
          auto pp = data_of<S>(w_peep, "w_peep", 3 * H, true, false);
          check_projection(d, w_hr, "w_hr");
          auto pr = data_of<S>(w_hr, "w_hr", P * H, true, false);
          auto pl = data_of<std::int64_t>(lengths, "lengths", N, true, false);
          auto pc = data_of<S>(cache, "cache", fusedrnn::lstm_cache_size(d), false, false);
          auto pdy = data_of<S>(dy, "dy", T * N * R, true, false);
          auto pdhn = data_of<S>(dh_n, "dh_n", N * R, true, false);
          auto pdcn = data_of<S>(dc_n, "dc_n", N * H, true, false);
          auto pdx = data_of<S>(dx, "dx", T * N * C, false, true);
          auto pdh0 = data_of<S>(dh0, "dh0", N * R, true, true);
          auto pdc0 = data_of<S>(dc0, "dc0", N * H, true, true);
          auto pdwi = data_of<S>(dw_ih, "dw_ih", G * H * C, true, true);
          auto pdwh = data_of<S>(dw_hh, "dw_hh", G * H * R, true, true);
          auto pdbi = data_of<S>(db_ih, "db_ih", G * H, true, true);
          auto pdbh = data_of<S>(db_hh, "db_hh", G * H, true, true);
          auto pdp = data_of<S>(dw_peep, "dw_peep", 3 * H, true, true);
          if (!dw_hr.is_none() && P == 0)
            throw py::value_error("dw_hr given but dims has no projection (P = 0)");
          auto pdr = data_of<S>(dw_hr, "dw_hr", P * H, true, true);
          auto pw = data_of<S>(workspace, "workspace", fusedrnn::lstm_backward_workspace_size(d),
                               false, true);
          if (pdp && !pp) throw py::value_error("dw_peep given but w_peep is None");
          py::gil_scoped_release nogil;
          fusedrnn::LstmBackwardArgs<S> a;
          a.x = px, a.w_ih = pwi, a.w_hh = pwh, a.w_peep = pp, a.w_hr = pr, a.lengths = pl;
          a.cache = pc, a.dy = pdy, a.dh_n = pdhn, a.dc_n = pdcn;
          a.dx = pdx, a.dh0 = pdh0, a.dc0 = pdc0, a.dw_ih = pdwi, a.dw_hh = pdwh;
          a.db_ih = pdbi, a.db_hh = pdbh, a.dw_peep = pdp, a.dw_hr = pdr;
          fusedrnn::lstm_backward<S>(d, a, opt, pw);
        });
      },
      "Low-level LSTM backward into preallocated arrays.");
}

}  // namespace fusedrnn_py
