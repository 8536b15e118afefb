#!/usr/bin/env python
"""CTC loss, forward + backward, fusedrnn vs torch.nn.functional.ctc_loss on the CPU (float32).

    python bench/bench_ctc.py [--reps 7] [--threads 1 2] [--K 28 5000] [--N 1 16 64]
                              [--T 150] [--L 40] [--json out.json]

warp-ctc's published shapes: T = 150 frames, L = 40 labels, alphabet K = 28 or 5000, batch N.
Two comparisons, same inputs:
  "log_probs": fusedrnn.losses.ctc(log_probs) against torch's ctc_loss on a log_probs leaf
               (loss "sum", then backward: torch's gradient kernel included);
  "logits":    fusedrnn.losses.ctc_logits(logits) (the log-softmax fused) against
               torch's ctc_loss(log_softmax(logits)) and backward to the logits.
Each repetition runs every contender once (order alternating); the table prints medians in
milliseconds (the --json rows: seconds, fusedrnn_s / torch_s and every repetition's time),
ratio = torch median / fusedrnn median (> 1: fusedrnn faster), and in brackets the ratio of
the minima.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import fusedrnn
from fusedrnn.losses import ctc, ctc_logits
from fusedrnn.validators import parse_int


def problem(T, N, K, L, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((T, N, K)).astype(np.float32)
    m = logits.max(-1, keepdims=True)
    lp = (logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))).astype(np.float32)
    targets = rng.integers(1, K, size=(N, L)).astype(np.int64)
    il = np.full(N, T, np.int64)
    tl = np.full(N, L, np.int64)
    return logits, lp, targets, il, tl


def contenders(T, N, K, L):
    logits, lp, targets, il, tl = problem(T, N, K, L)
    t_lp = torch.from_numpy(lp.copy()).requires_grad_()
    t_z = torch.from_numpy(logits.copy()).requires_grad_()
    t_tg, t_il, t_tl = map(torch.from_numpy, (targets, il, tl))

    def torch_lp():
        t_lp.grad = None
        torch.nn.functional.ctc_loss(t_lp, t_tg, t_il, t_tl, reduction="sum").backward()

    def torch_logits():
        t_z.grad = None
        torch.nn.functional.ctc_loss(torch.log_softmax(t_z, -1), t_tg, t_il, t_tl,
                                     reduction="sum").backward()

    def fr_lp():
        ctc(lp, targets, il, tl, reduction="sum")

    def fr_logits():
        ctc_logits(logits, targets, il, tl, reduction="sum")

    # sanity: the same loss on both sides
    a = ctc_logits(logits, targets, il, tl, reduction="sum")[0]
    b = float(torch.nn.functional.ctc_loss(torch.log_softmax(t_z, -1), t_tg, t_il, t_tl,
                                           reduction="sum"))
    assert abs(a - b) <= 1e-4 * abs(b), (a, b)
    return {"log_probs": (fr_lp, torch_lp), "logits": (fr_logits, torch_logits)}


def timeit(fns, reps):
    times = [[] for _ in fns]
    for f in fns:           # warm-up (workspace, page faults, torch's allocator)
        f()
    for r in range(reps):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # sizes are integers >= their bound (0 reps ended in statistics' StatisticsError, K = 1 in
    # numpy's "high <= low": usage errors instead)
    ap.add_argument("--reps", type=parse_int(1), default=7)
    ap.add_argument("--threads", type=parse_int(1), nargs="+", default=[1, 2])
    ap.add_argument("--K", type=parse_int(2), nargs="+", default=[28, 5000],
                    help="alphabet sizes, the blank included (>= 2)")
    ap.add_argument("--N", type=parse_int(1), nargs="+", default=[1, 16, 64])
    ap.add_argument("--T", type=parse_int(1), default=150)
    ap.add_argument("--L", type=parse_int(1), default=40)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.T < 2 * args.L - 1:  # room for any L labels, repeats included: a finite loss
        ap.error(f"--T {args.T} is too short for --L {args.L} labels (needs T >= 2 L - 1)")
    rows = []
    print(f"torch {torch.__version__}, fusedrnn {fusedrnn.__version__} "
          f"({fusedrnn.build_info()['instruction_set']}), T={args.T} L={args.L}, float32, "
          f"forward+backward, medians of {args.reps}")
    print(f"{'threads':>7} {'K':>5} {'N':>3} {'variant':>9} {'fusedrnn ms':>12} {'torch ms':>10} "
          f"{'ratio':>6}  (min ratio)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        fusedrnn.set_num_threads(threads)
        for K in args.K:
            for N in args.N:
                for variant, (fr, tr) in contenders(args.T, N, K, args.L).items():
                    tf, tt = timeit([fr, tr], args.reps)
                    mf, mt = statistics.median(tf), statistics.median(tt)
                    row = dict(threads=threads, K=K, N=N, variant=variant, fusedrnn_s=mf,
                               torch_s=mt, ratio=mt / mf, min_ratio=min(tt) / min(tf),
                               fusedrnn_times=tf, torch_times=tt)
                    rows.append(row)
                    print(f"{threads:>7} {K:>5} {N:>3} {variant:>9} {mf * 1e3:>12.3f} "
                          f"{mt * 1e3:>10.3f} {mt / mf:>6.2f}  ({row['min_ratio']:.2f})",
                          flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(T=args.T, L=args.L, reps=args.reps, torch=torch.__version__,
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
