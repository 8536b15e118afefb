// Low-precision GEMM building blocks (issue 16): bf16 x bf16 -> fp32 and s8 x s8 -> s32
// (dequantised to fp32), with the right-hand side (the weights) packed once in the tile layout,
// in instruction-set tiers chosen at run time:
//
//   amx          Intel AMX tiles (tdpbf16ps, tdpbssd); Linux asks the kernel for the tile-data
//                state once per process (arch_prctl ARCH_REQ_XCOMP_PERM), each thread loads its
//                tile configuration per call and releases the tiles after it.
//   avx512_bf16  AVX512_BF16 (vdpbf16ps) and AVX512_VNNI (vpdpbusd): AMD Zen 4/5, Intel without AMX.
//   avx512, avx2, baseline
//                software: bf16 widened to fp32 by a shift, fp32 multiply-add; s8 widened to
//                s32 (the instruction-set copies of the fp32 kernels compile it).
// Each tier is the lowp block of one table of the one ISA dispatch (isa/table.h): the tables of
// the software copies carry their software tier, avx512_bf16 and amx are the avx512 copy's table
// with the hardware tier's block. The table in use (isa::active()) is chosen once, for the float
// kernels and the low-precision tier together: FUSEDRNN_ISA=amx|avx512_bf16|avx512|avx2|baseline
// (any case; sse2 = baseline) asks for a narrower level than the best one the build, the CPU and
// the OS allow; a level that cannot run here is never chosen; an unknown value throws.
//
// THE CONTRACT (fusedrnn.reference's *_emulated functions compute exactly this):
//
// bf16. fp32 -> bf16 rounds to nearest, ties to even, on the bit pattern; a NaN stays a (quiet)
//   NaN with its sign; a subnormal fp32 becomes a zero of its sign (the hardware conversion
//   vcvtneps2bf16 does the same; fp32 normals never round to bf16 subnormals). Weights are
//   rounded once, when packed; activations when converted (to_bf16). Bitwise equal in every tier.
//   C[i, j] = init[i, j] + sum_k a[i, k] b[k, j], init = bias[j], C's old value or 0.
//   Every product of two bf16 is exact in fp32; the sum is an fp32 accumulation. In the tiers
//   avx512_bf16, avx512, avx2 and baseline it is ONE sequential fp32 chain per element in the
//   contract's order: acc = init, then for each pair p = 0, 1, ...: acc += a[2p+1] b[2p+1] (rounded
//   to fp32, nearest even), acc += a[2p] b[2p] (rounded) -- the odd term of a pair first, which
//   is vdpbf16ps's order; K is zero-padded to even. These tiers are bitwise equal to each other
//   and to the NumPy emulation (exception: where a product or a partial sum is an fp32
//   subnormal, |v| < 2^-126, the bf16 instructions flush it to zero and the software does not).
//   The amx tier: the tile unit's internal summation is not a sequential fp32 chain (measured:
//   about 40% of the elements differ from every sequential or single-rounding model in the last
//   bits); its error satisfies the worst-case bound of fp32 summation,
//     |C - exact| <= (K + 1) 2^-24 (|init| + sum_k |a_k b_k|),
//   measured here at most 6 units of 2^-24 (|init| + sum |a_k b_k|) for K up to 1024 (tests
//   check the bound). Within one tier every result is bitwise independent of the thread count.
//
// int8. A row x of K floats is quantised with its own scale (symmetric, s8 in [-127, 127]):
//   amax = max_k |x_k| (fp32); amax = 0 gives scale 0 and q = 0; else
//   inv = 127 / amax (fp32 division), scale = amax / 127 (fp32 division),
//   q_k = clamp(round_half_even(x_k * inv), -127, 127)   (x_k * inv rounded to fp32 first).
//   A row with a NaN or an infinity gets scale NaN and q = 0 (every product of that row is then
//   NaN: a non-finite activation propagates instead of quantising to a finite number).
//   Weights: each output row of W [n, K] so (per-output-row scales), once when packed;
//   activations: per row of A, dynamically (quantize_s8), or with a fixed scale
//   (quantize_s8_fixed: inv and scale given).
//   acc[i, j] = sum_k qa[i, k] qw[j, k] exactly in s32 (|acc| <= 127^2 K: K <= kMaxS8Depth,
//   checked by gemm_s8 and the int8 layer calls);
//   C[i, j] = init[i, j] + float(acc) * (sa[i] * sw[j])   (each operation rounded to fp32, in that
//   order). Bitwise equal in every tier (the integer sum is exact in any order; the VNNI tier
//   computes it as (qa + 128) u8 x qw s8 minus 128 sum_k qw[j, k]).
//
// Layouts.
//   Packed bf16 weights, from W [n, K] (PyTorch's [out, in]; C = A W^T): panels of 16 output
//   columns, K zero-padded to a multiple of 32: [ceil(n/16)][Kp/2][16][2] bf16 -- the AMX tile
//   (16 rows of k pairs x 64 bytes) and the vdpbf16ps operand; element (k, j) of panel p is at
//   ((p * Kp/2 + k/2) * 16 + j) * 2 + k % 2.
//   Packed s8 weights: [ceil(n/16)][Kp/4][16][4], Kp a multiple of 64; scales [n16] (fp32) and
//   colsum [n16] (s32, sum_k qw[j, k]), n16 = 16 ceil(n/16), zero past n.
//   Activations: rows of A [m, lda] with lda >= Kp (bf16: multiple of 32, s8: of 64) and zeros in
//   [K, Kp); to_bf16 / quantize_s8 write them so.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fusedrnn/common.h"

namespace fusedrnn {
namespace lowp {

enum class Tier : int { baseline = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3, amx = 4 };

const char* tier_name(Tier t);
// Parses a tier name; false for an unknown one.
bool tier_from_name(const std::string& name, Tier* out);
// Whether tier t was built and runs on this CPU and OS (amx: the OS granted the tile state).
bool tier_available(Tier t);
// The tier the low-precision products use: the active table's (isa::active(), chosen once per
// process with the float kernels' copy).
Tier active_tier();
// Throws std::invalid_argument naming the tier when it is not available here.
void require_tier(Tier t, const char* fn);

constexpr std::int64_t kPanel = 16;     // output columns per packed panel
constexpr std::int64_t kBf16KStep = 32; // bf16 K padding (one AMX tile of k)
constexpr std::int64_t kS8KStep = 64;   // s8 K padding (one AMX tile of k)
// The widest s8 product depth whose int32 sums stay exact: 127^2 K < 2^31.
constexpr std::int64_t kMaxS8Depth = 133144;
static_assert(127 * 127 * kMaxS8Depth < (std::int64_t(1) << 31) &&
                  127 * 127 * (kMaxS8Depth + 1) >= (std::int64_t(1) << 31),
              "kMaxS8Depth");

// int8 quantisation refuses non-finite weights, before any work (a NaN or an infinity would make
// every scale of its row meaningless): std::invalid_argument naming `fn`, the tensor and where.
inline void check_finite_weights(const std::string& fn, const std::string& name, const float* w,
                                 std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(w[i]))
      throw std::invalid_argument(fn + ": precision int8 quantises " + name +
                                  ", which has a non-finite value at flat index " +
                                  std::to_string(i));
}

constexpr std::int64_t round_up(std::int64_t v, std::int64_t m) { return (v + m - 1) / m * m; }
constexpr std::int64_t bf16_kpad(std::int64_t K) { return round_up(K, kBf16KStep); }
constexpr std::int64_t s8_kpad(std::int64_t K) { return round_up(K, kS8KStep); }
constexpr std::int64_t panels(std::int64_t n) { return (n + kPanel - 1) / kPanel; }
// Elements (uint16 / int8) of packed weights.
constexpr std::int64_t packed_bf16_size(std::int64_t n, std::int64_t K) {
  return panels(n) * kPanel * bf16_kpad(K);
}
constexpr std::int64_t packed_s8_size(std::int64_t n, std::int64_t K) {
  return panels(n) * kPanel * s8_kpad(K);
}

// Scalar conversions of the contract (reference implementations; the tiers vectorise them).
std::uint16_t to_bf16_scalar(float x);
float from_bf16(std::uint16_t h);

// Packing (serial, tier-independent layout). W [n, K] row-major with leading dimension ldw.
void pack_bf16(const float* W, std::int64_t n, std::int64_t K, std::int64_t ldw,
               std::uint16_t* out);
// Quantises each row of W (the contract's per-row scheme) and packs it; scales and colsum have
// 16 ceil(n/16) entries.
void pack_s8(const float* W, std::int64_t n, std::int64_t K, std::int64_t ldw, std::int8_t* out,
             float* scales, std::int32_t* colsum);

// out [m, ldo] (ldo >= bf16_kpad(K)) = bf16(x [m, K], leading dimension ldx), zeros in [K, Kp).
void to_bf16(Tier t, const float* x, std::int64_t m, std::int64_t K, std::int64_t ldx,
             std::uint16_t* out, std::int64_t ldo);
// q [m, ldq] (ldq >= s8_kpad(K)), zeros in [K, Kp); scale [m]: the per-row dynamic scheme.
void quantize_s8(Tier t, const float* x, std::int64_t m, std::int64_t K, std::int64_t ldx,
                 std::int8_t* q, std::int64_t ldq, float* scale);
// The same with one given scale: q = clamp(round(x * inv), -127, 127) (the caller's inv is the
// fp32 127 / amax of its fixed range, e.g. 127 for h in (-1, 1)).
void quantize_s8_fixed(Tier t, const float* x, std::int64_t m, std::int64_t K, std::int64_t ldx,
                       float inv, std::int8_t* q, std::int64_t ldq);

// C [m, n] (ldc) = init + A [m, K] (bf16, lda >= bf16_kpad(K)) x op(B) (packed by pack_bf16);
// init = C's content when accumulate, else bias [n] when given, else 0. num_threads as in
// Options (0 = OpenMP's default). The call validates its arguments (std::invalid_argument).
void gemm_bf16(Tier t, std::int64_t m, std::int64_t n, std::int64_t K, const std::uint16_t* A,
               std::int64_t lda, const std::uint16_t* Bp, const float* bias, float* C,
               std::int64_t ldc, bool accumulate, int num_threads);
// C [m, n] = init + float(A Bᵀ) * (a_scale[i] * w_scale[j]) with A [m, K] s8 (lda >= s8_kpad(K)).
void gemm_s8(Tier t, std::int64_t m, std::int64_t n, std::int64_t K, const std::int8_t* A,
             std::int64_t lda, const float* a_scale, const std::int8_t* Bp, const float* w_scale,
             const std::int32_t* colsum, const float* bias, float* C, std::int64_t ldc,
             bool accumulate, int num_threads);

// The same products, work-shared: call from every thread of an OpenMP parallel region (or
// outside any). No checks, no allocation. par_gemm_s8 with shared = false: the whole product by
// the calling thread alone, no work-sharing construct (one thread's rows, kernels' int8 steps).
void par_gemm_bf16(Tier t, std::int64_t m, std::int64_t n, std::int64_t K,
                   const std::uint16_t* A, std::int64_t lda, const std::uint16_t* Bp,
                   const float* bias, float* C, std::int64_t ldc, bool accumulate);
void par_gemm_s8(Tier t, std::int64_t m, std::int64_t n, std::int64_t K, const std::int8_t* A,
                 std::int64_t lda, const float* a_scale, const std::int8_t* Bp,
                 const float* w_scale, const std::int32_t* colsum, const float* bias, float* C,
                 std::int64_t ldc, bool accumulate, bool shared = true);

// ---------------------------------------------------------------------------------------------
// The bf16 block of a cell's forward workspace (Options::precision = bfloat16; kernels/bf16_steps.h
// uses it), in front of the float32 layout so that packed weights keep their offsets across calls
// (Options::weights_packed): the packed-forms word; the fused LSTM's weights (below); packed
// w_ih [G*H, C]; packed w_hh [G*H, R] (split_n, the GRU: rows [2H, H] and the n rows [H, H]
// apart, reset_after packing all 3H rows across both); the fused LSTM's operands; the input
// rows of one sub-chunk of the projection [kBf16XRows, Cp]; the state operand [N, Rp]; with
// split_n the reset-before GRU's r*h operand [N, Hp]. 64-byte aligned pieces.
constexpr std::int64_t kBf16XRows = 256;  // input rows converted and multiplied at a time
constexpr std::uint32_t kPackedFused = 1, kPackedPanels = 2;  // Bf16Block::formats

// The fused AMX LSTM step (amx_cells.cc): operand rows padded to whole 16-row tiles (N < 16: N).
constexpr std::int64_t lstm_fused_rows(std::int64_t N) { return N < 16 ? N : round_up(N, 16); }
// Whether the LSTM's bf16 block has the fused AMX step's pieces: the amx tier is active, no
// projection (P = 0). Fixed per process. The inference runs the fused step when also
// N >= kFusedMinRows (lstm_fused_runs); a smaller batch fills a fraction of each 16-row tile and
// the fused step reads w_ih and w_hh at every step, so there the unfused route (the input
// product of all steps as one product, then only w_hh per step) is faster: 1.3-2.1x at N = 1.
bool lstm_fused_applies(const Dims& d);
constexpr std::int64_t kFusedMinRows = 16;
inline bool lstm_fused_runs(const Dims& d) { return lstm_fused_applies(d) && d.N >= kFusedMinRows; }
// The same fused step for the reset_after GRU (gates r, z, n; n's input and recurrent products
// in separate accumulators): the amx tier is active. Its bf16 block has the pieces for both
// variants (the block does not know the variant); the reset_before GRU, whose n product needs
// r*h first, runs unfused.
bool gru_fused_applies(const Dims& d);
inline bool gru_fused_runs(const Dims& d) { return gru_fused_applies(d) && d.N >= kFusedMinRows; }

struct Bf16Block {
  // Which packed forms of the weights the block holds (kPackedFused | kPackedPanels): a frozen
  // layer's workspace serves batches of every size, so the fused and the unfused route each pack
  // their form once, on first use (Options::weights_packed false: the call packs anew).
  std::uint32_t* formats = nullptr;
  // The fused AMX LSTM and GRU (lstm_ / gru_fused_applies): packed weights [nub][4][KS][512]
  // (KS k-steps of [C | H], each zero-padded to 32; nub blocks of 16 units), x and bf16(h)
  // operands, two each [Np, Cp] and [Np, Hp]. Null otherwise.
  std::uint16_t* wf = nullptr;
  std::uint16_t* xf = nullptr;
  std::uint16_t* hf = nullptr;
  std::uint16_t* wih = nullptr;
  std::uint16_t* whh = nullptr;
  std::uint16_t* whn = nullptr;
  std::uint16_t* xs = nullptr;
  std::uint16_t* hb = nullptr;
  std::uint16_t* rhb = nullptr;
  std::int64_t xrows = 0;   // rows of xs
  std::int64_t floats = 0;  // the block's size in floats (slack for aligning its base included)
};

// The formats word's rule, for the one route a call takes (form: kPackedFused or kPackedPanels):
// a call whose weights are not packed yet (Options::weights_packed false) forgets every form;
// the route packs its form if the block does not hold it, and the block holds it from then on.
// Returns whether this call packs.
inline bool packs_form(const Bf16Block& b, bool weights_packed, std::uint32_t form) {
  if (!weights_packed) *b.formats = 0;
  const bool pack = !(*b.formats & form);
  *b.formats |= form;
  return pack;
}

// base: 64-byte aligned, or null to measure.
inline Bf16Block bf16_block(const Dims& d, std::int64_t G, bool split_n, void* base = nullptr) {
  const std::int64_t R = d.P > 0 ? d.P : d.H, GH = G * d.H;
  auto* p = static_cast<std::uint16_t*>(base);
  std::int64_t used = 0;  // uint16 elements from base
  auto take = [&](std::int64_t count) -> std::uint16_t* {
    used = round_up(used, 32);
    std::uint16_t* out = p ? p + used : nullptr;
    used += count;
    return out;
  };
  Bf16Block b;
  b.xrows = std::min(kBf16XRows, d.T * d.N);
  // first the pieces whose offsets depend on C, H and P only (packed weights), then the rest
  b.formats = reinterpret_cast<std::uint32_t*>(take(32));
  const bool fused = G == 4 ? !split_n && lstm_fused_applies(d) : G == 3 && gru_fused_applies(d);
  const std::int64_t nub = (d.H + 15) / 16, Np = lstm_fused_rows(d.N);
  if (fused) b.wf = take(nub * 4 * 16 * (bf16_kpad(d.C) + bf16_kpad(d.H)));
  b.wih = take(packed_bf16_size(GH, d.C));
  if (split_n) {
    b.whh = take(packed_bf16_size(2 * d.H, d.H));
    b.whn = take(packed_bf16_size(d.H, d.H));
  } else {
    b.whh = take(packed_bf16_size(GH, R));
  }
  if (fused) {
    b.xf = take(2 * Np * bf16_kpad(d.C));
    b.hf = take(2 * Np * bf16_kpad(d.H));
  }
  b.xs = take(b.xrows * bf16_kpad(d.C));
  b.hb = take(d.N * bf16_kpad(R));
  if (split_n) b.rhb = take(d.N * bf16_kpad(d.H));
  b.floats = round_up(used, 32) / 2 + 16;
  return b;
}

// The int8 block of a cell's forward workspace (Options::precision = int8; bf16_steps.h uses it),
// in front of the float32 layout like the bf16 block (packed weights keep their offsets across
// calls): packed s8 w_ih [G*H, C], w_hh [G*H, R] (all G*H rows; split_n: the reset-before GRU
// uses rows [0, 2H) of it and the n rows [2H, 3H) apart in whn [H, H]), each with its per-row
// scales and column sums; the quantised input rows of one sub-chunk of the projection
// [xrows, s8_kpad(C)] with their scales; the state operand [N, s8_kpad(R)] and, split_n, the
// reset-before GRU's r*h operand [N, s8_kpad(H)], with theirs. 64-byte aligned pieces.
struct S8Weights {
  std::int8_t* w = nullptr;         // packed (pack_s8)
  float* scale = nullptr;           // [16 ceil(n/16)]
  std::int32_t* colsum = nullptr;   // [16 ceil(n/16)]
};

struct S8Block {
  S8Weights wih, whh, whn;
  std::int8_t* xs = nullptr;
  float* xscale = nullptr;
  std::int8_t* hq = nullptr;
  float* hscale = nullptr;
  std::int8_t* rq = nullptr;
  float* rscale = nullptr;
  std::int64_t xrows = 0;   // rows of xs
  std::int64_t floats = 0;  // the block's size in floats (slack for aligning its base included)
};

// base: 64-byte aligned, or null to measure.
inline S8Block s8_block(const Dims& d, std::int64_t G, bool split_n, void* base = nullptr) {
  const std::int64_t R = d.P > 0 ? d.P : d.H, GH = G * d.H;
  auto* p = static_cast<char*>(base);
  std::int64_t used = 0;  // bytes from base
  auto take = [&](std::int64_t bytes) -> char* {
    used = round_up(used, 64);
    char* out = p ? p + used : nullptr;
    used += bytes;
    return out;
  };
  auto weights = [&](std::int64_t n, std::int64_t K) {
    S8Weights w;
    w.w = reinterpret_cast<std::int8_t*>(take(packed_s8_size(n, K)));
    w.scale = reinterpret_cast<float*>(take(4 * panels(n) * kPanel));
    w.colsum = reinterpret_cast<std::int32_t*>(take(4 * panels(n) * kPanel));
    return w;
  };
  S8Block b;
  b.xrows = std::min(kBf16XRows, d.T * d.N);
  b.wih = weights(GH, d.C);
  b.whh = weights(GH, R);
  if (split_n) b.whn = weights(d.H, d.H);
  b.xs = reinterpret_cast<std::int8_t*>(take(b.xrows * s8_kpad(d.C)));
  b.xscale = reinterpret_cast<float*>(take(4 * b.xrows));
  b.hq = reinterpret_cast<std::int8_t*>(take(d.N * s8_kpad(R)));
  b.hscale = reinterpret_cast<float*>(take(4 * d.N));
  if (split_n) {
    b.rq = reinterpret_cast<std::int8_t*>(take(d.N * s8_kpad(d.H)));
    b.rscale = reinterpret_cast<float*>(take(4 * d.N));
  }
  b.floats = round_up(used, 64) / 4 + 16;
  return b;
}

// The fused AMX LSTM inference (amx_cells.cc; lstm_fused_applies(d) must hold): the whole
// forward of one layer, y [T, N, H], h_n, c_n [N, H] (the state, updated in place from h0, c0;
// null: zeros). pack: pack w_ih [4H, C], w_hh [4H, H] into wf first (else wf holds them from an
// earlier call). num_threads: the team size (the caller's thread_count).
struct LstmFusedArgs {
  const float *x, *w_ih, *w_hh, *b_ih, *b_hh, *w_peep, *h0, *c0;
  float cell_clip;
  const std::int64_t* lengths;
  bool reverse;
  float *y, *h_n, *c_n;
  std::uint16_t *wf, *xf, *hf;
};
void lstm_fused_forward(const Dims& d, const LstmFusedArgs& a, bool pack, int num_threads);
// The reset_after GRU's fused step (gru_fused_applies(d) must hold), the same arguments with
// w_ih [3H, C], w_hh [3H, H], b_ih, b_hh [3H]; w_peep, c0 and c_n null, cell_clip 0.
void gru_fused_forward(const Dims& d, const LstmFusedArgs& a, bool pack, int num_threads);

// The fp32 packed GEMM of the fp32 kernels (packed_gemm.h), in the instruction-set copy the fp32
// kernels use: the benchmark's fp32 yardstick. C [m, n] = A [m, K] Wᵀ, W [n, K] packed once.
std::int64_t f32_packed_size(std::int64_t n, std::int64_t K);
void f32_pack(const float* W, std::int64_t n, std::int64_t K, float* packed);
void f32_gemm(std::int64_t m, std::int64_t n, std::int64_t K, const float* A, const float* packed,
              float* C, int num_threads);

}  // namespace lowp
}  // namespace fusedrnn
