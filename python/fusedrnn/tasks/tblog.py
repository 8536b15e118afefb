"""``fusedrnn train --tensorboard DIR``: scalar logs in TensorBoard's event-file format, written
with tensorboardX (the optional ``[tensorboard]`` extra: ``pip install 'fusedrnn[tensorboard]'``),
the format PyTorch's ``torch.utils.tensorboard`` and Keras' TensorBoard callback write.

Scalars (tag: what, x axis = the global training step):

* ``train/loss``: the training loss of every step;
* ``train/grad_norm``: the gradient norm of every step (before clipping);
* ``train/lr``: the learning rate of every step;
* ``train/<unit>s_per_second``: training throughput since the previous validation (at each
  validation);
* ``val/<key>``: every number the task's validation returns (the metric, its baseline, ...).

With ``--compare-torch`` the torch twin's run is logged the same way under ``DIR/torch``, the
fusedrnn run under ``DIR/fusedrnn`` (TensorBoard shows them as two runs); without it, directly
under ``DIR``.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

__all__ = ["TensorBoardLog", "check_tensorboard_dir", "NEEDS"]

NEEDS = ("--tensorboard needs tensorboardX (pip install 'fusedrnn[tensorboard]' or pip install "
         "tensorboardX)")


def check_tensorboard_dir(path: str) -> None:
    """Checks before training that tensorboardX is installed and ``path`` is a directory that
    can be created and written; ValueError with one line otherwise (as for ``--out``)."""
    import importlib.util

    from .guards import prepare_out_dir
    if importlib.util.find_spec("tensorboardX") is None:
        raise ValueError(NEEDS)
    try:
        prepare_out_dir(path, ())
    except ValueError as e:
        raise ValueError(str(e).replace("--out", "--tensorboard")) from None


class TensorBoardLog:
    """One run's event file (tensorboardX.SummaryWriter)."""

    def __init__(self, logdir: str, unit: str):
        from tensorboardX import SummaryWriter
        os.makedirs(logdir, exist_ok=True)
        self.writer = SummaryWriter(logdir=logdir)
        self.logdir = logdir
        self.unit = unit

    def step(self, step: int, loss: float, grad_norm: Optional[float], lr: float) -> None:
        w = self.writer
        w.add_scalar("train/loss", loss, step)
        if grad_norm is not None:
            w.add_scalar("train/grad_norm", grad_norm, step)
        w.add_scalar("train/lr", lr, step)

    def validation(self, step: int, metrics: Dict[str, float],
                   per_second: Optional[float]) -> None:
        w = self.writer
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                w.add_scalar(f"val/{k}", float(v), step)
        if per_second is not None:
            w.add_scalar(f"train/{self.unit}s_per_second", per_second, step)
        w.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
