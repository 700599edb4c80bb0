"""No acknowledged byte lost to a race, and patients never mixed: against a live node over real associations.

* A series purged while one of its instances is re-sent: the purge's
  transaction and its unlink step are run apart, with the re-send in between
  (and once with the purge committed between the receiver's duplicate check
  and its write), so the interleaving is forced, not hoped for.
* A changed re-send whose commit fails: the sender gets a failure status and
  the acknowledged copy (file and row) is untouched.
* A SOP or Series Instance UID already stored for another patient or study:
  refused with a named status and an ErrorComment, the first patient's
  series unchanged, and alerted (log without UIDs, audit entry, metric).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

import dicomnode.receive.ingest as ingest
from dicomnode.dicom import status
from dicomnode.node import Node
from storage.instances import KnownInstance, find_instance
from storage.models import Instance, Series
from storage.queue import claim_job, end_job
from storage.retention import claim_purge, remove_files
from storage.states import JobState
from tests.conftest import series_of, wait_for_jobs
from tests.helpers import store_files, storescu

TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1"]  # as the synthetic files are: stored bytes compare with sent ones


def c_store(node: Node, path: Path) -> tuple[int, str | None]:
    """Send one file over a new association; ``(status, ErrorComment)`` as the SCU sees them."""
    return store_files(node.cfg.node.port, [path], TRANSFER_SYNTAXES)[0]


def send_all(node: Node, files: list[Path]) -> None:
    """One association for the whole series (its release completes the series)."""
    assert all(code == status.SUCCESS for code, _ in store_files(node.cfg.node.port, files, TRANSFER_SYNTAXES))


def dataset_bytes(path: Path) -> bytes:
    """The dataset part of a Part 10 file (after preamble and file meta)."""
    raw = path.read_bytes()
    group_len = struct.unpack_from("<L", raw, 140)[0]
    return raw[144 + group_len :]


def variant(src: Path, dst: Path, **changes: Any) -> Path:
    """A copy of ``src`` with some attributes changed (pydicom keywords)."""
    ds = dcmread(src)
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(dst)
    return dst


def known(node: Node, path: Path) -> KnownInstance | None:
    return find_instance(node.engine, dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def series_files(node: Node, src: Path) -> list[Path]:
    """Every file (temporary ones too) in the folder of ``src``'s series."""
    ds = dcmread(src, stop_before_pixels=True)
    d = node.cfg.node.incoming_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID
    return sorted(d.iterdir()) if d.is_dir() else []


def eligible_for_retention(node: Node, files: list[Path]) -> int:
    """Send a series, let its release complete it, and settle its job: retention may purge it now."""
    send_all(node, files)
    [job] = wait_for_jobs(node, 1)
    claimed = claim_job(node.engine, "test", 60)
    assert claimed is not None and claimed.id == job.id
    assert end_job(node.engine, job.id, "test", JobState.IGNORED, "nothing to do (test)", {})
    return job.series_id


# ------------------------------------------------------------------ purge race


def test_an_instance_resent_while_its_series_is_purged_keeps_its_file(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node = node_factory()
    files = make_series("purge-race", slices=3)
    sid = eligible_for_retention(node, files)
    before = known(node, files[0])
    assert before is not None
    incoming = node.cfg.node.incoming_dir

    plan = claim_purge(node.engine, sid, incoming, node.cfg.node.storage_dir)  # the purge's transaction commits...
    assert plan is not None and len(plan.files) == 3
    assert c_store(node, files[0]) == (status.SUCCESS, None)  # ...the sender re-sends an instance, acknowledged...
    remove_files(plan)  # ...then the purge unlinks what its rows named

    after = known(node, files[0])
    assert after is not None, "the acknowledged instance has no row"
    assert incoming / after.path not in plan.files and after.path != before.path
    assert dataset_bytes(incoming / after.path) == dataset_bytes(files[0]), "the acknowledged file was deleted"
    assert known(node, files[1]) is None and not (incoming / before.path).exists()
    [series] = series_of(node)
    assert series.state == "receiving" and series.instance_count == 1  # it came back: a new version follows


def test_a_duplicate_check_overtaken_by_a_purge_writes_the_instance_anew(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver saw the identical instance stored (and would skip the write); the purge commits before it records."""
    node = node_factory()
    files = make_series("dup-race", slices=2)
    sid = eligible_for_retention(node, files)
    incoming = node.cfg.node.incoming_dir
    real_find = ingest.find_instance
    plans = []

    def find_then_purge(engine: Any, sop_uid: str) -> KnownInstance | None:
        found = real_find(engine, sop_uid)
        if not plans:  # between the receiver's look-up and its transaction
            plans.append(claim_purge(node.engine, sid, incoming, node.cfg.node.storage_dir))
        return found

    monkeypatch.setattr(ingest, "find_instance", find_then_purge)
    assert c_store(node, files[0]) == (status.SUCCESS, None)
    [plan] = plans
    assert plan is not None
    remove_files(plan)

    after = known(node, files[0])
    assert after is not None and incoming / after.path not in plan.files
    assert dataset_bytes(incoming / after.path) == dataset_bytes(files[0])


def test_an_instance_recorded_before_the_purge_stops_it(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], tmp_path: Path
) -> None:
    node = node_factory()
    files = make_series("purge-late", slices=2)
    sid = eligible_for_retention(node, files)
    changed = variant(files[0], tmp_path / "changed.dcm", ImageComments="re-sent")
    assert c_store(node, changed) == (status.SUCCESS, None)  # committed first: the series receives again
    assert claim_purge(node.engine, sid, node.cfg.node.incoming_dir, node.cfg.node.storage_dir) is None
    for f in (changed, files[1]):
        row = known(node, f)
        assert row is not None and dataset_bytes(node.cfg.node.incoming_dir / row.path) == dataset_bytes(f)


# ------------------------------------------------------- a failed replacement


@contextmanager
def failing_commit_after_instance_update(node: Node) -> Iterator[list[str]]:
    """The database refuses the COMMIT of any transaction that updated an instance row (a full or failing disk)."""
    failed: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE INSTANCES"):
            conn.info["updated_instance"] = True

    def refuse(conn: Any) -> None:
        if conn.info.pop("updated_instance", False):
            failed.append("commit")
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("disk I/O error"))

    def forget(conn: Any) -> None:
        conn.info.pop("updated_instance", None)

    event.listen(node.engine, "before_cursor_execute", note)
    event.listen(node.engine, "commit", refuse)
    event.listen(node.engine, "rollback", forget)
    try:
        yield failed
    finally:
        event.remove(node.engine, "before_cursor_execute", note)
        event.remove(node.engine, "commit", refuse)
        event.remove(node.engine, "rollback", forget)


def test_a_replacement_whose_commit_fails_keeps_the_acknowledged_copy(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], tmp_path: Path
) -> None:
    node = node_factory()
    [first] = make_series("replace", slices=1)
    assert c_store(node, first) == (status.SUCCESS, None)
    stored = known(node, first)
    assert stored is not None
    acknowledged = (node.cfg.node.incoming_dir / stored.path).read_bytes()
    changed = variant(first, tmp_path / "changed.dcm", ImageComments="a corrected re-send", WindowCenter=50)

    with failing_commit_after_instance_update(node) as failed:
        code, comment = c_store(node, changed)
    assert failed == ["commit"]
    assert code == status.REFUSED_OUT_OF_RESOURCES and comment == "database unavailable"
    assert known(node, first) == stored, "the row changed though its commit failed"
    assert (node.cfg.node.incoming_dir / stored.path).read_bytes() == acknowledged, "the acknowledged file changed"
    assert series_files(node, first) == [node.cfg.node.incoming_dir / stored.path], "the new copy was left behind"

    # The sender tries again once the database is well: the new copy wins, and only then is the old one removed.
    assert c_store(node, changed) == (status.SUCCESS, None)
    now = known(node, first)
    assert now is not None and now.path != stored.path and now.crc32 != stored.crc32
    assert dataset_bytes(node.cfg.node.incoming_dir / now.path) == dataset_bytes(changed)
    assert series_files(node, first) == [node.cfg.node.incoming_dir / now.path]


def test_an_identical_resend_is_not_written_again(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node = node_factory()
    [f] = make_series("dup", slices=1)
    assert c_store(node, f) == (status.SUCCESS, None)
    stored = known(node, f)
    assert stored is not None
    inode = (node.cfg.node.incoming_dir / stored.path).stat().st_ino
    assert c_store(node, f) == (status.SUCCESS, None)
    assert known(node, f) == stored and (node.cfg.node.incoming_dir / stored.path).stat().st_ino == inode
    assert len(series_files(node, f)) == 1
    with node.engine.connect() as conn:
        assert conn.execute(select(Instance.duplicates)).scalar_one() == 1


# ------------------------------------------------------ patients never mixed


def test_uids_of_another_patient_or_study_are_refused_and_alerted(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    node = node_factory()
    first = make_series("patient-a", slices=2, patient_id="PAT-A-111")
    send_all(node, first)
    [series_a] = series_of(node)
    rows_before = {f: known(node, f) for f in first}
    bytes_before = {f: (node.cfg.node.incoming_dir / r.path).read_bytes() for f, r in rows_before.items() if r}
    a = dcmread(first[0], stop_before_pixels=True)
    a1 = dcmread(first[1], stop_before_pixels=True)
    [other] = make_series("patient-b", slices=1, patient_id="PAT-B-222")
    [other_study] = make_series("patient-a-other-study", slices=1, patient_id="PAT-A-111")
    [third] = make_series("patient-c", slices=1, patient_id="PAT-C-333")

    sop_of_a = variant(other, tmp_path / "sop-of-a.dcm", SOPInstanceUID=a.SOPInstanceUID)
    sop_other_study = variant(other_study, tmp_path / "sop-other-study.dcm", SOPInstanceUID=a1.SOPInstanceUID)
    series_of_a = variant(third, tmp_path / "series-of-a.dcm", SeriesInstanceUID=a.SeriesInstanceUID)
    assert c_store(node, sop_of_a) == (status.ERROR_UID_CONFLICT, ingest.UID_CONFLICT_COMMENT[ingest.ConflictKind.SOP])
    assert c_store(node, sop_other_study) == (status.ERROR_UID_CONFLICT, ingest.UID_CONFLICT_COMMENT[ingest.ConflictKind.SOP])
    assert c_store(node, series_of_a) == (status.ERROR_UID_CONFLICT, ingest.UID_CONFLICT_COMMENT[ingest.ConflictKind.SERIES])
    assert ingest.UID_CONFLICT_COMMENT[ingest.ConflictKind.SOP] == "SOP UID already stored for another patient/study: not merged"

    # dcmtk's storescu, a real modality's sender, sees the refusal too.
    r = storescu(node.cfg.node.port, [series_of_a], extra=["-d"])  # -d: the response's elements
    seen = r.stdout + r.stderr
    assert re.search(r"DIMSE Status\s*:\s*0xc230", seen) and ingest.UID_CONFLICT_COMMENT[ingest.ConflictKind.SERIES] in seen, seen

    # The first patient's series is exactly as it was; nothing of the others was stored or merged.
    assert [(s.id, s.instance_count, s.patient_id) for s in series_of(node)] == [(series_a.id, 2, "PAT-A-111")]
    for f, row in rows_before.items():
        assert known(node, f) == row
        assert row is not None and (node.cfg.node.incoming_dir / row.path).read_bytes() == bytes_before[f]
    assert len(series_files(node, first[0])) == 2
    with node.engine.connect() as conn:
        assert conn.execute(select(Instance.series_id).distinct()).scalars().all() == [series_a.id]

    # Alerted: a counter, an audit entry per refusal, a warning; none names a UID or a patient.
    metrics = node.metrics.exposition().decode()
    assert 'dicomnode_uid_conflicts_total{kind="sop"} 2.0' in metrics
    assert 'dicomnode_uid_conflicts_total{kind="series"} 2.0' in metrics  # (pynetdicom's and storescu's)
    entries = [json.loads(r.getMessage()) for r in caplog.records if r.name == "dicomnode.audit"]
    conflicts = [e for e in entries if e["event"] == "uid_conflict"]
    assert [(e["kind"], e["series"]) for e in conflicts] == [("sop", series_a.id), ("sop", series_a.id)] + [
        ("series", series_a.id)
    ] * 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("dicomnode")]
    alerts = [r.getMessage() for r in caplog.records if r.name == ingest.__name__ and r.levelno == logging.WARNING]
    assert sum("already stored for another patient or study" in w for w in alerts) == 4
    secrets_ = {a.SOPInstanceUID, a1.SOPInstanceUID, a.SeriesInstanceUID, a.StudyInstanceUID, "PAT-A-111", "PAT-B-222", "PAT-C-333"}
    for text in warnings + [json.dumps(e) for e in conflicts]:
        assert not any(s in text for s in secrets_), text


def test_an_instance_moving_to_another_series_of_the_same_patient_and_study_is_replaced(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], tmp_path: Path
) -> None:
    node = node_factory()
    files = make_series("move", slices=2)
    send_all(node, files)
    old = known(node, files[0])
    assert old is not None
    moved = variant(files[0], tmp_path / "moved.dcm", SeriesInstanceUID=generate_uid(), SeriesNumber=99)
    assert c_store(node, moved) == (status.SUCCESS, None)
    new = known(node, files[0])
    assert new is not None and new.series_id != old.series_id
    assert dataset_bytes(node.cfg.node.incoming_dir / new.path) == dataset_bytes(moved)
    assert not (node.cfg.node.incoming_dir / old.path).exists()
    with node.engine.connect() as conn:
        counts = {sid: n for sid, n in conn.execute(select(Series.id, Series.instance_count))}
    assert counts == {old.series_id: 1, new.series_id: 1}
