"""Deferred weight gradients against adding them at each step: 100-step training loops of
fusedrnn.LSTMCell and GRUCell (x without gradient, the grads read at the end), the two cells
(the same weights; one made with ``cells._DEFER = False``) interleaved, 9 rounds, medians.

    OMP_NUM_THREADS=1 python bench/defer_ab.py [N ...]      (default N = 8)

Batches above the deferral limit (python/bindings/cell_step.cc, kDeferMaxN) add at each step
either way: their figures in that file's comment came from a build with the limit raised.
"""
import statistics
import sys
import time

import numpy as np

import fusedrnn
from fusedrnn import cells


def make(kind, H, defer):
    old = cells._DEFER
    cells._DEFER = defer
    try:
        return (fusedrnn.LSTMCell if kind == "lstm" else fusedrnn.GRUCell)(H, H)
    finally:
        cells._DEFER = old


def loop(cell, xs, kind):
    outs, state = [], None
    for x in xs:
        state = cell(x, state)
        outs.append(state[0] if kind == "lstm" else state)
    g, d = np.ones_like(outs[0]), None
    for _ in range(len(xs)):
        if kind == "lstm":
            _, d = cell.backward(g if d is None else g + d[0], None if d is None else d[1],
                                 input_grad=False)
        else:
            _, d = cell.backward(g if d is None else g + d, input_grad=False)
    for p in cell.parameters():
        _ = p.grad   # applies what is pending


def main():
    rng = np.random.default_rng(0)
    for kind in ("lstm", "gru"):
        for H in (128, 256):
            for N in [int(a) for a in sys.argv[1:]] or [8]:
                a, b = make(kind, H, True), make(kind, H, False)
                b.load_state_dict(a.state_dict())
                xs = [rng.standard_normal((N, H)).astype(np.float32) for _ in range(100)]
                ta, tb = [], []
                for _ in range(9):
                    for c, tl in ((a, ta), (b, tb)):
                        c.zero_grad()
                        t0 = time.perf_counter()
                        loop(c, xs, kind)
                        tl.append(time.perf_counter() - t0)
                ma, mb = statistics.median(ta), statistics.median(tb)
                print(f"{kind} H={H} N={N}: deferred {ma * 1e3:.2f} ms, at each step "
                      f"{mb * 1e3:.2f} ms, deferred {mb / ma:.3f}x faster", flush=True)


if __name__ == "__main__":
    main()
