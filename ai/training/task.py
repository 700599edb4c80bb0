"""What the training loop needs from a task (:class:`Task`), and the registry of tasks.

A task is a class with a ``name``, constructed from the :class:`TrainConfig`.
It is registered with the :func:`register` decorator in a module of
:mod:`ai.training.tasks`; every module there is imported when a task is
looked up (:func:`get_task`, :func:`task_names`), so adding a task is adding
one file to that package::

    @register
    class MyTask:
        name = "my-task"
        metric = "accuracy"

        def __init__(self, cfg: TrainConfig) -> None: ...
        # dataset, network, loss, split, validate, export

This module does not import torch at run time, so that listing the task
names for a command line does not load the training code until needed
(:class:`TaskChoices`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from ai.errors import AIError
from ai.training.config import TrainConfig

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

Pair = tuple[Path, Path]  # (image, labels), as ai.training.data.find_pairs gives them


class Task(Protocol):
    """A training task: data, network, loss, validation and export, for the generic loop.

    Attributes
    ----------
    name : str
        The name it is registered and chosen by (``TrainConfig.task``).
    metric : str
        The key of :meth:`validate`'s result that selects the best model (higher is better).
    """

    name: str
    metric: str

    def dataset(self, pairs: list[Pair]) -> Dataset[tuple[torch.Tensor, torch.Tensor]]:
        """The training samples ``(input, target)`` drawn from ``pairs`` (usually an endless stream)."""
        ...

    def network(self) -> torch.nn.Module:
        """A freshly initialised network (called after :meth:`dataset`, under the run's torch seed)."""
        ...

    def loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss of ``(network output, target)``."""
        ...

    def split(self, pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
        """``(train, validation)`` pairs (validation may be empty)."""
        ...

    def validate(self, model: torch.nn.Module, pairs: list[Pair], device: torch.device) -> dict[str, float]:
        """Metrics of ``model`` on the validation pairs, including :attr:`metric`."""
        ...

    def export(self, state: dict[str, torch.Tensor], out: Path) -> None:
        """Write the bundle (``manifest.json`` and weights) of the network with ``state`` into ``out``."""
        ...


class TaskFactory(Protocol):
    """What :func:`register` accepts: a task class (its ``name``, and a constructor from the config)."""

    name: str

    def __call__(self, cfg: TrainConfig) -> Task:
        ...


_F = TypeVar("_F", bound=TaskFactory)
_TASKS: dict[str, TaskFactory] = {}


def register(factory: _F) -> _F:
    """Class decorator: make a task available under its ``name``.

    Parameters
    ----------
    factory : TaskFactory
        The task class; mypy checks that its instances are :class:`Task`.

    Returns
    -------
    TaskFactory
        ``factory`` itself.

    Raises
    ------
    AIError
        Another task already has that name.
    """
    name = factory.name
    known = _TASKS.get(name)
    if known is not None and _qualname(known) != _qualname(factory):
        raise AIError(f"task {name!r} is registered twice: {_qualname(known)} and {_qualname(factory)}")
    _TASKS[name] = factory
    return factory


def _qualname(factory: TaskFactory) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


def _discover() -> None:
    """Import every module of :mod:`ai.training.tasks` (their :func:`register` calls fill the registry)."""
    from ai.training import tasks

    for info in pkgutil.iter_modules(tasks.__path__):
        importlib.import_module(f"{tasks.__name__}.{info.name}")


def task_names() -> list[str]:
    """The names of the registered tasks, sorted."""
    _discover()
    return sorted(_TASKS)


def get_task(name: str, cfg: TrainConfig) -> Task:
    """The task ``name``, constructed for ``cfg``.

    Parameters
    ----------
    name : str
        A registered name (``TrainConfig.task``).
    cfg : TrainConfig
        The run, given to the task's constructor.

    Raises
    ------
    AIError
        No task has that name (the message lists the known ones).
    """
    _discover()
    factory = _TASKS.get(name)
    if factory is None:
        raise AIError(f"unknown task {name!r}: known tasks are {', '.join(sorted(_TASKS))}")
    return factory(cfg)


class TaskChoices:
    """:func:`task_names` as argparse ``choices``, discovered only when a choice is checked or listed.

    So building a command-line parser does not import the task modules (and torch).
    """

    def __contains__(self, name: object) -> bool:
        return name in task_names()

    def __iter__(self) -> Iterator[str]:
        return iter(task_names())
