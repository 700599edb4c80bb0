"""DICOM client side: C-ECHO and C-STORE to a peer (``dicomnode echo`` / ``send``)."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


class _ClientContext(ssl.SSLContext):
    """A client TLS context that keeps the TLS errors of its sockets.

    pynetdicom catches a failed handshake and only logs it; the sender needs
    the reason to tell the operator (an untrusted certificate, a missing
    client certificate...).
    """

    failures: list[ssl.SSLError]


class _RecordingSocket(ssl.SSLSocket):
    def _record(self, exc: ssl.SSLError) -> None:
        if isinstance(self.context, _ClientContext):
            self.context.failures.append(exc)

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except ssl.SSLError as exc:
            self._record(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        # Under TLS 1.3 a server refuses our (missing) client certificate after
        # our handshake has finished: the alert arrives with the first read.
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self._record(exc)
            raise


def client_tls_context(dest: Destination) -> ssl.SSLContext:
    """The TLS context for connecting to ``dest``: TLS 1.2 or later, certificate and host name verified.

    The peer's certificate must chain to ``tls_ca_file`` (the system's CAs
    without it) and name ``tls_server_name`` (default: ``host``); with
    ``tls_cert_file`` and ``tls_key_file`` the node presents its own
    certificate (mutual TLS).

    Raises
    ------
    NetworkError
        A certificate, key or CA file cannot be loaded.
    """
    ctx = _ClientContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED and check_hostname on
    ctx.failures = []
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if dest.tls_pinned:
        # The one certificate in tls_ca_file is the trust anchor, even when a CA issued it, and the names it carries do
        # not matter: only that exact certificate is accepted.
        ctx.check_hostname = False
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.sslsocket_class = _RecordingSocket
    try:
        if dest.tls_ca_file is not None:
            ctx.load_verify_locations(cafile=dest.tls_ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if dest.tls_cert_file is not None:
            ctx.load_cert_chain(dest.tls_cert_file, dest.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise NetworkError(f"TLS for {dest.name}: cannot load its CA, certificate or key file: {exc}") from exc
    return ctx


_TLS_HINTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate: set tls_cert_file and tls_key_file",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the peer refused the handshake (no common protocol version or cipher, or a client certificate is required)",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our client certificate's CA",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer does not accept our client certificate",
    "WRONG_VERSION_NUMBER": "is the peer listening with TLS on this port?",
    "UNEXPECTED_EOF_WHILE_READING": "the peer closed the connection during the handshake; is it listening with TLS on this port?",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the peer does not speak TLS 1.2 or later",
}


def tls_failure(ctx: ssl.SSLContext | None, dest: Destination) -> str | None:
    """Why the TLS connection to ``dest`` failed, in words, if it did."""
    failures = getattr(ctx, "failures", None)
    if not failures:
        return None
    exc = failures[0]
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = f"certificate verify failed: {str(exc.verify_message).rstrip('.')}"
        if exc.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            hint = f"the certificate does not name {dest.tls_server_name or dest.host}; set tls_server_name to a name it carries"
        else:
            hint = "is the peer's certificate signed by " + (str(dest.tls_ca_file) if dest.tls_ca_file else "a CA this system trusts (set tls_ca_file)") + "?"
    else:
        reason = str(exc.reason or "")
        detail = reason.lower().replace("_", " ") if reason else str(exc)
        hint = _TLS_HINTS.get(reason, "")
    return f"TLS handshake with {where} failed: {detail}" + (f" ({hint})" if hint else "")


def associate(ae: AE, dest: Destination, **kwargs: Any) -> Association:
    """Open an association to ``dest``, over TLS when it says ``tls = true``.

    Raises
    ------
    NetworkError
        No association, with the reason in words (a TLS failure names its cause).
    """
    ctx = client_tls_context(dest) if dest.tls else None
    tls_args = (ctx, dest.tls_server_name or dest.host) if ctx is not None else None
    if ae.connection_timeout is None:  # an unanswered TCP or TLS handshake must not block for ever
        ae.connection_timeout = ae.network_timeout
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args, **kwargs)
    if not assoc.is_established:
        raise NetworkError(tls_failure(ctx, dest) or why_not_established(assoc, dest))
    set_nodelay(assoc)
    return assoc


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
    assoc = associate(ae, dest)
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
    """Why an association to ``dest`` was not established, in words."""
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
        assoc = associate(ae, dest, max_pdu=0)
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
