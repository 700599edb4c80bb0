"""Sending a set of objects to a peer on one association, with Storage Commitment when asked.

Every object proposes its own transfer syntax plus Explicit and Implicit VR
Little Endian, so a peer that accepts only the default still gets it
(pynetdicom re-encodes between uncompressed syntaxes).  With a commitment
transaction UID, an N-ACTION request follows the C-STOREs (PS3.4 J.3), and
the report is awaited briefly on the same association; a peer may also send
it later, on a new association, to the node's listener.

A report settles a delivery, and a settled delivery lets retention delete
the source, so reports are trusted only as far as they can be checked
(:func:`check_reporter`, :func:`parse_report`, :func:`check_content`): the
transaction UID is random (:func:`new_transaction_uid`), the reporter must
be the destination, and the report must list exactly the objects sent.
Objects are named in errors by kind and position ("the SEG (object 1 of
3)"), never by UID or file name: job errors are shown on the status page.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dicomnode.config import Destination
from dicomnode.dicom.status import (
    CLASS_INSTANCE_CONFLICT,
    INVALID_ARGUMENT_VALUE,
    NO_SUCH_EVENT_TYPE,
    NO_SUCH_SOP_INSTANCE,
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    SUCCESS,
    describe,
    is_success,
)
from dicomnode.errors import NetworkError
from dicomnode.net.scu import MAX_CONTEXTS, associate
from dicomnode.redaction import redact

logger = logging.getLogger(__name__)

COMMIT_ACTION = 1  # N-ACTION type: request storage commitment
EVENT_ALL_COMMITTED = 1  # N-EVENT-REPORT types
EVENT_SOME_FAILED = 2
FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_NAMED = 3  # objects named in a refusal before "and N more"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (event type, event information, reporter's AE title, reporter's address) -> the status to answer
ReportHook = Callable[[int, Dataset | None, str, str], int]


class ReportOutcome(enum.StrEnum):
    """What became of a Storage Commitment report (the audit trail)."""

    ACCEPTED = "accepted"
    REFUSED = "refused"


class CommitmentRefused(NetworkError):
    """A Storage Commitment report that cannot be trusted.

    Parameters
    ----------
    message : str
        Why, in words, without UIDs.
    status : int
        The N-EVENT-REPORT status answered to the reporter.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SentObject:
    """One object of a delivery attempt, as the outbox recorded it."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    label: str  # how errors and logs name it, e.g. "the SEG (object 1 of 3)"


@dataclass(frozen=True)
class CommitmentReport:
    """A Storage Commitment N-EVENT-REPORT, read but not yet checked against what was sent."""

    transaction_uid: str
    event_type: int
    committed: tuple[tuple[str, str], ...]  # (SOP instance UID, SOP class UID)
    failed: tuple[tuple[str, str, int | None], ...]  # the same, with the FailureReason


def new_transaction_uid() -> str:
    """A fresh transaction UID that nobody can predict: ``2.25.`` and a random UUID (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid4().int}"


def printable(text: str, limit: int = 64) -> str:
    """A peer-supplied string made safe for one log line (control characters replaced)."""
    return "".join(c if c.isprintable() else "?" for c in text.strip())[:limit]


def transaction_uid_of(ds: Dataset | None) -> str | None:
    """The TransactionUID of a report, or ``None`` when it has none (or it cannot be read)."""
    try:
        uid = ds.get("TransactionUID") if ds is not None else None
    except Exception:  # data from a peer: pydicom raises many kinds of error on malformed elements
        return None
    return str(uid) if uid else None


def _ip(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:10.0.0.5 from a dual-stack listener is 10.0.0.5
    return addr


def host_addresses(host: str) -> set[IPAddress]:
    """Every address ``host`` resolves to (IPv4-mapped IPv6 addresses as IPv4).

    Raises
    ------
    OSError
        The name does not resolve.
    """
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return {a for info in infos if (a := _ip(str(info[4][0]))) is not None}


def check_reporter(dest: Destination, calling_ae: str, address: str) -> None:
    """Refuse a report unless it comes from ``dest``: its AE title, from one of its host's addresses.

    Raises
    ------
    CommitmentRefused
        ``NOT_AUTHORIZED`` for another AE title or address; ``PROCESSING_FAILURE``
        when the destination's host name does not resolve (the peer may try again).
    """
    who = f"sent by {printable(calling_ae, 16)}@{printable(address)}, not {dest.name} ({dest.ae_title}@{dest.host})"
    if calling_ae.strip() != dest.ae_title.strip():
        raise CommitmentRefused(who, NOT_AUTHORIZED)
    try:
        allowed = host_addresses(dest.host)
    except OSError as exc:
        raise CommitmentRefused(f"cannot resolve {dest.name}'s host {dest.host} to check the reporter: {exc}", PROCESSING_FAILURE) from exc
    peer = _ip(address)
    if peer is None or peer not in allowed:
        raise CommitmentRefused(f"{who}: the AE title is right but the address is not the destination host's", NOT_AUTHORIZED)


def _references(ds: Dataset, keyword: str) -> list[tuple[str, str, int | None]]:
    out = []
    for n, item in enumerate(ds.get(keyword) or [], 1):
        inst, cls = item.get("ReferencedSOPInstanceUID"), item.get("ReferencedSOPClassUID")
        if not inst or not cls:
            raise CommitmentRefused(f"item {n} of its {keyword} lacks the SOP instance or class UID", INVALID_ARGUMENT_VALUE)
        reason = item.get("FailureReason")
        out.append((str(inst), str(cls), int(reason) if reason is not None else None))
    return out


def parse_report(event_type: int, ds: Dataset | None) -> CommitmentReport:
    """Read a Storage Commitment N-EVENT-REPORT (PS3.4 J.3.3).

    Raises
    ------
    CommitmentRefused
        No transaction UID, an event type other than 1 or 2, or unreadable or incomplete sequences.
    """
    uid = transaction_uid_of(ds)
    if ds is None or uid is None:
        raise CommitmentRefused("it names no transaction", INVALID_ARGUMENT_VALUE)
    if event_type not in (EVENT_ALL_COMMITTED, EVENT_SOME_FAILED):
        raise CommitmentRefused(f"event type {event_type} is neither 1 (all committed) nor 2 (some failed)", NO_SUCH_EVENT_TYPE)
    try:
        committed = _references(ds, "ReferencedSOPSequence")
        failed = _references(ds, "FailedSOPSequence")
    except CommitmentRefused:
        raise
    except Exception as exc:  # data from a peer: pydicom raises many kinds of error on malformed elements
        raise CommitmentRefused(f"its sequences cannot be read ({type(exc).__name__})", INVALID_ARGUMENT_VALUE) from exc
    return CommitmentReport(uid, event_type, tuple((i, c) for i, c, _ in committed), tuple(failed))


def _names(labels: Sequence[str]) -> str:
    more = len(labels) - _NAMED
    return ", ".join(labels[:_NAMED]) + (f" and {more} more" if more > 0 else "")


def check_content(report: CommitmentReport, sent: Sequence[SentObject]) -> dict[str, str]:
    """Check that ``report`` lists exactly the objects ``sent``, each with its SOP class.

    Returns
    -------
    dict
        The objects the peer did not commit: label -> failure reason (empty: all committed).

    Raises
    ------
    CommitmentRefused
        An object missing, one not sent or listed twice, a nothing-listed report,
        another SOP class, or an event type that contradicts the lists.
    """
    by_uid = {o.sop_instance_uid: o for o in sent}
    listed = [(i, c, None) for i, c in report.committed] + list(report.failed)
    if not listed:
        raise CommitmentRefused(f"it lists none of the {len(sent)} object(s) sent", INVALID_ARGUMENT_VALUE)
    seen: set[str] = set()
    extra = twice = 0
    wrong_class: list[str] = []
    for inst, cls, _reason in listed:
        if inst in seen:
            twice += 1
            continue
        seen.add(inst)
        obj = by_uid.get(inst)
        if obj is None:
            extra += 1
        elif cls != obj.sop_class_uid:
            wrong_class.append(obj.label)
    missing = [o.label for o in sent if o.sop_instance_uid not in seen]
    problems = [f"it omits {_names(missing)}"] if missing else []
    problems += [f"it lists {extra} object(s) that were not sent"] if extra else []
    problems += [f"it lists {twice} object(s) twice"] if twice else []
    if problems:
        raise CommitmentRefused("; ".join(problems), INVALID_ARGUMENT_VALUE)
    if wrong_class:
        raise CommitmentRefused(f"it gives {_names(wrong_class)} another SOP class than the one sent", CLASS_INSTANCE_CONFLICT)
    if report.event_type == EVENT_ALL_COMMITTED and report.failed:
        raise CommitmentRefused("event type 1 (all committed) with failed objects", INVALID_ARGUMENT_VALUE)
    if report.event_type == EVENT_SOME_FAILED and not report.failed:
        raise CommitmentRefused("event type 2 (some failed) without a failed object", INVALID_ARGUMENT_VALUE)
    return {by_uid[i].label: f"failure reason 0x{r:04X}" if r is not None else "failed" for i, _c, r in report.failed}


@dataclass
class Outcome:
    """What one delivery attempt achieved."""

    sent: int = 0
    report_accepted: bool = False  # a report on the same association was accepted by ``on_report``


def _peer_address(assoc: Any, fallback: str) -> str:
    try:
        return str(assoc.dul.socket.socket.getpeername()[0])
    except (AttributeError, OSError, IndexError, TypeError):
        return fallback


def send_outputs(
    objects: Sequence[SentObject],
    dest: Destination,
    *,
    calling_ae: str,
    timeout: float,
    commitment_uid: str | None = None,
    on_report: ReportHook | None = None,
    report_wait: float = 5.0,
) -> Outcome:
    """C-STORE ``objects`` to ``dest`` on one association (over TLS when ``dest.tls``).

    With ``commitment_uid``, then request Storage Commitment for all of them
    and wait up to ``report_wait`` seconds for a report on this association
    that ``on_report`` accepts (answers with success).

    Raises
    ------
    NetworkError
        No association (a TLS failure says why), a refused object (with the
        peer's status), or a lost connection.
    """
    accepted = threading.Event()

    def handle_report(event: Any) -> tuple[int, Dataset | None]:
        if on_report is None:
            return NO_SUCH_SOP_INSTANCE, None
        try:
            status = on_report(int(event.event_type or 0), event.event_information, dest.ae_title, _peer_address(event.assoc, dest.host))
        except Exception:  # never crash the association: answer with a failure status
            logger.exception("cannot process a Storage Commitment report from %s", dest.name)
            return PROCESSING_FAILURE, None
        if status == SUCCESS:
            accepted.set()
        return status, None

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    syntaxes: dict[str, list[str]] = {}
    for obj in objects:
        ts = str(dcmread(obj.path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta.TransferSyntaxUID)
        wanted = syntaxes.setdefault(obj.sop_class_uid, [])
        for t in (ts, *FALLBACK_SYNTAXES):
            if t not in wanted:
                wanted.append(t)
    if len(syntaxes) + 1 > MAX_CONTEXTS:
        raise NetworkError(f"too many SOP classes ({len(syntaxes)}) for one association")
    for sop_class, tss in syntaxes.items():
        ae.add_requested_context(sop_class, tss)
    if commitment_uid is not None:
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
    where = f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port})"
    assoc = associate(ae, dest, evt_handlers=[(evt.EVT_N_EVENT_REPORT, handle_report)])
    out = Outcome()
    try:
        for obj in objects:
            ds = dcmread(obj.path)
            if str(ds.get("SOPInstanceUID", "")) != obj.sop_instance_uid:
                raise NetworkError(f"{obj.label} on disk is not the object the job recorded; not sent")
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as exc:  # no accepted context for it
                raise NetworkError(f"{where} does not accept {obj.label}: {exc}") from exc
            if not status or "Status" not in status:
                raise NetworkError(f"{where}: no C-STORE response (association lost) after {out.sent} object(s)")
            code = int(status.Status)
            if not is_success(code):
                comment = status.get("ErrorComment")  # the peer's words may name the object by UID
                raise NetworkError(f"{where} refused {obj.label}: {describe(code)}" + (f": {redact(str(comment))}" if comment else ""))
            out.sent += 1
        if commitment_uid is not None:
            _request_commitment(assoc, commitment_uid, objects, where)
            deadline = time.monotonic() + report_wait
            while not accepted.is_set() and time.monotonic() < deadline and assoc.is_established:
                accepted.wait(0.1)
            out.report_accepted = accepted.is_set()
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _request_commitment(assoc: Any, uid: str, objects: Sequence[SentObject], where: str) -> None:
    ds = Dataset()
    ds.TransactionUID = uid
    refs = []
    for obj in objects:
        item = Dataset()
        item.ReferencedSOPClassUID = obj.sop_class_uid
        item.ReferencedSOPInstanceUID = obj.sop_instance_uid
        refs.append(item)
    ds.ReferencedSOPSequence = refs
    try:
        status, _reply = assoc.send_n_action(ds, COMMIT_ACTION, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
    except (ValueError, RuntimeError) as exc:
        raise NetworkError(f"{where} does not offer Storage Commitment: {exc}") from exc
    if not status or "Status" not in status:
        raise NetworkError(f"{where}: no N-ACTION response to the Storage Commitment request")
    if int(status.Status) != SUCCESS:
        raise NetworkError(f"{where} refused the Storage Commitment request: {describe(int(status.Status))}")
