"""Retention purges delivered series by age and by free-space watermark, and never anything else."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, select, update

from dicomnode.config import Config, NodeConfig, RetentionConfig
from dicomnode.jobs.retention import Retention
from storage.models import Instance, Series, utcnow
from storage.states import JobState
from storage.outbox import claim_due, record_sent
from storage.queue import DeliveryTarget, OutputRecord, claim_job, end_job, finish_job
from storage.instances import record_instance
from storage.series import complete_series, open_series
from tests.helpers import rec


def series_with_job(engine: Engine, storage: Path, name: str, end: str) -> tuple[int, list[Path]]:
    """A stored series (files on disk) whose job ended as ``end``: done, delivering, failed or ignored."""
    files = []
    for i in range(3):
        r = rec(f"{name}.{i}", series=f"1.2.{name}")
        f = storage / "incoming" / r.path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 100)
        files.append(f)
        record_instance(engine, r)
    [s] = [s for s in open_series(engine)]
    job = complete_series(engine, s.id, seen_count=3, seen_last_received_at=s.last_received_at, reason="quiet_period")
    assert job is not None and claim_job(engine, "w", 60) is not None
    out = storage / "outputs" / str(job) / "seg.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"y" * 50)
    files.append(out)
    if end == "failed" or end == "ignored":
        end_job(engine, job, "w", JobState(end), "reason", {})
    else:
        rel = str(out.relative_to(storage))
        finish_job(engine, job, "w", timings={}, model="m", output_dir=str(job), targets=[DeliveryTarget("pacs")],
                   outputs=[OutputRecord("seg", rel, "1.2", f"2.{name}", "2.9", "1.2.840.10008.1.2.1")])
        if end == "done":
            [d] = claim_due(engine, 60)
            record_sent(engine, d.id, 1)
    return s.id, files


def make(engine: Engine, tmp_path: Path, **kw: float) -> Retention:
    cfg = Config(node=NodeConfig(storage_dir=tmp_path / "storage"), retention=RetentionConfig(**kw))  # type: ignore[arg-type]
    return Retention(engine, cfg, free=lambda _p: 50.0)


def test_only_delivered_or_ignored_series_are_purged_by_age(engine: Engine, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    made = {end: series_with_job(engine, storage, end, end) for end in ("done", "delivering", "failed", "ignored")}
    retention = make(engine, tmp_path, keep_days=1)
    assert retention.run_once() == []  # all received just now
    with engine.begin() as conn:
        conn.execute(update(Series.__table__).values(last_received_at=utcnow() - timedelta(days=2)))
    purged = {p.series_id for p in retention.run_once()}
    assert purged == {made["done"][0], made["ignored"][0]}
    expected = {"done": [False] * 4, "ignored": [False] * 3 + [True], "delivering": [True] * 4, "failed": [True] * 4}
    for end, (_sid, files) in made.items():  # (an ignored job recorded no outputs: its stray file stays)
        assert [f.exists() for f in files] == expected[end], end
    with engine.connect() as conn:
        states = dict(conn.execute(select(Series.__table__.c.id, Series.__table__.c.state)).all())
        left = conn.execute(select(Instance.__table__.c.series_id).distinct()).scalars().all()
    assert states[made["done"][0]] == "purged" and states[made["delivering"][0]] == "complete"
    assert sorted(left) == sorted([made["delivering"][0], made["failed"][0]])


def test_low_disk_purges_the_oldest_delivered_series_first(engine: Engine, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    old, _ = series_with_job(engine, storage, "old", "done")
    new, _ = series_with_job(engine, storage, "new", "done")
    keep, _ = series_with_job(engine, storage, "undelivered", "delivering")
    with engine.begin() as conn:
        conn.execute(update(Series.__table__).where(Series.__table__.c.id == old).values(last_received_at=utcnow() - timedelta(hours=1)))
    retention = make(engine, tmp_path, keep_days=30, min_free_percent=10)
    calls = iter([5.0, 12.0])  # one purge frees enough
    retention.free = lambda _p: next(calls)
    assert [p.series_id for p in retention.run_once()] == [old]
    retention.free = lambda _p: 1.0  # still full: purge what may be purged, then stop and say so
    assert [p.series_id for p in retention.run_once()] == [new]
    with engine.connect() as conn:
        assert conn.execute(select(Series.__table__.c.state).where(Series.__table__.c.id == keep)).scalar_one() == "complete"


def test_a_purge_removes_only_the_files_its_rows_named(engine: Engine, tmp_path: Path) -> None:
    """Claim (rows) and unlink (files) are two steps: an instance re-sent in between keeps its new, uniquely named file."""
    from dataclasses import replace

    from storage.files import unique_name
    from storage.instances import find_instance
    from storage.retention import claim_purge, remove_files

    storage = tmp_path / "storage"
    sid, files = series_with_job(engine, storage, "race", "done")
    plan = claim_purge(engine, sid, storage / "incoming", storage)
    assert plan is not None and set(plan.files) == set(files)
    resent = replace(rec("race.0", series="1.2.race"), path=f"1.2/1.2.race/{unique_name('race.0')}")
    new_file = storage / "incoming" / resent.path
    new_file.write_bytes(b"z" * 100)
    assert record_instance(engine, resent).outcome == "new"  # the re-send is recorded (and acknowledged)
    purged = remove_files(plan)
    assert purged.files == 4 and not any(f.exists() for f in files)
    known = find_instance(engine, "race.0")
    assert known is not None and known.path == resent.path and new_file.read_bytes() == b"z" * 100
    with engine.connect() as conn:
        assert conn.execute(select(Series.__table__.c.state).where(Series.__table__.c.id == sid)).scalar_one() == "receiving"
