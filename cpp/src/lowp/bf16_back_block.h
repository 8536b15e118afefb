// The bf16 block of a cell's BACKWARD workspace (Options::precision = bfloat16; bf16_backward.h
// uses it and states the training contract), in front of the float32 layout.
#pragma once

#include <algorithm>
#include <cstdint>

#include "lowp/lowp.h"

namespace fusedrnn {
namespace lowp {

constexpr std::int64_t kBf16KChunk = 256;  // rows of the weight-gradient sums converted at a time

// The bf16 block of a backward workspace. whh: w_hhᵀ packed ([R, G*H] as lowp's W [n, K]; the
// reset-before GRU: w_hh[:2H]ᵀ [H, 2H] here and w_hnᵀ [H, H] in whn); wih: w_ihᵀ [C, G*H];
// ab: the A operand of the per-step and dx products [max(N, KC), bf16_kpad(G*H)];
// bp: one chunk of dA packed as W [G*H, KC]; at: one chunk of x and h transposed [C + R, KC];
// ct: the weight gradients transposed [C + R, G*H] (fp32).
struct Bf16Back {
  std::uint16_t *whh = nullptr, *whn = nullptr, *wih = nullptr, *ab = nullptr, *bp = nullptr,
                *at = nullptr;
  float* ct = nullptr;
  std::int64_t floats = 0;
};

inline Bf16Back bf16_back_block(const Dims& d, std::int64_t G, bool split_n, void* base = nullptr) {
  const std::int64_t R = d.P > 0 ? d.P : d.H, GH = G * d.H, KC = kBf16KChunk;
  const std::int64_t wide = d.C + R;
  auto* p = static_cast<std::uint16_t*>(base);
  std::int64_t used = 0;  // uint16 elements
  auto take = [&](std::int64_t count) -> std::uint16_t* {
    used = round_up(used, 32);
    std::uint16_t* out = p ? p + used : nullptr;
    used += count;
    return out;
  };
  Bf16Back b;
  if (split_n) {
    b.whh = take(packed_bf16_size(d.H, 2 * d.H));
    b.whn = take(packed_bf16_size(d.H, d.H));
  } else {
    b.whh = take(packed_bf16_size(R, GH));
  }
  b.wih = take(packed_bf16_size(d.C, GH));
  b.ab = take(std::max(d.N, KC) * bf16_kpad(GH));
  b.bp = take(packed_bf16_size(GH, KC));
  b.at = take(wide * KC);
  b.ct = reinterpret_cast<float*>(take(2 * wide * GH + 32));
  b.floats = round_up(used, 32) / 2 + 16;
  return b;
}

}  // namespace lowp
}  // namespace fusedrnn
