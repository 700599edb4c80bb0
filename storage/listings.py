"""Jobs and series for people: the ``jobs`` command, the status page and its JSON API (no patient data, no UIDs)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from storage.database import as_utc, read_transaction
from storage.models import Fetch, Job, Series, table_of
from storage.private_fields import is_private_field as is_private_field  # re-exported: it needs no database

_series = table_of(Series)
_jobs = table_of(Job)
_fetches = table_of(Fetch)


class Row:
    """A listing row that turns itself into JSON-ready values (datetimes as ISO 8601), without identifiers."""

    def as_json(self) -> dict[str, Any]:
        """The row's fields, with datetimes as ISO 8601 strings; UIDs, paths and patient attributes are left out."""
        return {
            k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in vars(self).items() if not is_private_field(k)
        }


@dataclass(frozen=True)
class JobRow(Row):
    """A job joined with its series, for listings."""

    id: int
    series_id: int
    version: int
    state: str
    completion_reason: str
    instance_count: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    error: str | None
    modality: str | None
    series_description: str | None
    calling_ae: str | None
    stage: str | None = None
    model: str | None = None
    worker: str | None = None
    timings: dict[str, float] | None = None
    selection: str | None = None  # "chosen" or "skipped" within its study
    selection_reason: str | None = None
    fetched_from: str | None = None  # the source its study was fetched from (dicomnode fetch), if it was


def list_jobs(engine: Engine, *, state: str | None = None, limit: int = 50, job_id: int | None = None) -> list[JobRow]:
    """The most recent jobs first, optionally only those in ``state`` (or only job ``job_id``)."""
    fetched = (  # the latest fetch of the job's study asked for before the job was created
        select(_fetches.c.source)
        .where(_fetches.c.study_uid == _series.c.study_uid, _fetches.c.requested_at <= _jobs.c.created_at)
        .order_by(_fetches.c.id.desc()).limit(1).scalar_subquery()
    )
    stmt = (
        select(
            _jobs.c.id,
            _jobs.c.series_id,
            _jobs.c.version,
            _jobs.c.state,
            _jobs.c.completion_reason,
            _jobs.c.instance_count,
            _jobs.c.created_at,
            _jobs.c.started_at,
            _jobs.c.finished_at,
            _jobs.c.attempts,
            _jobs.c.error,
            _series.c.modality,
            _series.c.series_description,
            _series.c.calling_ae,
            _jobs.c.stage,
            _jobs.c.model,
            _jobs.c.worker,
            _jobs.c.timings,
            _series.c.selection,
            _series.c.selection_reason,
            fetched.label("fetched_from"),
        )
        .join(_series, _series.c.id == _jobs.c.series_id)
        .order_by(_jobs.c.id.desc())
        .limit(limit)
    )
    if state:
        stmt = stmt.where(_jobs.c.state == state)
    if job_id is not None:
        stmt = stmt.where(_jobs.c.id == job_id)
    with read_transaction(engine) as conn:
        rows = conn.execute(stmt).all()
    return [
        JobRow(
            **{
                **r._asdict(),
                "created_at": as_utc(r.created_at),
                "started_at": as_utc(r.started_at) if r.started_at else None,
                "finished_at": as_utc(r.finished_at) if r.finished_at else None,
            }
        )
        for r in rows
    ]


@dataclass(frozen=True)
class SeriesRow(Row):
    """A series, for listings (no patient data)."""

    id: int
    modality: str | None
    body_part: str | None
    series_description: str | None
    calling_ae: str | None
    state: str
    version: int
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    completion_reason: str | None


def list_series(engine: Engine, limit: int = 50) -> list[SeriesRow]:
    """The most recently received series first."""
    cols = [_series.c[k] for k in SeriesRow.__dataclass_fields__]
    with read_transaction(engine) as conn:
        rows = conn.execute(select(*cols).order_by(_series.c.last_received_at.desc()).limit(limit)).all()
    return [
        SeriesRow(**{**r._asdict(), "first_received_at": as_utc(r.first_received_at), "last_received_at": as_utc(r.last_received_at)})
        for r in rows
    ]
