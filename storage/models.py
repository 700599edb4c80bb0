"""Database schema: series, instances, jobs, deliveries and the quarantine (SQLAlchemy 2.0 typed models).

The schema itself is created and upgraded by the Alembic migrations in
``storage/migrations``; these classes must stay in step with them (a test
compares the two).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from storage.states import DeliveryState, JobState, SeriesState


def utcnow() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of all tables."""

    type_annotation_map = {datetime: DateTime(timezone=True)}


class Series(Base):
    """A DICOM series as received, and how it was completed."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    body_part: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    # From the first instance: what body-part resolution and series selection look at.
    study_description: Mapped[str | None] = mapped_column(String(64))
    protocol_name: Mapped[str | None] = mapped_column(String(64))
    image_type: Mapped[str | None] = mapped_column(String(128))
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    kernel: Mapped[str | None] = mapped_column(String(64))
    frame_of_reference_uid: Mapped[str | None] = mapped_column(String(64))
    # Series selection within its study: "chosen" or "skipped", and why (shown by `dicomnode jobs`).
    selection: Mapped[str | None] = mapped_column(String(16))
    selection_reason: Mapped[str | None] = mapped_column(Text)
    # Why instances may be missing though none is known to be (a refused instance, an aborted association).
    incomplete_evidence: Mapped[str | None] = mapped_column(Text)
    series_number: Mapped[int | None] = mapped_column(Integer)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING.value, index=True)
    # Number of times the series was completed; the next job gets version + 1.
    version: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    # Instance count announced by the headers (ImagesInAcquisition, PET NumberOfSlices...).
    expected_count: Mapped[int | None] = mapped_column(Integer)
    # NumberOfTemporalPositions: expected = distinct slice positions x this.
    temporal_positions: Mapped[int | None] = mapped_column(Integer)
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    completed_at: Mapped[datetime | None]
    completion_reason: Mapped[str | None] = mapped_column(String(32))
    completion_detail: Mapped[str | None] = mapped_column(Text)

    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    jobs: Mapped[list[Job]] = relationship(back_populates="series", order_by="Job.version")


class Instance(Base):
    """One stored SOP instance (one file)."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    crc32: Mapped[int] = mapped_column(BigInteger)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    acquisition_number: Mapped[int | None] = mapped_column(Integer)
    temporal_position: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=1)
    # ImagePositionPatient / ImageOrientationPatient, for gap detection.
    pos_x: Mapped[float | None] = mapped_column(Float)
    pos_y: Mapped[float | None] = mapped_column(Float)
    pos_z: Mapped[float | None] = mapped_column(Float)
    orientation: Mapped[list[float] | None] = mapped_column(JSON)
    assoc_uid: Mapped[str] = mapped_column(String(36), index=True)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Identical re-sends of this SOP instance (idempotent, not stored again).
    duplicates: Mapped[int] = mapped_column(Integer, default=0)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """Work queued for one completed version of a series."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("series_id", "version", name="uq_jobs_series_version"),
        Index("ix_jobs_state_priority", "state", "priority", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    completion_reason: Mapped[str] = mapped_column(String(32))
    instance_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None]
    timings: Mapped[dict[str, float] | None] = mapped_column(JSON)
    stage: Mapped[str | None] = mapped_column(String(16))  # the stage running, or the last one reached
    not_before: Mapped[datetime | None]  # a queued job waits for its study until then
    model: Mapped[str | None] = mapped_column(String(128))  # bundle name and version
    output_dir: Mapped[str | None] = mapped_column(Text)

    series: Mapped[Series] = relationship(back_populates="jobs")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job")
    outputs: Mapped[list[Output]] = relationship(back_populates="job")


class Output(Base):
    """One DICOM object a job sends: one it wrote (SEG, SR, preview image), or a source instance it forwards."""

    __tablename__ = "outputs"
    __table_args__ = (UniqueConstraint("job_id", "sop_instance_uid", name="uq_outputs_job_sop"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    variant: Mapped[str] = mapped_column(String(32), default="")  # e.g. "all-frames" for some destinations
    path: Mapped[str] = mapped_column(Text)  # relative to the storage folder
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))

    job: Mapped[Job] = relationship(back_populates="outputs")


class Delivery(Base):
    """One job output set sent to one destination, with its attempts."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("job_id", "destination", name="uq_deliveries_job_dest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(24), default=DeliveryState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    variant: Mapped[str] = mapped_column(String(32), default="")  # which outputs this destination gets
    storage_commitment: Mapped[bool] = mapped_column(Boolean, default=False)
    commitment_uid: Mapped[str | None] = mapped_column(String(64), index=True)  # N-ACTION transaction UID
    sent_count: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None]

    job: Mapped[Job] = relationship(back_populates="deliveries")


class Quarantine(Base):
    """One quarantine: the files of a series a job could not process, moved to a folder of their own.

    ``state`` is a :class:`storage.quarantine.QuarantineState`: ``held`` (the
    files are in ``folder``), ``released`` (put back in the live tree and the
    series queued again), ``superseded`` (a later job of the series succeeded;
    the files are gone from the quarantine) or ``purged`` (deleted by hand or
    by ``retention.quarantine_days``).  The row stays as the record.
    """

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    folder: Mapped[str] = mapped_column(Text)  # relative to the storage folder, e.g. "quarantine/12-3fa9c2d1"
    ended_at: Mapped[datetime | None]  # when it stopped being held


def table_of(model: type[Base]) -> Table:
    """The Core table a model maps (typed as the :class:`~sqlalchemy.Table` it is, for Core statements)."""
    table = model.__table__
    if not isinstance(table, Table):  # every model here maps exactly one table
        raise TypeError(f"{model.__name__} does not map a single table")
    return table


class NotifyTarget(Base):
    """A ``[[notify]]`` target as the database first saw it: jobs that end after ``since`` are announced to it."""

    __tablename__ = "notify_targets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    since: Mapped[datetime] = mapped_column(default=utcnow)


class Notification(Base):
    """One announcement of a job's end (done or failed) to one notify target, with its attempts."""

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("job_id", "target", name="uq_notifications_job_target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    target: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(16))  # done | failed
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Fetch(Base):
    """A study the node asked a source for (``dicomnode fetch`` or the status page): its jobs say they came from it."""

    __tablename__ = "fetches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(64))  # the [[sources]] name
    requested_by: Mapped[str | None] = mapped_column(String(128))  # the web user, or None for the command line
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
