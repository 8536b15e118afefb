#!/usr/bin/env python
"""Accuracy of bf16 inference (issue 16's targets): the task metrics of trained float32
checkpoints evaluated with ``--precision bfloat16`` against float32, and the layers' bf16
outputs against float32 on the benchmark's shapes.

    python bench/bench_precision_accuracy.py [--checkpoints CKPT ...] [--layers] [--json PATH]

--checkpoints: each is evaluated twice in this process, exactly as ``fusedrnn evaluate CKPT
--json [--precision bfloat16]`` does (every recurrent layer frozen at that precision; embeddings
and heads float32); the table gives both metric sets and the differences.
--layers: for LSTM (plain, projection + peepholes), GRU (both formulas) and the Elman RNN at
(T, N, C = H) = (100, 64, 256) and (100, 1, 256), PyTorch's initialisation U(±1/√H), x ~ N(0, 1):
max |y_bf16 - y_fp32| / max |y_fp32| and the rms difference, y_fp32 the float32 frozen layer's
output (the kernels' float32 path) and y_bf16 ``layer.frozen(precision="bfloat16")``'s; also the
bitwise check of 1 against 2 threads.
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


def layer_errors():
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
            f16 = layer.frozen(precision="bfloat16")
            outs, prev = [], fusedrnn.get_num_threads()
            for threads in (1, 2):
                fusedrnn.set_num_threads(threads)
                outs.append(f16(x)[0])
            fusedrnn.set_num_threads(prev)
            d = outs[0].astype(np.float64) - y32
            rows.append({"cell": cell, **kw, "T": T, "N": N, "H": H,
                         "max_abs_over_max_y": float(np.abs(d).max() / np.abs(y32).max()),
                         "rms": float(np.sqrt((d ** 2).mean())),
                         "threads_1_2_bitwise": bool(np.array_equal(outs[0], outs[1]))})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="*", default=[])
    ap.add_argument("--layers", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    out = {"loadavg_at_start": os.getloadavg(), "tier": fusedrnn.build_info()["precision_tiers"],
           "tasks": [], "layers": []}
    print(f"# bf16 tier: {out['tier']['bfloat16']}; loadavg {out['loadavg_at_start']}")
    for ckpt in args.checkpoints:
        m32, m16 = evaluate(ckpt, "float32"), evaluate(ckpt, "bfloat16")
        keys = [k for k, v in m32.items() if isinstance(v, float) and k != "seconds"
                and not k.startswith("baseline")]
        out["tasks"].append({"checkpoint": ckpt, "task": m32["task"], "float32": m32,
                             "bfloat16": m16})
        print(f"\n{m32['task']} ({ckpt}): metric float32 / bfloat16 / difference")
        for k in keys:
            print(f"  {k:<18} {m32[k]:10.5f} {m16[k]:10.5f} {m16[k] - m32[k]:+10.5f}")
        print(f"  {'seconds':<18} {m32['seconds']:10.2f} {m16['seconds']:10.2f}")
    if args.layers:
        out["layers"] = layer_errors()
        print("\nlayer bf16 vs float32 (PyTorch init, x ~ N(0,1)): max|dy|/max|y|, rms, "
              "1 vs 2 threads bitwise")
        for r in out["layers"]:
            opts = ",".join(f"{k}={r[k]}" for k in ("proj_size", "peepholes", "variant",
                                                     "nonlinearity") if k in r)
            print(f"  {r['cell']:<4} {opts:<32} T={r['T']} N={r['N']:<3} H={r['H']}  "
                  f"{r['max_abs_over_max_y']:.2e}  {r['rms']:.2e}  {r['threads_1_2_bitwise']}")
    out["loadavg_at_end"] = os.getloadavg()
    print(f"\n# loadavg at end: {out['loadavg_at_end']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
