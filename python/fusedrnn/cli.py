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
can fix (bad flags or values, bad data files, bad checkpoints) print one line
``fusedrnn: error: ...`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

__all__ = ["main", "build_parser"]

PROG = "fusedrnn"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fusedrnn: error: <message>`` and exit status 2."""

    def error(self, message):
        sub = self.prog[len(PROG):].strip()
        hint = f" (see fusedrnn {sub + ' ' if sub else ''}--help)"
        self.exit(2, f"{PROG}: error: {' '.join(str(message).split())}{hint}\n")


# -- value types (argparse turns ArgumentTypeError into a one-line error) -------------------------
def _int_at_least(minimum):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    parse.__name__ = "integer"
    return parse


def _float_in(lo, hi=math.inf, lo_open=False, hi_open=True, what=None):
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and \
            (v < hi if hi_open else v <= hi)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what}, got {s}")
        return v
    parse.__name__ = "number"
    return parse


positive_int = _int_at_least(1)
nonneg_int = _int_at_least(0)
positive_float = _float_in(0, lo_open=True, what="a number > 0")
nonneg_float = _float_in(0, what="a number >= 0")
probability = _float_in(0, 1, what="in [0, 1)")


def build_parser() -> argparse.ArgumentParser:
    from .tasks import TASK_NAMES
    from .tasks.trainer import OPTIMIZERS

    ap = _Parser(prog=PROG, description="Fast CPU LSTM / GRU / RNN training: train a "
                 "sequence task, evaluate it, generate or predict with it, benchmark.",
                 epilog="Run 'fusedrnn train' with no arguments to train the default "
                        "character language model in about 3 minutes.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    threads = dict(type=positive_int, metavar="N",
                   help="threads for the kernels (default: OpenMP's, i.e. the cores)")

    # -- train ------------------------------------------------------------------------------
    t = sub.add_parser("train", help="train a task (default: charlm, about 3 minutes)",
                       description="Train a task. Unset flags take the task's defaults, then "
                                   "the generic ones. Stops at --steps, --epochs or "
                                   "--time-budget, whichever comes first (none given: the "
                                   "task's time budget).")
    g = t.add_argument_group("task and model")
    g.add_argument("--task", choices=TASK_NAMES, help="default: charlm")
    g.add_argument("--cell", choices=("lstm", "gru", "rnn"))
    g.add_argument("--hidden", type=positive_int, metavar="H", help="hidden units per layer")
    g.add_argument("--layers", type=positive_int, metavar="L")
    g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                   help="both directions (tasks that see the whole input only)")
    g.add_argument("--dropout", type=probability, metavar="P",
                   help="dropout between recurrent layers")
    g.add_argument("--embed", type=positive_int, metavar="E", help="embedding size")
    g = t.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", help="your data file instead of the built-in data")
    g.add_argument("--column", metavar="NAME", help="the column to use in a CSV file")
    g.add_argument("--seq-len", type=positive_int, metavar="T",
                   help="sequence (truncated BPTT) length")
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
    g.add_argument("--steps", type=positive_int, metavar="N", help="stop after N steps")
    g.add_argument("--epochs", type=positive_float, metavar="E", help="stop after E epochs")
    g.add_argument("--time-budget", type=positive_float, metavar="SECONDS",
                   help="stop after this much training (validation included)")
    g.add_argument("--eval-every", metavar="N|Ns",
                   help="validate every N steps or every N seconds ('30s'); default: 10 times "
                        "per --steps run, 12 times per --time-budget; always at the end")
    g.add_argument("--seed", type=nonneg_int, help="seeds the weights, batches and dropout "
                                                   "(default 0)")
    g.add_argument("--threads", **threads)
    g = t.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="output directory (default: runs/<task>)")
    g.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue from a checkpoint: model, optimiser state, step count, best "
                        "metric (--steps etc. then count this run's steps)")
    g.add_argument("--compare-torch", action="store_true",
                   help="then train the task's PyTorch twin from the same initial weights on "
                        "the same batches for the same steps, and compare")
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
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--beam", type=positive_int, metavar="K",
                   help="beam width of sequence-to-sequence decoding (translate; default 4)")
    e.set_defaults(func=cmd_evaluate)

    gen = sub.add_parser("generate", help="sample text from a language-model checkpoint")
    gen.add_argument("checkpoint", metavar="CHECKPOINT")
    gen.add_argument("--prime", default="The ", help="text that starts the sample "
                                                     "(default 'The ')")
    gen.add_argument("--length", type=nonneg_int, default=500,
                     help="characters to sample (default 500)")
    gen.add_argument("--temperature", type=nonneg_float, default=0.8,
                     help="softmax temperature, 0 = greedy (default 0.8)")
    gen.add_argument("--seed", type=nonneg_int, default=0, help="sampling seed (default 0)")
    gen.add_argument("--threads", **threads)
    gen.set_defaults(func=cmd_generate)

    pr = sub.add_parser("predict", help="predictions for input lines (from --input or stdin)")
    pr.add_argument("checkpoint", metavar="CHECKPOINT")
    pr.add_argument("--input", metavar="FILE", help="one input per line (default: stdin)")
    pr.add_argument("--beam", type=positive_int, metavar="K",
                    help="beam width of sequence-to-sequence decoding (translate; default 4)")
    pr.add_argument("--threads", **threads)
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
    return ap


# -- threads -------------------------------------------------------------------------------------
_BLAS_SET_THREADS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads")


def single_threaded_blas() -> bool:
    """Sets numpy's OpenBLAS to one thread (unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS is
    set). The recurrent kernels' OpenMP threads and OpenBLAS's threads both busy-wait between
    calls; on a machine with few cores they then steal each other's cores, which measured 2x
    slower training steps here (2 cores), while the BLAS calls of a training step (the output
    layer) are a few percent of it. Linux only (reads /proc/self/maps); returns whether it
    changed anything."""
    if os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"):
        return False
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f
                    if "openblas" in line.lower() and ".so" in line.split()[-1]}
    except OSError:
        return False
    import ctypes
    done = False
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _BLAS_SET_THREADS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(1)
                done = True
                break
    return done


# -- commands ------------------------------------------------------------------------------------
def _threads(args) -> None:
    if getattr(args, "threads", None):
        from . import set_num_threads
        set_num_threads(args.threads)


def cmd_train(args, t_start) -> int:
    from .tasks.trainer import train
    return train(args, sys.stdout, t_start)


def _load(args, prepare: bool):
    from .tasks.trainer import load_task_and_model
    _threads(args)
    ns = argparse.Namespace(**{k: v for k, v in vars(args).items()
                               if k not in ("checkpoint", "func", "command")})
    ns.task = None
    return load_task_and_model(args.checkpoint, ns, prepare=prepare)


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
        print(json.dumps({"task": task.name, "step": meta.get("trainer", {}).get("step"),
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
    from .tasks.base import DataError
    task, model, _, _ = _load(args, prepare=False)
    if args.input:
        try:
            with open(args.input, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            raise DataError(f"input file {args.input} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read input file {args.input}: {e}") from None
    else:
        lines = sys.stdin.read().splitlines()
    model.eval()
    try:
        out = task.predict(model, lines)
    except NotImplementedError as e:
        from .tasks.trainer import UsageError
        raise UsageError(str(e)) from None
    for line in out:
        print(line)
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


# -- entry point ---------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command; returns the exit status (0 ok, 2 usage / data / checkpoint error)."""
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
    if args.command in ("train", "evaluate", "generate", "predict"):
        import numpy  # noqa: F401  (loads OpenBLAS)
        single_threaded_blas()
    from .io import CheckpointError
    from .tasks.base import DataError
    from .tasks.trainer import TrainingError, UsageError
    try:
        return args.func(args, t_start)
    except (UsageError, DataError, CheckpointError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
