// fusedrnn::Stream: real-time inference, one time step per call.
//
// A Stream runs a unidirectional Model (any cell, layers, projection, peepholes, embedding or
// dense input, head) on N parallel sequences that advance together. It copies and re-lays the
// weights once, at construction, into the panel layout of the packed micro-kernel the batch
// kernels use, and allocates nothing afterwards: step() is a handful of small matrix-vector
// products and element-wise passes per layer, on one thread (the caller's), never throws and
// never allocates. At batch 1 (the real-time case) each layer's step is instead one fused pass
// per block of units, input and recurrent products and gates together, with weights laid out
// for it at construction and code specialised for H = 8, 16, 32, 48, 64; process() runs a
// block of steps per call. Its results are bitwise those of Model::forward on the same inputs (same
// products, same summation order, same activations), so a model can be checked offline with the
// batch API and deployed with a Stream; StreamOptions::fast trades that equality, within a
// documented rounding tolerance, for a faster batch-1 step.
//
// A Model at Precision::bfloat16 (Model::load(path, Precision::bfloat16)) gives a bf16 Stream:
// each layer's step is one call of the bf16 batch kernel with T = 1 on a workspace the
// constructor allocates (the first step packs the weights there, later steps reuse them), on
// the caller's thread; the results are bitwise Model::forward's at that precision.
//
// Shapes: x_t [N, rnn_input_size] (the features, or for a token model the embedded vectors),
// tokens_t [N], y_t [N, output_size]; state h [L, N, R], c [L, N, H] (LSTM), as Model's.
// Not thread-safe: one Stream per thread (they may share the Model). A moved-from Stream may
// only be assigned to or destroyed.
#pragma once

#include <cstdint>
#include <memory>

#include "fusedrnn/export.h"
#include "fusedrnn/model.h"

namespace fusedrnn {

// How a Stream computes (the default: bitwise Model::forward).
struct StreamOptions {
  // Opt-in speed over bitwise equality, at batch 1 (other batches: no effect). The fused step
  // then forms each gate's input sum (from the pre-summed biases) and adds the recurrent
  // products into the same accumulators, each sum split into S <= 4 interleaved chains
  // (k = s, s+S, ...), and runs the cell's element-wise step on these sums in registers: the
  // same terms summed in another order, so results differ from Model::forward by rounding only.
  // In float32 (FMA copies), in a layer of one block of units (H <= 16 with AVX-512; an Elman
  // layer: up to two blocks), tanh is the bitwise step's rational function evaluated with a
  // shorter dependency chain (its quotient, AVX-512, from the reciprocal estimate and one
  // Newton step) and the sigmoid 1/2 + tanh(x/2)/2 (no exp); checked over every float in
  // [-30, 30]: tanh's absolute error <= 5.71 u (the bitwise step's 4.90 u), at most 7 u from
  // the bitwise step's value; the sigmoid's <= 3.20 u (bitwise 1.5 u), at most 4 u from the
  // bitwise value. In wider layers (AVX-512) both come from 2^t (a polynomial and vscalefps)
  // and one division, fewer operations: tanh's error <= 2.30 u, at most 5 u from the bitwise
  // value; the sigmoid's <= 1.76 u, at most 2 u from it (kernels/fast_activations.h; test_model
  // samples 2.2 million floats of that range). All within the 8 u per activation allowed below
  // (float64 keeps the bitwise activations). Per step and pre-activation a with terms t_k (its
  // n = C + R products and 2 biases), both orders are within gamma_n = n u/(1 - n u) of the
  // exact sum (u = 2^-24 float32, 2^-53 float64), so they differ by at most
  // 2 gamma_n sum_k |t_k|; through the activations (slopes <= 1) and the cell update one step
  // moves an output by at most a few such units plus a few ulps of the element-wise math.
  // Tested (tests/cpp/test_model.cc): one step from the same state within that bound per
  // element (largest difference / bound measured: 0.036). Over many steps the recurrence
  // carries the differences like any perturbation: for the test grid's models (default
  // initialisation, contracting dynamics) over 203 steps within 1e-5 (float32) / 1e-13
  // (float64) relative to max(1, max |y|) of the bitwise Stream (measured up to 9.5e-7 /
  // 4.4e-16), and likewise of Python's outputs on the C++ fixtures; a model whose dynamics
  // amplify differences (recurrent weights with spectral radius > 1) drifts further, as any
  // other summation order of it would. Only the per-step bound holds for every model.
  // Cells: LSTM (projection, peepholes), GRU reset_after, Elman RNN; a GRU reset_before layer,
  // a layer too wide for the fused step (input or state > 512 values: one pass of the packed
  // products' k) and batch > 1 keep the bitwise step.
  bool fast = false;
};

template <typename Scalar>
class FUSEDRNN_API Stream {
 public:
  // ConfigError for a bidirectional model (a step needs the future); std::invalid_argument if
  // Scalar is not the model's dtype or batch < 1 (an int8 Model refused a non-finite weight_ih
  // or weight_hh, and sizes over 133,144, when it was made). The state starts at zero.
  explicit Stream(const Model& model, std::int64_t batch = 1);
  // The same with options (StreamOptions::fast).
  Stream(const Model& model, std::int64_t batch, const StreamOptions& options);
  ~Stream();
  Stream(Stream&&) noexcept;
  Stream& operator=(Stream&&) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Advances every sequence one step: x_t [N, rnn_input_size] -> y_t [N, output_size]. A null
  // x_t or y_t does nothing (the state is unchanged; step cannot throw).
  void step(const Scalar* x_t, Scalar* y_t) noexcept;
  // Token models: looks up tokens_t [N] and steps. Returns false, changing nothing, if the
  // model has no embedding, tokens_t or y_t is null, or an id is outside [0, vocab_size).
  bool step_tokens(const std::int64_t* tokens_t, Scalar* y_t) noexcept;
  // Advances `steps` steps in one call (audio-style blocks): x [steps, N, rnn_input_size] ->
  // y [steps, N, output_size], bitwise the results of `steps` calls of step() (no allocation,
  // lock or system call; the floating-point environment set once per call). At batch 1, when a
  // layer's input weights take 32 KiB or more, it runs tiles of 16 steps layer by layer: a
  // layer's input products for the whole tile first (its input weights read once per tile, not
  // once per step), then its steps. std::invalid_argument, before anything is written or the
  // state changes, if x or y is null or steps < 0; steps = 0 does nothing. (A bidirectional
  // model has no Stream: its constructor throws ConfigError.)
  void process(const Scalar* x, Scalar* y, std::int64_t steps);

  void reset() noexcept;  // state to zero
  // h [L, N, R], c [L, N, H] (nullable: zeros; ignored but for LSTM).
  void set_state(const Scalar* h, const Scalar* c) noexcept;
  const Scalar* h() const noexcept;  // current state [L, N, R]
  const Scalar* c() const noexcept;  // [L, N, H] (LSTM), else null

  std::int64_t batch() const noexcept;
  std::int64_t input_size() const noexcept;   // rnn_input_size of the model
  std::int64_t output_size() const noexcept;
  const Model& model() const noexcept;
  const StreamOptions& options() const noexcept;  // as constructed

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

extern template class Stream<float>;
extern template class Stream<double>;

// Subnormal numbers flushed to zero on the calling thread (x86: MXCSR FTZ and DAZ set) for the
// object's lifetime; the destructor restores the thread's previous setting. Elsewhere it does
// nothing. Stream::step, Stream::process and Model::forward flush subnormals on their own: each
// call sets the flags and restores them on return, unless they are already set, in which case it
// only reads them. A loop that calls step() per sample can hold one of these around the loop (as
// audio hosts' "no denormals" scopes do) so that the calls skip the two writes of the register,
// which also keep consecutive steps from overlapping. Zen 3 (2026-12-07, fast Stream, input
// width 1, bench/stream_latency with and without --ftz, which holds one; three runs each), step()
// called back to back, ns a step: GRU H = 16 64 -> 61-62, 32 162-163 -> 143-146, LSTM 16 79-92
// -> 77-78, 32 199-237 -> 196-198, 64 728-742 -> 693-701; each call timed alone, 0-30 ns a call
// depending on the hour. Results do not change (the kernels run flushed either way); the status
// flags (bits 0-5) raised inside the scope are dropped with the restore. Not copyable; destroy
// scopes in the reverse order of their creation, on the thread that created them.
class FUSEDRNN_API ScopedFlushDenormals {
 public:
  ScopedFlushDenormals() noexcept;
  ~ScopedFlushDenormals();
  ScopedFlushDenormals(const ScopedFlushDenormals&) = delete;
  ScopedFlushDenormals& operator=(const ScopedFlushDenormals&) = delete;

 private:
  unsigned saved_ = 0;
};

}  // namespace fusedrnn
