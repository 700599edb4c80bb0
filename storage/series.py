"""Series as the completion monitor sees them, and completing one with its job in one transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, select, update

from storage.database import as_utc, insert, read_transaction, write_transaction
from storage.models import Instance, Job, Series, table_of, utcnow
from storage.facts import SeriesFacts as SeriesFacts  # re-exported: it needs no database
from storage.states import CompletionReason, JobState, SeriesState


_series = table_of(Series)
_instances = table_of(Instance)
_jobs = table_of(Job)


@dataclass(frozen=True)
class OpenSeries:
    """A series that is still receiving, as the completion monitor sees it."""

    id: int
    instance_count: int
    expected_count: int | None
    temporal_positions: int | None
    last_received_at: datetime
    version: int
    incomplete_evidence: str | None = None  # a refused instance or an aborted association


def open_series(engine: Engine) -> list[OpenSeries]:
    """All series in state ``receiving``."""
    with read_transaction(engine) as conn:
        rows = conn.execute(
            select(
                _series.c.id,
                _series.c.instance_count,
                _series.c.expected_count,
                _series.c.temporal_positions,
                _series.c.last_received_at,
                _series.c.version,
                _series.c.incomplete_evidence,
            ).where(_series.c.state == SeriesState.RECEIVING)
        ).all()
    return [
        OpenSeries(
            r.id, r.instance_count, r.expected_count, r.temporal_positions, as_utc(r.last_received_at), r.version,
            r.incomplete_evidence,
        )
        for r in rows
    ]


def note_incomplete(engine: Engine, *, series_uid: str | None = None, series_ids: Sequence[int] = (), evidence: str | None) -> int:
    """Record (or, with ``evidence=None``, clear) why a receiving series may be missing instances.

    Returns how many series rows changed (0 when the series is not known yet).
    """
    cond = _series.c.series_uid == series_uid if series_uid is not None else _series.c.id.in_(list(series_ids))
    if evidence is None:  # clearing: only the rows that have some (a clean release is the common case)
        cond = and_(cond, _series.c.incomplete_evidence.is_not(None))
    with write_transaction(engine) as conn:
        return int(conn.execute(update(_series).where(cond, _series.c.state == SeriesState.RECEIVING)
                                .values(incomplete_evidence=evidence)).rowcount)


@dataclass(frozen=True)
class InstanceGeometry:
    """Per-instance facts used to judge whether a series is complete."""

    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    temporal_position: int | None
    acquisition_number: int | None
    number_of_frames: int
    assoc_uid: str

    @property
    def echo_number(self) -> int | None:
        """Not recorded: echoes are told apart when the volume is built from the files."""
        return None

    @property
    def label(self) -> str:
        """How a message names this image (no UIDs)."""
        return "an instance"


_FACTS = tuple(SeriesFacts.__dataclass_fields__)


def series_geometry(engine: Engine, series_id: int) -> list[InstanceGeometry]:
    """Geometry of every instance of a series (no file access)."""
    with read_transaction(engine) as conn:
        rows = conn.execute(
            select(
                _instances.c.pos_x,
                _instances.c.pos_y,
                _instances.c.pos_z,
                _instances.c.orientation,
                _instances.c.temporal_position,
                _instances.c.acquisition_number,
                _instances.c.number_of_frames,
                _instances.c.assoc_uid,
            ).where(_instances.c.series_id == series_id)
        ).all()
    return [
        InstanceGeometry(
            position=(r.pos_x, r.pos_y, r.pos_z) if r.pos_x is not None else None,
            orientation=tuple(r.orientation) if r.orientation else None,
            temporal_position=r.temporal_position,
            acquisition_number=r.acquisition_number,
            number_of_frames=r.number_of_frames,
            assoc_uid=r.assoc_uid,
        )
        for r in rows
    ]


def complete_series(
    engine: Engine,
    series_id: int,
    *,
    seen_count: int,
    seen_last_received_at: datetime,
    reason: CompletionReason,
    detail: str | None = None,
    priority: Callable[[SeriesFacts], int] | None = None,
) -> int | None:
    """Mark a series complete and queue exactly one job for its new version.

    The update is conditional on the series still being in the state the
    caller judged (same instance count and last arrival), so an instance that
    arrives meanwhile wins and the series stays open.

    Parameters
    ----------
    priority : callable, optional
        The job's priority from the series' routing facts (higher runs
        first; default 0).  It is decided and written in the same
        transaction that queues the job, so a worker never claims an urgent
        job as a routine one.

    Returns
    -------
    int or None
        The new job's id, or ``None`` if the series changed or was already complete.
    """
    now = utcnow()
    with write_transaction(engine) as conn:
        row = conn.execute(
            select(
                _series.c.state, _series.c.instance_count, _series.c.last_received_at, _series.c.version,
                *(_series.c[c] for c in _FACTS),
            ).where(_series.c.id == series_id)
        ).one_or_none()
        if (
            row is None
            or row.state != SeriesState.RECEIVING
            or row.instance_count != seen_count
            or as_utc(row.last_received_at) != as_utc(seen_last_received_at)
        ):
            return None
        version = row.version + 1
        updated = conn.execute(
            update(_series)
            .where(_series.c.id == series_id, _series.c.state == SeriesState.RECEIVING, _series.c.version == row.version)
            .values(
                state=SeriesState.COMPLETE,
                version=version,
                completed_at=now,
                completion_reason=reason,
                completion_detail=detail,
                incomplete_evidence=None,  # it is in the detail now; a re-opened series starts afresh
            )
        ).rowcount
        if updated != 1:
            return None
        job_id = conn.execute(
            insert(conn, _jobs)
            .values(
                series_id=series_id,
                version=version,
                state=JobState.QUEUED,
                priority=priority(SeriesFacts(*(getattr(row, c) for c in _FACTS))) if priority is not None else 0,
                completion_reason=reason,
                instance_count=seen_count,
                created_at=now,
                attempts=0,
            )
            .returning(_jobs.c.id)
        ).scalar_one()
    return int(job_id)
