#!/usr/bin/env python
"""The low-precision GEMM building blocks (fusedrnn.lowp) per tier, against the kernels' fp32
packed GEMM and torch.mm in bfloat16 and float32, side by side.

    python bench/bench_lowp.py [--shapes step,proj,square] [--threads 1 2] [--reps 9]
                               [--tiers amx,avx512_bf16,avx512,avx2,baseline] [--json PATH]

Shapes (m x n x K, C = A [m, K] times Wᵀ, W [n, K]): step 64x1024x256 (an LSTM a time step:
N=64, 4H=1024, H=256), step512 64x2048x512, proj 6400x1024x256 (LSTM a's input projection over
T=100 steps), square 1024x1024x1024. Every contender has its weights prepared once (packed, or
converted to a bf16 tensor for torch) and its activations already in its operand type (bf16 /
s8 / fp32): the timings are the products alone. Our int8 times include the per-row dequantisation
(fp32 output) but not the activation quantisation.
Timing: per (shape, threads) the contenders alternate in one process (order reversed every
repetition), each call repeated to >= --min-rep-ms per timed sample; median (and min) per call of
--reps samples; GF/s = 2 m n K / median. The tile unit of this VM has a fast and a slow state
about 4x apart (../shared/design/PRECISION.md): compare only contenders of one run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from fusedrnn import _core, lowp
from fusedrnn import reference as ref

SHAPES = {"step": (64, 1024, 256), "step512": (64, 2048, 512), "proj": (6400, 1024, 256),
          "square": (1024, 1024, 1024)}


def contenders(m, n, K, tiers, threads, torch):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, K)).astype(np.float32)
    w = (rng.standard_normal((n, K)) * 0.1).astype(np.float32)
    out = {}
    c = np.empty((m, n), np.float32)
    pw = lowp.PackedBF16(w)
    pq = lowp.PackedInt8(w)
    for t in tiers:
        abf = _core.lowp_to_bf16(a, t)
        q, s = _core.lowp_quantize_s8(a, t)
        out[f"bf16 {t}"] = (lambda abf=abf, t=t: pw.matmul_bf16(abf, out=c, tier=t,
                                                                  num_threads=threads))
        out[f"int8 {t}"] = (lambda q=q, s=s, t=t: pq.matmul_s8(q, s, out=c, tier=t,
                                                               num_threads=threads))
    pf = _core.lowp_f32_pack(w)
    out["fp32 packed"] = lambda: _core.lowp_f32_gemm(a, pf, n, c, threads)
    if torch is not None:
        ta = torch.from_numpy(a)
        tw = torch.from_numpy(np.ascontiguousarray(w.T))
        tab, twb = ta.to(torch.bfloat16), tw.to(torch.bfloat16)
        tcb = torch.empty((m, n), dtype=torch.bfloat16)
        tc = torch.empty((m, n))
        out["torch bf16 mm"] = lambda: torch.mm(tab, twb, out=tcb)
        out["torch fp32 mm"] = lambda: torch.mm(ta, tw, out=tc)
        # torch.mm with bf16 operands and an fp32 result is not offered; its bf16 output rounds.
    return out


def time_all(fns, reps, min_rep_ms):
    names = list(fns)
    inner = {}
    for k in names:  # warm-up, and calls per sample
        fns[k]()
        t0 = time.perf_counter()
        fns[k]()
        dt = time.perf_counter() - t0
        inner[k] = max(1, int(min_rep_ms / 1e3 / max(dt, 1e-7)))
    samples = {k: [] for k in names}
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            f, n = fns[k], inner[k]
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            samples[k].append((time.perf_counter() - t0) / n)
    return {k: (statistics.median(v), min(v)) for k, v in samples.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="step,step512,proj,square")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--min-rep-ms", type=float, default=20.0)
    p.add_argument("--tiers", default=None, help="default: every tier available here")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    tiers = ([t for t, ok in lowp.tiers().items() if ok] if args.tiers is None
             else args.tiers.split(","))
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch not installed: no torch contenders", file=sys.stderr)
    info = _core.build_info()
    print(f"fusedrnn {info['version']}, fp32 copy {info['instruction_set']}, lowp tiers "
          f"{', '.join(tiers)} (active {lowp.active_tier()})"
          + (f"; torch {torch.__version__}" if torch else ""))
    results = []
    for shape in args.shapes.split(","):
        m, n, K = SHAPES[shape]
        flops = 2.0 * m * n * K
        for th in args.threads:
            if torch is not None:
                torch.set_num_threads(th)
            fns = contenders(m, n, K, tiers, th, torch)
            res = time_all(fns, args.reps, args.min_rep_ms)
            peer = res.get("torch bf16 mm", (None,))[0]
            print(f"\n{shape} {m}x{n}x{K}, {th} thread(s): median ms (min), GF/s, "
                  "torch bf16 time / this time")
            for k, (med, mn) in res.items():
                ratio = f"{peer / med:6.2f}x" if peer else ""
                print(f"  {k:22s} {med * 1e3:9.3f} ({mn * 1e3:8.3f})  {flops / med / 1e9:8.1f}  "
                      f"{ratio}")
                results.append({"shape": shape, "m": m, "n": n, "K": K, "threads": th,
                                "contender": k, "median_ms": med * 1e3, "min_ms": mn * 1e3,
                                "gflops": flops / med / 1e9,
                                "vs_torch_bf16": (peer / med) if peer else None})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"build_info": info, "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
