"""The storage layer on a real SQLite file and a real PostgreSQL server: same code, same results."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, select

from storage.database import migrate, open_engine
from storage.errors import DiskFullError
from storage.files import durable_write, quarantine, recover_temp_files
from storage.models import Base, Instance, Job, Series
from storage.instances import RecordOutcome, record_instance
from storage.listings import list_jobs
from storage.series import complete_series, open_series
from tests.helpers import rec


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or ``None`` if it has no schema."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def test_migrations_create_the_models_schema(engine: Engine) -> None:
    assert current_revision(engine) == "0008"
    insp = inspect(engine)
    for table in Base.metadata.sorted_tables:
        cols = {c["name"] for c in insp.get_columns(table.name)}
        assert cols == {c.name for c in table.columns}, f"migration and model differ for {table.name}"
    migrate(engine)  # idempotent


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    eng = open_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_record_is_idempotent_and_counts(engine: Engine) -> None:
    assert record_instance(engine, rec("1.1")).outcome is RecordOutcome.NEW
    assert record_instance(engine, rec("1.2")).outcome is RecordOutcome.NEW
    assert record_instance(engine, rec("1.1")).outcome is RecordOutcome.DUPLICATE
    assert record_instance(engine, rec("1.1", crc=99)).outcome is RecordOutcome.REPLACED
    with engine.connect() as conn:
        assert conn.execute(select(Series.instance_count)).scalar() == 2
        assert conn.execute(select(Instance.duplicates).where(Instance.sop_uid == "1.1")).scalar() == 1
        assert conn.execute(select(Instance.crc32).where(Instance.sop_uid == "1.1")).scalar() == 99


def test_exactly_one_job_per_completed_version(engine: Engine) -> None:
    for i in range(3):
        record_instance(engine, rec(f"1.{i}"))
    [s] = open_series(engine)
    results: list[int | None] = []

    def complete() -> None:
        results.append(
            complete_series(engine, s.id, seen_count=s.instance_count, seen_last_received_at=s.last_received_at, reason="quiet_period")
        )

    threads = [threading.Thread(target=complete) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    assert open_series(engine) == []
    # A late instance re-opens the series; its completion gives version 2.
    assert record_instance(engine, rec("1.9")).reopened
    [s2] = open_series(engine)
    assert s2.version == 1 and s2.instance_count == 4
    assert complete_series(engine, s2.id, seen_count=4, seen_last_received_at=s2.last_received_at, reason="quiet_period")
    jobs = list_jobs(engine)
    assert [(j.version, j.instance_count, j.state) for j in reversed(jobs)] == [(1, 3, "queued"), (2, 4, "queued")]


def test_completion_loses_to_a_concurrent_arrival(engine: Engine) -> None:
    record_instance(engine, rec("1.1"))
    [s] = open_series(engine)
    record_instance(engine, rec("1.2"))  # arrives after the monitor looked
    assert complete_series(engine, s.id, seen_count=s.instance_count, seen_last_received_at=s.last_received_at, reason="quiet_period") is None
    with engine.connect() as conn:
        assert conn.execute(select(Job)).first() is None


def test_durable_write_and_quarantine(tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    p = root / "a" / "b" / "c.dcm"
    assert durable_write(p, [b"abc", b"def"]) == 6
    assert p.read_bytes() == b"abcdef"
    (p.parent / ".tmp-stale").write_bytes(b"x")
    assert recover_temp_files(root, lambda tmp, target: False) == (0, 1)
    [moved] = quarantine([p], root, tmp_path / "quarantine")
    assert moved == tmp_path / "quarantine" / "a" / "b" / "c.dcm" and moved.read_bytes() == b"abcdef"
    assert not p.exists()


def test_durable_write_disk_full_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import storage.files

    def enospc(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.files.os, "write", enospc)
    with pytest.raises(DiskFullError, match="disk full"):
        durable_write(tmp_path / "x" / "y.dcm", [b"data"])
    assert list((tmp_path / "x").iterdir()) == []
