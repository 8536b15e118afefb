"""Digests of ragged TRAINING (forward with a cache, and backward) as the rectangular time loop
computed it before ragged training (issue 18; tests/test_ragged.py), per instruction-set copy.

Ragged training runs each step on the sequences still running and skips padded positions in the
input projection and the weight-gradient products; it must give, for every valid position, the
values of the loop that ran all N rows at every step, bit for bit. These digests were recorded
from that loop (commit 66511a9) on shapes where the products run several row tiles, several
k-chunks of the weight-gradient GEMM (KC = 64 rows) and two unit blocks (H = 70).

    python tests/_ragged_fixtures.py record DIR   # DIR/<isa>.json for the copy in use
    python tests/_ragged_fixtures.py check DIR    # prints a JSON summary, exit 1 on mismatch
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import zlib

import numpy as np

import fusedrnn
from fusedrnn import functional as F

VARIANTS = [  # (cell, label, keywords)
    ("lstm", "plain", {}),
    ("lstm", "peep", {"peep": True}),
    ("lstm", "proj", {"P": 5}),
    ("lstm", "peep_proj_clip", {"peep": True, "P": 5, "cell_clip": 0.7}),
    ("lstm", "clip", {"cell_clip": 0.5}),
    ("gru", "reset_after", {"variant": "reset_after"}),
    ("gru", "reset_before", {"variant": "reset_before"}),
    ("rnn", "tanh", {"nonlinearity": "tanh"}),
    ("rnn", "relu", {"nonlinearity": "relu"}),
]
# (label, lengths, initial states given, cotangents)
SCENARIOS = [
    ("mixed", [9, 3, 0, 7, 9, 1, 5, 2, 8, 4, 6, 9, 3], True, ("dy", "dh_n", "dc_n")),
    ("short", [2, 0, 5, 1, 0, 3, 4, 1, 2, 5, 3, 0, 1], False, ("dy",)),
    ("states", [0, 4, 6, 0, 2, 6, 1, 3, 6, 5, 0, 2, 4], True, ("dh_n", "dc_n")),
]
T, N, C, H = 9, 13, 11, 70
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def run_case(cell, opts, scen, dtype, reverse, threads):
    label, lengths, states, cots = scen
    P = opts.get("P", 0)
    R = P or H
    G = GATES[cell]
    rng = np.random.default_rng(zlib.crc32(f"{cell}/{sorted(opts.items())}/{label}/"
                                           f"{np.dtype(dtype).name}/{reverse}".encode()))
    u = lambda *s, scale=0.6: rng.uniform(-scale, scale, s).astype(dtype)  # noqa: E731
    x = u(T, N, C, scale=1.0)
    w_ih, w_hh, b_ih, b_hh = u(G * H, C), u(G * H, R), u(G * H), u(G * H)
    h0 = u(N, R, scale=1.0) if states else None
    c0 = u(N, H, scale=1.0) if states and cell == "lstm" else None
    dy = u(T, N, R, scale=1.0) if "dy" in cots else None
    dh_n = u(N, R, scale=1.0) if "dh_n" in cots else None
    dc_n = u(N, H, scale=1.0) if "dc_n" in cots and cell == "lstm" else None
    lengths = np.array(lengths, np.int64)
    F.set_num_threads(threads)
    if cell == "lstm":
        o = F.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0,
                           w_peep=u(3, H) if opts.get("peep") else None,
                           w_hr=u(P, H) if P else None, cell_clip=opts.get("cell_clip", 0.0),
                           lengths=lengths, reverse=reverse, training=True)
        out = dict(y=o.y, h_n=o.h_n, c_n=o.c_n)
        g = F.lstm_backward(o.cache, dy, dh_n, dc_n)
    else:
        kw = {k: v for k, v in opts.items() if k in ("variant", "nonlinearity")}
        fwd = F.gru_forward if cell == "gru" else F.rnn_forward
        bwd = F.gru_backward if cell == "gru" else F.rnn_backward
        o = fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=lengths, reverse=reverse, training=True,
                **kw)
        out = dict(y=o.y, h_n=o.h_n)
        g = bwd(o.cache, dy, dh_n)
    out.update({k: v for k, v in g._asdict().items() if v is not None})
    return out


def digest(a):
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()).hexdigest()


def cases():
    for cell, vlabel, opts in VARIANTS:
        for scen in SCENARIOS:
            for dtype in (np.float32, np.float64):
                for reverse in (False, True):
                    key = f"{cell}/{vlabel}/{scen[0]}/{np.dtype(dtype).name}/{int(reverse)}"
                    yield key, (cell, opts, scen, dtype, reverse)


def record(threads=1):
    return {key: {k: digest(v) for k, v in run_case(*args, threads).items()}
            for key, args in cases()}


def check(stored, threads_list=(1, 2)):
    """Mismatches [(case, threads, name)] and the number of arrays compared."""
    bad, compared = [], 0
    for key, args in cases():
        for threads in threads_list:
            got = run_case(*args, threads)
            want = stored[key]
            if set(got) != set(want):
                bad.append((key, threads, "keys"))
            for k, v in got.items():
                compared += 1
                if digest(v) != want.get(k):
                    bad.append((key, threads, k))
    return bad, compared


def main(argv):
    mode, folder = argv[1], argv[2]
    isa = fusedrnn.build_info()["instruction_set"]
    path = os.path.join(folder, f"{isa}.json")
    before = fusedrnn.get_num_threads()
    try:
        if mode == "record":
            with open(path, "w") as f:
                json.dump(record(), f, indent=0, sort_keys=True)
            print(json.dumps({"isa": isa, "recorded": path}))
            return 0
        with open(path) as f:
            stored = json.load(f)
        bad, compared = check(stored)
        print(json.dumps({"isa": isa, "compared": compared, "n_mismatches": len(bad),
                          "mismatches": bad[:20]}))
        return 1 if bad else 0
    finally:
        fusedrnn.set_num_threads(before)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
