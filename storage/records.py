"""Recording received instances and completing series, in single transactions.

These are the receiver's hot path, so they use SQLAlchemy Core statements
rather than the ORM: about four statements and one commit per instance.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, Integer, bindparam, case, func, select, update

from storage.database import as_utc, insert, read_transaction, write_transaction
from storage.models import Instance, Job, JobState, Series, SeriesState, utcnow

_series = Series.__table__
_instances = Instance.__table__
_jobs = Job.__table__


@dataclass(frozen=True)
class InstanceRecord:
    """What the database keeps about one received instance (no pixel data)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    crc32: int
    assoc_uid: str
    calling_ae: str | None = None
    patient_id: str | None = None
    modality: str | None = None
    body_part: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    acquisition_number: int | None = None
    temporal_position: int | None = None
    number_of_frames: int = 1
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, ...] | None = None
    expected_count: int | None = None
    temporal_positions: int | None = None
    received_at: datetime = field(default_factory=utcnow)


class RecordOutcome(str, enum.Enum):
    """What recording an instance did."""

    NEW = "new"  # a SOP instance not seen before
    DUPLICATE = "duplicate"  # the same SOP instance with the same bytes: nothing changed
    REPLACED = "replaced"  # the same SOP instance UID with different bytes: the new copy wins


@dataclass(frozen=True)
class RecordResult:
    """Outcome of :func:`record_instance`."""

    outcome: RecordOutcome
    series_id: int
    reopened: bool  # the series had been completed and now receives again


class _Statements:
    """Statements of the hot path, built once per dialect (building them costs more than running them)."""

    def __init__(self, engine: Engine) -> None:
        ins = insert(engine, _series)
        self.insert_series = ins.on_conflict_do_nothing(index_elements=["series_uid"])
        self.select_series = select(_series.c.id, _series.c.state).where(_series.c.series_uid == bindparam("uid"))
        # RETURNING tells whether the row was inserted on every driver
        # (psycopg reports no rowcount for INSERT .. ON CONFLICT DO NOTHING).
        self.insert_instance = (
            insert(engine, _instances).on_conflict_do_nothing(index_elements=["sop_uid"]).returning(_instances.c.id)
        )
        self.select_instance = select(_instances.c.series_id, _instances.c.size, _instances.c.crc32).where(
            _instances.c.sop_uid == bindparam("uid")
        )
        self.count_duplicate = (
            update(_instances)
            .where(_instances.c.sop_uid == bindparam("uid"))
            .values(duplicates=_instances.c.duplicates + 1)
        )
        self.bump_series = (
            update(_series)
            .where(_series.c.id == bindparam("sid"))
            .values(
                instance_count=_series.c.instance_count + bindparam("added", type_=Integer),
                last_received_at=bindparam("now", type_=_series.c.last_received_at.type),
                state=SeriesState.RECEIVING.value,
                reopen_count=_series.c.reopen_count
                + case((_series.c.state == SeriesState.COMPLETE.value, 1), else_=0),
                expected_count=func.coalesce(_series.c.expected_count, bindparam("expected", type_=Integer)),
                temporal_positions=func.coalesce(_series.c.temporal_positions, bindparam("temporal", type_=Integer)),
            )
        )
        self.decrement_series = (
            update(_series).where(_series.c.id == bindparam("sid")).values(instance_count=_series.c.instance_count - 1)
        )


_STATEMENTS: dict[int, _Statements] = {}


def _statements(engine: Engine) -> _Statements:
    st = _STATEMENTS.get(id(engine))
    if st is None:
        st = _STATEMENTS[id(engine)] = _Statements(engine)
    return st


def find_instance(engine: Engine, sop_uid: str) -> tuple[int, int, int] | None:
    """``(series_id, size, crc32)`` of a stored SOP instance, or ``None``."""
    with read_transaction(engine) as conn:
        row = conn.execute(_statements(engine).select_instance, {"uid": sop_uid}).one_or_none()
    return None if row is None else (row.series_id, row.size, row.crc32)


def record_instance(engine: Engine, rec: InstanceRecord) -> RecordResult:
    """Record ``rec`` idempotently, in one committed transaction.

    A new SOP instance increments the series' count.  A byte-identical re-send
    changes nothing but a duplicate counter.  An instance that arrives for a
    completed series re-opens it, so that a new job version follows.

    Raises
    ------
    storage.errors.DatabaseError
        The write failed; nothing was committed.
    """
    st = _statements(engine)
    now = rec.received_at
    with write_transaction(engine) as conn:
        row = conn.execute(st.select_series, {"uid": rec.series_uid}).one_or_none()
        if row is None:
            conn.execute(
                st.insert_series,
                dict(
                    series_uid=rec.series_uid,
                    study_uid=rec.study_uid,
                    patient_id=rec.patient_id,
                    modality=rec.modality,
                    sop_class_uid=rec.sop_class_uid,
                    body_part=rec.body_part,
                    series_description=rec.series_description,
                    series_number=rec.series_number,
                    calling_ae=rec.calling_ae,
                    state=SeriesState.RECEIVING.value,
                    version=0,
                    instance_count=0,
                    expected_count=rec.expected_count,
                    temporal_positions=rec.temporal_positions,
                    reopen_count=0,
                    first_received_at=now,
                    last_received_at=now,
                ),
            )
            row = conn.execute(st.select_series, {"uid": rec.series_uid}).one()
        series_id, state = row
        values = dict(
            series_id=series_id,
            sop_uid=rec.sop_uid,
            sop_class_uid=rec.sop_class_uid,
            transfer_syntax_uid=rec.transfer_syntax_uid,
            path=rec.path,
            size=rec.size,
            crc32=rec.crc32,
            instance_number=rec.instance_number,
            acquisition_number=rec.acquisition_number,
            temporal_position=rec.temporal_position,
            number_of_frames=rec.number_of_frames,
            pos_x=rec.position[0] if rec.position else None,
            pos_y=rec.position[1] if rec.position else None,
            pos_z=rec.position[2] if rec.position else None,
            orientation=list(rec.orientation) if rec.orientation else None,
            assoc_uid=rec.assoc_uid,
            calling_ae=rec.calling_ae,
            received_at=now,
            duplicates=0,
        )
        added = 1
        if conn.execute(st.insert_instance, values).first() is not None:
            outcome = RecordOutcome.NEW
        else:
            old_series, old_size, old_crc = conn.execute(st.select_instance, {"uid": rec.sop_uid}).one()
            if old_series == series_id and old_size == rec.size and old_crc == rec.crc32:
                conn.execute(st.count_duplicate, {"uid": rec.sop_uid})
                return RecordResult(RecordOutcome.DUPLICATE, series_id, reopened=False)
            outcome = RecordOutcome.REPLACED
            values.pop("duplicates")
            conn.execute(update(_instances).where(_instances.c.sop_uid == rec.sop_uid).values(**values))
            if old_series != series_id:  # the UID moved to another series: fix both counts
                conn.execute(st.decrement_series, {"sid": old_series})
            else:
                added = 0
        conn.execute(
            st.bump_series,
            {
                "sid": series_id,
                "added": added,
                "now": now,
                "expected": rec.expected_count,
                "temporal": rec.temporal_positions,
            },
        )
    return RecordResult(outcome, series_id, reopened=state == SeriesState.COMPLETE.value)


@dataclass(frozen=True)
class OpenSeries:
    """A series that is still receiving, as the completion monitor sees it."""

    id: int
    instance_count: int
    expected_count: int | None
    temporal_positions: int | None
    last_received_at: datetime
    version: int


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
            ).where(_series.c.state == SeriesState.RECEIVING.value)
        ).all()
    return [
        OpenSeries(r.id, r.instance_count, r.expected_count, r.temporal_positions, as_utc(r.last_received_at), r.version)
        for r in rows
    ]


@dataclass(frozen=True)
class InstanceGeometry:
    """Per-instance facts used to judge whether a series is complete."""

    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    temporal_position: int | None
    acquisition_number: int | None
    number_of_frames: int
    assoc_uid: str


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
    reason: str,
    detail: str | None = None,
) -> int | None:
    """Mark a series complete and queue exactly one job for its new version.

    The update is conditional on the series still being in the state the
    caller judged (same instance count and last arrival), so an instance that
    arrives meanwhile wins and the series stays open.

    Returns
    -------
    int or None
        The new job's id, or ``None`` if the series changed or was already complete.
    """
    now = utcnow()
    with write_transaction(engine) as conn:
        row = conn.execute(
            select(_series.c.state, _series.c.instance_count, _series.c.last_received_at, _series.c.version).where(
                _series.c.id == series_id
            )
        ).one_or_none()
        if (
            row is None
            or row.state != SeriesState.RECEIVING.value
            or row.instance_count != seen_count
            or as_utc(row.last_received_at) != as_utc(seen_last_received_at)
        ):
            return None
        version = row.version + 1
        updated = conn.execute(
            update(_series)
            .where(_series.c.id == series_id, _series.c.state == SeriesState.RECEIVING.value, _series.c.version == row.version)
            .values(
                state=SeriesState.COMPLETE.value,
                version=version,
                completed_at=now,
                completion_reason=reason,
                completion_detail=detail,
            )
        ).rowcount
        if updated != 1:
            return None
        job_id = conn.execute(
            insert(conn, _jobs)
            .values(
                series_id=series_id,
                version=version,
                state=JobState.QUEUED.value,
                priority=0,
                completion_reason=reason,
                instance_count=seen_count,
                created_at=now,
                attempts=0,
            )
            .returning(_jobs.c.id)
        ).scalar_one()
    return int(job_id)


@dataclass(frozen=True)
class JobRow:
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


def list_jobs(engine: Engine, *, state: str | None = None, limit: int = 50, job_id: int | None = None) -> list[JobRow]:
    """The most recent jobs first, optionally only those in ``state`` (or only job ``job_id``)."""
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


def instance_paths(engine: Engine, series_id: int) -> Sequence[str]:
    """Relative paths of the stored files of a series."""
    with read_transaction(engine) as conn:
        return list(conn.execute(select(_instances.c.path).where(_instances.c.series_id == series_id)).scalars())


@dataclass(frozen=True)
class SeriesRow:
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
