"""Sending job outputs to their destinations: C-STORE, retries with backoff, Storage Commitment.

The :class:`Sender` works from the outbox in the database (see
:mod:`storage.outbox`), so retries survive restarts: a delivery that fails
is scheduled again after ``backoff_seconds * 2**(attempt - 1)`` (at most
``backoff_max_seconds``) until ``max_attempts``, after which the job shows
``delivery_failed`` with the peer's status or the network error.

Every output proposes its own transfer syntax plus Explicit and Implicit VR
Little Endian, so a peer that accepts only the default still gets it
(pynetdicom re-encodes between uncompressed syntaxes).  For destinations
with ``storage_commitment``, an N-ACTION request follows the C-STOREs, and
the delivery counts as done only once the peer's N-EVENT-REPORT confirms
every object; the report is taken on the same association, or later on a
new one through the node's listener.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from sqlalchemy import Engine

from dicomnode.audit import audit
from dicomnode.config import Config, DeliveryConfig, Destination
from dicomnode.errors import NetworkError
from dicomnode.metrics import Metrics
from dicomnode.net.scu import MAX_CONTEXTS, set_nodelay, why_not_established
from dicomnode.dicom.status import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH, SUCCESS, describe, is_success
from dicomnode.testing.synthetic import derived_uid
from storage.models import DeliveryState, utcnow
from storage.outbox import (
    DueDelivery,
    awaiting_commitment,
    begin_commitment,
    claim_due,
    outputs_for,
    record_committed,
    record_failure,
    record_sent,
)

logger = logging.getLogger(__name__)

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


def backoff(cfg: DeliveryConfig, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return float(min(cfg.backoff_max_seconds, cfg.backoff_seconds * 2 ** max(0, attempt - 1)))


class Sender:
    """Sends due deliveries from the outbox, one at a time, in a background thread.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The node's database.
    cfg : Config
        Destinations, delivery policy, our AE title and the outputs folder.
    metrics : Metrics, optional
        Attempts by outcome, and the deliver stage's seconds.
    """

    def __init__(self, engine: Engine, cfg: Config, metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.cfg = cfg
        self.metrics = metrics
        self.destinations = {d.name: d for d in cfg.destinations}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the sending thread."""
        self._thread = threading.Thread(target=self._run, name="dicomnode-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current delivery."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look at the outbox now (a job just finished)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # never let the sender die: log and try again later
                logger.exception("delivery loop failed; retrying")
                busy = 0
            if not busy:
                self._wake.wait(self.cfg.delivery.poll_seconds)
                self._wake.clear()

    def run_once(self) -> int:
        """Claim and process the deliveries that are due; returns how many."""
        lease = self.cfg.delivery.network_timeout * 4 + 60
        due = claim_due(self.engine, lease)
        for d in due:
            if self._stop.is_set():
                break
            self.process(d)
        return len(due)

    def on_event_report(self, event_type: int, ds: Dataset | None) -> bool:
        """The listener's hook for a Storage Commitment report on a new association."""
        report = parse_commitment_report(event_type, ds)
        return report is not None and self.commitment_report(report)

    def commitment_report(self, report: CommitmentReport) -> bool:
        """Settle the delivery that awaits ``report`` (``False``: none does)."""
        d = awaiting_commitment(self.engine, report.transaction_uid)
        if d is None:
            logger.warning("Storage Commitment report for an unknown transaction %s", report.transaction_uid)
            return False
        if report.failed:
            uid, why = next(iter(report.failed.items()))
            self._fail(d, f"{d.destination} did not commit {len(report.failed)} object(s) (e.g. {uid}: {why})")
        elif record_committed(self.engine, d.id, report.transaction_uid):
            logger.info("job %d: %s confirmed storage commitment", d.job_id, d.destination)
            audit("delivery", job=d.job_id, destination=d.destination, outcome="committed")
            self._done(d)
        return True

    def _done(self, d: DueDelivery) -> None:
        if self.metrics is not None and d.created_at is not None:
            self.metrics.stage_seconds.labels("deliver", "-", d.destination).observe((utcnow() - d.created_at).total_seconds())

    def _fail(self, d: DueDelivery, error: str) -> None:
        if self.metrics is not None:
            self.metrics.delivery_attempts.labels(d.destination, "failed").inc()
        pol = self.cfg.delivery
        audit("delivery", job=d.job_id, destination=d.destination, attempt=d.attempts, outcome="failed", error=error)
        if d.attempts >= pol.max_attempts:
            logger.error("job %d to %s: giving up after %d attempt(s): %s", d.job_id, d.destination, d.attempts, error)
            record_failure(self.engine, d.id, f"after {d.attempts} attempt(s): {error}", None)
        else:
            wait = backoff(pol, d.attempts)
            logger.warning("job %d to %s: attempt %d failed (%s); next in %.0f s", d.job_id, d.destination, d.attempts, error, wait)
            record_failure(self.engine, d.id, error, utcnow() + timedelta(seconds=wait))

    def process(self, d: DueDelivery) -> None:
        """One attempt at one delivery."""
        dest = self.destinations.get(d.destination)
        if dest is None:
            record_failure(self.engine, d.id, f"destination {d.destination!r} is no longer configured", None)
            return
        if d.state == DeliveryState.AWAITING_COMMITMENT.value:
            self._fail(d, f"no Storage Commitment report from {dest.name} within {self.cfg.delivery.commitment_timeout_seconds:.0f} s")
            return
        root = self.cfg.node.storage_dir
        files = [(root / o.path, o.sop_class_uid) for o in outputs_for(self.engine, d.job_id, d.variant)]
        missing = [p.name for p, _ in files if not p.is_file()]
        if missing or not files:
            record_failure(self.engine, d.id, f"output file(s) missing: {', '.join(missing) or 'none recorded'}", None)
            return
        commit_uid = str(derived_uid("commitment", d.id, d.attempts)) if d.storage_commitment else None
        if commit_uid is not None:
            begin_commitment(self.engine, d.id, commit_uid)
        t0 = time.perf_counter()
        try:
            out = send_outputs(
                files, dest, calling_ae=self.cfg.node.ae_title, timeout=self.cfg.delivery.network_timeout,
                commitment_uid=commit_uid,
            )
        except (NetworkError, OSError) as exc:
            self._fail(d, str(exc))
            return
        logger.info("job %d: sent %d object(s) to %s in %.2f s", d.job_id, out.sent, dest.name, time.perf_counter() - t0)
        audit("delivery", job=d.job_id, destination=d.destination, ae_title=dest.ae_title, host=dest.host, port=dest.port,
              attempt=d.attempts, outcome="sent", objects=out.sent, commitment=commit_uid is not None)
        if self.metrics is not None:
            self.metrics.delivery_attempts.labels(d.destination, "sent").inc()
        if commit_uid is None:
            record_sent(self.engine, d.id, out.sent)
            self._done(d)
            return
        deadline = utcnow() + timedelta(seconds=self.cfg.delivery.commitment_timeout_seconds)
        record_sent(self.engine, d.id, out.sent, commitment_uid=commit_uid, commitment_deadline=deadline)
        if out.report is not None:
            self.commitment_report(out.report)
