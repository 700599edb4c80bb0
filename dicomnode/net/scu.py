"""DICOM client side: C-ECHO and C-STORE to a peer (``dicomnode echo`` / ``send``)."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import, unknown to the stubs

from dicomnode.config import Destination
from dicomnode.errors import NetworkError
from dicomnode.dicom.status import describe, is_success

logger = logging.getLogger(__name__)

_PEER_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


def parse_peer(text: str) -> Destination:
    """Parse ``AE@HOST:PORT`` into a destination.

    Raises
    ------
    NetworkError
        The text is not of that form.
    """
    m = _PEER_RE.match(text.strip())
    if not m or not 0 < int(m["port"]) < 65536:
        raise NetworkError(f"{text!r} is not a peer: use AE@HOST:PORT, e.g. PACS@10.0.0.5:104")
    return Destination(name=text, ae_title=m["ae"], host=m["host"].strip("[]"), port=int(m["port"]))


def set_nodelay(assoc: Association) -> None:
    # pynetdicom does not set TCP_NODELAY; without it every small PDU waits
    # for the peer's delayed ACK (about 3x slower sending over loopback).
    wrapper = assoc.dul.socket
    sock = wrapper.socket if wrapper is not None else None
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def echo(dest: Destination, calling_ae: str = "DICOMNODE", timeout: float = 10.0) -> float:
    """Send a C-ECHO and return the round-trip time in seconds.

    Raises
    ------
    NetworkError
        No association, or the peer answered with a failure status.
    """
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    t0 = time.perf_counter()
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise NetworkError(why_not_established(assoc, dest))
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or "Status" not in status:
        raise NetworkError(f"no C-ECHO response from {dest.ae_title}@{dest.host}:{dest.port}")
    if not is_success(int(status.Status)):
        raise NetworkError(f"C-ECHO to {dest.ae_title} failed: {describe(int(status.Status))}")
    return time.perf_counter() - t0


def why_not_established(assoc: Association, dest: Destination) -> str:
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    ac = getattr(assoc.acceptor, "primitive", None)
    if ac is None and not assoc.is_rejected:
        return f"cannot connect to {where} (no DICOM peer listening, or the network blocks it)"
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        reason = getattr(rsp, "reason_str", None) or "rejected"
        return f"association to {where} rejected: {reason}"
    if ac is not None and getattr(ac, "result", None) == 0 and not assoc.accepted_contexts:
        return (
            f"{where} accepted the association but none of the offered SOP classes / transfer syntaxes "
            "(the peer does not store this kind of object)"
        )
    if assoc.is_aborted:
        return f"association to {where} aborted by the peer"
    return f"cannot connect to {where} (no DICOM peer listening, or the network blocks it)"


@dataclass(frozen=True)
class FileInfo:
    """What is needed to send a file without decoding it."""

    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


def iter_dicom_files(paths: Iterable[Path]) -> Iterator[FileInfo]:
    """Find DICOM Part 10 files under ``paths`` (files or directories), skipping others."""
    for root in paths:
        candidates = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for p in candidates:
            try:
                meta = dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
                sop_class = meta.file_meta.MediaStorageSOPClassUID
                ts = meta.file_meta.TransferSyntaxUID
            except (InvalidDicomError, AttributeError, OSError, KeyError):
                logger.debug("skipping %s: not a DICOM Part 10 file", p)
                continue
            yield FileInfo(p, str(sop_class), str(ts))


@dataclass
class SendReport:
    """Result of :func:`send_files`."""

    sent: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0


def send_files(
    files: list[FileInfo],
    dest: Destination,
    *,
    calling_ae: str = "DICOMNODE",
    timeout: float = 60.0,
    on_progress: Callable[[int], None] | None = None,
) -> SendReport:
    """Send ``files`` over one association per batch of 128 presentation contexts.

    Files are sent as stored (no transcoding); each proposes exactly its own
    SOP class and transfer syntax.

    Raises
    ------
    NetworkError
        An association could not be established.
    """
    report = SendReport()
    t0 = time.perf_counter()
    pending = list(files)
    while pending:
        contexts: list[tuple[str, str]] = []
        batch: list[FileInfo] = []
        rest: list[FileInfo] = []
        for f in pending:
            key = (f.sop_class_uid, f.transfer_syntax_uid)
            if key in contexts or len(contexts) < MAX_CONTEXTS:
                if key not in contexts:
                    contexts.append(key)
                batch.append(f)
            else:
                rest.append(f)
        pending = rest
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.maximum_pdu_size = 0
        for sop_class, ts in contexts:
            ae.add_requested_context(sop_class, ts)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, max_pdu=0)
        if not assoc.is_established:
            raise NetworkError(why_not_established(assoc, dest))
        set_nodelay(assoc)
        try:
            for f in batch:
                try:
                    status = assoc.send_c_store(f.path)
                except (ValueError, RuntimeError) as exc:  # e.g. context rejected by the peer
                    report.failed.append((f.path, str(exc)))
                else:
                    if status and "Status" in status and is_success(int(status.Status)):
                        report.sent += 1
                    else:
                        if not status or "Status" not in status:
                            why = "no response (association lost)"
                        else:
                            why = describe(int(status.Status))
                            comment = status.get("ErrorComment")
                            if comment:
                                why += f": {comment}"
                        report.failed.append((f.path, why))
                if on_progress is not None:
                    on_progress(1)
                if not assoc.is_established:
                    lost = batch[batch.index(f) + 1 :]
                    report.failed.extend((p.path, "association lost") for p in lost)
                    if on_progress is not None:
                        on_progress(len(lost))
                    break
        finally:
            if assoc.is_established:
                assoc.release()
    report.seconds = time.perf_counter() - t0
    return report
