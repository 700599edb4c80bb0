"""The job queue: atomic claims with leases, heartbeats, and finishing a job with its outbox.

A worker claims the most urgent queued job (or a running one whose lease
expired because its worker died) in one write transaction: on SQLite the
``BEGIN IMMEDIATE`` write lock makes it atomic, on PostgreSQL ``SELECT ... FOR
UPDATE SKIP LOCKED`` lets several worker hosts claim side by side.  Every
later update names the worker, so a worker that lost its lease cannot
overwrite the job's new owner.  Finishing a job writes its outputs and one
delivery row per destination in the same transaction (an outbox): a crash
leaves either no trace of the outputs or all of them, queued for sending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, Engine, and_, or_, select, update

from storage.database import as_utc, read_transaction, write_transaction
from storage.models import Delivery, Instance, Job, Output, Series, table_of, utcnow
from storage.series import SeriesFacts
from storage.states import DeliveryState, JobState, OutputKind, Stage

_jobs = table_of(Job)
_series = table_of(Series)
_instances = table_of(Instance)
_outputs = table_of(Output)
_deliveries = table_of(Delivery)


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker now owns, with what it needs to know about the series."""

    id: int
    series_id: int
    version: int
    attempts: int
    series_uid: str
    study_uid: str
    facts: SeriesFacts  # what routing looks at
    reclaimed: bool  # its previous worker died (the lease expired)
    completion_reason: str = ""  # why the series was judged complete (CompletionReason value)
    completion_detail: str | None = None  # e.g. what was missing when it completed incomplete
    instance_count: int = 0  # instances the job covers


@dataclass(frozen=True)
class OutputRecord:
    """One output file of a job, as the outbox stores it."""

    kind: OutputKind
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    transfer_syntax_uid: str
    variant: str = ""


@dataclass(frozen=True)
class DeliveryTarget:
    """Where a finished job's outputs go."""

    destination: str
    variant: str = ""
    storage_commitment: bool = False


def claim_job(engine: Engine, worker: str, lease_seconds: float, *, max_attempts: int = 3) -> ClaimedJob | None:
    """Take the most urgent job that is queued, or running with an expired lease.

    A job whose workers died ``max_attempts`` times is failed instead of
    being claimed again (it probably kills the worker).

    Returns
    -------
    ClaimedJob or None
        ``None`` when there is nothing to do.
    """
    now = utcnow()
    expired = now - timedelta(seconds=lease_seconds)
    claimable = or_(
        and_(_jobs.c.state == JobState.QUEUED, or_(_jobs.c.not_before.is_(None), _jobs.c.not_before <= now)),
        and_(_jobs.c.state == JobState.RUNNING, _jobs.c.heartbeat_at < expired),
    )
    while True:
        with write_transaction(engine) as conn:
            stmt = select(_jobs.c.id, _jobs.c.state, _jobs.c.attempts, _jobs.c.worker).where(claimable)
            stmt = stmt.order_by(_jobs.c.priority.desc(), _jobs.c.id).limit(1)
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            row = conn.execute(stmt).one_or_none()
            if row is None:
                return None
            reclaimed = row.state == JobState.RUNNING
            if reclaimed and row.attempts >= max_attempts:
                conn.execute(
                    update(_jobs).where(_jobs.c.id == row.id).values(
                        state=JobState.FAILED,
                        finished_at=now,
                        error=f"the worker running this job stopped {row.attempts} times (last: {row.worker}); "
                        "not trying again: `dicomnode retry` re-queues it",
                    )
                )
                continue
            conn.execute(
                update(_jobs).where(_jobs.c.id == row.id).values(
                    state=JobState.RUNNING,
                    worker=worker,
                    started_at=now,
                    heartbeat_at=now,
                    attempts=_jobs.c.attempts + 1,
                    stage=Stage.CLAIMED,
                    error=None,
                    not_before=None,
                )
            )
            s = conn.execute(
                select(
                    _jobs.c.series_id, _jobs.c.version, _jobs.c.attempts, _series.c.series_uid, _series.c.study_uid,
                    _jobs.c.completion_reason, _jobs.c.instance_count, _series.c.completion_detail,
                    *(_series.c[f] for f in SeriesFacts.__dataclass_fields__),
                )
                .join(_series, _series.c.id == _jobs.c.series_id)
                .where(_jobs.c.id == row.id)
            ).one()
            facts = SeriesFacts(**{f: getattr(s, f) for f in SeriesFacts.__dataclass_fields__})
            return ClaimedJob(
                id=row.id, series_id=s.series_id, version=s.version, attempts=s.attempts, series_uid=s.series_uid,
                study_uid=s.study_uid, facts=facts, reclaimed=reclaimed, completion_reason=s.completion_reason or "",
                completion_detail=s.completion_detail, instance_count=s.instance_count or 0,
            )


def heartbeat(engine: Engine, job_id: int, worker: str, stage: str | None = None) -> bool:
    """Renew the lease (and record the stage).  ``False``: the job is no longer ours."""
    values: dict[str, object] = {"heartbeat_at": utcnow()}
    if stage is not None:
        values["stage"] = stage
    with write_transaction(engine) as conn:
        n = conn.execute(
            update(_jobs)
            .where(_jobs.c.id == job_id, _jobs.c.worker == worker, _jobs.c.state == JobState.RUNNING)
            .values(**values)
        ).rowcount
    return n == 1


def _owned(job_id: int, worker: str) -> ColumnElement[bool]:
    return and_(_jobs.c.id == job_id, _jobs.c.worker == worker, _jobs.c.state == JobState.RUNNING)


def finish_job(
    engine: Engine,
    job_id: int,
    worker: str,
    *,
    timings: dict[str, float],
    model: str | None,
    output_dir: str | None,
    outputs: Sequence[OutputRecord],
    targets: Sequence[DeliveryTarget],
) -> bool:
    """Record the outputs and queue one delivery per target, in one transaction.

    Returns
    -------
    bool
        ``False`` when the job is no longer this worker's (its lease expired
        and another worker took it); nothing is written then.
    """
    now = utcnow()
    with write_transaction(engine) as conn:
        state = JobState.DELIVERING if targets else JobState.DONE
        n = conn.execute(
            update(_jobs).where(_owned(job_id, worker)).values(
                state=state.value, finished_at=now, timings=timings, model=model, output_dir=output_dir,
                stage=Stage.DELIVER if targets else Stage.DONE, heartbeat_at=now,
            )
        ).rowcount
        if n != 1:
            return False
        conn.execute(_outputs.delete().where(_outputs.c.job_id == job_id))  # from an earlier run of a retried job
        if outputs:
            conn.execute(_outputs.insert(), [{"job_id": job_id, **vars(o)} for o in outputs])
        conn.execute(_deliveries.delete().where(_deliveries.c.job_id == job_id))
        if targets:
            conn.execute(
                _deliveries.insert(),
                [
                    {
                        "job_id": job_id, "destination": t.destination, "variant": t.variant,
                        "storage_commitment": t.storage_commitment, "state": DeliveryState.PENDING, "attempts": 0,
                        "sent_count": 0, "next_attempt_at": now, "created_at": now, "updated_at": now,
                    }
                    for t in targets
                ],
            )
    return True


def end_job(engine: Engine, job_id: int, worker: str, state: JobState, reason: str, timings: dict[str, float]) -> bool:
    """Mark a job ``failed`` or ``ignored`` with a readable reason.  ``False``: not ours any more."""
    with write_transaction(engine) as conn:
        n = conn.execute(
            update(_jobs).where(_owned(job_id, worker)).values(
                state=state.value, finished_at=utcnow(), error=reason, timings=timings
            )
        ).rowcount
    return n == 1


def series_files(engine: Engine, series_id: int) -> list[tuple[str, str, str]]:
    """``(SOP instance UID, relative path, SOP class UID)`` of every stored instance of a series."""
    with read_transaction(engine) as conn:
        rows = conn.execute(
            select(_instances.c.sop_uid, _instances.c.path, _instances.c.sop_class_uid)
            .where(_instances.c.series_id == series_id)
            .order_by(_instances.c.id)
        ).all()
    return [(r.sop_uid, r.path, r.sop_class_uid) for r in rows]


def job_timeline(engine: Engine, job_id: int) -> dict[str, float]:
    """Seconds of the stages before a worker: receive (first to last instance), complete, queue."""
    with read_transaction(engine) as conn:
        r = conn.execute(
            select(_series.c.first_received_at, _series.c.last_received_at, _jobs.c.created_at, _jobs.c.started_at)
            .join(_series, _series.c.id == _jobs.c.series_id)
            .where(_jobs.c.id == job_id)
        ).one()
    first, last, created = as_utc(r.first_received_at), as_utc(r.last_received_at), as_utc(r.created_at)
    started = as_utc(r.started_at) if r.started_at else created
    return {
        Stage.RECEIVE: round((last - first).total_seconds(), 3),
        Stage.COMPLETE: round(max(0.0, (created - last).total_seconds()), 3),
        Stage.QUEUE: round(max(0.0, (started - created).total_seconds()), 3),
    }


def requeue_job(engine: Engine, job_id: int) -> bool:
    """Put a failed, ignored or finished job back in the queue (``dicomnode retry``)."""
    with write_transaction(engine) as conn:
        n = conn.execute(
            update(_jobs)
            .where(_jobs.c.id == job_id, _jobs.c.state != JobState.RUNNING)
            .values(state=JobState.QUEUED, attempts=0, error=None, worker=None, stage=None, finished_at=None)
        ).rowcount
    return n == 1


def defer_job(engine: Engine, job_id: int, worker: str, seconds: float, why: str) -> bool:
    """Put a claimed job back in the queue until ``seconds`` from now (its study is still arriving).

    The claim does not count as an attempt.  ``False``: the job is no longer ours.
    """
    with write_transaction(engine) as conn:
        n = conn.execute(
            update(_jobs).where(_owned(job_id, worker)).values(
                state=JobState.QUEUED, worker=None, heartbeat_at=None, attempts=_jobs.c.attempts - 1,
                not_before=utcnow() + timedelta(seconds=seconds), stage=Stage.WAITING, error=why,
            )
        ).rowcount
    return n == 1


def job_state(engine: Engine, job_id: int) -> tuple[str, str | None] | None:
    """``(state, error)`` of a job, or ``None`` if there is no such job."""
    with read_transaction(engine) as conn:
        row = conn.execute(select(_jobs.c.state, _jobs.c.error).where(_jobs.c.id == job_id)).one_or_none()
    return None if row is None else (row.state, row.error)

