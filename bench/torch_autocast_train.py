"""Training step (forward + backward) of the fusedrnn.torch drop-in module under
torch.autocast("cpu", dtype=torch.bfloat16) -- fusedrnn's bf16 training kernels (issue 17) --
against torch.nn's module under autocast, and both in float32; same weights, T=100, N=64,
C=H=256, medians of alternated rounds.

    python bench/torch_autocast_train.py [THREADS] [ROUNDS]
"""
import statistics
import sys
import time

import torch

import fusedrnn
import fusedrnn.torch as frt


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    torch.set_num_threads(threads)
    fusedrnn.set_num_threads(threads)
    for mode in ("LSTM", "GRU"):
        torch.manual_seed(0)
        ref = getattr(torch.nn, mode)(256, 256)
        ours = getattr(frt, mode)(256, 256)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(100, 64, 256, requires_grad=True)

        def step(m, autocast):
            m.zero_grad()
            x.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y, _ = m(x)
            y.float().sum().backward()

        fns = {"fusedrnn.torch autocast": lambda: step(ours, True),
               "torch autocast": lambda: step(ref, True),
               "fusedrnn.torch fp32": lambda: step(ours, False),
               "torch fp32": lambda: step(ref, False)}
        for f in fns.values():
            f()
        times = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():
                time.sleep(0.05)
                t0 = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t0) * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{mode} threads={threads}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items())
              + f" | torch autocast / fusedrnn.torch autocast "
                f"{med['torch autocast'] / med['fusedrnn.torch autocast']:.2f}")


if __name__ == "__main__":
    main()
