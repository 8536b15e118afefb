// The weight-gradient products run over chunks of this many of the T*N rows (a multiple of 32:
// the rows of x and h packed for one chunk at a time). Below 16 rows a step (batch-1 streams,
// where the packed chunks would be the largest part of the workspace: RNN T = 1000, N = 1,
// H = 64 packed 256 KiB of x and h for 1024 rows) a quarter of it: the packed chunks shrink 4x,
// the fp32 accumulators (only G*H x C, R) pass through memory 4x as often. The tiers that equal
// the emulation bit for bit do so for any chunk (one sequential chain per element); the amx
// tier's sums stay within its bound.
constexpr std::int64_t kBf16KChunk = 1024, kBf16KChunkSmallN = 256;

// The bf16 block of a cell's BACKWARD workspace (Options::precision = bfloat16; bf16_backward.h
// uses it and states the training contract), after the part of the float32 layout it uses.
#pragma once

#include <algorithm>
#include <cstdint>

#include "lowp/lowp.h"

namespace fusedrnn {
namespace lowp {

// The bf16 backward's dx product runs over about this many rows at once (the gradients of
// several steps: the packed w_ih is read once per chunk, not per step).
constexpr std::int64_t kBf16DxRows = 256;
inline std::int64_t bf16_dx_steps(const Dims& d) {
  return std::max<std::int64_t>(1, std::min<std::int64_t>(d.T, kBf16DxRows / d.N));
}

// The bf16 block of a backward workspace. Packed weights first (Options::weights_packed keeps
// them across calls): whh: w_hhᵀ packed ([R, G*H] as lowp's W [n, K]; the reset-before GRU:
// w_hh[:2H]ᵀ [H, 2H] here and w_hnᵀ [H, H] in whn); wih: w_ihᵀ [C, G*H]. Then, per call:
//   ab, ab2: the gate gradients of a chunk of dx_steps steps as bf16 rows [dx_steps * N,
//     bf16_kpad(G*H)] (the A operand of each step's dh product and of the chunk's dx product;
//     ab2: the GRU's second operand, dA_x of the reset-after GRU or the reset-before GRU's block
//     products);
//   at: every step's gate gradients transposed, [G*H, ldt] with column s*N + n for row n of step
//     s (ldt = bf16_kpad(T*N)): the A operand of the weight-gradient products over all steps;
//   ex (the GRU): [H, ldt], the reset-after GRU's n block of dA_x transposed like at;
//   xp, hp: one chunk of kc rows (k = s*N + n: step order, like at) of the inputs x[t(s, n), n]
//     and of the states h entering each step (the reset-before GRU: then of its r*h) packed as
//     W [C, kc] and [R, kc];
//   dxs: fp32 [N, C], one step's dx before it is scattered (lengths with reverse).
struct Bf16Back {
  std::uint16_t *whh = nullptr, *whn = nullptr, *wih = nullptr, *ab = nullptr, *ab2 = nullptr,
                *at = nullptr, *ex = nullptr, *xp = nullptr, *hp = nullptr;
  float* dxs = nullptr;
  std::int64_t ldt = 0;       // leading dimension of at and ex
  std::int64_t dx_steps = 1;  // steps per chunk of ab (bf16_dx_steps)
  std::int64_t kc = 0;        // rows per chunk of the weight-gradient products
  std::int64_t floats = 0;  // the block's size in floats (slack for aligning its base included)
};

// G = 3 (the GRU) sizes and places ex; split_n: the reset-before GRU's weights (sizes for the
// larger of the GRU's variants).
inline Bf16Back bf16_back_block(const Dims& d, std::int64_t G, bool split_n, void* base = nullptr) {
  const std::int64_t R = d.P > 0 ? d.P : d.H, GH = G * d.H, ldt = bf16_kpad(d.T * d.N);
  auto* p = static_cast<std::uint16_t*>(base);
  std::int64_t used = 0;  // uint16 elements
  auto take = [&](std::int64_t count) -> std::uint16_t* {
    used = round_up(used, 32);
    std::uint16_t* out = p ? p + used : nullptr;
    used += count;
    return out;
  };
  Bf16Back b;
  b.ldt = ldt;
  b.dx_steps = bf16_dx_steps(d);
  b.kc = std::min(d.N < 16 ? kBf16KChunkSmallN : kBf16KChunk, ldt);
  if (split_n) {
    b.whh = take(packed_bf16_size(d.H, 2 * d.H));
    b.whn = take(packed_bf16_size(d.H, d.H));
  } else {
    b.whh = take(packed_bf16_size(R, GH));
  }
  b.wih = take(packed_bf16_size(d.C, GH));
  b.ab = take(b.dx_steps * d.N * bf16_kpad(GH));
  if (G == 3) b.ab2 = take(b.dx_steps * d.N * bf16_kpad(GH));
  b.at = take(GH * ldt);
  if (G == 3) b.ex = take(panels(d.H) * kPanel * ldt);
  b.xp = take(panels(d.C) * kPanel * b.kc);
  b.hp = take(panels(R) * kPanel * b.kc);
  b.dxs = reinterpret_cast<float*>(take(2 * d.N * d.C));
  b.floats = round_up(used, 32) / 2 + 16;
  return b;
}

}  // namespace lowp
}  // namespace fusedrnn
