"""The delivery outbox: which outputs go where, their attempts, and the job's resulting state.

Delivery rows are created by :func:`storage.queue.finish_job`.  A sender
claims due rows by pushing their ``next_attempt_at`` forward by a lease (so
that two senders never send the same delivery at once, and a sender that
dies mid-send leaves a row that becomes due again), sends, and records the
outcome.  After every outcome the job's state follows its deliveries:
``done`` when all are done, ``delivery_failed`` when one failed for good and
none is still pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, and_, select, update

from storage.database import as_utc, read_transaction, write_transaction
from storage.listings import Row
from storage.models import Delivery, Job, Output, table_of, utcnow
from storage.states import DeliveryState, JobState, OutputKind, Stage
from storage.queue import OutputRecord

_jobs = table_of(Job)
_outputs = table_of(Output)
_deliveries = table_of(Delivery)

_OPEN = (DeliveryState.PENDING, DeliveryState.AWAITING_COMMITMENT)


@dataclass(frozen=True)
class DueDelivery:
    """A delivery a sender now owns until its lease ends."""

    id: int
    job_id: int
    destination: str
    variant: str
    state: str  # pending, or awaiting_commitment whose report is overdue
    attempts: int  # including this one
    storage_commitment: bool
    commitment_uid: str | None
    created_at: datetime | None = None  # when the job finished and queued it
    last_error: str | None = None  # awaiting a report: why the last report for this attempt was refused


def claim_due(engine: Engine, lease_seconds: float, limit: int = 8) -> list[DueDelivery]:
    """Claim deliveries whose next attempt is due, oldest first."""
    now = utcnow()
    out: list[DueDelivery] = []
    with write_transaction(engine) as conn:
        stmt = (
            select(_deliveries)
            .where(_deliveries.c.state.in_(_OPEN), _deliveries.c.next_attempt_at <= now)
            .order_by(_deliveries.c.next_attempt_at, _deliveries.c.id)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        for r in conn.execute(stmt).all():
            resend = r.state == DeliveryState.PENDING
            conn.execute(
                update(_deliveries).where(_deliveries.c.id == r.id).values(
                    next_attempt_at=now + timedelta(seconds=lease_seconds),
                    attempts=r.attempts + 1 if resend else r.attempts,
                    updated_at=now,
                )
            )
            out.append(
                DueDelivery(
                    id=r.id, job_id=r.job_id, destination=r.destination, variant=r.variant, state=r.state,
                    attempts=r.attempts + 1 if resend else r.attempts, storage_commitment=r.storage_commitment,
                    commitment_uid=r.commitment_uid, created_at=as_utc(r.created_at), last_error=r.last_error,
                )
            )
    return out


def outputs_for(engine: Engine, job_id: int, variant: str = "") -> list[OutputRecord]:
    """The outputs of a job that a delivery of ``variant`` sends (the shared ones and its own)."""
    with read_transaction(engine) as conn:
        rows = conn.execute(
            select(_outputs).where(_outputs.c.job_id == job_id).order_by(_outputs.c.id)
        ).all()
    wanted = [r for r in rows if r.variant == variant]
    kinds = {r.kind for r in wanted}
    shared = [r for r in rows if r.variant == "" and r.kind not in kinds]
    return [
        OutputRecord(
            kind=OutputKind(r.kind), path=r.path, sop_class_uid=r.sop_class_uid, sop_instance_uid=r.sop_instance_uid,
            series_uid=r.series_uid, transfer_syntax_uid=r.transfer_syntax_uid, variant=r.variant,
        )
        for r in shared + wanted
    ]


def _settle_job(conn: Connection, job_id: int) -> None:
    states = set(conn.execute(select(_deliveries.c.state).where(_deliveries.c.job_id == job_id)).scalars())
    if states & set(_OPEN):
        new = JobState.DELIVERING
    elif DeliveryState.FAILED in states:
        new = JobState.DELIVERY_FAILED
    else:
        new = JobState.DONE
    conn.execute(
        update(_jobs)
        .where(_jobs.c.id == job_id, _jobs.c.state.in_([s.value for s in (JobState.DELIVERING, JobState.DONE, JobState.DELIVERY_FAILED)]))
        .values(state=new.value, stage=Stage.DONE if new is JobState.DONE else Stage.DELIVER)
    )


def record_sent(engine: Engine, delivery_id: int, sent: int, *, commitment_uid: str | None = None, commitment_deadline: datetime | None = None) -> None:
    """Everything was stored by the peer; done, or awaiting its Storage Commitment report."""
    now = utcnow()
    with write_transaction(engine) as conn:
        if commitment_uid is None:
            conn.execute(update(_deliveries).where(_deliveries.c.id == delivery_id).values(
                sent_count=sent, last_error=None, updated_at=now, state=DeliveryState.DONE, finished_at=now, next_attempt_at=None,
            ))
        else:
            this_attempt = [_deliveries.c.id == delivery_id, _deliveries.c.commitment_uid == commitment_uid]
            conn.execute(update(_deliveries).where(*this_attempt).values(sent_count=sent, updated_at=now))
            # Unless a report already settled it (on this association or another) while we were sending.
            conn.execute(
                update(_deliveries).where(*this_attempt, _deliveries.c.state == DeliveryState.PENDING)
                .values(state=DeliveryState.AWAITING_COMMITMENT, next_attempt_at=commitment_deadline)
            )
        _settle_job(conn, _job_of(conn, delivery_id))


def record_failure(engine: Engine, delivery_id: int, error: str, retry_at: datetime | None) -> None:
    """An attempt failed: retry at ``retry_at``, or give up when it is ``None``."""
    now = utcnow()
    with write_transaction(engine) as conn:
        values: dict[str, object] = {"last_error": error, "updated_at": now, "commitment_uid": None}
        if retry_at is None:
            values |= {"state": DeliveryState.FAILED, "finished_at": now, "next_attempt_at": None}
        else:
            values |= {"state": DeliveryState.PENDING, "next_attempt_at": retry_at}
        conn.execute(update(_deliveries).where(_deliveries.c.id == delivery_id).values(**values))
        _settle_job(conn, _job_of(conn, delivery_id))


def begin_commitment(engine: Engine, delivery_id: int, transaction_uid: str) -> None:
    """Note this attempt's transaction UID before the request goes out, so that an early report finds its delivery.

    The UID of an earlier attempt is forgotten: a report on it is no longer accepted.
    """
    with write_transaction(engine) as conn:
        conn.execute(
            update(_deliveries).where(_deliveries.c.id == delivery_id).values(commitment_uid=transaction_uid, last_error=None)
        )


def note_refused_report(engine: Engine, delivery_id: int, transaction_uid: str, why: str) -> None:
    """Keep why a report on the current attempt was refused (shown if no acceptable report comes); the state stays."""
    with write_transaction(engine) as conn:
        conn.execute(
            update(_deliveries)
            .where(_deliveries.c.id == delivery_id, _deliveries.c.commitment_uid == transaction_uid, _deliveries.c.state.in_(_OPEN))
            .values(last_error=why[:1000])
        )


def awaiting_commitment(engine: Engine, transaction_uid: str) -> DueDelivery | None:
    """The delivery waiting for the Storage Commitment report of ``transaction_uid``, if any."""
    with read_transaction(engine) as conn:
        r = conn.execute(
            select(_deliveries).where(and_(_deliveries.c.commitment_uid == transaction_uid, _deliveries.c.state.in_(_OPEN)))
        ).one_or_none()
    if r is None:
        return None
    return DueDelivery(
        id=r.id, job_id=r.job_id, destination=r.destination, variant=r.variant, state=r.state, attempts=r.attempts,
        storage_commitment=r.storage_commitment, commitment_uid=r.commitment_uid, created_at=as_utc(r.created_at),
        last_error=r.last_error,
    )


def record_committed(engine: Engine, delivery_id: int, transaction_uid: str) -> bool:
    """The peer confirmed it keeps every object; ``False`` if the delivery no longer awaits that report."""
    now = utcnow()
    with write_transaction(engine) as conn:
        n = conn.execute(
            update(_deliveries)
            .where(_deliveries.c.id == delivery_id, _deliveries.c.commitment_uid == transaction_uid,
                   _deliveries.c.state.in_(_OPEN))
            .values(state=DeliveryState.DONE, finished_at=now, next_attempt_at=None, last_error=None, updated_at=now)
        ).rowcount
        if n:
            _settle_job(conn, _job_of(conn, delivery_id))
    return n == 1


def _job_of(conn: Connection, delivery_id: int) -> int:
    return int(conn.execute(select(_deliveries.c.job_id).where(_deliveries.c.id == delivery_id)).scalar_one())


def reset_deliveries(engine: Engine, job_id: int) -> int:
    """Send every delivery of a job again from the first attempt (``dicomnode retry``).  Returns how many."""
    now = utcnow()
    with write_transaction(engine) as conn:
        n = conn.execute(
            update(_deliveries).where(_deliveries.c.job_id == job_id).values(
                state=DeliveryState.PENDING, attempts=0, next_attempt_at=now, commitment_uid=None,
                finished_at=None, updated_at=now,
            )
        ).rowcount
        if n:
            conn.execute(
                update(_jobs).where(_jobs.c.id == job_id).values(state=JobState.DELIVERING, stage=Stage.DELIVER)
            )
    return int(n)


@dataclass(frozen=True)
class DeliveryRow(Row):
    """A delivery, for listings."""

    id: int
    job_id: int
    destination: str
    state: str
    attempts: int
    sent_count: int
    last_error: str | None
    next_attempt_at: datetime | None
    finished_at: datetime | None


def list_deliveries(engine: Engine, job_id: int | None = None, limit: int = 100) -> list[DeliveryRow]:
    """Recent deliveries, newest first (or those of one job)."""
    cols = [_deliveries.c[k] for k in DeliveryRow.__dataclass_fields__]
    stmt = select(*cols).order_by(_deliveries.c.id.desc()).limit(limit)
    if job_id is not None:
        stmt = stmt.where(_deliveries.c.job_id == job_id)
    with read_transaction(engine) as conn:
        rows = conn.execute(stmt).all()
    values: list[dict[str, Any]] = [{k: as_utc(v) if isinstance(v, datetime) else v for k, v in r._asdict().items()} for r in rows]
    return [DeliveryRow(**v) for v in values]
