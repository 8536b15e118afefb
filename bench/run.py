#!/usr/bin/env python
"""fusedrnn's main CPU benchmark: fusedrnn vs torch.nn vs ONNX Runtime, float32, same weights.

    python bench/run.py [--configs a,b,c,d,e] [--cells lstm,gru,rnn,bilstm2] [--modes infer,train]
                        [--threads 1 2] [--reps 9] [--no-onnx] [--quick] [--json PATH]
    python bench/run.py --precision float32,bfloat16 [...]   (adds the bf16 / int8 peers, below)
    python bench/run.py --workloads ragged,subnormal,contended,regularised [--threads 1]
        [--reps 9] (the real-workload rows of bench/workloads.py: ragged batches, subnormal
        numbers, another busy process, issue 19's options; at the smallest --threads, contended
        at 1 and 2)

Configs (T steps, N batch, C = H): a (100, 64, 256)  b (100, 64, 512)  c (100, 32, 1024)
d (100, 1, 256)  e (1000, 1, 64)  f (100, 1, 1024) (only when named). By default LSTM and GRU run on every config, the Elman RNN
(tanh) and bilstm2 (a 2-layer bidirectional LSTM: the fusedrnn.LSTM layer vs torch.nn.LSTM,
zero_grad + forward + backward per training step) on a; an explicit --configs runs every
selected cell on every selected config.

Contenders: the fusedrnn.LSTM/GRU/RNN layer (fusedrnn.from_torch: same weights; it keeps its
kernel cache, workspace and gradient buffers between calls, as torch's module does; "fr"), in
inference also its frozen copy (layer.frozen(): weights packed once instead of per call, as an
ONNX Runtime session holds its weights pre-packed; "frz"), the torch.nn module, and ONNX Runtime
running the torch module's ONNX export. Ratios: peer/fr and, in inference, peer/frz.
Modes: "infer" = forward only (fusedrnn layer.eval(), torch under inference_mode, ONNX Runtime);
"train" = forward + backward of loss = sum(y * dy) with gradients for x and all weights (fusedrnn
and torch; ONNX Runtime is inference only). torch uses its default CPU backend.
Threads: torch.set_num_threads = fusedrnn.set_num_threads = ORT intra_op_num_threads (inter_op 1).
Timing: per (config, cell, mode, threads) the contenders alternate in one process (order reversed
every repetition). Each contender first runs twice (warm-up: touches its memory; the second call
also sizes the repetition to >= --min-rep-ms by repeating the call); then median and min per call
of --reps repetitions, with --settle-ms of untimed sleep before every timed call (ONNX Runtime's
idle threads spin ~30 ms after a run: at 2 threads on 2 cores that slowed the next contender up
to 2x). GFLOP/s = FLOPs / median time with forward FLOPs 2*G*H*(C+H)*N*T
(G = 4 LSTM, 3 GRU, 1 RNN) and training 3x forward; "% of sgemm peak" compares with the sgemm
peak measured in the same run at the same thread count: a float32 2048x2048 product by Eigen's
GEMM built the same way as the kernels (fusedrnn._core.reference_gemm: the same instruction-set
copy, flags and OpenMP threads; best of 10). torch.mm's peak on the same product is measured and
printed beside it (a stricter yardstick: MKL/oneDNN), with its percentages in the JSON.
ONNX: torch.onnx.export(dynamo=True) (torch's default, torch.export-based exporter; offline,
needs onnxscript), falling back to the TorchScript exporter (dynamo=False) if it fails; the JSON
records the exporter and the graph's op types (the dynamo exporter emits ONNX LSTM/GRU ops but
unrolls nn.RNN into per-step MatMul/Tanh nodes).
--precision float32,bfloat16 (default float32): in inference rows, in the same alternation
also fusedrnn's bf16 frozen layer (layer.frozen(precision="bfloat16"): weights rounded to bf16 and
packed once, bf16 products with fp32 accumulation and gates; "f16"), torch in bfloat16
(module.to(torch.bfloat16), input bf16, inference_mode: oneDNN with AMX for LSTM; "tb16") and
torch's dynamic int8 quantisation (torch.ao.quantization.quantize_dynamic, qint8 weights, LSTM and
GRU only: it has no nn.RNN kernel; "tq8"); ratios peer/f16 (tb16/f16, tq8/f16, and frz/f16: the
speed-up of bf16 over fusedrnn's fp32 frozen layer). --precision ...,int8 adds fusedrnn's int8
frozen layer (layer.frozen(precision="int8"): s8 weights with per-row scales quantised once,
activations per row, s32 sums; "fi8") with the ratios tq8/fi8, oq8/fi8 and frz/fi8 (torch_bf16
and torch_qint8 run once for either precision), and ONNX Runtime on the dynamically quantised
export ("oq8": onnxruntime.quantization.quantize_dynamic, QInt8 weights, of the module's
TorchScript ONNX export, at the same thread count; unless --no-onnx). For LSTM it makes
DynamicQuantizeLSTM; ORT has no quantised GRU or RNN operator, so those exports keep their fp32
GRU / RNN node: the JSON's "onnx_qint8" records the quantised graph's op types per row.
In training rows (issue 17), --precision ...,bfloat16 adds fusedrnn's layer with
compute="bfloat16" (mixed precision: bf16 products, fp32 master weights, gradients and gates;
"fb16"), torch's fp32 module under torch.autocast("cpu", dtype=torch.bfloat16) ("tac") and
torch's module.to(torch.bfloat16) trained with bf16 input and dy ("tb16"); ratios peer/fb16
(fr/fb16: the speed-up over fusedrnn fp32). The peak-memory table then has them too.
A torch bf16 contender that oneDNN refuses on this CPU (torch's autocast LSTM needs a CPU with
bf16 instructions: on an AVX2-only CPU it raises "could not create a primitive descriptor") is
listed under "unsupported" (JSON and output), not under failures; any other error is a failure.
Peak memory of a training step (at the largest thread count): a fresh subprocess per contender
builds inputs and weights, reads its anonymous RSS (a0), runs one step (faults in code pages,
builds caches and workspaces), resets the peak RSS (/proc/self/clear_refs "5"), runs a second
step and reports VmHWM - RssFile - RssShmem - a0: the anonymous memory a step needs above its
inputs and weights, persistent workspaces included (MALLOC_MMAP_THRESHOLD_=131072 so that freed
large blocks leave the RSS). For fusedrnn also the tracemalloc peak of NumPy allocations over
both steps. Without a writable clear_refs, ru_maxrss replaces VmHWM (then an upper bound).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import cpu_model, make_contenders, make_problem, time_contenders  # noqa: E402

CONFIGS = {"a": (100, 64, 256), "b": (100, 64, 512), "c": (100, 32, 1024),
           "d": (100, 1, 256), "e": (1000, 1, 64), "f": (100, 1, 1024)}  # T, N, C = H
GATES = {"lstm": 4, "gru": 3, "rnn": 1}         # cells bench_torch.make_problem builds
DEFAULT_CONFIGS = {"lstm": "abcde", "gru": "abcde", "rnn": "a"}
# "bilstm2": a 2-layer bidirectional LSTM through the layer API (fusedrnn.LSTM vs torch.nn.LSTM
# with num_layers=2, bidirectional=True; layer 2 reads the concatenated [T, N, 2H] output).
GATES["bilstm2"] = 4
DEFAULT_CONFIGS["bilstm2"] = "a"
CONTENDERS = ("fusedrnn", "frozen", "torch", "onnxruntime")
SHORT = {"fusedrnn": "fr", "frozen": "frz", "torch": "torch", "onnxruntime": "ort"}  # headers
# --precision bfloat16 (inference): fusedrnn's bf16 frozen layer and its peers
LOWP = ("frozen_bf16", "frozen_int8", "torch_bf16", "torch_qint8")
SHORT.update(frozen_bf16="f16", frozen_int8="fi8", torch_bf16="tb16", torch_qint8="tq8",
             ort_qint8="oq8")
LOWP_PEERS = ("frozen", "torch_bf16", "torch_qint8")    # ratios: peer / frozen_bf16
INT8_PEERS = ("frozen", "torch_qint8", "ort_qint8")     # ratios: peer / frozen_int8
# --precision bfloat16 (training, issue 17): fusedrnn's layer with compute="bfloat16" and its
# peers, torch under autocast and torch in bfloat16 ("torch_bf16" column: module.to(bfloat16))
LOWP_TRAIN = ("fusedrnn_bf16", "torch_autocast")
SHORT.update(fusedrnn_bf16="fb16", torch_autocast="tac")
LOWP_TRAIN_PEERS = ("fusedrnn", "torch_autocast", "torch_bf16")   # ratios: peer / fusedrnn_bf16


def lowp_names(precisions):
    """The low-precision contenders that --precision asks for (none for float32 alone)."""
    if precisions == ["float32"]:
        return []
    return [n for n in LOWP if n not in ("frozen_bf16", "frozen_int8")
            or (n == "frozen_bf16" and "bfloat16" in precisions)
            or (n == "frozen_int8" and "int8" in precisions)]


def lowp_contenders(cell, mod, x, fr, precisions=("bfloat16",)):
    """{name: callable} of the bf16 / int8 inference contenders on the float32 module's weights
    (torch_qint8 absent where quantize_dynamic has no kernel for the module: nn.RNN)."""
    fns = {}
    xn = x.numpy().copy()
    if "bfloat16" in precisions:
        frz16 = fr.from_torch(mod).frozen(precision="bfloat16")
        fns["frozen_bf16"] = lambda: frz16.forward(xn)
    if "int8" in precisions:
        frz8 = fr.from_torch(mod).frozen(precision="int8")
        fns["frozen_int8"] = lambda: frz8.forward(xn)
    import copy
    m16, x16 = copy.deepcopy(mod).to(torch.bfloat16).eval(), x.to(torch.bfloat16)

    def run_torch_bf16():
        with torch.inference_mode():
            m16(x16)
    fns["torch_bf16"] = run_torch_bf16
    if isinstance(mod, (torch.nn.LSTM, torch.nn.GRU)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # quantize_dynamic is deprecated (still present)
            q8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(mod).eval(),
                                                        {torch.nn.LSTM, torch.nn.GRU},
                                                        dtype=torch.qint8)

        def run_torch_qint8():
            with torch.inference_mode():
                q8(x)
        fns["torch_qint8"] = run_torch_qint8
    return fns


def lowp_train_contenders(cell, mod, x, dy, fr):
    """{name: callable} of the mixed-precision training contenders (zero_grad + forward +
    backward of sum(y * dy), gradients for x and every weight) on the float32 module's weights:
    fusedrnn's layer with compute="bfloat16" (fp32 master weights and gradients), torch's fp32
    module under torch.autocast("cpu", bfloat16), and torch's module.to(bfloat16) with bf16
    input and dy (bf16 weights and gradients). fr None: the torch ones only."""
    import copy
    fns = {}
    if fr is not None:
        layer = fr.from_torch(mod)
        layer.compute = "bfloat16"
        xn, dyn = x.numpy().copy(), dy.numpy().copy()

        def run_fr_bf16():
            layer.zero_grad()
            layer.forward(xn)
            layer.backward(dyn)
        fns["fusedrnn_bf16"] = run_fr_bf16
    ma, xa = copy.deepcopy(mod), x.clone().requires_grad_(True)

    def run_autocast():
        ma.zero_grad(set_to_none=True)
        xa.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = ma(xa)
        y.backward(dy.to(y.dtype))
    fns["torch_autocast"] = run_autocast
    m16 = copy.deepcopy(mod).to(torch.bfloat16)
    x16, dy16 = x.to(torch.bfloat16).requires_grad_(True), dy.to(torch.bfloat16)

    def run_bf16():
        m16.zero_grad(set_to_none=True)
        x16.grad = None
        y, _ = m16(x16)
        y.backward(dy16)
    fns["torch_bf16"] = run_bf16
    return fns


def flops(cell, mode, T, N, C, H):
    fwd = 2 * GATES[cell] * H * (C + H) * N * T
    if cell == "bilstm2":   # 2 directions x (layer 1 reads C inputs, layer 2 reads 2H)
        fwd = 2 * (fwd + 2 * GATES[cell] * H * (2 * H + H) * N * T)
    return fwd * (3 if mode == "train" else 1)


def sgemm_gflops(threads, reps=10, n=2048):
    """{"eigen": GFLOP/s of fusedrnn's Eigen reference GEMM, "torch": of torch.mm}, float32
    n x n, best of `reps` after 2 warm-up products, at `threads` threads."""
    from fusedrnn import _core
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    an, bn, cn = a.numpy(), b.numpy(), c.numpy()
    products = {"eigen": lambda: _core.reference_gemm(an, bn, cn, threads),
                "torch": lambda: torch.mm(a, b, out=c)}
    out = {}
    for name, product in products.items():
        best = math.inf
        for r in range(reps + 2):
            t0 = time.perf_counter()
            product()
            if r >= 2:
                best = min(best, time.perf_counter() - t0)
        out[name] = 2 * n ** 3 / best / 1e9
    return out


def onnx_model(mod, x):
    """Serialized ONNX model of `mod` for input x, the exporter used, and the graph's op types."""
    import onnx
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    errors = []
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if dynamo:
                    data = torch.onnx.export(mod, (x,), dynamo=True, verbose=False
                                             ).model_proto.SerializeToString()
                else:
                    path = f"/tmp/fusedrnn_bench_{os.getpid()}.onnx"
                    torch.onnx.export(mod, (x,), path, dynamo=False)
                    with open(path, "rb") as fh:
                        data = fh.read()
                    os.remove(path)
            ops = sorted({n.op_type for n in onnx.load_from_string(data).graph.node})
            with torch.inference_mode():            # the exported graph computes torch's y
                diff = float(np.abs(ort_contender(data, x, 1)()[0] - mod(x)[0].numpy()).max())
            return data, ("dynamo" if dynamo else "torchscript"), ops, diff, errors
        except Exception as e:                  # noqa: BLE001 - reported, then the fallback
            errors.append(f"dynamo={dynamo}: {type(e).__name__}: {e}")
    raise RuntimeError("; ".join(errors))


def onnx_qint8_model(mod, x):
    """ONNX Runtime's dynamic int8 quantisation (QInt8 weights) of the module's TorchScript ONNX
    export (its LSTM/GRU weights are initializers, which quantize_dynamic needs to make
    DynamicQuantizeLSTM; the dynamo export's are not): the quantised model's bytes and op types."""
    import tempfile
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model_q8.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(mod, (x,), src, dynamo=False)
            logging.getLogger().setLevel(logging.ERROR)   # quantize_dynamic's pre-processing hint
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        with open(dst, "rb") as fh:
            q = fh.read()
    return q, sorted({n.op_type for n in onnx.load_from_string(q).graph.node})


def ort_contender(model, x, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feed)        # outputs y, h_n (, c_n)


TORCH_LOWP = ("torch_bf16", "torch_autocast")


def cpu_unsupported(name, error):
    """The reason a contender cannot run on this CPU, or None: torch's bf16 contenders where
    oneDNN has no bf16 kernels for this CPU (torch.ops.mkldnn._is_mkldnn_bf16_supported() false)
    and refuses the primitive. Every other error stays a failure."""
    try:
        bf16_cpu = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:                           # noqa: BLE001 (a torch without the probe)
        bf16_cpu = True
    if (name in TORCH_LOWP and "could not create a primitive descriptor" in error
            and not bf16_cpu):
        return f"oneDNN has no bf16 primitive on this CPU ({error.splitlines()[0][:120]})"
    return None


def split_unsupported(failed, where, cell, unsupported):
    """Moves failed's CPU-unsupported entries to unsupported, as {"where": the row ("d lstm
    train threads=1") or the memory table's ("memory d lstm"), "cell", "contender", "reason"}."""
    for k in list(failed):
        why = cpu_unsupported(k, failed[k])
        if why:
            unsupported.append({"where": where, "cell": cell, "contender": k, "reason": why})
            del failed[k]


def repeat(f, n):
    def run():
        for _ in range(n):
            f()
    return run


def timed(fns, reps, min_rep_ms, settle_s, failed):
    """Warm up and size every contender (dropping and recording one that raises), then time."""
    inner, ok = {}, {}
    for k, f in fns.items():
        try:
            f()                                 # warm-up: first touch of all memory
            time.sleep(settle_s)
            t0 = time.perf_counter()
            f()
            dt = (time.perf_counter() - t0) * 1e3
        except Exception as e:                  # noqa: BLE001
            failed[k] = f"{type(e).__name__}: {e}"
            continue
        inner[k] = max(1, math.ceil(min_rep_ms / max(dt, 1e-3)))
        ok[k] = repeat(f, inner[k])
    res = time_contenders(ok, reps, warmup=0, settle_s=settle_s)
    for k, r in res.items():
        r.update(calls_per_rep=inner[k], median_ms=r["median_ms"] / inner[k],
                 min_ms=r["min_ms"] / inner[k], all_ms=[t / inner[k] for t in r["all_ms"]])
    return res


def memory_child(cell, cfg, who, threads):
    """In a fresh process: peak memory of one training step of `who` (see the module docstring)."""
    import resource
    import tracemalloc
    T, N, H = CONFIGS[cfg]
    torch.set_num_threads(threads)
    fr = None
    if who == "fusedrnn":
        import fusedrnn as fr
        fr.set_num_threads(threads)
    if who in LOWP_TRAIN + ("torch_bf16",):
        if who == "fusedrnn_bf16":
            import fusedrnn as fr
            fr.set_num_threads(threads)
        mod, x, dy = make_problem(cell, T, N, H, H)
        f = lowp_train_contenders(cell, mod, x, dy, fr)[who]
    else:
        f = make_contenders(cell, "train", SimpleNamespace(T=T, N=N, C=H, H=H), fr)[who]

    def status():
        with open("/proc/self/status") as fh:
            return {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in fh)
                    if k in ("VmHWM", "RssAnon", "RssFile", "RssShmem")}
    a0 = status()["RssAnon"]
    if who.startswith("fusedrnn"):
        tracemalloc.start()
    f()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss (upper bound)"
    f()
    s = status()
    hwm = s["VmHWM"] if method.startswith("VmHWM") else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss
    out = {"rss_peak_mib": (hwm - s["RssFile"] - s["RssShmem"] - a0) / 1024, "method": method}
    if who.startswith("fusedrnn"):
        out["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
    print(json.dumps(out))


def memory(cell, cfg, who, threads):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", cell, cfg,
                        who, str(threads)], capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def machine_info(fr, args):
    def version(mod):
        try:
            return __import__(mod).__version__
        except Exception:                       # noqa: BLE001
            return None

    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__,
            "torch_mkldnn": torch.backends.mkldnn.is_available(),
            "onnxruntime": version("onnxruntime"), "onnx": version("onnx"),
            "onnxscript": version("onnxscript"), "fusedrnn_build_info": fr.build_info(),
            "git": f"{git('rev-parse', '--short', 'HEAD')} modified: "
                   f"{' '.join(git('status', '--porcelain', '-uno').split()[1::2]) or 'none'}",
            "loadavg_at_start": os.getloadavg(), "reps": args.reps,
            "min_rep_ms": args.min_rep_ms, "settle_ms": args.settle_ms, "dtype": "float32",
            "precision": getattr(args, "precision", "float32"),
            "lowp_tier": fr.build_info().get("precision_tiers", {}).get("bfloat16")}


def run_workloads(args, ap):
    import workloads
    which = args.workloads.split(",")
    if bad := [w for w in which if w not in ("ragged", "subnormal", "contended", "regularised")]:
        ap.error(f"--workloads: unknown {bad}; choose from ragged, subnormal, contended, "
                 f"regularised")
    import fusedrnn as fr
    info = machine_info(fr, args)
    for k, v in info.items():
        print(f"# {k}: {v}")
    reps = 2 if args.quick else args.reps
    if args.quick:      # smoke test: small shapes
        workloads.T, workloads.N, workloads.H = 20, 8, 32
        workloads.reg_T, workloads.reg_N, workloads.reg_H = 10, 4, 16
    rows = workloads.run(fr, which, reps, threads=min(args.threads), onnx=not args.no_onnx)
    info["loadavg_at_end"] = os.getloadavg()
    print(f"# loadavg at end: {info['loadavg_at_end']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "workloads": rows}, fh, indent=2)
        print(f"# wrote {args.json}")


def fmt(r):
    return f"{r['median_ms']:9.2f} / {r['min_ms']:<8.2f}" if r else f"{'-':^20}"


def main():
    # (--threads 0 or -1: an argparse error, not a traceback from set_num_threads mid-run)
    from fusedrnn.validators import parse_int
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", help=f"comma list of {','.join(CONFIGS)} (default: all)")
    ap.add_argument("--cells", default="lstm,gru,rnn,bilstm2",
                    help="comma list of lstm,gru,rnn,bilstm2")
    ap.add_argument("--modes", default="infer,train", help="comma list of infer,train")
    ap.add_argument("--threads", type=parse_int(1), nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=9, help="timed repetitions (>= 7), default 9")
    ap.add_argument("--min-rep-ms", type=float, default=20.0,
                    help="repeat a short call within one repetition up to this time")
    ap.add_argument("--settle-ms", type=float, default=100.0,
                    help="untimed sleep before each timed call (idle threads stop spinning)")
    ap.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 reps, no sizing")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--precision", default="float32",
                    help="comma list of float32,bfloat16,int8: bfloat16 adds the bf16 / int8 "
                         "inference and the mixed-precision training contenders, int8 the int8 "
                         "inference contenders (see --help above)")
    ap.add_argument("--workloads", help="comma list of ragged,subnormal,contended,regularised: "
                    "run these "
                    "real-workload rows (bench/workloads.py) instead of the main table")
    ap.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        c, cfg, who, n = args.memory_child
        return memory_child(c, cfg, who, int(n))
    if args.workloads:
        return run_workloads(args, ap)
    if args.quick:
        args.reps, args.min_rep_ms = 2, 0.0
    elif args.reps < 7:
        ap.error("--reps must be >= 7 (or use --quick)")
    cells, modes = args.cells.split(","), args.modes.split(",")
    for name, vals, allowed in (("--cells", cells, GATES), ("--modes", modes, ("infer", "train")),
                                ("--configs", (args.configs or "a").split(","), CONFIGS)):
        if bad := [v for v in vals if v not in allowed]:
            ap.error(f"{name}: unknown {bad}; choose from {list(allowed)}")
    precisions = args.precision.split(",")
    if bad := [p for p in precisions if p not in ("float32", "bfloat16", "int8")]:
        ap.error(f"--precision: unknown {bad}; choose from ['float32', 'bfloat16', 'int8']")
    lowp = "bfloat16" in precisions
    int8 = "int8" in precisions
    lnames = lowp_names(precisions)
    plan = [(cell, cfg) for cell in cells for cfg in CONFIGS
            if (cfg in args.configs.split(",") if args.configs else cfg in DEFAULT_CONFIGS[cell])]

    import fusedrnn as fr
    info = machine_info(fr, args)
    for k, v in info.items():
        print(f"# {k}: {v}")
    problems, onnx_models, rows, failures, sgemm = {}, {}, [], [], {}
    unsupported = []
    onnx_q8 = {}   # (cell, cfg): ONNX Runtime's quantised model and its op types
    names = [c for c in CONTENDERS if c != "onnxruntime" or not args.no_onnx]
    peers = [c for c in names if c not in ("fusedrnn", "frozen")]
    names += lnames
    if int8 and not args.no_onnx:
        names.append("ort_qint8")
    if lowp:
        names += list(LOWP_TRAIN)
    hdr = (f"{'cfg':<3} {'cell':<7} {'mode':<5} {'thr':>3} | "
           + " | ".join(f"{SHORT[n] + ' ms med / min':^20}" for n in names)
           + " | " + " ".join(f"{SHORT[n] + '/fr':>8}" for n in names[1:])
           + " | " + " ".join(f"{SHORT[n] + '/frz':>9}" for n in peers)
           + (" | " + " ".join(f"{SHORT[n] + '/f16':>9}" for n in LOWP_PEERS)
              + " | " + " ".join(f"{SHORT[n] + '/fb16':>10}" for n in LOWP_TRAIN_PEERS)
              if lowp else "")
           + (" | " + " ".join(f"{SHORT[n] + '/fi8':>9}" for n in INT8_PEERS) if int8 else "")
           + " | GFLOP/s" + "".join(f"{SHORT[n]:>6}" for n in names)
           + " | % of sgemm peak" + "".join(f"{SHORT[n]:>6}" for n in names))
    for n in args.threads:
        torch.set_num_threads(n)
        fr.set_num_threads(n)
        sgemm[n] = sgemm_gflops(n)
        print(f"\n## threads={n}: sgemm peak (float32 2048x2048, best of 10) = "
              f"{sgemm[n]['eigen']:.1f} GFLOP/s (Eigen, built like the kernels; torch.mm: "
              f"{sgemm[n]['torch']:.1f})\n{hdr}\n{'-' * len(hdr)}", flush=True)
        for cell, cfg in plan:
            T, N, H = CONFIGS[cfg]
            dims = SimpleNamespace(T=T, N=N, C=H, H=H)
            prob = problems.setdefault((cell, cfg), make_problem(cell, T, N, H, H))
            for mode in modes:
                fns = make_contenders(cell, mode, dims, fr, prob)
                failed = {}

                def peer(name, add):
                    """add() puts a peer's contenders in fns; its error goes to failed[name]
                    (the row runs without it)."""
                    try:
                        add()
                    except Exception as e:      # noqa: BLE001
                        failed[name] = f"{type(e).__name__}: {e}"

                def ort(name, models, export):  # ONNX Runtime on the (cached) exported model
                    if (cell, cfg) not in models:
                        models[(cell, cfg)] = export(prob[0], prob[1])
                    fns[name] = ort_contender(models[(cell, cfg)][0], prob[1], n)

                if mode == "infer" and not args.no_onnx:
                    peer("onnxruntime", lambda: ort("onnxruntime", onnx_models, onnx_model))
                    if int8:
                        peer("ort_qint8", lambda: ort("ort_qint8", onnx_q8, onnx_qint8_model))
                if mode == "infer" and lnames:
                    peer("lowp", lambda: fns.update(
                        lowp_contenders(cell, prob[0], prob[1], fr, precisions)))
                if mode == "train" and lowp:
                    peer("lowp", lambda: fns.update(lowp_train_contenders(cell, *prob, fr)))
                res = timed({k: fns[k] for k in CONTENDERS + LOWP + ("ort_qint8",) + LOWP_TRAIN
                             if k in fns},
                            args.reps,
                            args.min_rep_ms, args.settle_ms / 1e3, failed)
                split_unsupported(failed, f"{cfg} {cell} {mode} threads={n}", cell, unsupported)
                fl = flops(cell, mode, T, N, H, H)
                for r in res.values():
                    r["gflops"] = fl / r["median_ms"] / 1e6
                    r["pct_sgemm_peak"] = 100 * r["gflops"] / sgemm[n]["eigen"]
                    r["pct_torch_sgemm_peak"] = 100 * r["gflops"] / sgemm[n]["torch"]
                f = res.get("fusedrnn")
                ratios = {k: res[k]["median_ms"] / f["median_ms"] if f and k in res else None
                          for k in names[1:]}
                z = res.get("frozen")   # inference only
                ratios_frozen = {k: res[k]["median_ms"] / z["median_ms"] if z and k in res
                                 else None for k in peers}
                z8 = res.get("frozen_int8")
                ratios_int8 = {k: res[k]["median_ms"] / z8["median_ms"] if z8 and k in res
                               else None for k in INT8_PEERS}
                z16 = res.get("frozen_bf16")
                ratios_bf16 = {k: res[k]["median_ms"] / z16["median_ms"] if z16 and k in res
                               else None for k in LOWP_PEERS}
                t16 = res.get("fusedrnn_bf16")   # training only
                ratios_train16 = {k: res[k]["median_ms"] / t16["median_ms"] if t16 and k in res
                                  else None for k in LOWP_TRAIN_PEERS}
                rows.append({"config": cfg, "T": T, "N": N, "C": H, "H": H, "cell": cell,
                             "mode": mode, "threads": n, "flop": fl, "contenders": res,
                             "ratio_peer_over_fusedrnn": ratios,
                             "ratio_peer_over_frozen": ratios_frozen,
                             **({"ratio_peer_over_frozen_bf16": ratios_bf16,
                                 "ratio_peer_over_fusedrnn_bf16": ratios_train16}
                                if lowp else {}),
                             **({"ratio_peer_over_frozen_int8": ratios_int8} if int8 else {}),
                             "failed": failed,
                             "onnx_qint8": ({"ops": onnx_q8[(cell, cfg)][1]}
                                            if mode == "infer" and (cell, cfg) in onnx_q8
                                            else None),
                             "onnx": (dict(zip(("exporter", "ops", "max_abs_diff_y_vs_torch", "export_errors"),
                                               onnx_models[(cell, cfg)][1:]))
                                      if mode == "infer" and (cell, cfg) in onnx_models else None)})
                failures += [f"{cfg} {cell} {mode} threads={n} {k}: {e}" for k, e in failed.items()]
                get = [res.get(k) for k in names]
                print(f"{cfg:<3} {cell:<7} {mode:<5} {n:>3} | " + " | ".join(fmt(r) for r in get)
                      + " | " + " ".join(f"{ratios[k]:7.2f}x" if ratios[k] else f"{'-':>8}"
                                         for k in names[1:])
                      + " | " + " ".join(f"{ratios_frozen[k]:8.2f}x" if ratios_frozen[k]
                                         else f"{'-':>9}" for k in peers)
                      + (" | " + " ".join(f"{ratios_bf16[k]:8.2f}x" if ratios_bf16[k]
                                          else f"{'-':>9}" for k in LOWP_PEERS)
                         + " | " + " ".join(f"{ratios_train16[k]:9.2f}x" if ratios_train16[k]
                                            else f"{'-':>10}" for k in LOWP_TRAIN_PEERS)
                         if lowp else "")
                      + (" | " + " ".join(f"{ratios_int8[k]:8.2f}x" if ratios_int8[k]
                                          else f"{'-':>9}" for k in INT8_PEERS) if int8 else "")
                      + f" | {'':7}" + "".join(f"{r['gflops']:6.0f}" if r else f"{'-':>6}"
                                               for r in get)
                      + f" | {'':15}" + "".join(f"{r['pct_sgemm_peak']:5.0f}%" if r else
                                                f"{'-':>6}" for r in get),
                      flush=True)

    mem = []
    if "train" in modes and not args.no_memory:
        n = max(args.threads)
        print(f"\n## peak memory of one training step (MiB above inputs and weights; threads={n}; "
              "fresh subprocess each; see --help)\n"
              f"{'cfg':<3} {'cell':<7} | {'fr tracemalloc':>14} {'fr RSS':>8} {'torch RSS':>9} "
              f"{'torch/fr RSS':>12}")
        for cell, cfg in plan:
            whos = ("fusedrnn", "torch") + (LOWP_TRAIN + ("torch_bf16",) if lowp else ())
            m = {who: memory(cell, cfg, who, n) for who in whos}
            mem.append({"config": cfg, "cell": cell, "threads": n, **m})
            errs = {k: v["error"] for k, v in m.items() if "error" in v}
            split_unsupported(errs, f"memory {cfg} {cell}", cell, unsupported)
            failures += [f"memory {cfg} {cell} {k}: {e}" for k, e in errs.items()]
            fm, tm = m["fusedrnn"].get("rss_peak_mib"), m["torch"].get("rss_peak_mib")
            tr = m["fusedrnn"].get("tracemalloc_peak_mib")
            print(f"{cfg:<3} {cell:<7} | {tr if tr is None else f'{tr:14.1f}':>14} "
                  f"{fm if fm is None else f'{fm:8.1f}':>8} {tm if tm is None else f'{tm:9.1f}':>9}"
                  f" {f'{tm / fm:11.2f}x' if fm and tm else '-':>12}"
                  + ("".join(f"  {SHORT[w]} {m[w].get('rss_peak_mib', float('nan')):.1f}"
                             for w in whos[2:])
                     + f" (fb16 tracemalloc "
                       f"{m['fusedrnn_bf16'].get('tracemalloc_peak_mib', float('nan')):.1f})"
                     if lowp else ""), flush=True)
    if onnx_models:
        print("\n# onnx graphs (exporter: ops; max |y_ort - y_torch|):\n" + "\n".join(
            f"#   {c} {g}: {m[1]}: {','.join(m[2])}; {m[3]:.1e}" for (c, g), m in onnx_models.items()))
    if onnx_q8:
        print("# onnx quantised graphs (onnxruntime.quantization.quantize_dynamic, QInt8): "
              + "; ".join(f"{c} {g}: {','.join(m[1])}" for (c, g), m in onnx_q8.items()))
    info["loadavg_at_end"] = os.getloadavg()
    print(f"\n# loadavg at end: {info['loadavg_at_end']}")
    if unsupported:
        print("\n# not supported on this CPU: " + "\n#   ".join(
            [""] + [f"{u['where']} {u['contender']}: {u['reason']}" for u in unsupported]))
    print("\n# failures: " + ("none" if not failures else "\n#   ".join([""] + failures)))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": info, "sgemm_peak_gflops": sgemm, "results": rows,
                       "memory": mem, "failures": failures, "unsupported": unsupported},
                      fh, indent=2)
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
