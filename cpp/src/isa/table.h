// The one instruction-set dispatch. The kernels are compiled once per instruction-set copy
// (isa_base, isa_avx2, isa_avx512: the same sources, other flags, own namespaces); each copy
// has one Table of function pointers, filled by each kernel's own translation unit
// (fill_lstm in kernels/lstm.cc, ...; isa/copy.inc), and dispatch.cc chooses one table once per
// process. The public kernels of fusedrnn.h, the model layer's products and a Stream's step all
// go through that table, so they always use the same copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "fusedrnn/fusedrnn.h"
#include "fusedrnn/lstm_ln.h"

namespace fusedrnn {
namespace lowp {
struct LstmFusedArgs;
}
namespace isa {

// Scalars of a kernel's buffers for given dims (the same for every copy and dtype).
struct Sizes {
  std::size_t cache = 0;
  std::size_t forward_workspace = 0;
  std::size_t backward_workspace = 0;
  // The part of the float32 backward layout that the bf16 backward uses (its bf16 block
  // follows: bf16_backward.h); 0 for kernels without one.
  std::size_t backward_workspace_lowp = 0;
  // The float32 forward layout that the bf16 and int8 forwards use (their block goes in front):
  // without the float32 packed weights, which they never read; 0 for kernels without one.
  std::size_t forward_workspace_lowp = 0;
};

// One recurrent layer of a Stream, its weights packed by the active copy.
// Packed operands: op(B) = [K, ncols] laid out in panels (kernels/packed_gemm.h).
enum class StepCell { lstm, gru, rnn };

template <typename Scalar>
struct StepLayer {
  StepCell cell = StepCell::lstm;
  GruVariant variant = GruVariant::reset_after;
  Nonlinearity act = Nonlinearity::tanh;
  std::int64_t N = 0, C = 0, H = 0, P = 0;  // batch, input width, hidden, LSTM projection
  const Scalar* wih_p = nullptr;  // w_ih packed: [C -> G*H]
  const Scalar* whh_p = nullptr;  // w_hh packed: [R -> G*H]; GRU reset_before: rows 0..2H only
  const Scalar* whn_p = nullptr;  // GRU reset_before: w_hh rows 2H..3H packed [H -> H]
  const Scalar* whr_p = nullptr;  // LSTM projection: w_hr packed [H -> P]
  const Scalar* b_ih = nullptr;   // [G*H] (nullable)
  const Scalar* b_hh = nullptr;   // [G*H] (nullable)
  const Scalar* w_peep = nullptr; // LSTM peepholes [3, H] (nullable)

  // The fused batch-1 step (kernels/fused_step.cc), set up by Kernels::fuse; null: none, the
  // layer runs `step`. Its weights, in blocks b of W units (W = the copy's packet size; units
  // past H zero), a pass over a group of blocks k-major: fx [pass][k < C][b][gate][W], fh
  // [pass][k < R][b][gate][W] (GRU reset_before: gates r, z; fhn its n rows), biases
  // [gate][HP], peepholes [3][HP] (HP = H rounded up to whole packets; null if absent).
  // `gx`: this step's input sums as fused_in writes them, or null (then they are formed from x
  // first, by the same code): Stream::process forms a block's input sums in one pass.
  void (*fused)(const StepLayer& layer, const Scalar* x, const Scalar* gx, Scalar* h, Scalar* c,
                Scalar* scratch) = nullptr;
  // The input sums of `steps` steps, x [steps][ldx] -> out [steps][fin] (fin scalars per step,
  // a multiple of 16; out 64-byte aligned).
  void (*fused_in)(const StepLayer& layer, const Scalar* x, std::int64_t ldx, std::int64_t steps,
                   Scalar* out) = nullptr;
  // `steps` steps of `fused` in one call, the step inlined into the loop: x [steps][ldx], or, gx
  // non-null, the stored input sums [steps][fin]; each step's new h [R] also copied to y +
  // t*ldy when y is non-null. Bitwise `steps` calls of `fused`.
  void (*fused_steps)(const StepLayer& layer, const Scalar* x, std::int64_t ldx, const Scalar* gx,
                      std::int64_t steps, Scalar* h, Scalar* c, Scalar* scratch, Scalar* y,
                      std::int64_t ldy) = nullptr;
  std::int64_t fin = 0;
  const Scalar* fx = nullptr;
  const Scalar* fh = nullptr;
  const Scalar* fhn = nullptr;
  const Scalar* fb_ih = nullptr;
  const Scalar* fb_hh = nullptr;
  const Scalar* fpeep = nullptr;
  // Blocks per pass of fx/fh (1: weights over 32 KiB, the recurrent passes alternate direction
  // step by step, `visits` counting the steps; the order changes no result).
  int fub = 0;
  mutable std::uint32_t visits = 0;
};

// Scalars of the scratch one step of a layer needs: gx, gh [N, G*H], gates [N, 4H], m [N, H].
inline std::size_t step_scratch_size(std::int64_t N, std::int64_t H, std::int64_t G) {
  return std::size_t(2 * N * G * H + 4 * N * H + N * H);
}

// Scalars of the scratch of a fused step (batch 1): gx, gh, gates [4][HP], out [HP] (HP = H
// rounded up to whole packets of W <= 16), each 64-byte aligned.
inline std::size_t fused_scratch_size(std::int64_t H) {
  return std::size_t(14 * (H + 16) + 5 * 16);
}

// The operations of one copy for one dtype.
template <typename Scalar>
struct Kernels {
  // The kernels of fusedrnn.h (kernels/lstm.cc, gru.cc, rnn.cc, gemm.cc).
  void (*lstm_forward)(const Dims&, const LstmForwardArgs<Scalar>&, const Options&, Scalar*);
  void (*lstm_backward)(const Dims&, const LstmBackwardArgs<Scalar>&, const Options&, Scalar*);
  void (*gru_forward)(const Dims&, const GruForwardArgs<Scalar>&, const Options&, Scalar*);
  void (*gru_backward)(const Dims&, const GruBackwardArgs<Scalar>&, const Options&, Scalar*);
  void (*rnn_forward)(const Dims&, const RnnForwardArgs<Scalar>&, const Options&, Scalar*);
  void (*rnn_backward)(const Dims&, const RnnBackwardArgs<Scalar>&, const Options&, Scalar*);
  // The regularised / normalised LSTM and GRU of fusedrnn/lstm_ln.h (kernels/lstm_ln.cc).
  void (*lstm_ln_forward)(const Dims&, const LstmLnForwardArgs<Scalar>&, const Options&, Scalar*);
  void (*lstm_ln_backward)(const Dims&, const LstmLnBackwardArgs<Scalar>&, const Options&,
                           Scalar*);
  void (*gru_ln_forward)(const Dims&, const GruLnForwardArgs<Scalar>&, const Options&, Scalar*);
  void (*gru_ln_backward)(const Dims&, const GruLnBackwardArgs<Scalar>&, const Options&,
                          Scalar*);
  void (*reference_gemm)(std::int64_t m, std::int64_t n, std::int64_t k, const Scalar* a,
                         const Scalar* b, Scalar* c, int num_threads);
  // fusedrnn/common.h's gemm_tn_add_terms (kernels/gemm.cc).
  void (*gemm_tn_add_terms)(std::int64_t m, std::int64_t n, const TnTerm<Scalar>* terms,
                            std::int64_t count, Scalar* c, std::int64_t ldc, int num_threads);
  // The CTC loss of fusedrnn/ctc.h, its arguments already checked (kernels/ctc.cc).
  void (*ctc)(const CtcArgs<Scalar>&);

  // The model layer's operations (kernels/step.cc; null in the Python module, which has no
  // model layer).
  // Scalars that a packed [K, ncols] right-hand side needs.
  std::size_t (*packed_size)(std::int64_t K, std::int64_t ncols);
  // Packs op(B) = [K, ncols]: transposed: B stored [ncols][K] (a weight [out, in] for x Wᵀ).
  void (*pack)(const Scalar* B, std::int64_t K, std::int64_t ncols, std::int64_t ld,
               bool transposed, Scalar* out);
  // C[m, ncols] = A[m, K] op(B), op(B) packed. num_threads 1: the caller's thread only (no
  // OpenMP construct at all); otherwise an OpenMP region (0: the default thread count).
  void (*gemm)(std::int64_t m, std::int64_t ncols, std::int64_t K, const Scalar* A,
               std::int64_t lda, const Scalar* packed, Scalar* C, std::int64_t ldc,
               int num_threads);
  // One time step of one layer for all N rows: x [N, C] -> h [N, R], c [N, H] (LSTM), in place;
  // scratch [step_scratch_size]. Bitwise the batch kernel's step.
  void (*step)(const StepLayer<Scalar>& layer, const Scalar* x, Scalar* h, Scalar* c,
               Scalar* scratch);
  // The fused batch-1 step (kernels/fused_step.cc). fused_size: scalars that fuse writes for
  // this layer (a multiple of 16), or 0 if the layer has no fused path (N != 1, or C or R longer
  // than one K pass of the packed product). fuse: lays out w_ih [G*H, C], w_hh [G*H, R] and the
  // layer's b_ih, b_hh, w_peep into `out` (64-byte aligned) and sets layer.fused, fused_in and
  // their weights; the step is then still bitwise `step`'s.
  std::size_t (*fused_size)(const StepLayer<Scalar>& layer);
  void (*fuse)(StepLayer<Scalar>& layer, const Scalar* w_ih, const Scalar* w_hh, Scalar* out);
  // The fast batch-1 step of StreamOptions::fast (fused_step.cc): the same storage as fuse
  // (fused_size), the sums reassociated and the float sigmoid through tanh (not bitwise `step`;
  // GRU reset_before: fuse's step).
  void (*fuse_fast)(StepLayer<Scalar>& layer, const Scalar* w_ih, const Scalar* w_hh,
                    Scalar* out) = nullptr;
};

// The low-precision products of one tier (lowp/lowp.h has the contract and the checked entry
// points): the software tiers are lowp/soft.cc and f32_packed.cc in each copy (fill_lowp); the
// hardware tiers avx512_bf16 and amx are lowp/native.cc and amx_cells.cc (their tables are the
// avx512 copy's with this block replaced: dispatch.cc). Work-shared products, serial
// conversions, no checks.
struct Lowp {
  int tier = 0;  // lowp::Tier (the numbering of Level)
  void (*to_bf16)(const float* x, std::int64_t m, std::int64_t K, std::int64_t ldx,
                  std::uint16_t* out, std::int64_t ldo) = nullptr;
  void (*quantize_s8)(const float* x, std::int64_t m, std::int64_t K, std::int64_t ldx,
                      std::int8_t* q, std::int64_t ldq, float* scale) = nullptr;
  void (*quantize_s8_fixed)(const float* x, std::int64_t m, std::int64_t K, std::int64_t ldx,
                            float inv, std::int8_t* q, std::int64_t ldq) = nullptr;
  void (*par_gemm_bf16)(std::int64_t m, std::int64_t n, std::int64_t K, const std::uint16_t* A,
                        std::int64_t lda, const std::uint16_t* Bp, const float* bias, float* C,
                        std::int64_t ldc, bool accumulate) = nullptr;
  void (*par_gemm_s8)(std::int64_t m, std::int64_t n, std::int64_t K, const std::int8_t* A,
                      std::int64_t lda, const float* a_scale, const std::int8_t* Bp,
                      const float* w_scale, const std::int32_t* colsum, const float* bias,
                      float* C, std::int64_t ldc, bool accumulate, bool shared) = nullptr;
  // The fused AMX LSTM inference (lowp::lstm_fused_forward); null in every other tier.
  void (*lstm_fused)(const Dims& d, const lowp::LstmFusedArgs& a, bool pack,
                     int num_threads) = nullptr;
  // The same for the reset_after GRU (lowp::gru_fused_forward).
  void (*gru_fused)(const Dims& d, const lowp::LstmFusedArgs& a, bool pack,
                    int num_threads) = nullptr;
  // The fp32 packed GEMM of this copy's fp32 kernels as a standalone product (f32_packed.cc):
  // the benchmark's yardstick.
  std::int64_t (*f32_packed_size)(std::int64_t n, std::int64_t K) = nullptr;
  void (*f32_pack)(const float* W, std::int64_t n, std::int64_t K, float* packed) = nullptr;
  void (*f32_gemm)(std::int64_t m, std::int64_t n, std::int64_t K, const float* A,
                   const float* packed, float* C, int num_threads) = nullptr;
};

// One instruction-set copy.
struct Table {
  const char* name = nullptr;  // the widest SIMD extension the copy was compiled for: "avx512"
  // Size queries; each checks the dims like the kernels (std::invalid_argument).
  Sizes (*lstm_sizes)(const Dims&) = nullptr;
  Sizes (*gru_sizes)(const Dims&) = nullptr;
  Sizes (*rnn_sizes)(const Dims&) = nullptr;
  Sizes (*lstm_ln_sizes)(const Dims&) = nullptr;
  Sizes (*gru_ln_sizes)(const Dims&) = nullptr;
  // Scalars of the CTC workspace (kernels/ctc.cc; the same in every copy).
  std::size_t (*ctc_workspace)(std::int64_t T, std::int64_t N, std::int64_t Lmax) = nullptr;
  Kernels<float> f32{};
  Kernels<double> f64{};
  Lowp lowp{};  // the low-precision tier this table runs

  template <typename Scalar>
  Kernels<Scalar>& of() {
    if constexpr (sizeof(Scalar) == 4) return f32; else return f64;
  }
  template <typename Scalar>
  const Kernels<Scalar>& of() const {
    if constexpr (sizeof(Scalar) == 4) return f32; else return f64;
  }
};

// FUSEDRNN_ISA, read by one parser (dispatch.cc). The levels in order of width; each has one
// table: base, avx2, avx512 are the three compiled copies; avx512_bf16 and amx are the avx512
// copy's table with its low-precision block replaced (the float kernels have no wider copy).
// Accepted (any case): baseline (or sse2, the name build_info gives the baseline copy), avx2,
// avx512, avx512_bf16, amx; unset or empty: none (-> unset).
enum class Level : int { unset = -1, base = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3, amx = 4 };
// The level FUSEDRNN_ISA asks for; throws std::invalid_argument naming the accepted values for
// any other value (a typo must not silently run another copy than the one asked for).
Level requested_level();

// The table of a level, or null where it cannot run here (not built, or the CPU or the OS lacks
// it: amx asks Linux for the tile state once per process).
const Table* table_at(Level l);

// The table in use: the widest level that runs here, narrowed by FUSEDRNN_ISA to the widest one
// at or below the level asked for. Chosen on first use, constant afterwards (dispatch.cc). Its
// float kernels and its low-precision tier (lowp.tier) are one choice.
const Table& active();

// The float copies compiled in, e.g. "sse2, avx2, avx512".
std::string compiled_isas();

template <typename Scalar>
const Kernels<Scalar>& kernels() {
  return active().of<Scalar>();
}

}  // namespace isa
}  // namespace fusedrnn
