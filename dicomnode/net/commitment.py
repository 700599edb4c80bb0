"""Sending a set of objects to a peer on one association, with Storage Commitment when asked.

Every object proposes its own transfer syntax plus Explicit and Implicit VR
Little Endian, so a peer that accepts only the default still gets it
(pynetdicom re-encodes between uncompressed syntaxes).  With a commitment
transaction UID, an N-ACTION request follows the C-STOREs (PS3.4 J.3), and
the report is awaited briefly on the same association; a peer may also send
it later, on a new association, to the node's listener.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from dicomnode.config import Destination
from dicomnode.dicom.status import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH, SUCCESS, describe, is_success
from dicomnode.errors import NetworkError
from dicomnode.net.scu import MAX_CONTEXTS, set_nodelay, why_not_established

COMMIT_ACTION = 1  # N-ACTION type: request storage commitment
EVENT_ALL_COMMITTED = 1  # N-EVENT-REPORT types
EVENT_SOME_FAILED = 2
FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class CommitmentReport:
    """A Storage Commitment result: the SOP instances the peer did not keep, with reasons."""

    transaction_uid: str
    failed: dict[str, str] = field(default_factory=dict)


def parse_commitment_report(event_type: int, ds: Dataset | None) -> CommitmentReport | None:
    """Read an N-EVENT-REPORT of Storage Commitment (``None`` if it has no transaction UID)."""
    uid = getattr(ds, "TransactionUID", None) if ds is not None else None
    if not uid:
        return None
    failed: dict[str, str] = {}
    for item in getattr(ds, "FailedSOPSequence", []) or []:
        reason = getattr(item, "FailureReason", None)
        failed[str(item.ReferencedSOPInstanceUID)] = f"failure reason 0x{int(reason):04X}" if reason is not None else "failed"
    if event_type == EVENT_SOME_FAILED and not failed:
        failed["?"] = "the peer reported failures without naming them"
    return CommitmentReport(str(uid), failed)


@dataclass
class Outcome:
    """What one delivery attempt achieved."""

    sent: int = 0
    report: CommitmentReport | None = None  # a report received on the same association


def send_outputs(
    files: Sequence[tuple[Path, str]],
    dest: Destination,
    *,
    calling_ae: str,
    timeout: float,
    commitment_uid: str | None = None,
    report_wait: float = 5.0,
) -> Outcome:
    """C-STORE ``files`` (``(path, SOP class UID)``) to ``dest`` on one association.

    With ``commitment_uid``, then request Storage Commitment for all of them
    and wait up to ``report_wait`` seconds for the report on this association.

    Raises
    ------
    NetworkError
        No association, a refused object (with the peer's status), or a lost connection.
    """
    reports: queue.Queue[CommitmentReport] = queue.Queue()

    def on_report(event: Any) -> tuple[int, Dataset | None]:
        rep = parse_commitment_report(int(event.event_type), event.event_information)
        if rep is not None:
            reports.put(rep)
        return SUCCESS, None

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    syntaxes: dict[str, list[str]] = {}
    datasets: list[tuple[Path, str]] = list(files)
    for path, sop_class in datasets:
        ts = str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta.TransferSyntaxUID)
        wanted = syntaxes.setdefault(sop_class, [])
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
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    if not assoc.is_established:
        raise NetworkError(why_not_established(assoc, dest))
    set_nodelay(assoc)
    out = Outcome()
    try:
        for path, _sop_class in datasets:
            try:
                status = assoc.send_c_store(dcmread(path))
            except (ValueError, RuntimeError) as exc:  # no accepted context for it
                raise NetworkError(f"{where} does not accept {path.name}: {exc}") from exc
            if not status or "Status" not in status:
                raise NetworkError(f"{where}: no C-STORE response (association lost) after {out.sent} object(s)")
            code = int(status.Status)
            if not is_success(code):
                comment = status.get("ErrorComment")
                raise NetworkError(f"{where} refused {path.name}: {describe(code)}" + (f": {comment}" if comment else ""))
            out.sent += 1
        if commitment_uid is not None:
            _request_commitment(assoc, commitment_uid, datasets, where)
            deadline = time.monotonic() + report_wait
            while out.report is None and time.monotonic() < deadline and assoc.is_established:
                try:
                    out.report = reports.get(timeout=0.1)
                except queue.Empty:
                    pass
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _request_commitment(assoc: Any, uid: str, files: Sequence[tuple[Path, str]], where: str) -> None:
    ds = Dataset()
    ds.TransactionUID = uid
    refs = []
    for path, sop_class in files:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
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
