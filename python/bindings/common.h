// Helpers shared by the per-cell binding files: zero-copy views of numpy arrays with strict checks
// (dtype, C order, size, writeability) and dtype dispatch. The Python wrappers already validate
// with friendlier messages; these checks keep the C++ side safe when _core is called directly.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "fusedrnn/common.h"

namespace fusedrnn_py {

namespace py = pybind11;

template <typename T>
const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, double>) return "float64";
  return "int64";
}

// Pointer to the data of `obj` (a C-contiguous numpy array of T with exactly `size` elements),
// or nullptr when obj is None and `optional`.
template <typename T>
T* data_of(const py::handle& obj, const char* name, std::size_t size, bool optional,
           bool writable) {
  if (obj.is_none()) {
    if (optional) return nullptr;
    throw py::value_error(std::string(name) + " must not be None");
  }
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy array");
  auto a = py::reinterpret_borrow<py::array>(obj);
  // Equivalent dtypes, not the identical descriptor object: a copied np.dtype (copy.deepcopy
  // of a layer) is an equal but distinct object. A non-native byte order is not equivalent.
  if (!py::isinstance<py::array_t<T>>(obj))
    throw py::type_error(std::string(name) + " must have dtype " + dtype_name<T>() + ", got " +
                         std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  if (std::size_t(a.size()) != size)
    throw py::value_error(std::string(name) + " must have " + std::to_string(size) +
                          " elements, got " + std::to_string(a.size()));
  if (writable && !a.writeable())
    throw py::value_error(std::string(name) + " must be writeable");
  return static_cast<T*>(const_cast<void*>(a.data()));
}

// dims (T, N, C, H); with `projection` (the LSTM) also (T, N, C, H, P), P >= 0 (0 = none).
inline fusedrnn::Dims dims_of(py::tuple t, bool projection = false) {
  if (t.size() != 4 && !(projection && t.size() == 5))
    throw py::value_error(projection ? "dims must be (T, N, C, H) or (T, N, C, H, P)"
                                     : "dims must be (T, N, C, H)");
  fusedrnn::Dims d;
  d.T = t[0].cast<std::int64_t>();
  d.N = t[1].cast<std::int64_t>();
  d.C = t[2].cast<std::int64_t>();
  d.H = t[3].cast<std::int64_t>();
  if (t.size() == 5) d.P = t[4].cast<std::int64_t>();
  if (d.T < 1 || d.N < 1 || d.C < 1 || d.H < 1) throw py::value_error("dims must be positive");
  if (d.P < 0) throw py::value_error("dims: P must be >= 0 (0 = no projection)");
  return d;
}

// Options::precision from its Python code: 0 float32, 1 bfloat16.
inline fusedrnn::Precision precision_of(int code) {
  if (code == 0) return fusedrnn::Precision::float32;
  if (code == 1) return fusedrnn::Precision::bfloat16;
  throw py::value_error("precision must be 0 (float32) or 1 (bfloat16), got " +
                        std::to_string(code));
}

// Calls f(Scalar{}) for the floating dtype of x (`name` in the messages).
template <typename F>
void dispatch_dtype(const py::handle& x, F&& f, const char* name = "x") {
  if (!py::isinstance<py::array>(x))
    throw py::type_error(std::string(name) + " must be a numpy array");
  auto dt = py::reinterpret_borrow<py::array>(x).dtype();
  if (py::isinstance<py::array_t<float>>(x))
    f(float{});
  else if (py::isinstance<py::array_t<double>>(x))
    f(double{});
  else
    throw py::type_error(std::string(name) + " must have dtype float32 or float64, got " +
                         std::string(py::str(dt)));
}

void register_lstm(py::module_& m);
void register_gru(py::module_& m);
void register_rnn(py::module_& m);
void register_lowp(py::module_& m);  // lowp.cc: the low-precision GEMM building blocks

}  // namespace fusedrnn_py
