// A Stream's fused step at batch 1 (the real-time case: one sequence, one step per call or a
// block of steps per call). Compiled once per instruction-set copy, like step.cc.
//
// step.cc runs a layer's step as the batch kernels organise it: a product x w_ihᵀ into a
// buffer, a product h w_hhᵀ into another, then the gate pass over both. At batch 1 and small H
// that is mostly call and loop overhead, and the products' panels (NC columns of the gates'
// concatenation) do not line up with the gate pass's units. Here the weights are laid out at
// load per block of W units (W = the packet size), all gates of a unit side by side, and per
// pass over a group of blocks in the order the pass reads them (k-major: one sequential stream):
//   fx [pass][k < C][block][gate][W], fh [pass][k < R][block][gate][W],
// so one pass per group of blocks forms every gate's input (or recurrent) sums in registers
// (UB blocks x G gates accumulator packets, sized to the register file) into gate-major
// buffers, and the gate pass of kernels/*_pointwise.h (the very functions of the batch kernels)
// then runs once over all units (its packets independent iterations of one loop, which the
// core overlaps; per block, each block's activations waited on the previous one's). For input
// width 1 the input product is one multiply-add per gate packet (an axpy). The input sums are
// a separate function (fused_in) so that Stream::process can form them for a tile of steps in
// one pass over the input weights; step() forms one step's with the same code. Weights over
// 32 KiB are laid out in passes of one block, and the recurrent passes alternate direction step
// by step, so each step starts on what the previous one read last, still in L1. For the common H (8, 16, 32, 48, 64 without projection) the step is a
// template instance with H, the number of blocks and the recurrent loop length fixed at
// compile time, chosen when the Stream is built (fuse()); other sizes take the same code with
// run-time sizes.
//
// Bitwise: every sum is the one the batch kernels form (packed_gemm.h: per output element one
// chain of pmadd over k = 0..K-1 in order, started from zero, input and recurrent products
// separate; fused only while K fits one KC pass, as gemm_serial does in one pass); lanes never
// mix, so a value does not depend on which lane or block it sits in; the gate pass is the same
// function with the gate stride W instead of H. A Stream therefore still equals Model::forward
// bit for bit (the C++ tests compare, fused and not).
#include <type_traits>
#include <utility>

#include "isa/copy.inc"
#include "kernels/fast_activations.h"
#include "kernels/gru_pointwise.h"
#include "kernels/lstm_pointwise.h"
#include "kernels/packed_gemm.h"
#include "kernels/rnn_pointwise.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

using detail::Index;

namespace {

template <typename Scalar>
constexpr Index kW = detail::kPacketSize<Scalar>;

// Accumulator packets one pass keeps in registers (half the register file: the rest holds the
// broadcast input, the weight loads and addresses).
#if defined(__AVX512F__) || defined(__aarch64__)
constexpr int kAcc = 16;
#else
constexpr int kAcc = 8;
#endif

constexpr Index round16(Index n) { return (n + 15) / 16 * 16; }

// A step's functions inline everything they call (passes, epilogues, Eigen's activations): left
// to itself GCC keeps the passes and Eigen's tanh out of line at some sizes, and every call then
// spills the accumulators and serialises the activations. Inlining changes no result (no
// contraction: -ffp-contract=off, no fast-math). Not under AddressSanitizer, where it multiplies
// this file's compile time and speed is not the point.
#if defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
#define FUSEDRNN_FLATTEN __attribute__((flatten))
#else
#define FUSEDRNN_FLATTEN
#endif

// Blocks per pass for G gates: UB x G accumulator packets.
constexpr int blocks_per_pass(int G) { return (kAcc / G) < 8 ? (kAcc / G) : 8; }

// A pass over UB blocks reads its weights as one sequential stream, k-major:
// w[(k*UB + b)*G*W + g*W ..] (lay_out below writes them so).
// out[b*os + g*W ..] = Σ_k a[k] w[..] for blocks b < UB, gates g < G: each lane one pmadd chain
// over k in order from zero (packed_gemm.h's micro_tile, lane by lane). out is gate-major:
// gate g of block b at out + g*gs + b*W.
template <typename Scalar, int G, int UB, int KS>
inline void chains(Index k_rt, const Scalar* a, const Scalar* w, Scalar* out, Index gs) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  const Index K = KS > 0 ? KS : k_rt;
  P acc[UB][G];
  for (int b = 0; b < UB; ++b)
    for (int g = 0; g < G; ++g) acc[b][g] = ei::pset1<P>(Scalar(0));
  for (Index k = 0; k < K; ++k) {
    const P av = ei::pset1<P>(a[k]);
    const Scalar* wk = w + k * (UB * G * W);
    for (int b = 0; b < UB; ++b)
      for (int g = 0; g < G; ++g)
        acc[b][g] = ei::pmadd(av, ei::pload<P>(wk + (b * G + g) * W), acc[b][g]);
  }
  for (int b = 0; b < UB; ++b)
    for (int g = 0; g < G; ++g) ei::pstore(out + g * gs + b * W, acc[b][g]);
}

// chains with n (1..U) blocks, chosen at run time.
template <typename Scalar, int G, int KS, int U>
inline void chains_n(int n, Index K, const Scalar* a, const Scalar* w, Scalar* out, Index gs) {
  if constexpr (U > 1) {
    if (n < U) return chains_n<Scalar, G, KS, U - 1>(n, K, a, w, out, gs);
  }
  chains<Scalar, G, U, KS>(K, a, w, out, gs);
}

// Every block's sums: blocks in passes of UB (the last pass shorter); pass p's weights start at
// block p*UB's offset b*K*G*W.
template <typename Scalar, int G, int KS>
inline void all_chains(Index nb, Index K, const Scalar* a, const Scalar* w, Scalar* out,
                       Index gs) {
  constexpr int UB = blocks_per_pass(G);
  constexpr Index W = kW<Scalar>;
  const Index bs = K * G * W;
  Index b = 0;
  for (; b + UB <= nb; b += UB) chains<Scalar, G, UB, KS>(K, a, w + b * bs, out + b * W, gs);
  if (b < nb) chains_n<Scalar, G, KS, UB>(int(nb - b), K, a, w + b * bs, out + b * W, gs);
}

// chains<G, 1> of one block for NS steps at once: a [NS][lda] -> out + s*ldo (gate-major, gate
// stride gs). Each weight packet is loaded once for the NS steps' multiply-adds (one block's
// chains alone keep only G chains in flight, a load each); every sum is still its own chain
// over k in order from zero, so each step's values are chains<G, 1>'s bit for bit.
template <typename Scalar, int G, int NS>
inline void chains_steps(Index K, const Scalar* a, Index lda, const Scalar* w, Scalar* out,
                         Index ldo, Index gs) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  P acc[NS][G];
  for (int s = 0; s < NS; ++s)
    for (int g = 0; g < G; ++g) acc[s][g] = ei::pset1<P>(Scalar(0));
  for (Index k = 0; k < K; ++k) {
    const Scalar* wk = w + k * (G * W);
    P wv[G];
    for (int g = 0; g < G; ++g) wv[g] = ei::pload<P>(wk + g * W);
    for (int s = 0; s < NS; ++s) {
      const P av = ei::pset1<P>(a[s * lda + k]);
      for (int g = 0; g < G; ++g) acc[s][g] = ei::pmadd(av, wv[g], acc[s][g]);
    }
  }
  for (int s = 0; s < NS; ++s)
    for (int g = 0; g < G; ++g) ei::pstore(out + s * ldo + g * gs, acc[s][g]);
}
// Steps per chains_steps call: NS*G accumulators within the pass budget, at most 4.
constexpr int bit_in_steps(int G) { return kAcc / G >= 4 ? 4 : kAcc / G >= 2 ? 2 : 1; }

// The input sums of a layer's bitwise step for `steps` steps: x [steps][ldx] -> out
// [steps][L.fin], per step gate-major [GX][HP], each sum the chain all_chains forms. Pass by pass
// (a pass's weights then serve every step from L1), the steps inside; with passes of one block
// (weights over 32 KiB), bit_in_steps(GX) steps at a time (chains_steps: 4G chains in flight
// instead of G, each weight packet loaded into a register once for the steps). Zen 4, bitwise
// process(), bench/stream_latency (the builds alternated), medians ns a step: LSTM 128/128 4090
// -> 3786 (perf: these sums 1.5 -> 1.2 us of it), GRU 3058 -> 2814, LSTM 64/64 984 -> 894, GRU
// 782 -> 647.
template <typename Scalar, int GX>
FUSEDRNN_FLATTEN void bit_in(const isa::StepLayer<Scalar>& L, const Scalar* x, Index ldx, Index steps,
            Scalar* out) {
  constexpr Index W = kW<Scalar>;
  constexpr int UB = blocks_per_pass(GX), NS = bit_in_steps(GX);
  const Index nb = detail::ceil_div(L.H, W), HP = nb * W, ub = L.fub == 1 ? 1 : UB;
  const Index bs = L.C * GX * W;
  for (Index b = 0; b < nb; b += ub) {
    const int n = int(std::min(ub, nb - b));
    Index t = 0;
    if (n == 1 && NS > 1)
      for (; t + NS <= steps; t += NS)
        chains_steps<Scalar, GX, NS>(L.C, x + t * ldx, ldx, L.fx + b * bs,
                                     out + t * L.fin + b * W, L.fin, HP);
    for (; t < steps; ++t)
      chains_n<Scalar, GX, 0, UB>(n, L.C, x + t * ldx, L.fx + b * bs, out + t * L.fin + b * W,
                                  HP);
  }
}

// The recurrent sums of a layer's bitwise step (gates gh of fh). Weights over 32 KiB come in
// passes of one block (fuse(): L.fub = 1), run ascending on one step and descending on the next,
// so a step starts on the passes the previous one read last, still in L1 (a cyclic stream larger
// than an LRU cache misses on every line; see the fast step below). Every sum is its own chain
// whatever the order.
template <typename Scalar, int GH, int KS>
inline void rec_chains(const isa::StepLayer<Scalar>& L, Index nb, Index R, const Scalar* h,
                       Scalar* sh, Index HP) {
  constexpr Index W = kW<Scalar>;
  if (L.fub != 1) return all_chains<Scalar, GH, KS>(nb, R, h, L.fh, sh, HP);
  const Index bh = R * GH * W;
  if ((L.visits++ & 1u) == 0)
    for (Index b = 0; b < nb; ++b) chains<Scalar, GH, 1, KS>(R, h, L.fh + b * bh, sh + b * W, HP);
  else
    for (Index b = nb; b-- > 0;) chains<Scalar, GH, 1, KS>(R, h, L.fh + b * bh, sh + b * W, HP);
}

template <typename Scalar>
void project_or_copy(const isa::StepLayer<Scalar>& L, const Scalar* out, Scalar* h) {
  if (L.P > 0)  // h = m w_hrᵀ: the product step.cc forms (one thread, same panels)
    table().of<Scalar>().gemm(1, L.P, L.H, out, L.H, L.whr_p, h, L.P, 1);
  else
    std::copy(out, out + L.H, h);
}

// Scratch carving: gx, gh, gates [4][HP] (gate-major, HP = H rounded up to whole packets),
// out [HP]; each a multiple of 16 scalars.
template <typename Scalar>
struct Scratch {
  Scalar *gx, *gh, *gates, *out;
  Scratch(Scalar* s, Index HP) {
    const Index big = round16(4 * HP);
    gx = s, gh = gx + big, gates = gh + big, out = gates + big;
  }
};

// The sums go gate-major ([gate][HP]), so the gate pass of the batch kernels runs once over all
// H units with gate stride HP: its packets are independent iterations of one loop.
template <typename Scalar, int HS>
FUSEDRNN_FLATTEN void lstm_fused(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* gx, Scalar* h,
                Scalar* c, Scalar* scratch) {
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  const Index R = L.P > 0 ? L.P : H;
  Scratch<Scalar> s(scratch, HP);
  if (!gx) bit_in<Scalar, 4>(L, x, L.C, 1, s.gx), gx = s.gx;
  rec_chains<Scalar, 4, HS>(L, nb, R, h, s.gh, HP);
  detail::lstm_pointwise_forward(H, HP, gx, s.gh, L.fb_ih, L.fb_hh, L.fpeep, c, c, s.out,
                                 static_cast<Scalar*>(nullptr), static_cast<Scalar*>(nullptr));
  project_or_copy(L, s.out, h);
}

template <typename Scalar, int HS>
FUSEDRNN_FLATTEN void gru_after_fused(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* gx,
                     Scalar* h, Scalar*, Scalar* scratch) {
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  Scratch<Scalar> s(scratch, HP);
  if (!gx) bit_in<Scalar, 3>(L, x, L.C, 1, s.gx), gx = s.gx;
  rec_chains<Scalar, 3, HS>(L, nb, H, h, s.gh, HP);
  detail::gru_after_pointwise_forward(H, HP, gx, s.gh, L.fb_ih, L.fb_hh, h, s.out,
                                      static_cast<Scalar*>(nullptr),
                                      static_cast<Scalar*>(nullptr));
  std::copy(s.out, s.out + H, h);
}

// reset_before: r and z first (their recurrent sums from h), then n's recurrent sum from
// q = r*h over every unit (gates + 3*HP), then the candidate and the new state.
template <typename Scalar, int HS>
FUSEDRNN_FLATTEN void gru_before_fused(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* gx,
                      Scalar* h, Scalar*, Scalar* scratch) {
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  Scratch<Scalar> s(scratch, HP);
  if (!gx) bit_in<Scalar, 3>(L, x, L.C, 1, s.gx), gx = s.gx;
  rec_chains<Scalar, 2, HS>(L, nb, H, h, s.gh, HP);  // gh: gates r, z of [3][HP]
  detail::gru_before_pointwise_forward_rz(H, HP, gx, s.gh, L.fb_ih, L.fb_hh, h, s.gates);
  all_chains<Scalar, 1, HS>(nb, H, s.gates + 3 * HP, L.fhn, s.gh + 2 * HP, HP);  // q w_hnᵀ
  detail::gru_before_pointwise_forward_n(H, HP, gx, s.gh, L.fb_ih, L.fb_hh, h, s.out,
                                         static_cast<Scalar*>(nullptr), s.gates);
  std::copy(s.out, s.out + H, h);
}

template <typename Scalar, int HS>
FUSEDRNN_FLATTEN void rnn_fused(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* gx, Scalar* h,
               Scalar*, Scalar* scratch) {
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  Scratch<Scalar> s(scratch, HP);
  if (!gx) bit_in<Scalar, 1>(L, x, L.C, 1, s.gx), gx = s.gx;
  rec_chains<Scalar, 1, HS>(L, nb, H, h, s.gh, HP);
  detail::rnn_pointwise_forward(H, L.act == Nonlinearity::tanh, gx, s.gh, L.fb_ih, L.fb_hh,
                                s.out, static_cast<Scalar*>(nullptr));
  std::copy(s.out, s.out + H, h);
}

// Gate rows per product: w_ih's, w_hh's in the first recurrent pass, the biases'.
struct Gates {
  Index x, h, b;
};
template <typename Scalar>
Gates gates_of(const isa::StepLayer<Scalar>& L) {
  switch (L.cell) {
    case isa::StepCell::lstm: return {4, 4, 4};
    case isa::StepCell::gru: return {3, L.variant == GruVariant::reset_before ? 2 : 3, 3};
    default: return {1, 1, 1};
  }
}

template <typename Scalar>
std::size_t fused_size(const isa::StepLayer<Scalar>& L) {
  const Index R = L.P > 0 ? L.P : L.H;
  if (L.N != 1 || L.C > detail::Panel<Scalar>::KC || R > detail::Panel<Scalar>::KC ||
      L.H > detail::Panel<Scalar>::KC)
    return 0;
  const Gates g = gates_of(L);
  const Index HW = detail::ceil_div(L.H, kW<Scalar>) * kW<Scalar>;
  const bool before = L.cell == isa::StepCell::gru && L.variant == GruVariant::reset_before;
  Index n = round16(HW * L.C * g.x) + round16(HW * R * g.h) + (before ? round16(HW * L.H) : 0);
  n += 2 * round16(HW * g.b) + (L.w_peep ? round16(HW * 3) : 0);
  return std::size_t(n);
}

// The weights of all_chains<G>: rows row0 + g*H + u of w [rows, K] (row-major), units u past H
// zero; per pass of ub blocks from block b0, at b0*K*G*W: [k][b < ub][g][W].
template <typename Scalar>
Scalar* lay_out(const Scalar* w, Index K, Index G, Index row0, Index H, Scalar* out,
                Index UB = 0) {
  constexpr Index W = kW<Scalar>;
  const Index nb = detail::ceil_div(H, W);
  if (UB == 0) UB = blocks_per_pass(int(G));
  for (Index b0 = 0; b0 < nb; b0 += UB) {
    const Index ub = std::min(UB, nb - b0);
    Scalar* pass = out + b0 * K * G * W;
    for (Index k = 0; k < K; ++k)
      for (Index b = 0; b < ub; ++b)
        for (Index g = 0; g < G; ++g)
          for (Index l = 0; l < W; ++l) {
            const Index u = (b0 + b) * W + l;
            pass[((k * ub + b) * G + g) * W + l] =
                u < H ? w[(row0 + g * H + u) * K + k] : Scalar(0);
          }
  }
  return out + round16(nb * K * G * W);
}

// A vector [G*H] gate-major with each gate's units padded to HP (zeros).
template <typename Scalar>
Scalar* lay_out_gates(const Scalar* v, Index G, Index H, Scalar* out) {
  const Index HP = detail::ceil_div(H, kW<Scalar>) * kW<Scalar>;
  for (Index g = 0; g < G; ++g)
    for (Index u = 0; u < HP; ++u) out[g * HP + u] = u < H ? v[g * H + u] : Scalar(0);
  return out + round16(G * HP);
}

// `steps` steps of a layer's fused step F<Scalar, HS>::run in one call (Stream::process), the
// step inlined into the loop (no call per step): x [steps][ldx], or, xin non-null, the input
// sums fused_in stored [steps][fin]; each step's state h [R] also copied to y + t*ldy when y is
// non-null. The same function per step as step(), so the same results.
template <typename Scalar, template <typename, int> class F, int HS>
FUSEDRNN_FLATTEN void run_steps(const isa::StepLayer<Scalar>& L, const Scalar* x, Index ldx,
                                const Scalar* xin, Index steps, Scalar* h, Scalar* c,
                                Scalar* scratch, Scalar* y, Index ldy) {
  // (HS > 0 only without projection: the copy's length then fixed at compile time.)
  const Index R = HS > 0 ? HS : L.P > 0 ? L.P : L.H;
  for (Index t = 0; t < steps; ++t) {
    F<Scalar, HS>::run(L, xin ? nullptr : x + t * ldx, xin ? xin + t * L.fin : nullptr, h, c,
                       scratch);
    if (y) std::copy(h, h + R, y + t * ldy);
  }
}

// Sets L.fused and L.fused_steps to F's instance for H (fixed: the common sizes are template
// instances with H fixed at compile time; others, and every projected LSTM, run-time sizes).
template <typename Scalar, template <typename, int> class F>
void pick(isa::StepLayer<Scalar>& L, Index H, bool fixed) {
  auto set = [&L](auto hs) {
    constexpr int HS = decltype(hs)::value;
    L.fused = &F<Scalar, HS>::run;
    L.fused_steps = &run_steps<Scalar, F, HS>;
  };
  if (fixed) switch (H) {
      case 8: return set(std::integral_constant<int, 8>());
      case 16: return set(std::integral_constant<int, 16>());
      case 32: return set(std::integral_constant<int, 32>());
      case 48: return set(std::integral_constant<int, 48>());
      case 64: return set(std::integral_constant<int, 64>());
      default: break;
    }
  set(std::integral_constant<int, 0>());
}
template <typename Scalar, int HS>
struct LstmF {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* gx, Scalar* h,
                  Scalar* c, Scalar* s) { lstm_fused<Scalar, HS>(L, x, gx, h, c, s); }
};
template <typename Scalar, int HS>
struct GruAfterF {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* gx, Scalar* h,
                  Scalar* c, Scalar* s) { gru_after_fused<Scalar, HS>(L, x, gx, h, c, s); }
};
template <typename Scalar, int HS>
struct GruBeforeF {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* gx, Scalar* h,
                  Scalar* c, Scalar* s) { gru_before_fused<Scalar, HS>(L, x, gx, h, c, s); }
};
template <typename Scalar, int HS>
struct RnnF {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* gx, Scalar* h,
                  Scalar* c, Scalar* s) { rnn_fused<Scalar, HS>(L, x, gx, h, c, s); }
};

template <typename Scalar>
void fuse(isa::StepLayer<Scalar>& L, const Scalar* w_ih, const Scalar* w_hh, Scalar* out) {
  const Gates g = gates_of(L);
  const Index H = L.H, R = L.P > 0 ? L.P : H;
  const bool before = L.cell == isa::StepCell::gru && L.variant == GruVariant::reset_before;
  // Passes of one block where the weights exceed 32 KiB (both_chains), else blocks_per_pass.
  const Index nb = detail::ceil_div(H, kW<Scalar>);
  const bool big = nb > 1 && nb * kW<Scalar> * (L.C * g.x + R * g.h) * Index(sizeof(Scalar)) >
                                 32 * 1024;
  L.fub = big ? 1 : 0;
  L.fx = out;
  out = lay_out(w_ih, L.C, g.x, 0, H, out, big ? Index(1) : Index(0));
  L.fh = out;
  out = lay_out(w_hh, R, g.h, 0, H, out, big ? Index(1) : Index(0));
  if (before) {
    L.fhn = out;
    out = lay_out(w_hh, H, Index(1), 2 * H, H, out);
  }
  // Biases and peepholes: gate-major [G][HP] like the sums.
  if (L.b_ih) {
    L.fb_ih = out;
    out = lay_out_gates(L.b_ih, g.b, H, out);
  }
  if (L.b_hh) {
    L.fb_hh = out;
    out = lay_out_gates(L.b_hh, g.b, H, out);
  }
  if (L.w_peep) {
    L.fpeep = out;
    out = lay_out_gates(L.w_peep, Index(3), H, out);
  }
  L.fin = round16(g.x * nb * kW<Scalar>);
  L.fused_in = g.x == 4 ? &bit_in<Scalar, 4> : g.x == 3 ? &bit_in<Scalar, 3> : &bit_in<Scalar, 1>;
  const bool fixed = L.P == 0;  // the recurrent K is H
  switch (L.cell) {
    case isa::StepCell::lstm: pick<Scalar, LstmF>(L, H, fixed); break;
    case isa::StepCell::gru:
      if (before)
        pick<Scalar, GruBeforeF>(L, H, fixed);
      else
        pick<Scalar, GruAfterF>(L, H, fixed);
      break;
    default: pick<Scalar, RnnF>(L, H, fixed); break;
  }
}

// ---------------------------------------------------------------------------------------------
// The fast step (StreamOptions::fast): the same products, the sums reassociated and the
// sigmoid evaluated another way (float), for speed, so not bitwise Model::forward (the
// tolerance is derived and tested: stream.h, tests/cpp/test_model.cc). Per block of units,
// G gates:
//   * input and recurrent products in one pass, into the same accumulators where the cell adds
//     them anyway (every gate of the LSTM and the Elman RNN, r and z of the GRU; the GRU's n
//     keeps its input part and its recurrent part apart, as r multiplies only the latter): GX =
//     2G - M accumulator slots per block, M the merged gates;
//   * each slot's sum split into S interleaved chains (k = s, s + S, ...: S times shorter
//     dependency chains), started from the biases (b_ih + b_hh pre-summed at load) and zeros,
//     added pairwise at the end;
//   * the cell's element-wise step on these sums while they are still in registers (no store
//     and reload of the gate sums, no separate bias adds), per block right after its pass;
//     the new state goes straight into h when one pass covers every block (no later pass reads
//     the old h), else into scratch and is copied after the last pass;
//   * weights that do not fit L1 (ub_of below): passes of one block each, run in ascending
//     order on one step and descending on the next, so a step starts on the passes the previous
//     one read last, still in L1 (an L1 about the weights' size then serves most of them
//     instead of none, as a cyclic stream larger than an LRU cache misses on every line). The
//     order of the passes changes no sum (blocks never mix).
// Weights: fx [pass][k < C][b][gate][W] and fh [pass][k < R][b][gate][W] as the bitwise step's,
// in passes of ub_of(...) blocks; biases [GX][HP].

#if defined(__AVX512F__) || defined(__aarch64__)
constexpr int kFastAcc = 24;
#else
constexpr int kFastAcc = 12;
#endif
constexpr int fast_blocks(int GX) { return kFastAcc / GX < 1 ? 1 : kFastAcc / GX > 8 ? 8 : kFastAcc / GX; }
// Chains per slot for `slots` accumulator slots in a pass: up to 4, while 2x as many still fit
// the accumulator budget and fewer than 16 chains run side by side.
constexpr int fast_splits(int slots) {
  int sp = 1;
  while (sp < 4 && 2 * sp * slots <= kFastAcc && sp * slots < 16) sp *= 2;
  return sp;
}
// fast_splits, at most the packet width W: a pass's sums left over after its whole groups of S
// chains (k from K / S * S on) are formed block by block, after the earlier blocks' epilogues
// may have written the new state in place, so they must lie in the last block's units; with S
// dividing W they do (K - K / S * S < S <= the last block's units). (SSE2 and NEON double, W =
// 2: an Elman RNN of H = 3 split its sums 4 ways and read a unit already overwritten.)
template <typename Scalar>
constexpr int fast_pass_splits(int slots) {
  return fast_splits(slots) < int(kW<Scalar>) ? fast_splits(slots) : int(kW<Scalar>);
}
// Chains per input sum (fast_in_regs) of a pass of U blocks, G gates.
// U = 1 (a layer of one block, or one whose weights exceed 32 KiB, in passes of one block): one
// chain per sum, so that process() forms fast_in_nsteps(G) steps' sums at once
// (fast_in_regs_steps; a step() with weights over 32 KiB is bound by reading them, not by these
// chains). Zen 4, fast process(), bench/stream_latency (the builds alternated), medians ns a
// step: LSTM 128/128 4322 -> 3917, GRU 2992 -> 2876, LSTM 64/64 918 -> 840, GRU 786 -> 656; at
// H = 16 (one block) process() and step() within +-6% either way, the run-to-run noise (LSTM
// 16/16 process() 71 -> 70 ns, GRU 16/16 54 -> 51).
// U > 1: as fast_splits, within two thirds of its accumulator budget (16 packets with AVX-512):
// at 24, GCC 12 kept 8 of the GRU's 2-block input accumulators (4 chains x 2 blocks x 3 gates)
// on the stack, loaded and stored around every multiply-add (seen in objdump): fast process(),
// GRU 32/32, 182-189 -> 160 ns a step with 2 chains (bench/stream_latency runs before and
// after); the other fixed sizes (8-64, input 1 and H) within 1% (a one-layer probe).
// process() and step() form the input sums with the same chains, so they agree bit for bit.
constexpr int kFastInAcc = 2 * kFastAcc / 3;
constexpr int fast_in_splits(int U, int G) {
  int sp = 1;
  while (U > 1 && sp < 4 && 2 * sp * U * G <= kFastInAcc) sp *= 2;
  return sp;
}
// Steps whose input sums process() forms at once: NS*S*U*G accumulators within kFastInAcc, at
// most 4.
constexpr int fast_in_nsteps(int accs) {
  return kFastInAcc / accs >= 4 ? 4 : kFastInAcc / accs >= 2 ? 2 : 1;
}
// Blocks per pass of a layer: fast_blocks(GX), or 1 where its weights exceed 32 KiB and there is
// more than one block (then the passes alternate direction: see above).
template <typename Scalar>
Index ub_of(Index GX, Index G, Index H, Index C, Index R) {
  const Index nb = detail::ceil_div(H, kW<Scalar>);
  const Index bytes = nb * kW<Scalar> * G * (C + R) * Index(sizeof(Scalar));
  return nb > 1 && bytes > 32 * 1024 ? 1 : fast_blocks(int(GX));
}

// The fast tanh and sigmoid (kernels/fast_activations.h): a layer of one block (H <= 16 with
// AVX-512; the Elman RNN: up to two, see rnn_fast) runs the short-chain ones, as its step is one
// chain of products, gate math and the next step's products with no other block's work beside
// it; wider layers the ones with fewer operations (AVX-512 float; elsewhere the same
// functions), as their blocks' gate math runs beside other blocks' and is bound by the vector
// pipes. Zen 4, fast process(), bench/stream_latency, the builds alternated, five runs each,
// medians ns a step, the short-chain functions everywhere -> this: LSTM 32/1 138 -> 128, 32/32
// 240 -> 213, 64/1 536 -> 520, 128/1 2648 -> 2566, 128/128 3852 -> 3718; GRU 64/1 412 -> 375,
// 64/64 654 -> 622; GRU 32 and 128 within 1%. The few-operation functions at H = 16 too (two
// runs): LSTM 16/1 56 -> 59-60, GRU 16/1 45 -> 52.
template <typename P>
struct FastAct {
  bool chain;  // one block: the short-chain functions
  P sigmoid(const P& v) const {
    return chain ? detail::fast_sigmoid(v) : detail::fast_few<true>(v);
  }
  P tanh(const P& v) const { return chain ? detail::fast_tanh(v) : detail::fast_few<false>(v); }
};

// A packet of units [u0, u0 + W) of a run of n units: whole, or the first n - u0 lanes through a
// zero-padded buffer (the lanes past n computed and dropped).
template <typename Scalar>
inline detail::Packet<Scalar> load_units(const Scalar* p, Index u0, Index n) {
  namespace ei = Eigen::internal;
  constexpr Index W = kW<Scalar>;
  if (u0 + W <= n) return ei::ploadu<detail::Packet<Scalar>>(p + u0);
  alignas(64) Scalar buf[W];
  std::fill(buf, buf + W, Scalar(0));
  std::copy(p + u0, p + n, buf);
  return ei::pload<detail::Packet<Scalar>>(buf);
}
template <typename Scalar>
inline void store_units(Scalar* p, Index u0, Index n, const detail::Packet<Scalar>& v) {
  namespace ei = Eigen::internal;
  constexpr Index W = kW<Scalar>;
  if (u0 + W <= n) return ei::pstoreu(p + u0, v);
  alignas(64) Scalar buf[W];
  ei::pstore(buf, v);
  std::copy(buf, buf + (n - u0), p + u0);
}

// The input sums of one pass of the fast step (UB blocks from the pass's weights wx and biases
// bias [GX][HP]) into v [UB][GX], slot-major as the recurrent pass reads them: slot g < G the
// bias (pre-summed) plus gate g's input sum (S chains over k = s, s + S, ..., added pairwise), the
// other slots (the GRU's n recurrent part) their bias. fast_in stores them for a tile of steps
// (Stream::process); the step forms them in registers with this same code, so both give the
// same values.
template <typename Scalar, int G, int M, int UB, int S>
inline void fast_in_regs(Index C, const Scalar* x, const Scalar* wx, const Scalar* bias,
                         Index HP, detail::Packet<Scalar> (&v)[UB][2 * G - M]) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  constexpr int GX = 2 * G - M;
  P acc[S][UB][G];
  for (int b = 0; b < UB; ++b)
    for (int g = 0; g < G; ++g) {
      acc[0][b][g] = ei::pload<P>(bias + g * HP + b * W);
      for (int sp = 1; sp < S; ++sp) acc[sp][b][g] = ei::pset1<P>(Scalar(0));
    }
  Index k = 0;
  for (; k + S <= C; k += S)
    for (int sp = 0; sp < S; ++sp) {
      const P av = ei::pset1<P>(x[k + sp]);
      const Scalar* wk = wx + (k + sp) * (UB * G * W);
      for (int b = 0; b < UB; ++b)
        for (int g = 0; g < G; ++g)
          acc[sp][b][g] = ei::pmadd(av, ei::pload<P>(wk + (b * G + g) * W), acc[sp][b][g]);
    }
  for (; k < C; ++k) {
    const P av = ei::pset1<P>(x[k]);
    const Scalar* wk = wx + k * (UB * G * W);
    for (int b = 0; b < UB; ++b)
      for (int g = 0; g < G; ++g)
        acc[0][b][g] = ei::pmadd(av, ei::pload<P>(wk + (b * G + g) * W), acc[0][b][g]);
  }
  for (int b = 0; b < UB; ++b) {
    for (int g = 0; g < G; ++g) {
      if constexpr (S == 4)
        v[b][g] =
            ei::padd(ei::padd(acc[0][b][g], acc[1][b][g]), ei::padd(acc[2][b][g], acc[3][b][g]));
      else if constexpr (S == 2)
        v[b][g] = ei::padd(acc[0][b][g], acc[1][b][g]);
      else
        v[b][g] = acc[0][b][g];
    }
    for (int j = G; j < GX; ++j) v[b][j] = ei::pload<P>(bias + j * HP + b * W);
  }
}

// fast_in_regs for NS steps at once (x [NS][ldx] -> v [NS][UB][GX]), each weight packet loaded
// once for the NS steps: per step the same chains (S of them per sum, k = s, s + S, ...), the same
// starting values and the same pairwise adds, so each step's values are fast_in_regs's bit for bit
// (test_model: process() equals step()). A copy rather than fast_in_regs's body: fast_in_regs as
// this with NS = 1 made GCC 12 allocate the step's registers worse (fast process() LSTM 16/16,
// 32/32 and 64/1, where the step forms the input sums itself, 7-11% slower on Zen 4).
template <typename Scalar, int G, int M, int UB, int S, int NS>
inline void fast_in_regs_steps(Index C, const Scalar* x, Index ldx, const Scalar* wx,
                               const Scalar* bias, Index HP,
                               detail::Packet<Scalar> (&v)[NS][UB][2 * G - M]) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  constexpr int GX = 2 * G - M;
  P acc[NS][S][UB][G];
  for (int t = 0; t < NS; ++t)
    for (int b = 0; b < UB; ++b)
      for (int g = 0; g < G; ++g) {
        acc[t][0][b][g] = ei::pload<P>(bias + g * HP + b * W);
        for (int sp = 1; sp < S; ++sp) acc[t][sp][b][g] = ei::pset1<P>(Scalar(0));
      }
  Index k = 0;
  for (; k + S <= C; k += S)
    for (int sp = 0; sp < S; ++sp) {
      const Scalar* wk = wx + (k + sp) * (UB * G * W);
      P wv[UB][G];
      for (int b = 0; b < UB; ++b)
        for (int g = 0; g < G; ++g) wv[b][g] = ei::pload<P>(wk + (b * G + g) * W);
      for (int t = 0; t < NS; ++t) {
        const P av = ei::pset1<P>(x[t * ldx + k + sp]);
        for (int b = 0; b < UB; ++b)
          for (int g = 0; g < G; ++g) acc[t][sp][b][g] = ei::pmadd(av, wv[b][g], acc[t][sp][b][g]);
      }
    }
  for (; k < C; ++k) {
    const Scalar* wk = wx + k * (UB * G * W);
    P wv[UB][G];
    for (int b = 0; b < UB; ++b)
      for (int g = 0; g < G; ++g) wv[b][g] = ei::pload<P>(wk + (b * G + g) * W);
    for (int t = 0; t < NS; ++t) {
      const P av = ei::pset1<P>(x[t * ldx + k]);
      for (int b = 0; b < UB; ++b)
        for (int g = 0; g < G; ++g) acc[t][0][b][g] = ei::pmadd(av, wv[b][g], acc[t][0][b][g]);
    }
  }
  for (int t = 0; t < NS; ++t)
    for (int b = 0; b < UB; ++b) {
      for (int g = 0; g < G; ++g) {
        if constexpr (S == 4)
          v[t][b][g] = ei::padd(ei::padd(acc[t][0][b][g], acc[t][1][b][g]),
                                ei::padd(acc[t][2][b][g], acc[t][3][b][g]));
        else if constexpr (S == 2)
          v[t][b][g] = ei::padd(acc[t][0][b][g], acc[t][1][b][g]);
        else
          v[t][b][g] = acc[t][0][b][g];
      }
      for (int j = G; j < GX; ++j) v[t][b][j] = ei::pload<P>(bias + j * HP + b * W);
    }
}

// The input sums of a pass of U blocks starting at block b: from stored sums (xin, fast_in's) or
// formed from x. Every pass of U blocks uses fast_in_splits(U, G) chains per sum either way.
template <typename Scalar, int G, int M>
struct FastIn {
  const Scalar* xin;  // [GX][HP] for this step, or null: from x
  const Scalar* x;
  Index C;
  const Scalar* fx;  // the layer's input weights (fast layout), biases [GX][HP]
  const Scalar* fb;
  template <int U>
  inline void get(Index b, Index HP, detail::Packet<Scalar> (&v)[U][2 * G - M]) const {
    namespace ei = Eigen::internal;
    using P = detail::Packet<Scalar>;
    constexpr Index W = kW<Scalar>;
    if (xin) {
      for (int bb = 0; bb < U; ++bb)
        for (int j = 0; j < 2 * G - M; ++j)
          v[bb][j] = ei::pload<P>(xin + j * HP + (b + bb) * W);
    } else {
      fast_in_regs<Scalar, G, M, U, fast_in_splits(U, G)>(C, x, fx + b * C * G * W,
                                                           fb + b * W, HP, v);
    }
  }
};

// The input sums of the fast step for `steps` steps: x [steps][ldx] -> out [steps][L.fin], per
// step [GX][HP] (fast_in_regs). Pass by pass (a pass's weights then serve every step from L1),
// the steps inside.
template <typename Scalar, int G, int M, int U>
inline void fast_in_n(int n, Index C, const Scalar* x, Index ldx, Index steps, const Scalar* wx,
                      const Scalar* bias, Scalar* out, Index ldo, Index HP) {
  if constexpr (U > 1) {
    if (n < U) return fast_in_n<Scalar, G, M, U - 1>(n, C, x, ldx, steps, wx, bias, out, ldo, HP);
  }
  using P = detail::Packet<Scalar>;
  constexpr int S = fast_in_splits(U, G), NS = fast_in_nsteps(S * U * G), GX = 2 * G - M;
  auto store = [&](Index t, const P (&v)[U][GX]) {  // step t's sums, slot-major [GX][HP]
    for (int b = 0; b < U; ++b)
      for (int j = 0; j < GX; ++j)
        Eigen::internal::pstore(out + t * ldo + j * HP + b * kW<Scalar>, v[b][j]);
  };
  Index t = 0;
  if constexpr (NS > 1) {
    for (; t + NS <= steps; t += NS) {
      P v[NS][U][GX];
      fast_in_regs_steps<Scalar, G, M, U, S, NS>(C, x + t * ldx, ldx, wx, bias, HP, v);
      for (int s = 0; s < NS; ++s) store(t + s, v[s]);
    }
  }
  for (; t < steps; ++t) {
    P v[U][GX];
    fast_in_regs<Scalar, G, M, U, S>(C, x + t * ldx, wx, bias, HP, v);
    store(t, v);
  }
}

template <typename Scalar, int G, int M>
FUSEDRNN_FLATTEN void fast_in(const isa::StepLayer<Scalar>& L, const Scalar* x, Index ldx, Index steps,
             Scalar* out) {
  constexpr Index W = kW<Scalar>;
  constexpr int UB = fast_blocks(2 * G - M);
  const Index nb = detail::ceil_div(L.H, W), HP = nb * W, ub = L.fub;
  const Index bs = L.C * G * W;
  for (Index b = 0; b < nb; b += ub) {
    const int n = int(std::min(ub, nb - b));
    fast_in_n<Scalar, G, M, UB>(n, L.C, x, ldx, steps, L.fx + b * bs, L.fb_ih + b * W,
                                out + b * W, L.fin, HP);
  }
}

// Staggered epilogues (LSTM). A pass of UB > 1 blocks forms every block's sums over
// k < (UB - 1) W first (h's units of blocks 0..UB-2), then, block by block, the rest of that
// block's sums (the last block's units) and the block's epilogue. Block 0's epilogue (two
// activations in a row) then runs while the later blocks' products finish, and with h written
// in place the next step's products over those units can start while the last block's
// epilogue runs; with every block's products first and the epilogues after, a step was the
// products' time plus a whole epilogue's latency. The order of the multiply-adds in each chain
// is unchanged, so the values are the same bits. Zen 5 (2 vCPU EPYC, 2026-12-06), fast Stream,
// bench/stream_latency, the two builds alternated 8 times (two such A/Bs), medians of the
// per-run ratios to RTNeural's faster backend, LSTM: process() 32/1 0.936 -> 0.837 and 0.862 ->
// 0.764, 32/32 0.858 -> 0.792 and 0.870 -> 0.825; step() 32/1 1.111 -> 1.000 and 1.048 -> 0.895,
// 32/32 1.032 -> 0.970 and 0.997 -> 0.928. The GRU (one activation fewer in its chain) lost
// 5-8% in process() with it (32/1 0.585 -> 0.633, 32/32 0.598 -> 0.634), so it keeps one loop.
// With 16 vector registers (AVX2: 12 accumulators, passes of 3 blocks of 8) the later blocks'
// sums are spilled to the stack around each earlier block's epilogue: one loop there. Zen 3,
// fast Stream, the builds alternated 7 times (two A/Bs, medians of the per-run ratios to
// RTNeural's faster backend), LSTM without / with: process() 16/1 0.660 / 0.709 and 0.667 /
// 0.709, 16/16 0.687 / 0.718 and 0.687 / 0.723, 32/1 0.812 / 0.858 and 0.812 / 0.862, 32/32
// 0.837 / 0.868 and 0.837 / 0.866; step() 32/1 1.031 / 1.069 and 1.000 / 1.069, 32/32 0.920 /
// 0.960 and 0.919 / 0.958.
template <int G>
constexpr bool kStagger = G == 4 && kFastAcc >= 24;

// f(std::integral_constant<int, B>()) for B = 0, 1, ...: the blocks of a pass with B known at
// compile time.
template <typename F, int... Bs>
inline void for_blocks(F&& f, std::integer_sequence<int, Bs...>) {
  (f(std::integral_constant<int, Bs>()), ...);
}

// One pass over UB blocks from block b0: every slot's sum (the recurrent products added to the
// pass's input sums, in.get), then epi(b, sums) per block b < UB of the pass (sums[j] the packet
// of slot j).
template <typename Scalar, int G, int M, int UB, int S, int KS, typename In, typename Epi>
inline void fast_pass(Index k_rt, const Scalar* h, const Scalar* wh, const In& in, Index b0,
                      Index HP, Epi&& epi) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  constexpr int GX = 2 * G - M;
  const Index K = KS > 0 ? KS : k_rt;
  P acc[S][UB][GX];
  in.template get<UB>(b0, HP, acc[0]);
  for (int b = 0; b < UB; ++b)
    for (int j = 0; j < GX; ++j)
      for (int sp = 1; sp < S; ++sp) acc[sp][b][j] = ei::pset1<P>(Scalar(0));
  // Recurrent stream: gate g < M into slot g, the others into slot G + g - M.
  constexpr auto slot = [](int g) { return g < M ? g : G + g - M; };
  // k < ka for every block first (the units of blocks 0..UB-2, written first by the previous
  // step's epilogues), then block by block the rest (the last block's units) and that block's
  // epilogue: see "Staggered epilogues" above. Each chain still takes its k in ascending order,
  // in the same groups of S, so every sum is the one of a single k loop.
  const Index ka = kStagger<G> && UB > 1 ? std::min(K, Index(UB - 1) * W) / S * S : K;
  Index k = 0;
  for (; k + S <= ka; k += S)
    for (int sp = 0; sp < S; ++sp) {
      const P av = ei::pset1<P>(h[k + sp]);
      const Scalar* wk = wh + (k + sp) * (UB * G * W);
      for (int b = 0; b < UB; ++b)
        for (int g = 0; g < G; ++g)
          acc[sp][b][slot(g)] =
              ei::pmadd(av, ei::pload<P>(wk + (b * G + g) * W), acc[sp][b][slot(g)]);
    }
  // Block by block with b a compile-time constant (a run-time b put acc on the stack).
  auto block = [&](auto bc) {
    constexpr int b = decltype(bc)::value;
    Index kb = k;
    for (; kb + S <= K; kb += S)
      for (int sp = 0; sp < S; ++sp) {
        const P av = ei::pset1<P>(h[kb + sp]);
        const Scalar* wk = wh + (kb + sp) * (UB * G * W) + b * G * W;
        for (int g = 0; g < G; ++g)
          acc[sp][b][slot(g)] = ei::pmadd(av, ei::pload<P>(wk + g * W), acc[sp][b][slot(g)]);
      }
    if constexpr (KS == 0 || KS % S != 0)  // (a fixed K that S divides has no remainder)
      for (; kb < K; ++kb) {
        const P av = ei::pset1<P>(h[kb]);
        const Scalar* wk = wh + kb * (UB * G * W) + b * G * W;
        for (int g = 0; g < G; ++g)
          acc[0][b][slot(g)] = ei::pmadd(av, ei::pload<P>(wk + g * W), acc[0][b][slot(g)]);
      }
    P v[GX];
    for (int j = 0; j < GX; ++j) {
      if constexpr (S == 4)
        v[j] = ei::padd(ei::padd(acc[0][b][j], acc[1][b][j]), ei::padd(acc[2][b][j], acc[3][b][j]));
      else if constexpr (S == 2)
        v[j] = ei::padd(acc[0][b][j], acc[1][b][j]);
      else
        v[j] = acc[0][b][j];
    }
    epi(Index(b), v);
  };
  for_blocks(block, std::make_integer_sequence<int, UB>());
}

template <typename Scalar, int G, int M, int KS, int U, typename In, typename Epi>
inline void fast_n(int n, Index K, const Scalar* h, const Scalar* wh, const In& in, Index b0,
                   Index HP, Epi&& epi) {
  if constexpr (U > 1) {
    if (n < U) return fast_n<Scalar, G, M, KS, U - 1>(n, K, h, wh, in, b0, HP, epi);
  }
  fast_pass<Scalar, G, M, U, fast_pass_splits<Scalar>(U * (2 * G - M)), KS>(K, h, wh, in, b0, HP,
                                                                            epi);
}

// Every block: its slot sums and epi(block, sums). Passes of UB blocks (the last one shorter),
// pass p's weights at block p*UB's offsets; descending when `down` (only with UB = 1: every
// pass then has one block, the same code). A shorter last pass runs first: its epilogue then
// overlaps the full passes' products, and the step ends on the epilogues of a full pass's
// blocks side by side rather than on one block's alone (several passes that fit L1: AVX2's
// H = 25-48). Zen 3, fast Stream, the builds alternated 7 and 9 times, GRU: process() 32/1 137
// -> 134 ns, 32/32 225 -> 220, step() 32/1 231 -> 221, 32/32 351 -> 341; the LSTM within 1%.
template <typename Scalar, int G, int M, int KS, int UB, typename In, typename Epi>
inline void fast_all(Index nb, Index K, const Scalar* h, const Scalar* fh, const In& in,
                     Index HP, bool down, Epi&& epi) {
  constexpr Index W = kW<Scalar>;
  constexpr int S = fast_pass_splits<Scalar>(UB * (2 * G - M));
  auto pass = [&](Index b) {
    fast_pass<Scalar, G, M, UB, S, KS>(
        K, h, fh + b * K * G * W, in, b, HP,
        [&](Index j, const detail::Packet<Scalar>* v) { epi(b + j, v); });
  };
  if constexpr (UB == 1) {
    if (down) {
      for (Index b = nb; b-- > 0;) pass(b);
      return;
    }
  }
  const Index full = nb / UB * UB;
  if (full < nb)
    fast_n<Scalar, G, M, KS, UB>(int(nb - full), K, h, fh + full * K * G * W, in, full, HP,
                                 [&](Index j, const detail::Packet<Scalar>* v) { epi(full + j, v); });
  for (Index b = 0; b < full; b += UB) pass(b);
}

// The recurrent passes of a layer (ub_of: one block each, alternating direction, or
// fast_blocks(GX)); the input sums from xin (fast_in's, for this step) or, xin null, formed from
// x pass by pass in registers.
template <typename Scalar, int G, int M, int KS, typename Epi>
inline void fast_layer(const isa::StepLayer<Scalar>& L, Index nb, Index K, const Scalar* x,
                       const Scalar* xin, const Scalar* h, Index HP, Epi&& epi) {
  constexpr int UB = fast_blocks(2 * G - M);
  const FastIn<Scalar, G, M> in{xin, x, L.C, L.fx, L.fb_ih};
  if (L.fub == 1) {
    const bool down = (L.visits++ & 1u) != 0;
    fast_all<Scalar, G, M, KS, 1>(nb, K, h, L.fh, in, HP, down, epi);
  } else {
    fast_all<Scalar, G, M, KS, UB>(nb, K, h, L.fh, in, HP, false, epi);
  }
}

template <typename Scalar, int HS>
FUSEDRNN_FLATTEN void lstm_fast(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* xin, Scalar* h,
               Scalar* c, Scalar* scratch) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  const Index R = L.P > 0 ? L.P : H;
  const bool one_block = L.fub == 1;
  // The new h (or m, before the projection) straight into h when one pass reads all of h.
  const bool in_place = L.P == 0 && !one_block && nb <= fast_blocks(4);
  Scalar* out = in_place ? h : Scratch<Scalar>(scratch, HP).out;
  const Scalar* pp = L.fpeep;
  const FastAct<P> act{nb == 1};
  fast_layer<Scalar, 4, 4, HS>(L, nb, R, x, xin, h, HP, [&](Index b, const P* a) {
    const Index u0 = b * W;
    const P cp = load_units(c, u0, H);
    P pi = a[0], pf = a[1];
    if (pp) {
      pi = ei::pmadd(ei::pload<P>(pp + u0), cp, pi);
      pf = ei::pmadd(ei::pload<P>(pp + HP + u0), cp, pf);
    }
    const P i = act.sigmoid(pi), f = act.sigmoid(pf);
    const P g = act.tanh(a[2]);
    const P cn = ei::pmadd(f, cp, ei::pmul(i, g));
    P po = a[3];
    if (pp) po = ei::pmadd(ei::pload<P>(pp + 2 * HP + u0), cn, po);
    store_units(c, u0, H, cn);
    store_units(out, u0, H, ei::pmul(act.sigmoid(po), act.tanh(cn)));
  });
  if (!in_place) project_or_copy(L, out, h);
}

// GRU reset_after: slots r, z (input and recurrent sums merged, b_ih + b_hh), n's input sum
// (+ b_in), n's recurrent sum (+ b_hn).
template <typename Scalar, int HS>
FUSEDRNN_FLATTEN void gru_after_fast(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* xin,
                    Scalar* h, Scalar*, Scalar* scratch) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  const bool one_block = L.fub == 1;
  const bool in_place = !one_block && nb <= fast_blocks(4);
  Scalar* out = in_place ? h : Scratch<Scalar>(scratch, HP).out;
  const FastAct<P> act{nb == 1};
  fast_layer<Scalar, 3, 2, HS>(L, nb, H, x, xin, h, HP, [&](Index b, const P* a) {
    const Index u0 = b * W;
    const P r = act.sigmoid(a[0]), z = act.sigmoid(a[1]);
    const P n = act.tanh(ei::pmadd(r, a[3], a[2]));
    store_units(out, u0, H, detail::gru_update(z, n, load_units(h, u0, H)));
  });
  if (!in_place) std::copy(out, out + H, h);
}

template <typename Scalar, int HS>
FUSEDRNN_FLATTEN void rnn_fast(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* xin, Scalar* h,
              Scalar*, Scalar* scratch) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  const bool one_block = L.fub == 1;
  const bool in_place = !one_block && nb <= fast_blocks(1);
  Scalar* out = in_place ? h : Scratch<Scalar>(scratch, HP).out;
  const bool tanh_act = L.act == Nonlinearity::tanh;
  // One activation a block, next to LSTM's five: the short-chain tanh up to two blocks. Zen 4,
  // fast process() (a probe linking the library, medians of three), ns a step, short chain /
  // few operations: 32/1 39.0 / 43.8, 32/32 57.4 / 58.3, 48/1 65.1 / 65.4, 64/1 105.4 / 102.2,
  // 64/64 197.7 / 192.4, 128/1 and 128/128 within 1%.
  const FastAct<P> act{nb <= 2};
  fast_layer<Scalar, 1, 1, HS>(L, nb, H, x, xin, h, HP, [&](Index b, const P* a) {
    const P v = a[0];
    store_units(out, b * W, H,
                tanh_act ? act.tanh(v)
                         : ei::pselect(ei::pcmp_lt(v, ei::pzero(v)), ei::pzero(v), v));
  });
  if (!in_place) std::copy(out, out + H, h);
}

template <typename Scalar, int HS>
struct LstmFast {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* gx, Scalar* h,
                  Scalar* c, Scalar* s) { lstm_fast<Scalar, HS>(L, x, gx, h, c, s); }
};
template <typename Scalar, int HS>
struct GruAfterFast {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* gx, Scalar* h,
                  Scalar* c, Scalar* s) { gru_after_fast<Scalar, HS>(L, x, gx, h, c, s); }
};
template <typename Scalar, int HS>
struct RnnFast {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, const Scalar* gx, Scalar* h,
                  Scalar* c, Scalar* s) { rnn_fast<Scalar, HS>(L, x, gx, h, c, s); }
};

// The fast layout; a GRU reset_before layer (r multiplies h before its product) gets the bitwise
// fused step instead. Same storage as fuse (fused_size).
template <typename Scalar>
void fuse_fast(isa::StepLayer<Scalar>& L, const Scalar* w_ih, const Scalar* w_hh, Scalar* out) {
  const bool before = L.cell == isa::StepCell::gru && L.variant == GruVariant::reset_before;
  if (before) return fuse(L, w_ih, w_hh, out);
  const Gates g = gates_of(L);
  const Index H = L.H, R = L.P > 0 ? L.P : H;
  const Index HP = detail::ceil_div(H, kW<Scalar>) * kW<Scalar>;
  const Index GX = L.cell == isa::StepCell::gru ? 4 : g.x;  // accumulator slots per block
  const Index UB = ub_of<Scalar>(GX, g.x, H, L.C, R);
  L.fub = int(UB);
  L.fx = out;
  out = lay_out(w_ih, L.C, g.x, 0, H, out, UB);
  L.fh = out;
  out = lay_out(w_hh, R, g.h, 0, H, out, UB);
  // Slot biases [GX][HP]: b_ih + b_hh for merged gates; the GRU's n: b_in, then b_hn.
  Scalar* b = out;
  for (Index j = 0; j < GX; ++j)
    for (Index u = 0; u < HP; ++u) {
      Scalar v = 0;
      if (u < H) {
        const bool gru = L.cell == isa::StepCell::gru;
        if (gru && j == 2)
          v = L.b_ih ? L.b_ih[2 * H + u] : Scalar(0);
        else if (gru && j == 3)
          v = L.b_hh ? L.b_hh[2 * H + u] : Scalar(0);
        else
          v = (L.b_ih ? L.b_ih[j * H + u] : Scalar(0)) + (L.b_hh ? L.b_hh[j * H + u] : Scalar(0));
      }
      b[j * HP + u] = v;
    }
  L.fb_ih = b;
  L.fb_hh = nullptr;
  out += round16(GX * HP);
  L.fpeep = nullptr;
  if (L.w_peep) {
    L.fpeep = out;
    out = lay_out_gates(L.w_peep, Index(3), H, out);
  }
  L.fin = round16(GX * HP);
  L.fused_in = L.cell == isa::StepCell::lstm  ? &fast_in<Scalar, 4, 4>
               : L.cell == isa::StepCell::gru ? &fast_in<Scalar, 3, 2>
                                              : &fast_in<Scalar, 1, 1>;
  const bool fixed = L.P == 0;
  switch (L.cell) {
    case isa::StepCell::lstm: pick<Scalar, LstmFast>(L, H, fixed); break;
    case isa::StepCell::gru: pick<Scalar, GruAfterFast>(L, H, fixed); break;
    default: pick<Scalar, RnnFast>(L, H, fixed); break;
  }
}

}  // namespace

void fill_fused_step(isa::Table& t) {
  t.f32.fused_size = &fused_size<float>;
  t.f64.fused_size = &fused_size<double>;
  t.f32.fuse = &fuse<float>;
  t.f64.fuse = &fuse<double>;
  t.f32.fuse_fast = &fuse_fast<float>;
  t.f64.fuse_fast = &fuse_fast<double>;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
