// The fusedrnn._core extension module: one register_<cell> per file, plus build information.
#include "common.h"
#include "fusedrnn/fusedrnn.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
  m.doc() = "fusedrnn C++ kernels (low level; use the fusedrnn package's functions instead)";
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
  fusedrnn_py::register_lstm(m);
  fusedrnn_py::register_gru(m);
  fusedrnn_py::register_rnn(m);
}
