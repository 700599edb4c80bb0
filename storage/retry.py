"""Retrying a job: queue it again, or send its results again (what ``dicomnode retry`` and the status page do)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy import Engine

from storage.outbox import reset_deliveries
from storage.queue import job_state, requeue_job
from storage.states import JobState

# A job in one of these states is queued again; a job whose results were made has them sent again.
REQUEUE_STATES = frozenset({JobState.FAILED, JobState.IGNORED, JobState.NOT_APPLICABLE, JobState.INCOMPLETE, JobState.QUEUED})


class RetryOutcome(enum.StrEnum):
    """What :func:`retry_job` did."""

    NO_JOB = "no_job"
    RUNNING = "running"  # nothing done: the job runs (or started running meanwhile)
    REQUEUED = "requeued"
    RESENT = "resent"  # its deliveries will be sent again (same UIDs)
    NO_DELIVERIES = "no_deliveries"  # nothing to send again: no destinations were configured when it ran


@dataclass(frozen=True)
class Retried:
    """The outcome, and how many deliveries were reset (for ``RESENT``)."""

    outcome: RetryOutcome
    deliveries: int = 0


def retry_job(engine: Engine, job_id: int, rerun: bool = False) -> Retried:
    """Queue a failed, ignored, not applicable or incomplete job again (any job with ``rerun``), else re-send its results."""
    state = job_state(engine, job_id)
    if state is None:
        return Retried(RetryOutcome.NO_JOB)
    if state[0] == JobState.RUNNING:
        return Retried(RetryOutcome.RUNNING)
    if rerun or state[0] in REQUEUE_STATES:
        return Retried(RetryOutcome.REQUEUED if requeue_job(engine, job_id) else RetryOutcome.RUNNING)
    n = reset_deliveries(engine, job_id)
    return Retried(RetryOutcome.RESENT, n) if n else Retried(RetryOutcome.NO_DELIVERIES)


__all__ = ["REQUEUE_STATES", "Retried", "RetryOutcome", "retry_job"]
