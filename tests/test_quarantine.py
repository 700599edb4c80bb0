"""The quarantine's lifecycle: an entry per failure in a folder of its own, release, purge, supersede and retention.

The worker tests run real jobs (the JobRunner of a node, on a real SQLite
file) over series received through the node's ingest path: a series with a
gantry tilt fails reconstruction and is quarantined; a rule that forwards
the series (no model) makes a later job succeed without inference.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import Engine, select, update

from dicomnode.cli.main import main
from dicomnode.config import Config, Destination, RetentionConfig, load_config
from dicomnode.jobs.retention import Retention
from dicomnode.jobs.worker import JobRunner
from dicomnode.receive.ingest import Ingestor
from dicomnode.routing import parse_rules
from storage.database import migrate, open_engine
from storage.files import unique_name
from storage.instances import find_instance, record_instance
from storage.models import Instance, Job, Output, Quarantine, Series, table_of, utcnow
from storage.quarantine import (
    QuarantineEntry,
    QuarantineError,
    QuarantineState,
    adopt_unrecorded,
    get_entry,
    list_entries,
    locate_files,
    quarantine_files,
    release,
    supersede,
)
from storage.queue import claim_job, end_job, requeue_job
from storage.series import complete_series, open_series
from storage.states import JobState
from tests.helpers import rec, write_config

WORKER = '[worker]\nenabled = false\ndevice = "cpu"\n[selection]\nenabled = false\n'
SLICES = 12


@dataclass
class Site:
    """A node's storage, database and ingest path, without its listener."""

    cfg: Config
    cfg_path: Path
    engine: Engine
    ingestor: Ingestor

    @property
    def forwarding(self) -> Config:
        """The same node with a rule that forwards CT series unchanged (a job that succeeds without a model)."""
        pacs = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=1)
        return dataclasses.replace(
            self.cfg, destinations=(pacs,), rules=parse_rules([{"name": "forward", "modality": ["CT"]}], ["pacs"])
        )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    path = write_config(tmp_path, extra=WORKER)
    cfg = load_config(path, environ={})
    engine = open_engine(cfg.node.database_url)
    migrate(engine)
    ingestor = Ingestor(engine, cfg.node.incoming_dir)
    yield Site(cfg, path, engine, ingestor)
    ingestor.close()
    engine.dispose()


def split(path: Path) -> tuple[bytes, str]:
    """The dataset bytes and transfer syntax of a Part 10 file, as a C-STORE carries them."""
    raw = path.read_bytes()
    group_len = struct.unpack_from("<L", raw, 140)[0]
    return raw[144 + group_len :], str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def receive(site: Site, files: list[Path]) -> int:
    series_id = None
    for f in files:
        data, ts = split(f)
        r = site.ingestor.store(data, ts, assoc_uid="assoc-test", calling_ae="CT1")
        assert r.status == 0, r
        series_id = r.series_id
    assert series_id is not None
    return series_id


def complete(site: Site, series_id: int) -> int:
    [s] = [s for s in open_series(site.engine) if s.id == series_id]
    job = complete_series(site.engine, s.id, seen_count=s.instance_count, seen_last_received_at=s.last_received_at, reason="quiet_period")
    assert job is not None
    return job


def run_job(site: Site, cfg: Config | None = None) -> Job:
    from sqlalchemy.orm import Session

    assert JobRunner(site.engine, cfg or site.cfg, name="test").run_once(), "no job was queued"
    with Session(site.engine) as s:
        job = s.scalars(select(Job).order_by(Job.finished_at.desc())).first()
        assert job is not None
        s.expunge_all()
        return job


def versions(make_series: Callable[..., list[Path]], tmp_path: Path, tilted: bool, comment: str) -> list[Path]:
    """The same series (same UIDs), with a gantry tilt (reconstruction refuses it) or without, and a comment that changes its bytes."""
    src = make_series("qseries", slices=SLICES, rows=32, columns=32)
    out = tmp_path / f"version-{comment}"
    out.mkdir()
    files = []
    for i, f in enumerate(src):
        ds = dcmread(f)
        if tilted:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y + 0.5 * i, z]
        ds.ImageComments = comment
        ds.save_as(out / f.name)
        files.append(out / f.name)
    return files


def folder(site: Site, entry_id: int) -> Path:
    return site.cfg.node.storage_dir / get_entry(site.engine, entry_id).folder


def datasets_in(d: Path) -> set[bytes]:
    return {split(f)[0] for f in d.rglob("*.dcm")}


def identifiers(files: list[Path]) -> set[str]:
    ds = [dcmread(f, stop_before_pixels=True) for f in files]
    return {d.SOPInstanceUID for d in ds} | {ds[0].SeriesInstanceUID, ds[0].StudyInstanceUID, str(ds[0].PatientID)}


def quarantine_files_on_disk(site: Site) -> list[Path]:
    q = site.cfg.node.quarantine_dir
    return sorted(p for p in q.rglob("*") if p.is_file()) if q.exists() else []


def held_folders(site: Site) -> list[Path]:
    return [site.cfg.node.storage_dir / e.folder for e in list_entries(site.engine, QuarantineState.HELD)]


def quarantined_once(
    site: Site, make_series: Callable[..., list[Path]], tmp_path: Path
) -> tuple[list[Path], int, Job, QuarantineEntry]:
    """A series that cannot be reconstructed, received and completed, its job run (failed): its files, series, job and entry."""
    v1 = versions(make_series, tmp_path, tilted=True, comment="v1")
    sid = receive(site, v1)
    complete(site, sid)
    job = run_job(site)
    [entry] = list_entries(site.engine)
    return v1, sid, job, entry


def assert_no_orphans(site: Site) -> None:
    """Every file in the quarantine belongs to a held entry's folder."""
    held = held_folders(site)
    for f in quarantine_files_on_disk(site):
        assert any(h in f.parents for h in held), f"an unrecorded file in the quarantine: {f.relative_to(site.cfg.node.storage_dir)}"


# ------------------------------------------------------------------ the worker


def test_two_failures_keep_two_entries_and_a_later_success_supersedes_them(
    site: Site, make_series: Callable[..., list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = versions(make_series, tmp_path, tilted=True, comment="v1")
    sid = receive(site, v1)
    complete(site, sid)
    job1 = run_job(site)
    assert job1.state == "failed" and "cannot be reconstructed" in (job1.error or "")
    [e1] = list_entries(site.engine)
    assert f"{SLICES} file(s) moved to the quarantine, entry {e1.id}" in (job1.error or "")
    assert (e1.series_id, e1.job_id, e1.state, e1.file_count) == (sid, job1.id, QuarantineState.HELD, SLICES)
    assert e1.bytes == sum(f.stat().st_size for f in folder(site, e1.id).rglob("*.dcm"))
    assert not list(site.cfg.node.incoming_dir.rglob("*.dcm"))

    # The modality sends the series again, still tilted (changed bytes: every instance is replaced); it fails again.
    v2 = versions(make_series, tmp_path, tilted=True, comment="v2")
    assert receive(site, v2) == sid
    complete(site, sid)
    job2 = run_job(site)
    assert job2.state == "failed" and job2.id != job1.id
    e2, e1_again = list_entries(site.engine)
    assert e1_again == e1 and e2.state is QuarantineState.HELD and e2.file_count == SLICES
    assert folder(site, e1.id) != folder(site, e2.id)
    assert datasets_in(folder(site, e1.id)) == {split(f)[0] for f in v1}, "the first quarantine was overwritten"
    assert datasets_in(folder(site, e2.id)) == {split(f)[0] for f in v2}
    assert_no_orphans(site)

    assert main(["quarantine", "list", "-c", str(site.cfg_path)]) == 0
    listed = capsys.readouterr().out
    assert all(str(i) in listed for i in (e1.id, e2.id, sid, job1.id, job2.id)) and listed.count("held") >= 2
    assert "held now: 2 entries, 24 file(s)" in listed
    assert not any(uid in listed for uid in identifiers(v1)), "the listing shows a UID or a patient ID"

    # Fixed at the modality: the third version succeeds, and the earlier quarantines are superseded.
    v3 = versions(make_series, tmp_path, tilted=False, comment="v3")
    receive(site, v3)
    complete(site, sid)
    job3 = run_job(site, site.forwarding)
    assert job3.state == "delivering", job3.error
    assert [e.state for e in list_entries(site.engine)] == [QuarantineState.SUPERSEDED] * 2
    assert all(e.ended_at is not None for e in list_entries(site.engine))
    assert not quarantine_files_on_disk(site), "superseded copies stayed in the quarantine"
    for f in v3:  # the live tree holds the stored copies
        row = find_instance(site.engine, dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert row is not None and split(site.cfg.node.incoming_dir / row.path)[0] == split(f)[0]


def test_a_retried_job_reads_the_quarantined_files_and_its_success_puts_them_back(
    site: Site, make_series: Callable[..., list[Path]], tmp_path: Path
) -> None:
    v1, sid, job, entry = quarantined_once(site, make_series, tmp_path)
    # 'dicomnode retry' after a routing change: the job forwards the series, which it finds in the quarantine.
    assert requeue_job(site.engine, job.id)
    rows = [find_instance(site.engine, dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in v1]
    located = locate_files(site.engine, sid, [r.path for r in rows if r], site.cfg.node.incoming_dir, site.cfg.node.quarantine_dir)
    assert all(folder(site, entry.id) in p.parents for p in located.values())
    assert run_job(site, site.forwarding).state == "delivering"
    assert get_entry(site.engine, entry.id).state is QuarantineState.SUPERSEDED
    for r in rows:  # back where their rows say, and the forwarded outputs name the live files
        assert r is not None and (site.cfg.node.incoming_dir / r.path).is_file()
    with site.engine.connect() as conn:
        paths = conn.execute(select(Output.path).where(Output.job_id == job.id)).scalars().all()
    assert len(paths) == SLICES and all((site.cfg.node.storage_dir / p).is_file() for p in paths)
    assert not quarantine_files_on_disk(site)


def test_release_puts_the_files_back_and_queues_the_job_again(
    site: Site, make_series: Callable[..., list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, sid, job, entry = quarantined_once(site, make_series, tmp_path)

    assert main(["quarantine", "release", str(entry.id), "-c", str(site.cfg_path)]) == 0
    out = capsys.readouterr().out
    assert f"{SLICES} file(s) back in the live tree" in out and f"job {job.id} is queued again" in out
    assert get_entry(site.engine, entry.id).state is QuarantineState.RELEASED
    assert not folder(site, entry.id).exists()
    for f in v1:
        row = find_instance(site.engine, dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert row is not None and split(site.cfg.node.incoming_dir / row.path)[0] == split(f)[0]
    with site.engine.connect() as conn:
        assert conn.execute(select(Job.state).where(Job.id == job.id)).scalar_one() == "queued"

    # Only a held entry can be released; the administrator's fix (here: forward the series) lets the job succeed.
    assert main(["quarantine", "release", str(entry.id), "-c", str(site.cfg_path)]) == 1
    assert "only a held entry can be released" in capsys.readouterr().err
    assert run_job(site, site.forwarding).state == "delivering"
    assert sid == entry.series_id


def test_a_series_purge_leaves_its_quarantine_entries_to_their_own_lifecycle(
    site: Site, make_series: Callable[..., list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, sid, job, entry = quarantined_once(site, make_series, tmp_path)
    # The job is retried and now ignored (a routing change): the series is settled, and retention purges it.
    assert requeue_job(site.engine, job.id) and claim_job(site.engine, "w", 60) is not None
    assert end_job(site.engine, job.id, "w", JobState.IGNORED, "not routed", {})
    with site.engine.begin() as conn:
        conn.execute(update(table_of(Series)).values(last_received_at=utcnow() - timedelta(days=40)))
    retention = Retention(site.engine, site.cfg, free=lambda _p: 50.0)
    assert [p.series_id for p in retention.run_once()] == [sid]

    # The entry is still held, with its files and its record: nothing in the quarantine is unaccounted for.
    assert get_entry(site.engine, entry.id).state is QuarantineState.HELD
    assert len(list(folder(site, entry.id).rglob("*.dcm"))) == SLICES
    assert_no_orphans(site)
    assert main(["quarantine", "release", str(entry.id), "-c", str(site.cfg_path)]) == 1
    assert "was purged by retention" in capsys.readouterr().err
    with pytest.raises(QuarantineError, match="purged by retention"):
        release(site.engine, entry.id, site.cfg.node.incoming_dir, site.cfg.node.quarantine_dir)

    # Its own retention ends it.
    with site.engine.begin() as conn:
        conn.execute(update(table_of(Quarantine)).values(created_at=utcnow() - timedelta(days=91)))
    retention.run_once()
    assert get_entry(site.engine, entry.id).state is QuarantineState.PURGED
    assert not quarantine_files_on_disk(site) and not list(site.cfg.node.incoming_dir.rglob("*.dcm"))


# ------------------------------------------------------- purge and retention


def _entry_with_files(site: Site, series: str, n: int = 2) -> int:
    """A held entry of ``n`` files of a recorded series (the storage layer, no job)."""
    files = []
    for i in range(n):
        r = rec(f"{series}.{i}", series=series)
        r = dataclasses.replace(r, path=f"1.2/{series}/{unique_name(r.sop_uid)}")
        f = site.cfg.node.incoming_dir / r.path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 100)
        record_instance(site.engine, r)
        files.append(f)
    sid = find_instance(site.engine, f"{series}.0").series_id  # type: ignore[union-attr]
    return quarantine_files(site.engine, files, series_id=sid, job_id=None, reason="test", incoming_dir=site.cfg.node.incoming_dir,
                            quarantine_dir=site.cfg.node.quarantine_dir).id


def test_purge_by_id_and_by_age_from_the_command_line(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    old, recent, newest = (_entry_with_files(site, s) for s in ("1.2.61", "1.2.62", "1.2.63"))
    with site.engine.begin() as conn:
        q = table_of(Quarantine)
        conn.execute(update(q).where(q.c.id == old).values(created_at=utcnow() - timedelta(days=45)))
        conn.execute(update(q).where(q.c.id == recent).values(created_at=utcnow() - timedelta(days=5)))
    cfg = ["-c", str(site.cfg_path)]
    assert main(["quarantine", "purge", "--older-than", "30", *cfg]) == 0
    assert "purged 1 quarantine entry (2 file(s)" in capsys.readouterr().out
    assert [get_entry(site.engine, i).state for i in (old, recent, newest)] == ["purged", "held", "held"]
    assert main(["quarantine", "purge", str(recent), *cfg]) == 0
    assert not folder(site, old).exists() and not folder(site, recent).exists() and folder(site, newest).is_dir()
    assert get_entry(site.engine, old).file_count == 2  # the record stays
    assert main(["quarantine", "purge", str(recent), *cfg]) == 1  # nothing left to purge
    assert "is purged" in capsys.readouterr().err
    assert main(["quarantine", "purge", *cfg]) == 2  # an ID or --older-than
    assert main(["quarantine", "list", "--state", "purged", "--json", *cfg]) == 0
    assert '"state": "purged"' in capsys.readouterr().out
    for action in ("list", "release", "purge"):
        with pytest.raises(SystemExit):
            main(["quarantine", action, "--help"])
        assert "held" in capsys.readouterr().out


def test_quarantine_retention_purges_entries_held_longer_than_quarantine_days(site: Site) -> None:
    stale, fresh = _entry_with_files(site, "1.2.71"), _entry_with_files(site, "1.2.72")
    with site.engine.begin() as conn:
        q = table_of(Quarantine)
        conn.execute(update(q).where(q.c.id == stale).values(created_at=utcnow() - timedelta(days=8)))
        conn.execute(update(q).where(q.c.id == fresh).values(created_at=utcnow() - timedelta(days=6)))
    cfg = dataclasses.replace(site.cfg, retention=RetentionConfig(quarantine_days=7))
    assert [e.id for e in Retention(site.engine, cfg, free=lambda _p: 50.0).purge_quarantine()] == [stale]
    assert get_entry(site.engine, stale).state is QuarantineState.PURGED and not folder(site, stale).exists()
    assert get_entry(site.engine, fresh).state is QuarantineState.HELD and folder(site, fresh).is_dir()
    assert load_config(site.cfg_path, environ={}).retention.quarantine_days == 90  # the default


# ------------------------------------------------------------- storage layer


def test_a_later_quarantine_of_the_same_files_never_overwrites_the_earlier_one(engine: Engine, tmp_path: Path) -> None:
    incoming, qdir = tmp_path / "storage" / "incoming", tmp_path / "storage" / "quarantine"
    record_instance(engine, rec("1.2.81.1", series="1.2.81"))
    sid = find_instance(engine, "1.2.81.1").series_id  # type: ignore[union-attr]
    f = incoming / "1.2" / "1.2.81" / "1.2.81.1.dcm"  # (the fixed name files had before unique names)
    entries = []
    for content in (b"first copy", b"second copy"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(content)
        entries.append(quarantine_files(engine, [f], series_id=sid, job_id=None, reason="bad", incoming_dir=incoming, quarantine_dir=qdir))
    first, second = ((tmp_path / "storage" / e.folder / "1.2" / "1.2.81" / "1.2.81.1.dcm").read_bytes() for e in entries)
    assert (first, second) == (b"first copy", b"second copy")
    assert entries[0].folder != entries[1].folder


def test_release_restores_current_copies_and_removes_replaced_ones(engine: Engine, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    incoming, qdir = storage / "incoming", storage / "quarantine"
    files = []
    for i in range(3):
        r = dataclasses.replace(rec(f"1.2.91.{i}", series="1.2.91"), path=f"1.2/1.2.91/{unique_name(f'1.2.91.{i}')}")
        record_instance(engine, r)
        files.append(incoming / r.path)
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        files[-1].write_bytes(b"v1")
    sid = find_instance(engine, "1.2.91.0").series_id  # type: ignore[union-attr]
    with engine.begin() as conn:  # its job failed
        job = conn.execute(table_of(Job).insert().values(
            series_id=sid, version=1, state="failed", priority=0, completion_reason="quiet_period", instance_count=3,
            created_at=utcnow(), attempts=1,
        ).returning(table_of(Job).c.id)).scalar_one()
    entry = quarantine_files(engine, files, series_id=sid, job_id=job, reason="bad", incoming_dir=incoming, quarantine_dir=qdir)
    # Instance 0 is sent again with other bytes: a new live copy; the quarantined one is now an older copy.
    newer = dataclasses.replace(rec("1.2.91.0", series="1.2.91", crc=7), path=f"1.2/1.2.91/{unique_name('1.2.91.0')}")
    (incoming / newer.path).write_bytes(b"v2")
    assert record_instance(engine, newer).old_path is not None

    done = release(engine, entry.id, incoming, qdir)
    assert (done.restored, done.removed, done.requeued_job) == (2, 1, job)
    assert all(f.read_bytes() == b"v1" for f in files[1:]) and (incoming / newer.path).read_bytes() == b"v2"
    assert not files[0].exists() and not (storage / entry.folder).exists()
    with engine.connect() as conn:
        assert conn.execute(select(table_of(Job).c.state).where(table_of(Job).c.id == job)).scalar_one() == "queued"
        assert sorted(conn.execute(select(Instance.path)).scalars()) == sorted([newer.path] + [f.relative_to(incoming).as_posix() for f in files[1:]])
    assert supersede(engine, sid, 5, incoming, qdir) == []  # nothing held any more


def test_files_quarantined_by_an_earlier_version_get_an_entry(engine: Engine, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    incoming, qdir = storage / "incoming", storage / "quarantine"
    record_instance(engine, rec("1.2.95.1", series="1.2.95"))  # path 1.2/1.2.95/1.2.95.1.dcm
    legacy = qdir / "1.2" / "1.2.95" / "1.2.95.1.dcm"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"quarantined long ago")
    assert adopt_unrecorded(engine, qdir) == 1 and adopt_unrecorded(engine, qdir) == 0
    [entry] = list_entries(engine)
    assert entry.state is QuarantineState.HELD and entry.file_count == 1 and not (qdir / "1.2").exists()
    where = locate_files(engine, entry.series_id, ["1.2/1.2.95/1.2.95.1.dcm"], incoming, qdir)
    assert where["1.2/1.2.95/1.2.95.1.dcm"].read_bytes() == b"quarantined long ago"
