// LSTM forward and backward kernels (PyTorch gate order i, f, g, o; optional peepholes; optional
// projection of the hidden state, PyTorch's proj_size).
// Recipe: one GEMM projects all T*N inputs; per step one blocked GEMM gives h_{t-1} w_hhᵀ, then a
// fused pass adds biases, applies the gates and updates c and h. Backward walks the steps in
// reverse with one fused pass producing the pre-activation gradients and one GEMM giving the
// state gradient; large GEMMs after the loop give the weight and input gradients.
// With projection (P > 0) the fused pass writes m = o*tanh(c) instead of h, and one more GEMM per
// step gives h = m w_hrᵀ; backward first forms dh (P units) and dm = dh w_hr, then runs the same
// fused pass on dm.
#include "isa_kernels.inc"
#include "gates.h"
#include "instantiate.h"
#include "packed_gemm.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

using detail::Index;

// Cache: hs [T+1, N, R] (h before each step, step order), cs [T+1, N, H] (c likewise),
// gates [T, N, 4H] (activated i, f, g, o, step order) and, with projection, ms [T, N, H]
// (m = o*tanh(c) of each step, zero for inactive rows, step order). R = P if P > 0 else H.
std::size_t lstm_cache_size(const Dims& d) {
  const Index R = detail::rec_width(d);
  return std::size_t((d.T + 1) * d.N * (R + d.H) + d.T * d.N * 4 * d.H +
                     (d.P > 0 ? d.T * d.N * d.H : 0));
}
// Forward workspace: packed w_ih and w_hh (and w_hr with projection) first, at offsets that
// depend on C, H and P only (Options::weights_packed), then a chunk of the input projection,
// gh [N, 4H], h and c double buffers [2, N, R] and [2, N, H] (used when no cache is given) and,
// with projection, m of one step [N, H] (inference).
std::size_t lstm_forward_workspace_size(const Dims& d) {
  const Index R = detail::rec_width(d);
  return std::size_t(detail::kAlignSlack + detail::proj_workspace_size(d, 4) + d.N * 4 * d.H +
                     2 * d.N * (R + d.H) + detail::packed_bound(d.C, 4 * d.H) +
                     detail::packed_bound(R, 4 * d.H) +
                     (d.P > 0 ? d.N * d.H + detail::packed_bound(d.H, d.P) : 0));
}
// Backward workspace: dgh [T, N, 4H] (step order), dgx [T, N, 4H] (time order), dh and dc double
// buffers [2, N, R] and [2, N, H], packed w_hh and w_ih; with projection also dh of every step
// [T, N, P] (step order, for dw_hr), dm of one step [N, H] and packed w_hr.
std::size_t lstm_backward_workspace_size(const Dims& d) {
  const Index R = detail::rec_width(d);
  return std::size_t(detail::kAlignSlack + 2 * d.T * d.N * 4 * d.H + 2 * d.N * (R + d.H) +
                     detail::packed_bound(4 * d.H, R) + detail::packed_bound(4 * d.H, d.C) +
                     (d.P > 0 ? d.T * d.N * d.P + d.N * d.H + detail::packed_bound(d.P, d.H)
                              : 0));
}

namespace {

// w_hr must be given exactly when the dims ask for a projection.
void check_projection(const char* fn, const Dims& d, const void* w_hr) {
  if (w_hr == nullptr && d.P != 0)
    detail::fail(std::string(fn) + ": w_hr must not be null when P = " + std::to_string(d.P) +
                 " > 0");
  if (w_hr != nullptr && d.P <= 0)
    detail::fail(std::string(fn) + ": w_hr given but P = 0 (no projection)");
}

}  // namespace

template <typename Scalar>
void lstm_forward(const Dims& d, const Options& opt, const Scalar* x, const Scalar* w_ih,
                  const Scalar* w_hh, const Scalar* b_ih, const Scalar* b_hh, const Scalar* h0,
                  const Scalar* c0, const Scalar* w_peep, const Scalar* w_hr,
                  const std::int64_t* lengths, Scalar* y, Scalar* h_n, Scalar* c_n, Scalar* cache,
                  Scalar* workspace) {
  using namespace detail;
  const char* fn = "lstm_forward";
  check_dims(fn, d, true);
  for (auto [p, name] : {std::pair<const void*, const char*>{x, "x"}, {w_ih, "w_ih"},
                         {w_hh, "w_hh"}, {y, "y"}, {h_n, "h_n"}, {c_n, "c_n"},
                         {workspace, "workspace"}})
    check_ptr(fn, p, name);
  check_projection(fn, d, w_hr);
  const Index S = check_lengths(fn, d, lengths);
  const Index N = d.N, H = d.H, GH = 4 * H, NH = N * H, P = d.P, R = rec_width(d), NR = N * R;
  const bool proj = P > 0;
  const Index nub = ceil_div(H, kUnitBlock);
  const StepMap sm{lengths, d.T, opt.reverse};
  const bool training = cache != nullptr;

  const Index TC = proj_chunk_steps(d);
  Scalar* wih_p = aligned64(workspace);
  Scalar* whh_p = aligned64(wih_p + packed_bound(d.C, GH));
  Scalar* whr_p = proj ? aligned64(whh_p + packed_bound(R, GH)) : nullptr;
  // gx [TC * N, 4H]: steps s0.. of the current chunk
  Scalar* gx = proj ? whr_p + packed_bound(H, P) : whh_p + packed_bound(R, GH);
  Scalar* xs = gx + TC * N * GH;
  Scalar* gh = xs + TC * N * d.C;
  Scalar* hbuf = gh + N * GH;
  Scalar* cbuf = hbuf + 2 * NR;
  Scalar* mbuf = proj ? cbuf + 2 * NH : nullptr;  // [N, H]
  Scalar* hs = training ? cache : hbuf;
  Scalar* cs = training ? cache + (d.T + 1) * NR : cbuf;
  Scalar* gates = training ? cs + (d.T + 1) * NH : nullptr;
  Scalar* ms = training && proj ? gates + d.T * N * GH : nullptr;
  // State before step s: slot s of the cache, or slot s % 2 of the double buffer.
  // `size`: the scalars of one slot (N*R for h, N*H for c).
  auto slot = [&](Scalar* base, Index s, Index size) {
    return base + (training ? s : s % 2) * size;
  };

  parallel_region(thread_count(opt, d, 4), [&] {
    forward_prologue(d, opt, 4, w_ih, lengths, wih_p, y);
    if (!opt.weights_packed) {
      par_pack(w_hh, R, GH, R, true, whh_p);
      if (proj) par_pack(w_hr, H, P, H, true, whr_p);
    }
    par_copy_or_zero(hs, h0, NR);
    par_copy_or_zero(cs, c0, NH);
    for (Index s = 0; s < S; ++s) {
      const Scalar* h_prev = slot(hs, s, NR);
      const Scalar* c_prev = slot(cs, s, NH);
      Scalar* h_next = slot(hs, s + 1, NR);
      Scalar* c_next = slot(cs, s + 1, NH);
      Scalar* m = proj ? (training ? ms + s * NH : mbuf) : nullptr;  // [N, H]
      if (s % TC == 0) project_steps(d, 4, sm, s, std::min(S, s + TC), x, wih_p, xs, gx);
      par_gemm_packed(N, GH, R, h_prev, R, whh_p, gh, GH, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        if (t < 0) {  // finished sequence: carry its state through
          if (proj)   // m = 0: no gradient flows to w_hr; h is carried after the projection
            std::fill(m + off, m + off + bk, Scalar(0));
          else
            std::copy(h_prev + off, h_prev + off + bk, h_next + off);
          std::copy(c_prev + off, c_prev + off + bk, c_next + off);
          continue;
        }
        // One fused pass: the gates, c, and h (m with projection; y then comes from h below).
        const Index gu = ((s % TC) * N + n) * GH + u0;
        lstm_gates_forward(bk, H, gx + gu, gh + n * GH + u0, b_ih ? b_ih + u0 : nullptr,
                           b_hh ? b_hh + u0 : nullptr, w_peep ? w_peep + u0 : nullptr,
                           c_prev + off, c_next + off, proj ? m + off : h_next + off,
                           proj ? nullptr : y + (t * N + n) * H + u0,
                           training ? gates + (s * N + n) * GH + u0 : nullptr);
      }
      if (proj) {
        // h = m w_hrᵀ [N, P]; a finished sequence carries h_prev instead, an active one writes y.
        par_gemm_packed(N, P, H, m, H, whr_p, h_next, P, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (Index n = 0; n < N; ++n) {
          const Index t = sm.time(s, n);
          if (t < 0)
            std::copy(h_prev + n * P, h_prev + (n + 1) * P, h_next + n * P);
          else
            std::copy(h_next + n * P, h_next + (n + 1) * P, y + (t * N + n) * P);
        }
      }
    }
#ifdef _OPENMP
#pragma omp single
#endif
    {
      std::copy(slot(hs, S, NR), slot(hs, S, NR) + NR, h_n);
      std::copy(slot(cs, S, NH), slot(cs, S, NH) + NH, c_n);
    }
    });
}

template <typename Scalar>
void lstm_backward(const Dims& d, const Options& opt, const Scalar* x, const Scalar* w_ih,
                   const Scalar* w_hh, const Scalar* w_peep, const Scalar* w_hr,
                   const std::int64_t* lengths, const Scalar* cache, const Scalar* dy,
                   const Scalar* dh_n, const Scalar* dc_n, Scalar* dx, Scalar* dh0, Scalar* dc0,
                   Scalar* dw_ih, Scalar* dw_hh, Scalar* db_ih, Scalar* db_hh, Scalar* dw_peep,
                   Scalar* dw_hr, Scalar* workspace) {
  using namespace detail;
  const char* fn = "lstm_backward";
  check_dims(fn, d, true);
  for (auto [p, name] : {std::pair<const void*, const char*>{x, "x"}, {w_ih, "w_ih"},
                         {w_hh, "w_hh"}, {cache, "cache"}, {dx, "dx"},
                         {workspace, "workspace"}})
    check_ptr(fn, p, name);
  check_projection(fn, d, w_hr);
  require(!dw_peep || w_peep, "lstm_backward: dw_peep given but w_peep is null");
  require(!dw_hr || w_hr, "lstm_backward: dw_hr given but w_hr is null (P = 0)");
  const Index S = check_lengths(fn, d, lengths);
  const Index N = d.N, H = d.H, GH = 4 * H, NH = N * H, P = d.P, R = rec_width(d), NR = N * R;
  const bool proj = P > 0;
  const Index nub = ceil_div(H, kUnitBlock);
  const StepMap sm{lengths, d.T, opt.reverse};

  const Scalar* hs = cache;
  const Scalar* cs = hs + (d.T + 1) * NR;
  const Scalar* gates = cs + (d.T + 1) * NH;
  const Scalar* ms = proj ? gates + d.T * N * GH : nullptr;
  Scalar* dgh = workspace;
  // Without reverse, step order is time order and one buffer serves both.
  Scalar* dgx = opt.reverse ? dgh + d.T * N * GH : dgh;
  Scalar* dhbuf = dgh + 2 * d.T * N * GH;
  Scalar* dcbuf = dhbuf + 2 * NR;
  Scalar* whh_q = aligned64(dcbuf + 2 * NH);
  Scalar* wih_q = aligned64(whh_q + packed_bound(GH, R));
  Scalar* dhp = proj ? wih_q + packed_bound(GH, d.C) : nullptr;  // [T, N, P], step order
  Scalar* dm = proj ? dhp + d.T * N * P : nullptr;                // [N, H]
  Scalar* whr_q = proj ? aligned64(dm + NH) : nullptr;

  parallel_region(thread_count(opt, d, 4), [&] {
    if (lengths) par_fill(dgx, d.T * N * GH, Scalar(0));
    par_pack(w_hh, GH, R, R, false, whh_q);
    if (proj) par_pack(w_hr, P, H, H, false, whr_q);
    // dh and dc carried into step s live in slot (s + 1) % 2; the step writes slot s % 2.
    par_copy_or_zero(dhbuf + (S % 2) * NR, dh_n, NR);
    par_copy_or_zero(dcbuf + (S % 2) * NH, dc_n, NH);
    for (Index s = S - 1; s >= 0; --s) {
      const Scalar* dh_cur = dhbuf + ((s + 1) % 2) * NR;
      const Scalar* dc_cur = dcbuf + ((s + 1) % 2) * NH;
      Scalar* dh_nxt = dhbuf + (s % 2) * NR;
      Scalar* dc_nxt = dcbuf + (s % 2) * NH;
      Scalar* dgs = dgh + s * N * GH;
      if (proj) {
        // Forward: h = m w_hrᵀ, and y[t] = h for active rows. dh = carried dh + dy[t] [N, P]
        // (kept for dw_hr += dhᵀ m); a finished row did nothing at this step: dh = 0 and its
        // carry passes through. Active rows of dh_nxt start at 0 for the recurrent product.
        Scalar* dhps = dhp + s * N * P;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (Index n = 0; n < N; ++n) {
          const Index t = sm.time(s, n);
          const Scalar* cur = dh_cur + n * P;
          Scalar* row = dhps + n * P;
          Scalar* nxt = dh_nxt + n * P;
          if (t < 0) {
            std::fill(row, row + P, Scalar(0));
            std::copy(cur, cur + P, nxt);
            continue;
          }
          const Scalar* dyr = dy ? dy + (t * N + n) * P : nullptr;
          for (Index j = 0; j < P; ++j) row[j] = cur[j] + (dyr ? dyr[j] : Scalar(0));
          std::fill(nxt, nxt + P, Scalar(0));
        }
        par_gemm_packed(N, H, P, dhps, P, whr_q, dm, H, false);  // dm = dh w_hr [N, H]
      }
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
          if (!proj) std::copy(dh_cur + off, dh_cur + off + bk, dh_nxt + off);
          std::copy(dc_cur + off, dc_cur + off + bk, dc_nxt + off);
          continue;
        }
        const Scalar* a = gates + (s * N + n) * GH + u0;  // activated i, f, g, o
        const Scalar* cp = cs + s * NH + off;
        const Scalar* ct = cs + (s + 1) * NH + off;
        const Scalar* dcc = dc_cur + off;
        // d(o*tanh(c_t)): without projection dh_cur + dy[t], with it dm (dy is already in it).
        const Scalar* dhr = proj ? dm + off : dh_cur + off;
        const Scalar* dyr = dy && !proj ? dy + (t * N + n) * H + u0 : nullptr;
        const Scalar* wp = w_peep ? w_peep + u0 : nullptr;
        Scalar* dcn = dc_nxt + off;
        // The recurrent product below adds dg w_hh into dh_nxt (with projection, the pass above
        // zeroed it); dgx gets a copy of dg when it is a separate buffer.
        Scalar* dhn = proj ? nullptr : dh_nxt + off;
        Scalar* dgxr = dgx != dgh ? dgx + (t * N + n) * GH + u0 : nullptr;
        for_packets<Scalar>(bk, [&](auto ld, auto st) {
          namespace ei = Eigen::internal;
          using Pk = Packet<Scalar>;
          const Pk one = ei::pset1<Pk>(Scalar(1));
          // Forward: h = o*tanh(c_t) (m with projection); c_t = f*c_prev + i*g; o saw c_t
          // through p_o, i and f saw c_prev through p_i and p_f.
          Pk dh = ld(dhr);
          if (dyr) dh = ei::padd(dh, ld(dyr));
          const Pk gi = ld(a), gf = ld(a + H), gg = ld(a + 2 * H), go = ld(a + 3 * H);
          const Pk tc = ptanh(ld(ct));
          const Pk do_pre = ei::pmul(ei::pmul(ei::pmul(dh, tc), go), ei::psub(one, go));
          Pk dc = ei::padd(ld(dcc), ei::pmul(ei::pmul(dh, go), ei::psub(one, ei::pmul(tc, tc))));
          if (wp) dc = ei::padd(dc, ei::pmul(do_pre, ld(wp + 2 * H)));
          const Pk di_pre = ei::pmul(ei::pmul(ei::pmul(dc, gg), gi), ei::psub(one, gi));
          const Pk df_pre = ei::pmul(ei::pmul(ei::pmul(dc, ld(cp)), gf), ei::psub(one, gf));
          const Pk dg_pre = ei::pmul(ei::pmul(dc, gi), ei::psub(one, ei::pmul(gg, gg)));
          Pk dcp = ei::pmul(dc, gf);
          if (wp)
            dcp = ei::padd(dcp, ei::padd(ei::pmul(di_pre, ld(wp)), ei::pmul(df_pre, ld(wp + H))));
          st(dg, di_pre);
          st(dg + H, df_pre);
          st(dg + 2 * H, dg_pre);
          st(dg + 3 * H, do_pre);
          st(dcn, dcp);
          if (dhn) st(dhn, ei::pzero(one));
          if (dgxr) {
            st(dgxr, di_pre);
            st(dgxr + H, df_pre);
            st(dgxr + 2 * H, dg_pre);
            st(dgxr + 3 * H, do_pre);
          }
        });
      }
      par_gemm_packed(N, R, GH, dgs, GH, whh_q, dh_nxt, R, true);
    }
#ifdef _OPENMP
#pragma omp single
#endif
    {
      if (dh0) std::copy(dhbuf, dhbuf + NR, dh0);
      if (dc0) std::copy(dcbuf, dcbuf + NH, dc0);
    }
    backward_epilogue(d, S, Index(4), R, x, w_ih, dgx, dgh, hs, wih_q, dx, dw_ih, dw_hh, db_ih,
                      db_hh);
    // Forward: h = m w_hrᵀ at every step, so dw_hr += Σ dhᵀ m (inactive rows are zero in both).
    if (dw_hr) par_gemm_tn_add(P, H, S * N, dhp, P, ms, H, dw_hr, H);
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
    });
}

FUSEDRNN_INSTANTIATE_LSTM(float)
FUSEDRNN_INSTANTIATE_LSTM(double)

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
