"""Recording received instances, in one transaction each: the receiver's hot path.

These use SQLAlchemy Core statements rather than the ORM, prebuilt once per
dialect: about four statements and one commit per instance.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, Integer, bindparam, case, func, select, update

from storage.database import insert, read_transaction, write_transaction
from storage.models import Instance, Series, table_of, utcnow
from storage.states import SeriesState

_series = table_of(Series)
_instances = table_of(Instance)


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
    study_description: str | None = None
    protocol_name: str | None = None
    image_type: str | None = None
    slice_thickness: float | None = None
    kernel: str | None = None
    frame_of_reference_uid: str | None = None
    received_at: datetime = field(default_factory=utcnow)


class RecordOutcome(enum.StrEnum):
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
                state=SeriesState.RECEIVING,
                reopen_count=_series.c.reopen_count
                + case((_series.c.state == SeriesState.COMPLETE, 1), else_=0),
                expected_count=func.coalesce(_series.c.expected_count, bindparam("expected", type_=Integer)),
                temporal_positions=func.coalesce(_series.c.temporal_positions, bindparam("temporal", type_=Integer)),
            )
        )
        self.decrement_series = (
            update(_series).where(_series.c.id == bindparam("sid")).values(instance_count=_series.c.instance_count - 1)
        )


# Keyed by dialect name, not by id(engine): an id can be reused by a new engine
# after the old one is garbage-collected, and the statements depend only on the dialect.
_STATEMENTS: dict[str, _Statements] = {}


def _statements(engine: Engine) -> _Statements:
    name = engine.dialect.name
    st = _STATEMENTS.get(name)
    if st is None:
        st = _STATEMENTS[name] = _Statements(engine)
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
                    study_description=rec.study_description,
                    protocol_name=rec.protocol_name,
                    image_type=rec.image_type,
                    slice_thickness=rec.slice_thickness,
                    kernel=rec.kernel,
                    frame_of_reference_uid=rec.frame_of_reference_uid,
                    series_number=rec.series_number,
                    calling_ae=rec.calling_ae,
                    state=SeriesState.RECEIVING,
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
    return RecordResult(outcome, series_id, reopened=state == SeriesState.COMPLETE)
