#!/usr/bin/env python
"""Full training steps with fusedrnn.torch.LSTM / GRU vs torch.nn.LSTM / GRU (CPU, float32).

    python bench/bench_training_loop.py [--reps 7] [--steps 3] [--threads 1 2]
                                        [--cells lstm gru] [--T 100 --N 32 --H 256] [--json out]

Model: Embedding(V, E) -> 2-layer RNN(E, H) -> Linear(H, V) on random tokens [T, N]
(time-major), loss cross-entropy, torch.optim.Adam. One step = zero_grad + forward + loss +
backward + optimizer step. Both contenders start from the same weights (same seed). Each
repetition times ``--steps`` steps of every contender (order alternating between repetitions,
after warm-up steps); the table gives the median (and best) steps per second over
repetitions and the ratio fusedrnn / torch. The thread count is set for both libraries
(torch.set_num_threads and fusedrnn.set_num_threads).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fusedrnn
import fusedrnn.torch as frt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import cpu_model  # noqa: E402


class Model(torch.nn.Module):
    def __init__(self, rnn_cls, V, E, H, layers):
        super().__init__()
        self.embed = torch.nn.Embedding(V, E)
        self.rnn = rnn_cls(E, H, num_layers=layers)
        self.head = torch.nn.Linear(H, V)

    def forward(self, tokens):
        y, _ = self.rnn(self.embed(tokens))
        return self.head(y)


def make_step(impl, cell, args):
    torch.manual_seed(0)
    mod = frt if impl == "fusedrnn" else torch.nn
    model = Model(getattr(mod, cell.upper()), args.V, args.E, args.H, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, args.V, (args.T + 1, args.N), generator=g)
    inp, target = tokens[:-1], tokens[1:].reshape(-1)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inp).reshape(-1, args.V), target)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def bench(cell, threads, args):
    torch.set_num_threads(threads)
    fusedrnn.set_num_threads(threads)
    steps = {impl: make_step(impl, cell, args) for impl in ("torch", "fusedrnn")}
    first = {impl: float(s()) for impl, s in steps.items()}       # warm-up (and a sanity check)
    for s in steps.values():
        s()
    rates = {impl: [] for impl in steps}
    order = list(steps)
    for rep in range(args.reps):
        for impl in (order if rep % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[impl]()
            rates[impl].append(args.steps / (time.perf_counter() - t0))
    return rates, first


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--steps", type=int, default=3, help="timed steps per repetition")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cells", nargs="+", choices=["lstm", "gru"], default=["lstm", "gru"])
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--N", type=int, default=32)
    p.add_argument("--H", type=int, default=256)
    p.add_argument("--E", type=int, default=128)
    p.add_argument("--V", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    if args.reps < 7:
        p.error("--reps must be at least 7")

    load0 = os.getloadavg()
    print(f"# {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, fusedrnn "
          f"{fusedrnn.__version__} ({fusedrnn.build_info().get('instruction_set', '?')})")
    print(f"# Embedding({args.V},{args.E}) -> {args.layers}-layer RNN H={args.H} -> "
          f"Linear; T={args.T} N={args.N}; Adam; float32; median (best) steps/s over "
          f"{args.reps} reps x {args.steps} steps; loadavg before {load0[0]:.2f}")
    print("| cell | threads | torch.nn steps/s | fusedrnn.torch steps/s | ratio |")
    print("|------|--------:|-----------------:|-----------------------:|------:|")
    results = []
    for cell in args.cells:
        for threads in args.threads:
            rates, first = bench(cell, threads, args)
            med = {k: statistics.median(v) for k, v in rates.items()}
            best = {k: max(v) for k, v in rates.items()}
            ratio = med["fusedrnn"] / med["torch"]
            print(f"| {cell.upper()} | {threads} | {med['torch']:.2f} ({best['torch']:.2f}) | "
                  f"{med['fusedrnn']:.2f} ({best['fusedrnn']:.2f}) | {ratio:.2f}x |", flush=True)
            results.append(dict(cell=cell, threads=threads, rates=rates, median=med,
                                ratio=ratio, first_loss=first))
    load1 = os.getloadavg()
    print(f"# loadavg after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), cpu=cpu_model(), torch=torch.__version__,
                           fusedrnn=fusedrnn.__version__, loadavg=[load0, load1],
                           results=results), f, indent=1)


if __name__ == "__main__":
    main()
