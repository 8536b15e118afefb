#!/usr/bin/env python
"""Side-by-side CPU benchmark: fusedrnn vs torch.nn.LSTM / torch.nn.GRU (float32, same weights).

    python bench/bench_torch.py [--reps 9] [--threads 1 2] [--T 100 --N 64 --C 256 --H 256]
                                [--json out.json] [--torch-only]

Both sides are modules with the same weights: torch.nn.LSTM/GRU and fusedrnn.LSTM/GRU
(fusedrnn.from_torch), each keeping its buffers between calls.
Modes: "infer" = forward only (fusedrnn layer.eval(); torch under inference_mode);
"train" = forward + backward of loss sum(y * dy) (fusedrnn zero_grad + forward + backward;
torch zero_grad + forward + y.backward(dy) with grads on the input and all parameters).
Each repetition runs every contender once (order alternating); median and min are reported.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

import numpy as np
import torch

CELLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
# every cell make_problem can build (bench/run.py); "bilstm2" is a 2-layer bidirectional LSTM
TORCH_CELLS = {**CELLS, "rnn": torch.nn.RNN,
               "bilstm2": lambda C, H: torch.nn.LSTM(C, H, num_layers=2, bidirectional=True)}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_problem(cell, T, N, C, H):
    """Seeded float32 torch module, input x [T,N,C], cotangent dy [T,N,D*H] (D directions)."""
    g = torch.Generator().manual_seed(0)
    mod = TORCH_CELLS[cell](C, H)                        # float32, PyTorch default init
    with torch.no_grad():
        for p in mod.parameters():                       # reseed so runs are reproducible
            p.uniform_(-H ** -0.5, H ** -0.5, generator=g)
    x = torch.randn(T, N, C, generator=g)
    dy = torch.randn(T, N, (2 if cell == "bilstm2" else 1) * H, generator=g)
    return mod, x, dy


def make_contenders(cell, mode, args, fr, problem=None):
    """Return {name: zero-arg callable} for one (cell, mode), sharing weights and inputs.

    `args` gives T, N, C, H; `problem` (from make_problem) is built from them when not given.
    """
    mod, x, dy = problem or make_problem(cell, args.T, args.N, args.C, args.H)
    fns = {}

    if mode == "infer":
        def run_torch():
            with torch.inference_mode():
                mod(x)
    else:
        xg = x.clone().requires_grad_(True)

        def run_torch():
            mod.zero_grad(set_to_none=True)
            xg.grad = None
            y, _ = mod(xg)
            y.backward(dy)
    fns["torch"] = run_torch

    if fr is not None:
        # The layer API, as a user trains and runs: one fusedrnn.LSTM/GRU/RNN with the module's
        # weights (fusedrnn.from_torch). Like torch's module it keeps its buffers between calls
        # (kernel cache, workspace, gradients); zero_grad + forward + backward per training step.
        layer = fr.from_torch(mod)
        xn, dyn = x.numpy().copy(), dy.numpy().copy()
        if mode == "infer":
            layer.eval()
            frozen = layer.frozen()

            def run_fr():
                layer.forward(xn)

            def run_frozen():
                frozen.forward(xn)
            # layer.frozen(): the weights packed once, not per call (as ONNX Runtime's session
            # holds its weights pre-packed).
            fns["frozen"] = run_frozen
        else:
            def run_fr():
                layer.zero_grad()
                layer.forward(xn)
                layer.backward(dyn)
        fns["fusedrnn"] = run_fr
    return fns


def time_contenders(fns, reps, warmup=2, settle_s=0.0):
    """Median and min of `reps` timed calls per contender, alternating; `settle_s` of sleep
    (untimed) before each call lets the previous contender's idle threads stop spinning."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            if settle_s:
                time.sleep(settle_s)
            t0 = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "all_ms": v}
            for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    for dim, val in (("T", 100), ("N", 64), ("C", 256), ("H", 256)):
        ap.add_argument(f"--{dim}", type=int, default=val)
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--torch-only", action="store_true", help="skip fusedrnn (not built yet)")
    args = ap.parse_args()
    if args.reps < 7:
        ap.error("--reps must be >= 7")

    fr = None
    if not args.torch_only:
        import fusedrnn as fr
    info = {"cpu": cpu_model(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "shape": {d: getattr(args, d) for d in "TNCH"},
            "dtype": "float32", "reps": args.reps}
    if fr is not None and hasattr(fr, "build_info"):
        info["fusedrnn_build_info"] = fr.build_info()
    for k, v in info.items():
        print(f"# {k}: {v}")

    rows = []
    hdr = (f"{'cell':<5} {'mode':<6} {'thr':>3}  {'fusedrnn ms (med/min)':>22}  "
           f"{'torch ms (med/min)':>20}  {'torch/fused':>11}  {'frozen ms (med/min)':>20}")
    print(hdr + "\n" + "-" * len(hdr))
    for n in args.threads:
        torch.set_num_threads(n)
        if fr is not None:
            fr.set_num_threads(n)
        for cell in args.cells:
            for mode in ("infer", "train"):
                res = time_contenders(make_contenders(cell, mode, args, fr), args.reps)
                t, f, z = res["torch"], res.get("fusedrnn"), res.get("frozen")
                ratio = t["median_ms"] / f["median_ms"] if f else None
                rows.append({"cell": cell, "mode": mode, "threads": n, "torch": t,
                             "fusedrnn": f, "frozen": z, "ratio_torch_over_fusedrnn": ratio})
                fcol = f"{f['median_ms']:9.2f} / {f['min_ms']:9.2f}" if f else "-"
                zcol = f"{z['median_ms']:8.2f} / {z['min_ms']:8.2f}" if z else "-"
                print(f"{cell:<5} {mode:<6} {n:>3}  {fcol:>22}  "
                      f"{t['median_ms']:8.2f} / {t['min_ms']:8.2f}  "
                      f"{(f'{ratio:.2f}x' if ratio else '-'):>11}  {zcol:>20}", flush=True)

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "results": rows}, fh, indent=2)
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
