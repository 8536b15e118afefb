#!/usr/bin/env python
"""fusedrnn's int8 frozen layer against ONNX Runtime's dynamic quantisation of the same model
(issue 16): torch.onnx.export (TorchScript exporter) of a torch.nn.LSTM / GRU, then
``onnxruntime.quantization.quantize_dynamic(weight_type=QInt8)`` (it makes DynamicQuantizeLSTM
for an LSTM and leaves a GRU float32), one intra-op thread, against
``fusedrnn.from_torch(module).frozen(precision="int8")``; medians of --reps calls alternated
in one run, and each one's max |y - y_fp32|.

    python bench/bench_ort_int8.py [--reps 7] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", help="folder for the ONNX files (default: a temporary one)")
    args = ap.parse_args()
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import fusedrnn as fr
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    fr.set_num_threads(1)
    out = args.out or tempfile.mkdtemp(prefix="fusedrnn-ort-int8-")
    print(f"# loadavg {os.getloadavg()}; 1 thread; ms medians of {args.reps}")
    for cell, (T, N, H) in (("lstm", (100, 64, 256)), ("lstm", (100, 1, 256)),
                            ("gru", (100, 64, 256))):
        torch.manual_seed(0)
        mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(H, H).eval()
        x = torch.randn(T, N, H)
        f32, q8 = (os.path.join(out, f"{cell}{N}{s}.onnx") for s in ("", ".q8"))
        torch.onnx.export(mod, (x,), f32, input_names=["x"], dynamo=False)
        quantize_dynamic(f32, q8, weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        sess = ort.InferenceSession(q8, so, providers=["CPUExecutionProvider"])
        ops = sorted({n.op_type for n in onnx.load(q8).graph.node} & {"DynamicQuantizeLSTM",
                                                                       "LSTM", "GRU"})
        frz = fr.from_torch(mod).frozen(precision="int8")
        xn = x.numpy().copy()
        fns = {"fusedrnn_int8": lambda: frz.forward(xn)[0],
               "ort_quantized": lambda: sess.run(None, {"x": xn})[0]}
        times = {k: [] for k in fns}
        for f in fns.values():
            f()
        for _ in range(args.reps):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
        with torch.no_grad():
            y32 = mod(x)[0].numpy()
        err = {k: float(np.abs(np.asarray(f()).reshape(y32.shape) - y32).max())
               for k, f in fns.items()}
        print(f"{cell} (T, N, H) = {(T, N, H)} ORT ops {ops}: fusedrnn int8 "
              f"{med['fusedrnn_int8']:.2f} ms, ORT {med['ort_quantized']:.2f} ms, ORT / fusedrnn "
              f"{med['ort_quantized'] / med['fusedrnn_int8']:.2f}x; max |y - y_fp32| fusedrnn "
              f"{err['fusedrnn_int8']:.1e}, ORT {err['ort_quantized']:.1e}", flush=True)
    print(f"# loadavg at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
