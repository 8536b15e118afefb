"""The generic training loop of ``fusedrnn train`` (any :class:`~fusedrnn.tasks.base.Task`).

It owns seeding (``--seed`` -> the numpy Generator that orders batches; the task seeds its
model from the same flag), threads, the optimiser and gradient clipping, the stop rule
(``--steps`` / ``--epochs`` / ``--time-budget``, whichever comes first), periodic validation
(``--eval-every``: ``N`` steps or ``Ns`` seconds) keeping the best model (early stopping by
keeping the best: the final report, the sample and the checkpoint use it), the progress bar,
the checkpoint (``<out>/model.safetensors``: the best model, its optimiser state, the task
metadata and the trainer state, so ``--resume`` continues from it), ``<out>/metrics.json``,
``<out>/loss.png`` (with matplotlib), and ``--compare-torch`` (the task's torch twin trained from
the same initial weights on the same batches for the same number of steps, then a side-by-side
table).

Errors a user can fix (bad flags, data or checkpoints) raise :class:`UsageError`,
:class:`~fusedrnn.tasks.base.DataError` or :class:`~fusedrnn.io.CheckpointError` before any
training starts; the CLI prints them as one line.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import io as fio
from .. import optim
from ..validators import flag_name, is_real
from ..functional import get_num_threads, set_num_threads
from ..io import CheckpointError
from ..models import set_compute
from . import get_task
from .base import TASK_FLAGS, DataError, Task
from .guards import check_memory, dumps, json_safe, prepare_out_dir, save_figure

__all__ = ["UsageError", "TrainingError", "OutputError", "GENERIC_DEFAULTS", "resolve",
           "parse_eval_every", "read_checkpoint", "load_task_and_model", "train"]

# Used where neither the user nor the task gives a value.
GENERIC_DEFAULTS: Dict[str, Any] = {
    "cell": "lstm", "hidden": 128, "layers": 1, "bidirectional": False, "dropout": 0.0,
    "seq_len": 100, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "clip": 1.0,
    "lr_schedule": "constant", "lr_min": 0.0,
    "seed": 0, "data": None, "column": None, "model": None, "problem": None,
    "min_length": None, "max_length": None, "horizon": None, "window": None, "embed": None,
}
DEFAULT_TIME_BUDGET = 120.0      # seconds, when neither the user nor the task sets a limit
LIMITS = ("steps", "epochs", "time_budget")
TASK_ONLY_FLAGS = ("data", "column", "model", "problem", "min_length", "max_length", "horizon",
                   "window", "embed", "attention", "seq_len")
OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop"}
LR_SCHEDULES = ("constant", "cosine", "linear")
CHECKPOINT = "model.safetensors"
#: the files a run writes into --out (checked before training: none may be a directory)
OUTPUTS = (CHECKPOINT, "metrics.json", "loss.png", "forecast.png", "classify.png", "tag.png",
           "charlm.png", "translate.png")


class _BudgetExceeded(Exception):
    """Raised by the SIGALRM of :func:`_deadline` inside a validation past the time budget."""


class _deadline:
    """Context manager: raises _BudgetExceeded in the main thread at ``deadline``
    (perf_counter time; None = no deadline). A no-op off the main thread or without
    SIGALRM (Windows): the budget is then kept by the stop rule alone."""

    def __init__(self, deadline: Optional[float]):
        self.deadline = deadline
        self.old = None

    def __enter__(self):
        import signal
        import threading
        if self.deadline is None or not hasattr(signal, "setitimer") \
                or threading.current_thread() is not threading.main_thread():
            self.deadline = None
            return self

        def fire(signum, frame):
            raise _BudgetExceeded()

        self.old = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, max(self.deadline - time.perf_counter(), 1e-3))
        return self

    def __exit__(self, *exc):
        if self.deadline is not None:
            import signal
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False


class UsageError(ValueError):
    """A flag combination or value the user can fix; printed as one line, exit status 2."""


class OutputError(OSError):
    """An output file could not be written (disk full, permissions): one line, exit status 2;
    what was already saved is named."""


class TrainingError(RuntimeError):
    """Training cannot go on (the loss became NaN or infinite)."""


# -- flags --------------------------------------------------------------------------------------
def parse_eval_every(spec) -> Tuple[str, float]:
    """``"500"`` -> ("steps", 500); ``"30s"`` -> ("seconds", 30.0)."""
    s = str(spec).strip().lower()
    try:
        if s.endswith("s"):
            v = float(s[:-1])
            if math.isfinite(v) and v > 0:
                return "seconds", v
        else:
            v = int(s)
            if v >= 1:
                return "steps", v
    except ValueError:
        pass
    raise UsageError(f"--eval-every must be a number of steps (e.g. 500) or of seconds "
                     f"(e.g. 30s), got {spec!r}")


def resolve(args: argparse.Namespace, task_cls: type,
            saved_flags: Optional[Dict[str, Any]] = None) -> argparse.Namespace:
    """Fills every None flag: user flag > saved checkpoint flags > task.defaults > generic
    default, and sets the stop rule. Records the user-given names in ``args.given``."""
    given = {k for k, v in vars(args).items() if v is not None}
    args.given = sorted(given)
    d = task_cls.defaults
    if saved_flags:
        for k, v in saved_flags.items():
            if k in TASK_FLAGS and k != "task" and getattr(args, k, None) is None:
                setattr(args, k, v)
    for k, v in GENERIC_DEFAULTS.items():
        if getattr(args, k, None) is None:
            setattr(args, k, d.get(k, v))
    if task_cls.flags is not None and "seq_len" not in task_cls.flags \
            and "seq_len" not in given:
        # a task that reads no --seq-len records none (an older checkpoint's 100 included)
        args.seq_len = None
    for k in ("lr", "optimizer", "clip", "eval_every"):
        if getattr(args, k, None) is None:
            setattr(args, k, d.get(k, GENERIC_DEFAULTS.get(k)))
    if not any(getattr(args, k, None) is not None for k in LIMITS):
        for k in LIMITS:
            setattr(args, k, d.get(k))
        if all(getattr(args, k) is None for k in LIMITS):
            args.time_budget = DEFAULT_TIME_BUDGET
    if args.eval_every is None:
        if args.steps:
            args.eval_every = str(max(1, math.ceil(args.steps / 10)))
        elif args.time_budget:
            args.eval_every = f"{max(1.0, args.time_budget / 12):g}s"
        else:
            args.eval_every = "30s"
    parse_eval_every(args.eval_every)
    if args.out is None:
        args.out = os.path.join("runs", args.task)
    return args


def check_flags(args: argparse.Namespace, task_cls: type) -> None:
    """Task-level flag checks that need the task class."""
    try:
        task_cls.check_bidirectional(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if task_cls.flags is not None:
        for k in TASK_ONLY_FLAGS:
            if k in args.given and k not in task_cls.flags:
                why = f" ({task_cls.length_flags})" if k == "seq_len" and \
                    task_cls.length_flags else ""
                raise UsageError(f"{flag_name(k)} does not apply to task {task_cls.name}{why}")
    if args.lr_schedule != "constant" and args.lr_min > args.lr:
        raise UsageError(f"--lr-min {args.lr_min:g} is above --lr {args.lr:g}: a decaying "
                         f"--lr-schedule {args.lr_schedule} goes from --lr down to --lr-min")
    if args.optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, "
                         f"got {args.optimizer!r}")


def scheduled_lr(schedule: str, lr: float, lr_min: float, progress: float) -> float:
    """--lr-schedule's learning rate at `progress` (0 at the run's start, 1 at its limit):
    constant lr, or lr decayed to lr_min along a half cosine or a straight line."""
    if schedule == "constant":
        return lr
    p = min(1.0, max(0.0, progress))
    if schedule == "cosine":
        return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "linear":
        return lr + (lr_min - lr) * p
    raise UsageError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")


def _finite_real(v) -> bool:
    """A finite int or float (a value read from a checkpoint's JSON metadata), not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def make_optimizer(name: str, params, lr: float):
    return getattr(optim, OPTIMIZERS[name])(params, lr=lr)


def _set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def make_torch_optimizer(name: str, params, lr: float):
    import torch
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
           "rmsprop": torch.optim.RMSprop}[name]
    return cls(params, lr=lr)


# -- checkpoints ---------------------------------------------------------------------------------
def checkpoint_path(path: str) -> str:
    """``path``, or ``path/model.safetensors`` when path is a run directory holding one."""
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, CHECKPOINT)):
        return os.path.join(path, CHECKPOINT)
    return path


def read_checkpoint(path: str) -> Dict[str, Any]:
    """The user metadata of a checkpoint written by ``fusedrnn train`` (task, task_metadata,
    trainer); CheckpointError for a missing, corrupt or foreign file. ``path`` may be a run
    directory (its model.safetensors is read)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    path = checkpoint_path(path)
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a directory (expected a .safetensors "
                              f"file, e.g. {os.path.join(path, CHECKPOINT)})")
    try:
        _, meta = fio.load_tensors(path)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except CheckpointError as e:
        raise CheckpointError(f"{path} is not a valid checkpoint: "
                              f"{str(e).split(': ', 1)[-1]}") from None
    if meta.get("format") != fio.FORMAT:
        raise CheckpointError(f"{path} is not a fusedrnn checkpoint")
    try:
        user = json.loads(meta.get("metadata", "{}"))
    except ValueError:
        raise CheckpointError(f"{path} has corrupt metadata") from None
    if not isinstance(user, dict) or not isinstance(user.get("task"), str) \
            or not isinstance(user.get("task_metadata"), dict):
        raise CheckpointError(f"{path} was not written by `fusedrnn train` (no task metadata)")
    bad = _metadata_problem(user)
    if bad:
        raise CheckpointError(f"{path} has corrupt metadata: {bad}")
    return user


# Flags a checkpoint stores that must be positive integers (the CLI's positive_int flags).
_POSITIVE_FLAGS = ("hidden", "layers", "embed", "seq_len", "batch_size", "min_length",
                   "max_length", "horizon", "window", "proj_size")


def _metadata_problem(user: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the types of a checkpoint's trainer metadata (None: nothing), so that
    a damaged or hand-edited file is one CheckpointError line, not a traceback later."""
    def whole(v, minimum):   # an integer (not a bool, as validators.positive_int's) >= minimum
        return isinstance(v, int) and not isinstance(v, bool) and v >= minimum

    flags = user["task_metadata"].get("flags", {})
    if not isinstance(flags, dict):
        return "task_metadata.flags is not a mapping"
    for k in _POSITIVE_FLAGS:
        v = flags.get(k)
        if v is not None and not whole(v, 0 if k == "proj_size" else 1):
            return f"flag {k} = {v!r} is not a positive integer"
    trainer = user.get("trainer", {})
    if not isinstance(trainer, dict):
        return "trainer is not a mapping"
    if "step" in trainer and not whole(trainer["step"], 0):
        return f"trainer.step = {trainer['step']!r} is not a step count"
    best = trainer.get("best")
    if best is not None and not is_real(best):
        return f"trainer.best = {best!r} is not a number"
    history = trainer.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        return "trainer.history is not a list of records"
    t = trainer.get("time_s")
    if t is not None and not (_finite_real(t) and t >= 0):
        return f"trainer.time_s = {t!r} is not a number of seconds"
    losses = trainer.get("step_losses", [])
    if not isinstance(losses, list) or not all(_finite_real(x) for x in losses):
        return "trainer.step_losses is not a list of numbers"
    data = trainer.get("data")
    if data is not None and not (isinstance(data, dict) and all(
            data.get(k) is None or isinstance(data.get(k), str)
            for k in ("path", "column", "sha256"))):
        return "trainer.data is not a data description"
    return None


def _resumed_time(trainer: Dict[str, Any]) -> float:
    """The training time (seconds, validation included) at a checkpoint's step: its
    ``time_s``, or, in a checkpoint from before it was recorded, the last time its history
    recorded (the snapshot's validation), else 0."""
    t = trainer.get("time_s")
    if _finite_real(t) and t >= 0:
        return float(t)
    times = [e.get("time_s") for e in trainer.get("history", [])]
    times = [x for x in times if _finite_real(x) and x >= 0]
    return float(times[-1]) if times else 0.0


def data_identity(args: argparse.Namespace) -> Dict[str, Any]:
    """What a run trains on: the --data path (None: the task's built-in data), --column and
    the SHA-256 of the file's bytes (the file was read and size-checked by the task already),
    recorded in the checkpoint so that --resume sees a change of data (Run._check_data_change)."""
    path, digest = getattr(args, "data", None), None
    if path is not None and os.path.isfile(path):
        import hashlib
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return {"path": path, "column": getattr(args, "column", None), "sha256": digest}


def check_command_flags(args: argparse.Namespace, task_cls: type, command: str) -> None:
    """evaluate / predict: UsageError for a flag the checkpoint's task does not read (as
    ``train`` refuses one), instead of ignoring it: --data and --column where the task takes
    no such file or column, --beam where it decodes no sequences (translate, recognise do)."""
    for k in ("data", "column"):
        if getattr(args, k, None) is not None and task_cls.flags is not None \
                and k not in task_cls.flags:
            raise UsageError(f"{flag_name(k)} does not apply to task {task_cls.name} "
                             f"(fusedrnn {command})")
    if getattr(args, "beam", None) is not None and task_cls.default_beam is None:
        raise UsageError(f"--beam does not apply to task {task_cls.name} (fusedrnn {command}: "
                         f"it is the beam width of translate's and recognise's decoding)")


def load_task_and_model(path: str, args: argparse.Namespace, optimizer_name: Optional[str] = None,
                        prepare: bool = True, command: Optional[str] = None):
    """(task, model, meta, optimizer or None) rebuilt from a checkpoint. ``args`` holds the
    user's overrides (None elsewhere); the checkpoint's task flags fill the rest. With
    ``command`` (evaluate, predict, generate) the flags given are checked against the task
    first (:func:`check_command_flags`)."""
    path = checkpoint_path(path)
    meta = read_checkpoint(path)
    try:
        task_cls = get_task(meta["task"])
    except ValueError:
        raise CheckpointError(f"{path} was written for task {meta['task']!r}, which this "
                              f"fusedrnn does not have") from None
    if command is not None:
        check_command_flags(args, task_cls, command)
    args.task = meta["task"]
    for k in LIMITS + ("lr", "optimizer", "clip", "lr_schedule", "lr_min", "eval_every", "out"):
        if not hasattr(args, k):
            setattr(args, k, None)
    resolve(args, task_cls, meta["task_metadata"].get("flags", {}))
    task = task_cls(args)
    task.restore(meta["task_metadata"])
    check_model_flags(path, args)
    if prepare:
        task.prepare()
    model = task.build_model()
    opt = None
    if optimizer_name is not None:
        opt = make_optimizer(optimizer_name, model.parameters(), args.lr)
    try:
        fio.load(path, model=model, optimizer=opt)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} does not match the model its metadata describes: "
                              f"{str(e).splitlines()[0]}") from None
    return task, model, meta, opt


def check_model_flags(path: str, args: argparse.Namespace) -> None:
    """The model the checkpoint's flags describe must fit the tensors the file holds (checked
    from the header alone, before the model is built: a config saying hidden 20000 in a
    300 KB file is refused instead of allocating gigabytes)."""
    try:
        held = sum(math.prod(shape) for shape in fio.tensor_shapes(path).values())
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    fio.check_config_size(path, {"hidden": args.hidden, "layers": args.layers,
                                 "bidirectional": bool(args.bidirectional)}, held)


# -- the loop ------------------------------------------------------------------------------------
def _tqdm():
    try:
        from tqdm import tqdm
        return tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None


class _Progress:
    """A tqdm bar on stderr (steps, seconds or epochs) and plain lines for the evaluations."""

    def __init__(self, args, task: Task, quiet: bool, out):
        self.out, self.quiet = out, quiet
        self.bar = None
        if args.steps:
            self.kind, total, fmt = "steps", args.steps, "{n_fmt}/{total_fmt} steps"
        elif args.time_budget:
            self.kind, total, fmt = "time", float(args.time_budget), "{n:.0f}/{total:.0f} s"
        else:
            self.kind, total, fmt = "epochs", float(args.epochs), "{n:.2f}/{total:g} epochs"
        tqdm = _tqdm()
        if tqdm is not None and not quiet:
            self.bar = tqdm(total=total, file=sys.stderr, disable=None, dynamic_ncols=True,
                            leave=False, desc=task.name,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| " + fmt
                                       + " [{elapsed}<{remaining}{postfix}]")
            if self.bar.disable:
                self.bar = None

    def update(self, run_steps: int, elapsed: float, epoch: float, postfix: str) -> None:
        if self.bar is None:
            return
        n = {"steps": run_steps, "time": min(elapsed, self.bar.total),
             "epochs": min(epoch, self.bar.total)}[self.kind]
        self.bar.n = n
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(0)

    def write(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt_metrics(m: Dict[str, float], task: Task) -> str:
    keys = [task.metric] + [k for k in m if k != task.metric and not k.startswith("baseline")]
    return " ".join(f"{k} {m[k]:.4f}" for k in keys if isinstance(m.get(k), (int, float)))


def _versions() -> Dict[str, Any]:
    from .. import __version__, build_info
    v = {"fusedrnn": __version__, "numpy": np.__version__, "python": platform.python_version(),
         "build": build_info()}
    if "torch" in sys.modules:
        v["torch"] = sys.modules["torch"].__version__
    return v


def _config(args) -> Dict[str, Any]:
    skip = {"command", "func", "given", "quiet"}
    return {k: v for k, v in sorted(vars(args).items()) if k not in skip}


class Run:
    """One `fusedrnn train`: set up (errors the user can fix), train, report."""

    def __init__(self, args: argparse.Namespace, out=None, t_start: Optional[float] = None):
        self.args = args
        self.out = out if out is not None else sys.stdout
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.quiet = bool(getattr(args, "quiet", False))
        self.tb_dir: Optional[str] = None
        self._grad_norm: Optional[float] = None

    # -- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        a = self.args
        resume_meta = None
        # an empty --resume or --out (an unset shell variable) is refused, not read as "none"
        for flag, value in (("--resume", a.resume), ("--out", a.out)):
            if value is not None and not str(value).strip():
                what = "checkpoint" if flag == "--resume" else "directory"
                raise UsageError(f"{flag} must name a {what}, got an empty string")
        if a.resume:
            a.resume = checkpoint_path(a.resume)
            resume_meta = read_checkpoint(a.resume)
            if a.out is None:   # --resume <out> continues that run in place (README)
                a.out = os.path.dirname(a.resume) or "."
            if a.task is not None and a.task != resume_meta["task"]:
                raise UsageError(f"--task {a.task} differs from the checkpoint's task "
                                 f"{resume_meta['task']}")
            a.task = resume_meta["task"]
            saved = resume_meta["task_metadata"].get("flags", {})
            for k in TASK_FLAGS:
                if k in ("task", "seed", "data", "column"):
                    continue
                v = getattr(a, k, None)
                if v is not None and k in saved and saved[k] != v:
                    raise UsageError(f"{flag_name(k)} {v} differs from the checkpoint's "
                                     f"{saved[k]}; a resumed model keeps its shape")
            z = getattr(a, "zoneout", None)   # --zoneout P is --zoneout-h P (LSTM: --zoneout-c P)
            for k in ("zoneout_h",) + (("zoneout_c",) if saved.get("cell") == "lstm" else ()):
                if z is not None and saved.get(k) != z:
                    raise UsageError(f"--zoneout {z} differs from the checkpoint's "
                                     f"{flag_name(k)} {saved.get(k)}; a resumed model keeps its "
                                     f"options")
            run = resume_meta.get("run", {})
            if a.optimizer is not None and run.get("optimizer") not in (None, a.optimizer):
                raise UsageError(f"--optimizer {a.optimizer} differs from the checkpoint's "
                                 f"{run['optimizer']}")
            for k in ("optimizer", "clip", "precision", "lr_schedule", "lr_min"):
                if getattr(a, k, None) is None and run.get(k) is not None:
                    setattr(a, k, run[k])
            # the saved schedule, --lr-min and --clip, checked before any work as the flags are
            if a.lr_schedule is not None and a.lr_schedule not in LR_SCHEDULES:
                raise CheckpointError(f"cannot resume from {a.resume}: its run's lr_schedule "
                                      f"{a.lr_schedule!r} is not one of "
                                      f"{', '.join(LR_SCHEDULES)}")
            for k in ("lr_min", "clip"):
                v = getattr(a, k)
                if v is not None and not (_finite_real(v) and v >= 0):
                    raise CheckpointError(f"cannot resume from {a.resume}: its run's {k} "
                                          f"{v!r} is not a non-negative number")
            # the saved run's --lr, not its optimiser's (a decaying --lr-schedule left that
            # lower): the resumed run's schedule starts from it again, and --lr-min is checked
            # against it
            base_lr = run.get("lr")
            if a.lr is None and _finite_real(base_lr) and base_lr > 0:
                a.lr = float(base_lr)
        elif a.task is None:
            a.task = "charlm"
        if getattr(a, "precision", None) is None:   # a checkpoint without one: float32
            a.precision = "float32"
        self.task_cls = get_task(a.task)
        resolve(a, self.task_cls, resume_meta["task_metadata"].get("flags", {})
                if resume_meta else None)
        check_flags(a, self.task_cls)
        self.every = parse_eval_every(a.eval_every)
        if a.data is not None:
            a.data = os.path.abspath(a.data)
        self.tmodel = None
        self._twin_precision = None  # (precision, note) of the torch twin, once probed
        if a.compare_torch:
            if importlib.util.find_spec("torch") is None:
                raise UsageError("--compare-torch needs PyTorch (pip install torch)")
            if self.task_cls.torch_model is Task.torch_model:
                raise UsageError(f"task {a.task} has no PyTorch twin for --compare-torch")
        if a.threads:
            set_num_threads(a.threads)
        self.task = self.task_cls(a)
        if resume_meta:
            self.task.restore(resume_meta["task_metadata"])
            check_model_flags(a.resume, a)
        check_memory(self.task.memory_parts())
        self._check_overwrite()
        self.tb_dir = getattr(a, "tensorboard", None)
        self._grad_norm: Optional[float] = None
        if self.tb_dir is not None:
            from .tblog import check_tensorboard_dir
            check_tensorboard_dir(self.tb_dir)
        self.created_out = prepare_out_dir(a.out, OUTPUTS)
        t0 = time.perf_counter()
        self.task.prepare()
        self.model = self.task.build_model()
        if a.precision != "float32":
            # mixed precision (issue 17): the recurrent layers' products in bf16; parameters,
            # gradients, optimiser state and the checkpoint stay float32
            set_compute(self.model, a.precision, where="fusedrnn train", argument="--precision")
        self.opt = make_optimizer(a.optimizer, self.model.parameters(), a.lr)
        self.trainer_state: Dict[str, Any] = {}
        if resume_meta:
            try:
                fio.load(a.resume, model=self.model, optimizer=self.opt)
            except (KeyError, ValueError, TypeError) as e:
                msg = str(e).splitlines()[0]
                raise CheckpointError(f"cannot resume from {a.resume}: {msg}") from None
            if "lr" in a.given:   # (the user's --lr, or the saved run's: setup above)
                _set_lr(self.opt, a.lr)
            else:
                a.lr = self.opt.param_groups[0]["lr"]
            self.trainer_state = dict(resume_meta.get("trainer", {}))
            self.trainer_state.setdefault("step", 0)
            self.trainer_state["time_s"] = _resumed_time(self.trainer_state)
        self.data_id = data_identity(a)
        self.fine_tuned_from = None
        if resume_meta:
            self._check_data_change(resume_meta)
        self.resume_snapshot = (self._snapshot(self.model, self.trainer_state["step"],
                                               self.trainer_state.get("epoch", 0.0),
                                               self.trainer_state["time_s"])
                                if resume_meta else None)
        self.prep_time = time.perf_counter() - t0
        if a.compare_torch:
            import torch
            torch.set_num_threads(get_num_threads())
            self.tmodel = self.task.torch_model(self.model)
            if self.tmodel is None:
                raise UsageError(f"task {a.task} has no PyTorch twin for this configuration")
            # resumed: the twin starts from the checkpoint's optimiser state too (checked now,
            # before any training)
            self.torch_opt_state = self._torch_optimizer_state() if resume_meta else {}

    def _check_data_change(self, resume_meta: Dict[str, Any]) -> None:
        """--resume with data other than the checkpoint's (another --data file or --column, or
        the same file changed since): fine-tuning. The checkpoint's best score and baseline
        were measured on the old data, so ranking the new data's validations against them
        would keep the old model and discard the run; they start afresh, as do the validation
        history and the epoch count (epochs of the new data); the step count, the training
        time and the per-step training losses go on. One printed line says so."""
        t = self.trainer_state
        flags = resume_meta["task_metadata"].get("flags", {})
        old = t.get("data")
        if not isinstance(old, dict):   # a checkpoint from before the data was recorded
            old = {"path": flags.get("data"), "column": flags.get("column"), "sha256": None}
        new = self.data_id
        if old.get("sha256") and new.get("sha256"):
            same = (old["sha256"], old.get("column")) == (new["sha256"], new.get("column"))
        else:
            same = (old.get("path"), old.get("column")) == (new.get("path"), new.get("column"))
        if same:
            return
        describe = lambda d: (d.get("path") or "the built-in data") + (  # noqa: E731
            f" column {d['column']}" if d.get("column") else "")
        step = int(t.get("step", 0))
        self.fine_tuned_from = {"step": step, "data": old.get("path"),
                                "column": old.get("column"), "best": t.get("best"),
                                "best_step": t.get("best_step")}
        for k, v in (("best", None), ("best_step", None), ("epoch", 0.0), ("history", [])):
            t[k] = v
        same_path = old.get("path") == new.get("path") and old.get("column") == new.get("column")
        what = (f"{describe(new)} changed since the checkpoint" if same_path else
                f"--data {describe(new)} is not the checkpoint's data ({describe(old)})")
        print(f"note: {what}: fine-tuning from step {step}; the best validation score and "
              f"baseline start afresh on the new data, and epochs count the new data's",
              file=self.out, flush=True)

    def _check_overwrite(self) -> None:
        """A fresh run does not replace a model already in --out unless --overwrite is given
        (resuming the checkpoint that is there continues that run and replaces it)."""
        a = self.args
        ckpt = os.path.join(a.out, CHECKPOINT)
        if not os.path.isfile(ckpt) or getattr(a, "overwrite", False):
            return
        if a.resume and os.path.exists(a.resume) and os.path.samefile(a.resume, ckpt):
            return
        raise UsageError(f"--out {a.out} already holds a model ({ckpt}); give --overwrite to "
                         f"replace it, --resume {ckpt} to continue it, or another --out")

    def cleanup_failed_setup(self) -> None:
        """Removes the output directory this run created when setup failed after it."""
        if getattr(self, "created_out", False):
            try:
                os.rmdir(self.args.out)
            except OSError:
                pass

    # -- training --------------------------------------------------------------------------
    def _better(self, value: float, best: Optional[float]) -> bool:
        if not math.isfinite(value):          # NaN / inf: never the best model
            return False
        if best is None:
            return True
        return value > best if self.task.higher_is_better else value < best

    def _loop(self, model, step_fn, eval_fn, label: str, eval_steps: Optional[List[int]] = None,
              max_steps: Optional[int] = None, tb=None, lr_fn=None, set_lr=None,
              lr_plan: Optional[List[float]] = None) -> Dict[str, Any]:
        """Runs the training loop for `model` (fusedrnn or the torch twin). ``tb``: a
        TensorBoardLog (--tensorboard); ``lr_fn()`` the current learning rate, ``set_lr(lr)``
        sets it (--lr-schedule: before every step, from the run's progress, or from
        ``lr_plan``, the learning rates of the steps of the run the twin repeats); the step
        function leaves the gradient norm in ``self._grad_norm``."""
        a, task = self.args, self.task
        units_at_eval, train_at_eval = 0, 0.0
        rng = np.random.default_rng(a.seed if not self.trainer_state
                                    else [a.seed, int(self.trainer_state.get("step", 0))])
        batches = task.batches(rng)
        task.epoch = 0.0
        step0 = int(self.trainer_state.get("step", 0))
        epoch0 = float(self.trainer_state.get("epoch", 0.0))
        # a resumed run's times go on from the checkpoint's training time (they restarted at 0,
        # and loss.png's curves against time ran backwards)
        time0 = float(self.trainer_state.get("time_s") or 0.0)
        best = self.trainer_state.get("best")
        best_step = self.trainer_state.get("best_step")
        history: List[Dict[str, Any]] = []
        step_losses: List[float] = []
        units = 0
        train_time = eval_time = 0.0
        since_loss, since_n, ema = 0.0, 0, None
        best_snapshot = None
        interrupted = cut = False
        progress = _Progress(a, task, self.quiet, self.out)
        t_loop = time.perf_counter()
        last_eval = 0.0
        run_steps = 0
        eval_set = set(eval_steps or ())
        # the time budget includes validation: training stops early enough for the last
        # validation (its cost is the previous one's), and a validation still running at the
        # deadline (plus a 10% grace) is cut short
        budget = a.time_budget if max_steps is None else None
        deadline = t_loop + budget * 1.1 + 0.5 if budget else None
        eval_cost = 0.0
        # the automatic schedule (no --eval-every) keeps validation to about half the run:
        # a due validation is skipped while validating took longer than training
        auto_every = eval_steps is None and "eval_every" not in getattr(a, "given", ())
        errstate = np.errstate(over="ignore", invalid="ignore", divide="ignore")
        errstate.__enter__()
        scheduled = set_lr is not None and (lr_plan is not None or a.lr_schedule != "constant")
        lrs: List[float] = []
        try:
            while True:
                if scheduled:
                    if lr_plan is not None:
                        lr = lr_plan[min(run_steps, len(lr_plan) - 1)]
                    else:
                        lr = scheduled_lr(a.lr_schedule, a.lr, a.lr_min, self._progress(
                            run_steps, task.epoch, time.perf_counter() - t_loop + eval_cost,
                            budget))
                    set_lr(lr)
                    lrs.append(lr)
                t0 = time.perf_counter()
                batch = next(batches)
                loss, count = step_fn(batch)
                train_time += time.perf_counter() - t0
                run_steps += 1
                if not math.isfinite(loss):
                    raise TrainingError(self._nonfinite_message(loss, label,
                                                                step0 + run_steps))
                units += count
                step_losses.append(loss)
                if tb is not None:
                    tb.step(step0 + run_steps, loss, self._grad_norm, lr_fn())
                since_loss += loss
                since_n += 1
                ema = loss if ema is None else 0.95 * ema + 0.05 * loss
                elapsed = time.perf_counter() - t_loop
                if max_steps is not None:
                    stop = run_steps >= max_steps
                else:
                    stop = bool((a.steps and run_steps >= a.steps)
                                or (a.epochs and task.epoch >= a.epochs)
                                or (budget and elapsed + eval_cost >= budget))
                if eval_steps is not None:
                    due = run_steps in eval_set
                elif self.every[0] == "steps":
                    due = stop or run_steps % self.every[1] == 0
                else:
                    due = stop or elapsed - last_eval >= self.every[1]
                extra = "".join(f", {k} {v:.3f}" for k, v in task.progress(ema).items())
                rate = units / train_time if train_time > 0 else 0.0
                progress.update(run_steps, elapsed, task.epoch,
                                f"loss {ema:.3f}{extra}, {rate:,.0f} {task.unit}s/s")
                if due and not stop and auto_every and history \
                        and eval_time + eval_cost > train_time:
                    due = False
                if due:
                    t0 = time.perf_counter()
                    try:
                        with _deadline(deadline):
                            metrics = eval_fn()
                    except _BudgetExceeded:
                        eval_time += time.perf_counter() - t0
                        cut = True
                        progress.write(f"{label}: validation at step {step0 + run_steps} cut "
                                       f"short by --time-budget {budget:g}")
                        break
                    eval_cost = time.perf_counter() - t0
                    eval_time += eval_cost
                    last_eval = time.perf_counter() - t_loop
                    if task.metric not in metrics:
                        raise RuntimeError(f"task {task.name}: evaluate() returned no "
                                           f"{task.metric!r}")
                    step = step0 + run_steps
                    entry = {"step": step, "epoch": round(epoch0 + task.epoch, 4),
                             "time_s": round(time0 + last_eval, 3),
                             "train_loss": since_loss / since_n,
                             **({"lr": float(lr_fn())} if lr_fn is not None else {}),
                             **{k: float(v) for k, v in metrics.items() if v is not None}}
                    since_loss, since_n = 0.0, 0
                    mark = ""
                    if self._better(metrics[task.metric], best):
                        best, best_step, mark = float(metrics[task.metric]), step, " *"
                        best_snapshot = self._snapshot(model, step, epoch0 + task.epoch,
                                                       time0 + last_eval)
                    history.append(entry)
                    if tb is not None:
                        dt = train_time - train_at_eval
                        tb.validation(step, metrics, (units - units_at_eval) / dt if dt > 0
                                      else None)
                        units_at_eval, train_at_eval = units, train_time
                    progress.write(f"{label} step {step:>6} epoch {epoch0 + task.epoch:6.2f} "
                                   f"{time0 + last_eval:6.1f}s | train loss "
                                   f"{entry['train_loss']:.4f} | "
                                   f"val {_fmt_metrics(metrics, task)}{mark}")
                if stop:
                    break
        except KeyboardInterrupt as e:   # Ctrl-C, or SIGTERM (_Terminated; see Run.train)
            interrupted = "SIGTERM" if isinstance(e, _Terminated) else "SIGINT"
            progress.write(f"{label}: interrupted at step {step0 + run_steps} ({interrupted}); "
                           f"finishing with the best model so far")
        finally:
            errstate.__exit__(None, None, None)
            progress.close()
        if best_snapshot is None and best is None and run_steps and model is self.model:
            # no validation gave a finite metric, in this run or the resumed one (cut by the
            # time budget, or NaN): the trained model is kept all the same, unvalidated
            best_snapshot = self._snapshot(model, step0 + run_steps, epoch0 + task.epoch,
                                           time0 + time.perf_counter() - t_loop)
            best_snapshot["validated"] = False
        return {"cut": cut, "history": history, "step_losses": step_losses, "units": units,
                "train_time": train_time, "eval_time": eval_time, "run_steps": run_steps,
                "steps": step0 + run_steps, "epoch": epoch0 + task.epoch, "best": best,
                "best_step": best_step, "best_snapshot": best_snapshot,
                "interrupted": interrupted, "loop_time": time.perf_counter() - t_loop,
                "lrs": lrs if scheduled else None}

    def _progress(self, run_steps: int, epoch: float, elapsed: float,
                  budget: Optional[float]) -> float:
        """How far this run is towards its nearest limit (--steps, --epochs, --time-budget;
        elapsed: seconds since the loop began, plus the last validation's cost, the time the
        loop stops with): 0 at the start, 1 at the end."""
        a = self.args
        p = 0.0
        if a.steps:
            p = max(p, run_steps / a.steps)
        if a.epochs:
            p = max(p, epoch / a.epochs)
        if budget:
            p = max(p, elapsed / budget)
        return min(1.0, p)

    @staticmethod
    def _nonfinite_message(loss: float, label: str, step: int) -> str:
        who = "" if label.strip() == "fusedrnn" else f" (the {label.strip()} run)"
        if step == 1:   # before any update: the data or the model, not the learning rate
            advice = ("before any update, so the data or the model flags are the cause "
                      "(values too large for float32?)")
        else:
            advice = "try a lower --lr or --clip"
        return f"the training loss became {loss} at step {step}{who}; {advice}"

    def _snapshot(self, model, step, epoch, time_s):
        """The model and optimiser state at ``step`` (``time_s``: training seconds since the
        first run began, validation included), for the checkpoint."""
        if model is not self.model:
            return None
        return {"state": {k: v.copy() for k, v in self.model.state_dict().items()},
                "optimizer": self.opt.state_dict(), "step": step, "epoch": epoch,
                "time_s": time_s}

    def _fused_step(self, batch):
        # the whole step (the task's NumPy work: heads, losses, embeddings; clipping and the
        # optimiser) under the kernels' subnormal flush (optim.flush_denormals): vanishing
        # gradients must not slow a step down with subnormal arithmetic
        with optim.flush_denormals():
            self.model.zero_grad()
            loss, count = self.task.train_step(self.model, batch)
            if self.args.clip:
                self._grad_norm = optim.clip_grad_norm_(self.model, self.args.clip)
            elif self.tb_dir is not None:   # the norm for the log (a factor of 1: no change)
                self._grad_norm = optim.clip_grad_norm_(self.model, math.inf)
            self.opt.step()
        return loss, count

    def _fused_eval(self):
        self.model.eval()
        try:
            with optim.flush_denormals():
                return self.task.evaluate(self.model)
        finally:
            self.model.train()

    def _tb_log(self, run: str):
        if self.tb_dir is None:
            return None
        from .tblog import TensorBoardLog
        sub = run if self.tmodel is not None else ""
        return TensorBoardLog(os.path.join(self.tb_dir, sub) if sub else self.tb_dir,
                              self.task.unit)

    def train(self) -> Dict[str, Any]:
        tb = self._tb_log("fusedrnn")
        # SIGTERM (kill, docker stop, a batch system's time limit) stops the loop as Ctrl-C does:
        # the best model so far is saved (it had been lost: the default action ends the process)
        prev = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is not None:
            prev = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            self.result = self._loop(self.model, self._fused_step, self._fused_eval,
                                     "fusedrnn", tb=tb,
                                     lr_fn=lambda: self.opt.param_groups[0]["lr"],
                                     set_lr=lambda lr: _set_lr(self.opt, lr))
        finally:
            if prev is not None:
                signal.signal(signal.SIGTERM, prev)
            if tb is not None:
                tb.close()
        r = self.result
        snap = r["best_snapshot"] or self.resume_snapshot
        if snap is not None:
            self.model.load_state_dict(snap["state"])
        self.snapshot = snap
        if self.tmodel is not None and r["run_steps"]:
            self.torch_result = self._train_torch([e["step"] - (r["steps"] - r["run_steps"])
                                                   for e in r["history"]], r["run_steps"])
        else:
            self.torch_result = None
        return r

    def _train_torch(self, eval_steps: List[int], n_steps: int) -> Dict[str, Any]:
        import torch
        a, task, tm = self.args, self.task, self.tmodel
        topt = make_torch_optimizer(a.optimizer, tm.parameters(), a.lr)
        for i, tp in enumerate(tm.parameters()):   # resumed: the checkpoint's optimiser state
            if i in self.torch_opt_state:
                topt.state[tp] = self.torch_opt_state[i]
        tm.train()

        autocast = self._torch_autocast
        note = self._torch_twin_precision()[1]
        if note and not self.quiet:
            print(f"note: {note}", file=self.out, flush=True)

        def step(batch):
            topt.zero_grad()
            with autocast():
                loss, count = task.torch_train_step(tm, batch)
            if a.clip or self.tb_dir is not None:
                self._grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    tm.parameters(), a.clip or math.inf))
            topt.step()
            return loss, count

        def evaluate():
            tm.eval()
            try:
                with torch.no_grad(), autocast():
                    return task.torch_evaluate(tm)
            finally:
                tm.train()

        saved_state = self.trainer_state
        self.trainer_state = {**saved_state, "best": None, "best_step": None}
        tb = self._tb_log("torch")
        try:
            # the twin's steps get the learning rates the fusedrnn run's steps had
            return self._loop(tm, step, evaluate, "torch   ", eval_steps=eval_steps,
                              max_steps=n_steps, tb=tb,
                              lr_fn=lambda: topt.param_groups[0]["lr"],
                              set_lr=lambda lr: _set_lr(topt, lr),
                              lr_plan=self.result["lrs"])
        finally:
            self.trainer_state = saved_state
            if tb is not None:
                tb.close()

    def _torch_autocast(self):
        """The torch twin's counterpart of --precision: torch.autocast("cpu", bfloat16) around
        its forward, loss and backward (bfloat16), nothing (float32, or where torch cannot run
        the twin under autocast on this CPU: see _torch_twin_precision)."""
        import contextlib
        import torch
        if self._torch_twin_precision()[0] == "bfloat16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _torch_twin_precision(self):
        """(precision, note) of the torch twin: --precision's, except that torch's autocast LSTM
        runs only on a CPU with bf16 instructions (oneDNN refuses its primitive on an AVX2-only
        CPU: "could not create a primitive descriptor"); a twin with an nn.LSTM then trains in
        float32, and the note says why. Probed once, on a 1-unit LSTM."""
        if self.args.precision != "bfloat16":
            return "float32", None
        if self._twin_precision is None:
            import torch
            self._twin_precision = ("bfloat16", None)
            if any(isinstance(m, torch.nn.LSTM) for m in self.tmodel.modules()):
                try:
                    probe = torch.nn.LSTM(1, 1)
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        y, _ = probe(torch.zeros(1, 1, 1, requires_grad=True))
                    y.float().sum().backward()
                except RuntimeError as e:
                    if "primitive descriptor" not in str(e):
                        raise
                    self._twin_precision = (
                        "float32", "torch's autocast LSTM needs a CPU with bf16 instructions "
                        "(oneDNN has no bf16 LSTM for this one): the torch twin trains in "
                        "float32")
        return self._twin_precision

    def _torch_optimizer_state(self) -> Dict[int, Dict[str, Any]]:
        """The fusedrnn optimiser state as resumed from the checkpoint, as torch tensors by
        parameter position ({index: {key: tensor}}); refuses (UsageError) when the twin's
        parameters do not correspond one to one to the fusedrnn model's."""
        import torch
        fsd = self.opt.state_dict()
        params = list(self.tmodel.parameters())
        fparams = list(self.model.parameters())
        if len(params) != len(fparams) or any(tuple(tp.shape) != fp.shape
                                              for tp, fp in zip(params, fparams)):
            raise UsageError(f"--compare-torch --resume: the {self.args.task} task's torch twin "
                             f"does not have the same parameters in the same order, so it "
                             f"cannot be given the checkpoint's optimiser state; run "
                             f"--compare-torch without --resume")
        return {i: {k: (torch.from_numpy(v.copy()) if isinstance(v, np.ndarray)
                        else torch.tensor(float(v))) for k, v in st.items()}
                for i, st in fsd["state"].items() if st}

    # -- outputs ---------------------------------------------------------------------------
    def save(self) -> Dict[str, str]:
        """Writes the checkpoint, then metrics.json, then the plots (each atomically); an
        OSError (disk full, permissions) becomes an OutputError naming the file and saying
        what was already saved."""
        self.paths: Dict[str, str] = {}
        try:
            return self._save(self.paths)
        except OSError as e:
            done = ", ".join(self.paths.values())
            raise OutputError(f"{e}" + (f" (already saved: {done})" if done else "")) from e

    def _save(self, paths: Dict[str, str]) -> Dict[str, str]:
        a, r = self.args, self.result
        os.makedirs(a.out, exist_ok=True)
        snap = self.snapshot
        history = list(self.trainer_state.get("history", [])) + r["history"]
        # the resumed runs' per-step losses too (steps 1 to step0, where the checkpoint has
        # them), so that loss.png's per-step curve covers every step
        losses = [float(x) for x in self.trainer_state.get("step_losses", [])] \
            + [round(x, 6) for x in r["step_losses"]]
        best, best_step = r["best"], r["best_step"]
        if snap is not None:
            ckpt = os.path.join(a.out, CHECKPOINT)
            kept = len(losses) - (r["steps"] - snap["step"])   # the losses up to snap's step
            trainer = {"step": snap["step"], "epoch": snap["epoch"], "best": best,
                       "best_step": best_step, "metric": self.task.metric,
                       "validated": snap.get("validated", True),
                       "time_s": round(snap["time_s"], 3), "data": self.data_id,
                       "step_losses": losses[:max(kept, 0)],
                       "history": [e for e in history if e["step"] <= snap["step"]]}
            run = {"optimizer": a.optimizer, "lr": a.lr, "clip": a.clip,
                   "precision": a.precision, "lr_schedule": a.lr_schedule,
                   "lr_min": a.lr_min}

            class _Opt:  # hands the snapshot's optimiser state to fusedrnn.save
                def __init__(self, sd):
                    self.sd = sd

                def state_dict(self):
                    return self.sd

            # JSON has no NaN / inf: a diverged metric is stored as null
            fio.save(ckpt, self.model, _Opt(snap["optimizer"]), task=self.task.name,
                     task_metadata=json_safe(self.task.metadata()),
                     trainer=json_safe(trainer), run=json_safe(run),
                     **self.task.checkpoint_extras())
            paths["checkpoint"] = ckpt
        final = next((e for e in reversed(history) if e["step"] == best_step), None)
        wall = time.perf_counter() - self.t_start
        metrics = {
            "task": self.task.name, "metric": self.task.metric,
            "higher_is_better": self.task.higher_is_better, "config": _config(a),
            "history": history, "final": final, "best_step": best_step,
            "steps": r["steps"], "epochs": round(r["epoch"], 4),
            "interrupted": bool(r["interrupted"]), "validation_cut_by_budget": r["cut"],
            "wall_time_s": round(wall, 3), "data_prep_s": round(self.prep_time, 3),
            "train_time_s": round(r["train_time"], 3), "eval_time_s": round(r["eval_time"], 3),
            "throughput": {"unit": self.task.unit,
                           "per_second": r["units"] / r["train_time"] if r["train_time"] else None,
                           "units": r["units"]},
            "train_loss_per_step": losses,
            "versions": _versions(),
        }
        if self.fine_tuned_from is not None:
            metrics["fine_tuned_from"] = self.fine_tuned_from
        if self.torch_result is not None:
            t = self.torch_result
            metrics["compare_torch"] = {
                "history": t["history"], "train_time_s": round(t["train_time"], 3),
                "eval_time_s": round(t["eval_time"], 3),
                "per_second": t["units"] / t["train_time"] if t["train_time"] else None,
                "best": t["best"], "best_step": t["best_step"],
                "train_loss_per_step": [round(x, 6) for x in t["step_losses"]],
                "precision": self._torch_twin_precision()[0],
                **({"precision_note": n} if (n := self._torch_twin_precision()[1]) else {}),
            }
        mpath = os.path.join(a.out, "metrics.json")
        fio.write_file(mpath, (dumps(metrics, indent=1) + "\n").encode("utf-8"))
        paths["metrics"] = mpath
        png = self._plot(metrics, os.path.join(a.out, "loss.png"))
        if png:
            paths["plot"] = png
        task_plot = getattr(self.task, "plot", None)
        if callable(task_plot) and snap is not None:
            self.model.eval()
            tpng = task_plot(self.model, a.out)     # e.g. forecast: prediction vs truth
            if tpng:
                paths["task_plot"] = tpng
        self.metrics = metrics
        return paths

    def _plot(self, metrics, path) -> Optional[str]:
        """loss.png: training loss and validation metric against steps (top) and training time
        (bottom), the saved (best) checkpoint marked; with --compare-torch the torch run's
        curves on the same axes. None without matplotlib."""
        from ..plotting import pyplot, save_png
        plt = pyplot()
        if plt is None:
            return None
        task = self.task
        losses = metrics["train_loss_per_step"]
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
        (ax1, ax2), (ax3, ax4) = axes
        series = [("fusedrnn", losses, metrics["history"], "C0", metrics.get("best_step"))]
        if "compare_torch" in metrics:
            c = metrics["compare_torch"]
            series.append(("torch", c["train_loss_per_step"], c["history"], "C1",
                           c.get("best_step")))
        all_vals: List[float] = []
        for name, ls, hist, color, best_step in series:
            # the losses end at the last step (a resumed run's cover the earlier runs' steps
            # where the checkpoint had them; the torch twin's this run's only)
            start = metrics["steps"] - len(ls)
            steps = np.arange(start + 1, start + len(ls) + 1)
            k = max(1, len(ls) // 100)
            if len(ls) > 2 * k:
                smooth = np.convolve(ls, np.ones(k) / k, mode="valid")
                ax1.plot(steps[k - 1:], smooth, color=color, label=f"{name} train loss")
            else:
                ax1.plot(steps, ls, color=color, label=f"{name} train loss")
            hs = [e["step"] for e in hist]
            ts = [e["time_s"] for e in hist]
            vals = [e[task.metric] for e in hist]
            ax3.plot(ts, [e["train_loss"] for e in hist], "o-", color=color, markersize=3,
                     label=f"{name} train loss (mean since the last validation)")
            for ax, xs in ((ax2, hs), (ax4, ts)):
                ax.plot(xs, vals, "o-", color=color, label=f"{name} validation", markersize=3)
            train_m = [task.progress(e["train_loss"]).get(task.metric) for e in hist]
            if hist and all(v is not None for v in train_m):
                for ax, xs in ((ax2, hs), (ax4, ts)):
                    ax.plot(xs, train_m, "--", color=color, alpha=0.6,
                            label=f"{name} training (mean since the last validation)")
                all_vals.extend(train_m)
            all_vals.extend(vals)
            best = next((e for e in hist if e["step"] == best_step), None)
            if best is not None and best.get(task.metric) is not None:
                what = "saved checkpoint" if name == "fusedrnn" else "torch best"
                for ax, x in ((ax2, best["step"]), (ax4, best["time_s"])):
                    ax.plot([x], [best[task.metric]], "*", color=color, markersize=14,
                            markeredgecolor="black",
                            label=f"{what}: step {best['step']}, {best[task.metric]:.4g}")
        base = (metrics.get("final") or {}).get("baseline_" + task.metric)
        if all_vals:
            lo, hi = min(all_vals), max(all_vals)
            pad = 0.05 * (hi - lo or abs(hi) or 1.0)
            for ax in (ax2, ax4):
                if base is not None and lo - 3 * pad <= base <= hi + 3 * pad:
                    ax.axhline(base, color="gray", linestyle=":", label=f"baseline {base:.3g}")
                elif base is not None:
                    ax.plot([], [], " ", label=f"baseline {base:.3g} (off the scale)")
                ax.set_ylim(lo - pad, hi + pad)
        ax1.set_xlabel("step")
        ax1.set_ylabel("training loss (per step, smoothed)")
        ax3.set_xlabel("training time (s, validation included)")
        ax3.set_ylabel("training loss")
        for ax, xl in ((ax2, "step"), (ax4, "training time (s, validation included)")):
            ax.set_xlabel(xl)
            ax.set_ylabel(f"validation {task.metric}")
        for ax in axes.flat:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"fusedrnn train --task {task.name}")
        fig.tight_layout()
        return save_png(fig, path)

    # -- report ----------------------------------------------------------------------------
    def report(self, paths: Dict[str, str]) -> None:
        a, r, task, m = self.args, self.result, self.task, self.metrics
        p = lambda s="": print(s, file=self.out)  # noqa: E731
        final = m["final"]
        p()
        if final is None and r["run_steps"]:
            why = "cut short by --time-budget" if r["cut"] else "no finite validation metric"
            p(f"{task.name}: no validation finished ({why}); the saved model is the last one, "
              f"unvalidated")
        elif final is None:
            p(f"{task.name}: no validation ran (no training step finished)")
        else:
            base = final.get("baseline_" + task.metric)
            fmt = lambda v: f"{v:.4f}" if abs(v) >= 0.01 else f"{v:.4g}"  # noqa: E731
            base_s = f" (baseline {fmt(base)})" if base is not None else ""
            p(f"{task.name}: best validation {task.metric} {fmt(final[task.metric])}{base_s} "
              f"at step {final['step']} (epoch {final['epoch']:.2f}, {final['time_s']:.0f} s "
              f"into training)")
            others = {k: v for k, v in final.items() if k not in
                      ("step", "epoch", "time_s", "train_loss", "lr", task.metric)
                      and not k.startswith("baseline")}
            if others:
                p("  " + ", ".join(f"{k} {v:.4f}" for k, v in others.items()))
            for line in task.summary(self.model):
                p(line)
        rate = m["throughput"]["per_second"]
        with_torch = " with the torch run" if self.torch_result is not None else ""
        p(f"steps {r['steps']} ({r['run_steps']} this run, {r['epoch']:.2f} epochs); "
          f"wall time{with_torch} {m['wall_time_s']:.1f} s (data {m['data_prep_s']:.1f} s, "
          f"fusedrnn training{' (bf16 compute)' if a.precision == 'bfloat16' else ''} "
          f"{m['train_time_s']:.1f} s at {rate or 0:,.0f} {task.unit}s/s, validation "
          f"{m['eval_time_s']:.1f} s)")
        if "checkpoint" in paths:
            kind = "best" if self.snapshot.get("validated", True) else "last, unvalidated"
            p(f"saved {paths['checkpoint']} ({kind}, step {self.snapshot['step']})")
        p(f"saved {paths['metrics']}")
        pictures = [paths[k] for k in ("plot", "task_plot") if k in paths]
        for pic in pictures:
            p(f"picture: {pic}")
        if not pictures:
            from ..plotting import HOW_TO_PLOT
            p(HOW_TO_PLOT)
        if self.tb_dir is not None:
            p(f"TensorBoard logs: {self.tb_dir} (view: tensorboard --logdir {self.tb_dir})")
        if self.torch_result is not None:
            self._report_torch(p)

    def _report_torch(self, p) -> None:
        f, t, task = self.result, self.torch_result, self.task
        metric = task.metric
        fr = f["units"] / f["train_time"] if f["train_time"] else float("nan")
        tr = t["units"] / t["train_time"] if t["train_time"] else float("nan")
        fh = {e["step"]: e for e in f["history"]}
        th = {e["step"]: e for e in t["history"]}
        final_step = f["history"][-1]["step"] if f["history"] else None
        ff = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        fi = lambda v: "-" if v is None else str(v)  # noqa: E731
        fs = lambda v: f"{v:.1f}"  # noqa: E731
        fr_ = lambda v: f"{v:,.0f}"  # noqa: E731
        final_f = fh[final_step][metric] if final_step in fh else None
        final_t = th[final_step][metric] if final_step in th else None
        rows = [
            (f"best validation {metric}", ff(f["best"]), ff(t["best"]), ""),
            (f"final validation {metric}", ff(final_f), ff(final_t), ""),
            ("best at step", fi(f["best_step"]), fi(t["best_step"]), ""),
            ("training time (s)", fs(f["train_time"]), fs(t["train_time"]),
             f"{t['train_time'] / f['train_time']:.2f}x" if f["train_time"] else ""),
            (f"{task.unit}s/second", fr_(fr), fr_(tr), f"{tr / fr:.2f}x" if fr else ""),
        ]
        p()
        p(f"--compare-torch: {f['run_steps']} steps each, same initial weights, batches"
          f"{' and dropout masks' if self.args.dropout else ''}; "
          f"{get_num_threads()} thread{'' if get_num_threads() == 1 else 's'}"
          + (("; bf16: fusedrnn --precision bfloat16, torch "
              + ("under torch.autocast" if self._torch_twin_precision()[0] == "bfloat16" else
                 "in float32 (its autocast LSTM needs a CPU with bf16 instructions)"))
             if self.args.precision == "bfloat16" else ""))
        p(f"| {'':<26} | {'fusedrnn':>10} | {'torch':>10} | {'torch/fusedrnn':>14} |")
        p(f"|{'-' * 28}|{'-' * 12}|{'-' * 12}|{'-' * 16}|")
        for name, a, b, ratio in rows:
            p(f"| {name:<26} | {a:>10} | {b:>10} | {ratio:>14} |")
        if fr and tr:
            p(f"fusedrnn trained {fr / tr:.2f}x as fast as torch ({task.unit}s/second)")
        # step-by-step agreement of the training losses
        fl, tl = np.array(f["step_losses"]), np.array(t["step_losses"])
        n = min(len(fl), len(tl))
        if n:
            diff = np.abs(fl[:n] - tl[:n])
            first = ", ".join(f"{x:.6f}/{y:.6f}" for x, y in zip(fl[:3], tl[:3]))
            p(f"training loss fusedrnn/torch, steps 1-3: {first}")
            for k in (10, 100, n):
                if k <= n:
                    p(f"  max |difference| over the first {k} steps: {diff[:k].max():.2e}")
                if k >= n:
                    break
        common = [s for s in fh if s in th]
        if common:
            p(f"validation {metric} by step (fusedrnn / torch):")
            cells = [f"{s:>6}: {fh[s][metric]:.4f}/{th[s][metric]:.4f}" for s in common]
            for i in range(0, len(cells), 4):
                p("  " + "  ".join(cells[i:i + 4]))


class _Terminated(KeyboardInterrupt):
    """SIGTERM during the training loop (stops it as Ctrl-C does)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def train(args: argparse.Namespace, out=None, t_start: Optional[float] = None) -> int:
    """`fusedrnn train`: returns the exit status. User errors raise before training starts
    (UsageError, DataError, CheckpointError, ValueError)."""
    run = Run(args, out, t_start)
    try:
        run.setup()
    except (UsageError, DataError, CheckpointError):
        run.cleanup_failed_setup()
        raise
    except ValueError as e:   # from a task's or module's argument checks
        run.cleanup_failed_setup()
        raise UsageError(str(e)) from e
    except BaseException:
        run.cleanup_failed_setup()
        raise
    run.train()
    paths = run.save()
    run.report(paths)
    # an interrupted run saved its best model, and exits as the signal asks (130 Ctrl-C, 143
    # SIGTERM), so that `fusedrnn train ... && next-step` does not go on
    return {"SIGINT": 130, "SIGTERM": 143}.get(run.result["interrupted"], 0)
