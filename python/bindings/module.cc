// The fusedrnn._core extension module: one register_<cell> per file, plus build information.
#include "common.h"
#include "fusedrnn/config.h"
#include "fusedrnn/fusedrnn.h"

namespace py = pybind11;

namespace {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TensorFlow's checkpoints and
// LevelDB tables store it: the bytes are processed eight at a time through eight tables
// ("slicing by 8"), built at compile time (constant data, no state).
struct Crc32cTables {
  std::uint32_t t[8][256];
  constexpr Crc32cTables() : t{} {
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[0][i] = c;
    }
    for (std::uint32_t i = 0; i < 256; ++i)
      for (int j = 1; j < 8; ++j) t[j][i] = (t[j - 1][i] >> 8) ^ t[0][t[j - 1][i] & 0xFF];
  }
};
constexpr Crc32cTables kCrc32c{};

// crc32c::Extend(crc, data, n) of TensorFlow / LevelDB: the CRC of (what gave crc) + data.
std::uint32_t crc32c_extend(std::uint32_t crc, const unsigned char* p, std::size_t n) {
  const auto& t = kCrc32c.t;
  std::uint32_t c = ~crc;
  for (; n && (reinterpret_cast<std::uintptr_t>(p) & 7); --n) c = t[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
  for (; n >= 8; n -= 8, p += 8) {
    const std::uint32_t lo = c ^ (std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 |
                                  std::uint32_t(p[2]) << 16 | std::uint32_t(p[3]) << 24);
    c = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
        t[3][p[4]] ^ t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
  }
  for (; n; --n) c = t[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
  return ~c;
}

}  // namespace

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
  m.def(
      "crc32c",
      [](py::buffer data, std::uint32_t value) {
        py::buffer_info b = data.request();
        if (b.ndim != 1 || b.itemsize != 1 || b.strides[0] != 1)
          throw py::value_error("crc32c: data must be a contiguous byte buffer");
        const auto* p = static_cast<const unsigned char*>(b.ptr);
        const std::size_t n = std::size_t(b.size);
        if (n < (std::size_t(1) << 16)) return crc32c_extend(value, p, n);
        py::gil_scoped_release nogil;
        return crc32c_extend(value, p, n);
      },
      py::arg("data"), py::arg("value") = 0u,
      "CRC-32C of data (bytes, bytearray or a contiguous memoryview of bytes) continuing from "
      "value, the CRC of the bytes before it (TensorFlow's crc32c::Extend; value 0: the CRC "
      "of data alone). Used to verify TF checkpoints (fusedrnn.compat.v1.load_checkpoint).");
}
