// The kernels' subnormal flush (cpp/src/kernels/fpenv.h) for NumPy work: fusedrnn._fpenv's
// flush_denormals() context manager. Entering constructs a FlushDenormals guard on the calling
// thread (MXCSR FTZ + DAZ), exiting destroys it, which restores that thread's previous MXCSR.
// fusedrnn.optim runs its updates and gradient clipping under it, and fusedrnn train its whole
// step: NumPy's element-wise loops, and OpenBLAS running single-threaded on that thread, then
// read subnormal operands as zero and write subnormal results as zero, as the kernels do, so
// vanishing gradients (Adam's squared moments of ~1e-20 gradients) cost no microcode assists.
// Normal numbers whose results are normal are unaffected: results are bitwise unchanged.
#include <optional>

#include "common.h"
#include "kernels/fpenv.h"

namespace fusedrnn_py {

namespace {

class FlushDenormalsContext {
 public:
  void enter() {
    if (guard_) throw py::value_error("flush_denormals(): this context is already entered");
    guard_.emplace();
  }
  void exit() { guard_.reset(); }

 private:
  std::optional<fusedrnn::FlushDenormals> guard_;
};

}  // namespace

void register_fpenv(py::module_& m) {
  py::class_<FlushDenormalsContext>(
      m, "FlushDenormals",
      "Context manager: subnormal floats are flushed to zero (FTZ + DAZ) on the calling thread "
      "inside the block; the thread's previous setting comes back on exit. Enter it on the "
      "thread that exits it, once per object.")
      .def(py::init<>())
      .def("__enter__",
           [](FlushDenormalsContext& self) -> FlushDenormalsContext& {
             self.enter();
             return self;
           },
           py::return_value_policy::reference)
      .def("__exit__", [](FlushDenormalsContext& self, py::handle, py::handle, py::handle) {
        self.exit();
        return false;
      });
#ifdef FUSEDRNN_HAVE_MXCSR
  m.attr("flush_denormals_supported") = true;
#else
  m.attr("flush_denormals_supported") = false;
#endif
}

}  // namespace fusedrnn_py
