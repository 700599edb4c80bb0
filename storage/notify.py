"""The notification outbox: one row per job that ended and notify target, sent with retries like deliveries.

Jobs are not changed to announce themselves: :func:`queue_new` looks for jobs
that reached an end state (done; failed or delivery_failed) since the target
was first seen, and adds one row per job and target (a unique constraint
makes it idempotent, so several notifiers may run).  A target configured
later is not flooded with the past: it hears of jobs that end after it was
first seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, select, update

from storage.database import as_utc, insert, read_transaction, write_transaction
from storage.models import Job, Notification, NotifyTarget, table_of, utcnow
from storage.states import JobState

_jobs = table_of(Job)
_notes = table_of(Notification)
_targets = table_of(NotifyTarget)
EVENTS = {JobState.DONE.value: "done", JobState.FAILED.value: "failed", JobState.DELIVERY_FAILED.value: "failed"}
PENDING, DONE, FAILED = "pending", "done", "failed"


@dataclass(frozen=True)
class DueNotification:
    """A notification whose attempt is due (claimed: its lease keeps other notifiers off it)."""

    id: int
    job_id: int
    target: str
    event: str
    attempts: int  # including this one


@dataclass(frozen=True)
class NotificationRow:
    """A notification as listings show it."""

    job_id: int
    target: str
    event: str
    state: str
    attempts: int
    last_error: str | None


def queue_new(engine: Engine, targets: Sequence[tuple[str, Sequence[str]]], limit: int = 200) -> int:
    """Add a row for each job that ended since each target was first seen, with an event the target wants.

    ``targets`` are (name, events) with events among ``done`` and ``failed``.
    Returns how many rows were added.
    """
    added = 0
    now = utcnow()
    with write_transaction(engine) as conn:
        for name, events in targets:
            conn.execute(insert(conn, _targets).values(name=name, since=now).on_conflict_do_nothing(index_elements=["name"]))
            since = as_utc(conn.execute(select(_targets.c.since).where(_targets.c.name == name)).scalar_one())
            states = [s for s, e in EVENTS.items() if e in events]
            if not states:
                continue
            rows = conn.execute(
                select(_jobs.c.id, _jobs.c.state)
                .select_from(_jobs.outerjoin(_notes, and_(_notes.c.job_id == _jobs.c.id, _notes.c.target == name)))
                .where(_jobs.c.state.in_(states), _jobs.c.finished_at >= since, _notes.c.id.is_(None))
                .order_by(_jobs.c.id).limit(limit)
            ).all()
            for r in rows:
                res = conn.execute(
                    insert(conn, _notes).values(
                        job_id=r.id, target=name, event=EVENTS[r.state], state=PENDING, attempts=0, next_attempt_at=now, created_at=now,
                    ).on_conflict_do_nothing(index_elements=["job_id", "target"])
                )
                added += res.rowcount or 0
    return added


def claim_due(engine: Engine, lease_seconds: float, limit: int = 8) -> list[DueNotification]:
    """Claim notifications whose attempt is due, oldest first."""
    now = utcnow()
    out = []
    with write_transaction(engine) as conn:
        stmt = (
            select(_notes).where(_notes.c.state == PENDING, _notes.c.next_attempt_at <= now)
            .order_by(_notes.c.next_attempt_at, _notes.c.id).limit(limit)
        )
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        for r in conn.execute(stmt).all():
            conn.execute(update(_notes).where(_notes.c.id == r.id).values(
                next_attempt_at=now + timedelta(seconds=lease_seconds), attempts=r.attempts + 1,
            ))
            out.append(DueNotification(r.id, r.job_id, r.target, r.event, r.attempts + 1))
    return out


def record_done(engine: Engine, note_id: int) -> None:
    """The target took the notification."""
    with write_transaction(engine) as conn:
        conn.execute(update(_notes).where(_notes.c.id == note_id).values(state=DONE, finished_at=utcnow(), last_error=None))


def record_failure(engine: Engine, note_id: int, error: str, retry_at: datetime | None) -> None:
    """An attempt failed: try again at ``retry_at``, or give up (``None``)."""
    values: dict[str, object] = {"last_error": error, "next_attempt_at": retry_at}
    if retry_at is None:
        values.update(state=FAILED, finished_at=utcnow())
    with write_transaction(engine) as conn:
        conn.execute(update(_notes).where(_notes.c.id == note_id).values(**values))


def notifications_of(engine: Engine, job_id: int) -> list[NotificationRow]:
    """The notifications of a job, by target."""
    with read_transaction(engine) as conn:
        rows = conn.execute(select(_notes).where(_notes.c.job_id == job_id).order_by(_notes.c.target)).all()
    return [NotificationRow(r.job_id, r.target, r.event, r.state, r.attempts, r.last_error) for r in rows]
