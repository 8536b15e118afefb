"""Training step (forward + backward) of one LSTM / GRU layer, T=100, N=64, C=H=256: fusedrnn
float32 and bfloat16 (mixed precision, issue 17) against torch float32 and torch under
torch.autocast("cpu", dtype=torch.bfloat16), contenders alternated within each round, medians
in ms. Usage: python bench/bf16_train_step.py [--threads 1 2] [--rounds 15]."""
import argparse
import os
import statistics
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    a = ap.parse_args()
    import torch
    import fusedrnn
    from fusedrnn import lowp
    T, N, C, H = 100, 64, 256, 256
    rng = np.random.default_rng(0)
    print(f"load average before: {os.getloadavg()}  tier: {lowp.active_tier()}")
    for cell in a.cells:
        G = 4 if cell == "lstm" else 3
        k = 1 / np.sqrt(H)
        x = rng.standard_normal((T, N, C)).astype(np.float32)
        w = [rng.uniform(-k, k, s).astype(np.float32) for s in ((G * H, C), (G * H, H), (G * H,),
                                                                 (G * H,))]
        dy = rng.standard_normal((T, N, H)).astype(np.float32)
        fwd = getattr(fusedrnn, cell + "_forward")
        bwd = getattr(fusedrnn, cell + "_backward")
        tm = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(C, H)
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def fused(prec):
            def run():
                out = fwd(x, *w, precision=prec)
                bwd(out.cache, dy=dy)
            return run

        def torch_step(autocast):
            def run():
                tm.zero_grad(set_to_none=True)
                if autocast:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        y, _ = tm(xt)
                else:
                    y, _ = tm(xt)
                y.float().backward(dyt)
            return run

        runs = {"fusedrnn fp32": fused("float32"), "fusedrnn bf16": fused("bfloat16"),
                "torch fp32": torch_step(False), "torch autocast bf16": torch_step(True)}
        for th in a.threads:
            fusedrnn.set_num_threads(th)
            torch.set_num_threads(th)
            times = {k: [] for k in runs}
            for f in runs.values():
                f()  # warm-up
            for _ in range(a.rounds):
                for name, f in runs.items():
                    t0 = time.perf_counter()
                    f()
                    times[name].append((time.perf_counter() - t0) * 1e3)
            med = {k: statistics.median(v) for k, v in times.items()}
            spread = {k: (min(v), max(v)) for k, v in times.items()}
            print(f"{cell} threads={th}: " + ", ".join(
                f"{k} {med[k]:.1f} ms [{spread[k][0]:.0f}-{spread[k][1]:.0f}]" for k in runs))
            print(f"  bf16 vs torch autocast: {med['torch autocast bf16'] / med['fusedrnn bf16']:.2f}x"
                  f"; bf16 vs fusedrnn fp32: {med['fusedrnn fp32'] / med['fusedrnn bf16']:.2f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
