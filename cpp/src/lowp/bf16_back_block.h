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
// at: one chunk of dA transposed [G*H, KC]; bp: one chunk of x and of h packed as W [C, KC] and
// [R, KC] (the weight-gradient sums, accumulated in place: no fp32 copy of the gradients).
struct Bf16Back {
  std::uint16_t *whh = nullptr, *whn = nullptr, *wih = nullptr, *ab = nullptr, *bp = nullptr,
                *at = nullptr;
  std::int64_t floats = 0;
};

inline Bf16Back bf16_back_block(const Dims& d, std::int64_t G, bool split_n, void* base = nullptr) {
  const std::int64_t R = d.P > 0 ? d.P : d.H, GH = G * d.H, KC = kBf16KChunk;
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
  b.at = take(GH * KC);
  b.bp = take(packed_bf16_size(d.C, KC) + packed_bf16_size(R, KC));
  b.floats = round_up(used, 32) / 2 + 16;
  return b;
}

}  // namespace lowp
}  // namespace fusedrnn
