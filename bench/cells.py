"""Single-step cells in a 100-step Python loop: fusedrnn.LSTMCell/GRUCell vs torch.nn's cells
(eager and torch.jit.script), inference and forward+backward, float32, 1 thread.

    python bench/cells.py [--steps 100] [--reps 7] [--hidden 64 128 256] [--batch 1 8 32]
                          [--clock wall|cpu] [--json out.json]

Prints per configuration the median time of one loop (ms), torch's time over fusedrnn's
(ratio > 1: fusedrnn faster) and fusedrnn's per-step Python overhead in µs: the cell's step time
minus the time of the bare kernel call it makes (the same _core call on prepared arrays). The
contenders of a configuration run interleaved (one loop each per round, rounds repeated), so
load changes hit them alike. In train mode "repack ms" is fusedrnn with the backward packing
its weights at every step (as before Options::weights_packed in backward), "x repack" its time
over the default's. ``--clock cpu`` times with the process's CPU time instead of the wall
clock: every contender runs on one thread, so on a machine shared with other work it excludes
the time spent waiting for a core (cache and memory contention remain).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


CLOCK = time.perf_counter


def interleaved(fns, reps):
    """Median seconds of each of fns, run in rotation (one call each per round)."""
    for fn in fns:
        fn()  # warm-up
    ts = [[] for _ in fns]
    for _ in range(reps):
        for k, fn in enumerate(fns):
            t0 = CLOCK()
            fn()
            ts[k].append(CLOCK() - t0)
    return [statistics.median(t) for t in ts]


def median_time(fn, reps):
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = CLOCK()
        fn()
        ts.append(CLOCK() - t0)
    return statistics.median(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--cells", nargs="+", default=["LSTM", "GRU"])
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    import torch
    import fusedrnn
    from fusedrnn import cells, _core
    from fusedrnn import cells as _cells_mod

    torch.set_num_threads(1)
    fusedrnn.set_num_threads(1)
    rows = []
    T = args.steps
    print(f"{'cell':5} {'H':>4} {'N':>3} {'mode':6} {'fusedrnn ms':>11} {'torch ms':>9} "
          f"{'jit ms':>8} {'x eager':>8} {'x jit':>6} {'overhead us':>11} {'repack ms':>9} "
          f"{'x repack':>8}")
    for kind in args.cells:
        for H in args.hidden:
            for N in args.batch:
                C = H
                rng = np.random.default_rng(0)
                xs = rng.standard_normal((T, N, C)).astype(np.float32)
                fcell = getattr(cells, kind + "Cell")(C, H, dtype="float32", seed=0)
                tcell = getattr(torch.nn, kind + "Cell")(C, H)
                fcell.load_state_dict(tcell.state_dict())
                jcell = torch.jit.script(getattr(torch.nn, kind + "Cell")(C, H))
                txs = torch.from_numpy(xs)
                lstm = kind == "LSTM"

                def f_inf():
                    st = None
                    for t in range(T):
                        st = fcell(xs[t], st)

                def f_train(repack=False):
                    st = None
                    for t in range(T):
                        st = fcell(xs[t], st)
                    dh = np.ones((N, H), np.float32)
                    d = (dh, np.zeros((N, H), np.float32)) if lstm else dh
                    for t in range(T):
                        if repack:   # forget the packed weights: pack at every step
                            fcell._store.bkey = None
                        _, ds = fcell.backward(*(d if lstm else (d,)))
                        if ds is not None:
                            d = (ds[0] + dh, ds[1]) if lstm else ds + dh

                def t_loop(cell, grad):
                    def run():
                        with torch.set_grad_enabled(grad):
                            st, total = None, 0
                            for t in range(T):
                                st = cell(txs[t], st)
                                total = total + (st[0] if lstm else st).sum()
                            if grad:
                                total.backward()
                    return run

                for mode, fr, tr, jr in (
                        ("infer", f_inf, t_loop(tcell, False), t_loop(jcell, False)),
                        ("train", f_train, t_loop(tcell, True), t_loop(jcell, True))):
                    fcell.train(mode == "train")
                    fns = [fr, tr, jr] + ([lambda: f_train(True)] if mode == "train" else [])
                    times = interleaved(fns, args.reps)
                    tf_, tt, tj = times[:3]
                    trp = times[3] if mode == "train" else None
                    over = None
                    if mode == "infer":
                        # the bare kernel call the cell makes per step, on prepared arrays
                        dims = (1, N, C, H, 0)
                        _, ws_size, _ = _cells_mod._sizes(kind.upper(), dims)
                        ws = np.empty(ws_size, np.float32)
                        w = fcell._weights()
                        y = np.empty((1, N, H), np.float32)
                        h = np.zeros((N, H), np.float32)
                        c = np.zeros((N, H), np.float32) if lstm else None
                        hn = np.empty((N, H), np.float32)
                        cn = np.empty((N, H), np.float32) if lstm else None
                        x3 = xs[:1]
                        _cells_mod._kernel_forward(kind.upper(), fcell._flag, dims, False, x3,
                                                   w[0], w[1], w[2], w[3], h, c, None, None, y,
                                                   hn, cn, None, ws)

                        def bare():
                            for t in range(T):
                                _cells_mod._kernel_forward(kind.upper(), fcell._flag, dims, True,
                                                           x3, w[0], w[1], w[2], w[3], h, c,
                                                           None, None, y, hn, cn, None, ws)
                        tb = median_time(bare, args.reps)
                        over = (tf_ - tb) / T * 1e6
                    row = dict(cell=kind, H=H, N=N, mode=mode, fusedrnn_ms=tf_ * 1e3,
                               torch_ms=tt * 1e3, jit_ms=tj * 1e3, ratio_eager=tt / tf_,
                               ratio_jit=tj / tf_, overhead_us=over,
                               repack_ms=None if trp is None else trp * 1e3,
                               ratio_repack=None if trp is None else trp / tf_)
                    rows.append(row)
                    print(f"{kind:5} {H:4d} {N:3d} {mode:6} {tf_ * 1e3:11.2f} {tt * 1e3:9.2f} "
                          f"{tj * 1e3:8.2f} {tt / tf_:8.2f} {tj / tf_:6.2f} "
                          f"{'' if over is None else f'{over:11.1f}':>11} "
                          f"{'' if trp is None else f'{trp * 1e3:9.2f}':>9} "
                          f"{'' if trp is None else f'{trp / tf_:8.2f}':>8}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": T, "threads": 1, "clock": args.clock, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
