#!/usr/bin/env python
"""Training step (forward + backward of sum(y * dy), gradients of x and every parameter) of the
regularised / normalised fusedrnn.LSTM or GRU (issue 19) against the plain fused layer and
against a TorchScript layer-norm twin (tests/_torch_twins.py: the LSTM in PyTorch fastrnns'
custom_lstms style, the GRU in haste's LayerNormGRU placement), float32, same shapes. Contenders
alternate in one process (order reversed every repetition); median of --reps per contender.
--infer: inference (forward, eval mode / torch.no_grad) instead.

    python bench/bench_lstm_ln.py [--cell lstm|gru] [--T 50] [--N 32] [--H 256] [--threads 1]
        [--reps 7] [--infer]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=50)
    ap.add_argument("--N", type=int, default=32)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    ap.add_argument("--infer", action="store_true")
    a = ap.parse_args()
    import fusedrnn
    from fusedrnn.layers import GRU, LSTM
    T, N, H = a.T, a.N, a.H
    C = H
    fusedrnn.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    if a.cell == "lstm":
        layers = {
            "plain": LSTM(C, H, seed=0),
            "ln_haste": LSTM(C, H, seed=0, layer_norm="haste"),
            "ln_tfa": LSTM(C, H, seed=0, layer_norm="tfa"),
            "zoneout_hc": LSTM(C, H, seed=0, zoneout_h=0.1, zoneout_c=0.1),
            "rec+in_dropout": LSTM(C, H, seed=0, recurrent_dropout=0.25, input_dropout=0.25),
            "weight_drop": LSTM(C, H, seed=0, weight_drop=0.5),
        }
    else:
        layers = {
            "plain": GRU(C, H, seed=0),
            "ln_haste": GRU(C, H, seed=0, layer_norm="haste"),
            "zoneout_h": GRU(C, H, seed=0, zoneout_h=0.1),
            "rec+in_dropout": GRU(C, H, seed=0, recurrent_dropout=0.25, input_dropout=0.25),
            "weight_drop": GRU(C, H, seed=0, weight_drop=0.5),
        }

    def fr_step(layer):
        if a.infer:
            layer.eval()
            return lambda: layer.forward(x)

        def f():
            for p in layer.parameters():
                p.grad.fill(0)
            layer.forward(x)
            layer.backward(dy)
        return f

    steps = {k: fr_step(v) for k, v in layers.items()}
    if not a.no_torch:
        import torch
        from _torch_twins import GRULayer, LayerNormGRUCell, LayerNormLSTMCell, LSTMLayer
        torch.set_num_threads(a.threads)
        lstm = a.cell == "lstm"
        twin = LSTMLayer(LayerNormLSTMCell(C, H, False, 1e-5)) if lstm else \
            GRULayer(LayerNormGRUCell(C, H, 1e-5))
        tx = torch.from_numpy(x).requires_grad_(not a.infer)
        tdy = torch.from_numpy(dy)
        z = torch.zeros(N, H)

        def ts():
            if a.infer:
                with torch.no_grad():
                    twin(tx, (z, z) if lstm else z)
                return
            twin.zero_grad()
            tx.grad = None
            y, _ = twin(tx, (z, z) if lstm else z)
            (y * tdy).sum().backward()
        steps["torchscript_ln"] = ts
    names = list(steps)
    times = {k: [] for k in names}
    for k in names:  # warm-up (TorchScript profiles its first runs)
        for _ in range(3):
            steps[k]()
    for r in range(a.reps):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            t0 = time.perf_counter()
            steps[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"{a.cell} {'inference' if a.infer else 'training'} T={T} N={N} C=H={H} "
          f"threads={a.threads} reps={a.reps} "
          f"loadavg={os.getloadavg()[0]:.1f}")
    for k in names:
        extra = f"  {med[k] / med['plain']:.2f}x plain"
        if "torchscript_ln" in med and k.startswith("ln"):
            extra += f"  torchscript/{k} = {med['torchscript_ln'] / med[k]:.1f}x"
        print(f"  {k:16s} median {med[k] * 1e3:8.2f} ms  (min {min(times[k]) * 1e3:8.2f})"
              + extra)


if __name__ == "__main__":
    main()
