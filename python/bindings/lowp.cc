// The low-precision GEMM building blocks (cpp/src/lowp/lowp.h) for fusedrnn.lowp: conversion,
// quantisation, packing and the bf16 / s8 products, in a tier named by the caller (None: the
// active one). fusedrnn.lowp checks arguments with friendlier messages; these checks keep the
// C++ side safe when _core is called directly.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>

#include "common.h"
#include "lowp.h"

namespace fusedrnn_py {
namespace {

namespace lp = fusedrnn::lowp;
using I = std::int64_t;

template <typename T>
const char* lp_dtype() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, std::uint16_t>) return "uint16";
  if constexpr (std::is_same_v<T, std::int8_t>) return "int8";
  return "int32";
}

// A C-contiguous array of T with `ndim` dimensions (checked; shape returned through the array).
template <typename T>
py::array_t<T> arr(const py::handle& h, const char* name, int ndim, bool writable = false) {
  if (!py::isinstance<py::array_t<T>>(h))
    throw py::type_error(std::string(name) + " must be a numpy array of dtype " + lp_dtype<T>());
  auto a = py::reinterpret_borrow<py::array_t<T>>(h);
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got " +
                          std::to_string(a.ndim()) + "-D");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous");
  if (writable && !a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
  return a;
}

lp::Tier tier_of(const std::optional<std::string>& name) {
  if (!name) return lp::active_tier();
  lp::Tier t;
  if (!lp::tier_from_name(*name, &t))
    throw py::value_error("tier must be one of amx, avx512_bf16, avx512, avx2, baseline; got '" +
                          *name + "'");
  lp::require_tier(t, "tier");
  return t;
}

void need(bool ok, const std::string& what) {
  if (!ok) throw py::value_error(what);
}

}  // namespace

void register_lowp(py::module_& m) {
  // The deepest int8 product whose s32 sums are exact (lowp.h): fusedrnn.lowp.INT8_MAX_K reads
  // it, so that Python's early refusals and the kernels' own checks name one number.
  m.attr("int8_max_depth") = py::int_(fusedrnn::lowp::kMaxS8Depth);
  m.def("lowp_tiers", [] {
    py::dict d;
    for (lp::Tier t : {lp::Tier::amx, lp::Tier::avx512_bf16, lp::Tier::avx512, lp::Tier::avx2,
                       lp::Tier::baseline})
      d[lp::tier_name(t)] = lp::tier_available(t);
    return d;
  }, "{tier name: available here}, widest first.");
  m.def("lowp_active_tier", [] { return std::string(lp::tier_name(lp::active_tier())); },
        "The tier the low-precision products use (FUSEDRNN_ISA may narrow it).");

  m.def("lowp_to_bf16", [](py::handle x, std::optional<std::string> tier) {
    auto a = arr<float>(x, "x", 2);
    const lp::Tier t = tier_of(tier);
    const I m = a.shape(0), K = a.shape(1), kp = lp::bf16_kpad(K);
    py::array_t<std::uint16_t> out({m, kp});
    {
      py::gil_scoped_release nogil;
      lp::to_bf16(t, a.data(), m, K, K, out.mutable_data(), kp);
    }
    return out;
  }, py::arg("x"), py::arg("tier") = py::none());

  m.def("lowp_pack_bf16", [](py::handle w) {
    auto a = arr<float>(w, "w", 2);
    const I n = a.shape(0), K = a.shape(1);
    need(n >= 1 && K >= 1, "w must not be empty");
    py::array_t<std::uint16_t> out(lp::packed_bf16_size(n, K));
    lp::pack_bf16(a.data(), n, K, K, out.mutable_data());
    return out;
  }, py::arg("w"));

  m.def("lowp_gemm_bf16", [](py::handle a, I K, py::handle packed, I n, py::handle bias,
                             py::handle c, bool accumulate, std::optional<std::string> tier,
                             int num_threads) {
    auto A = arr<std::uint16_t>(a, "a", 2);
    auto B = arr<std::uint16_t>(packed, "packed", 1);
    auto Cc = arr<float>(c, "c", 2, true);
    const lp::Tier t = tier_of(tier);
    const I m = A.shape(0), lda = A.shape(1);
    need(K >= 1 && n >= 1, "K and n must be positive");
    need(B.shape(0) == lp::packed_bf16_size(n, K),
         "packed must have " + std::to_string(lp::packed_bf16_size(n, K)) + " elements");
    need(Cc.shape(0) == m && Cc.shape(1) == n, "c must have shape [m, n]");
    const float* pb = nullptr;
    if (!bias.is_none()) {
      auto b = arr<float>(bias, "bias", 1);
      need(b.shape(0) == n, "bias must have n elements");
      pb = b.data();
    }
    py::gil_scoped_release nogil;
    lp::gemm_bf16(t, m, n, K, A.data(), lda, B.data(), pb, Cc.mutable_data(), n, accumulate,
                  num_threads);
  }, py::arg("a"), py::arg("K"), py::arg("packed"), py::arg("n"), py::arg("bias"), py::arg("c"),
     py::arg("accumulate") = false, py::arg("tier") = py::none(), py::arg("num_threads") = 0);

  m.def("lowp_quantize_s8", [](py::handle x, std::optional<std::string> tier) {
    auto a = arr<float>(x, "x", 2);
    const lp::Tier t = tier_of(tier);
    const I m = a.shape(0), K = a.shape(1), kp = lp::s8_kpad(K);
    py::array_t<std::int8_t> q({m, kp});
    py::array_t<float> scale(m);
    {
      py::gil_scoped_release nogil;
      lp::quantize_s8(t, a.data(), m, K, K, q.mutable_data(), kp, scale.mutable_data());
    }
    return py::make_tuple(q, scale);
  }, py::arg("x"), py::arg("tier") = py::none());

  m.def("lowp_quantize_s8_fixed", [](py::handle x, float inv, std::optional<std::string> tier) {
    auto a = arr<float>(x, "x", 2);
    const lp::Tier t = tier_of(tier);
    const I m = a.shape(0), K = a.shape(1), kp = lp::s8_kpad(K);
    py::array_t<std::int8_t> q({m, kp});
    {
      py::gil_scoped_release nogil;
      lp::quantize_s8_fixed(t, a.data(), m, K, K, inv, q.mutable_data(), kp);
    }
    return q;
  }, py::arg("x"), py::arg("inv"), py::arg("tier") = py::none());

  m.def("lowp_pack_s8", [](py::handle w) {
    auto a = arr<float>(w, "w", 2);
    const I n = a.shape(0), K = a.shape(1), n16 = lp::panels(n) * lp::kPanel;
    need(n >= 1 && K >= 1, "w must not be empty");
    py::array_t<std::int8_t> out(lp::packed_s8_size(n, K));
    py::array_t<float> scales(n16);
    py::array_t<std::int32_t> colsum(n16);
    lp::pack_s8(a.data(), n, K, K, out.mutable_data(), scales.mutable_data(),
                colsum.mutable_data());
    return py::make_tuple(out, scales, colsum);
  }, py::arg("w"));

  m.def("lowp_gemm_s8", [](py::handle a, py::handle a_scale, I K, py::handle packed,
                           py::handle w_scale, py::handle colsum, I n, py::handle bias,
                           py::handle c, bool accumulate, std::optional<std::string> tier,
                           int num_threads) {
    auto A = arr<std::int8_t>(a, "a", 2);
    auto As = arr<float>(a_scale, "a_scale", 1);
    auto B = arr<std::int8_t>(packed, "packed", 1);
    auto Ws = arr<float>(w_scale, "w_scale", 1);
    auto Cs = arr<std::int32_t>(colsum, "colsum", 1);
    auto Cc = arr<float>(c, "c", 2, true);
    const lp::Tier t = tier_of(tier);
    const I m = A.shape(0), lda = A.shape(1), n16 = lp::panels(n) * lp::kPanel;
    need(K >= 1 && n >= 1, "K and n must be positive");
    need(As.shape(0) == m, "a_scale must have m elements");
    need(B.shape(0) == lp::packed_s8_size(n, K),
         "packed must have " + std::to_string(lp::packed_s8_size(n, K)) + " elements");
    need(Ws.shape(0) == n16 && Cs.shape(0) == n16,
         "w_scale and colsum must have " + std::to_string(n16) + " elements");
    need(Cc.shape(0) == m && Cc.shape(1) == n, "c must have shape [m, n]");
    const float* pb = nullptr;
    if (!bias.is_none()) {
      auto b = arr<float>(bias, "bias", 1);
      need(b.shape(0) == n, "bias must have n elements");
      pb = b.data();
    }
    py::gil_scoped_release nogil;
    lp::gemm_s8(t, m, n, K, A.data(), lda, As.data(), B.data(), Ws.data(), Cs.data(), pb,
                Cc.mutable_data(), n, accumulate, num_threads);
  }, py::arg("a"), py::arg("a_scale"), py::arg("K"), py::arg("packed"), py::arg("w_scale"),
     py::arg("colsum"), py::arg("n"), py::arg("bias"), py::arg("c"),
     py::arg("accumulate") = false, py::arg("tier") = py::none(), py::arg("num_threads") = 0);

  // The fp32 yardstick of bench/bench_lowp.py: the kernels' packed fp32 GEMM.
  m.def("lowp_f32_pack", [](py::handle w) {
    auto a = arr<float>(w, "w", 2);
    const I n = a.shape(0), K = a.shape(1);
    need(n >= 1 && K >= 1, "w must not be empty");
    py::array_t<float> out(lp::f32_packed_size(n, K));
    lp::f32_pack(a.data(), n, K, out.mutable_data());
    return out;
  }, py::arg("w"));
  m.def("lowp_f32_gemm", [](py::handle a, py::handle packed, I n, py::handle c,
                            int num_threads) {
    auto A = arr<float>(a, "a", 2);
    auto B = arr<float>(packed, "packed", 1);
    auto Cc = arr<float>(c, "c", 2, true);
    const I m = A.shape(0), K = A.shape(1);
    need(n >= 1 && B.shape(0) == lp::f32_packed_size(n, K), "packed does not fit [n, K]");
    need(Cc.shape(0) == m && Cc.shape(1) == n, "c must have shape [m, n]");
    py::gil_scoped_release nogil;
    lp::f32_gemm(m, n, K, A.data(), B.data(), Cc.mutable_data(), num_threads);
  }, py::arg("a"), py::arg("packed"), py::arg("n"), py::arg("c"), py::arg("num_threads") = 0);
}

}  // namespace fusedrnn_py
