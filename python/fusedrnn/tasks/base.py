"""The interface every task of the ``fusedrnn`` command implements, and the errors it raises.

A task owns its data (an embedded default dataset, or the user's file from ``--data``), builds
its model from fusedrnn modules, produces training batches, runs one training step (forward and
backward into the parameters' gradients), and evaluates. The generic training loop
(:mod:`fusedrnn.tasks.trainer`) owns everything else: seeding, threads, the optimiser,
clipping, the step / epoch / time budget, the progress bar, periodic validation with the best
checkpoint kept (early stopping), checkpoints, metrics JSON and the loss-curve plot, and the
side-by-side PyTorch run (``--compare-torch``).

Lifecycle::

    task = TASKS[name](args)        # args: the argparse Namespace, every flag resolved
    task.prepare()                  # load or generate the data; DataError on a bad file
    model = task.build_model()      # a registered fusedrnn Module (it has a config())
    for batch in task.batches(rng): # endless; task.epoch counts passes over the training data
        model.zero_grad()
        loss, count = task.train_step(model, batch)
        ...optimiser step...
    metrics = task.evaluate(model)  # model in eval mode; dict with task.metric and baselines

A checkpoint stores ``task.metadata()`` (JSON: vocabulary, normalisation, the task's flags) so
that ``evaluate`` / ``generate`` / ``predict`` rebuild the task with ``restore(metadata)``.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..module import Module

__all__ = ["Task", "DataError", "TASK_FLAGS"]

# Flags whose values a task's checkpoint records (model shape and data handling); the others
# (lr, steps, out, threads, ...) only concern one run.
TASK_FLAGS = ("task", "cell", "hidden", "layers", "bidirectional", "dropout", "seq_len",
              "batch_size", "seed", "data", "column", "model", "problem", "min_length",
              "max_length", "horizon", "window", "embed", "attention")

# the cell options (tasks.common.CELL_OPTIONS) are task flags too
TASK_FLAGS = TASK_FLAGS + ("nonlinearity", "init", "peepholes", "proj_size", "variant",
                           "forget_bias", "layer_norm", "ln_eps", "zoneout_h", "zoneout_c",
                           "recurrent_dropout", "input_dropout", "weight_drop",
                           "dropout_masks")


class DataError(ValueError):
    """A user data file that cannot be used (missing, unreadable, wrong format, too small).
    The CLI prints its message as a one-line error and exits with status 2."""


class Task:
    #: name used by --task
    name: str = ""
    #: one line for --help
    help: str = ""
    #: the primary validation metric (a key of evaluate()'s dict) and whether higher is better
    metric: str = ""
    higher_is_better: bool = False
    #: unit of train_step's count for the progress bar ("char", "token", "seq", "step")
    unit: str = "seq"
    #: flag defaults of this task (overrides the CLI's generic defaults where the user gave
    #: no value): e.g. {"hidden": 256, "lr": 2e-3, "batch_size": 32, "time_budget": 180}
    defaults: Dict[str, Any] = {}
    #: whether --bidirectional makes sense (a language model or forecaster cannot look ahead)
    bidirectional_ok: bool = False
    #: why not, when bidirectional_ok is False (for the error message)
    unidirectional_reason: str = "it predicts forward in time"
    #: the task-specific flags it reads, of "data", "column", "model", "problem", "min_length",
    #: "max_length", "horizon", "window", "embed", "attention", "seq_len"; the CLI rejects the
    #: others when given. None (the default) = not declared: the CLI accepts all of them.
    flags: Optional[Tuple[str, ...]] = None
    #: what sets the task's sequence lengths when it does not read --seq-len (named when
    #: --seq-len is refused), e.g. "--min-length and --max-length set its sequence lengths"
    length_flags: str = ""
    #: the sequence length the memory estimate assumes for a task that reads no --seq-len and
    #: whose lengths come from its data (read only after the estimate)
    memory_length: int = 100
    #: whether the cell-option flags (--nonlinearity, --init, --peepholes, --proj-size,
    #: --variant, --forget-bias, and issue 19's --layer-norm ... --dropout-masks) reach this
    #: task's recurrent layers: True (all of them), False (none), or a tuple of the option
    #: names (tasks.common.CELL_OPTIONS keys) that do; the others are refused. The options
    #: given are in ``self.cell_opts`` (layer keyword arguments).
    cell_options_ok: Any = True
    #: why the cell options outside ``cell_options_ok`` do not reach the model (for the error)
    cell_options_reason: str = ""
    #: the beam width of the task's sequence decoding when --beam is not given (evaluate,
    #: predict); None: the task decodes no sequences and refuses --beam
    default_beam: Optional[int] = None

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.epoch = 0.0
        # task flags given a value (not None) when the task was made: _restore_flags keeps them
        self._given = {k for k in TASK_FLAGS if getattr(args, k, None) is not None}
        self.check_bidirectional(args)
        self.resolve_flags()

    @classmethod
    def check_bidirectional(cls, args: argparse.Namespace) -> None:
        """ValueError when --bidirectional is set for a task that reads left to right."""
        if getattr(args, "bidirectional", False) and not cls.bidirectional_ok:
            raise ValueError(f"--bidirectional does not apply to task {cls.name} "
                             f"({cls.unidirectional_reason})")

    # -- flags -------------------------------------------------------------------------------
    def resolve_flags(self) -> None:
        """Checks this task's flags and writes them to ``self.args`` (the user's value, else the
        task default); called at the end of ``Task.__init__`` and by tasks after ``restore``.
        The base class checks the model flags every task has (cell, hidden, layers,
        batch_size, dropout, seed); tasks with more flags extend it."""
        from .common import CELL_OPTIONS, cell_options, model_flags
        model_flags(self, lower_cell=True)
        ok = self.cell_options_ok
        allowed = tuple(CELL_OPTIONS) if ok is True else tuple(ok or ())
        if "zoneout_h" in allowed:
            allowed += ("zoneout",)   # --zoneout sets zoneout_h (and the LSTM's zoneout_c)
        for k in tuple(CELL_OPTIONS) + ("zoneout",):
            if k not in allowed and getattr(self.args, k, None) not in (None, False):
                from ..validators import flag_name
                why = f" ({self.cell_options_reason})" if self.cell_options_reason else ""
                raise ValueError(f"{flag_name(k)} does not apply to task {self.name}{why}")
        self.cell_opts = cell_options(self) if allowed else {}

    def flag(self, name: str) -> Any:
        """args.<name>, or this task's default when it has no value."""
        v = getattr(self.args, name, None)
        return self.defaults.get(name) if v is None else v

    def _restore_flags(self, metadata: Dict[str, Any]) -> None:
        """Takes the checkpoint's task flags, except those given a value when this task was
        made (the user's flags win, as in the trainer)."""
        for k, v in metadata.get("flags", {}).items():
            if k in TASK_FLAGS and k != "task" and k not in self._given:
                setattr(self.args, k, v)

    # -- memory (checked before anything is allocated) ----------------------------------------
    def sequence_length(self) -> int:
        """The longest training sequence of a batch, in steps (for the memory estimate):
        --seq-len for a task that reads it, else :attr:`memory_length` (a task with length
        flags of its own overrides this method)."""
        if self.flags is None or "seq_len" in self.flags:
            return int(self.flag("seq_len") or 100)
        return int(self.memory_length)

    def input_width(self) -> int:
        """The recurrent stack's input features (for the memory estimate)."""
        return int(self.flag("embed") or 64)

    def extra_memory(self) -> List[Tuple[str, float]]:
        """Task-specific (cause, bytes) terms of the memory estimate (e.g. a generated
        validation set)."""
        return []

    def memory_parts(self) -> List[Tuple[str, float]]:
        """(cause, bytes) of a training run's memory estimate from the resolved flags: the
        weights with their gradients and two optimiser moments, the activations the kernels
        keep for backward (gates, states, outputs per step, layer and direction) and the
        task's extra_memory(). Float32; an estimate to refuse the impossible early, not to
        budget a run."""
        G = {"lstm": 4, "gru": 3, "rnn": 1}.get(self.flag("cell"), 4)
        H, L = int(self.flag("hidden")), int(self.flag("layers"))
        D = 2 if self.flag("bidirectional") else 1
        T, N, C = self.sequence_length(), int(self.flag("batch_size")), self.input_width()
        weights = L * D * G * H * (max(C, D * H) + H + 2) * 4 * 4
        acts = T * N * L * D * H * (G + 4) * 4 * 2
        return [(f"--hidden {H} x --layers {L}: weights and optimiser state", weights),
                (f"--batch-size {N} x {T} steps: activations", acts)] + self.extra_memory()

    # -- required ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load args.data or build the default dataset; split train/validation."""
        raise NotImplementedError

    def build_model(self) -> Module:
        """The model, initialised from args.seed."""
        raise NotImplementedError

    def batches(self, rng: np.random.Generator) -> Iterator[Any]:
        """Endless training batches in a deterministic order given rng; updates self.epoch."""
        raise NotImplementedError

    def train_step(self, model: Module, batch: Any) -> Tuple[float, int]:
        """Forward (train mode) and backward of one batch: gradients are added into the
        parameters. Returns (loss, count): the loss the optimiser minimises and the number of
        units (characters, tokens, sequences) in the batch."""
        raise NotImplementedError

    def evaluate(self, model: Module) -> Dict[str, float]:
        """Validation metrics (model is in eval mode): must contain self.metric; include the
        trivial baseline as "baseline_<metric>" where there is one."""
        raise NotImplementedError

    # -- optional ----------------------------------------------------------------------------
    def progress(self, loss: float) -> Dict[str, float]:
        """Extra numbers for the progress bar derived from a training loss (e.g. bits per
        character); none by default."""
        return {}

    def summary(self, model: Module) -> List[str]:
        """Lines printed after training (a generated sample, a few predictions)."""
        return []

    def metadata(self) -> Dict[str, Any]:
        """JSON-serialisable state needed to rebuild the task without its data (vocabulary,
        normalisation constants) plus the task flags."""
        return {"flags": {k: getattr(self.args, k) for k in TASK_FLAGS if hasattr(self.args, k)}}

    def checkpoint_extras(self) -> Dict[str, Any]:
        """Top-level entries of the checkpoint's user metadata for readers that know nothing
        of tasks (the C++ examples read a language model's "vocab", a list of one-character
        strings in token order)."""
        return {}

    def restore(self, metadata: Dict[str, Any]) -> None:
        """Inverse of metadata(), called instead of / before prepare() for a checkpoint."""

    def predict(self, model: Module, inputs: List[str]) -> List[str]:
        """`fusedrnn predict`: one output line per input line (task-specific text formats)."""
        raise NotImplementedError(f"task {self.name} has no predict")

    # -- --compare-torch (optional) ----------------------------------------------------------
    def torch_model(self, model: Module):
        """A torch.nn.Module with the same structure and weights as model, or None when this
        task has no PyTorch twin. The trainer calls it before training, with the run's initial
        weights (and fresh dropout generators), then trains both on the same batches: it
        zeroes the gradients, calls torch_train_step, clips, steps the equivalent torch
        optimiser, and calls torch_evaluate in eval mode under the same schedule."""
        return None

    def torch_train_step(self, tmodel, batch) -> Tuple[float, int]:
        raise NotImplementedError

    def torch_evaluate(self, tmodel) -> Dict[str, float]:
        raise NotImplementedError
