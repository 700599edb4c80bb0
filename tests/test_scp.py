"""The C-STORE SCP against real peers on 127.0.0.1: pynetdicom and dcmtk's storescu."""

from __future__ import annotations

import errno
import logging
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.dicom import status
from dicomnode.errors import NetworkError
from dicomnode.node import Node
from dicomnode.net.scu import iter_dicom_files, parse_peer, send_files
from tests.conftest import jobs_of, series_of, wait_for_jobs
from tests.helpers import dcmtk_env, require_tool, store_files, storescu, wait_for


def dataset_bytes(path: Path) -> bytes:
    """The dataset part of a Part 10 file (after preamble and file meta)."""
    raw = path.read_bytes()
    group_len = struct.unpack_from("<L", raw, 128 + 4 + 8)[0]
    return raw[128 + 4 + 12 + group_len :]


def stored_path(node: Node, src: Path) -> Path:
    """The file the instance's row names (every write has a new name), or a path that does not exist."""
    from storage.instances import find_instance

    ds = dcmread(src, stop_before_pixels=True)
    known = find_instance(node.engine, ds.SOPInstanceUID)
    return node.cfg.node.incoming_dir / (known.path if known else f"{ds.StudyInstanceUID}/not-stored")


def send(node: Node, files: list[Path], calling_ae: str = "TESTSCU"):  # type: ignore[no-untyped-def]
    dest = parse_peer(f"DICOMNODE@127.0.0.1:{node.cfg.node.port}")
    return send_files(list(iter_dicom_files(files)), dest, calling_ae=calling_ae)


def test_pynetdicom_scu_series_stored_exactly_and_completed_on_release(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node = node_factory()
    files = make_series("plain", slices=12)
    report = send(node, files)
    assert report.sent == 12 and not report.failed
    for f in files:
        out = stored_path(node, f)
        assert out.is_file()
        assert dataset_bytes(out) == dataset_bytes(f), "the dataset must be stored exactly as received"
        meta = dcmread(out, stop_before_pixels=True).file_meta
        assert meta.SourceApplicationEntityTitle == "TESTSCU"
    jobs = wait_for_jobs(node, 1)
    assert len(jobs) == 1
    assert jobs[0].completion_reason == "association_released"  # quiet_seconds is 30: not the timer
    assert jobs[0].instance_count == 12
    [series] = series_of(node)
    assert series.state == "complete" and series.instance_count == 12 and series.calling_ae == "TESTSCU"
    assert not list(node.cfg.node.incoming_dir.rglob(".tmp-*"))


def test_storescu_plain_series(node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]) -> None:
    node = node_factory()
    files = make_series("dcmtk", slices=10)
    r = storescu(node.cfg.node.port, files)
    assert r.returncode == 0, r.stderr
    assert all(stored_path(node, f).is_file() for f in files)
    jobs = wait_for_jobs(node, 1)
    assert [j.instance_count for j in jobs] == [10]


@pytest.mark.parametrize(
    ("tool", "tool_args", "scu_flag", "ts"),
    [
        ("dcmcjpeg", [], "-xs", "1.2.840.10008.1.2.4.70"),  # JPEG lossless SV1
        ("dcmcrle", [], "-xr", "1.2.840.10008.1.2.5"),  # RLE lossless
    ],
)
def test_storescu_compressed_series_stored_without_transcoding(
    node_factory: Callable[..., Node],
    make_series: Callable[..., list[Path]],
    tmp_path: Path,
    tool: str,
    tool_args: list[str],
    scu_flag: str,
    ts: str,
) -> None:
    exe = require_tool(tool)
    node = node_factory()
    compressed = []
    for f in make_series(f"c-{tool}", slices=6):
        out = tmp_path / f"{tool}-{f.name}"
        subprocess.run([exe, *tool_args, str(f), str(out)], check=True, capture_output=True)
        compressed.append(out)
    r = storescu(node.cfg.node.port, compressed, extra=[scu_flag])
    assert r.returncode == 0, r.stderr
    for f in compressed:
        out = stored_path(node, f)
        assert str(dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID) == ts
        assert dataset_bytes(out) == dataset_bytes(f)
        assert dcmread(out).pixel_array.shape == (64, 64)  # and it decodes
    assert [j.instance_count for j in wait_for_jobs(node, 1)] == [6]


def test_duplicates_are_idempotent_and_late_instance_reopens_series(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node = node_factory()
    files = make_series("dup", slices=8)
    assert send(node, files[:7]).sent == 7
    wait_for_jobs(node, 1)
    # The whole series again (7 identical duplicates), plus the missing 8th instance.
    assert send(node, files).sent == 8
    jobs = wait_for_jobs(node, 2)
    assert [(j.version, j.instance_count) for j in jobs] == [(1, 7), (2, 8)]
    [series] = series_of(node)
    assert series.instance_count == 8 and series.reopen_count == 1 and series.version == 2
    # A pure re-send of identical data changes nothing and queues nothing.
    assert send(node, files).sent == 8
    assert len(jobs_of(node)) == 2
    assert series_of(node)[0].state == "complete"


def test_refused_calling_ae_title(node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]) -> None:
    node = node_factory('allowed_calling_aes = ["CT_SCANNER"]')
    files = make_series("ae", slices=2)
    r = storescu(node.cfg.node.port, files, calling="INTRUDER")
    assert r.returncode != 0
    assert "Calling AE Title Not Recognized" in r.stderr or "rejected" in r.stderr.lower(), r.stderr
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.cfg.node.port, ae_title="DICOMNODE")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (
        status.REJECTED_PERMANENT,
        status.SOURCE_SERVICE_USER,
        status.REASON_CALLING_AE_NOT_RECOGNIZED,
    )
    # The allowed AE gets in.
    assert storescu(node.cfg.node.port, files, calling="CT_SCANNER").returncode == 0


def test_wrong_called_ae_title_rejected(node_factory: Callable[..., Node]) -> None:
    node = node_factory()
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.cfg.node.port, ae_title="SOMEONE_ELSE")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == status.REASON_CALLED_AE_NOT_RECOGNIZED


def test_host_allow_list_drops_other_peers(node_factory: Callable[..., Node]) -> None:
    node = node_factory('allowed_hosts = ["10.0.0.0/8"]')
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.cfg.node.port, ae_title="DICOMNODE")
    assert not assoc.is_established


def test_association_limit(node_factory: Callable[..., Node]) -> None:
    node = node_factory("max_associations = 1")
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    first = ae.associate("127.0.0.1", node.cfg.node.port, ae_title="DICOMNODE")
    assert first.is_established
    second = ae.associate("127.0.0.1", node.cfg.node.port, ae_title="DICOMNODE")
    try:
        assert second.is_rejected
        assert second.acceptor.primitive.result == status.REJECTED_TRANSIENT
    finally:
        first.release()


def _store_file(node: Node, path: Path) -> tuple[int, str | None]:
    """Send one Part 10 file as it is (pynetdicom streams the bytes after the meta)."""
    return store_files(node.cfg.node.port, [path])[0]


def test_truncated_dataset_gets_cannot_understand(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node = node_factory()
    [f1, f2] = make_series("trunc", slices=2)
    raw = f1.read_bytes()
    truncated = f1.with_name("truncated.dcm")
    truncated.write_bytes(raw[: len(raw) - 3000])  # cut inside the pixel data
    code, comment = _store_file(node, truncated)
    assert code == status.ERROR_CANNOT_UNDERSTAND
    assert comment and "truncated" in comment
    assert not stored_path(node, f1).exists()
    assert not list(node.cfg.node.incoming_dir.rglob(".tmp-*"))
    # The node keeps serving: the intact instance is accepted afterwards.
    assert send(node, [f2]).sent == 1


def test_free_space_watermark_refuses_with_out_of_resources(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    node = node_factory("min_free_mb = 1000000000")  # 1 PB: never available
    files = make_series("full", slices=2)
    report = send(node, files)
    assert report.sent == 0 and len(report.failed) == 2
    assert all("0xA700" in why for _, why in report.failed), report.failed
    assert not stored_path(node, files[0]).exists()
    r = storescu(node.cfg.node.port, files, extra=["-v"])
    assert r.returncode != 0
    assert "refused: outofresources" in (r.stdout + r.stderr).lower()


def test_disk_full_during_write_refuses_and_leaves_no_partial_file(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import storage.files

    node = node_factory()
    files = make_series("enospc", slices=2)
    real_write = storage.files.os.write

    def full_disk(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.files.os, "write", full_disk)
    report = send(node, files[:1])
    assert report.sent == 0 and "0xA700" in report.failed[0][1]
    assert not list(node.cfg.node.incoming_dir.rglob(".tmp-*"))
    monkeypatch.setattr(storage.files.os, "write", real_write)
    assert send(node, files).sent == 2


def test_unsupported_sop_class_is_refused_at_negotiation(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    node = node_factory()
    plan = Path(get_testdata_file("rtplan.dcm"))  # type: ignore[arg-type]  # neither an image nor what comes with one
    with pytest.raises(NetworkError, match="none of the offered SOP classes"):
        send(node, [plan])


def test_no_patient_data_in_info_logs(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    node = node_factory()
    files = make_series("phi", slices=4, patient_name="Secret^Person", patient_id="PID-SECRET-42")
    assert send(node, files).sent == 4
    wait_for_jobs(node, 1)
    ds = dcmread(files[0], stop_before_pixels=True)

    def logged() -> str | None:  # the lines come from other threads, maybe just after the job row
        text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
        return text if "association" in text and "complete" in text else None

    text = wait_for(logged, 20, what="the association and completion log lines")  # it does log what it does
    for secret in ("Secret", "PID-SECRET-42", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert secret not in text


def test_echo_with_dcmtk(node_factory: Callable[..., Node]) -> None:
    exe = require_tool("echoscu")
    node = node_factory()
    r = subprocess.run([exe, "-aec", "DICOMNODE", "127.0.0.1", str(node.cfg.node.port)], capture_output=True, text=True, env=dcmtk_env(), timeout=30)
    assert r.returncode == 0, r.stderr


def test_connections_are_counted_from_accept_until_their_association_thread_ends() -> None:
    """The per-address cap counts a connection exactly once, from accept until its association's thread ends."""
    import threading
    from types import SimpleNamespace

    from dicomnode.net.scp import Connections

    class Assoc(threading.Thread):  # what Connections reads of a pynetdicom Association: a thread with a requestor
        def __init__(self, port: int) -> None:
            super().__init__()
            self.requestor = SimpleNamespace(address="10.0.0.1", port=port)
            self.release = threading.Event()

        def run(self) -> None:
            self.release.wait(10)

    conns = Connections()
    assert conns.admit(("10.0.0.1", 1), 2) is None
    assert conns.admit(("10.0.0.1", 2), 2) is None
    assert conns.admit(("10.0.0.1", 3), 2) == 2, "a third connection from the address is refused"
    assert conns.admit(("10.0.0.2", 1), 2) is None, "another address has its own count"
    conns.settle(("10.0.0.1", 1))  # its TLS handshake failed: it never became an association
    assert conns.admit(("10.0.0.1", 4), 2) is None
    a = Assoc(2)
    conns.opened(a)
    a.start()
    conns.settle(("10.0.0.1", 2))  # the handler returned; the association runs on
    assert conns.admit(("10.0.0.1", 5), 2) == 2
    a.release.set()
    a.join()
    assert conns.admit(("10.0.0.1", 5), 2) is None, "an ended association frees its slot"
