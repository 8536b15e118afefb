// fusedrnn::Model: a recurrent model loaded from a checkpoint written by the Python package
// (fusedrnn.save), run on whole batches of variable-length sequences.
//
// What loads
//   * A RecurrentModel (python/fusedrnn/models.py): an Embedding of token ids (vocab_size) or
//     dense features (input_size) -> a stack of LSTM (optional projection and peepholes), GRU
//     (reset_after or reset_before) or Elman RNN (tanh, relu) layers, multi-layer and
//     optionally bidirectional -> a Linear head at every step. Parameters "embed.weight",
//     "rnn.weight_ih_l0", ..., "head.weight", "head.bias".
//   * A bare layer (config type "LSTM", "GRU" or "RNN" from fusedrnn.layers; parameters
//     without the "rnn." prefix, bias optional): the output is the layer's output.
//   The checkpoint's dtype (float32 or float64) is the model's: Model is one type for both,
//   and forward<Scalar> must be called with the matching Scalar (std::invalid_argument
//   otherwise). Dropout is a training option and is ignored; batch_first is a Python calling
//   convention: the C++ API is always time-major. Optimiser state in the file is ignored.
//
// Shapes (time-major, row-major, caller-owned)
//   L layers, D directions (2 if bidirectional), H hidden size, R = proj_size or H,
//   x [T, N, input_size] or tokens [T, N] (ids in [0, vocab_size)); lengths [N] (nullable:
//   all T); h0, h_n [L*D, N, R]; c0, c_n [L*D, N, H] (LSTM only); y [T, N, output_size()]
//   (output_size() is the head's size, or D*R for a bare layer). States are layer-major, then
//   direction, as in torch. Nullable initial states are zeros; nullable final states are not
//   written.
//
// Semantics are the Python package's exactly: each layer and direction runs the same kernel
// as fusedrnn.layers (PyTorch packed-sequence semantics for lengths; the reverse direction
// starts at each sequence's own last step; recurrent outputs past a sequence's end are zero, so
// the head gives its bias there). The recurrent stack's outputs and final states are bitwise
// identical to Python's on the same machine; the head is a GEMM whose summation order may differ
// from NumPy's BLAS (float64 agrees to a few ulps: at most 3e-17 relative in the tests).
//
// Precision: a float32 model loaded with Precision::bfloat16 (or made by with_precision) runs
// every recurrent layer on the bf16 inference kernels (Options::precision: x, the weights and the
// recurrent operand rounded to bf16, fp32 accumulation, gates, cell state and outputs): the
// stack's outputs and final states are bitwise those of Python's RecurrentModel.frozen(
// precision="bfloat16") (fusedrnn.models.freeze) on the same machine and low-precision tier. The
// embedding and the head stay float32. Precision::int8 likewise runs the int8 inference kernels
// (s8 weights with per-output-row scales, quantised when a forward first packs them; activations
// quantised per row; s32 sums; fp32 gates and outputs), bitwise Python's frozen(precision=
// "int8") on the same machine. bfloat16 or int8 with a float64 model is std::invalid_argument,
// and so is int8 (at load / with_precision, before any forward) for a model whose weight_ih or
// weight_hh holds a non-finite value or whose input or hidden size exceeds 133,144 (the widest
// product whose int32 sums of 127^2 terms stay exact).
//
// Threads: a Model is immutable after loading; share it freely. Concurrent forward calls need
// their own Context. Errors: CheckpointError, ConfigError (see errors.h); bad call arguments
// throw std::invalid_argument before any output is written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fusedrnn/common.h"
#include "fusedrnn/errors.h"
#include "fusedrnn/export.h"
#include "fusedrnn/json.h"
#include "fusedrnn/lstm_ln.h"
#include "fusedrnn/safetensors.h"

namespace fusedrnn {

enum class CellType { lstm, gru, rnn };

// The model config as stored in the checkpoint (Python's model.config()), validated.
struct ModelConfig {
  std::string type;                  // "RecurrentModel", or a bare layer: "LSTM", "GRU", "RNN"
  CellType cell = CellType::lstm;
  DType dtype = DType::f32;          // f32 or f64
  std::int64_t input_size = 0;       // dense input: features per step (0 with token input)
  std::int64_t vocab_size = 0;       // token input: ids in [0, vocab_size) (0 with dense input)
  std::int64_t embed_dim = 0;        // token input: embedding width
  std::int64_t hidden_size = 0;      // H
  std::int64_t num_layers = 1;       // L
  bool bidirectional = false;
  std::int64_t proj_size = 0;        // LSTM projection P (0: none)
  bool peepholes = false;            // LSTM
  bool bias = true;                  // bare layers may have none
  GruVariant variant = GruVariant::reset_after;
  Nonlinearity nonlinearity = Nonlinearity::tanh;
  bool has_head = false;             // RecurrentModel: Linear head [output_size, D*R]
  std::int64_t output_size = 0;      // head outputs, or D*R for a bare layer
  double dropout = 0;                // training only: recorded, ignored here
  double forget_bias = 0;            // initialisation only: recorded, ignored here
  // Issue 19's options (LSTM and reset-after GRU; fusedrnn/lstm_ln.h): layer norm and zoneout
  // (its evaluation expectation) change the inference, and a layer with either runs the
  // regularised kernel (float32 / float64 only); the dropouts are training only (recorded,
  // ignored here: a layer with only them runs the plain kernels, at any precision, as Python's
  // eval mode does).
  LayerNorm layer_norm = LayerNorm::none;
  double ln_eps = 1e-5;
  double zoneout_h = 0, zoneout_c = 0;
  double recurrent_dropout = 0, input_dropout = 0, weight_drop = 0;
  // Any of issue 19's options set.
  bool regularised() const noexcept {
    return regularised_kernel() || recurrent_dropout > 0 || input_dropout > 0 ||
           weight_drop > 0;
  }
  // Options that change the inference: the layers run the regularised kernel.
  bool regularised_kernel() const noexcept {
    return layer_norm != LayerNorm::none || zoneout_h > 0 || zoneout_c > 0;
  }

  int num_directions() const noexcept { return bidirectional ? 2 : 1; }
  std::int64_t state_size() const noexcept { return proj_size > 0 ? proj_size : hidden_size; }
  bool token_input() const noexcept { return vocab_size > 0; }
  // Width of the recurrent stack's input per step: embed_dim or input_size.
  std::int64_t rnn_input_size() const noexcept { return token_input() ? embed_dim : input_size; }
};

// One parameter tensor: native byte order, row-major, 64-byte aligned, owned by the Model.
struct Parameter {
  std::string name;
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
  // The data as Scalar*; std::invalid_argument if Scalar is not the dtype.
  template <typename Scalar>
  const Scalar* as() const {
    if (dtype_of<Scalar>() != dtype)
      throw std::invalid_argument("fusedrnn::Parameter::as: " + name + " holds " +
                                  dtype_name(dtype));
    return static_cast<const Scalar*>(data);
  }
};

namespace detail {
struct ModelImpl;
struct ContextAccess;
}  // namespace detail

// Reusable memory of Model::forward: the buffers grow to the largest call seen and are then
// reused, so repeated calls of the same or smaller shape allocate nothing. One Context per
// thread of concurrent calls. Also carries the thread count of the kernels.
class FUSEDRNN_API Context {
 public:
  // num_threads: 0 = OpenMP's default, at most kMaxThreads; std::invalid_argument otherwise
  explicit Context(int num_threads = 0);
  ~Context();
  Context(Context&&) noexcept;
  Context& operator=(Context&&) noexcept;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  void set_num_threads(int num_threads) noexcept { num_threads_ = num_threads; }
  int num_threads() const noexcept { return num_threads_; }
  std::size_t capacity_bytes() const noexcept { return capacity_; }
  // The recurrent stack's output of the last forward, [T, N, D*R] (before the head); null
  // before the first call.
  template <typename Scalar>
  const Scalar* rnn_output() const noexcept {
    return static_cast<const Scalar*>(rnn_output_);
  }

 private:
  friend struct detail::ContextAccess;
  void* reserve(std::size_t bytes);  // 64-byte aligned, contents unspecified
  void* buffer_ = nullptr;
  std::size_t capacity_ = 0;
  int num_threads_ = 0;
  const void* rnn_output_ = nullptr;
};

// Copies share the loaded weights (a shared pointer); a moved-from Model may only be assigned
// to or destroyed (any other call on it is undefined), as a moved-from Stream.
class FUSEDRNN_API Model {
 public:
  // Load a checkpoint file, or a checkpoint image in memory (`where` names it in errors), to run
  // at `precision` (see the notes above; std::invalid_argument for bfloat16 on float64).
  static Model load(const std::string& path, Precision precision = Precision::float32);
  static Model from_bytes(const void* data, std::size_t size, const std::string& where = "buffer",
                          Precision precision = Precision::float32);
  // From a validated safetensors file (Model copies what it needs).
  static Model from_tensor_file(const TensorFile& file,
                                Precision precision = Precision::float32);
  // The same loaded model (weights shared, nothing copied) running at `precision`.
  Model with_precision(Precision precision) const;
  Precision precision() const noexcept { return precision_; }

  const ModelConfig& config() const noexcept;
  const std::string& config_json() const noexcept;    // __metadata__["model"] as stored
  const JsonValue& metadata() const noexcept;         // the user metadata object ({} if none)
  const std::string& metadata_json() const noexcept;  // its JSON text ("{}" if none)
  const std::string& fusedrnn_version() const noexcept;  // of the writer
  DType dtype() const noexcept { return config().dtype; }

  const std::vector<Parameter>& parameters() const noexcept;  // checkpoint order
  const Parameter* find_parameter(std::string_view name) const noexcept;
  const Parameter& parameter(std::string_view name) const;  // std::invalid_argument if absent

  std::int64_t input_size() const noexcept { return config().input_size; }
  std::int64_t output_size() const noexcept { return config().output_size; }
  std::int64_t num_states() const noexcept;  // L*D: the first dimension of h0, h_n, c0, c_n

  // Dense-input models: x [T, N, input_size].
  template <typename Scalar>
  void forward(std::int64_t T, std::int64_t N, const Scalar* x, const Scalar* h0,
               const Scalar* c0, const std::int64_t* lengths, Scalar* y, Scalar* h_n,
               Scalar* c_n, Context* ctx = nullptr) const;
  // Token-input models: tokens [T, N], every id in [0, vocab_size) (checked).
  template <typename Scalar>
  void forward_tokens(std::int64_t T, std::int64_t N, const std::int64_t* tokens,
                      const Scalar* h0, const Scalar* c0, const std::int64_t* lengths,
                      Scalar* y, Scalar* h_n, Scalar* c_n, Context* ctx = nullptr) const;

  // CTC recognition (a model whose output_size() scores are K classes with the blank at
  // `blank`, such as the CtcRecognizer checkpoint of `fusedrnn train --task recognise`): runs
  // forward on x [T, N, input_size] (lengths nullable: all T), then greedy best-path decoding
  // over each sequence's valid frames (ctc_greedy_decode of ctc.h): per sequence its labels,
  // as Python's ctc_greedy_decode(model.forward(x, lengths), lengths, blank). Allocates the
  // scores [T, N, output_size()]. std::invalid_argument, before any work, for a blank outside
  // [0, output_size()) or the arguments forward refuses.
  template <typename Scalar>
  std::vector<std::vector<std::int64_t>> ctc_greedy_decode(std::int64_t T, std::int64_t N,
                                                           const Scalar* x,
                                                           const std::int64_t* lengths = nullptr,
                                                           std::int64_t blank = 0,
                                                           Context* ctx = nullptr) const;

  // Internal: the loaded layers (used by Stream).
  const std::shared_ptr<const detail::ModelImpl>& impl() const noexcept { return impl_; }

 private:
  Model(std::shared_ptr<const detail::ModelImpl> impl, Precision precision);
  std::shared_ptr<const detail::ModelImpl> impl_;
  Precision precision_ = Precision::float32;
};

}  // namespace fusedrnn
