#!/usr/bin/env python
"""bf16 inference of whole layers, side by side: fusedrnn's frozen layer in bfloat16 and in
float32 against torch.nn in bfloat16 (``module.to(torch.bfloat16)``, oneDNN) and float32.

    python bench/bench_bf16_cells.py [--cases lstm-a,gru-a,rnn-a,lstm-d,...] [--threads 1 2]
                                     [--reps 9] [--json PATH]

Cases (T, N, C = H), the configs of bench/run.py: a (100, 64, 256), b (100, 64, 512),
d (100, 1, 256), e (1000, 1, 64), f (100, 1, 1024); bilstm2-a: a 2-layer bidirectional LSTM.
Every contender gets the same weights (fusedrnn.from_torch), inference only (torch under
inference_mode), the input in its own dtype. Per (case, threads) the contenders alternate in one
process (order reversed every repetition) after two warm-up calls; median and min per call of
--reps calls. Ratio = torch bf16 time / this time. GF/s = 2 G H (C + H) N T L D / median.
The tile unit of this VM has a fast and a slow state about 4x apart
(../shared/design/PRECISION.md): compare contenders of one run only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import fusedrnn
from fusedrnn import lowp

CONFIGS = {"a": (100, 64, 256), "b": (100, 64, 512), "d": (100, 1, 256), "e": (1000, 1, 64),
           "f": (100, 1, 1024)}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def contenders(case):
    cell, cfg = case.split("-")
    T, N, H = CONFIGS[cfg]
    layers, bidir = (2, True) if cell == "bilstm2" else (1, False)
    base = "lstm" if cell == "bilstm2" else cell
    torch.manual_seed(0)
    mod = getattr(torch.nn, base.upper() if base != "rnn" else "RNN")(
        H, H, num_layers=layers, bidirectional=bidir)
    mod.eval()
    mod16 = getattr(torch.nn, base.upper() if base != "rnn" else "RNN")(
        H, H, num_layers=layers, bidirectional=bidir)
    mod16.load_state_dict(mod.state_dict())
    mod16 = mod16.to(torch.bfloat16).eval()
    x = torch.randn(T, N, H)
    x16 = x.to(torch.bfloat16)
    layer = fusedrnn.from_torch(mod).eval()
    f32 = layer.frozen()
    b16 = layer.frozen(precision="bfloat16")
    xn = x.numpy().copy()

    def torch_run(m, xx):
        def f():
            with torch.inference_mode():
                m(xx)
        return f
    fns = {"fusedrnn bf16": lambda: b16(xn), "fusedrnn fp32": lambda: f32(xn),
           "torch bf16": torch_run(mod16, x16), "torch fp32": torch_run(mod, x)}
    D = 2 if bidir else 1
    flops = 0
    for li in range(layers):
        C = H if li == 0 else D * H
        flops += 2 * GATES[base] * H * (C + H) * N * T * D
    return fns, flops


def time_all(fns, reps):
    for f in fns.values():
        f()
        f()
    names = list(fns)
    times = {k: [] for k in names}
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="lstm-a,lstm-b,gru-a,gru-b,rnn-a,lstm-d,gru-d,lstm-e,"
                                      "lstm-f,bilstm2-a")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    print(f"fusedrnn {fusedrnn.__version__}, lowp tier {lowp.active_tier()}, torch "
          f"{torch.__version__}")
    results = []
    for case in args.cases.split(","):
        fns, flops = contenders(case)
        for th in args.threads:
            torch.set_num_threads(th)
            fusedrnn.set_num_threads(th)
            res = time_all(fns, args.reps)
            peer = res["torch bf16"][0]
            print(f"\n{case}, {th} thread(s): median ms (min), GF/s, torch bf16 / this")
            for k, (med, mn) in res.items():
                print(f"  {k:14s} {med * 1e3:9.2f} ({mn * 1e3:8.2f})  {flops / med / 1e9:7.1f}  "
                      f"{peer / med:5.2f}x")
                results.append({"case": case, "threads": th, "contender": k,
                                "median_ms": med * 1e3, "min_ms": mn * 1e3,
                                "gflops": flops / med / 1e9, "vs_torch_bf16": peer / med})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
