"""kill -9 in the middle of a series: nothing acknowledged is lost, one job results."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import func, select

from dicomnode.net.scu import iter_dicom_files, parse_peer, send_files
from storage.database import open_engine
from storage.files import unique_stem
from storage.models import Instance, Job, Series
from tests.helpers import NodeProcess, wait_for, write_config


def test_kill9_mid_series_then_restart(tmp_path: Path, make_series: Callable[..., list[Path]]) -> None:
    files = make_series("crash", slices=40, rows=128, columns=128)
    cfg = write_config(tmp_path, series="quiet_seconds = 3")
    node = NodeProcess(cfg, tmp_path / "node.log").start()
    acked: list[Path] = []
    killed = threading.Event()

    def sender() -> None:
        ae = AE(ae_title="CRASHSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
        assert assoc.is_established
        for f in files:
            try:
                rsp = assoc.send_c_store(f)
            except Exception:
                break
            if rsp and "Status" in rsp and rsp.Status == 0:
                acked.append(f)
            if not assoc.is_established:
                break
        if assoc.is_established:
            assoc.abort()

    t = threading.Thread(target=sender)
    t.start()
    wait_for(lambda: len(acked) >= 15, 60, what="15 acknowledged instances")
    node.kill9()  # mid-series, most likely mid-instance
    killed.set()
    t.join(60)
    assert 15 <= len(acked) < 40

    node = NodeProcess(cfg, tmp_path / "node.log").start()
    try:
        engine = open_engine(f"sqlite:///{tmp_path / 'storage' / 'dicomnode.db'}")
        incoming = tmp_path / "storage" / "incoming"
        with engine.connect() as conn:
            stored = {sop: path for sop, path in conn.execute(select(Instance.sop_uid, Instance.path))}
        for f in acked:
            ds = dcmread(f, stop_before_pixels=True)
            assert ds.SOPInstanceUID in stored, "an acknowledged instance is missing from the database"
            out = incoming / stored[ds.SOPInstanceUID]  # the file its row names
            assert out.parent.relative_to(incoming).parts == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
            assert out.read_bytes()[-1000:] == f.read_bytes()[-1000:], "an acknowledged file is missing or partial"
        assert not list(incoming.rglob(".tmp-*")), "partial files must be cleaned up at restart"

        # The sender, like any SCU, re-sends what was not acknowledged.
        rest = [f for f in files if f not in acked]
        report = send_files(list(iter_dicom_files(rest)), parse_peer(f"DICOMNODE@127.0.0.1:{node.port}"), calling_ae="CRASHSCU")
        assert report.sent == len(rest) and not report.failed

        def one_complete_series() -> bool:
            with engine.connect() as conn:
                return conn.execute(select(Series.state)).scalar() == "complete"

        wait_for(one_complete_series, 30, what="the series to complete")
        with engine.connect() as conn:
            jobs = conn.execute(select(Job.version, Job.instance_count)).all()
            count = conn.execute(select(func.count()).select_from(Instance)).scalar()
        assert count == 40
        assert [tuple(j) for j in jobs] == [(1, 40)], "exactly one job for the series"
        engine.dispose()
    finally:
        node.stop()


def test_restart_restores_committed_files_and_removes_partial_ones(tmp_path: Path, make_series: Callable[..., list[Path]]) -> None:
    """A crash after the commit but before the rename was durable: the fsynced temp file is put back."""
    import uuid

    from dicomnode.config import load_config
    from dicomnode.node import Node

    cfg = load_config(write_config(tmp_path), environ={})
    files = make_series("recover", slices=3)
    node = Node(cfg)
    port = node.start()
    try:
        report = send_files(list(iter_dicom_files(files)), parse_peer(f"DICOMNODE@127.0.0.1:{port}"))
        assert report.sent == 3
    finally:
        node.stop()
    stored = sorted(cfg.node.incoming_dir.rglob("*.dcm"))
    original = stored[0].read_bytes()
    # 1. committed row, rename lost: only the complete temporary file remains
    lost = stored[0].parent / f".tmp-{uuid.uuid4().hex}-{stored[0].name}"
    stored[0].rename(lost)
    # 2. a partial write that was never acknowledged
    partial = stored[0].parent / f".tmp-{uuid.uuid4().hex}-1.2.3.4.dcm"
    partial.write_bytes(original[:1000])
    # 3. a temp file for a committed SOP whose content differs from the database
    stored[1].unlink()
    wrong = stored[1].parent / f".tmp-{uuid.uuid4().hex}-{stored[1].name}"
    wrong.write_bytes(original)
    # 4. a replacement committed, its rename lost, and the copy it replaced not yet removed
    sop2 = unique_stem(stored[2].name)
    assert sop2 is not None
    third = stored[2].read_bytes()
    replaced = stored[2].with_name(f"{sop2}-0badc0de.dcm")
    replaced.write_bytes(b"the previous copy")
    lost2 = stored[2].parent / f".tmp-{uuid.uuid4().hex}-{stored[2].name}"
    stored[2].rename(lost2)
    # 5. complete bytes of a committed SOP, but under a name its row does not name: never acknowledged
    other_name = stored[2].parent / f".tmp-{uuid.uuid4().hex}-{sop2}-12345678.dcm"
    other_name.write_bytes(third)

    node = Node(cfg)
    node.start()
    try:
        assert stored[0].read_bytes() == original
        assert not lost.exists() and not partial.exists() and not wrong.exists()
        assert not stored[1].exists()  # not restored from the wrong bytes; the sender will re-send it
        assert stored[2].read_bytes() == third and not lost2.exists()
        assert not replaced.exists(), "the copy a committed replacement superseded is removed at restart"
        assert not other_name.exists() and not (stored[2].parent / f"{sop2}-12345678.dcm").exists()
    finally:
        node.stop()
