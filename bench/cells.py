"""Single-step cells in a 100-step Python loop: fusedrnn.LSTMCell/GRUCell vs torch.nn's cells
(eager and torch.jit.script), inference and forward+backward, float32, 1 thread.

    python bench/cells.py [--steps 100] [--reps 7] [--hidden 64 128 256] [--batch 1 8 32]
                          [--clock wall|cpu] [--input-grad] [--json out.json]

Prints per configuration the median time of one loop (ms), torch's time over fusedrnn's
(ratio > 1: fusedrnn faster) and fusedrnn's per-step overhead in µs: the cell's step time minus
the time of its kernel calls alone ("kernel us": the same kernels on the same arrays, repeated
in C++, _core.cell_kernel_seconds / cell_backward_kernel_seconds; train: forward + backward),
i.e. everything the Python loop, the cell's methods and the binding add (and the cache misses
of fresh arrays at every step, which the repeated kernel call does not have). At N <= 8 the
cells' training loop defers the weight gradients (fusedrnn.cells: applied 8-32 steps at once),
which the repeated backward kernel call does not: there "overhead" can come out negative.
"gil us" is what releasing the GIL around the kernel call costs per step (the cell's time minus
that of a cell whose plan keeps the GIL). The contenders of a
configuration run interleaved (one loop each per round, rounds repeated), so load changes hit
them alike. "repack ms" is fusedrnn with reuse_packed_weights = False (every forward and
backward step packs its weights), "x repack" its time over the default's. ``--clock cpu``
times with the process's CPU time instead of the wall clock: every contender runs on one
thread, so on a machine shared with other work it excludes the time spent waiting for a core
(cache and memory contention remain).

Forward+backward: by default the inputs are data, as in torch's usual loop (the input tensor
does not require grad, so torch's autograd does not compute its gradient) and the fusedrnn
cells' backward is called with ``input_grad=False`` (the kernel skips that product too).
``--input-grad``: both compute it (torch's inputs require grad, fusedrnn's default backward).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import weakref

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
    ap.add_argument("--input-grad", action="store_true",
                    help="forward+backward computes the inputs' gradients too, in both")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    import torch
    import fusedrnn
    from fusedrnn import cells, _core

    torch.set_num_threads(1)
    fusedrnn.set_num_threads(1)
    rows = []
    T = args.steps
    print(f"{'cell':5} {'H':>4} {'N':>3} {'mode':6} {'fusedrnn ms':>11} {'torch ms':>9} "
          f"{'jit ms':>8} {'x eager':>8} {'x jit':>6} {'kernel us':>9} {'overhead us':>11} "
          f"{'gil us':>6} {'repack ms':>9} {'x repack':>8}")
    for kind in args.cells:
        for H in args.hidden:
            for N in args.batch:
                C = H
                rng = np.random.default_rng(0)
                xs = rng.standard_normal((T, N, C)).astype(np.float32)
                fcell = getattr(cells, kind + "Cell")(C, H, dtype="float32", seed=0)
                tcell = getattr(torch.nn, kind + "Cell")(C, H)
                fcell.load_state_dict(tcell.state_dict())
                rcell = getattr(cells, kind + "Cell")(C, H, dtype="float32", seed=0)
                rcell.load_state_dict(tcell.state_dict())
                rcell.reuse_packed_weights = False
                gcell = getattr(cells, kind + "Cell")(C, H, dtype="float32", seed=0)
                gcell.load_state_dict(tcell.state_dict())
                gcell._plan = _core.cell_plan(   # the same plan, keeping the GIL
                    {"LSTM": 0, "GRU": 1, "RNN": 2}[kind], gcell._flag, gcell.dtype, C, H, 0,
                    gcell._parameters, True, release_gil=False,
                    owner=weakref.ref(gcell))   # (deferring weight gradients as fcell does)
                jcell = torch.jit.script(getattr(torch.nn, kind + "Cell")(C, H))
                txs = torch.from_numpy(xs).requires_grad_(args.input_grad)
                ig = args.input_grad
                lstm = kind == "LSTM"

                def f_inf(fcell=fcell):
                    st = None
                    for t in range(T):
                        st = fcell(xs[t], st)

                def f_train(fcell=fcell):
                    st = None
                    for t in range(T):
                        st = fcell(xs[t], st)
                    dh = np.ones((N, H), np.float32)
                    d = (dh, np.zeros((N, H), np.float32)) if lstm else dh
                    for t in range(T):
                        _, ds = fcell.backward(*(d if lstm else (d,)), input_grad=ig)
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
                    for c in (fcell, rcell, gcell):
                        c.train(mode == "train")
                    fns = [fr, tr, jr, lambda: fr(rcell), lambda: fr(gcell)]
                    tf_, tt, tj, trp, tg = interleaved(fns, args.reps)
                    gil = (tf_ - tg) / T * 1e6
                    over = tk = None
                    if mode == "infer":
                        # the kernel call alone, repeated in C++ on the step's arrays
                        st = fcell(xs[0], None)
                        ks = []
                        for _ in range(args.reps):
                            wall, cpu = _core.cell_kernel_seconds(fcell._plan, xs[1], st, T, 1)
                            ks.append(cpu if args.clock == "cpu" else wall)
                        tk = statistics.median(ks)
                    else:
                        # forward and backward kernel calls alone, on a scratch cell (the
                        # repeated backward calls accumulate into its gradients)
                        sc = getattr(cells, kind + "Cell")(C, H, dtype="float32", seed=0)
                        sc.load_state_dict(fcell.state_dict())
                        st = sc(xs[0], None)
                        sc(xs[1], st)
                        step = sc._tape[-1]
                        dh = np.ones((N, H), np.float32)
                        dc = np.zeros((N, H), np.float32) if lstm else None
                        ks = []
                        for _ in range(args.reps):
                            fw = _core.cell_kernel_seconds(sc._plan, xs[1], st, T, 1)
                            bw = _core.cell_backward_kernel_seconds(sc._plan, step, dh, dc, T, 1,
                                                                    ig)
                            ks.append(fw[1] + bw[1] if args.clock == "cpu" else fw[0] + bw[0])
                        tk = statistics.median(ks)
                    over = (tf_ - tk) / T * 1e6
                    row = dict(cell=kind, H=H, N=N, mode=mode, fusedrnn_ms=tf_ * 1e3,
                               torch_ms=tt * 1e3, jit_ms=tj * 1e3, ratio_eager=tt / tf_,
                               ratio_jit=tj / tf_,
                               kernel_us=None if tk is None else tk / T * 1e6,
                               overhead_us=over, gil_us=gil, repack_ms=trp * 1e3,
                               ratio_repack=trp / tf_)
                    rows.append(row)
                    print(f"{kind:5} {H:4d} {N:3d} {mode:6} {tf_ * 1e3:11.2f} {tt * 1e3:9.2f} "
                          f"{tj * 1e3:8.2f} {tt / tf_:8.2f} {tj / tf_:6.2f} "
                          f"{'' if tk is None else f'{tk / T * 1e6:9.1f}':>9} "
                          f"{'' if over is None else f'{over:11.1f}':>11} {gil:6.2f} "
                          f"{trp * 1e3:9.2f} {trp / tf_:8.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": T, "threads": 1, "clock": args.clock,
                       "input_grad": args.input_grad, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
