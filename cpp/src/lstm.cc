// LSTM forward and backward kernels (PyTorch gate order i, f, g, o; optional peepholes).
// Recipe: one GEMM projects all T*N inputs; per step one blocked GEMM gives h_{t-1} w_hhᵀ, then a
// fused pass adds biases, applies the gates and updates c and h. Backward walks the steps in
// reverse with one fused pass producing the pre-activation gradients and one GEMM giving the
// state gradient; large GEMMs after the loop give the weight and input gradients.
#include "isa_kernels.inc"
#include "instantiate.h"
#include "packed_gemm.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

using detail::Index;

// Cache: hs [T+1, N, H] (h before each step, step order), cs [T+1, N, H] (c likewise),
// gates [T, N, 4H] (activated i, f, g, o, step order).
std::size_t lstm_cache_size(const Dims& d) {
  return std::size_t((d.T + 1) * d.N * d.H * 2 + d.T * d.N * 4 * d.H);
}
// Forward workspace: a chunk of the input projection, gh [N, 4H], gates of one step [N, 4H], h
// and c double buffers [2, N, H] each (used when no cache is given), packed w_ih and w_hh.
std::size_t lstm_forward_workspace_size(const Dims& d) {
  return std::size_t(detail::proj_workspace_size(d, 4) + 2 * d.N * 4 * d.H + 4 * d.N * d.H +
                     detail::packed_bound(d.C, 4 * d.H) + detail::packed_bound(d.H, 4 * d.H));
}
// Backward workspace: dgh [T, N, 4H] (step order), dgx [T, N, 4H] (time order), dh and dc double
// buffers [2, N, H] each, packed w_hh and w_ih.
std::size_t lstm_backward_workspace_size(const Dims& d) {
  return std::size_t(2 * d.T * d.N * 4 * d.H + 4 * d.N * d.H +
                     detail::packed_bound(4 * d.H, d.H) + detail::packed_bound(4 * d.H, d.C));
}

template <typename Scalar>
void lstm_forward(const Dims& d, const Options& opt, const Scalar* x, const Scalar* w_ih,
                  const Scalar* w_hh, const Scalar* b_ih, const Scalar* b_hh, const Scalar* h0,
                  const Scalar* c0, const Scalar* w_peep, const std::int64_t* lengths, Scalar* y,
                  Scalar* h_n, Scalar* c_n, Scalar* cache, Scalar* workspace) {
  using namespace detail;
  const char* fn = "lstm_forward";
  check_dims(fn, d);
  for (auto [p, name] : {std::pair<const void*, const char*>{x, "x"}, {w_ih, "w_ih"},
                         {w_hh, "w_hh"}, {y, "y"}, {h_n, "h_n"}, {c_n, "c_n"},
                         {workspace, "workspace"}})
    check_ptr(fn, p, name);
  const Index S = check_lengths(fn, d, lengths);
  const Index N = d.N, H = d.H, GH = 4 * H, NH = N * H;
  const Index nub = ceil_div(H, kUnitBlock);
  const StepMap sm{lengths, d.T, opt.reverse};
  const bool training = cache != nullptr;

  const Index TC = proj_chunk_steps(d);
  Scalar* gx = workspace;  // [TC * N, 4H], steps s0.. of the current chunk
  Scalar* xs = gx + TC * N * GH;
  Scalar* gh = xs + TC * N * d.C;
  Scalar* gstep = gh + N * GH;
  Scalar* hbuf = gstep + N * GH;
  Scalar* cbuf = hbuf + 2 * NH;
  Scalar* wih_p = cbuf + 2 * NH;
  Scalar* whh_p = wih_p + packed_bound(d.C, GH);
  Scalar* hs = training ? cache : hbuf;
  Scalar* cs = training ? cache + (d.T + 1) * NH : cbuf;
  Scalar* gates = training ? cs + (d.T + 1) * NH : nullptr;
  // State before step s: slot s of the cache, or slot s % 2 of the double buffer.
  auto slot = [&](Scalar* base, Index s) { return base + (training ? s : s % 2) * NH; };

#ifdef _OPENMP
#pragma omp parallel num_threads(thread_count(opt, d, 4))
#endif
  {
    forward_prologue(d, 4, w_ih, lengths, wih_p, y);
    par_pack(w_hh, H, GH, H, true, whh_p);
    par_copy_or_zero(hs, h0, NH);
    par_copy_or_zero(cs, c0, NH);
    for (Index s = 0; s < S; ++s) {
      const Scalar* h_prev = slot(hs, s);
      const Scalar* c_prev = slot(cs, s);
      Scalar* h_next = slot(hs, s + 1);
      Scalar* c_next = slot(cs, s + 1);
      if (s % TC == 0) project_steps(d, 4, sm, s, std::min(S, s + TC), x, wih_p, xs, gx);
      par_gemm_packed(N, GH, H, h_prev, H, whh_p, gh, GH, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        if (t < 0) {  // finished sequence: carry its state through
          std::copy(h_prev + off, h_prev + off + bk, h_next + off);
          std::copy(c_prev + off, c_prev + off + bk, c_next + off);
          continue;
        }
        const Scalar* gxr = gx + ((s % TC) * N + n) * GH;
        const Scalar* ghr = gh + n * GH;
        Scalar* a = (training ? gates + s * N * GH : gstep) + n * GH;  // i, f, g, o of row n
        for (Index g = 0; g < 4; ++g) {
          const Index k0 = g * H + u0;
          for (Index j = 0; j < bk; ++j) a[k0 + j] = gxr[k0 + j] + ghr[k0 + j];
          if (b_ih)
            for (Index j = 0; j < bk; ++j) a[k0 + j] += b_ih[k0 + j];
          if (b_hh)
            for (Index j = 0; j < bk; ++j) a[k0 + j] += b_hh[k0 + j];
        }
        Scalar* ai = a + u0;
        Scalar* af = a + H + u0;
        Scalar* ag = a + 2 * H + u0;
        Scalar* ao = a + 3 * H + u0;
        const Scalar* cp = c_prev + off;
        Scalar* cn = c_next + off;
        Scalar* hn = h_next + off;
        if (w_peep)
          for (Index j = 0; j < bk; ++j) {
            ai[j] += w_peep[u0 + j] * cp[j];
            af[j] += w_peep[H + u0 + j] * cp[j];
          }
        sigmoid_array(ai, ai, bk);
        sigmoid_array(af, af, bk);
        tanh_array(ag, ag, bk);
        for (Index j = 0; j < bk; ++j) cn[j] = af[j] * cp[j] + ai[j] * ag[j];
        if (w_peep)
          for (Index j = 0; j < bk; ++j) ao[j] += w_peep[2 * H + u0 + j] * cn[j];
        sigmoid_array(ao, ao, bk);
        tanh_array(cn, hn, bk);
        Scalar* yr = y + (t * N + n) * H + u0;
        for (Index j = 0; j < bk; ++j) {
          hn[j] *= ao[j];
          yr[j] = hn[j];
        }
      }
    }
#ifdef _OPENMP
#pragma omp single
#endif
    {
      std::copy(slot(hs, S), slot(hs, S) + NH, h_n);
      std::copy(slot(cs, S), slot(cs, S) + NH, c_n);
    }
  }
}

template <typename Scalar>
void lstm_backward(const Dims& d, const Options& opt, const Scalar* x, const Scalar* w_ih,
                   const Scalar* w_hh, const Scalar* w_peep, const std::int64_t* lengths,
                   const Scalar* cache, const Scalar* dy, const Scalar* dh_n, const Scalar* dc_n,
                   Scalar* dx, Scalar* dh0, Scalar* dc0, Scalar* dw_ih, Scalar* dw_hh,
                   Scalar* db_ih, Scalar* db_hh, Scalar* dw_peep, Scalar* workspace) {
  using namespace detail;
  const char* fn = "lstm_backward";
  check_dims(fn, d);
  for (auto [p, name] : {std::pair<const void*, const char*>{x, "x"}, {w_ih, "w_ih"},
                         {w_hh, "w_hh"}, {cache, "cache"}, {dx, "dx"},
                         {workspace, "workspace"}})
    check_ptr(fn, p, name);
  require(!dw_peep || w_peep, "lstm_backward: dw_peep given but w_peep is null");
  const Index S = check_lengths(fn, d, lengths);
  const Index N = d.N, H = d.H, GH = 4 * H, NH = N * H;
  const Index nub = ceil_div(H, kUnitBlock);
  const StepMap sm{lengths, d.T, opt.reverse};

  const Scalar* hs = cache;
  const Scalar* cs = hs + (d.T + 1) * NH;
  const Scalar* gates = cs + (d.T + 1) * NH;
  Scalar* dgh = workspace;
  // Without reverse, step order is time order and one buffer serves both.
  Scalar* dgx = opt.reverse ? dgh + d.T * N * GH : dgh;
  Scalar* dhbuf = dgh + 2 * d.T * N * GH;
  Scalar* dcbuf = dhbuf + 2 * NH;
  Scalar* whh_q = dcbuf + 2 * NH;
  Scalar* wih_q = whh_q + packed_bound(GH, H);

#ifdef _OPENMP
#pragma omp parallel num_threads(thread_count(opt, d, 4))
#endif
  {
    if (lengths) par_fill(dgx, d.T * N * GH, Scalar(0));
    par_pack(w_hh, GH, H, H, false, whh_q);
    // dh and dc carried into step s live in slot (s + 1) % 2; the step writes slot s % 2.
    par_copy_or_zero(dhbuf + (S % 2) * NH, dh_n, NH);
    par_copy_or_zero(dcbuf + (S % 2) * NH, dc_n, NH);
    for (Index s = S - 1; s >= 0; --s) {
      const Scalar* dh_cur = dhbuf + ((s + 1) % 2) * NH;
      const Scalar* dc_cur = dcbuf + ((s + 1) % 2) * NH;
      Scalar* dh_nxt = dhbuf + (s % 2) * NH;
      Scalar* dc_nxt = dcbuf + (s % 2) * NH;
      Scalar* dgs = dgh + s * N * GH;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        Scalar* dg = dgs + n * GH + u0;  // this row's d(i, f, g, o) pre-activations, units u0..
        if (t < 0) {  // inactive: no gradient enters the step; the carry passes through
          for (Index g = 0; g < 4; ++g) std::fill(dg + g * H, dg + g * H + bk, Scalar(0));
          std::copy(dh_cur + off, dh_cur + off + bk, dh_nxt + off);
          std::copy(dc_cur + off, dc_cur + off + bk, dc_nxt + off);
          continue;
        }
        const Scalar* a = gates + (s * N + n) * GH + u0;
        const Scalar *gi = a, *gf = a + H, *gg = a + 2 * H, *go = a + 3 * H;
        const Scalar* cp = cs + s * NH + off;
        const Scalar* ct = cs + (s + 1) * NH + off;
        const Scalar* dyr = dy ? dy + (t * N + n) * H + u0 : nullptr;
        Scalar tc[kUnitBlock];
        tanh_array(ct, tc, bk);
        for (Index j = 0; j < bk; ++j) {
          // Forward: h = o*tanh(c_t); c_t = f*c_prev + i*g; o saw c_t through p_o, i and f saw
          // c_prev through p_i and p_f.
          const Scalar dh = dh_cur[off + j] + (dyr ? dyr[j] : Scalar(0));
          const Scalar do_pre = dh * tc[j] * go[j] * (Scalar(1) - go[j]);
          Scalar dc = dc_cur[off + j] + dh * go[j] * (Scalar(1) - tc[j] * tc[j]);
          if (w_peep) dc += do_pre * w_peep[2 * H + u0 + j];
          const Scalar di_pre = dc * gg[j] * gi[j] * (Scalar(1) - gi[j]);
          const Scalar df_pre = dc * cp[j] * gf[j] * (Scalar(1) - gf[j]);
          const Scalar dg_pre = dc * gi[j] * (Scalar(1) - gg[j] * gg[j]);
          Scalar dcp = dc * gf[j];
          if (w_peep) dcp += di_pre * w_peep[u0 + j] + df_pre * w_peep[H + u0 + j];
          dg[j] = di_pre;
          dg[H + j] = df_pre;
          dg[2 * H + j] = dg_pre;
          dg[3 * H + j] = do_pre;
          dc_nxt[off + j] = dcp;
          dh_nxt[off + j] = Scalar(0);  // the recurrent product below adds dg w_hh
        }
        if (dgx != dgh) {
          Scalar* dgxr = dgx + (t * N + n) * GH + u0;
          for (Index g = 0; g < 4; ++g) std::copy(dg + g * H, dg + g * H + bk, dgxr + g * H);
        }
      }
      par_gemm_packed(N, H, GH, dgs, GH, whh_q, dh_nxt, H, true);
    }
#ifdef _OPENMP
#pragma omp single
#endif
    {
      if (dh0) std::copy(dhbuf, dhbuf + NH, dh0);
      if (dc0) std::copy(dcbuf, dcbuf + NH, dc0);
    }
    backward_epilogue(d, S, Index(4), x, w_ih, dgx, dgh, hs, wih_q, dx, dw_ih, dw_hh, db_ih,
                      db_hh);
    if (dw_peep) {
      // p_i and p_f multiplied c_prev into i and f, p_o multiplied c_t into o:
      // dp_i = Σ di_pre*c_prev, dp_f = Σ df_pre*c_prev, dp_o = Σ do_pre*c_t (over steps, rows).
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < 3 * nub; ++job) {
        const Index p = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index gate = p == 2 ? 3 : p;
        const Index cshift = p == 2 ? NH : 0;
        Scalar acc[kUnitBlock] = {};
        for (Index r = 0; r < S * N; ++r) {
          const Scalar* dg = dgh + r * GH + gate * H + u0;
          const Scalar* c = cs + r * H + cshift + u0;
          for (Index j = 0; j < bk; ++j) acc[j] += dg[j] * c[j];
        }
        for (Index j = 0; j < bk; ++j) dw_peep[p * H + u0 + j] += acc[j];
      }
    }
  }
}

FUSEDRNN_INSTANTIATE_LSTM(float)
FUSEDRNN_INSTANTIATE_LSTM(double)

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
