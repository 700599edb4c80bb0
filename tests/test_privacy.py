"""Identifiers out of sight (issue 17): no UID, path or patient attribute at INFO and above, in job
errors, on the status page, in the API or in the audit log; files private whatever the umask.

The end-to-end test runs a real ``dicomnode serve`` (worker, default model, web, a storescp
destination) under umask 000, sends a good series and two broken ones with distinctive
patients, and searches everything a person or a log collector can see for every UID and
patient attribute sent.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import sqlite3
import stat
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import Engine, text

from ai.phantoms import generate
from dicomnode.audit import audit_entry
from dicomnode.errors import VolumeError
from dicomnode.redaction import RedactingFilter, describe_exception, redact
from dicomnode.testing.synthetic import SeriesSpec, make_slice, write_phantom, write_series
from dicomnode.volume.reconstruct import reconstruct
from storage.database import migrate, open_engine, write_transaction
from storage.errors import DatabaseError
from storage.files import durable_write, ensure_dir
from storage.listings import Row, list_jobs
from storage.permissions import make_private_file
from tests.helpers import NodeProcess, storescu, wait_for, write_config
from tests.peers import StoreSCP

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ patients


def _component() -> str:
    """A UID component no clock, size or counter will produce by chance (12 digits, no leading 0)."""
    return str(10**11 + secrets.randbelow(9 * 10**11))


@dataclass
class Patient:
    """A distinctive identity written over a synthetic series: every value is searched for afterwards."""

    root: str  # UID root; "2.25" makes UUID-derived UIDs
    name: str
    patient_id: str
    accession: str
    birth_date: str
    referring: str
    study_uid: str = ""
    series_uid: str = ""
    for_uid: str = ""
    sop_uids: list[str] = field(default_factory=list)

    def uid(self) -> str:
        if self.root == "2.25":
            return f"2.25.{uuid.uuid4().int}"
        return f"{self.root}.{_component()}.{_component()}"

    def __post_init__(self) -> None:
        self.study_uid, self.series_uid, self.for_uid = self.uid(), self.uid(), self.uid()

    def apply(self, files: list[Path]) -> list[Path]:
        """Give every file this identity (and its own SOP Instance UID)."""
        for f in files:
            ds = dcmread(f)
            sop = self.uid()
            self.sop_uids.append(sop)
            ds.PatientName, ds.PatientID, ds.AccessionNumber = self.name, self.patient_id, self.accession
            ds.PatientBirthDate, ds.ReferringPhysicianName = self.birth_date, self.referring
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = self.study_uid, self.series_uid, self.for_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.save_as(f, enforce_file_format=True)
        return files

    def secrets(self) -> list[str]:
        """Every value to search for: the UIDs, their distinctive last components, the patient attributes."""
        uids = [self.study_uid, self.series_uid, self.for_uid, *self.sop_uids]
        tails = [u.rsplit(".", 1)[1] for u in uids]
        return [*uids, *tails, self.name, self.name.replace("^", " "), self.patient_id, self.accession, self.birth_date,
                self.referring]


def _patients() -> tuple[Patient, Patient, Patient]:
    return (
        Patient("1.2.826.0.1.3680043.10.771", "Quixote^Zebulon^Xavier", "PIDQ7X3K9", "ACCZ4K8W2", "19410723", "Hippocrates^Kos"),
        Patient("2.25", "Vantongerloo^Wilhelmina", "PIDW2N8R5", "ACCV9T1M6", "19520229", "Galen^Pergamon"),
        Patient("1.3.6.1.4.1.55555.7", "Okonkwo-Brandt^Xiomara", "PIDX5J4H1", "ACCO3P7L0", "19330817", "Avicenna^Bukhara"),
    )


def leaks(text_: str, patients: tuple[Patient, ...]) -> list[str]:
    """The secrets of ``patients`` found in ``text_`` (exact substrings)."""
    return sorted({s for p in patients for s in p.secrets() if s in text_})


# -------------------------------------------------------------- redaction


def test_redact_masks_uids_and_storage_paths_but_not_versions_addresses_or_standard_uids() -> None:
    cases = {
        "stored 1.2.826.0.1.3680043.10.771.5 ok": "stored <uid> ok",
        "source 2.25.313008405520672490876211106074881582472.": "source <uid>.",
        "file 1.3.6.1.4.1.9590.100.1.2.123.dcm": "file <uid>.dcm",
        "peer 10.0.0.5:104 and 127.0.0.1, dicomnode 0.4.1, torch 2.13.0": "peer 10.0.0.5:104 and 127.0.0.1, dicomnode 0.4.1, torch 2.13.0",
        "CT Image Storage 1.2.840.10008.5.1.4.1.1.2 in 1.2.840.10008.1.2.1": "CT Image Storage 1.2.840.10008.5.1.4.1.1.2 in 1.2.840.10008.1.2.1",
        "at 2026-11-23 10:00:01,123 took 1.25 s": "at 2026-11-23 10:00:01,123 took 1.25 s",
        "cannot write /srv/node/storage/incoming/x/y.dcm: EIO": "cannot write <path>: EIO",
        "storage failed under storage/incoming/a": "storage failed under <path>",
    }
    for given, expected in cases.items():
        assert redact(given, ["/srv/node/storage", "storage"]) == expected


def test_a_library_exception_becomes_one_line_without_path_or_uid() -> None:
    uid = "1.2.826.0.1.3680043.10.771.42424242"
    assert describe_exception(FileNotFoundError(2, "No such file or directory", f"/s/incoming/{uid}.dcm")) == "No such file or directory"
    text_ = describe_exception(ValueError(f"source image {uid} not found\nDETAIL: more {uid}"))
    assert text_ == "ValueError: source image <uid> not found"


def test_the_log_filter_masks_info_and_above_and_their_tracebacks_but_not_debug() -> None:
    uid = "1.2.826.0.1.3680043.10.771.99"
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            self.format(record)
            records.append(record)

    handler = Keep(logging.DEBUG)
    handler.addFilter(RedactingFilter(["/srv/storage"]))
    log = logging.getLogger("tests.privacy.filter")
    log.propagate, log.level = False, logging.DEBUG
    log.addHandler(handler)
    try:
        log.info("stored %s as %s", uid, f"/srv/storage/incoming/{uid}.dcm")
        log.debug("debug keeps %s", uid)
        try:
            raise RuntimeError(f"broken {uid}")
        except RuntimeError:
            log.exception("job %d failed", 3)
    finally:
        log.removeHandler(handler)
    info, debug, error = records
    assert info.getMessage() == "stored <uid> as <path>"
    assert debug.getMessage() == f"debug keeps {uid}"
    assert error.exc_text is not None and "RuntimeError: broken <uid>" in error.exc_text and uid not in error.exc_text


_LOGGING_SCRIPT = """
import logging, sys, warnings
from pathlib import Path
import pydicom.valuerep
from dicomnode.cli.common import configure_logging
from dicomnode.audit import audit
level, fmt, storage, uid, name = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]
configure_logging(level, fmt, storage / "audit.log", storage)
logging.getLogger("highdicom.seg.sop").info("source image %s", uid)
logging.getLogger("highdicom.sr").warning("referenced %s", uid)
logging.getLogger("pydicom").warning("Invalid value for VR PN: %r", name)
logging.getLogger("sqlalchemy.engine.Engine").info("INSERT INTO instances VALUES (?) [%s]", uid)
logging.getLogger("uvicorn.access").info("GET /api/jobs 200")
warnings.warn_explicit("Invalid value for VR UI: " + uid, UserWarning, pydicom.valuerep.__file__, 1)
node = logging.getLogger("dicomnode.anything")
node.info("stored %s at %s", uid, storage / "incoming" / uid / (uid + ".dcm"))
node.debug("debug keeps %s", uid)
try:
    raise ValueError("bad " + uid)
except ValueError:
    node.exception("job 7 failed")
audit("job", job=7, series=3, sop_uid=uid, path="incoming/x", error="refused " + uid, calling_ae="CT01")
"""


def _run_logging(tmp_path: Path, level: str, fmt: str, uid: str, name: str) -> tuple[str, Path]:
    storage = tmp_path / f"storage-{level}"
    r = subprocess.run(
        [sys.executable, "-c", _LOGGING_SCRIPT, level, fmt, str(storage), uid, name], capture_output=True, text=True, cwd=ROOT,
        preexec_fn=lambda: os.umask(0), timeout=120,  # the most permissive umask: modes must not depend on it
    )
    assert r.returncode == 0, r.stderr
    return r.stderr, storage


def test_third_party_loggers_are_quiet_and_the_node_masks_its_log_unless_debug(tmp_path: Path) -> None:
    uid, name = "1.2.826.0.1.3680043.10.771.5150", "Quixote^Zebulon"
    out, storage = _run_logging(tmp_path, "INFO", "json", uid, name)
    assert uid not in out and name not in out and str(storage) not in out, out
    records = [json.loads(line) for line in out.splitlines()]  # JSON lines, tracebacks included
    assert [r["message"] for r in records if r["logger"] == "dicomnode.anything"] == ["stored <uid> at <path>", "job 7 failed"]
    assert "ValueError: bad <uid>" in records[-1]["exception"]
    assert "source image" not in out and "referenced" not in out and "Invalid value" not in out  # highdicom, pydicom
    assert "INSERT INTO" not in out and "GET /api/jobs" not in out  # SQLAlchemy, uvicorn
    assert "stored <uid> at <path>" in out and "debug keeps" not in out
    assert "job 7 failed" in out and "ValueError: bad <uid>" in out  # the traceback stays, masked
    trail = (storage / "audit.log").read_text()
    entry = json.loads(trail)
    assert entry["event"] == "job" and entry["job"] == 7 and entry["calling_ae"] == "CT01" and entry["error"] == "refused <uid>"
    assert "sop_uid" not in entry and "path" not in entry and uid not in trail
    # Created under umask 000: the audit log 0600, the storage folder 0750.
    assert stat.S_IMODE((storage / "audit.log").stat().st_mode) == 0o600
    assert stat.S_IMODE(storage.stat().st_mode) == 0o750

    out, _ = _run_logging(tmp_path, "DEBUG", "text", uid, name)
    assert f"debug keeps {uid}" in out  # a developer at the node sees UIDs at DEBUG
    assert "source image <uid>" in out and "Invalid value for VR UI" in out  # libraries speak, INFO and above still masked
    assert f"stored {uid}" not in out


# ------------------------------------------------------------------ files


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_database_storage_folders_and_files_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    storage = tmp_path / "storage"
    old = os.umask(umask)
    try:
        engine = open_engine(f"sqlite:///{storage / 'dicomnode.db'}")
        migrate(engine)
        with write_transaction(engine) as conn:  # the WAL and its index exist while a connection is open
            conn.execute(text("CREATE TABLE scratch (x INTEGER)"))
        instance = storage / "incoming" / "a" / "b" / "x.dcm"
        durable_write(instance, [b"DICM"])
        ensure_dir(storage / "quarantine" / "a")
        audit_log = storage / "audit.log"
        make_private_file(audit_log)
    finally:
        os.umask(old)
    try:
        for name in ("dicomnode.db", "dicomnode.db-wal", "dicomnode.db-shm", "audit.log"):
            assert _mode(storage / name) == 0o600, name
        for d in (storage, storage / "incoming", storage / "incoming" / "a" / "b", storage / "quarantine" / "a"):
            assert _mode(d) == 0o750, d
        assert _mode(instance) == 0o640
    finally:
        engine.dispose()


def test_a_database_left_world_readable_by_an_older_version_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o644)
    engine = open_engine(f"sqlite:///{db}")
    try:
        assert _mode(db) & 0o077 in (0, 0o040)  # others lose access; the group keeps read only
    finally:
        engine.dispose()


# ---------------------------------------------------------------- database


@pytest.fixture
def scratch_table(engine: Engine) -> Iterator[Engine]:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE privacy_scratch (uid VARCHAR(64) UNIQUE)"))
    yield engine


def test_database_errors_show_neither_the_values_bound_nor_the_conflicting_row(scratch_table: Engine) -> None:
    uid = f"1.2.826.0.1.3680043.10.771.{_component()}"
    with write_transaction(scratch_table) as conn:
        conn.execute(text("INSERT INTO privacy_scratch (uid) VALUES (:u)"), {"u": uid})
    with pytest.raises(DatabaseError) as err:
        with write_transaction(scratch_table) as conn:  # a unique conflict: PostgreSQL's DETAIL quotes the row
            conn.execute(text("INSERT INTO privacy_scratch (uid) VALUES (:u)"), {"u": uid})
    assert "database write failed" in str(err.value) and uid not in str(err.value)
    cause = str(err.value.__cause__)
    assert "parameters hidden" in cause  # SQLAlchemy's own text: hide_parameters
    if scratch_table.dialect.name == "sqlite":
        assert uid not in cause
    # PostgreSQL's DETAIL line in the chained driver error quotes the row: a logged traceback masks it.
    record = logging.LogRecord("storage", logging.ERROR, __file__, 1, "write failed", None, (DatabaseError, err.value, None))
    RedactingFilter().filter(record)
    assert record.exc_text is not None and "parameters hidden" in record.exc_text and uid not in record.exc_text


# ----------------------------------------------------------- listings, audit


def test_listings_and_the_audit_trail_drop_identifier_fields() -> None:
    @dataclass(frozen=True)
    class Leaky(Row):
        id: int
        series_uid: str
        path: str
        patient_id: str
        PatientName: str
        state: str

    assert Leaky(3, "1.2.3.4.5.6", "incoming/x.dcm", "P1", "A^B", "done").as_json() == {"id": 3, "state": "done"}
    entry = audit_entry("delivery", job=4, sop_uids=["1.2.3.4.5.6"], destination="pacs", error="PACS refused 1.2.3.4.5.6: busy",
                        detail={"study_uid": "1.2.3.4.5.7", "sent": 2})
    assert entry["job"] == 4 and entry["destination"] == "pacs" and entry["error"] == "PACS refused <uid>: busy"
    assert "sop_uids" not in entry and entry["detail"] == {"sent": 2}


# ------------------------------------------------------------------ volume


def test_reconstruction_errors_name_instances_by_position_not_by_their_uid_file_names(tmp_path: Path) -> None:
    who = _patients()[0]
    files = who.apply(write_series(SeriesSpec(slices=8, seed="priv-dup"), tmp_path / "src"))
    # Stored as the node stores them: <study>/<series>/<sop>.dcm
    folder = tmp_path / "incoming" / who.study_uid / who.series_uid
    folder.mkdir(parents=True)
    stored = []
    for f, sop in zip(files, who.sop_uids):
        stored.append(folder / f"{sop}.dcm")
        f.rename(stored[-1])
    ds = dcmread(stored[3])
    ds.ImagePositionPatient = dcmread(stored[2]).ImagePositionPatient
    ds.save_as(stored[3])
    with pytest.raises(VolumeError) as err:
        reconstruct(stored)
    assert "duplicate slice positions: instance 3 of 8 (InstanceNumber 3) and instance 4 of 8 (InstanceNumber 4)" in str(err.value)
    assert not leaks(str(err.value), (who,)) and ".dcm" not in str(err.value)
    stored[5].write_bytes(b"not DICOM")
    with pytest.raises(VolumeError, match=r"instance 6 of 8 is not a DICOM Part 10 file"):
        from dicomnode.volume.slices import read_slices

        read_slices(stored[5], 6, 8)


# ------------------------------------------------------------ end to end

WORKER = (
    '[worker]\nenabled = true\ndevice = "cpu"\npoll_seconds = 0.2\n'
    "[delivery]\nbackoff_seconds = 0.5\npoll_seconds = 0.1\n"
)


class Web:
    """The node's web face, as a logged-in user (HTTP Basic with the first administrator's generated password)."""

    def __init__(self, port: int, storage: Path) -> None:
        self.port = port
        password_file = storage / "web-admin-password"
        wait_for(password_file.exists, 30, what="the first web password")
        token = base64.b64encode(f"admin:{password_file.read_text().strip()}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}"}

    def get(self, path: str) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=self.headers)
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200, path
            return str(r.read().decode())


def _data_path(storage: Path) -> re.Pattern[str]:
    """A path into a data folder of the storage (incoming, quarantine, outputs...), whose names are UIDs."""
    return re.compile(re.escape(str(storage)) + r"/[^/\s]+/")


def test_no_identifier_reaches_logs_pages_api_audit_or_job_errors(tmp_path: Path) -> None:
    good_patient, broken_patient, refused_patient = patients = _patients()
    good = good_patient.apply(write_phantom(generate(4247, matrix=160, slice_mm=(4.0, 5.0)), tmp_path / "good"))
    # A matrix that changes mid-series: reconstruction refuses it and names the instances involved.
    broken = broken_patient.apply(write_series(SeriesSpec(slices=24, seed="priv-size"), tmp_path / "broken"))
    odd = make_slice(SeriesSpec(slices=24, rows=32, columns=32, seed="priv-size"), 5)
    odd.save_as(tmp_path / "odd.dcm", enforce_file_format=True)
    broken[5] = broken_patient.apply([tmp_path / "odd.dcm"])[0]
    # A truncated instance: refused at ingest (the reason goes back to the sender as the ErrorComment); storescu
    # stops there, and the part it sent is too short to be selected (the job ends ignored).
    refused = refused_patient.apply(write_series(SeriesSpec(slices=24, seed="priv-trunc"), tmp_path / "refused"))
    ds = dcmread(refused[7])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(refused[7], enforce_file_format=True)

    pacs = StoreSCP(tmp_path / "pacs").start()
    cfg = write_config(
        tmp_path, series="quiet_seconds = 2", web="enabled = true\nport = 0",
        extra=WORKER + f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.port}\n',
    )
    old = os.umask(0)  # the child inherits the most permissive umask: modes must not depend on it
    try:
        node = NodeProcess(cfg, tmp_path / "node.log").start()
    finally:
        os.umask(old)
    storage = tmp_path / "storage"
    engine = open_engine(f"sqlite:///{storage / 'dicomnode.db'}")
    try:
        for files, calling in ((good, "CTGOOD"), (broken, "CTBROKEN"), (refused, "CTTRUNC")):
            r = storescu(node.port, files, calling=calling)
            assert calling == "CTTRUNC" or r.returncode == 0, r.stderr  # storescu fails when an instance is refused
        wanted = {"CTGOOD": "done", "CTBROKEN": "failed", "CTTRUNC": "ignored"}

        def finished() -> bool:
            states = {j.calling_ae: j.state for j in list_jobs(engine)}
            return all(states.get(ae) == state for ae, state in wanted.items())

        wait_for(finished, 120, interval=0.2, what=f"the jobs to end {wanted}")
        jobs = {j.calling_ae: j for j in list_jobs(engine)}
        web = Web(node.web_port or 0, storage)
        # Everything people and log collectors see.
        seen: dict[str, str] = {
            "log": (tmp_path / "node.log").read_text(),
            "audit": (storage / "audit.log").read_text(),
            **{path: web.get(path) for path in ("/", "/api/jobs", "/api/series", "/api/deliveries", "/metrics", "/healthz")},
            **{f"/api/jobs/{j.id}": web.get(f"/api/jobs/{j.id}") for j in jobs.values()},
        }
        with engine.connect() as conn:
            seen["database"] = json.dumps([list(r) for r in conn.execute(text(
                "SELECT j.error, s.completion_detail, s.selection_reason, s.incomplete_evidence, s.completion_reason "
                "FROM jobs j JOIN series s ON s.id = j.series_id"))])
            seen["deliveries"] = json.dumps([list(r) for r in conn.execute(text("SELECT last_error FROM deliveries"))])
            # The node's own UIDs for its outputs, and their paths, are kept in the database, not shown.
            made = [str(v) for r in conn.execute(text("SELECT sop_instance_uid, series_uid, path FROM outputs")) for v in r]
        seen["dicomnode jobs"] = subprocess.run(
            [sys.executable, "-m", "dicomnode", "jobs", "--config", str(cfg)], capture_output=True, text=True, timeout=60
        ).stdout
        assert made and all(seen.values())
        for where, content in seen.items():
            assert not leaks(content, patients), f"{where} shows {leaks(content, patients)}"
            assert not [m for m in made if m in content], f"{where} shows an output's UID or path"
            assert not _data_path(storage).search(content), f"{where} shows a path into the storage"
        # The node's own messages are clean: the log filter (the backstop) had nothing to mask.
        assert "<uid>" not in seen["log"] and "<path>" not in seen["log"]
        # Not vacuous: the failures are explained, by position; the outputs are listed by kind.
        failed = jobs["CTBROKEN"].error or ""
        assert "inconsistent image size" in failed and "quarantine" in failed, failed
        assert re.search(r"instance \d+ of 24 \(InstanceNumber \d+\)", failed), failed
        assert "refused with 0xC210" in seen["log"] and "pixel data truncated" in seen["log"]
        assert "inconsistent image size" in seen["log"] and f"job {jobs['CTGOOD'].id} done" in seen["log"]
        outputs = json.loads(seen[f"/api/jobs/{jobs['CTGOOD'].id}"])["outputs"]
        assert {o["kind"] for o in outputs} >= {"seg", "sr"} and "Segmentation Storage" in {o["sop_class"] for o in outputs}
        assert all(set(o) == {"kind", "variant", "sop_class"} for o in outputs)
        events = [json.loads(line) for line in seen["audit"].splitlines()]
        assert {e.get("calling_ae") for e in events if e["event"] == "association"} >= set(wanted)
        assert any(e["event"] == "delivery" and e.get("destination") == "pacs" for e in events)
        # Made under umask 000, and private all the same.
        for name in ("dicomnode.db", "dicomnode.db-wal", "dicomnode.db-shm", "audit.log"):
            assert _mode(storage / name) == 0o600, name
        folders = [storage, *(p for p in storage.rglob("*") if p.is_dir())]
        assert all(_mode(d) & 0o027 == 0 for d in folders), {str(d.relative_to(tmp_path)): oct(_mode(d)) for d in folders}
        instances = list(storage.rglob("*.dcm"))
        assert instances and all(_mode(f) & 0o037 == 0 for f in instances)
    finally:
        engine.dispose()
        node.stop()
        pacs.stop()


def test_the_web_server_logs_through_the_nodes_handlers(tmp_path: Path) -> None:
    """uvicorn's default logging config adds handlers of its own, which would bypass the masking filter."""
    from fastapi import FastAPI

    from dicomnode.web.server import WebServer

    server = WebServer(FastAPI(), "127.0.0.1", 0)
    try:
        for name in ("uvicorn", "uvicorn.error"):
            log = logging.getLogger(name)
            assert not log.handlers and log.propagate, name
        assert not logging.getLogger("uvicorn.access").handlers  # and no access log at all (access_log=False)
    finally:
        server.sock.close()
