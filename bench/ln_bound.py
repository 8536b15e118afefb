#!/usr/bin/env python
"""How far the layer-norm speed target of issue 19 (fusedrnn's LayerNorm-LSTM / -GRU >= 5x the
TorchScript twin of tests/_torch_twins.py, bench/run.py's regularised rows: T=50 N=32 C=H=256,
float32) can go on this machine. Per cell (lstm, gru), mode (train: forward + backward of
sum(y * dy); infer: forward under no_grad / eval) and thread count, contenders alternated in one
process (order reversed every repetition), medians of --reps:

  twin      the TorchScript layer-norm twin (bench/run.py's "torchscript_ln")
  twin_mm   its matrix products alone: torch.mm on the same shapes, as many as the twin runs
            (per step x W_ihᵀ and h W_hhᵀ; training adds each one's two gradient products)
  fr_plain  the plain fused fusedrnn layer (no layer norm)
  fr_ln     fusedrnn with layer_norm="haste"

and, once per thread count, the machine's fp32 matrix-product rate (torch.mm, 1024^3, MKL).
The bound on fr_ln's speed-up over the twin: twin / (the step's FLOPs at that rate), and
twin / fr_plain (what the plain fused step, the same products without layer norm, achieves).

    python bench/ln_bound.py [--threads 1,2] [--reps 7] [--clock cpu|wall] [--json OUT]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

T, N, H = 50, 32, 256


def flops(cell, mode):
    G = 4 if cell == "lstm" else 3
    fwd = 2.0 * T * N * (H + H) * G * H
    return fwd if mode == "infer" else 3 * fwd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="wall")
    ap.add_argument("--cells", default="lstm,gru")
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch
    import fusedrnn
    from fusedrnn.layers import GRU, LSTM
    from _torch_twins import GRULayer, LayerNormGRUCell, LayerNormLSTMCell, LSTMLayer
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, H)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    out = []
    for threads in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(threads)
        fusedrnn.set_num_threads(threads)
        A = torch.randn(1024, 1024)
        B = torch.randn(1024, 1024)
        ts = []
        for _ in range(max(5, a.reps)):
            t0 = clock()
            for _ in range(4):
                torch.mm(A, B)
            ts.append((clock() - t0) / 4)
        peak = 2 * 1024 ** 3 / float(np.median(ts))
        print(f"threads {threads}: torch.mm 1024^3 {peak / 1e9:.1f} GFLOP/s ({a.clock} clock)")
        for cell in a.cells.split(","):
            lstm = cell == "lstm"
            G = 4 if lstm else 3
            twin = LSTMLayer(LayerNormLSTMCell(H, H, False, 1e-5)) if lstm else \
                GRULayer(LayerNormGRUCell(H, H, 1e-5))
            cls = LSTM if lstm else GRU
            plain, lnl = cls(H, H, seed=0), cls(H, H, seed=0, layer_norm="haste")
            z = torch.zeros(N, H)
            W = torch.randn(G * H, H)
            xs = torch.randn(N, H)
            gg = torch.randn(N, G * H)
            for mode in ("train", "infer"):
                tx = torch.from_numpy(x).requires_grad_(mode == "train")
                tdy = torch.from_numpy(dy)

                def tw():
                    st = (z, z) if lstm else z
                    if mode == "infer":
                        with torch.no_grad():
                            twin(tx, st)
                        return
                    twin.zero_grad()
                    tx.grad = None
                    (twin(tx, st)[0] * tdy).sum().backward()

                def mm():
                    with torch.no_grad():
                        for _ in range(T):
                            for _ in range(2):  # x W_ihᵀ, h W_hhᵀ
                                torch.mm(xs, W.t())
                                if mode == "train":
                                    torch.mm(gg, W)          # d input
                                    torch.mm(gg.t(), xs)     # d weight

                def fr(layer):
                    if mode == "infer":
                        layer.eval()
                        return lambda: layer.forward(x)
                    layer.train()

                    def step():
                        layer.zero_grad()
                        layer.forward(x)
                        layer.backward(dy)
                    return step
                fns = {"twin": tw, "twin_mm": mm, "fr_plain": fr(plain), "fr_ln": fr(lnl)}
                times = {k: [] for k in fns}
                for f in fns.values():
                    f()
                order = list(fns)
                for r in range(a.reps):
                    for k in (order if r % 2 == 0 else order[::-1]):
                        t0 = clock()
                        fns[k]()
                        times[k].append(clock() - t0)
                med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
                fl = flops(cell, mode)
                floor_ms = fl / peak * 1e3
                row = dict(cell=cell, mode=mode, threads=threads, clock=a.clock, median_ms=med,
                           gflop=fl / 1e9, mm_gflops=peak / 1e9, floor_ms=floor_ms,
                           bound_by_peak=med["twin"] / floor_ms,
                           twin_over_plain=med["twin"] / med["fr_plain"],
                           twin_over_ln=med["twin"] / med["fr_ln"],
                           ln_over_plain=med["fr_ln"] / med["fr_plain"],
                           twin_mm_share=med["twin_mm"] / med["twin"])
                out.append(row)
                print(f"{cell} {mode} t={threads}: " +
                      " ".join(f"{k} {v:.2f}" for k, v in med.items()) +
                      f" ms | floor {floor_ms:.2f} ms; twin/floor {row['bound_by_peak']:.2f} "
                      f"twin/plain {row['twin_over_plain']:.2f} twin/ln "
                      f"{row['twin_over_ln']:.2f} ln/plain {row['ln_over_plain']:.2f} "
                      f"mm share of twin {row['twin_mm_share']:.2f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
