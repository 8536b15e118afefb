// Bindings of the GRU kernels (both formulas). Arrays come preallocated from fusedrnn.functional.
#include "common.h"
#include "fusedrnn/gru.h"

namespace fusedrnn_py {

void register_gru(py::module_& m) {
  m.def("gru_sizes", [](py::tuple dims, int precision) {
    const auto d = dims_of(dims);
    return py::make_tuple(fusedrnn::gru_cache_size(d),
                          fusedrnn::gru_forward_workspace_size(d, precision_of(precision)),
                          fusedrnn::gru_backward_workspace_size(d));
  }, py::arg("dims"), py::arg("precision") = 0);
  m.def(
      "gru_forward",
      [](py::tuple dims, bool reverse, int num_threads, bool weights_packed, int precision,
         bool reset_after,
         py::handle x, py::handle w_ih, py::handle w_hh, py::handle b_ih, py::handle b_hh,
         py::handle h0, py::handle lengths, py::handle y, py::handle h_n, py::handle cache,
         py::handle workspace) {
        const auto d = dims_of(dims);
        fusedrnn::Options opt{reverse, num_threads, weights_packed};
        opt.precision = precision_of(precision);
        const auto variant =
            reset_after ? fusedrnn::GruVariant::reset_after : fusedrnn::GruVariant::reset_before;
        const std::size_t G = 3, T = d.T, N = d.N, C = d.C, H = d.H;
        dispatch_dtype(x, [&](auto tag) {
          using S = decltype(tag);
          auto px = data_of<S>(x, "x", T * N * C, false, false);
          auto pwi = data_of<S>(w_ih, "w_ih", G * H * C, false, false);
          auto pwh = data_of<S>(w_hh, "w_hh", G * H * H, false, false);
          auto pbi = data_of<S>(b_ih, "b_ih", G * H, true, false);
          auto pbh = data_of<S>(b_hh, "b_hh", G * H, true, false);
          auto ph0 = data_of<S>(h0, "h0", N * H, true, false);
          auto pl = data_of<std::int64_t>(lengths, "lengths", N, true, false);
          auto py_ = data_of<S>(y, "y", T * N * H, false, true);
          auto phn = data_of<S>(h_n, "h_n", N * H, false, true);
          auto pc = data_of<S>(cache, "cache", fusedrnn::gru_cache_size(d), true, true);
          auto pw = data_of<S>(workspace, "workspace",
                               fusedrnn::gru_forward_workspace_size(d, opt.precision),
                               false, true);
          py::gil_scoped_release nogil;
          fusedrnn::GruForwardArgs<S> a;
          a.variant = variant;
          a.x = px, a.w_ih = pwi, a.w_hh = pwh, a.b_ih = pbi, a.b_hh = pbh, a.h0 = ph0;
          a.lengths = pl, a.y = py_, a.h_n = phn, a.cache = pc;
          fusedrnn::gru_forward<S>(d, a, opt, pw);
        });
      },
      "Low-level GRU forward into preallocated arrays.");
  m.def(
      "gru_backward",
      [](py::tuple dims, bool reverse, int num_threads, bool reset_after, py::handle x,
         py::handle w_ih, py::handle w_hh, py::handle lengths, py::handle cache, py::handle dy,
         py::handle dh_n, py::handle dx, py::handle dh0, py::handle dw_ih, py::handle dw_hh,
         py::handle db_ih, py::handle db_hh, py::handle workspace) {
        const auto d = dims_of(dims);
        const fusedrnn::Options opt{reverse, num_threads};
        const auto variant =
            reset_after ? fusedrnn::GruVariant::reset_after : fusedrnn::GruVariant::reset_before;
        const std::size_t G = 3, T = d.T, N = d.N, C = d.C, H = d.H;
        dispatch_dtype(x, [&](auto tag) {
          using S = decltype(tag);
          auto px = data_of<S>(x, "x", T * N * C, false, false);
          auto pwi = data_of<S>(w_ih, "w_ih", G * H * C, false, false);
          auto pwh = data_of<S>(w_hh, "w_hh", G * H * H, false, false);
          auto pl = data_of<std::int64_t>(lengths, "lengths", N, true, false);
          auto pc = data_of<S>(cache, "cache", fusedrnn::gru_cache_size(d), false, false);
          auto pdy = data_of<S>(dy, "dy", T * N * H, true, false);
          auto pdhn = data_of<S>(dh_n, "dh_n", N * H, true, false);
          auto pdx = data_of<S>(dx, "dx", T * N * C, false, true);
          auto pdh0 = data_of<S>(dh0, "dh0", N * H, true, true);
          auto pdwi = data_of<S>(dw_ih, "dw_ih", G * H * C, true, true);
          auto pdwh = data_of<S>(dw_hh, "dw_hh", G * H * H, true, true);
          auto pdbi = data_of<S>(db_ih, "db_ih", G * H, true, true);
          auto pdbh = data_of<S>(db_hh, "db_hh", G * H, true, true);
          auto pw = data_of<S>(workspace, "workspace", fusedrnn::gru_backward_workspace_size(d),
                               false, true);
          py::gil_scoped_release nogil;
          fusedrnn::GruBackwardArgs<S> a;
          a.variant = variant;
          a.x = px, a.w_ih = pwi, a.w_hh = pwh, a.lengths = pl, a.cache = pc, a.dy = pdy;
          a.dh_n = pdhn, a.dx = pdx, a.dh0 = pdh0, a.dw_ih = pdwi, a.dw_hh = pdwh;
          a.db_ih = pdbi, a.db_hh = pdbh;
          fusedrnn::gru_backward<S>(d, a, opt, pw);
        });
      },
      "Low-level GRU backward into preallocated arrays.");
}

}  // namespace fusedrnn_py
