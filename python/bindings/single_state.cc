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
  static std::size_t bws(const fusedrnn::Dims& d, fusedrnn::Precision p) {
    return fusedrnn::gru_backward_workspace_size(d, p);
  }
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
  static std::size_t bws(const fusedrnn::Dims& d, fusedrnn::Precision p) {
    return fusedrnn::rnn_backward_workspace_size(d, p);
  }
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
        return py::make_tuple(Cell::cache(d), Cell::fws(d, precision), Cell::bws(d, precision));
      },
      py::arg("dims"), py::arg("precision") = fusedrnn::Precision::float32,
      "(cache, forward workspace, backward workspace) sizes in scalars.");
  def_kernel(
      m, (name + "_forward"),
      [](py::tuple dims, Keywords& kw) {
        const auto d = dims_of(dims);
        const fusedrnn::Options opt = kw.options();
        const auto formula = kw.template required_value<Formula>(Cell::formula);
        const std::size_t cache_n = Cell::cache(d);  // checks dims
        const std::size_t ws_n = Cell::fws(d, opt.precision);
        const Counts n(d, Cell::G);
        dispatch_dtype(kw.required("x"), [&](auto tag) {
          using S = decltype(tag);
          typename Cell::template Forward<S> a;
          Cell::set(a, formula);
          a.x = kw.in<S>("x", n.TNC);
          a.w_ih = kw.in<S>("w_ih", n.GHC);
          a.w_hh = kw.in<S>("w_hh", n.GHR);
          a.b_ih = kw.opt_in<S>("b_ih", n.GH);
          a.b_hh = kw.opt_in<S>("b_hh", n.GH);
          a.h0 = kw.opt_in<S>("h0", n.NR);
          a.lengths = kw.opt_in<std::int64_t>("lengths", n.N);
          a.y = kw.out<S>("y", n.TNR);
          a.h_n = kw.out<S>("h_n", n.NR);
          a.cache = kw.opt_out<S>("cache", cache_n);
          S* ws = kw.out<S>("workspace", ws_n);
          kw.done();
          py::gil_scoped_release nogil;
          Cell::forward(d, a, opt, ws);
        });
      },
      (std::string("Forward into preallocated arrays. Keywords: ") + Cell::formula +
       ", x, w_ih, w_hh, b_ih, b_hh, h0, lengths, y, h_n, cache, workspace, and the options "
       "reverse, num_threads, weights_packed, precision.")
          .c_str());
  def_kernel(
      m, (name + "_backward"),
      [](py::tuple dims, Keywords& kw) {
        const auto d = dims_of(dims);
        const fusedrnn::Options opt = kw.options();
        const auto formula = kw.template required_value<Formula>(Cell::formula);
        const std::size_t cache_n = Cell::cache(d);  // checks dims
        const std::size_t ws_n = Cell::bws(d, opt.precision);
        const Counts n(d, Cell::G);
        dispatch_dtype(kw.required("x"), [&](auto tag) {
          using S = decltype(tag);
          typename Cell::template Backward<S> a;
          Cell::set(a, formula);
          a.x = kw.in<S>("x", n.TNC);
          a.w_ih = kw.in<S>("w_ih", n.GHC);
          a.w_hh = kw.in<S>("w_hh", n.GHR);
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
          S* ws = kw.out<S>("workspace", ws_n);
          kw.done();
          py::gil_scoped_release nogil;
          Cell::backward(d, a, opt, ws);
        });
      },
      (std::string("Backward into preallocated arrays (parameter gradients accumulate). "
                   "Keywords: ") +
       Cell::formula +
       ", x, w_ih, w_hh, lengths, cache, dy, dh_n, dx, dh0, dw_ih, dw_hh, db_ih, db_hh, "
       "workspace, and the options reverse, num_threads, weights_packed, precision.")
          .c_str());
}

}  // namespace

void register_single_state(py::module_& m) {
  register_cell<Gru>(m);
  register_cell<Rnn>(m);
}

}  // namespace fusedrnn_py
