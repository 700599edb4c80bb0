"""GPU admission: how many model runs share the GPU at once, and within what memory.

Every worker thread of a process asks before it runs a model on CUDA: at most
``worker.gpu_concurrency`` runs at a time, and the sum of their bundles'
declared ``gpu_memory_mb`` stays within ``worker.gpu_memory_mb`` (0: no
memory limit, only the count).  Runs on the CPU are not gated.  A run that declares more than the
whole budget still runs, alone, rather than never.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


class GPUAdmission:
    """A counting gate on GPU runs and their declared memory.

    Parameters
    ----------
    slots : int
        Runs at once.
    budget_mb : int
        Declared memory allowed at once; 0 means no memory limit.
    """

    def __init__(self, slots: int, budget_mb: int = 0) -> None:
        self.slots = max(1, slots)
        self.budget_mb = max(0, budget_mb)
        self.running = 0
        self.in_use_mb = 0
        self._cond = threading.Condition()

    def _fits(self, need: int) -> bool:
        if self.running >= self.slots:
            return False
        return self.running == 0 or not self.budget_mb or self.in_use_mb + need <= self.budget_mb

    @contextmanager
    def admit(self, need_mb: int, what: str = "model") -> Iterator[None]:
        """Wait for a slot and ``need_mb`` of the budget; release them afterwards."""
        with self._cond:
            if not self._fits(need_mb):
                logger.info("%s waits for the GPU (%d run(s), %d MB declared in use)", what, self.running, self.in_use_mb)
            while not self._fits(need_mb):
                self._cond.wait(1.0)
            self.running += 1
            self.in_use_mb += need_mb
        try:
            yield
        finally:
            with self._cond:
                self.running -= 1
                self.in_use_mb -= need_mb
                self._cond.notify_all()

