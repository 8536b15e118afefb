// The single-step cells' per-step path (fusedrnn.cells: LSTMCell, GRUCell, RNNCell): one C++
// call per forward or backward step does what the Python method did around the kernel call
// (about 8 µs of Python at H = 64, N = 1 against a 1.5 µs kernel): the checks of the step's
// arrays, the weights' identity check against the packed ones, the outputs' allocation, the
// kernel call with the GIL released, the tape record. A plan (a capsule, one per cell, made by
// cell_plan) keeps what does not change between steps: the dims, the workspaces holding the
// packed weights, the scratch y, the training caches by tape depth.
//
// Anything the fast path does not take as it is (a strided or foreign-dtype array, a wrong
// shape, a state of the wrong structure, a plan busy in another thread) makes it return None
// before any work: fusedrnn.cells then runs its Python path, which copies or raises the
// argument's clear error. So the errors and the copies stay Python's, and this file only has to
// recognise the common case exactly.
#include <time.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <memory>
#include <thread>
#include <vector>

#include "common.h"
#include "fusedrnn/gru.h"
#include "fusedrnn/lstm.h"
#include "fusedrnn/rnn.h"

namespace fusedrnn_py {

namespace {

enum Kind : int { kLstm = 0, kGru = 1, kRnn = 2 };
constexpr int kWeights = 6;  // weight_ih, weight_hh, bias_ih, bias_hh, weight_peep, weight_hr

// A float buffer kept between steps (workspace, y); 64-byte aligned like an Eigen allocation.
struct Buffer {
  std::unique_ptr<double[]> own;  // (doubles: 8-byte units, any scalar fits)
  void* data = nullptr;
  std::size_t bytes = 0;
  void resize(std::size_t b) {
    own.reset(new double[b / sizeof(double) + 16]);
    auto p = reinterpret_cast<std::uintptr_t>(own.get());
    data = reinterpret_cast<void*>((p + 63) & ~std::uintptr_t(63));
    bytes = b;
  }
};

// Deferred weight gradients (fusedrnn::WeightGradSink, common.h). A backward step adds rank-N
// products into dw_ih [G*H, C] and dw_hh [G*H, R]: at small N each of them reads and writes the
// whole gradient for 2N flops per element. At batch N <= kDeferMaxN the backward hands its
// weight-gradient terms to the plan instead, which keeps copies of their operands (the step's
// pre-activation gradients, x and the previous state, N rows each) and applies the terms of up
// to defer_steps(N) steps in one pass (gemm_tn_add_terms: each tile of a gradient loaded once for
// all of them, the same additions in the same order, so the same bits). The terms are applied
// before anyone can see the gradients: at the last backward of a loop (fusedrnn.cells), when a
// Parameter's grad is read or replaced (Parameter._pending names the cell), when the plan is
// freed, before another plan defers into the same Parameter, and when the grad arrays changed.
// Steps a batch: 32 / N, at least 8 (at N = 1 the gradients of H = 256, 2 MB, come from L3 at
// every pass: LSTM 256/1 backward 51 -> 46 us a step with 32 steps instead of 8).
// A 100-step training loop (fusedrnn.LSTMCell and GRUCell, H = 64, 128, 256, x without gradient,
// 1 thread, Zen 4, deferred against immediate in one run, medians of 7): N = 1 1.17-1.36x,
// N = 2 1.06-1.25x, N = 4 1.03-1.17x faster; with 8 steps a batch at every N: N = 8 0.98-1.06x
// (no gain worth the copies: its per-step products already run at 66-72 GFLOP/s, the deferred
// ones at 100), N = 32 0.93-0.97x. The avx2 copy (FUSEDRNN_ISA=avx2, H = 64, 128): N = 1
// 1.34-1.71x, N = 2 1.18-1.34x, N = 4 1.06-1.18x.
// N = 8 is deferred since 2026-12-06: on Zen 5 (2 vCPU EPYC, full-width 512-bit units), six
// runs of bench/defer_ab.py (H = 128, 256, 8 steps a batch): LSTM 0.996-1.154x (median 1.05),
// GRU 0.920-1.141x (median 1.015), 21 of 24 comparisons above 1; on Zen 4 it was 0.98-1.06x.
// N = 16 lost on Zen 5 (0.80-1.03x, a build with the limit raised).
constexpr int kDeferSteps = 32;  // at N = 1; kDeferSteps / N steps at batch N (at least 8)
inline int defer_steps(std::int64_t N) { return int(std::max<std::int64_t>(8, kDeferSteps / N)); }
constexpr std::int64_t kDeferMaxN = 8;

constexpr std::int64_t kPad = 16;

struct DeferTerm {
  void* c;  // the gradient's first element of the term (dw_hh's n block: a row offset)
  std::int64_t ldc, m, n, k, lda, ldb;
  std::size_t a, b;  // offsets of the operands' copies in the arena (scalars)
};

struct Defer {
  Buffer arena;                 // operand copies
  std::size_t cap = 0, used = 0;  // scalars
  std::vector<DeferTerm> terms;   // reserved: the kernel's add never allocates
  int steps = 0;
  int threads = 1;
  py::object grads[2];   // the arrays the pending terms add into (weight_ih's, weight_hh's grad)
  py::object params[2];  // their Parameters (_pending cleared when applied)
  // the last A copied during this step (the LSTM's dw_ih and dw_hh share one)
  const void* last_a = nullptr;
  std::int64_t last_lda = 0, last_m = 0, last_k = 0;
  std::size_t last_off = 0;
};

template <typename S>
struct DeferSink final : fusedrnn::WeightGradSink<S> {
  Defer& d;
  explicit DeferSink(Defer& q) : d(q) {}
  // Copies the term's operands (rows of m and n scalars, packed); the capacity was made sure of
  // before the call (bound below), so nothing here can fail.
  void add(S* c, std::int64_t ldc, std::int64_t m, std::int64_t n, std::int64_t k, const S* a,
           std::int64_t lda, const S* b, std::int64_t ldb) noexcept override {
    S* base = static_cast<S*>(d.arena.data);
    std::size_t ao;
    if (a == d.last_a && lda == d.last_lda && m == d.last_m && k == d.last_k) {
      ao = d.last_off;
    } else {
      ao = d.used;
      for (std::int64_t r = 0; r < k; ++r)
        std::copy(a + r * lda, a + r * lda + m, base + ao + r * (m + kPad));
      d.used += std::size_t(k * (m + kPad));
      d.last_a = a, d.last_lda = lda, d.last_m = m, d.last_k = k, d.last_off = ao;
    }
    // rows kPad scalars apart beyond their length: row strides of a power of two would map the
    // rows that gemm_tn_add_terms reads together onto a few L1 sets
    const std::int64_t lb = n + kPad;
    const std::size_t bo = d.used;
    for (std::int64_t r = 0; r < k; ++r)
      std::copy(b + r * ldb, b + r * ldb + n, base + bo + r * lb);
    d.used += std::size_t(k * lb);
    d.terms.push_back(DeferTerm{c, ldc, m, n, k, m + kPad, lb, ao, bo});
  }
};

struct Plan {
  int kind = kLstm;
  bool flag = false;   // GRU: reset_after; RNN: relu
  bool f64 = false;    // the cell's dtype
  bool reuse = true;   // reuse_packed_weights
  bool nogil = true;   // release the GIL around the kernel (bench: its cost)
  std::int64_t C = 0, H = 0, P = 0, R = 0, G = 4;
  py::object params;   // the cell's _parameters dict (read at every step)
  py::object names[kWeights];
  py::object data_attr, grad_attr, version_attr;  // "_data", "_grad", "_version"
  // forward: the arrays packed into fws, the Parameters' _version then, the cell's version
  py::object fw[kWeights];
  long long fwv[kWeights] = {};
  bool fpacked = false;
  long long fver = 0;
  Buffer fws, y;
  std::int64_t yN = 0;
  // backward: likewise, plus the forward count and N of the packing call
  py::object bw[kWeights];
  long long bwv[kWeights] = {};
  bool bpacked = false;
  long long bver = 0, bfwd = 0;
  std::int64_t bN = 0;
  Buffer bws;
  std::vector<py::object> caches;  // training caches by tape depth
  // copies of the steps' x by tape depth: the tape records a copy, so that a caller refilling
  // one input array step after step (buf[...] = data[t]) does not change what backward reads
  std::vector<py::object> xcopies;
  bool busy = false;   // a kernel call of another thread runs on these buffers
  py::object owner;    // weakref to the cell (Parameter._pending); None: no deferral
  py::object lock;     // the cells' gradient lock (cells._GRAD_LOCK), taken by ~Plan; or None
  Defer defer;
  ~Plan();
};

struct Busy {
  Plan& p;
  explicit Busy(Plan& q) : p(q) { p.busy = true; }
  ~Busy() { p.busy = false; }
};

const char* kCapsule = "fusedrnn.cells.plan";

int scalar_type(const Plan& p) {
  return p.f64 ? py::detail::npy_api::NPY_DOUBLE_ : py::detail::npy_api::NPY_FLOAT_;
}

// obj is an ndarray (exactly, when `exact`) of the plan's dtype in native byte order,
// C-contiguous (and writeable when `writable`); then its element count, else -1.
std::int64_t usable(const Plan& p, PyObject* obj, bool exact, bool writable) {
  auto& api = py::detail::npy_api::get();
  if (exact ? Py_TYPE(obj) != api.PyArray_Type_ : !api.PyArray_Check_(obj)) return -1;
  auto* a = py::detail::array_proxy(obj);
  auto* d = reinterpret_cast<py::detail::PyArrayDescr_Proxy*>(a->descr);
  if (d->type_num != scalar_type(p) || d->byteorder == '>') return -1;
  if (!(a->flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) return -1;
  if (writable && !(a->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) return -1;
  std::int64_t n = 1;
  for (int i = 0; i < a->nd; ++i) n *= a->dimensions[i];
  return n;
}

// obj is a usable exact ndarray of shape [rows, cols] (rows < 0: any rows >= 1, returned).
bool matrix(const Plan& p, PyObject* obj, std::int64_t* rows, std::int64_t cols) {
  if (usable(p, obj, true, false) < 0) return false;
  auto* a = py::detail::array_proxy(obj);
  if (a->nd != 2 || a->dimensions[1] != cols) return false;
  if (*rows < 0) {
    if (a->dimensions[0] < 1) return false;
    *rows = a->dimensions[0];
    return true;
  }
  return a->dimensions[0] == *rows;
}

template <typename S>
S* ptr(PyObject* obj) {
  return obj == nullptr ? nullptr : reinterpret_cast<S*>(py::detail::array_proxy(obj)->data);
}

Plan& plan_of(PyObject* capsule) {
  auto* p = static_cast<Plan*>(PyCapsule_GetPointer(capsule, kCapsule));
  if (p == nullptr) throw py::error_already_set();
  return *p;
}

// The parameters' arrays (attr "_data" or "_grad"), new references, nullptr where the cell has
// no such parameter; with `versions`, also each Parameter's _version (-1 where none). False: a
// parameter's array is unusable (the Python path reports it).
bool read_params(const Plan& p, const py::object& attr, py::object* out, bool writable,
                 long long* versions = nullptr) {
  static const std::int64_t none = -1;
  const std::int64_t want[kWeights] = {p.G * p.H * p.C, p.G * p.H * p.R, p.G * p.H, p.G * p.H,
                                       3 * p.H, p.P > 0 ? p.P * p.H : none};
  const int n = p.kind == kLstm ? kWeights : 4;
  for (int i = 0; i < n; ++i) {
    PyObject* param = PyDict_GetItemWithError(p.params.ptr(), p.names[i].ptr());
    if (param == nullptr) {
      if (PyErr_Occurred()) throw py::error_already_set();
      if (i < 2) return false;
      out[i] = py::object();
      if (versions != nullptr) versions[i] = -1;
      continue;
    }
    if (versions != nullptr) {
      PyObject* v = PyObject_GetAttr(param, p.version_attr.ptr());
      if (v == nullptr) {
        PyErr_Clear();
        return false;
      }
      versions[i] = PyLong_AsLongLong(v);
      Py_DECREF(v);
      if (versions[i] == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return false;
      }
    }
    PyObject* a = PyObject_GetAttr(param, attr.ptr());
    if (a == nullptr) {
      PyErr_Clear();
      return false;
    }
    out[i] = py::reinterpret_steal<py::object>(a);
    if (want[i] == none || usable(p, a, false, writable) != want[i]) return false;
  }
  return true;
}

// The same arrays (the plan holds those it packed, so an address is not reused) at the same
// Parameter versions.
bool same(const py::object* a, const py::object* b, const long long* va, const long long* vb) {
  for (int i = 0; i < kWeights; ++i)
    if (a[i].ptr() != b[i].ptr() || va[i] != vb[i]) return false;
  return true;
}

void ensure(Buffer& b, std::size_t bytes, bool exact, bool* packed) {
  if (b.data == nullptr || (exact ? b.bytes != bytes : b.bytes < bytes)) {
    b.resize(bytes);
    *packed = false;
  }
}

fusedrnn::Dims dims(const Plan& p, std::int64_t N) {
  fusedrnn::Dims d;
  d.T = 1, d.N = N, d.C = p.C, d.H = p.H, d.P = p.P;
  return d;
}

std::size_t cache_size(const Plan& p, const fusedrnn::Dims& d) {
  switch (p.kind) {
    case kLstm: return fusedrnn::lstm_cache_size(d);
    case kGru: return fusedrnn::gru_cache_size(d);
    default: return fusedrnn::rnn_cache_size(d);
  }
}

// A new C-ordered array of the plan's dtype, shape [rows, cols] (cols < 0: [rows]); straight
// through NumPy's C API (pybind11's array_t constructor builds shape vectors on the heap).
py::object empty(const Plan& p, std::int64_t rows, std::int64_t cols = -1) {
  auto& api = py::detail::npy_api::get();
  const Py_intptr_t shape[2] = {Py_intptr_t(rows), Py_intptr_t(cols)};
  PyObject* descr = api.PyArray_DescrFromType_(scalar_type(p));  // (stolen below)
  if (descr == nullptr) throw py::error_already_set();
  PyObject* a = api.PyArray_NewFromDescr_(api.PyArray_Type_, descr, cols < 0 ? 1 : 2, shape,
                                          nullptr, nullptr, 0, nullptr);
  if (a == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(a);
}

// The array a plan keeps for tape depth `depth` in `kept` (training caches, copies of x), while
// `fits` says it still does; else a new one from `make`, kept there for the next loop.
template <typename Fits, typename Make>
py::object at_depth(std::vector<py::object>& kept, std::size_t depth, Fits&& fits, Make&& make) {
  if (depth < kept.size() && fits(kept[depth].ptr())) return kept[depth];
  py::object a = make();
  if (depth < kept.size())
    kept[depth] = a;
  else
    kept.push_back(a);
  return a;
}

template <typename F>
void run(Plan& p, F&& kernel) {
  Busy busy(p);
  if (p.nogil) {
    py::gil_scoped_release nogil;
    kernel();
  } else {
    kernel();
  }
}

// Applies the deferred terms (Defer above), target by target in the order they came, and
// empties the plan's store; with the GIL released around the products (the plan busy).
template <typename S>
void apply_deferred(Plan& p, bool release_gil = true) {
  Defer& q = p.defer;
  if (!q.terms.empty()) {
    std::vector<fusedrnn::TnTerm<S>> list;
    list.reserve(q.terms.size());
    std::vector<char> done(q.terms.size(), 0);
    const S* base = static_cast<const S*>(q.arena.data);
    auto products = [&] {
      for (std::size_t i = 0; i < q.terms.size(); ++i) {
        if (done[i]) continue;
        const DeferTerm& t = q.terms[i];
        list.clear();
        for (std::size_t j = i; j < q.terms.size(); ++j) {
          const DeferTerm& u = q.terms[j];
          if (done[j] || u.c != t.c || u.m != t.m || u.n != t.n || u.ldc != t.ldc) continue;
          done[j] = 1;
          list.push_back(fusedrnn::TnTerm<S>{base + u.a, u.lda, base + u.b, u.ldb, u.k});
        }
        fusedrnn::gemm_tn_add_terms<S>(t.m, t.n, list.data(), std::int64_t(list.size()),
                                       static_cast<S*>(t.c), t.ldc, q.threads);
      }
    };
    if (release_gil) {
      Busy busy(p);
      py::gil_scoped_release nogil;
      products();
    } else {
      products();
    }
  }
  q.terms.clear();
  q.used = 0;
  q.steps = 0;
  q.last_a = nullptr;
  for (int i = 0; i < 2; ++i) {
    // the Parameter's marker, if it still names this plan's cell
    if (q.params[i] && !p.owner.is_none()) {
      PyObject* m = PyObject_GetAttrString(q.params[i].ptr(), "_pending");
      if (m == nullptr) {
        PyErr_Clear();
      } else {
        if (m == p.owner.ptr() &&
            PyObject_SetAttrString(q.params[i].ptr(), "_pending", Py_None) < 0)
          PyErr_Clear();
        Py_DECREF(m);
      }
    }
    q.params[i] = py::object();
    q.grads[i] = py::object();
  }
}

// apply_deferred once no other thread's kernel call runs on the plan (it finishes without the
// GIL, which this thread gives up while it waits).
void settle(Plan& p) {
  while (p.busy) {
    py::gil_scoped_release nogil;
    std::this_thread::yield();
  }
  if (p.f64) apply_deferred<double>(p); else apply_deferred<float>(p);
}

Plan::~Plan() {
  // (the capsule's destructor, GIL held): pending terms still reach their gradients, under the
  // gradient lock, as every other addition into them is: another thread's backward step of a
  // cell sharing these Parameters may be adding into the same arrays with the GIL released
  // (acquiring the lock gives up the GIL while it waits). The error indicator is saved around
  // it: a plan may die while an exception propagates.
  if (defer.terms.empty()) return;
  py::error_scope keep;
  bool held = false;
  if (lock && !lock.is_none()) {
    try {
      lock.attr("acquire")();
      held = true;
    } catch (...) {   // (interpreter shutdown): apply without it, as nothing else runs then
      PyErr_Clear();
    }
  }
  try {
    if (f64) apply_deferred<double>(*this, false); else apply_deferred<float>(*this, false);
  } catch (...) {
  }
  if (held) {
    try {
      lock.attr("release")();
    } catch (...) {
      PyErr_Clear();
    }
  }
}

// This thread's CPU time (the process's where POSIX thread clocks are missing).
double cpu_seconds() {
#ifdef CLOCK_THREAD_CPUTIME_ID
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
#else
  return double(std::clock()) / CLOCKS_PER_SEC;
#endif
}

// Measurement (bench/cells.py): the kernel call of a step alone, `repeat` times on the same
// arrays (weights packed as the step would have them, GIL released once around all): its
// wall-clock and thread CPU seconds, for the per-step overhead of the Python loop.
struct KernelTimer {
  long repeat = 0;
  double wall = 0, cpu = 0;
  template <typename F>
  void time(Plan& p, F&& kernel, bool* packed) {
    Busy busy(p);
    py::gil_scoped_release nogil;
    kernel();   // packs when the step would
    *packed = p.reuse;
    const auto w0 = std::chrono::steady_clock::now();
    const double c0 = cpu_seconds();
    for (long i = 0; i < repeat; ++i) kernel();
    cpu = cpu_seconds() - c0;
    wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  }
};

// cell_forward(plan, x, state, tape, version, num_threads) -> h | (h, c) | None
template <typename S>
py::object forward(Plan& p, PyObject* x, PyObject* state, PyObject* tape, long long version,
                   int threads, KernelTimer* timer = nullptr) {
  std::int64_t N = -1;
  if (!matrix(p, x, &N, p.C)) return py::none();
  PyObject *h0 = nullptr, *c0 = nullptr;
  if (state != Py_None) {
    if (p.kind == kLstm) {
      const bool tuple = PyTuple_CheckExact(state), list = PyList_CheckExact(state);
      if (!(tuple || list) || Py_SIZE(state) != 2) return py::none();
      h0 = tuple ? PyTuple_GET_ITEM(state, 0) : PyList_GET_ITEM(state, 0);
      c0 = tuple ? PyTuple_GET_ITEM(state, 1) : PyList_GET_ITEM(state, 1);
      std::int64_t n1 = N, n2 = N;
      if (!matrix(p, h0, &n1, p.R) || !matrix(p, c0, &n2, p.H)) return py::none();
    } else {
      h0 = state;
      std::int64_t n1 = N;
      if (!matrix(p, h0, &n1, p.R)) return py::none();
    }
  }
  py::object w[kWeights];
  long long wv[kWeights] = {};
  if (!read_params(p, p.data_attr, w, false, wv)) return py::none();
  const fusedrnn::Dims d = dims(p, N);
  const bool training = tape != Py_None;
  py::object cache, xcopy;
  if (training) {
    if (!PyList_CheckExact(tape)) return py::none();
    const std::size_t cache_n = cache_size(p, d);
    if (state == Py_None && PyList_SetSlice(tape, 0, PyList_GET_SIZE(tape), nullptr) < 0)
      throw py::error_already_set();
    const std::size_t depth = std::size_t(PyList_GET_SIZE(tape));
    cache = at_depth(
        p.caches, depth,
        [&](PyObject* a) { return usable(p, a, true, true) == std::int64_t(cache_n); },
        [&] { return empty(p, std::int64_t(cache_n)); });
    xcopy = at_depth(
        p.xcopies, depth,
        [&](PyObject* a) {
          std::int64_t rows = N;
          return matrix(p, a, &rows, p.C);
        },
        [&] { return empty(p, N, p.C); });
    std::memcpy(ptr<S>(xcopy.ptr()), ptr<S>(x), std::size_t(N * p.C) * sizeof(S));
  }
  std::size_t ws_n = 0;
  switch (p.kind) {
    case kLstm: ws_n = fusedrnn::lstm_forward_workspace_size(d); break;
    case kGru: ws_n = fusedrnn::gru_forward_workspace_size(d); break;
    default: ws_n = fusedrnn::rnn_forward_workspace_size(d);
  }
  bool packed = p.reuse && p.fpacked && p.fver == version && same(w, p.fw, wv, p.fwv);
  ensure(p.fws, ws_n * sizeof(S), false, &packed);
  if (p.yN != N) {
    p.y.resize(std::size_t(N * p.R) * sizeof(S));
    p.yN = N;
  }
  py::object h_n = empty(p, N, p.R);
  py::object c_n = p.kind == kLstm ? empty(p, N, p.H) : py::object();
  fusedrnn::Options opt;
  opt.num_threads = threads;
  opt.weights_packed = packed;
  S* ws = static_cast<S*>(p.fws.data);
  S* y = static_cast<S*>(p.y.data);
  p.fpacked = false;
  // The fields every cell's arguments share, then the kernel, run or timed.
  auto go = [&](auto& a, auto kernel) {
    a.x = ptr<S>(x), a.w_ih = ptr<S>(w[0].ptr()), a.w_hh = ptr<S>(w[1].ptr());
    a.b_ih = ptr<S>(w[2].ptr()), a.b_hh = ptr<S>(w[3].ptr()), a.h0 = ptr<S>(h0);
    a.y = y, a.h_n = ptr<S>(h_n.ptr()), a.cache = ptr<S>(cache.ptr());
    auto call = [&] { kernel(d, a, opt, ws); };
    if (timer != nullptr)
      timer->time(p, call, &opt.weights_packed);
    else
      run(p, call);
  };
  if (p.kind == kLstm) {
    fusedrnn::LstmForwardArgs<S> a;
    a.w_peep = ptr<S>(w[4].ptr()), a.w_hr = ptr<S>(w[5].ptr());
    a.c0 = ptr<S>(c0), a.c_n = ptr<S>(c_n.ptr());
    go(a, [](auto&... z) { fusedrnn::lstm_forward<S>(z...); });
  } else if (p.kind == kGru) {
    fusedrnn::GruForwardArgs<S> a;
    a.variant = p.flag ? fusedrnn::GruVariant::reset_after : fusedrnn::GruVariant::reset_before;
    go(a, [](auto&... z) { fusedrnn::gru_forward<S>(z...); });
  } else {
    fusedrnn::RnnForwardArgs<S> a;
    a.nonlinearity = p.flag ? fusedrnn::Nonlinearity::relu : fusedrnn::Nonlinearity::tanh;
    go(a, [](auto&... z) { fusedrnn::rnn_forward<S>(z...); });
  }
  for (int i = 0; i < kWeights; ++i) p.fw[i] = w[i], p.fwv[i] = wv[i];
  p.fver = version;
  p.fpacked = p.reuse;
  if (timer != nullptr) return py::make_tuple(timer->wall, timer->cpu);
  if (training) {
    // the step's record for backward: (a copy of x, cache, has_state)
    py::tuple step = py::make_tuple(xcopy, cache, py::bool_(state != Py_None));
    if (PyList_Append(tape, step.ptr()) < 0) throw py::error_already_set();
  }
  if (p.kind == kLstm) return py::make_tuple(h_n, c_n);
  return h_n;
}

// Makes the plan ready to take this backward's weight-gradient terms (Defer): room for one more
// step (applying what is pending when full, or when it adds into other grad arrays), the
// Parameters marked (another plan's pending terms on them applied first). False: this step adds
// its weight gradients at once (a plan without an owner, N > kDeferMaxN, a Parameter without
// the marker).
template <typename S>
bool prepare_defer(Plan& p, std::int64_t N, const py::object* g, int threads) {
  if (p.owner.is_none()) return false;
  Defer& q = p.defer;
  if (N > kDeferMaxN) {
    // this step adds at once: this cell's own pending terms first, as they were made (they had
    // landed after it, at the loop's end: other bits than adding step by step)
    if (q.steps > 0) apply_deferred<S>(p);
    return false;
  }
  // per step: at most A [N, G*H] twice (dw_ih's and dw_hh's; the GRU reset_before's two dw_hh
  // terms split one), x [N, C], the state [N, R] and the GRU's r*h [N, H]
  const std::size_t bound =
      std::size_t(N * (2 * p.G * p.H + p.C + 2 * std::max(p.R, p.H) + 6 * kPad));
  const int batch = defer_steps(N);  // steps a batch
  if (q.steps > 0 && (q.grads[0].ptr() != g[0].ptr() || q.grads[1].ptr() != g[1].ptr() ||
                      q.steps >= batch || q.used + bound > q.cap))
    apply_deferred<S>(p);
  if (q.steps == 0 && q.cap < bound * std::size_t(batch)) {
    q.arena.resize(bound * std::size_t(batch) * sizeof(S));
    q.cap = bound * std::size_t(batch);
  }
  if (q.terms.capacity() < std::size_t(3 * kDeferSteps + 3)) q.terms.reserve(3 * kDeferSteps + 3);
  for (int i = 0; i < 2; ++i) {
    if (q.params[i]) continue;  // marked at an earlier step of this batch
    PyObject* param = PyDict_GetItemWithError(p.params.ptr(), p.names[i].ptr());
    if (param == nullptr) {
      if (PyErr_Occurred()) throw py::error_already_set();
      return false;
    }
    PyObject* m = PyObject_GetAttrString(param, "_pending");
    if (m == nullptr) {
      PyErr_Clear();
      return false;
    }
    const bool ours = m == p.owner.ptr(), none = m == Py_None;
    Py_DECREF(m);
    if (!ours) {
      if (!none) {  // another cell's pending terms on this Parameter: reading grad applies them
        PyObject* r = PyObject_GetAttrString(param, "grad");
        if (r == nullptr) throw py::error_already_set();
        Py_DECREF(r);
      }
      if (PyObject_SetAttrString(param, "_pending", p.owner.ptr()) < 0)
        throw py::error_already_set();
    }
    q.params[i] = py::reinterpret_borrow<py::object>(param);
  }
  q.grads[0] = g[0], q.grads[1] = g[1];
  q.threads = threads;
  q.last_a = nullptr;
  return true;
}

// cell_backward(plan, step, d_h, d_c, version, forwards, num_threads, input_grad)
//   -> (dx, dh0, dc0) | None; dx is None without input_grad (the kernel skips its product)
template <typename S>
py::object backward(Plan& p, PyObject* step, PyObject* d_h, PyObject* d_c, long long version,
                    long long forwards, int threads, bool input_grad,
                    KernelTimer* timer = nullptr) {
  if (!PyTuple_CheckExact(step) || PyTuple_GET_SIZE(step) != 3) return py::none();
  PyObject* x = PyTuple_GET_ITEM(step, 0);
  PyObject* cache = PyTuple_GET_ITEM(step, 1);
  const bool has_state = PyTuple_GET_ITEM(step, 2) == Py_True;
  std::int64_t N = -1;
  if (!matrix(p, x, &N, p.C)) return py::none();
  const fusedrnn::Dims d = dims(p, N);
  if (usable(p, cache, true, false) != std::int64_t(cache_size(p, d))) return py::none();
  if (d_h != Py_None) {
    std::int64_t n = N;
    if (!matrix(p, d_h, &n, p.R)) return py::none();
  }
  if (d_c != Py_None) {
    std::int64_t n = N;
    if (p.kind != kLstm || !matrix(p, d_c, &n, p.H)) return py::none();
  }
  py::object w[kWeights], g[kWeights];
  long long wv[kWeights] = {};
  if (!read_params(p, p.data_attr, w, false, wv) || !read_params(p, p.grad_attr, g, true))
    return py::none();
  std::size_t ws_n = 0;
  switch (p.kind) {
    case kLstm: ws_n = fusedrnn::lstm_backward_workspace_size(d); break;
    case kGru: ws_n = fusedrnn::gru_backward_workspace_size(d); break;
    default: ws_n = fusedrnn::rnn_backward_workspace_size(d);
  }
  // The previous backward of this loop packed the same weights unless a forward ran since,
  // N changed, or the weights changed (version: weights_changed(), load_state_dict, ...; the
  // Parameters' versions: an optimiser step, a load into a parent module, ...).
  bool packed = p.reuse && p.bpacked && p.bver == version && p.bfwd == forwards && p.bN == N &&
                same(w, p.bw, wv, p.bwv);
  ensure(p.bws, ws_n * sizeof(S), true, &packed);
  py::object dx = input_grad ? empty(p, N, p.C) : py::none();
  py::object dh0 = has_state ? empty(p, N, p.R) : py::none();
  py::object dc0 = has_state && p.kind == kLstm ? empty(p, N, p.H) : py::none();
  auto out = [](const py::object& o) { return o.is_none() ? nullptr : ptr<S>(o.ptr()); };
  auto in = [](PyObject* o) { return o == Py_None ? nullptr : ptr<S>(o); };
  fusedrnn::Options opt;
  opt.num_threads = threads;
  opt.weights_packed = packed;
  S* ws = static_cast<S*>(p.bws.data);
  DeferSink<S> sink(p.defer);
  const bool defer = timer == nullptr && prepare_defer<S>(p, N, g, threads);
  p.bpacked = false;
  // The fields every cell's arguments share, then the kernel, run or timed.
  auto go = [&](auto& a, auto kernel) {
    a.x = ptr<S>(x), a.w_ih = ptr<S>(w[0].ptr()), a.w_hh = ptr<S>(w[1].ptr());
    a.cache = ptr<S>(cache), a.dh_n = in(d_h);
    a.dx = out(dx), a.dh0 = out(dh0);
    a.dw_ih = ptr<S>(g[0].ptr()), a.dw_hh = ptr<S>(g[1].ptr());
    a.db_ih = ptr<S>(g[2].ptr()), a.db_hh = ptr<S>(g[3].ptr());
    if (defer) a.wgrad_sink = &sink;
    auto call = [&] { kernel(d, a, opt, ws); };
    if (timer != nullptr)
      timer->time(p, call, &opt.weights_packed);
    else
      run(p, call);
  };
  if (p.kind == kLstm) {
    fusedrnn::LstmBackwardArgs<S> a;
    a.w_peep = ptr<S>(w[4].ptr()), a.w_hr = ptr<S>(w[5].ptr());
    a.dc_n = in(d_c), a.dc0 = out(dc0);
    a.dw_peep = ptr<S>(g[4].ptr()), a.dw_hr = ptr<S>(g[5].ptr());
    go(a, [](auto&... z) { fusedrnn::lstm_backward<S>(z...); });
  } else if (p.kind == kGru) {
    fusedrnn::GruBackwardArgs<S> a;
    a.variant = p.flag ? fusedrnn::GruVariant::reset_after : fusedrnn::GruVariant::reset_before;
    go(a, [](auto&... z) { fusedrnn::gru_backward<S>(z...); });
  } else {
    fusedrnn::RnnBackwardArgs<S> a;
    a.nonlinearity = p.flag ? fusedrnn::Nonlinearity::relu : fusedrnn::Nonlinearity::tanh;
    go(a, [](auto&... z) { fusedrnn::rnn_backward<S>(z...); });
  }
  if (defer) ++p.defer.steps;
  // the cell bumps its version after a backward (an optimiser step may follow): the next
  // backward of the loop sees version + 1
  for (int i = 0; i < kWeights; ++i) p.bw[i] = w[i], p.bwv[i] = wv[i];
  p.bver = version + 1;
  p.bfwd = forwards;
  p.bN = N;
  p.bpacked = p.reuse;
  if (timer != nullptr) return py::make_tuple(timer->wall, timer->cpu);
  return py::make_tuple(dx, dh0, dc0);
}

long long as_long(PyObject* o, const char* name) {
  const long long v = PyLong_AsLongLong(o);
  if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
  (void)name;
  return v;
}

PyObject* call(PyObject* const* args, Py_ssize_t nargsf, Py_ssize_t want, const char* name,
               py::object (*body)(PyObject* const*)) {
  try {
    if (PyVectorcall_NARGS(nargsf) != want)
      throw py::type_error(std::string(name) + "() takes " + std::to_string(want) +
                           " positional arguments");
    return body(args).release().ptr();
  } catch (...) {
    detail::set_python_error();
    return nullptr;
  }
}

PyObject* cell_forward(PyObject*, PyObject* const* args, Py_ssize_t nargsf) {
  return call(args, nargsf, 6, "cell_forward", [](PyObject* const* a) {
    Plan& p = plan_of(a[0]);
    if (p.busy) return py::object(py::none());
    const long long version = as_long(a[4], "version");
    const int threads = int(as_long(a[5], "num_threads"));
    return p.f64 ? forward<double>(p, a[1], a[2], a[3], version, threads)
                 : forward<float>(p, a[1], a[2], a[3], version, threads);
  });
}

PyObject* cell_backward(PyObject*, PyObject* const* args, Py_ssize_t nargsf) {
  return call(args, nargsf, 8, "cell_backward", [](PyObject* const* a) {
    Plan& p = plan_of(a[0]);
    if (p.busy) return py::object(py::none());
    const long long version = as_long(a[4], "version");
    const long long forwards = as_long(a[5], "forwards");
    const int threads = int(as_long(a[6], "num_threads"));
    const bool input_grad = a[7] == Py_True;
    return p.f64 ? backward<double>(p, a[1], a[2], a[3], version, forwards, threads, input_grad)
                 : backward<float>(p, a[1], a[2], a[3], version, forwards, threads, input_grad);
  });
}

PyMethodDef forward_def = {
    "cell_forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&cell_forward)),
    METH_FASTCALL,
    "cell_forward(plan, x, state, tape, version, num_threads) -> h | (h, c) | None\n\n"
    "One forward step of a single-step cell (fusedrnn.cells) on its plan; tape: the cell's "
    "tape (a list: training, the step is appended) or None. None: the arguments are not the "
    "common case, nothing was done (the Python path checks, copies or raises)."};
PyMethodDef backward_def = {
    "cell_backward",
    reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&cell_backward)), METH_FASTCALL,
    "cell_backward(plan, step, d_h, d_c, version, forwards, num_threads, input_grad) -> (dx, "
    "dh0, dc0) | None\n\nThe backward of a recorded step (the tape's tuple), parameter "
    "gradients added into the Parameters' grad arrays; dx is None unless input_grad is True. "
    "None: not the common case, nothing was done."};

}  // namespace

void register_cell_step(py::module_& m) {
  m.def(
      "cell_plan",
      [](int kind, bool flag, py::dtype dtype, std::int64_t C, std::int64_t H, std::int64_t P,
         py::dict params, bool reuse, bool release_gil, py::object owner, py::object lock) {
        if (kind < kLstm || kind > kRnn) throw py::value_error("cell_plan: kind must be 0, 1 or 2");
        if (C < 1 || H < 1 || P < 0 || (P > 0 && kind != kLstm))
          throw py::value_error("cell_plan: bad sizes");
        auto p = std::make_unique<Plan>();
        p->kind = kind, p->flag = flag, p->reuse = reuse, p->nogil = release_gil;
        if (dtype.is(py::dtype::of<double>()) || dtype.equal(py::dtype::of<double>()))
          p->f64 = true;
        else if (!dtype.equal(py::dtype::of<float>()))
          throw py::type_error("cell_plan: dtype must be float32 or float64");
        p->C = C, p->H = H, p->P = P, p->R = P > 0 ? P : H;
        p->G = kind == kLstm ? 4 : kind == kGru ? 3 : 1;
        p->params = params;
        p->owner = owner;
        p->lock = lock;
        const char* names[kWeights] = {"weight_ih", "weight_hh", "bias_ih",
                                       "bias_hh", "weight_peep", "weight_hr"};
        for (int i = 0; i < kWeights; ++i)
          p->names[i] = py::reinterpret_steal<py::object>(PyUnicode_InternFromString(names[i]));
        p->data_attr = py::reinterpret_steal<py::object>(PyUnicode_InternFromString("_data"));
        p->grad_attr = py::reinterpret_steal<py::object>(PyUnicode_InternFromString("_grad"));
        p->version_attr =
            py::reinterpret_steal<py::object>(PyUnicode_InternFromString("_version"));
        PyObject* cap = PyCapsule_New(p.get(), kCapsule, [](PyObject* c) {
          delete static_cast<Plan*>(PyCapsule_GetPointer(c, kCapsule));
        });
        if (cap == nullptr) throw py::error_already_set();
        p.release();
        return py::reinterpret_steal<py::object>(cap);
      },
      py::arg("kind"), py::arg("flag"), py::arg("dtype"), py::arg("C"), py::arg("H"),
      py::arg("P"), py::arg("params"), py::arg("reuse"), py::arg("release_gil") = true,
      py::arg("owner") = py::none(), py::arg("lock") = py::none(),
      "A single-step cell's plan (fusedrnn.cells): kind 0 LSTM, 1 GRU, 2 RNN; flag: GRU "
      "reset_after / RNN relu; params: the cell's _parameters dict; reuse: "
      "reuse_packed_weights; release_gil: around the kernel calls (off only to measure its "
      "cost); owner: a weakref to the cell, which the Parameters' _pending names while the "
      "plan holds deferred weight-gradient terms for them (None: no deferral); lock: the gradient "
      "lock (acquire/release) held while a dying plan applies its deferred terms.");
  m.def(
      "cell_flush",
      [](py::capsule plan) { settle(plan_of(plan.ptr())); },
      py::arg("plan"),
      "Applies the plan's deferred weight-gradient terms to the Parameters' grad arrays (bit "
      "for bit what adding them at each backward step would have given).");
  m.def(
      "cell_pending_steps",
      [](py::capsule plan) { return plan_of(plan.ptr()).defer.steps; },
      py::arg("plan"), "Backward steps whose weight-gradient terms wait in the plan (tests).");
  m.def(
      "cell_kernel_seconds",
      [](py::capsule plan, py::handle x, py::handle state, long repeat, int num_threads) {
        Plan& p = plan_of(plan.ptr());
        if (p.busy || repeat < 1)
          throw py::value_error("cell_kernel_seconds: plan busy or repeat < 1");
        KernelTimer timer;
        timer.repeat = repeat;
        py::object r = p.f64 ? forward<double>(p, x.ptr(), state.ptr(), Py_None, -1,
                                               num_threads, &timer)
                             : forward<float>(p, x.ptr(), state.ptr(), Py_None, -1, num_threads,
                                              &timer);
        if (r.is_none())
          throw py::value_error("cell_kernel_seconds: x or state not usable as they are");
        p.fpacked = false;  // (version -1: the cell's next step packs)
        return r;
      },
      py::arg("plan"), py::arg("x"), py::arg("state"), py::arg("repeat"), py::arg("num_threads"),
      "Measurement: (wall, cpu) seconds of `repeat` kernel calls of an inference step on x, "
      "state, without the per-step Python and binding work (bench/cells.py).");
  m.def(
      "cell_backward_kernel_seconds",
      [](py::capsule plan, py::handle step, py::handle d_h, py::handle d_c, long repeat,
         int num_threads, bool input_grad) {
        Plan& p = plan_of(plan.ptr());
        if (p.busy || repeat < 1)
          throw py::value_error("cell_backward_kernel_seconds: plan busy or repeat < 1");
        KernelTimer timer;
        timer.repeat = repeat;
        py::object r = p.f64 ? backward<double>(p, step.ptr(), d_h.ptr(), d_c.ptr(), -1, -1,
                                                num_threads, input_grad, &timer)
                             : backward<float>(p, step.ptr(), d_h.ptr(), d_c.ptr(), -1, -1,
                                               num_threads, input_grad, &timer);
        if (r.is_none())
          throw py::value_error("cell_backward_kernel_seconds: arguments not usable as they are");
        p.bpacked = false;  // the cell's next backward packs
        return r;
      },
      py::arg("plan"), py::arg("step"), py::arg("d_h"), py::arg("d_c"), py::arg("repeat"),
      py::arg("num_threads"), py::arg("input_grad") = true,
      "Measurement: (wall, cpu) seconds of `repeat` backward kernel calls of a recorded step "
      "(a tape entry; input_grad False: without dx); the parameter gradients accumulate "
      "`repeat` + 1 times (bench/cells.py).");
  m.def(
      "cell_plan_packed",
      [](py::capsule plan) {
        const Plan& p = plan_of(plan.ptr());
        return py::make_tuple(p.fpacked, p.bpacked);
      },
      "(forward, backward): whether the plan's workspaces hold packed weights.");
  for (PyMethodDef* def : {&forward_def, &backward_def}) {
    PyObject* f = PyCFunction_NewEx(def, nullptr, m.attr("__name__").ptr());
    if (f == nullptr) throw py::error_already_set();
    m.add_object(def->ml_name, py::reinterpret_steal<py::object>(f));
  }
}

}  // namespace fusedrnn_py
