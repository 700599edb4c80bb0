"""The names the database stores for states, stages, reasons and kinds, each spelled once.

They are :class:`enum.StrEnum`: a member *is* its string, so it goes into a
column, a metric label or a log line as it is, and a value read back from
the database compares equal to it.  The workers, the metrics, the status
page and the queue all use these.
"""

from __future__ import annotations

import enum


class SeriesState(enum.StrEnum):
    """Life cycle of a series."""

    RECEIVING = "receiving"  # instances are (or may still be) arriving
    COMPLETE = "complete"  # a job was queued for the current version
    PURGED = "purged"  # retention removed its files (the rows stay, for the record)


class JobState(enum.StrEnum):
    """Life cycle of a job.

    queued → running → delivering → done | delivery_failed, or running →
    failed (the series could not be processed) | ignored (no model applies) |
    not_applicable (a model ran, but the anatomy it needs is not in the images:
    nothing is sent and nothing is quarantined) | incomplete (the series completed
    with instances missing and ``series.process_incomplete`` is off: nothing is
    run or sent, the files stay, and the rest of the series re-opens it).
    """

    QUEUED = "queued"
    RUNNING = "running"
    DELIVERING = "delivering"  # outputs written; deliveries pending
    DONE = "done"
    FAILED = "failed"
    INCOMPLETE = "incomplete"  # not processed: instances are missing (the job's error says which)
    DELIVERY_FAILED = "delivery_failed"  # a destination refused or stayed unreachable after the last attempt
    IGNORED = "ignored"
    NOT_APPLICABLE = "not_applicable"


FINISHED_JOB_STATES = frozenset({JobState.DELIVERING, JobState.DONE, JobState.DELIVERY_FAILED})  # outputs were written


class DeliveryState(enum.StrEnum):
    """Life cycle of one output delivery to one destination."""

    PENDING = "pending"
    AWAITING_COMMITMENT = "awaiting_commitment"  # sent; waiting for the peer's Storage Commitment report
    DONE = "done"
    FAILED = "failed"


class Stage(enum.StrEnum):
    """Where a series' data is on its way from the scanner to the PACS.

    The timed stages (:data:`TIMED_STAGES`) are the keys of a job's
    ``timings`` and the ``stage`` label of the stage-latency histogram;
    ``claimed`` and ``done`` only mark a job's progress.
    """

    RECEIVE = "receive"  # first to last instance
    COMPLETE = "complete"  # last instance to the job
    QUEUE = "queue"  # job to a worker
    CLAIMED = "claimed"
    WAITING = "waiting"  # the job waits for the rest of its study
    RECONSTRUCT = "reconstruct"
    INFER = "infer"
    WRITE = "write"
    DELIVER = "deliver"  # job finished to the PACS confirmed
    DONE = "done"


TIMED_STAGES = (
    Stage.RECEIVE, Stage.COMPLETE, Stage.QUEUE, Stage.RECONSTRUCT, Stage.INFER, Stage.WRITE, Stage.DELIVER,
)


class CompletionReason(enum.StrEnum):
    """The evidence that completed a series, strongest first (see :mod:`dicomnode.receive.completion`)."""

    EXPECTED_COUNT = "expected_count"
    ASSOCIATION_RELEASED = "association_released"
    QUIET_PERIOD = "quiet_period"
    INCOMPLETE_TIMEOUT = "incomplete_timeout"


class OutputKind(enum.StrEnum):
    """What a job sends: an object it wrote, or a source instance it forwards."""

    SEG = "seg"
    SR = "sr"
    PREVIEW = "preview"  # Secondary Capture key image
    KOS = "kos"  # Key Object Selection flagging the key source slices
    SOURCE = "source"  # forwarded unchanged


class AttemptOutcome(enum.StrEnum):
    """What one delivery attempt achieved (metrics and the audit trail)."""

    SENT = "sent"
    COMMITTED = "committed"
    FAILED = "failed"


class QuarantineState(enum.StrEnum):
    """Where a quarantine entry is in its lifecycle (see :mod:`storage.quarantine`)."""

    HELD = "held"
    RELEASED = "released"
    SUPERSEDED = "superseded"
    PURGED = "purged"
