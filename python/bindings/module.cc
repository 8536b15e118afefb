// The fusedrnn._core extension module: one register_<cell> per file, plus build information.
#include "common.h"
#include "fusedrnn/config.h"
#include "fusedrnn/fusedrnn.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
  m.doc() = "fusedrnn C++ kernels (low level; use the fusedrnn package's functions instead)";
  // The version without choosing the instruction-set copy: a bad FUSEDRNN_ISA must not make
  // `import fusedrnn` fail (it is reported by the first call that runs a kernel).
  m.attr("__version__") = FUSEDRNN_VERSION_STRING;
  m.def("build_info", [] {
    const fusedrnn::BuildInfo b = fusedrnn::build_info();
    py::dict d;
    d["version"] = b.version;
    d["compiler"] = b.compiler;
    d["instruction_set"] = b.instruction_set;
    d["compiled_isas"] = b.compiled_isas;
    d["openmp"] = b.openmp;
    d["openmp_max_threads"] = b.openmp_max_threads;
    d["eigen_version"] = b.eigen_version;
    return d;
  });
  m.def(
      "reference_gemm",
      [](py::handle a, py::handle b, py::handle c, int num_threads) {
        // Shapes: a [m, k], b [k, n], c [m, n]; the dtype is a's (b and c must match it).
        auto dims2 = [](py::handle h, const char* name) {
          if (!py::isinstance<py::array>(h))
            throw py::type_error(std::string(name) + " must be a numpy array");
          auto arr = py::reinterpret_borrow<py::array>(h);
          if (arr.ndim() != 2)
            throw py::value_error(std::string(name) + " must be 2-D, got " +
                                  std::to_string(arr.ndim()) + "-D");
          return std::make_pair(std::int64_t(arr.shape(0)), std::int64_t(arr.shape(1)));
        };
        const auto [m_, k] = dims2(a, "a");
        const auto [k2, n] = dims2(b, "b");
        const auto [m2, n2] = dims2(c, "c");
        if (k2 != k)
          throw py::value_error("b must have shape [k, n] = [" + std::to_string(k) +
                                ", n] (a is [m, k]), got [" + std::to_string(k2) + ", " +
                                std::to_string(n) + "]");
        if (m2 != m_ || n2 != n)
          throw py::value_error("c must have shape [m, n] = [" + std::to_string(m_) + ", " +
                                std::to_string(n) + "], got [" + std::to_string(m2) + ", " +
                                std::to_string(n2) + "]");
        fusedrnn_py::dispatch_dtype(
            a,
            [&](auto tag) {
              using S = decltype(tag);
              const std::size_t M = std::size_t(m_), K = std::size_t(k), Nn = std::size_t(n);
              auto pa = fusedrnn_py::data_of<S>(a, "a", M * K, false, false);
              auto pb = fusedrnn_py::data_of<S>(b, "b", K * Nn, false, false);
              auto pc = fusedrnn_py::data_of<S>(c, "c", M * Nn, false, true);
              py::gil_scoped_release nogil;
              fusedrnn::reference_gemm<S>(m_, n, k, pa, pb, pc, num_threads);
            },
            "a");
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("num_threads") = 0,
      "c = a @ b by Eigen's GEMM built like the kernels (the benchmark's GEMM peak).");
  // The cells' formulas: the Python surface takes their names as strings and converts them once
  // (fusedrnn.functional._formula).
  py::enum_<fusedrnn::GruVariant>(m, "GruVariant")
      .value("reset_after", fusedrnn::GruVariant::reset_after)
      .value("reset_before", fusedrnn::GruVariant::reset_before);
  py::enum_<fusedrnn::Nonlinearity>(m, "Nonlinearity")
      .value("tanh", fusedrnn::Nonlinearity::tanh)
      .value("relu", fusedrnn::Nonlinearity::relu);
  // Options::precision: the forward kernels' float32 inference in bfloat16 products
  // (fusedrnn.functional takes the name as a string, 'float32' or 'bfloat16').
  py::enum_<fusedrnn::Precision>(m, "Precision")
      .value("float32", fusedrnn::Precision::float32)
      .value("bfloat16", fusedrnn::Precision::bfloat16)
      .value("int8", fusedrnn::Precision::int8);
  fusedrnn_py::register_lstm(m);
  fusedrnn_py::register_lstm_ln(m);
  fusedrnn_py::register_single_state(m);
  fusedrnn_py::register_ctc(m);
  fusedrnn_py::register_lowp(m);
  fusedrnn_py::register_fpenv(m);
  fusedrnn_py::register_cell_step(m);
}
