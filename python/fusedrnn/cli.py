"""The ``fusedrnn`` command (also ``python -m fusedrnn``).

    fusedrnn train [--task charlm] [flags]   train a task (default: the character language model,
                                             about 3 minutes); writes runs/<task>/model.safetensors,
                                             metrics.json and loss.png
    fusedrnn evaluate CHECKPOINT             validation metrics of a trained model
    fusedrnn generate CHECKPOINT             sample text from a language model
    fusedrnn predict CHECKPOINT              the model's predictions for input lines (file or stdin)
    fusedrnn bench                           fusedrnn vs torch.nn speed
    fusedrnn info                            version and build (compiler, instruction set, threads)

Flag precedence: the user's flag > the task's defaults > the generic defaults. Mistakes the user
can fix (bad flags or values, bad data files, bad checkpoints, a configuration too large for the
memory, an unusable --out, a diverging loss, a failed write) print one line
``fusedrnn: error: ...`` and exit with status 2. A closed standard output (``| head``) does not
stop a command: ``train`` still saves; the exit status is then 141, silently. Warnings are one
line ``fusedrnn: warning: ...``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

from . import validators as V

__all__ = ["main", "build_parser"]

PROG = "fusedrnn"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fusedrnn: error: <message>`` and exit status 2."""

    def error(self, message):
        sub = self.prog[len(PROG):].strip()
        hint = f" (see fusedrnn {sub + ' ' if sub else ''}--help)"
        self.exit(2, f"{PROG}: error: {' '.join(str(message).split())}{hint}\n")


# -- value types (argparse turns ArgumentTypeError into a one-line error) -------------------------
positive_int = V.parse_int(1)
nonneg_int = V.parse_int(0)
positive_float = V.parse_float(0, lo_open=True, what="a number > 0")
nonneg_float = V.parse_float(0, what="a number >= 0")
probability = V.parse_float(0, 1, what="in [0, 1)")


def thread_count(value: str) -> int:
    """--threads: an integer in [1, 4096] (set_num_threads' range), checked by the parser so
    that the error names --threads, not set_num_threads."""
    from .functional import _MAX_THREADS
    n = positive_int(value)
    if n > _MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be <= {_MAX_THREADS}, got {n}")
    return n


thread_count.__name__ = "integer"

#: generate --length's maximum (tasks.charlm.MAX_GENERATE_LENGTH, repeated here so that the
#: parser needs no task import; test_cli checks they agree)
MAX_GENERATE_LENGTH = 10_000_000


def generate_length(value: str) -> int:
    """generate --length: an integer in [0, MAX_GENERATE_LENGTH] (one model step per character:
    a mistyped 1e11 is refused instead of sampling for days)."""
    n = nonneg_int(value)
    if n > MAX_GENERATE_LENGTH:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_GENERATE_LENGTH:,}, got {n}")
    return n


generate_length.__name__ = "integer"

#: --precision spellings -> fusedrnn.models.PRECISIONS names
_PRECISION_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
                    "bf16": "bfloat16", "int8": "int8"}


def precision_name(value: str) -> str:
    """--precision: float32 (fp32), bfloat16 (bf16) or int8; others: a one-line error."""
    if value in _PRECISION_NAMES:
        return _PRECISION_NAMES[value]
    raise argparse.ArgumentTypeError(f"must be float32 (fp32), bfloat16 (bf16) or int8, got "
                                     f"{value!r}")


_PRECISION_HELP = ("arithmetic of the recurrent layers: float32 (default), bfloat16 (bf16: "
                   "bf16 products with fp32 accumulation and gates) or int8 (s8 weights with "
                   "per-row scales, activations quantised per row, s32 sums, fp32 gates); "
                   "embedding and heads stay float32")


def build_parser() -> argparse.ArgumentParser:
    from .models import CELLS
    from .tasks import TASK_NAMES
    from .tasks.trainer import LR_SCHEDULES, OPTIMIZERS

    ap = _Parser(prog=PROG, description="Fast CPU LSTM / GRU / RNN training: train a "
                 "sequence task, evaluate it, generate or predict with it, benchmark.",
                 epilog="Run 'fusedrnn train' with no arguments to train the default "
                        "character language model in about 3 minutes.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    threads = dict(type=thread_count, metavar="N",
                   help="threads for the kernels, 1 to 4096 (default: OpenMP's, i.e. the "
                        "cores)")

    # -- train ------------------------------------------------------------------------------
    t = sub.add_parser("train", help="train a task (default: charlm, about 3 minutes)",
                       description="Train a task. Unset flags take the task's defaults, then "
                                   "the generic ones. Stops at --steps, --epochs or "
                                   "--time-budget, whichever comes first (none given: the "
                                   "task's time budget).")
    g = t.add_argument_group("task and model")
    g.add_argument("--task", choices=TASK_NAMES, help="default: charlm")
    g.add_argument("--cell", choices=tuple(CELLS))
    g.add_argument("--hidden", type=positive_int, metavar="H", help="hidden units per layer")
    g.add_argument("--layers", type=positive_int, metavar="L")
    g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                   help="both directions (tasks that see the whole input only)")
    g.add_argument("--dropout", type=probability, metavar="P",
                   help="dropout between recurrent layers")
    g.add_argument("--embed", type=positive_int, metavar="E", help="embedding size")
    g.add_argument("--attention", choices=("none", "bahdanau", "luong", "luong_dot"),
                   help="translate: attention over the encoder outputs (default none)")
    g = t.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", help="your data file instead of the built-in data")
    g.add_argument("--column", metavar="NAME", help="the column to use in a CSV file")
    g.add_argument("--seq-len", type=positive_int, metavar="T",
                   help="charlm: the truncated-BPTT chunk length (default 100); refused by "
                        "the other tasks, whose lengths come from their data or from --window / "
                        "--horizon (forecast) and --min-length / --max-length (classify)")
    g.add_argument("--batch-size", type=positive_int, metavar="N")
    g.add_argument("--model", metavar="NAME", help="task-specific model variant")
    g.add_argument("--problem", metavar="NAME", help="task-specific problem")
    g.add_argument("--min-length", type=positive_int, metavar="N")
    g.add_argument("--max-length", type=positive_int, metavar="N")
    g.add_argument("--horizon", type=positive_int, metavar="N", help="steps to forecast")
    g.add_argument("--window", type=positive_int, metavar="N", help="input window length")
    g = t.add_argument_group("optimisation")
    g.add_argument("--lr", type=positive_float, help="learning rate")
    g.add_argument("--optimizer", choices=tuple(OPTIMIZERS))
    g.add_argument("--clip", type=nonneg_float, metavar="NORM",
                   help="gradient-norm clipping (0 = off)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="learning rate over the run: constant, or decayed from --lr to --lr-min "
                        "along a half cosine or a straight line as the run's limit (--steps, "
                        "--epochs or --time-budget, whichever is nearest) approaches; "
                        "default: the task's (charlm: cosine; others: constant)")
    g.add_argument("--lr-min", type=nonneg_float, metavar="LR",
                   help="the learning rate a decaying --lr-schedule ends at (default 0)")
    g.add_argument("--steps", type=positive_int, metavar="N", help="stop after N steps")
    g.add_argument("--epochs", type=positive_float, metavar="E", help="stop after E epochs")
    g.add_argument("--time-budget", type=positive_float, metavar="SECONDS",
                   help="stop after this much training (validation included)")
    g.add_argument("--eval-every", metavar="N|Ns",
                   help="validate every N steps or every N seconds ('30s'); default: 10 times "
                        "per --steps run, 12 times per --time-budget, skipping those that would "
                        "make validation take longer than training; always at the end")
    g.add_argument("--seed", type=nonneg_int, help="seeds the weights, batches and dropout "
                                                   "(default 0)")
    g.add_argument("--threads", **threads)
    g.add_argument("--precision", type=precision_name, default=None, metavar="P",
                   help="compute precision of the recurrent layers: float32 (default) or "
                        "bfloat16 (bf16: mixed precision, bf16 products with fp32 accumulation, "
                        "gates and master weights; the checkpoint stays float32 and records it, "
                        "--resume restores it; --compare-torch then trains the torch twin under "
                        "torch.autocast); int8 is for evaluate, predict and generate")
    g = t.add_argument_group("cell options", "layer options of the recurrent cell; each is "
                             "refused where it does not apply (e.g. --peepholes with --cell "
                             "gru, any of them with --task translate); kept in the checkpoint")
    g.add_argument("--nonlinearity", choices=("tanh", "relu"),
                   help="--cell rnn: the Elman RNN's activation (default tanh)")
    g.add_argument("--init", choices=("pytorch", "keras", "irnn"),
                   help="weight initialisation: pytorch (default, U(+-1/sqrt(H))), keras "
                        "(glorot / orthogonal), irnn (--cell rnn: identity recurrent "
                        "weights, zero biases, ReLU; Le, Jaitly & Hinton 2015)")
    g.add_argument("--peepholes", action=argparse.BooleanOptionalAction, default=None,
                   help="--cell lstm: peephole connections (Gers et al. 2002)")
    g.add_argument("--proj-size", type=positive_int, metavar="P",
                   help="--cell lstm: project h to P units (LSTMP, torch's proj_size)")
    g.add_argument("--variant", choices=("reset_after", "reset_before"),
                   help="--cell gru: where the reset gate acts (reset_after = torch/cuDNN, "
                        "the default; reset_before = Cho et al. 2014, Keras reset_after=False)")
    g.add_argument("--forget-bias", type=V.parse_float(float("-inf"), what="a finite number"),
                   metavar="X", help="--cell lstm: add X to the initialisation's "
                                     "forget-gate bias (PyTorch's uniform one, or Keras' "
                                     "1 with --init keras), replacing the task's default: "
                                     "forecast's +1 (with --init keras: Keras' 1, not 2), "
                                     "classify's chrono initialisation; charlm and tag have "
                                     "none")
    g.add_argument("--layer-norm", choices=("haste", "tfa"),
                   help="--cell lstm or gru: layer normalisation of the input and recurrent "
                        "products (and the LSTM's cell); haste carries the un-normalised cell, "
                        "tfa (TF Addons, PyTorch's custom_lstms; LSTM only) the normalised one")
    g.add_argument("--ln-eps", type=positive_float, metavar="EPS",
                   help="--layer-norm: epsilon (default 1e-5; TF Addons uses 1e-3)")
    g.add_argument("--zoneout", type=probability, metavar="P",
                   help="--cell lstm or gru: zoneout probability of h and (LSTM) c "
                        "(Krueger et al.); not with --zoneout-h / --zoneout-c")
    g.add_argument("--zoneout-h", type=probability, metavar="P",
                   help="--cell lstm or gru: zoneout probability of h")
    g.add_argument("--zoneout-c", type=probability, metavar="P",
                   help="--cell lstm: zoneout probability of c")
    g.add_argument("--recurrent-dropout", type=probability, metavar="P",
                   help="--cell lstm or gru: variational dropout of h_{t-1} (one mask per "
                        "sequence)")
    g.add_argument("--input-dropout", type=probability, metavar="P",
                   help="--cell lstm or gru: variational dropout of each layer's input (one mask per "
                        "sequence)")
    g.add_argument("--weight-drop", type=probability, metavar="P",
                   help="--cell lstm or gru: DropConnect on the recurrent weights (AWD-LSTM)")
    g.add_argument("--dropout-masks", choices=("shared", "per_gate"),
                   help="--recurrent-dropout / --input-dropout: shared (default: one mask per "
                        "sequence, shared by the gates) or per_gate (Keras 3's "
                        "recurrent_dropout: a mask per gate block)")
    g = t.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="output directory (default: runs/<task>); "
                                                "created and checked before training")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a model already in --out (without it a fresh run refuses to "
                        "overwrite one; --resume of that model continues it in place)")
    g.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue from a checkpoint: model, optimiser state, step count, best "
                        "metric, training time and history (--steps etc. then count this run's "
                        "steps); with other --data: fine-tuning, the best metric and epochs "
                        "start afresh on the new data")
    g.add_argument("--compare-torch", action="store_true",
                   help="then train the task's PyTorch twin from the same initial weights on "
                        "the same batches for the same steps, and compare")
    g.add_argument("--tensorboard", metavar="DIR",
                   help="also write TensorBoard scalar logs (loss, metrics, learning rate, "
                        "gradient norm, throughput) to DIR; needs tensorboardX (pip install "
                        "'fusedrnn[tensorboard]'); checked before training like --out")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar or per-evaluation lines")
    t.set_defaults(func=cmd_train)

    # -- evaluate / generate / predict -------------------------------------------------------
    e = sub.add_parser("evaluate", help="validation metrics of a checkpoint")
    e.add_argument("checkpoint", metavar="CHECKPOINT")
    e.add_argument("--data", metavar="PATH", help="evaluate on this data file's validation "
                                                  "split instead of the training data")
    e.add_argument("--column", metavar="NAME")
    e.add_argument("--batch-size", type=positive_int, metavar="N")
    e.add_argument("--threads", **threads)
    e.add_argument("--precision", type=precision_name, default="float32", metavar="P",
                   help=_PRECISION_HELP)
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--beam", type=positive_int, metavar="K",
                   help="beam width of sequence-to-sequence decoding (translate; default 4)")
    e.set_defaults(func=cmd_evaluate)

    gen = sub.add_parser("generate", help="sample text from a language-model checkpoint")
    gen.add_argument("checkpoint", metavar="CHECKPOINT")
    gen.add_argument("--prime", default="The ", help="text that starts the sample "
                                                     "(default 'The ')")
    gen.add_argument("--length", type=generate_length, default=500,
                     help=f"characters to sample, at most {MAX_GENERATE_LENGTH:,} "
                          f"(default 500)")
    gen.add_argument("--temperature", type=nonneg_float, default=0.8,
                     help="softmax temperature, 0 = greedy (default 0.8)")
    gen.add_argument("--seed", type=nonneg_int, default=0, help="sampling seed (default 0)")
    gen.add_argument("--threads", **threads)
    gen.add_argument("--precision", type=precision_name, default="float32", metavar="P",
                     help=_PRECISION_HELP)
    gen.set_defaults(func=cmd_generate)

    pr = sub.add_parser("predict", help="predictions for input lines (from --input or stdin)")
    pr.add_argument("checkpoint", metavar="CHECKPOINT")
    pr.add_argument("--input", metavar="FILE", help="one input per line (default: stdin)")
    pr.add_argument("--beam", type=positive_int, metavar="K",
                    help="beam width of sequence-to-sequence decoding (translate; default 4)")
    pr.add_argument("--threads", **threads)
    pr.add_argument("--precision", type=precision_name, default="float32", metavar="P",
                    help=_PRECISION_HELP)
    pr.set_defaults(func=cmd_predict)

    # -- bench / info ------------------------------------------------------------------------
    b = sub.add_parser("bench", help="fusedrnn vs torch.nn speed (bench/run.py --quick when "
                                     "the source tree is present)")
    b.add_argument("--builtin", action="store_true",
                   help="the short built-in comparison even when bench/run.py is present")
    b.add_argument("--threads", **threads)
    b.add_argument("rest", nargs=argparse.REMAINDER,
                   help="further arguments for bench/run.py (after --)")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="version and build information")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    add_interchange_parsers(sub)
    rp = sub.add_parser("report", help="one self-contained HTML page of a training run",
                        description="Write RUN_DIR/report.html: the run's configuration, "
                                    "validation history and pictures (inlined), from its "
                                    "metrics.json and PNGs.")
    rp.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of a train run")
    rp.add_argument("--out", metavar="FILE", help="default RUN_DIR/report.html")
    rp.set_defaults(func=cmd_report)
    from .tasks.experiments import add_parser as add_experiment_parser
    add_experiment_parser(sub, _Parser)
    return ap


# -- commands ------------------------------------------------------------------------------------
def _threads(args) -> None:
    if getattr(args, "threads", None):
        from . import set_num_threads
        set_num_threads(args.threads)


def cmd_train(args, t_start) -> int:
    from .tasks.trainer import UsageError, train
    if getattr(args, "precision", None) == "int8":
        raise UsageError("--precision int8: training runs in float32 or bfloat16 (mixed "
                         "precision); int8 is an inference precision (fusedrnn evaluate / "
                         "predict / generate --precision int8)")
    return train(args, sys.stdout, t_start)


def _load(args, prepare: bool):
    from .tasks.trainer import load_task_and_model
    _threads(args)
    ns = argparse.Namespace(**{k: v for k, v in vars(args).items()
                               if k not in ("checkpoint", "func", "command", "precision")})
    ns.task = None
    task, model, meta, rest = load_task_and_model(args.checkpoint, ns, prepare=prepare,
                                                  command=args.command)
    precision = getattr(args, "precision", "float32")
    if precision != "float32":
        # every recurrent layer frozen at that precision (embedding and heads stay float32)
        from .models import freeze
        model = freeze(model, precision, where=f"fusedrnn {args.command}",
                       argument="--precision")
    return task, model, meta, rest


def _user_errors(fn):
    """evaluate / generate / predict: a ValueError there comes from the user's input."""
    def wrapped(args, t_start):
        from .io import CheckpointError
        from .tasks.base import DataError
        from .tasks.trainer import UsageError
        try:
            return fn(args, t_start)
        except (UsageError, DataError, CheckpointError):
            raise
        except ValueError as e:
            raise UsageError(str(e)) from e
    wrapped.__name__ = fn.__name__
    return wrapped


@_user_errors
def cmd_evaluate(args, t_start) -> int:
    task, model, meta, _ = _load(args, prepare=True)
    model.eval()
    t0 = time.perf_counter()
    metrics = task.evaluate(model)
    dt = time.perf_counter() - t0
    if args.json:
        from .tasks.guards import dumps
        print(dumps({"task": task.name, "step": meta.get("trainer", {}).get("step"),
                     **metrics, "seconds": round(dt, 3)}))
        return 0
    step = meta.get("trainer", {}).get("step")
    print(f"{task.name} checkpoint {args.checkpoint}" + (f" (step {step})" if step else ""))
    for k, v in metrics.items():
        print(f"  {k:<16} {v:.4f}" if isinstance(v, float) else f"  {k:<16} {v}")
    print(f"  ({dt:.1f} s)")
    return 0


@_user_errors
def cmd_generate(args, t_start) -> int:
    task, model, _, _ = _load(args, prepare=False)
    if not callable(getattr(task, "generate", None)):
        from .tasks.trainer import UsageError
        raise UsageError(f"task {task.name} is not a language model; use "
                         f"`fusedrnn predict`")
    text = task.generate(model, args.prime, args.length, args.temperature, args.seed)
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    return 0


@_user_errors
def cmd_predict(args, t_start) -> int:
    from .tasks.guards import read_lines
    task, model, _, _ = _load(args, prepare=False)
    lines = read_lines(args.input)       # size-limited: /dev/zero is refused, not read
    model.eval()
    try:
        out = task.predict(model, lines)
    except NotImplementedError as e:
        from .tasks.trainer import UsageError
        raise UsageError(str(e)) from None
    for line in out:
        print(line)
    return 0


def cmd_report(args, t_start) -> int:
    from .plotting import html_report
    from .tasks.trainer import UsageError
    if args.out is not None and not args.out.strip():
        # (html_report reads a false --out as "not given" and would write the default path)
        raise UsageError("--out must name a file, got an empty string (leave --out out for "
                         "RUN_DIR/report.html)")
    try:
        path = html_report(args.run_dir, args.out)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {path}")
    return 0


def _repo_bench() -> Optional[Path]:
    p = Path(__file__).resolve().parents[2] / "bench" / "run.py"
    return p if p.is_file() else None


def cmd_bench(args, t_start) -> int:
    rest = [a for a in args.rest if a != "--"]
    have_torch = importlib.util.find_spec("torch") is not None
    script = _repo_bench()
    if script is not None and have_torch and not args.builtin:
        cmd = [sys.executable, str(script), "--quick"]
        if importlib.util.find_spec("onnxruntime") is None and "--no-onnx" not in rest:
            cmd.append("--no-onnx")
        if args.threads and "--threads" not in rest:
            cmd += ["--threads", str(args.threads)]
        cmd += rest
        print("$ " + " ".join(cmd), flush=True)
        return subprocess.call(cmd)
    if rest:
        from .tasks.trainer import UsageError
        raise UsageError("extra bench arguments need bench/run.py (the source tree) and torch")
    _threads(args)
    return _builtin_bench(have_torch)


def _builtin_bench(have_torch: bool) -> int:
    """fusedrnn.LSTM (vs torch.nn.LSTM) forward + backward, T=100 N=64 C=H=256, float32."""
    import numpy as np
    import fusedrnn

    T, N, H = 100, 64, 256
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, N, H)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    layer = fusedrnn.LSTM(H, H, seed=0)
    threads = fusedrnn.get_num_threads()

    def fr_step():
        layer.zero_grad()
        layer.forward(x)
        layer.backward(dy)

    def timeit(fn, reps=7):
        fn()
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2] * 1e3

    results = {"fusedrnn": timeit(fr_step)}
    if have_torch:
        import torch
        torch.set_num_threads(threads)
        tl = fusedrnn.to_torch(layer)
        tx = torch.from_numpy(x).requires_grad_()
        tdy = torch.from_numpy(dy)

        def torch_step():
            tl.zero_grad()
            tx.grad = None
            y, _ = tl(tx)
            y.backward(tdy)

        results["torch"] = timeit(torch_step)
    print(f"LSTM forward + backward, T={T} N={N} C=H={H}, float32, {threads} threads, "
          f"median of 7:")
    for name, ms in results.items():
        ratio = f"  ({ms / results['fusedrnn']:.2f}x fusedrnn)" if name != "fusedrnn" else ""
        print(f"  {name:<9} {ms:8.2f} ms  {T * N / ms * 1e3:12,.0f} steps*batch/s{ratio}")
    if not have_torch:
        print("  (torch is not installed: no comparison)")
    return 0


def cmd_info(args, t_start) -> int:
    import platform

    import numpy as np
    import fusedrnn
    from .tasks import TASK_NAMES

    info = fusedrnn.build_info()
    torch_v = None
    if importlib.util.find_spec("torch") is not None:
        try:
            from importlib.metadata import version
            torch_v = version("torch")
        except Exception:  # noqa: BLE001 - an odd install: report it as unknown
            torch_v = "installed"
    data = {"fusedrnn": fusedrnn.__version__, **{k: v for k, v in info.items()
                                                  if k != "version"},
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch_v,
            "tasks": list(TASK_NAMES)}
    if args.json:
        print(json.dumps(data))
        return 0
    labels = {"fusedrnn": "fusedrnn", "compiler": "compiler",
              "instruction_set": "instruction set", "compiled_isas": "compiled copies",
              "openmp": "OpenMP", "openmp_max_threads": "OpenMP max threads",
              "num_threads": "threads", "eigen_version": "Eigen", "python": "Python",
              "numpy": "NumPy", "torch": "PyTorch", "tasks": "tasks",
              "precision_tiers": "precision tiers"}
    for k, v in data.items():
        if isinstance(v, list):
            v = ", ".join(v)
        elif isinstance(v, dict):
            v = ", ".join(f"{a}: {b}" for a, b in v.items())
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        elif v is None:
            v = "not installed"
        print(f"{labels.get(k, k):<20} {v}")
    return 0


# -- export / import (issue 22): ONNX and Keras interchange; self-contained ---------------------
def add_interchange_parsers(sub) -> None:
    """Registers `fusedrnn export` and `fusedrnn import`."""
    ex = sub.add_parser("export", help="write a checkpoint's model as ONNX or Keras weights",
                        description="Write the model of a checkpoint (a RecurrentModel, as "
                                    "`fusedrnn train --task charlm` makes, or a bare "
                                    "LSTM/GRU/RNN layer; for Keras also the KerasModel "
                                    "`fusedrnn import X.weights.h5` makes) as an ONNX model "
                                    "(fusedrnn.onnx.export) or a Keras 3 .weights.h5 file "
                                    "(fusedrnn.keras.save). Needs the [onnx] or [keras] "
                                    "extra.")
    ex.add_argument("checkpoint", help="a checkpoint file, or a run directory holding "
                                       "model.safetensors")
    ex.add_argument("--format", choices=("onnx", "keras"), required=True)
    ex.add_argument("--out", required=True, help="output path (.onnx; Keras: .weights.h5)")
    ex.add_argument("--opset", type=positive_int, default=None,
                    help="ONNX opset (default 17, at least 14)")
    ex.add_argument("--lengths", action="store_true",
                    help="ONNX: add the 'lengths' input (sequence_lens)")
    ex.add_argument("--initial-state", action="store_true",
                    help="ONNX: add the 'h0' (and 'c0') inputs")
    ex.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ex.set_defaults(func=cmd_export)

    im = sub.add_parser("import", help="read an ONNX or Keras model into a checkpoint",
                        description="Read an ONNX model (.onnx: fusedrnn.onnx.load) or a Keras "
                                    "3 file (.keras or .weights.h5: fusedrnn.keras.load) and "
                                    "save it as a fusedrnn checkpoint (fusedrnn.load(PATH)."
                                    "model rebuilds it).")
    im.add_argument("path", help="the .onnx, .keras or .weights.h5 file")
    im.add_argument("--out", required=True, help="the checkpoint to write (.safetensors)")
    im.add_argument("--return-sequences", choices=("yes", "no"), default=None,
                    help=".weights.h5 only (no architecture inside): whether the last "
                         "recurrent layer returns every step (default yes)")
    im.add_argument("--mask-zero", action="store_true",
                    help=".weights.h5 only: token 0 is padding (Keras' mask_zero)")
    im.add_argument("--nonlinearity", choices=("tanh", "relu"), default=None,
                    help=".weights.h5 only: SimpleRNN's activation (default tanh)")
    im.add_argument("--variant", choices=("reset_after", "reset_before"), default=None,
                    help=".weights.h5 only: a GRU without bias's formula (Keras reset_after="
                         "True / False), which such a file does not record unless "
                         "fusedrnn.keras.save wrote it")
    im.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    im.set_defaults(func=cmd_import)


def _interchange_error(msg: str) -> int:
    print(f"{PROG}: error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


def cmd_export(args, t_start) -> int:
    from .io import CheckpointError, load
    from .module import Module

    path = args.checkpoint
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    if os.path.exists(args.out) and not args.overwrite:
        return _interchange_error(f"{args.out} exists (pass --overwrite to replace it)")
    try:
        model = load(path).model
    except (CheckpointError, OSError, ValueError, TypeError) as e:
        return _interchange_error(f"cannot read checkpoint {path}: {e}")
    if not isinstance(model, Module):
        return _interchange_error(f"checkpoint {path} holds no model config; export takes a "
                                  f"model (fusedrnn.save(path, model))")
    # which models a format takes is the exporter's to say (fusedrnn.keras.save also takes
    # the KerasModel that `fusedrnn import X.weights.h5` writes): its TypeError is the message
    model.eval()
    try:
        if args.format == "onnx":
            from . import onnx as fonnx
            kw = {} if args.opset is None else {"opset": args.opset}
            fonnx.export(model, args.out, lengths=args.lengths,
                         initial_state=args.initial_state, **kw)
            ins = ["x"] + (["lengths"] if args.lengths else []) + \
                (["h0"] + (["c0"] if model.config().get("cell", type(model).__name__.lower())
                           == "lstm" else []) if args.initial_state else [])
            print(f"wrote {args.out} (ONNX; inputs {', '.join(ins)})")
        else:
            if args.opset is not None or args.lengths or args.initial_state:
                return _interchange_error("--opset, --lengths and --initial-state are for "
                                          "--format onnx")
            from . import keras as fkeras
            fkeras.save(model, args.out)
            print(f"wrote {args.out} (Keras 3 weights; fusedrnn.keras.keras_model(model) "
                  f"builds the model that loads them)")
    except ImportError as e:
        return _interchange_error(str(e))
    except TypeError as e:
        return _interchange_error(f"cannot export checkpoint {path}, which holds "
                                  f"{type(model).__name__}: {e}")
    except (ValueError, OSError) as e:
        return _interchange_error(f"cannot export: {e}")
    return 0


def cmd_import(args, t_start) -> int:
    from .io import save

    src = args.path
    if not os.path.isfile(src):
        return _interchange_error(f"{src}: no such file")
    if os.path.exists(args.out) and not args.overwrite:
        return _interchange_error(f"{args.out} exists (pass --overwrite to replace it)")
    keras_opts = (args.return_sequences is not None or args.mask_zero or args.nonlinearity
                  or args.variant)
    try:
        if src.endswith(".onnx"):
            if keras_opts:
                return _interchange_error("--return-sequences, --mask-zero, --nonlinearity and "
                                          "--variant are for .weights.h5 files")
            from . import onnx as fonnx
            model, fmt = fonnx.load(src), "onnx"
        elif src.endswith((".keras", ".h5")):
            from . import keras as fkeras
            kw = {}
            if src.endswith(".h5"):
                kw = dict(return_sequences=None if args.return_sequences is None
                          else args.return_sequences == "yes", mask_zero=args.mask_zero,
                          nonlinearity=args.nonlinearity, variant=args.variant)
            elif keras_opts:
                return _interchange_error("--return-sequences, --mask-zero, --nonlinearity and "
                                          "--variant are for .weights.h5 files (a .keras "
                                          "archive has its own config)")
            model, fmt = fkeras.load(src, **kw), "keras"
        else:
            return _interchange_error(f"{src}: unknown format (expected .onnx, .keras or "
                                      f".weights.h5)")
        save(args.out, model, source=os.path.abspath(src), source_format=fmt)
    except ImportError as e:
        return _interchange_error(str(e))
    except (ValueError, TypeError, OSError) as e:
        return _interchange_error(str(e))
    print(f"wrote {args.out}: {type(model).__name__} from {src}")
    return 0


# -- entry point ---------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command; returns the exit status (0 ok, 2 an error printed as one line, 130
    interrupted, 141 standard output closed)."""
    t_start = time.perf_counter()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 2
    try:  # chooses the kernels' instruction-set copy: a bad FUSEDRNN_ISA is one line, exit 2
        from . import build_info, get_adaptive_threads
        build_info()
        get_adaptive_threads()   # a bad FUSEDRNN_ADAPTIVE_THREADS too
    except ValueError as e:
        print(f"fusedrnn: error: {e}", file=sys.stderr)
        return 2
    # numpy's BLAS on one thread while a command that runs the kernels works (_blas.py: its
    # spinning threads would fight the kernels' OpenMP team, whatever OMP_NUM_THREADS says);
    # the count it had is restored when the command returns.
    blas = contextlib.nullcontext()
    if args.command in ("train", "evaluate", "generate", "predict", "experiment"):
        import numpy  # noqa: F401  (loads the BLAS library)
        from ._blas import single_threaded_blas
        blas = single_threaded_blas()
    from .io import CheckpointError, WriteError
    from .tasks.base import DataError
    from .tasks.trainer import OutputError, TrainingError, UsageError
    # generate and predict write the model's text itself: what the terminal cannot encode is
    # an error there; the other commands' reports (train's sample) escape it instead
    out = _GuardedStdout(sys.stdout, escape=args.command not in ("generate", "predict"))
    saved_stdout, saved_showwarning = sys.stdout, warnings.showwarning
    sys.stdout, warnings.showwarning = out, _one_line_warning
    try:
        with blas, warnings.catch_warnings():
            # the layers' torch-style warning about dropout on one layer: a task's default
            # dropout with --layers 1 is not the user's doing (charlm notes a given --dropout)
            warnings.filterwarnings("ignore", message="dropout option adds dropout after all",
                                    category=UserWarning)
            rc = args.func(args, t_start)
        out.flush()
    except (UsageError, DataError, CheckpointError, TrainingError, OutputError,
            WriteError) as e:   # (WriteError: a file the command writes, e.g. report --out)
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        rc = 130
    finally:
        sys.stdout, warnings.showwarning = saved_stdout, saved_showwarning
    return out.finish(rc)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings reach the user as one line ``fusedrnn: warning: ...`` (no source lines)."""
    try:
        print(f"{PROG}: warning: {' '.join(str(message).split())}",
              file=file if file is not None else sys.stderr)
    except OSError:
        pass


class _GuardedStdout:
    """sys.stdout during a command: a write that fails (a closed pipe, a full disk such as
    /dev/full) does not stop the command: the rest of its output is dropped, the command goes
    on (``train`` still saves its model and metrics), and :meth:`finish` then turns the exit
    status into 141 (128 + SIGPIPE, silent) for a closed pipe, or 2 with a one-line error on
    stderr for any other write error.

    Text the stream's encoding cannot hold (``PYTHONIOENCODING=ascii``, a C locale) is written
    with backslash escapes and one warning when ``escape`` (reports: train's sample of a
    model's text); otherwise (generate, predict: that text is the output) it is a one-line
    error saying how to get a UTF-8 standard output."""

    def __init__(self, stream, escape: bool = True):
        self._stream = stream
        self.escape = escape
        self.escaped = False
        self.error: Optional[OSError] = None

    def write(self, s):
        if self.error is None:
            try:
                return self._stream.write(s)
            except UnicodeEncodeError as e:
                return self._unencodable(s, e)
            except OSError as e:
                self.error = e
        return len(s)

    def _unencodable(self, s, e: UnicodeEncodeError):
        enc = getattr(self._stream, "encoding", None) or e.encoding
        bad = e.object[e.start:e.end][:8]
        if not self.escape:
            from .tasks.trainer import UsageError
            raise UsageError(f"standard output ({enc}) cannot encode the characters {bad!r} "
                             f"of the output; set PYTHONIOENCODING=utf-8 (or a UTF-8 locale)")
        if not self.escaped:
            self.escaped = True
            _one_line_warning(f"standard output ({enc}) cannot encode some characters (such "
                              f"as {bad!r}); they are written as backslash escapes (set "
                              f"PYTHONIOENCODING=utf-8 to see them)", UserWarning, "", 0)
        try:
            return self._stream.write(s.encode(enc, "backslashreplace").decode(enc))
        except (UnicodeError, LookupError):       # an odd codec: ASCII escapes always encode
            return self._stream.write(s.encode("ascii", "backslashreplace").decode("ascii"))
        except OSError as err:
            self.error = err
            return len(s)

    def flush(self):
        if self.error is None:
            try:
                self._stream.flush()
            except OSError as e:
                self.error = e

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def finish(self, rc: int) -> int:
        self.flush()
        if self.error is None:
            return rc
        try:   # nothing more may reach the broken stream, not even at interpreter exit
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, self._stream.fileno())
            os.close(fd)
        except (OSError, AttributeError, ValueError):
            pass
        if isinstance(self.error, BrokenPipeError):
            return 141 if rc == 0 else rc
        print(f"{PROG}: error: cannot write to standard output: "
              f"{self.error.strerror or self.error}", file=sys.stderr)
        return 2 if rc == 0 else rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
