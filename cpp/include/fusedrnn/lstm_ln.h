// Regularised / normalised LSTM and GRU layer kernels (one layer, one direction; the LSTM may
// project, Dims::P > 0, but has no peepholes): layer normalisation in two placements, zoneout on h and c, and a per-sequence
// (variational) dropout mask on the recurrent input h_{t-1}. Every option is off by default;
// with all off the formula is the plain LSTM of lstm.h (gate order i, f, g, o).
//
// Per step, with LN(v; γ, β) = γ∘(v − mean(v)) / sqrt(var(v) + eps) + β over the units of v
// (per row; var the biased variance; a null β is 0):
//   a   = LN(x_t W_ihᵀ; γ_ih, β_ih) + LN((h_{t−1}∘r) W_hhᵀ; γ_hh, β_hh) + b_ih + b_hh   [4H]
//         (without layer norm: x_t W_ihᵀ + (h_{t−1}∘r) W_hhᵀ + b_ih + b_hh)
//   i, f, o = σ(a_i, a_f, a_o), g = tanh(a_g);  c̃ = f∘c_{t−1} + i∘g
//   n   = LN(c̃; γ_c, β_c)  (c̃ without layer norm)
//   h̃   = o∘tanh(n)
//   c'  = c̃ (LayerNorm::haste, none: the un-normalised cell is carried) or n (tfa: the
//         normalised cell is carried, TF Addons' LayerNormLSTMCell / PyTorch's custom_lstms)
//   c_t = z_c∘c_{t−1} + (1 − z_c)∘c'      h_t = z_h∘h_{t−1} + (1 − z_h)∘h̃     (zoneout)
// r [N, H] is the recurrent dropout mask (already scaled by 1/(1 − p); null = all ones), fixed
// over the steps. gate_masks (Keras 3's recurrent_dropout, which draws a mask per gate): r is
// [G, N, H], one mask per gate block (G = 4: i, f, g, o; the GRU's 3: r, z, n), and the
// recurrent product is per block, (h_{t−1}∘r_k) W_hh,kᵀ for block k; input_mask [G, N, C]
// (gate_masks only; null = none) likewise multiplies x_t per block: (x_t∘m_k) W_ih,kᵀ. Without
// gate_masks, input dropout is the caller's (x scaled by one [N, C] mask).
// z_h, z_c: the zoneout masks [T, N, H] (time-indexed, 1 = keep the previous
// value) in training, or the probabilities p_h, p_c (the expectation, evaluation) where no mask
// is given; 0 and null = no zoneout. y[t] = h_t.
// zoneout_draw (training, no mask arrays): the kernels draw the masks themselves, the same in
// forward and backward, from zoneout_seed and the probabilities: z[t, n, j] = 1 where
// u < p, u = (the i-th output of SplitMix64 seeded with key) >> 40, times 2⁻²⁴, i = (t N + n) H + j,
// key = zoneout_seed ^ 0x5A6F6E656F75745F ("Zoneout_") for z_h and that ^ 1 for z_c; that is
// fusedrnn.reference_reg.zoneout_masks, and equals passing its arrays as the masks.
// Projection (LSTM, Dims::P = P > 0, P < H, w_hr [P, H], PyTorch's proj_size): the state that
// recurs is P wide, h_t = z_h∘h_{t−1} + (1 − z_h)∘(h̃ W_hrᵀ): zoneout of h, the recurrent mask
// and the zoneout draw of h act on the projected h (z_h, r: [.., P]; the draw's i = (t N + n) P +
// j), and h0, y, h_n, dh_n, dy, dh0 are [.., P], w_hh [4H, P]; the cell, its zoneout and layer
// norm stay H wide. Below, "[N, H]" of h-shaped arrays reads [N, R], R = P or H.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fusedrnn/common.h"

namespace fusedrnn {

enum class LayerNorm { none, haste, tfa };

template <typename Scalar>
struct LstmLnForwardArgs {
  const Scalar* x = nullptr;              // [T, N, C]
  const Scalar* w_ih = nullptr;           // [4H, C]
  const Scalar* w_hh = nullptr;           // [4H, R]
  const Scalar* w_hr = nullptr;           // [P, H] with Dims::P > 0; null without
  const Scalar* b_ih = nullptr;           // [4H]; null = no bias
  const Scalar* b_hh = nullptr;           // [4H]; null = no bias
  const Scalar* h0 = nullptr;             // [N, R]; null = zeros
  const Scalar* c0 = nullptr;             // [N, H]; null = zeros
  LayerNorm layer_norm = LayerNorm::none;
  Scalar ln_eps = Scalar(1e-5);           // > 0
  const Scalar* ln_gamma_ih = nullptr;    // [4H]; required with layer norm, null without
  const Scalar* ln_beta_ih = nullptr;     // [4H]; null = 0
  const Scalar* ln_gamma_hh = nullptr;    // [4H]; required with layer norm
  const Scalar* ln_beta_hh = nullptr;     // [4H]; null = 0
  const Scalar* ln_gamma_c = nullptr;     // [H]; required with layer norm
  const Scalar* ln_beta_c = nullptr;      // [H]; null = 0
  const Scalar* zoneout_h_mask = nullptr; // [T, N, R] of 0/1 (any values in [0, 1] are taken)
  const Scalar* zoneout_c_mask = nullptr; // [T, N, H]
  Scalar zoneout_h = 0;                   // in [0, 1): used where zoneout_h_mask is null
  Scalar zoneout_c = 0;                   // must be 0 when the mask is given
  bool zoneout_draw = false;              // training: draw the masks from zoneout_seed
  std::uint64_t zoneout_seed = 0;
  const Scalar* recurrent_mask = nullptr; // [N, R] ([G, N, R] with gate_masks); null = none
  bool gate_masks = false;                // per-gate masks (Keras 3), see above
  const Scalar* input_mask = nullptr;     // [G, N, C] with gate_masks; null = none
  const std::int64_t* lengths = nullptr;  // [N]; null = all T
  Scalar* y = nullptr;                    // out [T, N, R]
  Scalar* h_n = nullptr;                  // out [N, R]
  Scalar* c_n = nullptr;                  // out [N, H]
  Scalar* cache = nullptr;                // out [lstm_ln_cache_size]; null = inference
};

// The forward's inputs (same dims, options, masks and lengths), its cache, the cotangents and
// the gradients. Gradients of parameters accumulate (+=); null = not computed.
template <typename Scalar>
struct LstmLnBackwardArgs {
  const Scalar* x = nullptr;
  const Scalar* w_ih = nullptr;
  const Scalar* w_hh = nullptr;
  const Scalar* w_hr = nullptr;           // [P, H] with Dims::P > 0
  LayerNorm layer_norm = LayerNorm::none;
  const Scalar* ln_gamma_ih = nullptr;
  const Scalar* ln_gamma_hh = nullptr;
  const Scalar* ln_gamma_c = nullptr;
  const Scalar* zoneout_h_mask = nullptr;
  const Scalar* zoneout_c_mask = nullptr;
  Scalar zoneout_h = 0;
  Scalar zoneout_c = 0;
  bool zoneout_draw = false;
  std::uint64_t zoneout_seed = 0;
  const Scalar* recurrent_mask = nullptr;
  bool gate_masks = false;
  const Scalar* input_mask = nullptr;
  const std::int64_t* lengths = nullptr;
  const Scalar* cache = nullptr;          // written by that forward
  const Scalar* dy = nullptr;             // [T, N, R]; null = zero
  const Scalar* dh_n = nullptr;           // [N, R]; null = zero
  const Scalar* dc_n = nullptr;           // [N, H]; null = zero
  Scalar* dx = nullptr;                   // out [T, N, C] (overwritten); null = not computed
  Scalar* dh0 = nullptr;                  // out [N, R] (overwritten)
  Scalar* dc0 = nullptr;                  // out [N, H] (overwritten)
  Scalar* dw_ih = nullptr;                // [4H, C] (+=)
  Scalar* dw_hh = nullptr;                // [4H, R] (+=)
  Scalar* dw_hr = nullptr;                // [P, H] (+=); projection only
  Scalar* db_ih = nullptr;                // [4H] (+=)
  Scalar* db_hh = nullptr;                // [4H] (+=)
  Scalar* dln_gamma_ih = nullptr;         // [4H] (+=); the ln_* gradients need layer norm
  Scalar* dln_beta_ih = nullptr;
  Scalar* dln_gamma_hh = nullptr;
  Scalar* dln_beta_hh = nullptr;
  Scalar* dln_gamma_c = nullptr;          // [H] (+=)
  Scalar* dln_beta_c = nullptr;
};

// The regularised / normalised GRU (reset_after, PyTorch gate order r, z, n), the same options
// but no cell state: layer norm only in haste's placement (LayerNormGRU; TF Addons and PyTorch's
// custom_lstms have no layer-norm GRU, and their placement differs from haste's only on c):
//   gx  = LN(x_t W_ihᵀ; γ_ih, β_ih)  gh = LN((h_{t−1}∘r) W_hhᵀ; γ_hh, β_hh)          [3H]
//         (without layer norm the raw products)
//   r   = σ(gx_r + gh_r + b_ir + b_hr),  z = σ(gx_z + gh_z + b_iz + b_hz)
//   ñ   = tanh(gx_n + b_in + r∘(gh_n + b_hn));  h̃ = (1 − z)∘ñ + z∘h_{t−1}
//   h_t = z_h∘h_{t−1} + (1 − z_h)∘h̃                                   (zoneout; y[t] = h_t)
// layer_norm must be none or haste (tfa is refused: it is the LSTM's normalised-cell carry).
template <typename Scalar>
struct GruLnForwardArgs {
  const Scalar* x = nullptr;              // [T, N, C]
  const Scalar* w_ih = nullptr;           // [3H, C]
  const Scalar* w_hh = nullptr;           // [3H, H]
  const Scalar* b_ih = nullptr;           // [3H]; null = no bias
  const Scalar* b_hh = nullptr;           // [3H]; null = no bias
  const Scalar* h0 = nullptr;             // [N, H]; null = zeros
  LayerNorm layer_norm = LayerNorm::none;
  Scalar ln_eps = Scalar(1e-5);
  const Scalar* ln_gamma_ih = nullptr;    // [3H]; required with layer norm
  const Scalar* ln_beta_ih = nullptr;     // [3H]; null = 0
  const Scalar* ln_gamma_hh = nullptr;    // [3H]; required with layer norm
  const Scalar* ln_beta_hh = nullptr;     // [3H]; null = 0
  const Scalar* zoneout_h_mask = nullptr; // [T, N, H]
  Scalar zoneout_h = 0;
  bool zoneout_draw = false;
  std::uint64_t zoneout_seed = 0;
  const Scalar* recurrent_mask = nullptr; // [N, H] ([G, N, H] with gate_masks)
  bool gate_masks = false;
  const Scalar* input_mask = nullptr;     // [G, N, C] with gate_masks; null = none
  const std::int64_t* lengths = nullptr;  // [N]
  Scalar* y = nullptr;                    // out [T, N, H]
  Scalar* h_n = nullptr;                  // out [N, H]
  Scalar* cache = nullptr;                // out [gru_ln_cache_size]; null = inference
};

template <typename Scalar>
struct GruLnBackwardArgs {
  const Scalar* x = nullptr;
  const Scalar* w_ih = nullptr;
  const Scalar* w_hh = nullptr;
  LayerNorm layer_norm = LayerNorm::none;
  const Scalar* ln_gamma_ih = nullptr;
  const Scalar* ln_gamma_hh = nullptr;
  const Scalar* zoneout_h_mask = nullptr;
  Scalar zoneout_h = 0;
  bool zoneout_draw = false;
  std::uint64_t zoneout_seed = 0;
  const Scalar* recurrent_mask = nullptr;
  bool gate_masks = false;
  const Scalar* input_mask = nullptr;
  const std::int64_t* lengths = nullptr;
  const Scalar* cache = nullptr;
  const Scalar* dy = nullptr;             // [T, N, H]; null = zero
  const Scalar* dh_n = nullptr;           // [N, H]; null = zero
  Scalar* dx = nullptr;                   // out [T, N, C] (overwritten); null = not computed
  Scalar* dh0 = nullptr;                  // out [N, H] (overwritten)
  Scalar* dw_ih = nullptr;                // [3H, C] (+=)
  Scalar* dw_hh = nullptr;                // [3H, H] (+=)
  Scalar* db_ih = nullptr;                // [3H] (+=)
  Scalar* db_hh = nullptr;                // [3H] (+=)
  Scalar* dln_gamma_ih = nullptr;         // [3H] (+=)
  Scalar* dln_beta_ih = nullptr;
  Scalar* dln_gamma_hh = nullptr;
  Scalar* dln_beta_hh = nullptr;
};

FUSEDRNN_API std::size_t lstm_ln_cache_size(const Dims& d);
FUSEDRNN_API std::size_t lstm_ln_forward_workspace_size(const Dims& d);
FUSEDRNN_API std::size_t lstm_ln_backward_workspace_size(const Dims& d);

template <typename Scalar> FUSEDRNN_API
void lstm_ln_forward(const Dims& d, const LstmLnForwardArgs<Scalar>& args, const Options& opt,
                     Scalar* workspace);
template <typename Scalar> FUSEDRNN_API
void lstm_ln_backward(const Dims& d, const LstmLnBackwardArgs<Scalar>& args, const Options& opt,
                      Scalar* workspace);

FUSEDRNN_API std::size_t gru_ln_cache_size(const Dims& d);
FUSEDRNN_API std::size_t gru_ln_forward_workspace_size(const Dims& d);
FUSEDRNN_API std::size_t gru_ln_backward_workspace_size(const Dims& d);

template <typename Scalar> FUSEDRNN_API
void gru_ln_forward(const Dims& d, const GruLnForwardArgs<Scalar>& args, const Options& opt,
                    Scalar* workspace);
template <typename Scalar> FUSEDRNN_API
void gru_ln_backward(const Dims& d, const GruLnBackwardArgs<Scalar>& args, const Options& opt,
                     Scalar* workspace);

}  // namespace fusedrnn
