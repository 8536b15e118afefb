"""The sequence tasks of the ``fusedrnn`` command (see :mod:`fusedrnn.tasks.base`).

Each task lives in its own module and is imported only when used.
"""
from __future__ import annotations

import importlib

from .base import DataError, Task

__all__ = ["TASK_NAMES", "get_task", "Task", "DataError"]

_TASKS = {
    "charlm": ("charlm", "CharLM"),          # sequence generation: character language model
    "forecast": ("forecast", "Forecast"),    # time-series prediction
    "classify": ("classify", "Classify"),    # sequence classification (long-range problems)
    "tag": ("tag", "Tag"),                   # sequence labelling (slot filling)
    "translate": ("translate", "Translate"), # sequence to sequence (dates to ISO form)
    "recognise": ("recognise", "Recognise"), # speech-like recognition with CTC
}
TASK_NAMES = tuple(_TASKS)


def get_task(name: str) -> type:
    """The Task class registered under ``name``."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASK_NAMES)}")
    module, cls = _TASKS[name]
    return getattr(importlib.import_module(f".{module}", __name__), cls)
