// The regularised / normalised LSTM kernels (fusedrnn/lstm_ln.h): layer norm (haste's or TF
// Addons' placement), zoneout on h and c, a variational dropout mask on h_{t-1}.
// Recipe as lstm.cc: the input projection in chunks of steps (skeleton.h), per step one packed
// GEMM for the recurrent product, then per row (layer norm needs a row's statistics) the
// pointwise passes of lstm_ln_pointwise.h. Backward walks the steps in reverse: per row the
// pointwise backward and the layer-norm backward of the two products, per step one GEMM for the
// recurrent gradient; after the loop the GEMMs of skeleton.h's epilogue and column sums for the
// bias and layer-norm parameter gradients (deterministic: rows summed in order per column).
#include "isa/copy.inc"
#include "kernels/layout.h"
#include "kernels/lstm_ln_pointwise.h"
#include "kernels/skeleton.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

using detail::Index;

namespace {

// One template serves both cells: Lstm = true (G = 4 gate blocks, the cell state c) or false
// (the GRU: G = 3, no c; the regions of c are empty). Traits of the args structs:
template <class A> struct CellOf;
template <typename S> struct CellOf<LstmLnForwardArgs<S>> { static constexpr bool lstm = true; };
template <typename S> struct CellOf<LstmLnBackwardArgs<S>> { static constexpr bool lstm = true; };
template <typename S> struct CellOf<GruLnForwardArgs<S>> { static constexpr bool lstm = false; };
template <typename S> struct CellOf<GruLnBackwardArgs<S>> { static constexpr bool lstm = false; };
constexpr Index gates_of(bool lstm) { return lstm ? 4 : 3; }

// Cache, step order: hs [T+1, N, R], cs [T+1, N, H] (the state before each step; R = P with a
// projection, else H); hm [T, N, R] (h∘r, the recurrent product's input, with a recurrent
// mask); gates [T, N, 4H] (LSTM: i, f, g, o; GRU: r, z, ñ, q); xhat, hhat [T, N, GH] (the
// normalised products); chat, nn [T, N, H] (normalised c̃, n); inv [T, N, 3] (1/std of the
// input product, the recurrent product and c̃); ht [T, N, H] (projection only: h̃, the
// projection's input). Rows of finished sequences hold zeros in xhat, hhat, chat, ht (the
// parameter gradients multiply them by zero). The GRU has no cs, chat, nn, ht.
template <typename T>
struct Cache {
  T *hs, *cs, *hm, *gates, *xhat, *hhat, *chat, *nn, *inv, *ht;
};
template <bool Lstm, typename T>
Cache<T> cache_layout(const Dims& d, detail::Carver<T>& c) {
  const Index N = d.N, H = d.H, R = detail::rec_width(d), TN = d.T * N,
              GH = gates_of(Lstm) * H, CH = Lstm ? H : 0;
  Cache<T> k{};
  k.hs = c.take((d.T + 1) * N * R);
  k.cs = c.take((d.T + 1) * N * CH);
  k.hm = c.take(TN * R);
  k.gates = c.take(TN * 4 * H);
  k.xhat = c.take(TN * GH);
  k.hhat = c.take(TN * GH);
  k.chat = c.take(TN * CH);
  k.nn = c.take(TN * CH);
  k.inv = c.take(TN * 3);
  k.ht = c.take(d.P > 0 ? TN * H : 0);
  return k;
}

// Forward workspace: packed w_ih, w_hh (whole, or per gate block with gate_masks: G panels
// of [R, H] / [C, H]); a chunk of gx and xs (skeleton.h); gh [N, GH]; h [2, N, R] and c
// [2, N, H] double buffers; inference scratch: gates [N, 4H]; masked h [G, N, R] (gate_masks:
// one per block; otherwise [N, R] in inference); one step's drawn zoneout masks of h and c
// [2, N, H]; projection only: packed w_hr, h̃ [N, H] (inference) and h̃ W_hrᵀ [N, R].
template <typename T>
struct ForwardSpace {
  T *wih_p, *whh_p, *gx, *xs, *gh, *hbuf, *cbuf, *gbuf, *hmbuf, *zbuf, *whr_p, *htb, *pj;
};
template <bool Lstm, typename T>
ForwardSpace<T> forward_layout(const Dims& d, detail::Carver<T>& c) {
  using namespace detail;
  const Index N = d.N, H = d.H, R = rec_width(d), GH = gates_of(Lstm) * H,
              TC = proj_chunk_steps(d);
  const bool proj = d.P > 0;
  ForwardSpace<T> w{};
  w.wih_p = c.take_aligned(std::max(packed_bound(d.C, GH), gates_of(Lstm) * packed_bound(d.C, H)));
  w.whh_p = c.take_aligned(std::max(packed_bound(R, GH), gates_of(Lstm) * packed_bound(R, H)));
  w.gx = c.take(TC * N * GH);
  w.xs = c.take(TC * N * d.C);
  w.gh = c.take(N * GH);
  w.hbuf = c.take(2 * N * R);
  w.cbuf = c.take(2 * N * (Lstm ? H : 0));
  w.gbuf = c.take(N * 4 * H);
  w.hmbuf = c.take(gates_of(Lstm) * N * R);
  w.zbuf = c.take(2 * N * H);
  w.whr_p = proj ? c.take_aligned(packed_bound(H, R)) : c.take(0);
  w.htb = c.take(proj ? N * H : 0);
  w.pj = c.take(proj ? N * R : 0);
  return w;
}

// Backward workspace: da [T, N, GH] (step order, the pre-activation gradients; the GRU's input
// side), dgh [T, N, GH] (step order, the recurrent product's), dgx [T, N, GH] (time order, the
// input product's), dnl [T, N, H] (LSTM, step order, dn), dah [T, N, GH] (GRU with layer norm,
// step order: the recurrent side's pre-activation gradients), dhz and dc double buffers
// [2, N, H], dhg [N, H], one step's drawn zoneout masks [2, N, H], packed w_hh and w_ih (per
// gate block with gate_masks), gate_masks: the blocks' recurrent gradients dgp [G, N, H], and
// for the input masks' epilogue a block of rows of masked x and of a product, xm, xp
// [kMaskRows, C] each.
constexpr Index kMaskRows = 256;
// Projection only: dpj [T, N, R] (step order, the gradient of h̃ W_hrᵀ), dht [N, H] (of h̃),
// dzs [N, H] (scratch), zero [H] (zeros: the cell's passes add no recurrent term there),
// packed w_hr. The h-shaped buffers (dhz, dhg, dgp) are R wide.
template <typename T>
struct BackwardSpace {
  T *da, *dgh, *dgx, *dnl, *dah, *dhz, *dcb, *dhg, *zbuf, *whh_q, *wih_q, *dgp, *xm, *xp, *dpj,
      *dht, *dzs, *zero, *whr_q;
};
template <bool Lstm, typename T>
BackwardSpace<T> backward_layout(const Dims& d, detail::Carver<T>& c) {
  using namespace detail;
  const Index N = d.N, H = d.H, R = rec_width(d), GH = gates_of(Lstm) * H, TN = d.T * N;
  const bool proj = d.P > 0;
  BackwardSpace<T> w{};
  w.da = c.take(TN * GH);
  w.dgh = c.take(TN * GH);
  w.dgx = c.take(TN * GH);
  w.dnl = c.take(TN * (Lstm ? H : 0));
  w.dah = c.take(Lstm ? 0 : TN * GH);
  w.dhz = c.take(2 * N * R);
  w.dcb = c.take(2 * N * (Lstm ? H : 0));
  w.dhg = c.take(N * R);
  w.zbuf = c.take(2 * N * H);
  const Index G = gates_of(Lstm), MR = std::min(TN, kMaskRows);
  w.whh_q = c.take_aligned(std::max(packed_bound(GH, R), G * packed_bound(H, R)));
  w.wih_q = c.take_aligned(std::max(packed_bound(GH, d.C), G * packed_bound(H, d.C)));
  w.dgp = c.take(G * N * R);
  w.xm = c.take(MR * d.C);
  w.xp = c.take(MR * d.C);
  w.dpj = c.take(proj ? TN * R : 0);
  w.dht = c.take(proj ? N * H : 0);
  w.dzs = c.take(proj ? N * H : 0);
  w.zero = c.take(proj ? H : 0);
  w.whr_q = proj ? c.take_aligned(packed_bound(R, H)) : c.take(0);
  return w;
}

template <bool Lstm>
isa::Sizes sizes(const Dims& d) {
  detail::check_dims(Lstm ? "lstm_ln_sizes" : "gru_ln_sizes", d, Lstm);  // (P: LSTM only)
  return {detail::measure(d, &cache_layout<Lstm, float>),
          detail::measure(d, &forward_layout<Lstm, float>),
          detail::measure(d, &backward_layout<Lstm, float>)};
}

// ---------------------------------------------------------------------------------------------
// Argument checks.

void check_options(const char* fn, const Options& opt) {
  if (opt.precision != Precision::float32)
    detail::fail(std::string(fn) + ": precision must be float32 (no bfloat16 path)");
  if (opt.weights_packed)
    detail::fail(std::string(fn) + ": weights_packed is not supported");
}

void check_prob(const char* fn, const char* name, double p, bool has_mask) {
  if (!(p >= 0 && p < 1))
    detail::fail(std::string(fn) + ": " + name + " must lie in [0, 1), got " +
                 std::to_string(p));
  if (has_mask && p != 0)
    detail::fail(std::string(fn) + ": " + name + " must be 0 when its mask is given (the mask "
                 "is the training draw, the probability the evaluation expectation)");
}

void check_draw(const char* fn, bool draw, const void* mask, const char* name) {
  if (draw && mask)
    detail::fail(std::string(fn) + ": " + name + " must be null with zoneout_draw (the kernel "
                 "draws the masks from zoneout_seed)");
}

// zoneout_draw (fusedrnn/lstm_ln.h): the key of mask k (0: h, 1: c) and the mask of one row,
// elements i0 .. i0 + H - 1: 1 where the top 24 bits of SplitMix64's output are below
// ceil(p 2^24).
std::uint64_t zoneout_key(std::uint64_t seed, int k) {
  return seed ^ 0x5A6F6E656F75745Full ^ std::uint64_t(k);
}
template <typename Scalar>
void draw_mask_row(std::uint64_t key, std::uint64_t i0, Index H, Scalar p, Scalar* out) {
  const std::uint64_t thr = std::uint64_t(std::ceil(double(p) * 16777216.0));
  for (Index j = 0; j < H; ++j) {
    std::uint64_t z = key + (i0 + std::uint64_t(j) + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    out[j] = (z >> 40) < thr ? Scalar(1) : Scalar(0);
  }
}
// The zoneout mask row (null: none) and probability (the expectation where no mask) of row n at
// time t: the caller's array, or drawn into buf [N, H] (zoneout_draw; probability then 0).
template <typename Scalar>
void zoneout_row(const Scalar* mask, Scalar p, bool draw, std::uint64_t key, Index t, Index n,
                 Index N, Index H, Scalar* buf, const Scalar*& z, Scalar& pz) {
  z = mask ? mask + (t * N + n) * H : nullptr;
  pz = p;
  if (!draw) return;
  pz = 0;
  if (p > 0) {
    draw_mask_row(key, std::uint64_t((t * N + n) * H), H, p, buf + n * H);
    z = buf + n * H;
  }
}

template <typename Scalar>
void check_layer_norm(const char* fn, LayerNorm mode, const Scalar* g_ih, const Scalar* g_hh,
                      const Scalar* g_c, bool others) {
  if (mode != LayerNorm::none && mode != LayerNorm::haste && mode != LayerNorm::tfa)
    detail::fail(std::string(fn) + ": layer_norm must be none, haste or tfa");
  if (mode != LayerNorm::none) {
    detail::check_ptr(fn, g_ih, "ln_gamma_ih");
    detail::check_ptr(fn, g_hh, "ln_gamma_hh");
    detail::check_ptr(fn, g_c, "ln_gamma_c");
  } else if (g_ih || g_hh || g_c || others) {
    detail::fail(std::string(fn) + ": ln_* parameters (or their gradients) given but "
                 "layer_norm is none");
  }
}

void check_gru_layer_norm(const char* fn, LayerNorm mode, const void* g_ih, const void* g_hh,
                          bool others) {
  if (mode != LayerNorm::none && mode != LayerNorm::haste)
    detail::fail(std::string(fn) + ": layer_norm must be none or haste (the GRU has no cell "
                 "state for tfa's placement)");
  if (mode != LayerNorm::none) {
    detail::check_ptr(fn, g_ih, "ln_gamma_ih");
    detail::check_ptr(fn, g_hh, "ln_gamma_hh");
  } else if (g_ih || g_hh || others) {
    detail::fail(std::string(fn) + ": ln_* parameters (or their gradients) given but "
                 "layer_norm is none");
  }
}

void check_gate_masks(const char* fn, bool gate_masks, const void* input_mask) {
  if (input_mask && !gate_masks)
    detail::fail(std::string(fn) + ": input_mask needs gate_masks (one mask per gate block; a "
                 "mask shared by the blocks is the caller's scaling of x)");
}

// Work-shared, gate_masks with an input mask m [G, N, C]: the projection of the steps s0..s1-1
// per gate block k, gxs[:, kH:(k+1)H] = (x[t(s, n), n]∘m_k[n]) W_ih,kᵀ (block k packed at
// packed + k PB), the rows gathered into xs (zeros for finished rows).
template <typename Scalar>
void project_steps_gated(const Dims& d, Index G, const detail::StepMap& sm, Index s0, Index s1,
                         const Scalar* x, const Scalar* m, const Scalar* packed, Index PB,
                         Scalar* xs, Scalar* gxs) {
  using namespace detail;
  const Index N = d.N, C = d.C, H = d.H, rows = (s1 - s0) * N;
  for (Index g = 0; g < G; ++g) {
    for_rows(rows, [&](Index r) {
      const Index n = r % N, t = sm.time(s0 + r / N, n);
      Scalar* dst = xs + r * C;
      if (t < 0) {
        std::fill(dst, dst + C, Scalar(0));
        return;
      }
      const Scalar *src = x + (t * N + n) * C, *mk = m + (g * N + n) * C;
      for (Index c = 0; c < C; ++c) dst[c] = src[c] * mk[c];
    });
    par_gemm_packed(rows, H, C, xs, C, packed + g * PB, gxs + g * H, G * H, false);
  }
}

// ---------------------------------------------------------------------------------------------

template <typename Scalar, template <typename> class Args>
void forward(const Dims& d, const Args<Scalar>& a, const Options& opt, Scalar* workspace) {
  using namespace detail;
  constexpr bool lstm = CellOf<Args<Scalar>>::lstm;
  const char* fn = lstm ? "lstm_ln_forward" : "gru_ln_forward";
  check_dims(fn, d, lstm);
  check_options(fn, opt);
  check_forward_ptrs(fn, a, workspace);
  const bool ln = a.layer_norm != LayerNorm::none;
  const bool proj = d.P > 0;
  const Scalar* w_hr = nullptr;
  if constexpr (lstm) {
    w_hr = a.w_hr;
    if (proj) check_ptr(fn, w_hr, "w_hr");
    else if (w_hr) fail(std::string(fn) + ": w_hr given but Dims::P is 0 (no projection)");
    check_ptr(fn, a.c_n, "c_n");
    check_layer_norm(fn, a.layer_norm, a.ln_gamma_ih, a.ln_gamma_hh, a.ln_gamma_c,
                     a.ln_beta_ih || a.ln_beta_hh || a.ln_beta_c);
    check_prob(fn, "zoneout_c", double(a.zoneout_c), a.zoneout_c_mask != nullptr);
    check_draw(fn, a.zoneout_draw, a.zoneout_c_mask, "zoneout_c_mask");
  } else {
    check_gru_layer_norm(fn, a.layer_norm, a.ln_gamma_ih, a.ln_gamma_hh,
                         a.ln_beta_ih || a.ln_beta_hh);
  }
  if (ln && !(double(a.ln_eps) > 0 && double(a.ln_eps) < HUGE_VAL))
    fail(std::string(fn) + ": ln_eps must be a finite number > 0, got " +
         std::to_string(double(a.ln_eps)));
  check_prob(fn, "zoneout_h", double(a.zoneout_h), a.zoneout_h_mask != nullptr);
  check_draw(fn, a.zoneout_draw, a.zoneout_h_mask, "zoneout_h_mask");
  check_gate_masks(fn, a.gate_masks, a.input_mask);
  const Index S = check_lengths(fn, d, a.lengths);
  const Index G = gates_of(lstm), N = d.N, H = d.H, GH = G * H, NH = N * H;
  const Index R = rec_width(d), NR = N * R;  // h's width: the projection's P, or H
  const StepMap sm{a.lengths, d.T, opt.reverse};
  const bool training = a.cache != nullptr;
  // gate_masks: the recurrent product per gate block (a recurrent mask per block), and the
  // input projection per block (an input mask per block); the packed blocks PH, PC apart.
  const bool gmh = a.gate_masks && a.recurrent_mask, gmx = a.gate_masks && a.input_mask;
  const Index PH = packed_bound(R, H), PC = packed_bound(d.C, H);
  const Index TC = proj_chunk_steps(d);
  Carver<Scalar> wc(workspace);
  const ForwardSpace<Scalar> w = forward_layout<lstm>(d, wc);
  Carver<Scalar> cc(a.cache);
  const Cache<Scalar> k = cache_layout<lstm>(d, cc);
  Scalar* hs = training ? k.hs : w.hbuf;
  Scalar* cs = training ? k.cs : w.cbuf;
  auto slot = [&](Scalar* base, Index s, Index n) { return base + (training ? s : s % 2) * n; };
  const Scalar eps = a.ln_eps;
  const std::uint64_t key_h = zoneout_key(a.zoneout_seed, 0);

  parallel_region(thread_count(opt, d, G), [&] {
    if (gmx) {
      for (Index g = 0; g < G; ++g) par_pack(a.w_ih + g * H * d.C, d.C, H, d.C, true, w.wih_p + g * PC);
      if (a.lengths) par_fill(a.y, d.T * NR, Scalar(0));
    } else {
      forward_prologue(d, opt, G, a.w_ih, a.lengths, w.wih_p, a.y);
    }
    if (gmh) {
      for (Index g = 0; g < G; ++g) par_pack(a.w_hh + g * H * R, R, H, R, true, w.whh_p + g * PH);
    } else {
      par_pack(a.w_hh, R, GH, R, true, w.whh_p);
    }
    if (proj) par_pack(w_hr, H, R, H, true, w.whr_p);
    par_copy_or_zero(hs, a.h0, NR);
    if constexpr (lstm) par_copy_or_zero(cs, a.c0, NH);
    for (Index s = 0; s < S; ++s) {
      const Scalar* h_prev = slot(hs, s, NR);
      Scalar* h_next = slot(hs, s + 1, NR);
      const Scalar* c_prev = lstm ? slot(cs, s, NH) : nullptr;
      Scalar* c_next = lstm ? slot(cs, s + 1, NH) : nullptr;
      // h̃ of this step (projection: the product's input, cached in training)
      Scalar* ht = proj ? (training ? k.ht + s * NH : w.htb) : nullptr;
      if (s % TC == 0) {
        if (gmx)
          project_steps_gated(d, G, sm, s, std::min(S, s + TC), a.x, a.input_mask, w.wih_p, PC,
                              w.xs, w.gx);
        else
          project_steps(d, G, sm, s, std::min(S, s + TC), a.x, w.wih_p, w.xs, w.gx);
      }
      const Scalar* hin = h_prev;
      if (gmh) {  // one masked h per gate block, one product per block (the cache keeps h only)
        for_rows(N, [&](Index n) {
          for (Index g = 0; g < G; ++g) {
            const Scalar* rm = a.recurrent_mask + (g * N + n) * R;
            Scalar* hm = w.hmbuf + (g * N + n) * R;
            for (Index j = 0; j < R; ++j) hm[j] = h_prev[n * R + j] * rm[j];
          }
        });
        for (Index g = 0; g < G; ++g)
          par_gemm_packed(N, H, R, w.hmbuf + g * NR, R, w.whh_p + g * PH, w.gh + g * H, GH, false);
      } else if (a.recurrent_mask) {
        Scalar* hm = training ? k.hm + s * NR : w.hmbuf;
        for_rows(N, [&](Index n) {
          for (Index j = 0; j < R; ++j)
            hm[n * R + j] = h_prev[n * R + j] * a.recurrent_mask[n * R + j];
        });
        hin = hm;
      }
      if (!gmh) par_gemm_packed(N, GH, R, hin, R, w.whh_p, w.gh, GH, false);
      for_rows(N, [&](Index n) {
        const Index off = n * H, offr = n * R, t = sm.time(s, n);
        const Index rs = s * N + n;  // the cache's row of this step
        if (t < 0) {  // finished sequence: carry its state through
          carry(h_prev + offr, h_next + offr, R);
          if constexpr (lstm) carry(c_prev + off, c_next + off, H);
          if (ht) std::fill(ht + off, ht + off + H, Scalar(0));  // (read by the projection)
          if (training) {
            std::fill(k.xhat + rs * GH, k.xhat + (rs + 1) * GH, Scalar(0));
            std::fill(k.hhat + rs * GH, k.hhat + (rs + 1) * GH, Scalar(0));
            if constexpr (lstm) std::fill(k.chat + rs * H, k.chat + (rs + 1) * H, Scalar(0));
          }
          return;
        }
        LnRow<Scalar> r;
        r.H = H;
        r.ln = ln;
        r.gx = w.gx + ((s % TC) * N + n) * GH;
        r.gh = w.gh + n * GH;
        r.b_ih = a.b_ih;
        r.b_hh = a.b_hh;
        r.g_ih = a.ln_gamma_ih, r.be_ih = a.ln_beta_ih;
        r.g_hh = a.ln_gamma_hh, r.be_hh = a.ln_beta_hh;
        r.h_prev = h_prev + offr;
        if (!proj)  // (with a projection, zoneout of h acts on the projected h, below)
          zoneout_row(a.zoneout_h_mask, a.zoneout_h, a.zoneout_draw, key_h, t, n, N, R, w.zbuf,
                      r.zh, r.pzh);
        r.gates = training ? k.gates + rs * 4 * H : w.gbuf + n * 4 * H;
        if (ln) {
          ln_stats(r.gx, GH, eps, r.mx, r.ix);
          ln_stats(r.gh, GH, eps, r.mh, r.ih);
        }
        if (training) {
          r.xhat = ln ? k.xhat + rs * GH : nullptr;
          r.hhat = ln ? k.hhat + rs * GH : nullptr;
        }
        r.h_next = proj ? ht + off : h_next + offr;  // projection: h̃, projected below
        r.y = proj ? nullptr : a.y + (t * N + n) * R;
        if constexpr (lstm) {
          r.carry_normalised = a.layer_norm == LayerNorm::tfa;
          r.g_c = a.ln_gamma_c, r.be_c = a.ln_beta_c;
          r.c_prev = c_prev + off;
          zoneout_row(a.zoneout_c_mask, a.zoneout_c, a.zoneout_draw,
                      zoneout_key(a.zoneout_seed, 1), t, n, N, H, w.zbuf + NH, r.zc, r.pzc);
          if (training) {
            r.chat = ln ? k.chat + rs * H : nullptr;
            r.nn = k.nn + rs * H;
          }
          r.c_next = c_next + off;
          ln_lstm_forward_gates(r);
          if (ln) ln_stats(r.c_next, H, eps, r.mc, r.ic);
          ln_lstm_forward_state(r);
        } else {
          ln_gru_forward_row(r);
        }
        if (training) {
          k.inv[rs * 3] = r.ix;
          k.inv[rs * 3 + 1] = r.ih;
          k.inv[rs * 3 + 2] = r.ic;
        }
      });
      if (proj) {
        // h_t = z_h∘h_{t−1} + (1 − z_h)∘(h̃ W_hrᵀ) on the rows that ran (the others carried)
        par_gemm_packed(N, R, H, ht, H, w.whr_p, w.pj, R, false);
        for_rows(N, [&](Index n) {
          const Index t = sm.time(s, n), offr = n * R;
          if (t < 0) return;
          const Scalar* zh;
          Scalar pzh;
          zoneout_row(a.zoneout_h_mask, a.zoneout_h, a.zoneout_draw, key_h, t, n, N, R, w.zbuf,
                      zh, pzh);
          const Scalar *p = w.pj + offr, *hp = h_prev + offr;
          Scalar *hn = h_next + offr, *y = a.y + (t * N + n) * R;
          for (Index j = 0; j < R; ++j) {
            Scalar v = p[j];
            if (zh || pzh > 0) {
              const Scalar z = zh ? zh[j] : pzh;
              v = z * hp[j] + (Scalar(1) - z) * v;
            }
            hn[j] = v;
            y[j] = v;
          }
        });
      }
    }
#ifdef _OPENMP
#pragma omp single
#endif
    {
      std::copy(slot(hs, S, NR), slot(hs, S, NR) + NR, a.h_n);
      if constexpr (lstm) std::copy(slot(cs, S, NH), slot(cs, S, NH) + NH, a.c_n);
    }
  });
}

// Work-shared, one pass over the rows of a: sums[0..3][j] += Σ_r a[r, j] (the non-null ones;
// one column sum), p1[j] += Σ_r a[r, j] b1[r, j], p2[j] += Σ_r a[r, j] b2[r, j] (null p: not
// computed); rows in order: each output gets the sum a separate pass would (par_colsum_add).
template <typename Scalar>
void par_colsums_prods_add(Index rows, Index cols, const Scalar* a, Scalar* const sums[4],
                           const Scalar* b1, Scalar* p1, const Scalar* b2, Scalar* p2) {
  using namespace detail;
  const bool any_sum = sums[0] || sums[1] || sums[2] || sums[3];
  if (!any_sum && !p1 && !p2) return;
  const Index tn = ceil_div(cols, kTileCols);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index tile = 0; tile < tn; ++tile) {
    const Index j0 = tile * kTileCols, nj = std::min(kTileCols, cols - j0);
    Scalar acc[kTileCols], q1[kTileCols], q2[kTileCols];
    for (Index j = 0; j < nj; ++j) acc[j] = q1[j] = q2[j] = Scalar(0);
    for (Index r = 0; r < rows; ++r) {
      const Scalar* ra = a + r * cols + j0;
      if (any_sum)
        for (Index j = 0; j < nj; ++j) acc[j] += ra[j];
      if (p1) {
        const Scalar* rb = b1 + r * cols + j0;
        for (Index j = 0; j < nj; ++j) q1[j] += ra[j] * rb[j];
      }
      if (p2) {
        const Scalar* rb = b2 + r * cols + j0;
        for (Index j = 0; j < nj; ++j) q2[j] += ra[j] * rb[j];
      }
    }
    for (Index k = 0; k < 4; ++k)
      if (sums[k])
        for (Index j = 0; j < nj; ++j) sums[k][j0 + j] += acc[j];
    if (p1)
      for (Index j = 0; j < nj; ++j) p1[j0 + j] += q1[j];
    if (p2)
      for (Index j = 0; j < nj; ++j) p2[j0 + j] += q2[j];
  }
}

template <typename Scalar, template <typename> class Args>
void backward(const Dims& d, const Args<Scalar>& a, const Options& opt, Scalar* workspace) {
  using namespace detail;
  constexpr bool lstm = CellOf<Args<Scalar>>::lstm;
  const char* fn = lstm ? "lstm_ln_backward" : "gru_ln_backward";
  check_dims(fn, d, lstm);
  check_options(fn, opt);
  check_backward_ptrs(fn, a, workspace);
  const bool grads = a.dln_gamma_ih || a.dln_beta_ih || a.dln_gamma_hh || a.dln_beta_hh;
  const bool proj = d.P > 0;
  const Scalar* w_hr = nullptr;
  Scalar* dw_hr = nullptr;
  if constexpr (lstm) {
    w_hr = a.w_hr, dw_hr = a.dw_hr;
    if (proj) check_ptr(fn, w_hr, "w_hr");
    else if (w_hr || dw_hr)
      fail(std::string(fn) + ": w_hr or dw_hr given but Dims::P is 0 (no projection)");
    check_layer_norm(fn, a.layer_norm, a.ln_gamma_ih, a.ln_gamma_hh, a.ln_gamma_c,
                     grads || a.dln_gamma_c || a.dln_beta_c);
    check_prob(fn, "zoneout_c", double(a.zoneout_c), a.zoneout_c_mask != nullptr);
    check_draw(fn, a.zoneout_draw, a.zoneout_c_mask, "zoneout_c_mask");
  } else {
    check_gru_layer_norm(fn, a.layer_norm, a.ln_gamma_ih, a.ln_gamma_hh, grads);
  }
  const bool ln = a.layer_norm != LayerNorm::none;
  check_prob(fn, "zoneout_h", double(a.zoneout_h), a.zoneout_h_mask != nullptr);
  check_draw(fn, a.zoneout_draw, a.zoneout_h_mask, "zoneout_h_mask");
  check_gate_masks(fn, a.gate_masks, a.input_mask);
  const Index S = check_lengths(fn, d, a.lengths);
  const Index G = gates_of(lstm), N = d.N, H = d.H, C = d.C, GH = G * H, NH = N * H;
  const Index R = rec_width(d), NR = N * R;  // h's width: the projection's P, or H
  const StepMap sm{a.lengths, d.T, opt.reverse};
  const bool gmh = a.gate_masks && a.recurrent_mask, gmx = a.gate_masks && a.input_mask;
  const Index PH = packed_bound(H, R), PC = packed_bound(H, C);
  const std::uint64_t key_h = zoneout_key(a.zoneout_seed, 0);
  // the shared recurrent mask, applied to dhg in the pointwise passes (gate_masks: in dhg)
  const Scalar* rmask = gmh ? nullptr : a.recurrent_mask;
  Carver<const Scalar> cc(a.cache);
  const Cache<const Scalar> k = cache_layout<lstm>(d, cc);
  Carver<Scalar> wc(workspace);
  const BackwardSpace<Scalar> w = backward_layout<lstm>(d, wc);
  // The recurrent product's gradients dgh, and the recurrent side's pre-activation gradients
  // dah (the bias and gain gradients of that side). LSTM: both sides share da, and without
  // layer norm dgh is da; GRU: the sides differ in the n block, and without layer norm dgh is
  // dah.
  Scalar* dgh = lstm && !ln ? w.da : w.dgh;
  Scalar* dah = lstm ? w.da : (ln ? w.dah : w.dgh);

  // Padded rows of x (t >= lengths[n]) get no gradient, but dw_ih = dgxᵀ x multiplies their zero
  // rows of dgx by x all the same: a NaN or inf there (padding is the caller's, often garbage)
  // would make dw_ih NaN. Then dw_ih is summed in blocks of rows with the padded rows zeroed.
  bool dirty_padding = false;
  if (a.lengths && a.dw_ih)
    for (Index n = 0; n < N && !dirty_padding; ++n)
      for (Index t = a.lengths[n]; t < d.T && !dirty_padding; ++t) {
        const Scalar* xr = a.x + (t * N + n) * C;
        for (Index c = 0; c < C; ++c) dirty_padding |= !std::isfinite(xr[c]);
      }
  auto valid_row = [&](Index row) { return !a.lengths || row / N < a.lengths[row % N]; };

  parallel_region(thread_count(opt, d, G), [&] {
    // dgx: every row is written below unless lengths leave some inactive (then they stay 0)
    if (a.lengths || opt.reverse) par_fill(w.dgx, d.T * N * GH, Scalar(0));
    if (gmh) {
      for (Index g = 0; g < G; ++g) par_pack(a.w_hh + g * H * R, H, R, R, false, w.whh_q + g * PH);
    } else {
      par_pack(a.w_hh, GH, R, R, false, w.whh_q);
    }
    if (proj) {
      par_pack(w_hr, R, H, H, false, w.whr_q);
      par_fill(w.zero, H, Scalar(0));
    }
    // dhz, dc carried into step s live in slot (s + 1) % 2; the step writes slot s % 2.
    par_copy_or_zero(w.dhz + (S % 2) * NR, a.dh_n, NR);
    if constexpr (lstm) par_copy_or_zero(w.dcb + (S % 2) * NH, a.dc_n, NH);
    par_fill(w.dhg, NR, Scalar(0));
    for (Index s = S - 1; s >= 0; --s) {
      const Scalar* dhz_cur = w.dhz + ((s + 1) % 2) * NR;
      Scalar* dhz_nxt = w.dhz + (s % 2) * NR;
      const Scalar* dc_cur = w.dcb + ((s + 1) % 2) * NH;
      Scalar* dc_nxt = w.dcb + (s % 2) * NH;
      if (proj) {
        // dh = dhz + r∘dhg + dy (P wide); zoneout: z∘dh to h_{t−1}, dpj = (1 − z)∘dh to the
        // projection; then dh̃ = dpj W_hr for the cell's passes below (rows that ran)
        Scalar* dpj = w.dpj + s * NR;
        for_rows(N, [&](Index n) {
          const Index t = sm.time(s, n), offr = n * R;
          Scalar* o = dpj + offr;
          if (t < 0) {
            std::fill(o, o + R, Scalar(0));
            return;
          }
          const Scalar* zh;
          Scalar pzh;
          zoneout_row(a.zoneout_h_mask, a.zoneout_h, a.zoneout_draw, key_h, t, n, N, R, w.zbuf,
                      zh, pzh);
          const Scalar *dz = dhz_cur + offr, *dg = w.dhg + offr;
          const Scalar* rm = rmask ? rmask + offr : nullptr;
          const Scalar* dy = a.dy ? a.dy + (t * N + n) * R : nullptr;
          Scalar* zo = dhz_nxt + offr;
          for (Index j = 0; j < R; ++j) {
            Scalar dh = dz[j] + (rm ? rm[j] * dg[j] : dg[j]);
            if (dy) dh += dy[j];
            if (zh || pzh > 0) {
              const Scalar z = zh ? zh[j] : pzh;
              zo[j] = z * dh;
              o[j] = (Scalar(1) - z) * dh;
            } else {
              zo[j] = Scalar(0);
              o[j] = dh;
            }
          }
        });
        par_gemm_packed(N, H, R, dpj, R, w.whr_q, w.dht, H, false);
      }
      for_rows(N, [&](Index n) {
        const Index off = n * H, offr = n * R, t = sm.time(s, n), rs = s * N + n;
        Scalar* da = w.da + rs * GH;
        if (t < 0) {  // inactive: no gradient enters the step; the carry passes through
          std::fill(da, da + GH, Scalar(0));
          if (ln || !lstm) std::fill(dgh + rs * GH, dgh + (rs + 1) * GH, Scalar(0));
          if (!lstm && ln) std::fill(dah + rs * GH, dah + (rs + 1) * GH, Scalar(0));
          if (lstm && ln) std::fill(w.dnl + rs * H, w.dnl + (rs + 1) * H, Scalar(0));
          // dhg is zero on this row: the row was inactive at every later step as well.
          carry(dhz_cur + offr, dhz_nxt + offr, R);
          if constexpr (lstm) carry(dc_cur + off, dc_nxt + off, H);
          return;
        }
        LnRowBack<Scalar> r;
        r.H = H;
        r.ln = ln;
        if (proj) {  // dh̃ from the projection above: no more of h's terms here
          r.dhz = w.dht + off;
          r.dhg = w.zero;
          r.dhz_out = w.dzs + off;
        } else {
          r.dhz = dhz_cur + offr;
          r.dhg = w.dhg + offr;
          r.rmask = rmask ? rmask + offr : nullptr;
          r.dy = a.dy ? a.dy + (t * N + n) * R : nullptr;
          zoneout_row(a.zoneout_h_mask, a.zoneout_h, a.zoneout_draw, key_h, t, n, N, R, w.zbuf,
                      r.zh, r.pzh);
          r.dhz_out = dhz_nxt + offr;
        }
        r.gates = k.gates + rs * 4 * H;
        Scalar* dgx_row = w.dgx + (t * N + n) * GH;
        if constexpr (lstm) {
          r.carry_normalised = a.layer_norm == LayerNorm::tfa;
          r.dc_in = dc_cur + off;
          r.c_prev = k.cs + s * NH + off;
          r.nn = k.nn + rs * H;
          r.chat = k.chat + rs * H;
          r.g_c = a.ln_gamma_c;
          r.ic = k.inv[rs * 3 + 2];
          zoneout_row(a.zoneout_c_mask, a.zoneout_c, a.zoneout_draw,
                      zoneout_key(a.zoneout_seed, 1), t, n, N, H, w.zbuf + NH, r.zc, r.pzc);
          r.da = da;
          r.dnl = w.dnl + rs * H;
          r.dc_out = dc_nxt + off;
          Scalar m1 = 0, m2 = 0;
          ln_lstm_backward_pass1(r, m1, m2);
          if (ln) ln_lstm_backward_pass2(r, m1, m2);
        } else {
          ln_gru_backward_row(r, k.hs + s * NR + offr, da, dah + rs * GH);
        }
        if (ln) {
          ln_backward_row(GH, da, a.ln_gamma_ih, k.xhat + rs * GH, k.inv[rs * 3], dgx_row);
          ln_backward_row(GH, dah + rs * GH, a.ln_gamma_hh, k.hhat + rs * GH, k.inv[rs * 3 + 1],
                          dgh + rs * GH);
        } else {
          std::copy(da, da + GH, dgx_row);
        }
      });
      if (gmh) {  // dhg = Σ_k r_k∘(dgh_k W_hh,k): one product per gate block
        for (Index g = 0; g < G; ++g)
          par_gemm_packed(N, R, H, dgh + s * N * GH + g * H, GH, w.whh_q + g * PH, w.dgp + g * NR,
                          R, false);
        for_rows(N, [&](Index n) {
          Scalar* o = w.dhg + n * R;
          for (Index j = 0; j < R; ++j) o[j] = Scalar(0);
          for (Index g = 0; g < G; ++g) {
            const Scalar *rm = a.recurrent_mask + (g * N + n) * R, *p = w.dgp + (g * N + n) * R;
            for (Index j = 0; j < R; ++j) o[j] += rm[j] * p[j];
          }
        });
      } else {
        par_gemm_packed(N, R, GH, dgh + s * N * GH, GH, w.whh_q, w.dhg, R, false);
      }
    }
    // dh0 = dhz + r∘dhg (the first step's recurrent product saw h0∘r), dc0 = dc.
    for_rows(N, [&](Index n) {
      const Scalar* dz = w.dhz + n * R;
      const Scalar* dg = w.dhg + n * R;
      const Scalar* rm = rmask ? rmask + n * R : nullptr;
      if (a.dh0)
        for (Index j = 0; j < R; ++j) a.dh0[n * R + j] = dz[j] + (rm ? rm[j] * dg[j] : dg[j]);
      if constexpr (lstm)
        if (a.dc0) carry(w.dcb + n * H, a.dc0 + n * H, H);
    });
    // dw_hr += Σ_steps dpjᵀ h̃ (rows that did not run: zeros in both)
    if (proj && dw_hr) par_gemm_tn_add(R, H, S * N, w.dpj, R, k.ht, H, dw_hr, H);
    // hs: the product's input h (or h∘r) of every step, step order.
    const Scalar* hin = rmask ? k.hm : k.hs;
    if (!gmx) {
      backward_epilogue(d, S, G, R, a.x, a.w_ih, w.dgx, dgh, hin, w.wih_q, a.dx,
                        dirty_padding ? static_cast<Scalar*>(nullptr) : a.dw_ih,
                        gmh ? static_cast<Scalar*>(nullptr) : a.dw_hh,
                        static_cast<Scalar*>(nullptr), static_cast<Scalar*>(nullptr));
      if (dirty_padding) {
        const Index TN = d.T * N;
        for (Index r0 = 0; r0 < TN; r0 += kMaskRows) {
          const Index rb = std::min(kMaskRows, TN - r0);
          for_rows(rb, [&](Index i) {
            const Scalar* xr = a.x + (r0 + i) * C;
            Scalar* xm = w.xm + i * C;
            if (valid_row(r0 + i))
              std::copy(xr, xr + C, xm);
            else
              std::fill(xm, xm + C, Scalar(0));
          });
          par_gemm_tn_add(GH, C, rb, w.dgx + r0 * GH, GH, w.xm, C, a.dw_ih, C);
        }
      }
    } else {
      // Input masks per gate block: dx = Σ_k m_k∘(dgx_k W_ih,k), dw_ih,k += dgx_kᵀ (x∘m_k), in
      // blocks of kMaskRows rows (time order; padded rows have dgx = 0).
      for (Index g = 0; g < G; ++g) par_pack(a.w_ih + g * H * C, H, C, C, false, w.wih_q + g * PC);
      const Index TN = d.T * N;
      for (Index r0 = 0; r0 < TN; r0 += kMaskRows) {
        const Index rb = std::min(kMaskRows, TN - r0);
        for (Index g = 0; g < G; ++g) {
          const Scalar* dgk = w.dgx + r0 * GH + g * H;
          if (a.dx) par_gemm_packed(rb, C, H, dgk, GH, w.wih_q + g * PC, w.xp, C, false);
          for_rows(rb, [&](Index i) {
            const Index row = r0 + i, n = row % N;
            const Scalar *mk = a.input_mask + (g * N + n) * C, *xr = a.x + row * C;
            const Scalar* p = w.xp + i * C;
            Scalar *o = a.dx ? a.dx + row * C : nullptr, *xm = w.xm + i * C;
            const bool valid = valid_row(row);  // padded rows: zeros (see dirty_padding)
            for (Index c = 0; c < C; ++c) {
              if (o) o[c] = g ? o[c] + mk[c] * p[c] : mk[c] * p[c];
              xm[c] = valid ? xr[c] * mk[c] : Scalar(0);
            }
          });
          if (a.dw_ih) par_gemm_tn_add(H, C, rb, dgk, GH, w.xm, C, a.dw_ih + g * H * C, C);
        }
      }
      if (!gmh && a.dw_hh) par_gemm_tn_add(GH, R, S * N, dgh, GH, hin, R, a.dw_hh, R);
    }
    const Index SN = S * N;
    // The sums over the rows of one side (da: input, dah: recurrent) into one or two outputs.
    auto colsum2 = [&](const Scalar* src, Scalar* o1, Scalar* o2) {
      if (o1 && o2)
        par_colsum_add(SN, GH, src, GH, o1, o2);
      else if (o1 || o2)
        par_colsum_add(SN, GH, src, GH, o1 ? o1 : o2);
    };
    // One pass over each side for its column sums (the biases and the ln biases) and its
    // products with the normalised values (the ln gains), each the sums of separate passes.
    if (lstm && ln) {
      Scalar* sums[4] = {a.db_ih, a.db_hh, a.dln_beta_ih, a.dln_beta_hh};
      par_colsums_prods_add(SN, GH, w.da, sums, k.xhat, a.dln_gamma_ih, k.hhat,
                            a.dln_gamma_hh);
    } else if (lstm) {
      colsum2(w.da, a.db_ih, a.db_hh);
    } else if (ln) {
      Scalar* sums_ih[4] = {a.db_ih, a.dln_beta_ih, nullptr, nullptr};
      Scalar* sums_hh[4] = {a.db_hh, a.dln_beta_hh, nullptr, nullptr};
      par_colsums_prods_add<Scalar>(SN, GH, w.da, sums_ih, k.xhat, a.dln_gamma_ih, nullptr,
                                    nullptr);
      par_colsums_prods_add<Scalar>(SN, GH, dah, sums_hh, k.hhat, a.dln_gamma_hh, nullptr, nullptr);
    } else {
      colsum2(w.da, a.db_ih, nullptr);
      colsum2(dah, a.db_hh, nullptr);
    }
    if constexpr (lstm) {
      if (ln) {
        Scalar* sums_c[4] = {a.dln_beta_c, nullptr, nullptr, nullptr};
        par_colsums_prods_add<Scalar>(SN, H, w.dnl, sums_c, k.chat, a.dln_gamma_c, nullptr,
                                      nullptr);
      }
    }
    if (gmh && a.dw_hh) {
      // Recurrent masks per gate block: dw_hh,k += dgh_kᵀ (h∘r_k), h∘r_k rebuilt from the
      // cache's h into a buffer free by now (da after the sums above; dgh's own when dgh is da).
      Scalar* hm = dgh == w.da ? w.dgh : w.da;
      for (Index g = 0; g < G; ++g) {
        for_rows(SN, [&](Index row) {
          const Scalar *h = k.hs + row * R, *rm = a.recurrent_mask + (g * N + row % N) * R;
          for (Index j = 0; j < R; ++j) hm[row * R + j] = h[j] * rm[j];
        });
        par_gemm_tn_add(H, R, SN, dgh + g * H, GH, hm, R, a.dw_hh + g * H * R, R);
      }
    }
  });
}

}  // namespace

void fill_lstm_ln(isa::Table& t) {
  t.lstm_ln_sizes = &sizes<true>;
  t.gru_ln_sizes = &sizes<false>;
  t.f32.lstm_ln_forward = &forward<float, LstmLnForwardArgs>;
  t.f32.lstm_ln_backward = &backward<float, LstmLnBackwardArgs>;
  t.f64.lstm_ln_forward = &forward<double, LstmLnForwardArgs>;
  t.f64.lstm_ln_backward = &backward<double, LstmLnBackwardArgs>;
  t.f32.gru_ln_forward = &forward<float, GruLnForwardArgs>;
  t.f32.gru_ln_backward = &backward<float, GruLnBackwardArgs>;
  t.f64.gru_ln_forward = &forward<double, GruLnForwardArgs>;
  t.f64.gru_ln_backward = &backward<double, GruLnBackwardArgs>;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
