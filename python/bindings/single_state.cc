// Bindings of the cells with a single state h (GRU, RNN), one registrar for both: numpy arrays
// (preallocated by fusedrnn.functional) into the kernel's argument structs, the GIL released
// around the call. The cell's formula is its enum (GruVariant, Nonlinearity: module.cc).
#include "common.h"
#include "fusedrnn/gru.h"
#include "fusedrnn/rnn.h"

namespace fusedrnn_py {

namespace {

struct Gru {
  static constexpr const char* name = "gru";
  static constexpr const char* formula = "variant";
  static constexpr std::size_t G = 3;
  using Formula = fusedrnn::GruVariant;
  template <typename S> using Forward = fusedrnn::GruForwardArgs<S>;
  template <typename S> using Backward = fusedrnn::GruBackwardArgs<S>;
  template <typename A> static void set(A& a, Formula f) { a.variant = f; }
  static std::size_t cache(const fusedrnn::Dims& d) { return fusedrnn::gru_cache_size(d); }
  static std::size_t fws(const fusedrnn::Dims& d, fusedrnn::Precision p) {
    return fusedrnn::gru_forward_workspace_size(d, p);
  }
  static std::size_t bws(const fusedrnn::Dims& d) { return fusedrnn::gru_backward_workspace_size(d); }
  template <typename S>
  static void forward(const fusedrnn::Dims& d, const Forward<S>& a, const fusedrnn::Options& o,
                      S* ws) {
    fusedrnn::gru_forward<S>(d, a, o, ws);
  }
  template <typename S>
  static void backward(const fusedrnn::Dims& d, const Backward<S>& a, const fusedrnn::Options& o,
                       S* ws) {
    fusedrnn::gru_backward<S>(d, a, o, ws);
  }
};

struct Rnn {
  static constexpr const char* name = "rnn";
  static constexpr const char* formula = "nonlinearity";
  static constexpr std::size_t G = 1;
  using Formula = fusedrnn::Nonlinearity;
  template <typename S> using Forward = fusedrnn::RnnForwardArgs<S>;
  template <typename S> using Backward = fusedrnn::RnnBackwardArgs<S>;
  template <typename A> static void set(A& a, Formula f) { a.nonlinearity = f; }
  static std::size_t cache(const fusedrnn::Dims& d) { return fusedrnn::rnn_cache_size(d); }
  static std::size_t fws(const fusedrnn::Dims& d, fusedrnn::Precision p) {
    return fusedrnn::rnn_forward_workspace_size(d, p);
  }
  static std::size_t bws(const fusedrnn::Dims& d) { return fusedrnn::rnn_backward_workspace_size(d); }
  template <typename S>
  static void forward(const fusedrnn::Dims& d, const Forward<S>& a, const fusedrnn::Options& o,
                      S* ws) {
    fusedrnn::rnn_forward<S>(d, a, o, ws);
  }
  template <typename S>
  static void backward(const fusedrnn::Dims& d, const Backward<S>& a, const fusedrnn::Options& o,
                       S* ws) {
    fusedrnn::rnn_backward<S>(d, a, o, ws);
  }
};

template <typename Cell>
void register_cell(py::module_& m) {
  using Formula = typename Cell::Formula;
  const std::string name = Cell::name;
  m.def(
      (name + "_sizes").c_str(),
      [](py::tuple dims, fusedrnn::Precision precision) {
        const auto d = dims_of(dims);
        return py::make_tuple(Cell::cache(d), Cell::fws(d, precision), Cell::bws(d));
      },
      py::arg("dims"), py::arg("precision") = fusedrnn::Precision::float32,
      "(cache, forward workspace, backward workspace) sizes in scalars.");
  m.def(
      (name + "_forward").c_str(),
      [](py::tuple dims, Formula formula, py::handle x, py::handle w_ih, py::handle w_hh,
         py::handle b_ih, py::handle b_hh, py::handle h0, py::handle lengths, py::handle y,
         py::handle h_n, py::handle cache, py::handle workspace, bool reverse, int num_threads,
         bool weights_packed, fusedrnn::Precision precision) {
        const auto d = dims_of(dims);
        const std::size_t cache_n = Cell::cache(d);  // checks dims
        const std::size_t ws_n = Cell::fws(d, precision);
        const Counts n(d, Cell::G);
        dispatch_dtype(x, [&](auto tag) {
          using S = decltype(tag);
          typename Cell::template Forward<S> a;
          Cell::set(a, formula);
          a.x = in<S>(x, "x", n.TNC);
          a.w_ih = in<S>(w_ih, "w_ih", n.GHC);
          a.w_hh = in<S>(w_hh, "w_hh", n.GHR);
          a.b_ih = opt_in<S>(b_ih, "b_ih", n.GH);
          a.b_hh = opt_in<S>(b_hh, "b_hh", n.GH);
          a.h0 = opt_in<S>(h0, "h0", n.NR);
          a.lengths = opt_in<std::int64_t>(lengths, "lengths", n.N);
          a.y = out<S>(y, "y", n.TNR);
          a.h_n = out<S>(h_n, "h_n", n.NR);
          a.cache = opt_out<S>(cache, "cache", cache_n);
          S* ws = out<S>(workspace, "workspace", ws_n);
          py::gil_scoped_release nogil;
          Cell::forward(d, a, options_of(reverse, num_threads, weights_packed, precision), ws);
        });
      },
      py::arg("dims"), py::kw_only(), py::arg(Cell::formula), py::arg("x"), py::arg("w_ih"),
      py::arg("w_hh"), py::arg("b_ih") = py::none(), py::arg("b_hh") = py::none(),
      py::arg("h0") = py::none(), py::arg("lengths") = py::none(), py::arg("y"), py::arg("h_n"),
      py::arg("cache") = py::none(), py::arg("workspace"), py::arg("reverse") = false,
      py::arg("num_threads") = 0, py::arg("weights_packed") = false,
      py::arg("precision") = fusedrnn::Precision::float32, "Forward into preallocated arrays.");
  m.def(
      (name + "_backward").c_str(),
      [](py::tuple dims, Formula formula, py::handle x, py::handle w_ih, py::handle w_hh,
         py::handle lengths, py::handle cache, py::handle dy, py::handle dh_n, py::handle dx,
         py::handle dh0, py::handle dw_ih, py::handle dw_hh, py::handle db_ih, py::handle db_hh,
         py::handle workspace, bool reverse, int num_threads, bool weights_packed) {
        const auto d = dims_of(dims);
        const std::size_t cache_n = Cell::cache(d);  // checks dims
        const std::size_t ws_n = Cell::bws(d);
        const Counts n(d, Cell::G);
        dispatch_dtype(x, [&](auto tag) {
          using S = decltype(tag);
          typename Cell::template Backward<S> a;
          Cell::set(a, formula);
          a.x = in<S>(x, "x", n.TNC);
          a.w_ih = in<S>(w_ih, "w_ih", n.GHC);
          a.w_hh = in<S>(w_hh, "w_hh", n.GHR);
          a.lengths = opt_in<std::int64_t>(lengths, "lengths", n.N);
          a.cache = in<S>(cache, "cache", cache_n);
          a.dy = opt_in<S>(dy, "dy", n.TNR);
          a.dh_n = opt_in<S>(dh_n, "dh_n", n.NR);
          a.dx = out<S>(dx, "dx", n.TNC);
          a.dh0 = opt_out<S>(dh0, "dh0", n.NR);
          a.dw_ih = opt_out<S>(dw_ih, "dw_ih", n.GHC);
          a.dw_hh = opt_out<S>(dw_hh, "dw_hh", n.GHR);
          a.db_ih = opt_out<S>(db_ih, "db_ih", n.GH);
          a.db_hh = opt_out<S>(db_hh, "db_hh", n.GH);
          S* ws = out<S>(workspace, "workspace", ws_n);
          py::gil_scoped_release nogil;
          Cell::backward(d, a, options_of(reverse, num_threads, weights_packed), ws);
        });
      },
      py::arg("dims"), py::kw_only(), py::arg(Cell::formula), py::arg("x"), py::arg("w_ih"),
      py::arg("w_hh"), py::arg("lengths") = py::none(), py::arg("cache"),
      py::arg("dy") = py::none(), py::arg("dh_n") = py::none(), py::arg("dx"),
      py::arg("dh0") = py::none(), py::arg("dw_ih") = py::none(), py::arg("dw_hh") = py::none(),
      py::arg("db_ih") = py::none(), py::arg("db_hh") = py::none(), py::arg("workspace"),
      py::arg("reverse") = false, py::arg("num_threads") = 0, py::arg("weights_packed") = false,
      "Backward into preallocated arrays (parameter gradients accumulate).");
}

}  // namespace

void register_single_state(py::module_& m) {
  register_cell<Gru>(m);
  register_cell<Rnn>(m);
}

}  // namespace fusedrnn_py
