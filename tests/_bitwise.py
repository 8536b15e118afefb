"""Bit-for-bit fixtures of every cell variant's outputs and gradients (tests/test_bitwise.py).

Recorded once from the kernels as they were before the architecture refactor (issue 15) and
committed, so that a refactor that claims to change no number is held to it: every output and
gradient of every cell variant (LSTM with and without peepholes and projection, both GRU
formulas, RNN tanh and relu), in float32 and float64, with and without lengths, reverse,
initial states and biases, on 1 and 2 threads, compared bitwise per instruction-set copy
(FUSEDRNN_ISA, one process per copy since the copy is chosen once per process).

Small cases are stored as arrays (in avx512.npz; the other copies store digests of them); the
medium case (H = 67: more than one block of units and a
partial packet; N = 5: the GEMM's multi-row tiles) and the layer cases (the Python layers'
route to the kernels: multi-layer, bidirectional, dropout-free) as SHA-256 digests.

    python tests/_bitwise.py record DIR    # writes DIR/<isa>.npz for the copy in use
    python tests/_bitwise.py check DIR     # compares; prints a JSON summary, exit 1 on mismatch
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

# (cell, label, forward keywords / layer keywords)
VARIANTS = [
    ("lstm", "plain", {}),
    ("lstm", "peep", {"peep": True}),
    ("lstm", "proj", {"P": 3}),
    ("lstm", "peep_proj", {"peep": True, "P": 3}),
    ("gru", "reset_after", {"variant": "reset_after"}),
    ("gru", "reset_before", {"variant": "reset_before"}),
    ("rnn", "tanh", {"nonlinearity": "tanh"}),
    ("rnn", "relu", {"nonlinearity": "relu"}),
]

# (label, (T, N, C, H), lengths, reverse, biases, h0, c0, cotangents, stored as)
SCENARIOS = [
    ("A", (5, 3, 4, 6), None, False, True, False, False, ("dy",), "array"),
    ("B", (5, 3, 4, 6), [3, 5, 0], True, True, True, True, ("dy", "dh_n", "dc_n"), "array"),
    ("C", (5, 3, 4, 6), [4, 1, 5], False, False, True, False, ("dh_n",), "array"),
    ("M", (4, 5, 9, 67), [4, 2, 3, 4, 1], True, True, True, True, ("dy", "dh_n", "dc_n"),
     "digest"),
]

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _rng(*key):
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def _u(rng, shape, dtype, scale=0.6):
    return rng.uniform(-scale, scale, shape).astype(dtype)


def run_case(cell, opts, scen, dtype, threads, training=True):
    """Outputs and gradients of one case: {name: array}."""
    label, (T, N, C, H), lengths, reverse, biases, has_h0, has_c0, cots, _ = scen
    P = opts.get("P", 0)
    R = P or H
    G = GATES[cell]
    rng = _rng(cell, sorted(opts.items()), label, np.dtype(dtype).name)
    x = _u(rng, (T, N, C), dtype, 1.0)
    w_ih = _u(rng, (G * H, C), dtype)
    w_hh = _u(rng, (G * H, R), dtype)
    b_ih = _u(rng, (G * H,), dtype) if biases else None
    b_hh = _u(rng, (G * H,), dtype) if biases else None
    h0 = _u(rng, (N, R), dtype, 1.0) if has_h0 else None
    c0 = _u(rng, (N, H), dtype, 1.0) if has_c0 and cell == "lstm" else None
    w_peep = _u(rng, (3, H), dtype) if opts.get("peep") else None
    w_hr = _u(rng, (P, H), dtype) if P else None
    dy = _u(rng, (T, N, R), dtype, 1.0) if "dy" in cots else None
    dh_n = _u(rng, (N, R), dtype, 1.0) if "dh_n" in cots else None
    dc_n = _u(rng, (N, H), dtype, 1.0) if "dc_n" in cots and cell == "lstm" else None
    lengths = None if lengths is None else np.array(lengths, np.int64)

    F.set_num_threads(threads)
    out = {}
    if cell == "lstm":
        o = F.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, w_peep=w_peep, w_hr=w_hr,
                           lengths=lengths, reverse=reverse, training=training)
        out.update(y=o.y, h_n=o.h_n, c_n=o.c_n)
        if training:
            g = F.lstm_backward(o.cache, dy, dh_n, dc_n)
    else:
        kw = {k: v for k, v in opts.items() if k in ("variant", "nonlinearity")}
        fwd = F.gru_forward if cell == "gru" else F.rnn_forward
        bwd = F.gru_backward if cell == "gru" else F.rnn_backward
        o = fwd(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=lengths, reverse=reverse,
                training=training, **kw)
        out.update(y=o.y, h_n=o.h_n)
        if training:
            g = bwd(o.cache, dy, dh_n)
    if training:
        for k, v in g._asdict().items():
            if v is not None:
                out[k] = v
    return out


LAYERS = [
    ("LSTM", dict(proj_size=3, peepholes=True, bidirectional=True, num_layers=2)),
    ("LSTM", dict(bidirectional=False, num_layers=2, batch_first=True)),
    ("GRU", dict(variant="reset_before", bidirectional=True, num_layers=2)),
    ("GRU", dict(num_layers=1)),
    ("RNN", dict(nonlinearity="relu", bidirectional=True, num_layers=2)),
]


def run_layer(i, dtype, threads):
    mode, kw = LAYERS[i]
    F.set_num_threads(threads)
    cls = getattr(fusedrnn, mode)
    layer = cls(4, 7, dtype=np.dtype(dtype).name, seed=11 + i, **kw)
    T, N = 6, 3
    rng = _rng("layer", i, np.dtype(dtype).name)
    shape = (N, T, 4) if layer.batch_first else (T, N, 4)
    x = rng.standard_normal(shape).astype(dtype)
    LD, R = layer.num_layers * layer.num_directions, layer.state_size
    h0 = rng.standard_normal((LD, N, R)).astype(dtype)
    state = (h0, rng.standard_normal((LD, N, 7)).astype(dtype)) if mode == "LSTM" else h0
    lengths = np.array([6, 2, 4])
    y, fin = layer(x, state, lengths=lengths)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    out = {"y": y, "dx": dx}
    for j, a in enumerate(fin if isinstance(fin, tuple) else (fin,)):
        out[f"final{j}"] = a
    ds = layer.d_state
    for j, a in enumerate(ds if isinstance(ds, tuple) else (ds,)):
        out[f"dstate{j}"] = a
    for name, p in layer.named_parameters():
        out["grad_" + name] = p.grad
    layer.eval()
    ye, _ = layer(x, state, lengths=lengths)
    out["y_eval"] = ye
    return out


def digest(a):
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()).hexdigest()


def all_results(threads):
    """{key: array or digest string} of every case, on `threads` threads."""
    res = {}
    for cell, vlabel, opts in VARIANTS:
        for scen in SCENARIOS:
            for dtype in (np.float32, np.float64):
                key = f"{cell}-{vlabel}-{scen[0]}-{np.dtype(dtype).name}"
                out = run_case(cell, opts, scen, dtype, threads)
                # Inference equals training: eval-mode outputs against the same fixture.
                inf = run_case(cell, opts, scen, dtype, threads, training=False)
                for k, v in inf.items():
                    if v.tobytes() != out[k].tobytes():
                        raise AssertionError(f"{key}: inference {k} differs from training")
                for k, v in out.items():
                    res[f"{key}/{k}"] = v if scen[-1] == "array" else digest(v)
    for i in range(len(LAYERS)):
        for dtype in (np.float32, np.float64):
            for k, v in run_layer(i, dtype, threads).items():
                res[f"layer{i}-{np.dtype(dtype).name}/{k}"] = digest(v)
    return res


def _path(folder):
    return os.path.join(folder, fusedrnn.build_info()["instruction_set"] + ".npz")


def record(folder):
    res = all_results(1)
    if fusedrnn.build_info()["instruction_set"] != "avx512":
        # Only the widest copy keeps whole arrays (readable when a comparison fails); the
        # others keep digests, so the fixtures stay small.
        res = {k: v if isinstance(v, str) else digest(v) for k, v in res.items()}
    arrays = {k: v for k, v in res.items() if isinstance(v, np.ndarray)}
    digests = {k: v for k, v in res.items() if isinstance(v, str)}
    arrays["__digests__"] = np.frombuffer(json.dumps(digests, sort_keys=True).encode(), np.uint8)
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(_path(folder), **arrays)
    print(json.dumps({"isa": fusedrnn.build_info()["instruction_set"], "arrays": len(arrays) - 1,
                      "digests": len(digests)}))


def check(folder):
    with np.load(_path(folder)) as z:
        want = {k: z[k] for k in z.files if k != "__digests__"}
        want.update(json.loads(z["__digests__"].tobytes().decode()))
    bad = []
    for threads in (1, 2):
        got = all_results(threads)
        if set(got) != set(want):
            bad.append(f"threads={threads}: keys differ: "
                       f"{sorted(set(got) ^ set(want))[:5]}")
        for k in sorted(set(got) & set(want)):
            g, w = got[k], want[k]
            if isinstance(w, str):
                same = (g if isinstance(g, str) else digest(g)) == w
            else:
                same = g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes()
            if not same:
                bad.append(f"threads={threads}: {k}")
    print(json.dumps({"isa": fusedrnn.build_info()["instruction_set"], "compared": len(want),
                      "mismatches": bad[:20], "n_mismatches": len(bad)}))
    return not bad


if __name__ == "__main__":
    cmd, folder = sys.argv[1], sys.argv[2]
    if cmd == "record":
        record(folder)
    else:
        sys.exit(0 if check(folder) else 1)
