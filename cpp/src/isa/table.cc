// One instruction-set copy's table (compiled once per copy, like the kernels).
#include "isa/copy.inc"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

namespace {

const char* isa_name() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#elif defined(__AVX__)
  return "avx";
#elif defined(__SSE2__) || defined(_M_X64)
  return "sse2";
#elif defined(__ARM_NEON)
  return "neon";
#else
  return "scalar";
#endif
}

isa::Table make_table() {
  isa::Table t;
  t.name = isa_name();
  fill_lstm(t);
  fill_gru(t);
  fill_rnn(t);
  fill_lstm_ln(t);
  fill_gemm(t);
  fill_ctc(t);
  fill_lowp(t);
#ifdef FUSEDRNN_WITH_MODEL
  fill_step(t);
  fill_fused_step(t);
#endif
  return t;
}

}  // namespace

const isa::Table& table() {
  static const isa::Table t = make_table();
  return t;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
