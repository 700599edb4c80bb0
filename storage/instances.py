"""Recording received instances, in one transaction each: the receiver's hot path.

These use SQLAlchemy Core statements rather than the ORM, prebuilt once per
dialect: about four statements and one commit per instance.

Patients are never mixed: a Series Instance UID already stored for another
study or patient, or a SOP Instance UID already stored in another study or
patient's series, is refused (:class:`UidConflictError`) inside the same
transaction, before anything changes.  A SOP instance that moves to another
series of the same patient and study replaces the earlier copy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Engine, Integer, bindparam, case, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from storage.database import insert, write_transaction
from storage.errors import DatabaseError, StorageError
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


class ConflictKind(enum.StrEnum):
    """Which UID collided with another patient's or study's data."""

    SOP = "sop"  # the SOP Instance UID is stored in a series of another study or patient
    SERIES = "series"  # the Series Instance UID is stored for another study or patient


class UidConflictError(StorageError):
    """An instance's UID is already stored for another patient or study: refused, nothing changed.

    The message names no UID and no patient attribute (it reaches logs).

    Attributes
    ----------
    kind : ConflictKind
        The colliding UID.
    series_id : int
        The node's number of the series that already holds the UID.
    """

    def __init__(self, kind: ConflictKind, series_id: int) -> None:
        what = "SOP Instance UID" if kind is ConflictKind.SOP else "Series Instance UID"
        super().__init__(f"{what} already stored in series {series_id} of another patient or study")
        self.kind, self.series_id = kind, series_id


class NotADuplicate(StorageError):
    """The stored copy changed since the caller looked: it must write the instance after all."""


class KnownInstance(NamedTuple):
    """What :func:`find_instance` tells about a stored SOP instance."""

    series_id: int
    size: int
    crc32: int
    path: str


@dataclass(frozen=True)
class RecordResult:
    """Outcome of :func:`record_instance`."""

    outcome: RecordOutcome
    series_id: int
    reopened: bool  # the series had been completed and now receives again
    path: str = ""  # the file the row names after the commit
    # The file the row named before (a replaced instance's previous copy): the caller removes it
    # once its new file is durable; ``None`` when nothing is to be removed.
    old_path: str | None = None


def _other_owner(study_uid: str, patient_id: str | None, rec: InstanceRecord) -> bool:
    """Stored data of another study or patient than ``rec`` (a missing PatientID counts as a different one)."""
    return study_uid != rec.study_uid or (patient_id or "").strip() != (rec.patient_id or "").strip()


class _Statements:
    """Statements of the hot path, built once per dialect (building them costs more than running them)."""

    def __init__(self, engine: Engine) -> None:
        ins = insert(engine, _series)
        self.insert_series = ins.on_conflict_do_nothing(index_elements=["series_uid"])
        self.select_series = select(_series.c.id, _series.c.state, _series.c.study_uid, _series.c.patient_id).where(
            _series.c.series_uid == bindparam("uid")
        )
        # RETURNING tells whether the row was inserted on every driver
        # (psycopg reports no rowcount for INSERT .. ON CONFLICT DO NOTHING).
        self.insert_instance = (
            insert(engine, _instances).on_conflict_do_nothing(index_elements=["sop_uid"]).returning(_instances.c.id)
        )
        self.select_instance = select(_instances.c.series_id, _instances.c.size, _instances.c.crc32, _instances.c.path).where(
            _instances.c.sop_uid == bindparam("uid")
        )
        # The receiver's per-instance look-up runs on the DBAPI connection itself: about 10 µs instead of
        # 150 µs through SQLAlchemy (it precedes every write, new instances included).
        compiled = self.select_instance.compile(dialect=engine.dialect)
        self.find_sql = compiled.string
        self.find_positional = bool(compiled.positiontup)
        self.select_owner = (
            select(_instances.c.series_id, _instances.c.size, _instances.c.crc32, _instances.c.path, _series.c.study_uid, _series.c.patient_id)
            .join(_series, _series.c.id == _instances.c.series_id)
            .where(_instances.c.sop_uid == bindparam("uid"))
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


def find_instance(engine: Engine, sop_uid: str) -> KnownInstance | None:
    """Series, size, CRC and file of a stored SOP instance, or ``None``.

    Raises
    ------
    storage.errors.DatabaseError
        The database could not be read.
    """
    st = _statements(engine)
    params: tuple[str] | dict[str, str] = (sop_uid,) if st.find_positional else {"uid": sop_uid}
    try:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                cur.execute(st.find_sql, params)
                row = cur.fetchone()
            finally:
                cur.close()
        finally:
            raw.close()  # back to the pool (which rolls back PostgreSQL's implicit transaction)
    except (SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as exc:
        raise DatabaseError(f"database read failed: {exc.__class__.__name__}") from exc
    return None if row is None else KnownInstance(*row)


def repoint_instance(engine: Engine, sop_uid: str, old_path: str, new_path: str) -> bool:
    """Make the row of ``sop_uid`` name ``new_path`` instead of ``old_path`` (a same-content copy whose file was gone).

    ``False`` when the row no longer names ``old_path`` (it changed or was purged meanwhile).
    """
    with write_transaction(engine) as conn:
        n = conn.execute(
            update(_instances).where(_instances.c.sop_uid == sop_uid, _instances.c.path == old_path).values(path=new_path)
        ).rowcount
    return n == 1


def record_instance(engine: Engine, rec: InstanceRecord, *, written: bool = True) -> RecordResult:
    """Record ``rec`` idempotently, in one committed transaction.

    A new SOP instance increments the series' count.  A byte-identical re-send
    changes nothing but a duplicate counter.  An instance that arrives for a
    completed series re-opens it, so that a new job version follows.  A
    changed re-send points the row at ``rec.path`` and returns the file it
    named before in :attr:`RecordResult.old_path`, for the caller to remove
    after the commit (never before: until then the old copy is the stored one).

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The database.
    rec : InstanceRecord
        The instance; ``rec.path`` is a file name never used before, unless ``written`` is false.
    written : bool
        ``False``: the caller wrote nothing and expects a byte-identical copy
        stored at ``rec.path``; anything else raises :class:`NotADuplicate`
        (nothing changed).

    Raises
    ------
    UidConflictError
        The series or SOP instance UID is stored for another study or patient; nothing changed.
    NotADuplicate
        ``written`` is false and the stored copy is not (or no longer) this one.
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
        series_id, state = row.id, row.state
        if _other_owner(row.study_uid, row.patient_id, rec):  # (also when another writer inserted it just now)
            raise UidConflictError(ConflictKind.SERIES, series_id)
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
        old_path: str | None = None
        if not written:  # a re-send the caller believes stored already: only ever a duplicate (no INSERT)
            old = conn.execute(st.select_owner, {"uid": rec.sop_uid}).one_or_none()
            if old is None or (old.series_id, old.size, old.crc32, old.path) != (series_id, rec.size, rec.crc32, rec.path):
                raise NotADuplicate("the stored copy changed meanwhile")
            conn.execute(st.count_duplicate, {"uid": rec.sop_uid})
            return RecordResult(RecordOutcome.DUPLICATE, series_id, reopened=False, path=old.path)
        if conn.execute(st.insert_instance, values).first() is not None:  # new: no further round trip
            outcome = RecordOutcome.NEW
        else:
            old = conn.execute(st.select_owner, {"uid": rec.sop_uid}).one()
            if old.series_id != series_id and _other_owner(old.study_uid, old.patient_id, rec):
                raise UidConflictError(ConflictKind.SOP, old.series_id)
            if old.series_id == series_id and old.size == rec.size and old.crc32 == rec.crc32:
                conn.execute(st.count_duplicate, {"uid": rec.sop_uid})
                return RecordResult(RecordOutcome.DUPLICATE, series_id, reopened=False, path=old.path)
            outcome = RecordOutcome.REPLACED
            old_path = old.path if old.path != rec.path else None
            values.pop("duplicates")
            conn.execute(update(_instances).where(_instances.c.sop_uid == rec.sop_uid).values(**values))
            if old.series_id != series_id:  # the UID moved to another series of the same patient and study
                conn.execute(st.decrement_series, {"sid": old.series_id})
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
    return RecordResult(outcome, series_id, reopened=state == SeriesState.COMPLETE, path=rec.path, old_path=old_path)
