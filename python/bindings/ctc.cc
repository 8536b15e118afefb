// Binding of the CTC loss kernel. Arrays come preallocated and checked from fusedrnn.ctc; the
// checks here keep the C++ side safe when _core is called directly.
#include "common.h"
#include "fusedrnn/ctc.h"

namespace fusedrnn_py {

void register_ctc(py::module_& m) {
  m.def(
      "ctc_workspace_size",
      [](std::int64_t T, std::int64_t N, std::int64_t max_target_length) {
        return fusedrnn::ctc_workspace_size(T, N, max_target_length);
      },
      py::arg("T"), py::arg("N"), py::arg("max_target_length"));
  m.def(
      "ctc_loss",
      [](py::tuple dims, std::int64_t max_target_length, std::int64_t blank, bool logits,
         bool zero_infinity, int num_threads, py::handle input, py::handle targets,
         std::int64_t targets_width, py::handle input_lengths, py::handle target_lengths,
         py::handle grad_scale, py::handle loss, py::handle grad, py::handle workspace) {
        if (dims.size() != 3) throw py::value_error("dims must be (T, N, K)");
        const std::int64_t T = dims[0].cast<std::int64_t>(), N = dims[1].cast<std::int64_t>(),
                           K = dims[2].cast<std::int64_t>();
        if (T < 1 || N < 1 || K < 1) throw py::value_error("dims must be positive");
        if (max_target_length < 0) throw py::value_error("max_target_length must be >= 0");
        if (targets_width < 0) throw py::value_error("targets_width must be >= 0");
        auto pil = data_of<std::int64_t>(input_lengths, "input_lengths", std::size_t(N), false,
                                         false);
        auto ptl = data_of<std::int64_t>(target_lengths, "target_lengths", std::size_t(N),
                                         false, false);
        // The concatenated layout's size is the sum of the lengths (checked in range below by
        // the kernel's own length checks first: sum only after each is known to be >= 0).
        std::size_t n_targets = 0;
        if (targets_width > 0) {
          n_targets = std::size_t(N) * std::size_t(targets_width);
        } else {
          for (std::int64_t n = 0; n < N; ++n) {
            if (ptl[n] < 0 || ptl[n] > max_target_length)
              throw py::value_error("target_lengths must lie in [0, max_target_length]");
            n_targets += std::size_t(ptl[n]);
          }
        }
        auto pt = data_of<std::int64_t>(targets, "targets", n_targets, n_targets == 0, false);
        dispatch_dtype(
            input,
            [&](auto tag) {
              using S = decltype(tag);
              fusedrnn::CtcArgs<S> a;
              a.T = T;
              a.N = N;
              a.K = K;
              a.max_target_length = max_target_length;
              a.blank = blank;
              a.logits = logits;
              a.zero_infinity = zero_infinity;
              a.num_threads = num_threads;
              a.input = data_of<S>(input, "input", std::size_t(T * N * K), false, false);
              a.targets = pt;
              a.targets_width = targets_width;
              a.input_lengths = pil;
              a.target_lengths = ptl;
              a.grad_scale = data_of<S>(grad_scale, "grad_scale", std::size_t(N), true, false);
              a.loss = data_of<S>(loss, "loss", std::size_t(N), false, true);
              a.grad = data_of<S>(grad, "grad", std::size_t(T * N * K), true, true);
              a.workspace = data_of<S>(workspace, "workspace",
                                       fusedrnn::ctc_workspace_size(T, N, max_target_length),
                                       false, true);
              py::gil_scoped_release nogil;  // std::invalid_argument becomes ValueError
              fusedrnn::ctc_loss<S>(a);
            },
            "input");
      },
      "Low-level CTC loss (per-sequence losses, optional gradient) into preallocated arrays.");
}

}  // namespace fusedrnn_py
