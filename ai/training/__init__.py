"""Training: a generic loop (:func:`train`) over registered tasks (:class:`Task`).

The tasks live in :mod:`ai.training.tasks`, one module each, and register
themselves with :func:`register`; :func:`get_task` and :func:`task_names`
find them all.  ``ai.engine`` (inference) imports nothing from here.

:func:`train` is imported on first use, so that ``from ai.training import
task_names`` stays light (no torch) for command-line parsers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ai.training.config import TrainConfig
from ai.training.task import Task, get_task, register, task_names

if TYPE_CHECKING:
    from ai.training.loop import train

__all__ = ["Task", "TrainConfig", "get_task", "register", "task_names", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from ai.training.loop import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
