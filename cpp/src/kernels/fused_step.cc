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
// so one pass per group of blocks forms every gate's input and recurrent sums in registers
// (UB blocks x G gates accumulator packets, sized to the register file) into gate-major
// buffers, and the gate pass of kernels/*_pointwise.h (the very functions of the batch kernels)
// then runs once over all units (its packets independent iterations of one loop, which the
// core overlaps; per block, each block's activations waited on the previous one's). For input width 1 the input product is one multiply-add per
// gate packet (an axpy). For the common H (8, 16, 32, 48, 64 without projection) the step is a
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
#include "isa/copy.inc"
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
void lstm_fused(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar* c,
                Scalar* scratch) {
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  const Index R = L.P > 0 ? L.P : H;
  Scratch<Scalar> s(scratch, HP);
  all_chains<Scalar, 4, 0>(nb, L.C, x, L.fx, s.gx, HP);
  all_chains<Scalar, 4, HS>(nb, R, h, L.fh, s.gh, HP);
  detail::lstm_pointwise_forward(H, HP, s.gx, s.gh, L.fb_ih, L.fb_hh, L.fpeep, c, c, s.out,
                                 static_cast<Scalar*>(nullptr), static_cast<Scalar*>(nullptr));
  project_or_copy(L, s.out, h);
}

template <typename Scalar, int HS>
void gru_after_fused(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar*,
                     Scalar* scratch) {
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  Scratch<Scalar> s(scratch, HP);
  all_chains<Scalar, 3, 0>(nb, L.C, x, L.fx, s.gx, HP);
  all_chains<Scalar, 3, HS>(nb, H, h, L.fh, s.gh, HP);
  detail::gru_after_pointwise_forward(H, HP, s.gx, s.gh, L.fb_ih, L.fb_hh, h, s.out,
                                      static_cast<Scalar*>(nullptr),
                                      static_cast<Scalar*>(nullptr));
  std::copy(s.out, s.out + H, h);
}

// reset_before: r and z first (their recurrent sums from h), then n's recurrent sum from
// q = r*h over every unit (gates + 3*HP), then the candidate and the new state.
template <typename Scalar, int HS>
void gru_before_fused(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar*,
                      Scalar* scratch) {
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  Scratch<Scalar> s(scratch, HP);
  all_chains<Scalar, 3, 0>(nb, L.C, x, L.fx, s.gx, HP);
  all_chains<Scalar, 2, HS>(nb, H, h, L.fh, s.gh, HP);  // gates r, z of gh [3][HP]
  detail::gru_before_pointwise_forward_rz(H, HP, s.gx, s.gh, L.fb_ih, L.fb_hh, h, s.gates);
  all_chains<Scalar, 1, HS>(nb, H, s.gates + 3 * HP, L.fhn, s.gh + 2 * HP, HP);  // q w_hnᵀ
  detail::gru_before_pointwise_forward_n(H, HP, s.gx, s.gh, L.fb_ih, L.fb_hh, h, s.out,
                                         static_cast<Scalar*>(nullptr), s.gates);
  std::copy(s.out, s.out + H, h);
}

template <typename Scalar, int HS>
void rnn_fused(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar*,
               Scalar* scratch) {
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  Scratch<Scalar> s(scratch, HP);
  all_chains<Scalar, 1, 0>(nb, L.C, x, L.fx, s.gx, HP);
  all_chains<Scalar, 1, HS>(nb, H, h, L.fh, s.gh, HP);
  detail::rnn_pointwise_forward(H, L.act == Nonlinearity::tanh, s.gx, s.gh, L.fb_ih, L.fb_hh,
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

template <typename Scalar, template <typename, int> class F>
auto pick(Index H, bool fixed) -> void (*)(const isa::StepLayer<Scalar>&, const Scalar*, Scalar*,
                                           Scalar*, Scalar*) {
  if (fixed) switch (H) {
      case 8: return &F<Scalar, 8>::run;
      case 16: return &F<Scalar, 16>::run;
      case 32: return &F<Scalar, 32>::run;
      case 48: return &F<Scalar, 48>::run;
      case 64: return &F<Scalar, 64>::run;
      default: break;
    }
  return &F<Scalar, 0>::run;
}
template <typename Scalar, int HS>
struct LstmF {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar* c,
                  Scalar* s) { lstm_fused<Scalar, HS>(L, x, h, c, s); }
};
template <typename Scalar, int HS>
struct GruAfterF {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar* c,
                  Scalar* s) { gru_after_fused<Scalar, HS>(L, x, h, c, s); }
};
template <typename Scalar, int HS>
struct GruBeforeF {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar* c,
                  Scalar* s) { gru_before_fused<Scalar, HS>(L, x, h, c, s); }
};
template <typename Scalar, int HS>
struct RnnF {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar* c,
                  Scalar* s) { rnn_fused<Scalar, HS>(L, x, h, c, s); }
};

template <typename Scalar>
void fuse(isa::StepLayer<Scalar>& L, const Scalar* w_ih, const Scalar* w_hh, Scalar* out) {
  const Gates g = gates_of(L);
  const Index H = L.H, R = L.P > 0 ? L.P : H;
  const bool before = L.cell == isa::StepCell::gru && L.variant == GruVariant::reset_before;
  L.fx = out;
  out = lay_out(w_ih, L.C, g.x, 0, H, out);
  L.fh = out;
  out = lay_out(w_hh, R, g.h, 0, H, out);
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
  const bool fixed = L.P == 0;  // the recurrent K is H
  switch (L.cell) {
    case isa::StepCell::lstm: L.fused = pick<Scalar, LstmF>(H, fixed); break;
    case isa::StepCell::gru:
      L.fused = before ? pick<Scalar, GruBeforeF>(H, fixed) : pick<Scalar, GruAfterF>(H, fixed);
      break;
    default: L.fused = pick<Scalar, RnnF>(H, fixed); break;
  }
}

// ---------------------------------------------------------------------------------------------
// The fast step (StreamOptions::fast): the same products and activations, the sums reassociated
// for speed, so not bitwise Model::forward (the tolerance is derived and tested: stream.h,
// tests/cpp/test_model.cc). Per block of units, G gates:
//   * input and recurrent products in one pass, into the same accumulators where the cell adds
//     them anyway (every gate of the LSTM and the Elman RNN, r and z of the GRU; the GRU's n
//     keeps its input part and its recurrent part apart, as r multiplies only the latter): GX =
//     2G - M accumulator slots per block, M the merged gates;
//   * each slot's sum split into S interleaved chains (k = s, s + S, ...: S times shorter
//     dependency chains), started from the biases (b_ih + b_hh pre-summed at load) and zeros,
//     added pairwise at the end;
//   * the activations from these sums directly (no separate bias adds).
// Weights: fx [pass][k < C][b][gate][W] and fh [pass][k < R][b][gate][W] as the bitwise step's,
// in passes of fast_blocks(GX) blocks; biases [GX][HP].

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

template <typename Scalar, int G, int M, int UB, int S, int KS>
inline void fast_pass(Index C, Index k_rt, const Scalar* x, const Scalar* wx, const Scalar* h,
                      const Scalar* wh, const Scalar* bias, Scalar* out, Index HP) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  constexpr int GX = 2 * G - M;
  const Index K = KS > 0 ? KS : k_rt;
  P acc[S][UB][GX];
  for (int b = 0; b < UB; ++b)
    for (int j = 0; j < GX; ++j) {
      acc[0][b][j] = ei::pload<P>(bias + j * HP + b * W);
      for (int sp = 1; sp < S; ++sp) acc[sp][b][j] = ei::pset1<P>(Scalar(0));
    }
  // Input stream: gate g into slot g.
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
  // Recurrent stream: gate g < M into slot g, the others into slot G + g - M.
  constexpr auto slot = [](int g) { return g < M ? g : G + g - M; };
  k = 0;
  for (; k + S <= K; k += S)
    for (int sp = 0; sp < S; ++sp) {
      const P av = ei::pset1<P>(h[k + sp]);
      const Scalar* wk = wh + (k + sp) * (UB * G * W);
      for (int b = 0; b < UB; ++b)
        for (int g = 0; g < G; ++g)
          acc[sp][b][slot(g)] =
              ei::pmadd(av, ei::pload<P>(wk + (b * G + g) * W), acc[sp][b][slot(g)]);
    }
  if constexpr (KS == 0 || KS % S != 0)  // (a fixed K that S divides has no remainder)
    for (; k < K; ++k) {
      const P av = ei::pset1<P>(h[k]);
      const Scalar* wk = wh + k * (UB * G * W);
      for (int b = 0; b < UB; ++b)
        for (int g = 0; g < G; ++g)
          acc[0][b][slot(g)] =
              ei::pmadd(av, ei::pload<P>(wk + (b * G + g) * W), acc[0][b][slot(g)]);
    }
  for (int b = 0; b < UB; ++b)
    for (int j = 0; j < GX; ++j) {
      P v;
      if constexpr (S == 4)
        v = ei::padd(ei::padd(acc[0][b][j], acc[1][b][j]), ei::padd(acc[2][b][j], acc[3][b][j]));
      else if constexpr (S == 2)
        v = ei::padd(acc[0][b][j], acc[1][b][j]);
      else
        v = acc[0][b][j];
      ei::pstore(out + j * HP + b * W, v);
    }
}

template <typename Scalar, int G, int M, int KS, int U>
inline void fast_n(int n, Index C, Index K, const Scalar* x, const Scalar* wx, const Scalar* h,
                   const Scalar* wh, const Scalar* bias, Scalar* out, Index HP) {
  if constexpr (U > 1) {
    if (n < U) return fast_n<Scalar, G, M, KS, U - 1>(n, C, K, x, wx, h, wh, bias, out, HP);
  }
  fast_pass<Scalar, G, M, U, fast_splits(U * (2 * G - M)), KS>(C, K, x, wx, h, wh, bias, out,
                                                               HP);
}

// Every block's slot sums into out [GX][HP].
template <typename Scalar, int G, int M, int KS>
inline void fast_all(Index nb, Index C, Index K, const Scalar* x, const Scalar* fx,
                     const Scalar* h, const Scalar* fh, const Scalar* bias, Scalar* out,
                     Index HP) {
  constexpr int UB = fast_blocks(2 * G - M);
  constexpr Index W = kW<Scalar>;
  Index b = 0;
  for (; b + UB <= nb; b += UB)
    fast_pass<Scalar, G, M, UB, fast_splits(UB * (2 * G - M)), KS>(
        C, K, x, fx + b * C * G * W, h, fh + b * K * G * W, bias + b * W, out + b * W, HP);
  if (b < nb)
    fast_n<Scalar, G, M, KS, UB>(int(nb - b), C, K, x, fx + b * C * G * W, h, fh + b * K * G * W,
                                 bias + b * W, out + b * W, HP);
}

template <typename Scalar, int HS>
void lstm_fast(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar* c,
               Scalar* scratch) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  const Index R = L.P > 0 ? L.P : H;
  Scratch<Scalar> s(scratch, HP);
  fast_all<Scalar, 4, 4, HS>(nb, L.C, R, x, L.fx, h, L.fh, L.fb_ih, s.gates, HP);
  const Scalar* a = s.gates;
  const Scalar* pp = L.fpeep;
  Scalar* out = L.P > 0 ? s.out : h;
  detail::for_packets<Scalar>(H, [&](auto ld, auto st) {
    const P cp = ld(c);
    P pi = ld(a), pf = ld(a + HP);
    if (pp) {
      pi = ei::pmadd(ld(pp), cp, pi);
      pf = ei::pmadd(ld(pp + HP), cp, pf);
    }
    const P i = detail::psigmoid(pi), f = detail::psigmoid(pf);
    const P g = detail::ptanh(ld(a + 2 * HP));
    const P cn = ei::pmadd(f, cp, ei::pmul(i, g));
    P po = ld(a + 3 * HP);
    if (pp) po = ei::pmadd(ld(pp + 2 * HP), cn, po);
    st(c, cn);
    st(out, ei::pmul(detail::psigmoid(po), detail::ptanh(cn)));
  });
  if (L.P > 0) project_or_copy(L, s.out, h);
}

// GRU reset_after: slots r, z (input and recurrent sums merged, b_ih + b_hh), n's input sum
// (+ b_in), n's recurrent sum (+ b_hn).
template <typename Scalar, int HS>
void gru_after_fast(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar*,
                    Scalar* scratch) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  Scratch<Scalar> s(scratch, HP);
  fast_all<Scalar, 3, 2, HS>(nb, L.C, H, x, L.fx, h, L.fh, L.fb_ih, s.gates, HP);
  const Scalar* a = s.gates;
  detail::for_packets<Scalar>(H, [&](auto ld, auto st) {
    const P r = detail::psigmoid(ld(a)), z = detail::psigmoid(ld(a + HP));
    const P n = detail::ptanh(ei::pmadd(r, ld(a + 3 * HP), ld(a + 2 * HP)));
    st(h, detail::gru_update(z, n, ld(h)));
  });
}

template <typename Scalar, int HS>
void rnn_fast(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar*,
              Scalar* scratch) {
  namespace ei = Eigen::internal;
  using P = detail::Packet<Scalar>;
  constexpr Index W = kW<Scalar>;
  const Index H = HS > 0 ? HS : L.H, nb = detail::ceil_div(H, W), HP = nb * W;
  Scratch<Scalar> s(scratch, HP);
  fast_all<Scalar, 1, 1, HS>(nb, L.C, H, x, L.fx, h, L.fh, L.fb_ih, s.gates, HP);
  const bool tanh_act = L.act == Nonlinearity::tanh;
  const Scalar* a = s.gates;
  detail::for_packets<Scalar>(H, [&](auto ld, auto st) {
    const P v = ld(a);
    st(h, tanh_act ? detail::ptanh(v) : ei::pselect(ei::pcmp_lt(v, ei::pzero(v)), ei::pzero(v), v));
  });
}

template <typename Scalar, int HS>
struct LstmFast {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar* c,
                  Scalar* s) { lstm_fast<Scalar, HS>(L, x, h, c, s); }
};
template <typename Scalar, int HS>
struct GruAfterFast {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar* c,
                  Scalar* s) { gru_after_fast<Scalar, HS>(L, x, h, c, s); }
};
template <typename Scalar, int HS>
struct RnnFast {
  static void run(const isa::StepLayer<Scalar>& L, const Scalar* x, Scalar* h, Scalar* c,
                  Scalar* s) { rnn_fast<Scalar, HS>(L, x, h, c, s); }
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
  const Index UB = fast_blocks(int(GX));
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
  const bool fixed = L.P == 0;
  switch (L.cell) {
    case isa::StepCell::lstm: L.fused = pick<Scalar, LstmFast>(H, fixed); break;
    case isa::StepCell::gru: L.fused = pick<Scalar, GruAfterFast>(H, fixed); break;
    default: L.fused = pick<Scalar, RnnFast>(H, fixed); break;
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
