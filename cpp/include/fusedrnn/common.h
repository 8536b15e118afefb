// Types shared by every kernel: dimensions, options, build information.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "fusedrnn/export.h"

namespace fusedrnn {

// Problem dimensions; see the shape letters in fusedrnn.h. Dims{T, N, C, H} leaves P = 0.
struct Dims {
  std::int64_t T = 0;  // time steps
  std::int64_t N = 0;  // batch
  std::int64_t C = 0;  // input features
  std::int64_t H = 0;  // hidden units (the LSTM's cell state)
  std::int64_t P = 0;  // LSTM projection size (PyTorch's proj_size); 0 = no projection.
                       // GRU and RNN kernels require P = 0.
};

// Arithmetic of a forward call on float32 tensors. bfloat16 (inference): x, w_ih, w_hh and the
// state entering every recurrent product are rounded to bf16 (nearest even) and multiplied on the
// low-precision tiers (AMX tiles, AVX512_BF16, or exact software widening) with fp32
// accumulation; biases, gate math, the cell state, the LSTM projection and all outputs stay fp32
// (cpp/src/lowp/bf16_steps.h has the contract). float64 tensors and backward take float32 only.
//
// int8 (inference, float32 tensors): w_ih and w_hh are quantised once, when packed, to s8 with one
// scale per output row (symmetric, amax / 127); the operand of every product -- each row of x
// and each row of the state entering a recurrent product (the reset-before GRU: of r*h) -- is
// quantised dynamically, per row, the same way; s32 accumulation, dequantised to fp32 by
// (row scale * weight-row scale); biases, gate math, the cell state, the LSTM projection and
// all outputs fp32 (cpp/src/lowp/bf16_steps.h; fusedrnn.reference_lowp emulates it). Non-finite
// weights throw std::invalid_argument before any work; a cache (training) or backward too.
enum class Precision { float32, bfloat16, int8 };

// The most threads any call takes (Options::num_threads, Context, the lowp GEMMs), as
// fusedrnn.set_num_threads in Python: OpenMP would try to start whatever count it is given.
inline constexpr int kMaxThreads = 4096;

struct Options {
  bool reverse = false;  // run each sequence from its last valid step back to t = 0
  int num_threads = 0;   // threads of the kernel's parallel region; 0 = OpenMP default;
                         // at most kMaxThreads (more throws std::invalid_argument, as < 0 does)
  // Forward: the workspace still holds the weights packed by an earlier forward call of
  // the same kernel (same cell, GRU variant, C, H and P, weights unchanged since) on this same
  // workspace, so this call skips packing them. The packed weights sit at the start of the
  // workspace, so T, N, lengths, reverse and the thread count may differ between the calls.
  // Packing costs a tenth of a batch-1 forward (LSTM H=256: ~0.2 of 1.5 ms). The kernel cannot
  // check this promise: a workspace without those packed weights gives wrong results.
  // Backward: likewise, the backward workspace holds the (transposed) weights packed by an
  // earlier backward call of the same kernel with the same dims (T, N, C, H, P: in backward the
  // packed weights sit after the step buffers) on this same workspace, weights unchanged since:
  // a single-step cell's backward through a loop packs once (fusedrnn.LSTMCell etc.). Results
  // are bit for bit those of a call that packs.
  bool weights_packed = false;
  // See Precision; a backward takes the precision of its forward (bfloat16: the bf16 training
  // contract, cpp/src/lowp/bf16_backward.h). The workspace must have been sized for it
  // (*_forward_workspace_size / *_backward_workspace_size(dims, precision)); weights_packed
  // then refers to weights packed by an earlier call of the same direction (forward or
  // backward) with the same precision.
  Precision precision = Precision::float32;
};

// Weight gradients handed over instead of added: a backward (lstm_backward, gru_backward,
// rnn_backward) given a sink calls sink->add(c, ldc, m, n, k, a, lda, b, ldb) on one thread for
// each product it would add into dw_ih or dw_hh, C[m, n] += Aᵀ B over k rows (A [k, m] with row
// stride lda, B [k, n] with ldb, c the call's dw_ih or dw_hh), in the order it would add them,
// and leaves those arrays untouched. A and B live in the call's workspace, cache and inputs:
// the sink copies what it keeps before returning. Precision::float32 (either scalar type)
// without lengths only, else std::invalid_argument; add must not throw. The single-step cells
// defer the terms of consecutive steps this way and apply them with gemm_tn_add_terms, which
// adds them bit for bit as the kernel would have, reading each gradient once per batch of steps
// instead of once a step.
template <typename Scalar>
struct WeightGradSink {
  virtual void add(Scalar* c, std::int64_t ldc, std::int64_t m, std::int64_t n, std::int64_t k,
                   const Scalar* a, std::int64_t lda, const Scalar* b,
                   std::int64_t ldb) noexcept = 0;

 protected:
  ~WeightGradSink() = default;
};

// One term of gemm_tn_add_terms: Aᵀ B over k rows, a = A [k, m] (row stride lda >= m), b = B
// [k, n] (row stride ldb >= n).
template <typename Scalar>
struct TnTerm {
  const Scalar* a = nullptr;
  std::int64_t lda = 0;
  const Scalar* b = nullptr;
  std::int64_t ldb = 0;
  std::int64_t k = 0;
};

enum class GruVariant {
  reset_after,   // PyTorch: n = tanh(W_in x + b_in + r*(W_hn h + b_hn))
  reset_before,  // Keras reset_after=False, ONNX default: n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)
};

enum class Nonlinearity { tanh, relu };

struct BuildInfo {
  std::string version;          // library version, e.g. "0.1.0"
  std::string compiler;         // compiler name and version
  std::string instruction_set;  // the kernel copy in use: "avx512", "avx2", "sse2", ...
  std::string compiled_isas;    // every copy compiled in (the widest the CPU runs is used)
  bool openmp = false;          // built with OpenMP
  int openmp_max_threads = 1;   // OpenMP's default thread count (1 without OpenMP)
  std::string eigen_version;    // Eigen used to build the kernels
  std::string bfloat16_tier;    // the low-precision tier Precision::bfloat16 runs on: "amx",
                                // "avx512_bf16", ... (results are bitwise within one tier)
};

FUSEDRNN_API BuildInfo build_info();

// c[m, n] = a[m, k] b[k, n], all row-major, by Eigen's GEMM compiled like the kernels: the same
// instruction-set copy, compiler flags and OpenMP threads (num_threads as in Options; the
// columns are split across the threads in one parallel region). Not part of any cell: it is the
// benchmark's measure of this machine's GEMM peak (bench/run.py). Throws std::invalid_argument
// for sizes < 1, num_threads < 0 or a null pointer.
template <typename Scalar> FUSEDRNN_API
void reference_gemm(std::int64_t m, std::int64_t n, std::int64_t k, const Scalar* a,
                    const Scalar* b, Scalar* c, int num_threads = 0);

// c[m, n] (row stride ldc) += Σ terms[s].aᵀ terms[s].b, s = 0..count-1: the result of adding
// the terms one after another as the backward kernels add a weight-gradient product with
// k <= 32 rows (each element: the term's multiply-add chain over its k rows in order, from zero,
// then added to c), to the bit, but with each register tile of c loaded and stored once for all
// the terms. num_threads as in Options (the split changes no result). Throws
// std::invalid_argument for m, n < 1, count < 0, a term's k outside 0..32, a stride shorter than
// its row, a null pointer or num_threads < 0.
template <typename Scalar> FUSEDRNN_API
void gemm_tn_add_terms(std::int64_t m, std::int64_t n, const TnTerm<Scalar>* terms,
                       std::int64_t count, Scalar* c, std::int64_t ldc, int num_threads = 0);

}  // namespace fusedrnn
