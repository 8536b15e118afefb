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

// Cache, step order: hs, cs [T+1, N, H] (the state before each step); hm [T, N, H] (h∘r, the
// recurrent product's input, with a recurrent mask); gates [T, N, 4H]; xhat, hhat [T, N, 4H]
// (the normalised products); chat, nn [T, N, H] (normalised c̃, n); inv [T, N, 3] (1/std of
// the input product, the recurrent product and c̃). Rows of finished sequences hold zeros in
// xhat, hhat, chat (the parameter gradients multiply them by zero).
template <typename T>
struct Cache {
  T *hs, *cs, *hm, *gates, *xhat, *hhat, *chat, *nn, *inv;
};
template <typename T>
Cache<T> cache_layout(const Dims& d, detail::Carver<T>& c) {
  const Index N = d.N, H = d.H, TN = d.T * N;
  Cache<T> k{};
  k.hs = c.take((d.T + 1) * N * H);
  k.cs = c.take((d.T + 1) * N * H);
  k.hm = c.take(TN * H);
  k.gates = c.take(TN * 4 * H);
  k.xhat = c.take(TN * 4 * H);
  k.hhat = c.take(TN * 4 * H);
  k.chat = c.take(TN * H);
  k.nn = c.take(TN * H);
  k.inv = c.take(TN * 3);
  return k;
}

// Forward workspace: packed w_ih, w_hh; a chunk of gx and xs (skeleton.h); gh [N, 4H]; h and c
// double buffers [2, N, H]; inference scratch: gates [N, 4H], masked h [N, H].
template <typename T>
struct ForwardSpace {
  T *wih_p, *whh_p, *gx, *xs, *gh, *hbuf, *cbuf, *gbuf, *hmbuf;
};
template <typename T>
ForwardSpace<T> forward_layout(const Dims& d, detail::Carver<T>& c) {
  using namespace detail;
  const Index N = d.N, H = d.H, GH = 4 * H, TC = proj_chunk_steps(d);
  ForwardSpace<T> w{};
  w.wih_p = c.take_aligned(packed_bound(d.C, GH));
  w.whh_p = c.take_aligned(packed_bound(H, GH));
  w.gx = c.take(TC * N * GH);
  w.xs = c.take(TC * N * d.C);
  w.gh = c.take(N * GH);
  w.hbuf = c.take(2 * N * H);
  w.cbuf = c.take(2 * N * H);
  w.gbuf = c.take(N * GH);
  w.hmbuf = c.take(N * H);
  return w;
}

// Backward workspace: da [T, N, 4H] (step order, the pre-activation gradients), dgh [T, N, 4H]
// (step order, the recurrent product's), dgx [T, N, 4H] (time order, the input product's),
// dnl [T, N, H] (step order, dn), dhz and dc double buffers [2, N, H], dhg [N, H], packed w_hh
// and w_ih.
template <typename T>
struct BackwardSpace {
  T *da, *dgh, *dgx, *dnl, *dhz, *dcb, *dhg, *whh_q, *wih_q;
};
template <typename T>
BackwardSpace<T> backward_layout(const Dims& d, detail::Carver<T>& c) {
  using namespace detail;
  const Index N = d.N, H = d.H, GH = 4 * H, TN = d.T * N;
  BackwardSpace<T> w{};
  w.da = c.take(TN * GH);
  w.dgh = c.take(TN * GH);
  w.dgx = c.take(TN * GH);
  w.dnl = c.take(TN * H);
  w.dhz = c.take(2 * N * H);
  w.dcb = c.take(2 * N * H);
  w.dhg = c.take(N * H);
  w.whh_q = c.take_aligned(packed_bound(GH, H));
  w.wih_q = c.take_aligned(packed_bound(GH, d.C));
  return w;
}

isa::Sizes sizes(const Dims& d) {
  detail::check_dims("lstm_ln_sizes", d);
  return {detail::measure(d, &cache_layout<float>), detail::measure(d, &forward_layout<float>),
          detail::measure(d, &backward_layout<float>)};
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

// ---------------------------------------------------------------------------------------------

template <typename Scalar>
void forward(const Dims& d, const LstmLnForwardArgs<Scalar>& a, const Options& opt,
             Scalar* workspace) {
  using namespace detail;
  const char* fn = "lstm_ln_forward";
  check_dims(fn, d);
  check_options(fn, opt);
  for (auto [p, name] : {std::pair<const void*, const char*>{a.x, "x"}, {a.w_ih, "w_ih"},
                         {a.w_hh, "w_hh"}, {a.y, "y"}, {a.h_n, "h_n"}, {a.c_n, "c_n"},
                         {workspace, "workspace"}})
    check_ptr(fn, p, name);
  check_layer_norm(fn, a.layer_norm, a.ln_gamma_ih, a.ln_gamma_hh, a.ln_gamma_c,
                   a.ln_beta_ih || a.ln_beta_hh || a.ln_beta_c);
  const bool ln = a.layer_norm != LayerNorm::none;
  if (ln && !(double(a.ln_eps) > 0 && double(a.ln_eps) < HUGE_VAL))
    fail(std::string(fn) + ": ln_eps must be a finite number > 0, got " +
         std::to_string(double(a.ln_eps)));
  check_prob(fn, "zoneout_h", double(a.zoneout_h), a.zoneout_h_mask != nullptr);
  check_prob(fn, "zoneout_c", double(a.zoneout_c), a.zoneout_c_mask != nullptr);
  const Index S = check_lengths(fn, d, a.lengths);
  const Index N = d.N, H = d.H, GH = 4 * H, NH = N * H;
  const StepMap sm{a.lengths, d.T, opt.reverse};
  const bool training = a.cache != nullptr;
  const Index TC = proj_chunk_steps(d);
  Carver<Scalar> wc(workspace);
  const ForwardSpace<Scalar> w = forward_layout(d, wc);
  Carver<Scalar> cc(a.cache);
  const Cache<Scalar> k = cache_layout(d, cc);
  Scalar* hs = training ? k.hs : w.hbuf;
  Scalar* cs = training ? k.cs : w.cbuf;
  auto slot = [&](Scalar* base, Index s) { return base + (training ? s : s % 2) * NH; };
  const Scalar eps = a.ln_eps;

  parallel_region(thread_count(opt, d, 4), [&] {
    forward_prologue(d, opt, 4, a.w_ih, a.lengths, w.wih_p, a.y);
    par_pack(a.w_hh, H, GH, H, true, w.whh_p);
    par_copy_or_zero(hs, a.h0, NH);
    par_copy_or_zero(cs, a.c0, NH);
    for (Index s = 0; s < S; ++s) {
      const Scalar* h_prev = slot(hs, s);
      const Scalar* c_prev = slot(cs, s);
      Scalar* h_next = slot(hs, s + 1);
      Scalar* c_next = slot(cs, s + 1);
      if (s % TC == 0) project_steps(d, 4, sm, s, std::min(S, s + TC), a.x, w.wih_p, w.xs, w.gx);
      const Scalar* hin = h_prev;
      if (a.recurrent_mask) {
        Scalar* hm = training ? k.hm + s * NH : w.hmbuf;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (Index n = 0; n < N; ++n)
          for (Index j = 0; j < H; ++j)
            hm[n * H + j] = h_prev[n * H + j] * a.recurrent_mask[n * H + j];
        hin = hm;
      }
      par_gemm_packed(N, GH, H, hin, H, w.whh_p, w.gh, GH, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index n = 0; n < N; ++n) {
        const Index off = n * H, t = sm.time(s, n);
        const Index rs = s * N + n;  // the cache's row of this step
        if (t < 0) {  // finished sequence: carry its state through
          std::copy(h_prev + off, h_prev + off + H, h_next + off);
          std::copy(c_prev + off, c_prev + off + H, c_next + off);
          if (training) {
            std::fill(k.xhat + rs * GH, k.xhat + (rs + 1) * GH, Scalar(0));
            std::fill(k.hhat + rs * GH, k.hhat + (rs + 1) * GH, Scalar(0));
            std::fill(k.chat + rs * H, k.chat + (rs + 1) * H, Scalar(0));
          }
          continue;
        }
        LnRow<Scalar> r;
        r.H = H;
        r.ln = ln;
        r.carry_normalised = a.layer_norm == LayerNorm::tfa;
        r.gx = w.gx + ((s % TC) * N + n) * GH;
        r.gh = w.gh + n * GH;
        r.b_ih = a.b_ih;
        r.b_hh = a.b_hh;
        r.g_ih = a.ln_gamma_ih, r.be_ih = a.ln_beta_ih;
        r.g_hh = a.ln_gamma_hh, r.be_hh = a.ln_beta_hh;
        r.g_c = a.ln_gamma_c, r.be_c = a.ln_beta_c;
        r.c_prev = c_prev + off;
        r.h_prev = h_prev + off;
        r.zh = a.zoneout_h_mask ? a.zoneout_h_mask + (t * N + n) * H : nullptr;
        r.zc = a.zoneout_c_mask ? a.zoneout_c_mask + (t * N + n) * H : nullptr;
        r.pzh = a.zoneout_h, r.pzc = a.zoneout_c;
        r.gates = training ? k.gates + rs * GH : w.gbuf + n * GH;
        if (ln) {
          ln_stats(r.gx, GH, eps, r.mx, r.ix);
          ln_stats(r.gh, GH, eps, r.mh, r.ih);
        }
        if (training) {
          r.xhat = ln ? k.xhat + rs * GH : nullptr;
          r.hhat = ln ? k.hhat + rs * GH : nullptr;
          r.chat = ln ? k.chat + rs * H : nullptr;
          r.nn = k.nn + rs * H;
        }
        r.c_next = c_next + off;
        r.h_next = h_next + off;
        r.y = a.y + (t * N + n) * H;
        ln_lstm_forward_gates(r);
        if (ln) ln_stats(r.c_next, H, eps, r.mc, r.ic);
        ln_lstm_forward_state(r);
        if (training) {
          k.inv[rs * 3] = r.ix;
          k.inv[rs * 3 + 1] = r.ih;
          k.inv[rs * 3 + 2] = r.ic;
        }
      }
    }
#ifdef _OPENMP
#pragma omp single
#endif
    {
      std::copy(slot(hs, S), slot(hs, S) + NH, a.h_n);
      std::copy(slot(cs, S), slot(cs, S) + NH, a.c_n);
    }
  });
}

// Work-shared: out[j] += Σ_r a[r*cols + j] b[r*cols + j], rows in order.
template <typename Scalar>
void par_colprod_add(Index rows, Index cols, const Scalar* a, const Scalar* b, Scalar* out) {
  using namespace detail;
  const Index tn = ceil_div(cols, kTileCols);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
  for (Index tile = 0; tile < tn; ++tile) {
    const Index j0 = tile * kTileCols, nj = std::min(kTileCols, cols - j0);
    Scalar acc[kTileCols];
    for (Index j = 0; j < nj; ++j) acc[j] = Scalar(0);
    for (Index r = 0; r < rows; ++r) {
      const Scalar *ra = a + r * cols + j0, *rb = b + r * cols + j0;
      for (Index j = 0; j < nj; ++j) acc[j] += ra[j] * rb[j];
    }
    for (Index j = 0; j < nj; ++j) out[j0 + j] += acc[j];
  }
}

template <typename Scalar>
void backward(const Dims& d, const LstmLnBackwardArgs<Scalar>& a, const Options& opt,
              Scalar* workspace) {
  using namespace detail;
  const char* fn = "lstm_ln_backward";
  check_dims(fn, d);
  check_options(fn, opt);
  for (auto [p, name] : {std::pair<const void*, const char*>{a.x, "x"}, {a.w_ih, "w_ih"},
                         {a.w_hh, "w_hh"}, {a.cache, "cache"}, {a.dx, "dx"},
                         {workspace, "workspace"}})
    check_ptr(fn, p, name);
  check_layer_norm(fn, a.layer_norm, a.ln_gamma_ih, a.ln_gamma_hh, a.ln_gamma_c,
                   a.dln_gamma_ih || a.dln_beta_ih || a.dln_gamma_hh || a.dln_beta_hh ||
                       a.dln_gamma_c || a.dln_beta_c);
  const bool ln = a.layer_norm != LayerNorm::none;
  check_prob(fn, "zoneout_h", double(a.zoneout_h), a.zoneout_h_mask != nullptr);
  check_prob(fn, "zoneout_c", double(a.zoneout_c), a.zoneout_c_mask != nullptr);
  const Index S = check_lengths(fn, d, a.lengths);
  const Index N = d.N, H = d.H, GH = 4 * H, NH = N * H;
  const StepMap sm{a.lengths, d.T, opt.reverse};
  Carver<const Scalar> cc(a.cache);
  const Cache<const Scalar> k = cache_layout(d, cc);
  Carver<Scalar> wc(workspace);
  const BackwardSpace<Scalar> w = backward_layout(d, wc);
  Scalar* dgh = ln ? w.dgh : w.da;  // without layer norm the products' gradients are da

  parallel_region(thread_count(opt, d, 4), [&] {
    if (a.lengths || opt.reverse || ln) par_fill(w.dgx, d.T * N * GH, Scalar(0));
    par_pack(a.w_hh, GH, H, H, false, w.whh_q);
    // dhz, dc carried into step s live in slot (s + 1) % 2; the step writes slot s % 2.
    par_copy_or_zero(w.dhz + (S % 2) * NH, a.dh_n, NH);
    par_copy_or_zero(w.dcb + (S % 2) * NH, a.dc_n, NH);
    par_fill(w.dhg, NH, Scalar(0));
    for (Index s = S - 1; s >= 0; --s) {
      const Scalar* dhz_cur = w.dhz + ((s + 1) % 2) * NH;
      const Scalar* dc_cur = w.dcb + ((s + 1) % 2) * NH;
      Scalar* dhz_nxt = w.dhz + (s % 2) * NH;
      Scalar* dc_nxt = w.dcb + (s % 2) * NH;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index n = 0; n < N; ++n) {
        const Index off = n * H, t = sm.time(s, n), rs = s * N + n;
        Scalar* da = w.da + rs * GH;
        if (t < 0) {  // inactive: no gradient enters the step; the carry passes through
          std::fill(da, da + GH, Scalar(0));
          if (ln) {
            std::fill(dgh + rs * GH, dgh + (rs + 1) * GH, Scalar(0));
            std::fill(w.dnl + rs * H, w.dnl + (rs + 1) * H, Scalar(0));
          }
          // dhg is zero on this row: the row was inactive at every later step as well.
          std::copy(dhz_cur + off, dhz_cur + off + H, dhz_nxt + off);
          std::copy(dc_cur + off, dc_cur + off + H, dc_nxt + off);
          continue;
        }
        LnRowBack<Scalar> r;
        r.H = H;
        r.ln = ln;
        r.carry_normalised = a.layer_norm == LayerNorm::tfa;
        r.dhz = dhz_cur + off;
        r.dhg = w.dhg + off;
        r.rmask = a.recurrent_mask ? a.recurrent_mask + off : nullptr;
        r.dy = a.dy ? a.dy + (t * N + n) * H : nullptr;
        r.dc_in = dc_cur + off;
        r.gates = k.gates + rs * GH;
        r.c_prev = k.cs + s * NH + off;
        r.nn = k.nn + rs * H;
        r.chat = k.chat + rs * H;
        r.g_c = a.ln_gamma_c;
        r.ic = k.inv[rs * 3 + 2];
        r.zh = a.zoneout_h_mask ? a.zoneout_h_mask + (t * N + n) * H : nullptr;
        r.zc = a.zoneout_c_mask ? a.zoneout_c_mask + (t * N + n) * H : nullptr;
        r.pzh = a.zoneout_h, r.pzc = a.zoneout_c;
        r.da = da;
        r.dnl = w.dnl + rs * H;
        r.dhz_out = dhz_nxt + off;
        r.dc_out = dc_nxt + off;
        Scalar m1 = 0, m2 = 0;
        ln_lstm_backward_pass1(r, m1, m2);
        Scalar* dgx_row = w.dgx + (t * N + n) * GH;
        if (ln) {
          ln_lstm_backward_pass2(r, m1, m2);
          ln_backward_row(GH, da, a.ln_gamma_ih, k.xhat + rs * GH, k.inv[rs * 3], dgx_row);
          ln_backward_row(GH, da, a.ln_gamma_hh, k.hhat + rs * GH, k.inv[rs * 3 + 1],
                          dgh + rs * GH);
        } else {
          std::copy(da, da + GH, dgx_row);
        }
      }
      par_gemm_packed(N, H, GH, dgh + s * N * GH, GH, w.whh_q, w.dhg, H, false);
    }
    // dh0 = dhz + r∘dhg (the first step's recurrent product saw h0∘r), dc0 = dc.
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (Index n = 0; n < N; ++n) {
      const Scalar* dz = w.dhz + n * H;
      const Scalar* dg = w.dhg + n * H;
      const Scalar* rm = a.recurrent_mask ? a.recurrent_mask + n * H : nullptr;
      if (a.dh0)
        for (Index j = 0; j < H; ++j) a.dh0[n * H + j] = dz[j] + (rm ? rm[j] * dg[j] : dg[j]);
      if (a.dc0) std::copy(w.dcb + n * H, w.dcb + (n + 1) * H, a.dc0 + n * H);
    }
    // hs: the product's input h (or h∘r) of every step, step order.
    backward_epilogue(d, S, Index(4), H, a.x, a.w_ih, w.dgx, dgh,
                      a.recurrent_mask ? k.hm : k.hs, w.wih_q, a.dx, a.dw_ih, a.dw_hh,
                      static_cast<Scalar*>(nullptr), static_cast<Scalar*>(nullptr));
    const Index SN = S * N;
    if (a.db_ih && a.db_hh)
      par_colsum_add(SN, GH, w.da, GH, a.db_ih, a.db_hh);
    else if (a.db_ih || a.db_hh)
      par_colsum_add(SN, GH, w.da, GH, a.db_ih ? a.db_ih : a.db_hh);
    if (ln) {
      if (a.dln_beta_ih && a.dln_beta_hh)
        par_colsum_add(SN, GH, w.da, GH, a.dln_beta_ih, a.dln_beta_hh);
      else if (a.dln_beta_ih || a.dln_beta_hh)
        par_colsum_add(SN, GH, w.da, GH, a.dln_beta_ih ? a.dln_beta_ih : a.dln_beta_hh);
      if (a.dln_gamma_ih) par_colprod_add(SN, GH, w.da, k.xhat, a.dln_gamma_ih);
      if (a.dln_gamma_hh) par_colprod_add(SN, GH, w.da, k.hhat, a.dln_gamma_hh);
      if (a.dln_beta_c) par_colsum_add(SN, H, w.dnl, H, a.dln_beta_c);
      if (a.dln_gamma_c) par_colprod_add(SN, H, w.dnl, k.chat, a.dln_gamma_c);
    }
  });
}

}  // namespace

void fill_lstm_ln(isa::Table& t) {
  t.lstm_ln_sizes = &sizes;
  t.f32.lstm_ln_forward = &forward<float>;
  t.f32.lstm_ln_backward = &backward<float>;
  t.f64.lstm_ln_forward = &forward<double>;
  t.f64.lstm_ln_backward = &backward<double>;
}

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
