// GRU forward and backward kernels, both formulas (PyTorch gate order r, z, n):
//   reset_after:  n = tanh(gx_n + b_in + r*(W_hn h + b_hn))     one recurrent GEMM per step
//   reset_before: n = tanh(gx_n + b_in + W_hn (r*h) + b_hn)     r first, then a second GEMM on r*h
//   h_t = (1 - z)*n + z*h_{t-1}
#include "isa_kernels.inc"
#include "gates.h"
#include "instantiate.h"
#include "packed_gemm.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

using detail::Index;

// Cache: hs [T+1, N, H] (h before each step), gates [T, N, 4H]: activated r, z, n and a fourth
// block q = W_hn h + b_hn (reset_after) or q = r*h (reset_before). Step order.
std::size_t gru_cache_size(const Dims& d) {
  return std::size_t((d.T + 1) * d.N * d.H + d.T * d.N * 4 * d.H);
}
// Forward workspace: packed w_ih and w_hh (its r, z rows and its n rows apart, for
// reset_before's two products) first, at offsets that depend on C and H only
// (Options::weights_packed), then a chunk of the input projection, gh [N, 3H], gates of one step
// [N, 4H] and the h double buffer.
std::size_t gru_forward_workspace_size(const Dims& d) {
  return std::size_t(detail::kAlignSlack + detail::proj_workspace_size(d, 3) + d.N * 3 * d.H +
                     d.N * 4 * d.H +
                     2 * d.N * d.H +
                     detail::packed_bound(d.C, 3 * d.H) + detail::packed_bound(d.H, 2 * d.H) +
                     detail::packed_bound(d.H, d.H));
}
// Backward workspace: dgh [T, N, 3H] (step order), dgx [T, N, 3H] (time order), dh double
// buffer [2, N, H], d(r*h) [N, H], packed w_hh (r, z rows and n rows apart) and w_ih.
std::size_t gru_backward_workspace_size(const Dims& d) {
  return std::size_t(detail::kAlignSlack + 2 * d.T * d.N * 3 * d.H + 3 * d.N * d.H +
                     detail::packed_bound(2 * d.H, d.H) + detail::packed_bound(d.H, d.H) +
                     detail::packed_bound(3 * d.H, d.C));
}

template <typename Scalar>
void gru_forward(const Dims& d, const Options& opt, GruVariant variant, const Scalar* x,
                 const Scalar* w_ih, const Scalar* w_hh, const Scalar* b_ih, const Scalar* b_hh,
                 const Scalar* h0, const std::int64_t* lengths, Scalar* y, Scalar* h_n,
                 Scalar* cache, Scalar* workspace) {
  using namespace detail;
  const char* fn = "gru_forward";
  check_dims(fn, d);
  for (auto [p, name] : {std::pair<const void*, const char*>{x, "x"}, {w_ih, "w_ih"},
                         {w_hh, "w_hh"}, {y, "y"}, {h_n, "h_n"}, {workspace, "workspace"}})
    check_ptr(fn, p, name);
  const Index S = check_lengths(fn, d, lengths);
  const Index N = d.N, H = d.H, GH = 3 * H, NH = N * H;
  const Index nub = ceil_div(H, kUnitBlock);
  const StepMap sm{lengths, d.T, opt.reverse};
  const bool training = cache != nullptr;
  const bool after = variant == GruVariant::reset_after;

  const Index TC = proj_chunk_steps(d);
  Scalar* wih_p = aligned64(workspace);
  Scalar* whh_p = aligned64(wih_p + packed_bound(d.C, GH));  // reset_after: all 3H rows of w_hh
  // reset_before: r, z rows above, n rows here
  Scalar* whn_p = aligned64(whh_p + packed_bound(H, 2 * H));
  Scalar* gx = whn_p + packed_bound(H, H);  // [TC * N, 3H], steps s0.. of the current chunk
  Scalar* xs = gx + TC * N * GH;
  Scalar* gh = xs + TC * N * d.C;
  Scalar* gstep = gh + N * GH;
  Scalar* hbuf = gstep + N * 4 * H;
  Scalar* hs = training ? cache : hbuf;
  Scalar* gates = training ? cache + (d.T + 1) * NH : nullptr;
  auto slot = [&](Index s) { return hs + (training ? s : s % 2) * NH; };
  // Gate row (r, z, n, q) of sequence n at step s.
  auto gate_row = [&](Index s, Index n) {
    return (training ? gates + s * N * 4 * H : gstep) + n * 4 * H;
  };

  parallel_region(thread_count(opt, d, 3), [&] {
    forward_prologue(d, opt, 3, w_ih, lengths, wih_p, y);
    if (!opt.weights_packed) {
      par_pack(w_hh, H, after ? GH : 2 * H, H, true, whh_p);
      if (!after) par_pack(w_hh + 2 * H * H, H, H, H, true, whn_p);
    }
    par_copy_or_zero(hs, h0, NH);
    for (Index s = 0; s < S; ++s) {
      const Scalar* h_prev = slot(s);
      Scalar* h_next = slot(s + 1);
      // reset_after: gh = h w_hhᵀ (all three blocks); reset_before: the r and z blocks only.
      if (s % TC == 0) project_steps(d, 3, sm, s, std::min(S, s + TC), x, wih_p, xs, gx);
      par_gemm_packed(N, after ? GH : 2 * H, H, h_prev, H, whh_p, gh, GH, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        Scalar* a = gate_row(s, n);
        Scalar *ar = a + u0, *aq = a + 3 * H + u0;
        if (t < 0) {
          std::copy(h_prev + off, h_prev + off + bk, h_next + off);
          if (!after) std::fill(aq, aq + bk, Scalar(0));  // r*h feeds the next GEMM
          continue;
        }
        const Scalar* gxr = gx + ((s % TC) * N + n) * GH + u0;
        const Scalar* ghr = gh + n * GH + u0;
        const Scalar* bi = b_ih ? b_ih + u0 : nullptr;
        const Scalar* bh = b_hh ? b_hh + u0 : nullptr;
        if (after)
          gru_after_gates_forward(bk, H, gxr, ghr, bi, bh, h_prev + off, h_next + off,
                                  y + (t * N + n) * H + u0, training ? ar : nullptr);
        else
          gru_before_gates_rz(bk, H, gxr, ghr, bi, bh, h_prev + off, ar);
      }
      if (after) continue;
      // reset_before: gh_n = (r*h) w_hnᵀ, then the candidate and the new state.
      const Scalar* q = gate_row(s, 0) + 3 * H;
      par_gemm_packed(N, H, H, q, 4 * H, whn_p, gh + 2 * H, GH, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        if (t < 0) continue;
        gru_before_gates_n(bk, H, gx + ((s % TC) * N + n) * GH + u0, gh + n * GH + u0,
                           b_ih ? b_ih + u0 : nullptr, b_hh ? b_hh + u0 : nullptr, h_prev + off,
                           h_next + off, y + (t * N + n) * H + u0, gate_row(s, n) + u0);
      }
    }
#ifdef _OPENMP
#pragma omp single
#endif
    std::copy(slot(S), slot(S) + NH, h_n);
    });
}

template <typename Scalar>
void gru_backward(const Dims& d, const Options& opt, GruVariant variant, const Scalar* x,
                  const Scalar* w_ih, const Scalar* w_hh, const std::int64_t* lengths,
                  const Scalar* cache, const Scalar* dy, const Scalar* dh_n, Scalar* dx,
                  Scalar* dh0, Scalar* dw_ih, Scalar* dw_hh, Scalar* db_ih, Scalar* db_hh,
                  Scalar* workspace) {
  using namespace detail;
  const char* fn = "gru_backward";
  check_dims(fn, d);
  for (auto [p, name] : {std::pair<const void*, const char*>{x, "x"}, {w_ih, "w_ih"},
                         {w_hh, "w_hh"}, {cache, "cache"}, {dx, "dx"},
                         {workspace, "workspace"}})
    check_ptr(fn, p, name);
  const Index S = check_lengths(fn, d, lengths);
  const Index N = d.N, H = d.H, GH = 3 * H, NH = N * H;
  const Index nub = ceil_div(H, kUnitBlock);
  const StepMap sm{lengths, d.T, opt.reverse};
  const bool after = variant == GruVariant::reset_after;

  const Scalar* hs = cache;
  const Scalar* gates = cache + (d.T + 1) * NH;
  Scalar* dgh = workspace;
  // reset_after: the n block differs (dgh_n = dn_pre*r, dgx_n = dn_pre), so two buffers; else
  // they differ only in order, and without reverse not even that.
  Scalar* dgx = (after || opt.reverse) ? dgh + d.T * N * GH : dgh;
  Scalar* dhbuf = dgh + 2 * d.T * N * GH;
  Scalar* drh = dhbuf + 2 * NH;
  // Packed w_hh for dg w_hh: reset_after all 3H rows; reset_before rows r, z here, n rows below.
  Scalar* whh_q = aligned64(drh + NH);
  Scalar* whn_q = aligned64(whh_q + packed_bound(2 * H, H));
  Scalar* wih_q = aligned64(whn_q + packed_bound(H, H));

  parallel_region(thread_count(opt, d, 3), [&] {
    if (lengths) par_fill(dgx, d.T * N * GH, Scalar(0));
    par_pack(w_hh, after ? GH : 2 * H, H, H, false, whh_q);
    if (!after) par_pack(w_hh + 2 * H * H, H, H, H, false, whn_q);
    par_copy_or_zero(dhbuf + (S % 2) * NH, dh_n, NH);
    for (Index s = S - 1; s >= 0; --s) {
      const Scalar* dh_cur = dhbuf + ((s + 1) % 2) * NH;
      Scalar* dh_nxt = dhbuf + (s % 2) * NH;
      Scalar* dgs = dgh + s * N * GH;
      const Scalar* hp_s = hs + s * NH;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        Scalar* dg = dgs + n * GH + u0;
        if (t < 0) {
          for (Index g = 0; g < 3; ++g) std::fill(dg + g * H, dg + g * H + bk, Scalar(0));
          std::copy(dh_cur + off, dh_cur + off + bk, dh_nxt + off);
          continue;
        }
        const Scalar* a = gates + (s * N + n) * 4 * H + u0;  // r, z, n, q
        const Scalar* hp = hp_s + off;
        const Scalar* dhc = dh_cur + off;
        const Scalar* dyr = dy ? dy + (t * N + n) * H + u0 : nullptr;
        Scalar* dhn = dh_nxt + off;
        Scalar* dgxr = after ? dgx + (t * N + n) * GH + u0 : nullptr;
        for_packets<Scalar>(bk, [&](auto ld, auto st) {
          namespace ei = Eigen::internal;
          using Pk = Packet<Scalar>;
          const Pk one = ei::pset1<Pk>(Scalar(1));
          // Forward: h = (1 - z)*n + z*h_prev.
          Pk dh = ld(dhc);
          if (dyr) dh = ei::padd(dh, ld(dyr));
          const Pk z = ld(a + H), nn = ld(a + 2 * H);
          const Pk one_z = ei::psub(one, z);
          const Pk dn_pre = ei::pmul(ei::pmul(dh, one_z), ei::psub(one, ei::pmul(nn, nn)));
          const Pk dz_pre = ei::pmul(ei::pmul(ei::pmul(dh, ei::psub(ld(hp), nn)), z), one_z);
          st(dg + H, dz_pre);
          st(dhn, ei::pmul(dh, z));
          if (dgxr) {
            // n = tanh(gx_n + b_in + r*q), q = W_hn h + b_hn: dr = dn_pre*q, dq = dn_pre*r.
            const Pk r = ld(a);
            const Pk dr_pre = ei::pmul(ei::pmul(ei::pmul(dn_pre, ld(a + 3 * H)), r),
                                       ei::psub(one, r));
            st(dg, dr_pre);
            st(dg + 2 * H, ei::pmul(dn_pre, r));
            st(dgxr, dr_pre);
            st(dgxr + H, dz_pre);
            st(dgxr + 2 * H, dn_pre);
          } else {
            st(dg + 2 * H, dn_pre);  // r's gradient needs d(r*h) = dn_pre W_hn: next pass
          }
        });
      }
      if (after) {
        par_gemm_packed(N, H, GH, dgs, GH, whh_q, dh_nxt, H, true);
        continue;
      }
      // reset_before: n = tanh(... + W_hn (r*h) + b_hn), so d(r*h) = dn_pre W_hn, which gives
      // dr = d(r*h)*h and a direct term d(r*h)*r of dh_prev.
      par_gemm_packed(N, H, H, dgs + 2 * H, GH, whn_q, drh, H, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        if (t < 0) continue;
        const Scalar* r = gates + (s * N + n) * 4 * H + u0;
        const Scalar* hp = hp_s + off;
        const Scalar* dq = drh + off;
        Scalar* dg = dgs + n * GH + u0;
        Scalar* dhn = dh_nxt + off;
        Scalar* dgxr = dgx != dgh ? dgx + (t * N + n) * GH + u0 : nullptr;
        for_packets<Scalar>(bk, [&](auto ld, auto st) {
          namespace ei = Eigen::internal;
          using Pk = Packet<Scalar>;
          const Pk one = ei::pset1<Pk>(Scalar(1));
          const Pk rr = ld(r), d = ld(dq);
          const Pk dr_pre = ei::pmul(ei::pmul(ei::pmul(d, ld(hp)), rr), ei::psub(one, rr));
          st(dg, dr_pre);
          st(dhn, ei::padd(ld(dhn), ei::pmul(d, rr)));
          if (dgxr) {
            st(dgxr, dr_pre);
            st(dgxr + H, ld(dg + H));
            st(dgxr + 2 * H, ld(dg + 2 * H));
          }
        });
      }
      par_gemm_packed(N, H, 2 * H, dgs, GH, whh_q, dh_nxt, H, true);
    }
#ifdef _OPENMP
#pragma omp single
#endif
    if (dh0) std::copy(dhbuf, dhbuf + NH, dh0);
    backward_epilogue(d, S, Index(3), H, x, w_ih, dgx, dgh, hs, wih_q, dx, dw_ih,
                      after ? dw_hh : nullptr, db_ih, db_hh);
    if (!after && dw_hh) {
      // The r and z blocks multiplied h, the n block multiplied q = r*h (cache block 4).
      par_gemm_tn_add(2 * H, H, S * N, dgh, GH, hs, H, dw_hh, H);
      par_gemm_tn_add(H, H, S * N, dgh + 2 * H, GH, gates + 3 * H, 4 * H,
               dw_hh + 2 * H * H, H);
    }
    });
}

FUSEDRNN_INSTANTIATE_GRU(float)
FUSEDRNN_INSTANTIATE_GRU(double)

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
