#!/usr/bin/env python
"""Accuracy of bf16 and int8 inference (issue 16's targets): the task metrics of trained float32
checkpoints evaluated with ``--precision bfloat16`` / ``int8`` against float32, and the layers'
low-precision outputs against float32 on the benchmark's shapes.

    python bench/bench_precision_accuracy.py [--checkpoints CKPT ...] [--layers]
        [--precisions bfloat16,int8] [--json PATH]

--checkpoints: each is evaluated in this process in float32 and each of --precisions, exactly
as ``fusedrnn evaluate CKPT --json --precision P`` does (every recurrent layer frozen at that
precision; embeddings and heads float32); the table gives the metric sets and the differences.
--layers: for LSTM (plain, projection + peepholes), GRU (both formulas) and the Elman RNN at
(T, N, C = H) = (100, 64, 256) and (100, 1, 256), PyTorch's initialisation U(±1/√H), x ~ N(0, 1):
max |y_bf16 - y_fp32| / max |y_fp32| and the rms difference, y_fp32 the float32 frozen layer's
output (the kernels' float32 path) and y_bf16 ``layer.frozen(precision="bfloat16")``'s (likewise
int8); also the bitwise check of 1 against 2 threads.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys

import numpy as np

import fusedrnn


def evaluate(ckpt, precision):
    from fusedrnn.cli import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["evaluate", ckpt, "--json", "--precision", precision])
    if rc != 0:
        raise RuntimeError(f"fusedrnn evaluate {ckpt} --precision {precision}: exit {rc}")
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def layer_errors(precision="bfloat16"):
    rows = []
    cases = [("lstm", {}), ("lstm", {"proj_size": 128, "peepholes": True}),
             ("gru", {"variant": "reset_after"}), ("gru", {"variant": "reset_before"}),
             ("rnn", {"nonlinearity": "tanh"})]
    for (cell, kw) in cases:
        for T, N, H in ((100, 64, 256), (100, 1, 256)):
            layer = {"lstm": fusedrnn.LSTM, "gru": fusedrnn.GRU, "rnn": fusedrnn.RNN}[cell](
                H, H, seed=0, **kw)
            x = np.random.default_rng(1).standard_normal((T, N, H)).astype(np.float32)
            y32, _ = layer.frozen(precision="float32")(x)
            f16 = layer.frozen(precision=precision)
            outs, prev = [], fusedrnn.get_num_threads()
            for threads in (1, 2):
                fusedrnn.set_num_threads(threads)
                outs.append(f16(x)[0])
            fusedrnn.set_num_threads(prev)
            d = outs[0].astype(np.float64) - y32
            rows.append({"precision": precision, "cell": cell, **kw, "T": T, "N": N, "H": H,
                         "max_abs_over_max_y": float(np.abs(d).max() / np.abs(y32).max()),
                         "rms": float(np.sqrt((d ** 2).mean())),
                         "threads_1_2_bitwise": bool(np.array_equal(outs[0], outs[1]))})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="*", default=[])
    ap.add_argument("--layers", action="store_true")
    ap.add_argument("--precisions", default="bfloat16,int8",
                    help="comma-separated low precisions to compare with float32")
    ap.add_argument("--json")
    args = ap.parse_args()
    precs = [p for p in args.precisions.split(",") if p]
    for p in precs:
        if p not in ("bfloat16", "int8"):
            ap.error(f"--precisions: each must be bfloat16 or int8, got {p!r}")
    out = {"loadavg_at_start": os.getloadavg(), "tier": fusedrnn.build_info()["precision_tiers"],
           "tasks": [], "layers": []}
    print(f"# low-precision tier: {out['tier']['bfloat16']}; loadavg {out['loadavg_at_start']}")
    for ckpt in args.checkpoints:
        m32 = evaluate(ckpt, "float32")
        lows = {p: evaluate(ckpt, p) for p in precs}
        keys = [k for k, v in m32.items() if isinstance(v, float) and k != "seconds"
                and not k.startswith("baseline")]
        out["tasks"].append({"checkpoint": ckpt, "task": m32["task"], "float32": m32, **lows})
        for p, m in lows.items():
            print(f"\n{m32['task']} ({ckpt}): metric float32 / {p} / difference")
            for k in keys:
                print(f"  {k:<18} {m32[k]:10.5f} {m[k]:10.5f} {m[k] - m32[k]:+10.5f}")
            print(f"  {'seconds':<18} {m32['seconds']:10.2f} {m['seconds']:10.2f}")
    if args.layers:
        for p in precs:
            rows = layer_errors(p)
            out["layers"] += rows
            print(f"\nlayer {p} vs float32 (PyTorch init, x ~ N(0,1)): max|dy|/max|y|, rms, "
                  "1 vs 2 threads bitwise")
            for r in rows:
                opts = ",".join(f"{k}={r[k]}" for k in ("proj_size", "peepholes", "variant",
                                                         "nonlinearity") if k in r)
                print(f"  {r['cell']:<4} {opts:<32} T={r['T']} N={r['N']:<3} H={r['H']}  "
                      f"{r['max_abs_over_max_y']:.2e}  {r['rms']:.2e}  "
                      f"{r['threads_1_2_bitwise']}")
    out["loadavg_at_end"] = os.getloadavg()
    print(f"\n# loadavg at end: {out['loadavg_at_end']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
