"""The real-workload rows of bench/run.py (--workloads ragged,subnormal,contended; issue 18).

ragged     T=100, N=64, C=H=256, lengths uniform in 10..100 (seeded; ~56% of the padded work is
           real), LSTM, GRU and a bidirectional 2-layer LSTM (bilstm2), inference and training
           (forward + backward of sum(y * dy)):
           the fusedrnn layer with `lengths` ("fr len") vs the same call without ("fr full"), torch
           with a PackedSequence (pack_padded_sequence(enforce_sorted=False), as users call it)
           and, in inference, ONNX Runtime running an ONNX LSTM/GRU node with sequence_lens
           (one-layer cells only; not with run.py --no-onnx).
subnormal  LSTM, GRU, RNN (config a), inference and training: the same call on normal inputs,
           on inputs scaled into the subnormal range (x * 1e-39), and with every weight scaled
           likewise; torch on the subnormal inputs beside it.
regularised LSTM and GRU (issue 19), T=50, N=32, C=H=256 (reg_T, reg_N, reg_H), inference and
           training: the plain fusedrnn layer, the same layer with layer_norm="haste", zoneout
           0.1, recurrent + input dropout 0.25, weight_drop 0.5 (each alone), and the TorchScript
           layer-norm twin of tests/_torch_twins.py; ratios option / plain and twin / fr layer
           norm.
contended  LSTM config a, inference and training, fusedrnn and torch at 1 and 2 threads, with a
           busy-looping subprocess pinned to the last CPU of this process's affinity mask, and
           without it; ratio 2-thread time / 1-thread time. fusedrnn at 2 threads twice: as users
           get it (fr_2: the team shrinks while other processes keep CPUs busy) and with that
           adaptation off (fr_2fixed: always 2 threads).
Medians of --reps repetitions, the contenders alternating (bench_torch.time_contenders).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import torch

from bench_torch import make_problem, time_contenders

T, N, H = 100, 64, 256


def ragged_lengths(seed=0):
    return np.random.default_rng(seed).integers(10, T + 1, N).astype(np.int64)


def _ort_rnn(cell, mod, lengths, x):
    """ONNX Runtime session of one ONNX LSTM/GRU node (with sequence_lens) holding mod's
    weights; returns a zero-argument callable."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    w_ih, w_hh = mod.weight_ih_l0.detach().numpy(), mod.weight_hh_l0.detach().numpy()
    b = np.concatenate([mod.bias_ih_l0.detach().numpy(), mod.bias_hh_l0.detach().numpy()])
    if cell == "lstm":     # torch i, f, g, o -> ONNX i, o, f, c
        order, attrs = [0, 3, 1, 2], {}
    else:                  # torch r, z, n -> ONNX z, r, h; torch applies r after the product
        order, attrs = [1, 0, 2], {"linear_before_reset": 1}
    G = len(order)

    def reorder(a):
        blocks = np.split(a, G, axis=0)
        return np.concatenate([blocks[i] for i in order], axis=0)
    B = np.concatenate([reorder(b[:G * H]), reorder(b[G * H:])])
    inits = [numpy_helper.from_array(reorder(w_ih)[None].astype(np.float32), "W"),
             numpy_helper.from_array(reorder(w_hh)[None].astype(np.float32), "R"),
             numpy_helper.from_array(B[None].astype(np.float32), "B")]
    node = helper.make_node(cell.upper(), ["X", "W", "R", "B", "L"], ["Y"], hidden_size=H,
                            **attrs)
    graph = helper.make_graph(
        [node], "rnn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape)),
                        helper.make_tensor_value_info("L", TensorProto.INT32, [N])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = torch.get_num_threads(), 1
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    feed = {"X": x, "L": lengths.astype(np.int32)}
    y = sess.run(None, feed)[0]              # [T, 1, N, H]: check against torch once
    return (lambda: sess.run(None, feed)), y[:, 0]


def ragged(fr, reps, modes=("infer", "train"), onnx=True):
    rows = []
    lengths = ragged_lengths()
    useful = float(lengths.sum()) / (T * N)
    for cell in ("lstm", "gru", "bilstm2"):
        mod, x, dy = make_problem(cell, T, N, H, H)
        xn, dyn = x.numpy().copy(), dy.numpy().copy()
        mask = (np.arange(T)[:, None] < lengths[None, :])[..., None]
        dyn_m = (dyn * mask).astype(np.float32)
        layer = fr.from_torch(mod)
        lt = torch.from_numpy(lengths)
        for mode in modes:
            fns, extra = {}, {}
            if mode == "infer":
                layer.eval()

                def fr_len():
                    layer.forward(xn, lengths=lengths)

                def fr_full():
                    layer.forward(xn)

                def torch_packed():
                    with torch.inference_mode():
                        p = torch.nn.utils.rnn.pack_padded_sequence(x, lt, enforce_sorted=False)
                        torch.nn.utils.rnn.pad_packed_sequence(mod(p)[0], total_length=T)
                if onnx:  # run.py --no-onnx: ONNX Runtime neither imported nor timed
                    try:
                        if cell == "bilstm2":
                            raise NotImplementedError("ONNX row: one-layer cells only")
                        fns["ort"], y_ort = _ort_rnn(cell, mod, lengths, xn)
                        y_fr = layer.forward(xn, lengths=lengths)[0]
                        extra["ort_max_abs_diff"] = float(np.abs(y_ort * mask - y_fr).max())
                    except Exception as e:       # noqa: BLE001
                        extra["ort_error"] = f"{type(e).__name__}: {e}"
            else:
                layer.train()
                xg = x.clone().requires_grad_(True)
                dyt = torch.from_numpy(dyn_m)

                def fr_len():
                    layer.zero_grad()
                    layer.forward(xn, lengths=lengths)
                    layer.backward(dyn_m)

                def fr_full():
                    layer.zero_grad()
                    layer.forward(xn)
                    layer.backward(dyn_m)

                def torch_packed():
                    mod.zero_grad(set_to_none=True)
                    xg.grad = None
                    p = torch.nn.utils.rnn.pack_padded_sequence(xg, lt, enforce_sorted=False)
                    y, _ = torch.nn.utils.rnn.pad_packed_sequence(mod(p)[0], total_length=T)
                    y.backward(dyt)
            fns.update(fr_len=fr_len, fr_full=fr_full, torch_packed=torch_packed)
            res = time_contenders(fns, reps, warmup=2)
            med = {k: v["median_ms"] for k, v in res.items()}
            rows.append({"row": "ragged", "cell": cell, "mode": mode, "useful": useful,
                         "median_ms": med, "len_over_full": med["fr_len"] / med["fr_full"],
                         "torch_packed_over_fr_len": med["torch_packed"] / med["fr_len"],
                         **({"ort_over_fr_len": med["ort"] / med["fr_len"]} if "ort" in med
                            else {}), **extra})
    return rows


def subnormal(fr, reps, modes=("infer", "train")):
    rows = []
    tiny = np.float32(1e-39)
    for cell in ("lstm", "gru", "rnn"):
        mod, x, dy = make_problem(cell, T, N, H, H)
        xn, dyn = x.numpy().copy(), dy.numpy().copy()
        xs = (xn * tiny).astype(np.float32)
        assert 0 < np.abs(xs[xs != 0]).max() < np.finfo(np.float32).tiny
        layer = fr.from_torch(mod)
        small = fr.from_torch(mod)
        for p in small.parameters():
            p.data[...] = p.data * tiny
        xst = torch.from_numpy(xs)
        for mode in modes:
            fns = {}
            for name, lay, inp in (("normal", layer, xn), ("x_subnormal", layer, xs),
                                   ("w_subnormal", small, xn)):
                if mode == "infer":
                    lay.eval()
                    fns[name] = (lambda lay=lay, inp=inp: lay.forward(inp))
                else:
                    lay.train()

                    def step(lay=lay, inp=inp):
                        lay.zero_grad()
                        lay.forward(inp)
                        lay.backward(dyn)
                    fns[name] = step
            if mode == "infer":
                def torch_sub():
                    with torch.inference_mode():
                        mod(xst)
            else:
                xg = xst.clone().requires_grad_(True)

                def torch_sub():
                    mod.zero_grad(set_to_none=True)
                    xg.grad = None
                    mod(xg)[0].backward(dy)
            fns["torch_x_subnormal"] = torch_sub
            res = time_contenders(fns, reps, warmup=1)
            med = {k: v["median_ms"] for k, v in res.items()}
            rows.append({"row": "subnormal", "cell": cell, "mode": mode, "median_ms": med,
                         "x_sub_over_normal": med["x_subnormal"] / med["normal"],
                         "w_sub_over_normal": med["w_subnormal"] / med["normal"]})
    return rows


reg_T, reg_N, reg_H = 50, 32, 256


def regularised(fr, reps, modes=("infer", "train")):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from _torch_twins import GRULayer, LayerNormGRUCell, LayerNormLSTMCell, LSTMLayer
    rows = []
    T_, N_, H_ = reg_T, reg_N, reg_H
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T_, N_, H_)).astype(np.float32)
    dy = rng.standard_normal((T_, N_, H_)).astype(np.float32)
    opts = {"plain": {}, "layer_norm": dict(layer_norm="haste"), "zoneout": dict(zoneout_h=0.1),
            "dropout": dict(recurrent_dropout=0.25, input_dropout=0.25),
            "weight_drop": dict(weight_drop=0.5)}
    for cell in ("lstm", "gru"):
        cls = fr.LSTM if cell == "lstm" else fr.GRU
        lstm = cell == "lstm"
        twin = LSTMLayer(LayerNormLSTMCell(H_, H_, False, 1e-5)) if lstm else \
            GRULayer(LayerNormGRUCell(H_, H_, 1e-5))
        z = torch.zeros(N_, H_)
        for mode in modes:
            fns = {}
            for name, kw in opts.items():
                if lstm and name == "zoneout":
                    kw = dict(zoneout_h=0.1, zoneout_c=0.1)
                lay = cls(H_, H_, seed=0, **kw)
                if mode == "infer":
                    lay.eval()
                    fns[name] = (lambda lay=lay: lay.forward(x))
                else:
                    def step(lay=lay):
                        lay.zero_grad()
                        lay.forward(x)
                        lay.backward(dy)
                    fns[name] = step
            tx = torch.from_numpy(x).requires_grad_(mode == "train")
            tdy = torch.from_numpy(dy)

            def ts(tx=tx, mode=mode, twin=twin, tdy=tdy):
                state = (z, z) if lstm else z
                if mode == "infer":
                    with torch.no_grad():
                        twin(tx, state)
                    return
                twin.zero_grad()
                tx.grad = None
                (twin(tx, state)[0] * tdy).sum().backward()
            fns["torchscript_ln"] = ts
            res = time_contenders(fns, reps, warmup=3)
            med = {k: v["median_ms"] for k, v in res.items()}
            row = {"row": "regularised", "cell": cell, "mode": mode, "median_ms": med}
            for k in opts:
                if k != "plain":
                    row[f"{k}_over_normal"] = med[k] / med["plain"]
            row["twin_over_fr_ln"] = med["torchscript_ln"] / med["layer_norm"]
            rows.append(row)
    return rows


BUSY = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def contended(fr, reps, modes=("infer", "train")):
    rows = []
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [{"row": "contended", "skipped": "fewer than 2 CPUs in the affinity mask"}]
    mod, x, dy = make_problem("lstm", T, N, H, H)
    xn, dyn = x.numpy().copy(), dy.numpy().copy()
    layer = fr.from_torch(mod)
    xg = x.clone().requires_grad_(True)
    before = (fr.get_num_threads(), torch.get_num_threads())
    try:
        for busy in (False, True):
            proc = None
            if busy:
                proc = subprocess.Popen([sys.executable, "-c", BUSY, str(cpus[-1])])
                time.sleep(0.5)
            try:
                for mode in modes:
                    fns = {}
                    for th in (1, 2, "2fixed"):
                        def f_fr(th=th):
                            # fr_2: the default, the team shrinks while the neighbour is busy;
                            # fr_2fixed: always 2 threads (set_adaptive_threads(False)).
                            fr.set_adaptive_threads(th != "2fixed")
                            fr.set_num_threads(2 if th == "2fixed" else th)
                            if mode == "infer":
                                layer.eval()
                                layer.forward(xn)
                            else:
                                layer.train()
                                layer.zero_grad()
                                layer.forward(xn)
                                layer.backward(dyn)

                        def f_torch(th=th):
                            torch.set_num_threads(th)
                            if mode == "infer":
                                with torch.inference_mode():
                                    mod(x)
                            else:
                                mod.zero_grad(set_to_none=True)
                                xg.grad = None
                                mod(xg)[0].backward(dy)
                        fns[f"fr_{th}"] = f_fr
                        if th != "2fixed":
                            fns[f"torch_{th}"] = f_torch
                    res = time_contenders(fns, reps, warmup=1)
                    med = {k: v["median_ms"] for k, v in res.items()}
                    rows.append({"row": "contended", "busy_cpu": cpus[-1] if busy else None,
                                 "cell": "lstm", "mode": mode, "median_ms": med,
                                 "fr_2_over_1": med["fr_2"] / med["fr_1"],
                                 "fr_2fixed_over_1": med["fr_2fixed"] / med["fr_1"],
                                 "torch_2_over_1": med["torch_2"] / med["torch_1"]})
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
    finally:
        fr.set_num_threads(before[0])
        fr.set_adaptive_threads(True)
        torch.set_num_threads(before[1])
    return rows


def run(fr, which, reps, threads=1, onnx=True):
    """The selected rows; ragged and subnormal at `threads` threads (fusedrnn and torch); onnx
    False (run.py --no-onnx) leaves ONNX Runtime out of the ragged rows."""
    out = []
    fr.set_num_threads(threads)
    torch.set_num_threads(threads)
    for name in which:
        if name == "ragged":
            rows = ragged(fr, reps, onnx=onnx)
        else:
            rows = {"subnormal": subnormal, "contended": contended,
                    "regularised": regularised}[name](fr, reps)
        for r in rows:
            print(format_row(r), flush=True)
        out += rows
    return out


def format_row(r):
    if "skipped" in r:
        return f"{r['row']}: skipped ({r['skipped']})"
    med = " ".join(f"{k} {v:.1f}" for k, v in r["median_ms"].items())
    ratios = " ".join(f"{k} {v:.2f}" for k, v in r.items()
                      if k.endswith(("_over_normal", "_over_fr_len", "_over_full", "_over_1",
                                   "_over_fr_ln")))
    busy = f" busy cpu {r['busy_cpu']}" if r.get("busy_cpu") is not None else ""
    return f"{r['row']:<9} {r['cell']:<7} {r['mode']:<5}{busy} | ms: {med} | {ratios}"
