// Helpers shared by the binding files: zero-copy views of numpy arrays with the checks C++ cannot
// make (array-ness, dtype, C order, element count, writeability) and dtype dispatch. Everything
// else (dims, lengths, projection, which pointers a kernel needs) is the kernel's to check: its
// std::invalid_argument reaches Python as ValueError.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

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
// or nullptr when obj is None and `optional`. size == kAnySize: any size (the kernel rejects
// the array itself, e.g. w_hr given without a projection).
constexpr std::size_t kAnySize = std::size_t(-1);
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
  if (size != kAnySize && std::size_t(a.size()) != size)
    throw py::value_error(std::string(name) + " must have " + std::to_string(size) +
                          " elements, got " + std::to_string(a.size()));
  if (writable && !a.writeable())
    throw py::value_error(std::string(name) + " must be writeable");
  return static_cast<T*>(const_cast<void*>(a.data()));
}

// dims (T, N, C, H) or (T, N, C, H, P). Only the tuple's form is checked here: the values
// are the kernel's to check (the size queries, called first, throw std::invalid_argument).
inline fusedrnn::Dims dims_of(py::tuple t) {
  if (t.size() != 4 && t.size() != 5)
    throw py::value_error("dims must be (T, N, C, H) or (T, N, C, H, P)");
  fusedrnn::Dims d;
  d.T = t[0].cast<std::int64_t>();
  d.N = t[1].cast<std::int64_t>();
  d.C = t[2].cast<std::int64_t>();
  d.H = t[3].cast<std::int64_t>();
  if (t.size() == 5) d.P = t[4].cast<std::int64_t>();
  return d;
}

// Element counts of the arrays of a cell with G gates, for dims the size query accepted.
struct Counts {
  std::size_t TNC, TNR, NR, NH, GHC, GHR, GH, H3, PH, N;
  Counts(const fusedrnn::Dims& d, std::size_t G) {
    const std::size_t T = d.T, N_ = d.N, C = d.C, H = d.H, P = d.P, R = P > 0 ? P : H;
    TNC = T * N_ * C, TNR = T * N_ * R, NR = N_ * R, NH = N_ * H, GHC = G * H * C;
    GHR = G * H * R, GH = G * H, H3 = 3 * H, PH = P * H, N = N_;
  }
};

// The keyword arguments of a kernel binding, each named once where it is read:
//   a.cell_clip = kw.value<S>("cell_clip", 0);     a.w_peep = kw.opt_in<S>("w_peep", n.H3);
// A new argument of a kernel is one such line. Absent optional arrays are null, like None; an
// absent required one, or a keyword no line read (a misspelt name), is a TypeError naming it,
// raised by done() before the kernel runs. Read everything, call done(), then release the GIL.
//
// Cheap per call (a small kernel call is a few microseconds): the constructor walks the kwargs
// dict once, keeping each key's cached UTF-8 (PyUnicode_AsUTF8AndSize: no copy) and its value;
// a read compares the name with those keys (starting after the previous match: the callers
// pass the keywords in about the order they are read) and marks the key read; done() reports
// the first key, in the caller's order, that no read marked. No Python string is made and
// nothing is hashed per argument.
class Keywords {
 public:
  Keywords(std::string fn, py::kwargs kw) : fn_(std::move(fn)), kw_(std::move(kw)) {
    reserve(PyDict_Size(kw_.ptr()));
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(kw_.ptr(), &pos, &key, &value)) add(key, value);
  }
  // The keywords of a vectorcall (def_kernel): names in the tuple kwnames (or null: none),
  // values[i] the value of the i-th name; both borrowed from the call.
  Keywords(std::string fn, PyObject* const* values, PyObject* kwnames) : fn_(std::move(fn)) {
    const Py_ssize_t n = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
    reserve(n);
    for (Py_ssize_t i = 0; i < n; ++i) add(PyTuple_GET_ITEM(kwnames, i), values[i]);
  }
  const std::string& function() const { return fn_; }

  // The argument `name`, or None when absent (an optional argument's default).
  py::handle get(const char* name) {
    Key* k = find(name);
    if (k == nullptr) return py::none();
    k->read = true;
    return k->value;
  }
  py::handle required(const char* name) {
    Key* k = find(name);
    if (k == nullptr)
      throw py::type_error(fn_ + "() missing required keyword argument '" + name +
                           "'");
    k->read = true;
    return k->value;
  }
  template <typename T>
  T value(const char* name, T dflt) {
    const py::handle h = get(name);
    return h.is_none() ? dflt : cast<T>(h, name);
  }
  template <typename T>
  T required_value(const char* name) {
    return cast<T>(required(name), name);
  }
  template <typename S>
  const S* in(const char* name, std::size_t n) {
    return data_of<S>(required(name), name, n, false, false);
  }
  template <typename S>
  const S* opt_in(const char* name, std::size_t n) {
    return data_of<S>(get(name), name, n, true, false);
  }
  template <typename S>
  S* out(const char* name, std::size_t n) {
    return data_of<S>(required(name), name, n, false, true);
  }
  template <typename S>
  S* opt_out(const char* name, std::size_t n) {
    return data_of<S>(get(name), name, n, true, true);
  }
  // The kernel options: reverse and num_threads, and where the kernel takes them (`packed`:
  // the LSTM, GRU and RNN kernels) weights_packed and precision; elsewhere those stay unread,
  // so passing one is a TypeError rather than an option silently ignored.
  fusedrnn::Options options(bool packed = true) {
    fusedrnn::Options o;
    o.reverse = value<bool>("reverse", false);
    o.num_threads = value<int>("num_threads", 0);
    if (packed) {
      o.weights_packed = value<bool>("weights_packed", false);
      o.precision = value<fusedrnn::Precision>("precision", fusedrnn::Precision::float32);
    }
    return o;
  }
  template <typename T>
  T cast(py::handle h, const char* name) const {
    try {
      return h.cast<T>();
    } catch (const py::cast_error&) {
      throw py::type_error(fn_ + "(): " + name + " has an unusable type " +
                           std::string(py::str(py::type::handle_of(h).attr("__name__"))));
    }
  }
  // Every keyword given was read.
  void done() const {
    for (std::size_t i = 0; i < n_; ++i) {
      const Key& k = keys_[i];
      if (k.read) continue;
      std::string key;
      if (k.utf8 != nullptr) {
        key.assign(k.utf8, std::size_t(k.size));
      } else {  // not UTF-8-encodable (a lone surrogate): escaped
        const auto b = py::reinterpret_steal<py::object>(
            PyUnicode_AsEncodedString(k.object, "utf-8", "backslashreplace"));
        if (!b) throw py::error_already_set();
        key = PyBytes_AsString(b.ptr());
      }
      throw py::type_error(fn_ + "() got an unexpected keyword argument '" + key + "'");
    }
  }

  Keywords(const Keywords&) = delete;
  Keywords& operator=(const Keywords&) = delete;

 private:
  struct Key {
    PyObject* object;    // borrowed from kw_
    PyObject* value;     // borrowed from kw_
    const char* utf8;    // the key's cached UTF-8, owned by the key; null: matches nothing
    Py_ssize_t size = 0;
    bool read = false;
  };
  void reserve(Py_ssize_t n) {
    if (std::size_t(n) > kInline) spill_.resize(std::size_t(n));
    keys_ = std::size_t(n) > kInline ? spill_.data() : inline_;
  }
  void add(PyObject* key, PyObject* value) {
    Key& k = keys_[n_++];
    k.object = key;
    k.value = value;
    k.utf8 = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, &k.size) : nullptr;
    if (k.utf8 == nullptr) PyErr_Clear();  // not encodable: matches no name
  }
  // The key spelt `name`, or null.
  Key* find(const char* name) {
    const std::size_t len = std::strlen(name);
    for (std::size_t j = 0; j < n_; ++j) {
      const std::size_t i = next_ + j < n_ ? next_ + j : next_ + j - n_;
      Key& k = keys_[i];
      if (k.utf8 != nullptr && std::size_t(k.size) == len && k.utf8[0] == name[0] &&
          std::memcmp(k.utf8, name, len) == 0) {
        next_ = i + 1 < n_ ? i + 1 : 0;
        return &k;
      }
    }
    return nullptr;
  }

  static constexpr std::size_t kInline = 40;
  std::string fn_;
  py::object kw_;            // the kwargs dict (null for a vectorcall's keywords)
  Key inline_[kInline];
  std::vector<Key> spill_;   // more than kInline keywords
  Key* keys_ = inline_;
  std::size_t n_ = 0;
  std::size_t next_ = 0;     // where the next search starts
};

// A kernel binding `name(dims, **keywords)`: body(dims, kw) reads the keywords, calls
// kw.done() and runs the kernel. Registered as a CPython vectorcall function (METH_FASTCALL |
// METH_KEYWORDS) rather than through pybind11's dispatcher, which builds a kwargs dict at every
// call (about a microsecond at the kernels' twenty keywords, as much as a small kernel call):
// Keywords reads the call's own argument array. dims is the one positional argument (or the
// keyword dims), a tuple; C++ exceptions become Python ones as pybind11 translates them
// (std::invalid_argument: ValueError, py::type_error: TypeError, ...).
using KernelBody = void (*)(py::tuple dims, Keywords& kw);

namespace detail {
struct KernelDef {
  std::string name, doc;
  KernelBody body;
  PyMethodDef def;
};

// pybind11's default translation of the exception being handled (the bindings register no
// translator of their own).
inline void set_python_error() {
  try {
    throw;
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const py::builtin_exception& e) {
    e.set_error();
  } catch (const std::bad_alloc& e) {
    PyErr_SetString(PyExc_MemoryError, e.what());
  } catch (const std::domain_error& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::length_error& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::out_of_range& e) {
    PyErr_SetString(PyExc_IndexError, e.what());
  } catch (const std::range_error& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::overflow_error& e) {
    PyErr_SetString(PyExc_OverflowError, e.what());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  } catch (...) {
    PyErr_SetString(PyExc_RuntimeError, "Caught an unknown exception!");
  }
}

inline PyObject* call_kernel(PyObject* self, PyObject* const* args, Py_ssize_t nargsf,
                             PyObject* kwnames) {
  const auto* k = static_cast<const KernelDef*>(PyCapsule_GetPointer(self, nullptr));
  if (k == nullptr) return nullptr;
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  try {
    Keywords kw(k->name, args + nargs, kwnames);
    if (nargs > 1)
      throw py::type_error(k->name + "() takes 1 positional argument (dims) but " +
                           std::to_string(nargs) + " were given");
    const py::handle dims = nargs == 1 ? py::handle(args[0]) : kw.required("dims");
    if (!PyTuple_Check(dims.ptr()))
      throw py::type_error(k->name + "(): dims must be a tuple (T, N, C, H) or (T, N, C, H, "
                           "P), got " + std::string(Py_TYPE(dims.ptr())->tp_name));
    k->body(py::reinterpret_borrow<py::tuple>(dims), kw);
  } catch (...) {
    set_python_error();
    return nullptr;
  }
  Py_RETURN_NONE;
}
}  // namespace detail

inline void def_kernel(py::module_& m, const std::string& name, KernelBody body,
                       const std::string& doc) {
  // Lives as long as the function object (the capsule owns it).
  auto* k = new detail::KernelDef{name, name + "(dims: tuple, **kwargs) -> None\n\n" + doc, body, {}};
  k->def.ml_name = k->name.c_str();
  k->def.ml_meth = reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
      &detail::call_kernel));
  k->def.ml_flags = METH_FASTCALL | METH_KEYWORDS;
  k->def.ml_doc = k->doc.c_str();
  py::capsule owner(k, [](void* p) { delete static_cast<detail::KernelDef*>(p); });
  PyObject* f = PyCFunction_NewEx(&k->def, owner.ptr(), m.attr("__name__").ptr());
  if (f == nullptr) throw py::error_already_set();
  m.add_object(name.c_str(), py::reinterpret_steal<py::object>(f));
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
void register_lstm_ln(py::module_& m);
void register_single_state(py::module_& m);  // GRU and RNN (single_state.cc)
void register_ctc(py::module_& m);           // CTC loss (ctc.cc)
void register_lowp(py::module_& m);          // low-precision GEMM building blocks (lowp.cc)
void register_fpenv(py::module_& m);         // the subnormal flush for NumPy work (fpenv.cc)
void register_cell_step(py::module_& m);     // the single-step cells' per-step path (cell_step.cc)

}  // namespace fusedrnn_py
