"""One way to run work in a background thread: start, stop, wake, and never die of an exception.

The completion monitor, the job runners, the heartbeat of a running job,
the sender and the retention all are a :class:`BackgroundLoop`: a daemon
thread that calls :meth:`~BackgroundLoop.step` until it is stopped.  A step
that reports more work is followed at once by the next; otherwise the loop
waits ``interval`` seconds, or until :meth:`~BackgroundLoop.wake` is
called.  An exception in a step is logged with its traceback and the loop
goes on after the interval, so one bad item cannot stop the node.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


class BackgroundLoop:
    """A daemon thread that repeats :meth:`step`.

    Parameters
    ----------
    name : str
        The thread's name (shown in logs and tracebacks).
    interval : float
        Seconds to wait after a step that found nothing to do (or failed).
    first_wait : bool
        Wait one interval before the first step (e.g. a lease heartbeat, or
        retention, which need not run at start-up).
    """

    def __init__(self, name: str, interval: float, *, first_wait: bool = False) -> None:
        self.name = name
        self.interval = interval
        self.first_wait = first_wait
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> bool:
        """Do one round of work; return ``True`` when more is waiting (then the next round runs at once)."""
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (a long step can check it between items)."""
        return self._stop.is_set()

    def start(self) -> None:
        """Start the thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next step now instead of after the interval."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step and wait up to ``timeout`` seconds for the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _wait(self) -> None:
        self._wake.wait(self.interval)
        self._wake.clear()

    def _run(self) -> None:
        if self.first_wait:
            self._wait()
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception:  # keep the loop alive: the next round may succeed
                logger.exception("%s: unexpected error; trying again in %.0f s", self.name, self.interval)
                busy = False
            if not busy and not self._stop.is_set():
                self._wait()
