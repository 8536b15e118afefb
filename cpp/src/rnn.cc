// Elman RNN forward and backward kernels: h_t = act(W_ih x + b_ih + W_hh h_{t-1} + b_hh).
#include "isa_kernels.inc"
#include "gates.h"
#include "instantiate.h"
#include "packed_gemm.h"

namespace fusedrnn {
namespace FUSEDRNN_ISA_NS {

using detail::Index;

const char* isa_name() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#elif defined(__AVX__)
  return "avx";
#elif defined(__SSE2__) || defined(_M_X64)
  return "sse2";
#elif defined(__ARM_NEON)
  return "neon";
#else
  return "scalar";
#endif
}

// Cache: hs [T+1, N, H], the state before each step (step order); the activation's derivative
// is taken from the activated value hs[s+1].
std::size_t rnn_cache_size(const Dims& d) { return std::size_t((d.T + 1) * d.N * d.H); }
// Forward workspace: packed w_ih and w_hh first, at offsets that depend on C and H only
// (Options::weights_packed), then a chunk of the input projection, gh [N, H] and the h double
// buffer [2, N, H].
std::size_t rnn_forward_workspace_size(const Dims& d) {
  return std::size_t(detail::kAlignSlack + detail::proj_workspace_size(d, 1) + 3 * d.N * d.H +
                     detail::packed_bound(d.C, d.H) +
                     detail::packed_bound(d.H, d.H));
}
// Backward workspace: dgh [T, N, H] (step order), dgx [T, N, H] (time order), dh [2, N, H],
// packed w_hh and w_ih.
std::size_t rnn_backward_workspace_size(const Dims& d) {
  return std::size_t(detail::kAlignSlack + 2 * d.T * d.N * d.H + 2 * d.N * d.H +
                     detail::packed_bound(d.H, d.H) +
                     detail::packed_bound(d.H, d.C));
}

template <typename Scalar>
void rnn_forward(const Dims& d, const Options& opt, Nonlinearity act, const Scalar* x,
                 const Scalar* w_ih, const Scalar* w_hh, const Scalar* b_ih, const Scalar* b_hh,
                 const Scalar* h0, const std::int64_t* lengths, Scalar* y, Scalar* h_n,
                 Scalar* cache, Scalar* workspace) {
  using namespace detail;
  const char* fn = "rnn_forward";
  check_dims(fn, d);
  for (auto [p, name] : {std::pair<const void*, const char*>{x, "x"}, {w_ih, "w_ih"},
                         {w_hh, "w_hh"}, {y, "y"}, {h_n, "h_n"}, {workspace, "workspace"}})
    check_ptr(fn, p, name);
  const Index S = check_lengths(fn, d, lengths);
  const Index N = d.N, H = d.H, NH = N * H;
  const Index nub = ceil_div(H, kUnitBlock);
  const StepMap sm{lengths, d.T, opt.reverse};
  const bool training = cache != nullptr;

  const Index TC = proj_chunk_steps(d);
  Scalar* wih_p = aligned64(workspace);
  Scalar* whh_p = aligned64(wih_p + packed_bound(d.C, H));
  Scalar* gx = whh_p + packed_bound(H, H);  // [TC * N, H], steps s0.. of the current chunk
  Scalar* xs = gx + TC * NH;
  Scalar* gh = xs + TC * N * d.C;
  Scalar* hbuf = gh + NH;
  Scalar* hs = training ? cache : hbuf;
  auto slot = [&](Index s) { return hs + (training ? s : s % 2) * NH; };

  parallel_region(thread_count(opt, d, 1), [&] {
    forward_prologue(d, opt, 1, w_ih, lengths, wih_p, y);
    if (!opt.weights_packed) par_pack(w_hh, H, H, H, true, whh_p);
    par_copy_or_zero(hs, h0, NH);
    for (Index s = 0; s < S; ++s) {
      const Scalar* h_prev = slot(s);
      Scalar* h_next = slot(s + 1);
      if (s % TC == 0) project_steps(d, 1, sm, s, std::min(S, s + TC), x, wih_p, xs, gx);
      par_gemm_packed(N, H, H, h_prev, H, whh_p, gh, H, false);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        Scalar* hn = h_next + off;
        if (t < 0) {
          std::copy(h_prev + off, h_prev + off + bk, hn);
          continue;
        }
        rnn_gates_forward(bk, act == Nonlinearity::tanh, gx + ((s % TC) * N + n) * H + u0,
                          gh + off, b_ih ? b_ih + u0 : nullptr, b_hh ? b_hh + u0 : nullptr, hn,
                          y + (t * N + n) * H + u0);
      }
    }
#ifdef _OPENMP
#pragma omp single
#endif
    std::copy(slot(S), slot(S) + NH, h_n);
    });
}

template <typename Scalar>
void rnn_backward(const Dims& d, const Options& opt, Nonlinearity act, const Scalar* x,
                  const Scalar* w_ih, const Scalar* w_hh, const std::int64_t* lengths,
                  const Scalar* cache, const Scalar* dy, const Scalar* dh_n, Scalar* dx,
                  Scalar* dh0, Scalar* dw_ih, Scalar* dw_hh, Scalar* db_ih, Scalar* db_hh,
                  Scalar* workspace) {
  using namespace detail;
  const char* fn = "rnn_backward";
  check_dims(fn, d);
  for (auto [p, name] : {std::pair<const void*, const char*>{x, "x"}, {w_ih, "w_ih"},
                         {w_hh, "w_hh"}, {cache, "cache"}, {dx, "dx"},
                         {workspace, "workspace"}})
    check_ptr(fn, p, name);
  const Index S = check_lengths(fn, d, lengths);
  const Index N = d.N, H = d.H, NH = N * H;
  const Index nub = ceil_div(H, kUnitBlock);
  const StepMap sm{lengths, d.T, opt.reverse};

  const Scalar* hs = cache;
  Scalar* dgh = workspace;
  Scalar* dgx = opt.reverse ? dgh + d.T * NH : dgh;
  Scalar* dhbuf = dgh + 2 * d.T * NH;
  Scalar* whh_q = aligned64(dhbuf + 2 * NH);
  Scalar* wih_q = aligned64(whh_q + packed_bound(H, H));

  parallel_region(thread_count(opt, d, 1), [&] {
    if (lengths) par_fill(dgx, d.T * NH, Scalar(0));
    par_pack(w_hh, H, H, H, false, whh_q);
    par_copy_or_zero(dhbuf + (S % 2) * NH, dh_n, NH);
    for (Index s = S - 1; s >= 0; --s) {
      const Scalar* dh_cur = dhbuf + ((s + 1) % 2) * NH;
      Scalar* dh_nxt = dhbuf + (s % 2) * NH;
      Scalar* dgs = dgh + s * NH;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (Index job = 0; job < N * nub; ++job) {
        const Index n = job / nub, u0 = (job % nub) * kUnitBlock;
        const Index bk = std::min(kUnitBlock, H - u0);
        const Index off = n * H + u0;
        const Index t = sm.time(s, n);
        if (t < 0) {
          std::fill(dgs + off, dgs + off + bk, Scalar(0));
          std::copy(dh_cur + off, dh_cur + off + bk, dh_nxt + off);
          continue;
        }
        // Forward: h = act(pre); tanh' = 1 - h², relu' = [h > 0].
        const Scalar* ht = hs + (s + 1) * NH + off;
        const Scalar* dhc = dh_cur + off;
        const Scalar* dyr = dy ? dy + (t * N + n) * H + u0 : nullptr;
        Scalar* dg = dgs + off;
        Scalar* dhn = dh_nxt + off;
        Scalar* dgxr = dgx != dgh ? dgx + (t * N + n) * H + u0 : nullptr;
        const bool tanh_act = act == Nonlinearity::tanh;
        for_packets<Scalar>(bk, [&](auto ld, auto st) {
          namespace ei = Eigen::internal;
          using Pk = Packet<Scalar>;
          const Pk one = ei::pset1<Pk>(Scalar(1)), zero = ei::pzero(one);
          Pk dh = ld(dhc);
          if (dyr) dh = ei::padd(dh, ld(dyr));
          const Pk h = ld(ht);
          const Pk slope = tanh_act ? ei::psub(one, ei::pmul(h, h))
                                    : ei::pselect(ei::pcmp_lt(zero, h), one, zero);
          const Pk g = ei::pmul(dh, slope);
          st(dg, g);
          st(dhn, zero);
          if (dgxr) st(dgxr, g);
        });
      }
      par_gemm_packed(N, H, H, dgs, H, whh_q, dh_nxt, H, true);
    }
#ifdef _OPENMP
#pragma omp single
#endif
    if (dh0) std::copy(dhbuf, dhbuf + NH, dh0);
    backward_epilogue(d, S, Index(1), H, x, w_ih, dgx, dgh, hs, wih_q, dx, dw_ih, dw_hh,
                      db_ih, db_hh);
    });
}

FUSEDRNN_INSTANTIATE_RNN(float)
FUSEDRNN_INSTANTIATE_RNN(double)

}  // namespace FUSEDRNN_ISA_NS
}  // namespace fusedrnn
