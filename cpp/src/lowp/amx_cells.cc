// The fused AMX step of the bf16 inference of the LSTM and the reset_after GRU (lowp.h:
// lstm_fused_*, gru_fused_*): per time step and block of 16 hidden units, four products on the
// tiles with K = [x_t | h_{t-1}] (the GRU: r, z, and n's input and recurrent products apart; the
// input projection folded into the step: no separate projection pass, no gx in memory), the
// weights packed once in tile layout ordered by unit block, gate and k-step, in 2 x 2 blocks
// (two gates x two 16-row tiles: each A and B tile loaded serves two products; the weight tiles
// with the non-temporal load hint, so that the weights streaming from L2 evict less of the
// operand rows from L1); the block's pre-activations go to a 16 KB staging buffer in L1, and its
// gate math runs between the k-steps of the next block's tile products, one row at a time (no
// round trip of the whole gate matrix through memory; see thread_step).
// One barrier per step; threads split the unit blocks.
//
// Compiled with the lowp native flags (x86-64-v4 + AMX) in its own copy namespace isa_amx, so
// the gate math is the same source as the fp32 kernels' (kernels/activations.h).
//
// The numerical contract is the bf16 one of bf16_steps.h: x, w_ih, w_hh and the state h entering
// each step are rounded to bf16 (nearest even; here by vcvtneps2bf16, bitwise the contract's
// to_bf16); the products accumulate in fp32 on the tiles (the amx tier's bound: lowp.h), the
// input and recurrent products in one accumulation; biases, gate math, c, h and every output in
// fp32, with the fp32 kernels' formulas (lstm_pointwise.h): pre = ((x w_ihᵀ + h w_hhᵀ) + b_ih)
// + b_hh. Every element is computed the same way whichever thread owns it: results do not
// depend on the thread count.
#include <immintrin.h>

#include "kernels/activations.h"
#include "lowp/lowp.h"

namespace fusedrnn {
namespace lowp {
namespace {

using I = std::int64_t;

// The activations of the fused step. The fp32 kernels' sigmoid and tanh divide (vdivps: ~16
// cycles a packet here, five a packet of 16 units, more than the rest of the gate math) and use
// Eigen's pexp (~22 instructions); here the quotients are a reciprocal estimate refined by one
// Newton step (within ~2 ulp of the quotient, flushed to 0 below the normal range) and the
// exponential is vexp below (15 instructions, within ~2 ulp of e^x): the gate math is ~20%
// cheaper than with pexp (measured, gate pass alone), and it is what the tile products cannot
// overlap (while tile products run, the 512-bit vector instructions get one port instead of two).
// A NaN stays NaN.
inline __m512 recip(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}
// e^x with the exp2 split done by the AVX-512 instructions themselves: r = round(x log2 e),
// f = x - r ln 2 (two-constant Cody-Waite, |f| <= ln2 / 2), e^f by the cephes expf polynomial,
// scaled by 2^r with vscalefps. x is first clamped to [-104, 88] (NaN kept), so the result is
// finite (<= e^88) and 0 below e^-104.
inline __m512 vexp(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);  // (max/min return the second operand on NaN)
  x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
  const __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fnmadd_ps(r, _mm512_set1_ps(0.693359375f), x);
  f = _mm512_fnmadd_ps(r, _mm512_set1_ps(-2.12194440e-4f), f);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(f, f), _mm512_add_ps(f, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, r);
}
// s(x) = 1 / (1 + e^-x);  tanh(x) = 1 - 2 / (1 + e^2x) (e^2x <= e^88: the reciprocal stays
// finite; absolute error ~1e-7 near 0, as sign(x) (1 - e^-2|x|) / (1 + e^-2|x|) had).
inline __m512 vsigmoid(__m512 x) {
  return recip(_mm512_add_ps(_mm512_set1_ps(1.0f), vexp(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}
inline __m512 vtanh(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 r = recip(_mm512_add_ps(one, vexp(_mm512_add_ps(x, x))));
  return _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), r, one);
}

constexpr I kUB = 16;        // hidden units per block (one tile of output columns)
// Rows per group (the rows of one block's products): 64 (four accumulator row tiles), or 32 when
// a block has at least 32 k-steps for its 32 rows (KS >= 16: one row of gate math a k-step) and
// the thread's packed weights come from L2 (1.75 MB or less): a group's operand rows (32 x K in
// bf16, 32 KB at K = 512) then stay in L1 while the weights stream past. Weights beyond L2 come
// from L3 at every step, once per group: 64 rows halve that (LSTM (100, 64, 512), 1 thread: 26.8
// ms in 64-row groups, 31-33 in 32-row ones).
constexpr I kMaxGroupRows = 64;
constexpr I kGroupWeightBytes = I(7) << 18;

struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

inline __mmask16 unit_mask(I valid) {
  return valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << valid) - 1);
}

// The shape of one call.
struct Shape {
  I T, N, C, H, Np, Cp, Hp, KS, KSx, nub, tr;
};

Shape shape_of(const Dims& d) {
  Shape s;
  s.T = d.T, s.N = d.N, s.C = d.C, s.H = d.H;
  s.Np = lstm_fused_rows(d.N);
  s.Cp = bf16_kpad(d.C), s.Hp = bf16_kpad(d.H);
  s.KSx = s.Cp / kBf16KStep;
  s.KS = s.KSx + s.Hp / kBf16KStep;
  s.nub = (d.H + kUB - 1) / kUB;
  s.tr = std::min<I>(16, s.Np);
  return s;
}

inline std::uint16_t* tile_of(std::uint16_t* wf, const Shape& s, I ub, I g, I ks) {
  return wf + ((ub * 4 + g) * s.KS + ks) * 512;
}

// One block's staged pre-activation products: [gate][row < 64][16] fp32.
struct Stage {
  alignas(64) float v[4 * kMaxGroupRows * kUB];
};

// 2 x 2 blocking: gates g0, g0 + 1 (B in tiles 6, 7) x row tiles r, r + 1 (A in tiles 4, 5;
// RT = 1: r only); accumulators 0 (g0, r), 1 (g0 + 1, r), 2 (g0, r + 1), 3 (g0 + 1, r + 1).
// kSplit (the GRU's n gate): accumulator 0 (and 2) takes the input k-steps only (x w_inᵀ) and
// 1 (and 3) the recurrent ones only (h w_hnᵀ), so each k-step runs half the products.
template <int RT, bool kSplit = false, typename F>
inline void products22(const Shape& s, const std::uint16_t* w0, const std::uint16_t* w1,
                       const std::uint16_t* xb, const std::uint16_t* hb, I r0, F&& between) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (RT == 2) {
    _tile_zero(2);
    _tile_zero(3);
  }
  const int sx = int(s.Cp * 2), sh = int(s.Hp * 2);
  for (I ks = 0; ks < s.KS; ++ks) {
    const std::uint16_t* a;
    I lda;
    int sa;
    if (ks < s.KSx) {
      a = xb + r0 * s.Cp + ks * 32, lda = s.Cp, sa = sx;
    } else {
      a = hb + r0 * s.Hp + (ks - s.KSx) * 32, lda = s.Hp, sa = sh;
    }
    _tile_loadd(4, a, sa);
    if constexpr (kSplit) {
      if constexpr (RT == 2) _tile_loadd(5, a + 16 * lda, sa);
      if (ks < s.KSx) {
        _tile_stream_loadd(6, w0 + ks * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        if constexpr (RT == 2) _tile_dpbf16ps(2, 5, 6);
      } else {
        _tile_stream_loadd(7, w1 + ks * 512, 64);
        _tile_dpbf16ps(1, 4, 7);
        if constexpr (RT == 2) _tile_dpbf16ps(3, 5, 7);
      }
      between(ks);
      continue;
    }
    _tile_stream_loadd(6, w0 + ks * 512, 64);
    _tile_stream_loadd(7, w1 + ks * 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (RT == 2) {
      _tile_loadd(5, a + 16 * lda, sa);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    between(ks);
  }
}

template <int RT>
inline void store22(float* st0, float* st1) {  // stages of gates g0, g0 + 1 at row tile r
  _tile_stored(0, st0, 64);
  _tile_stored(1, st1, 64);
  if constexpr (RT == 2) {
    _tile_stored(2, st0 + 16 * kUB, 64);
    _tile_stored(3, st1 + 16 * kUB, 64);
  }
}

// The arguments of one call, shared by its threads.
struct Call {
  Shape s;
  const float *x, *b_ih, *b_hh, *w_peep;
  float clip;
  const std::int64_t* lengths;
  bool reverse;
  float *y, *h, *c;  // h, c: the fp32 state [N, H], updated in place (the GRU: h only)
  bool gru = false;  // the reset_after GRU (r, z, n; n's two products apart), not the LSTM
  std::uint16_t *wf, *xf, *hf;

  I time(I step, I n) const {
    const I len = lengths ? lengths[n] : s.T;
    if (step >= len) return -1;
    return reverse ? len - 1 - step : step;
  }
  std::uint16_t* xbuf(I step) const { return xf + (step % 2) * s.Np * s.Cp; }
  std::uint16_t* hbuf(I step) const { return hf + (step % 2) * s.Np * s.Hp; }
};

// A block whose products are staged and whose gate math is pending.
struct Pending {
  const Stage* st = nullptr;
  I r0 = 0, rows = 0, u0 = 0, next = 0;  // group rows [r0, r0 + rows), units u0.., next row
  I gr = kMaxGroupRows;                  // rows per gate in the stage
};

// The gate math of rows [p.next, end) of a pending block at step `step` (lstm_pointwise.h's
// formulas on the staged products), R rows at a time with their operations interleaved: one
// row's math is a chain of dependent exponentials and reciprocals (~200 cycles of latency), so
// independent rows side by side keep the vector units busy.
struct GateConsts {
  __m512 bi[4], bh[4], wp[3], hi, lo;
  __mmask16 mk;
};

// Row n's results at step `step` for the pending block's units: h into the state, y and the next
// step's bf16 operand (zero in the padding units), c (the LSTM's; null: none) into the state; a
// finished sequence (no time at this step) carries its state, its bf16 operand too.
__attribute__((always_inline)) inline void store_row(const Call& k, I step, const Pending& p,
                                                     const GateConsts& q, I n, __m512 h,
                                                     const __m512* c) {
  const Shape& s = k.s;
  const I u0 = p.u0;
  std::uint16_t* hnext = k.hbuf(step + 1) + n * s.Hp + u0;
  const I t = k.time(step, n);
  if (t < 0) {
    std::memcpy(hnext, k.hbuf(step) + n * s.Hp + u0, 32);
    return;
  }
  if (c) _mm512_mask_storeu_ps(k.c + n * s.H + u0, q.mk, *c);
  _mm512_mask_storeu_ps(k.h + n * s.H + u0, q.mk, h);
  _mm512_mask_storeu_ps(k.y + (t * s.N + n) * s.H + u0, q.mk, h);
  const __m256bh hb = _mm512_cvtneps_pbh(_mm512_maskz_mov_ps(q.mk, h));
  std::memcpy(hnext, &hb, 32);
}

// A staged product of the pending block: gate g, row `row` of its group; staged_pre adds the
// gate's biases, ((a + b_ih) + b_hh) (gate_pre's order in kernels/activations.h).
inline __m512 staged(const Pending& p, int g, I row) {
  return _mm512_load_ps(p.st->v + (g * p.gr + row) * kUB);
}
inline __m512 staged_pre(const Call& k, const Pending& p, const GateConsts& q, int g, I row) {
  namespace ei = Eigen::internal;
  __m512 v = staged(p, g, row);
  if (k.b_ih) v = ei::padd(v, q.bi[g]);
  if (k.b_hh) v = ei::padd(v, q.bh[g]);
  return v;
}

template <int R>
__attribute__((always_inline)) inline void gate_group(const Call& k, I step, const Pending& p,
                                                      I r, const GateConsts& q) {
  namespace ei = Eigen::internal;
  using P = __m512;
  const Shape& s = k.s;
  const I u0 = p.u0;
  auto pre = [&](int j, int g) { return staged_pre(k, p, q, g, r + j); };
  P cp[R], i[R], f[R], g[R], c[R], o[R], h[R];
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) cp[j] = _mm512_maskz_loadu_ps(q.mk, k.c + (p.r0 + r + j) * s.H + u0);
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) {
    P pi = pre(j, 0), pf = pre(j, 1);
    if (k.w_peep) {
      pi = ei::pmadd(q.wp[0], cp[j], pi);
      pf = ei::pmadd(q.wp[1], cp[j], pf);
    }
    i[j] = vsigmoid(pi), f[j] = vsigmoid(pf);
  }
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) g[j] = vtanh(pre(j, 2));
  if (!k.w_peep) {
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) o[j] = vsigmoid(pre(j, 3));
  }
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) {
    c[j] = ei::pmadd(f[j], cp[j], ei::pmul(i[j], g[j]));
    if (k.clip > 0)
      c[j] = ei::pselect(ei::pcmp_lt(q.hi, c[j]), q.hi,
                         ei::pselect(ei::pcmp_lt(c[j], q.lo), q.lo, c[j]));
  }
  if (k.w_peep) {
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) o[j] = vsigmoid(ei::pmadd(q.wp[2], c[j], pre(j, 3)));
  }
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) h[j] = ei::pmul(o[j], vtanh(c[j]));
  for (int j = 0; j < R; ++j) store_row(k, step, p, q, p.r0 + r + j, h[j], &c[j]);
}

inline GateConsts gate_consts(const Call& k, const Pending& p) {
  const Shape& s = k.s;
  const I u0 = p.u0;
  GateConsts q;
  q.mk = unit_mask(s.H - u0);
  auto bias = [&](const float* b, I g) {
    return b ? _mm512_maskz_loadu_ps(q.mk, b + g * s.H + u0) : _mm512_setzero_ps();
  };
  const int gates = k.gru ? 3 : 4;  // the GRU's biases: r, z, n
  for (int g = 0; g < 4; ++g)
    q.bi[g] = g < gates ? bias(k.b_ih, g) : _mm512_setzero_ps(),
    q.bh[g] = g < gates ? bias(k.b_hh, g) : _mm512_setzero_ps();
  for (int g = 0; g < 3; ++g)
    q.wp[g] = k.w_peep ? _mm512_maskz_loadu_ps(q.mk, k.w_peep + g * s.H + u0) : q.bi[0];
  q.hi = _mm512_set1_ps(k.clip), q.lo = _mm512_set1_ps(-k.clip);
  return q;
}

// The GRU's (reset_after) gate math of R rows, gru_pointwise.h's formulas on the staged products
// (stage gates: r, z, the input product of n, the recurrent product of n): r = σ((a_r + b_ir) +
// b_hr), z likewise, q = a_hn + b_hn, n = tanh(r q + (a_in + b_in)), h = n + z (h_prev - n).
template <int R>
__attribute__((always_inline)) inline void gru_group(const Call& k, I step, const Pending& p,
                                                     I r, const GateConsts& q) {
  namespace ei = Eigen::internal;
  using P = __m512;
  const Shape& s = k.s;
  const I u0 = p.u0;
  P rg[R], z[R], h[R];
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j)
    rg[j] = vsigmoid(staged_pre(k, p, q, 0, r + j)), z[j] = vsigmoid(staged_pre(k, p, q, 1, r + j));
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) {
    P qn = staged(p, 3, r + j), xn = staged(p, 2, r + j);
    if (k.b_hh) qn = ei::padd(qn, q.bh[2]);
    if (k.b_ih) xn = ei::padd(xn, q.bi[2]);
    const P n = vtanh(ei::pmadd(rg[j], qn, xn));
    const P hp = _mm512_maskz_loadu_ps(q.mk, k.h + (p.r0 + r + j) * s.H + u0);
    h[j] = ei::pmadd(z[j], ei::psub(hp, n), n);
  }
  for (int j = 0; j < R; ++j) store_row(k, step, p, q, p.r0 + r + j, h[j], nullptr);
}

template <int R>
__attribute__((always_inline)) inline void cell_group(const Call& k, I step, const Pending& p,
                                                      I r, const GateConsts& q) {
  if (k.gru) gru_group<R>(k, step, p, r, q);
  else gate_group<R>(k, step, p, r, q);
}

// The gate math of the pending block's rows [p.next, end), 4 rows at a time.
inline void gate_rows(const Call& k, I step, Pending& p, const GateConsts& q, I end) {
  end = std::min(end, p.rows);
  I r = p.next;
  for (; r + 4 <= end; r += 4) cell_group<4>(k, step, p, r, q);
  for (; r < end; ++r) cell_group<1>(k, step, p, r, q);
  p.next = std::max(p.next, end);
}

// bf16 rows of x for step `step` into its operand buffer: rows [n0, n1).
inline void convert_x(const Call& k, I step, I n0, I n1) {
  const Shape& s = k.s;
  std::uint16_t* xb = k.xbuf(step);
  for (I n = n0; n < n1; ++n) {
    const I t = k.time(step, n);
    std::uint16_t* o = xb + n * s.Cp;
    if (t < 0) {
      std::memset(o, 0, size_t(s.Cp) * 2);
      continue;
    }
    const float* xr = k.x + (t * s.N + n) * s.C;
    for (I j = 0; j < s.Cp; j += 16) {
      const __mmask16 mk = unit_mask(std::max<I>(0, std::min<I>(16, s.C - j)));
      const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, xr + j));
      std::memcpy(o + j, &v, 32);
    }
  }
}

// One thread's share of one step: unit blocks [b0, b1) over all row groups, the gate math of each
// block interleaved with the products of the next. When the pending block has no more rows than
// the next block has k-steps, its rows are spread evenly over them, one row (gate_group<1>) after
// a k-step's tile products: the tile unit then always has the next products queued while the
// vector units work. Slices of several rows every few k-steps (the rule before, kept for blocks
// with more rows than k-steps) left the tiles waiting: in a C++ probe of LSTM (100, 64, 256)'s
// step, products alone 34 us, gate math alone 33, both 48 us with one row a k-step against 68-70
// with 2 rows every 2 or 4 rows every 4 k-steps. Measured on the kernel (alternating with the
// build before, three rounds, medians of 15 calls, bitwise-equal outputs), 1 thread: LSTM (100,
// 64, 256) 7.22-7.40 -> 5.96-6.07 ms, (100, 64, 512) 30.0-30.6 -> 27.3-27.4, (100, 32, 256)
// 4.15-4.20 -> 2.99-3.08; 2 threads: (100, 64, 256) 4.32-4.93 -> 3.82-4.20; (100, 64, 64),
// (100, 32, 128), (100, 128, 128) unchanged within the spread.
// Rows [rlo, rhi) (whole 16-row tiles, or all Np rows).
void thread_step(const Call& k, I step, I b0, I b1, I rlo, I rhi, Stage* stages) {
  const Shape& s = k.s;
  const std::uint16_t* xb = k.xbuf(step);
  const std::uint16_t* hb = k.hbuf(step);
  const bool in_l2 = (b1 - b0) * 4 * s.KS * 1024 <= kGroupWeightBytes;
  const I gr = s.KS >= 16 && in_l2 ? 32 : kMaxGroupRows;
  const I groups = (rhi - rlo + gr - 1) / gr;
  Pending prev;
  GateConsts q;
  I item = 0;
  // k-steps between two slices of gate math, and the rows per slice (4 gates x KS/chunk slices)
  // (about 4 rows a slice for a full group: 16 slices of an item's 4 x KS k-steps)
  const I chunk = std::max<I>(1, s.KS / 4);
  const I slices = 4 * ((s.KS + chunk - 1) / chunk);
  for (I grp = 0; grp < groups; ++grp) {
    const I r0 = rlo + grp * gr, grows = std::min(gr, rhi - r0);
    const I nrt = (grows + 15) / 16;
    const I real = std::max<I>(0, std::min(grows, s.N - r0));
    for (I ub = b0; ub < b1; ++ub, ++item) {
      Stage* st = &stages[item % 2];
      const I slots = 2 * ((nrt + 1) / 2) * s.KS;
      const bool spread = prev.rows <= slots;
      const I quota = prev.st ? (prev.rows + slices - 1) / slices : 0;
      I acc = 0;
      auto between = [&](I ks) {
        if (!prev.st) return;
        if (spread) {
          for (acc += prev.rows; acc >= slots && prev.next < prev.rows; acc -= slots)
            cell_group<1>(k, step, prev, prev.next++, q);
        } else if ((ks + 1) % chunk == 0) {
          gate_rows(k, step, prev, q, prev.next + quota);
        }
      };
      for (int g = 0; g < 4; g += 2) {
        const std::uint16_t* w0 = tile_of(k.wf, s, ub, g, 0);
        const std::uint16_t* w1 = tile_of(k.wf, s, ub, g + 1, 0);
        float* s0 = st->v + g * gr * kUB;
        float* s1 = st->v + (g + 1) * gr * kUB;
        for (I rt = 0; rt < nrt; rt += 2) {
          const I off = rt * 16 * kUB;
          const I r = r0 + rt * 16;
          const bool split = k.gru && g == 2;  // the GRU's n: input and recurrent sums apart
          if (rt + 1 < nrt) {
            if (split) products22<2, true>(s, w0, w1, xb, hb, r, between);
            else products22<2>(s, w0, w1, xb, hb, r, between);
            store22<2>(s0 + off, s1 + off);
          } else {
            if (split) products22<1, true>(s, w0, w1, xb, hb, r, between);
            else products22<1>(s, w0, w1, xb, hb, r, between);
            store22<1>(s0 + off, s1 + off);
          }
        }
      }
      if (prev.st) gate_rows(k, step, prev, q, prev.rows);
      prev.st = st, prev.r0 = r0, prev.rows = real, prev.u0 = ub * kUB, prev.next = 0, prev.gr = gr;
      q = gate_consts(k, prev);
    }
  }
  if (prev.st) gate_rows(k, step, prev, q, prev.rows);
}

}  // namespace

namespace tier_amx {

// Tile layout [nub][4][KS][512]. LSTM: gates i, f, g, o over K = [C | H]. GRU: r, z over [C | H],
// then n's input rows over the C part only and n's recurrent rows over the H part only (zeros
// elsewhere, never multiplied: products22's kSplit).
void cell_fused_pack(const Dims& d, bool gru, const float* w_ih, const float* w_hh,
                     std::uint16_t* wf, int thread, int nthreads) {
  const Shape s = shape_of(d);
  for (I ub = thread; ub < s.nub; ub += nthreads)
    for (I g = 0; g < 4; ++g)
      for (I ks = 0; ks < s.KS; ++ks) {
        std::uint16_t* dst = tile_of(wf, s, ub, g, ks);
        for (I kk = 0; kk < 32; ++kk) {
          const I k = ks * 32 + kk;
          for (I j = 0; j < 16; ++j) {
            const I u = ub * kUB + j, row = (gru && g == 3 ? 2 : g) * s.H + u;
            const bool in = !gru || g != 3, rec = !gru || g != 2;  // which parts of K it has
            float v = 0.0f;
            bool have = false;
            if (u < s.H) {
              if (k < s.Cp) {
                if (k < s.C && in) v = w_ih[row * s.C + k], have = true;
              } else if (k - s.Cp < s.H && rec) {
                v = w_hh[row * s.H + (k - s.Cp)], have = true;
              }
            }
            dst[((kk / 2) * 16 + j) * 2 + kk % 2] = have ? to_bf16_scalar(v) : std::uint16_t(0);
          }
        }
      }
}

void cell_fused_forward(const Dims& d, bool gru, const LstmFusedArgs& a, bool pack,
                        int num_threads) {
  Call k;
  k.gru = gru;
  k.s = shape_of(d);
  k.x = a.x, k.b_ih = a.b_ih, k.b_hh = a.b_hh, k.w_peep = a.w_peep, k.clip = a.cell_clip;
  k.lengths = a.lengths, k.reverse = a.reverse;
  k.y = a.y, k.h = a.h_n, k.c = a.c_n;
  k.wf = a.wf, k.xf = a.xf, k.hf = a.hf;
  const Shape& s = k.s;
  I S = s.T;
  if (a.lengths) {
    S = 0;
    for (I n = 0; n < s.N; ++n) S = std::max<I>(S, a.lengths[n]);
  }
  FUSEDRNN_ISA_NS::detail::parallel_region(num_threads, [&] {
#ifdef _OPENMP
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int tid = 0, nt = 1;
#endif
    if (pack) cell_fused_pack(d, gru, a.w_ih, a.w_hh, a.wf, tid, nt);
    // state and operands: h, c from h0, c0 (or 0; the GRU: h only); bf16(h0) and x_0; padding
    // rows/columns zero
    const I r0 = s.N * tid / nt, r1 = s.N * (tid + 1) / nt;
    for (I n = r0; n < r1; ++n) {
      for (I j = 0; j < s.H; ++j) {
        k.h[n * s.H + j] = a.h0 ? a.h0[n * s.H + j] : 0.0f;
        if (!gru) k.c[n * s.H + j] = a.c0 ? a.c0[n * s.H + j] : 0.0f;
      }
      if (a.lengths)
        for (I t = a.lengths[n]; t < s.T; ++t)
          std::fill(k.y + (t * s.N + n) * s.H, k.y + (t * s.N + n + 1) * s.H, 0.0f);
    }
    const I p0 = s.Np * tid / nt, p1 = s.Np * (tid + 1) / nt;
    for (int buf = 0; buf < 2; ++buf)
      for (I n = p0; n < p1; ++n) {
        std::memset(k.hbuf(buf) + n * s.Hp, 0, size_t(s.Hp) * 2);
        std::memset(k.xbuf(buf) + n * s.Cp, 0, size_t(s.Cp) * 2);
      }
#ifdef _OPENMP
#pragma omp barrier
#endif
    for (I n = r0; n < r1; ++n)
      for (I j = 0; j < s.H; j += 16) {
        const __mmask16 mk = unit_mask(std::min<I>(16, s.H - j));
        const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, k.h + n * s.H + j));
        std::memcpy(k.hbuf(0) + n * s.Hp + j, &v, 32);
      }
    if (S > 0) convert_x(k, 0, r0, r1);
    TileConfig cfg;
    for (int t : {0, 1, 2, 3, 4, 5}) cfg.rows[t] = std::uint8_t(s.tr), cfg.colsb[t] = 64;
    for (int t : {6, 7}) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
    Stage stages[2];
    // Threads split the unit blocks (each reads its share of the weights and every row's
    // operands; a barrier a step), or, where all the weights fit each thread's L2 (1.75 MB) and
    // each thread gets a 16-row tile or more, the rows: the threads then run independent
    // recurrences, with no barrier and no operand crossing cores. Measured at 2 threads (medians
    // of 15): LSTM (100, 64, 256) 3.8-4.2 -> 3.3-3.5 ms, GRU 3.3-3.4 -> 2.6-2.9, LSTM (100, 128,
    // 128) 3.3-4.2 -> 2.4-2.5, LSTM (100, 32, 128) 0.93 -> 0.68-0.70; weights beyond L2 (LSTM
    // (100, 64, 512)) keep the unit split, each thread's share then fitting its own L2.
    const I tiles = s.Np / 16;
    const bool rows_split = nt > 1 && s.Np % 16 == 0 && tiles >= nt &&
                            s.nub * 4 * s.KS * 1024 <= kGroupWeightBytes;
    const I b0 = rows_split ? 0 : s.nub * tid / nt;
    const I b1 = rows_split ? s.nub : s.nub * (tid + 1) / nt;
    const I rlo = rows_split ? 16 * (tiles * tid / nt) : 0;
    const I rhi = rows_split ? 16 * (tiles * (tid + 1) / nt) : s.Np;
    const I xlo = rows_split ? std::min(rlo, s.N) : r0, xhi = rows_split ? std::min(rhi, s.N) : r1;
    for (I step = 0; step < S; ++step) {
      if (!rows_split || step == 0) {  // (step 0: after every thread's conversions above)
#ifdef _OPENMP
#pragma omp barrier
#endif
      }
      if (step + 1 < S) convert_x(k, step + 1, xlo, xhi);
      thread_step(k, step, b0, b1, rlo, rhi, stages);
    }
    _tile_release();
  });
}

void lstm_fused_forward(const Dims& d, const LstmFusedArgs& a, bool pack, int num_threads) {
  cell_fused_forward(d, false, a, pack, num_threads);
}
void gru_fused_forward(const Dims& d, const LstmFusedArgs& a, bool pack, int num_threads) {
  cell_fused_forward(d, true, a, pack, num_threads);
}

}  // namespace tier_amx
}  // namespace lowp
}  // namespace fusedrnn
