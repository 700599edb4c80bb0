"""Sending job outputs to their destinations: C-STORE or STOW-RS, retries with backoff, Storage Commitment.

The :class:`Sender` works from the outbox in the database (see
:mod:`storage.outbox`), so retries survive restarts: a delivery that fails
is scheduled again after ``backoff_seconds * 2**(attempt - 1)`` (at most
``backoff_max_seconds``) until ``max_attempts``, after which the job shows
``delivery_failed`` with the peer's status or the network error.

The network side is :mod:`dicomnode.net.commitment` (DIMSE) and
:mod:`dicomnode.net.stow` (DICOMweb: the peer's answer names each refused
instance and why; the delivery is retried until every object is stored).  For destinations with
``storage_commitment``, the delivery counts as done only once the peer's
N-EVENT-REPORT confirms every object; the report is taken on the same
association, or later on a new one through the node's listener.  Each
attempt has a random transaction UID, and a report is accepted only from the
destination and only when it lists exactly the objects sent
(:meth:`Sender.settle_report`); every report is audited.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import NoReturn

from pydicom import Dataset
from sqlalchemy import Engine

from dicomnode.audit import audit
from dicomnode.background import BackgroundLoop
from dicomnode.config import Config, DeliveryConfig, Destination
from dicomnode.config.peers import DestinationKind
from dicomnode.dicom.status import NO_SUCH_SOP_INSTANCE, NOT_AUTHORIZED, SUCCESS, describe
from dicomnode.errors import NetworkError
from dicomnode.metrics import Metrics
from dicomnode.net.commitment import (
    CommitmentRefused,
    ReportOutcome,
    SentObject,
    check_content,
    check_reporter,
    new_transaction_uid,
    parse_report,
    printable,
    send_outputs,
    transaction_uid_of,
)
from storage.models import utcnow
from storage.outbox import (
    DueDelivery,
    awaiting_commitment,
    begin_commitment,
    claim_due,
    note_refused_report,
    outputs_for,
    record_committed,
    record_failure,
    record_sent,
)
from storage.states import AttemptOutcome, DeliveryState, OutputKind, Stage

logger = logging.getLogger(__name__)

_KIND_NAMES = {OutputKind.SEG: "SEG", OutputKind.SR: "SR", OutputKind.PREVIEW: "key image", OutputKind.KOS: "KOS",
               OutputKind.SOURCE: "source instance"}


def backoff(cfg: DeliveryConfig, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return float(min(cfg.backoff_max_seconds, cfg.backoff_seconds * 2 ** max(0, attempt - 1)))


class Sender(BackgroundLoop):
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
        super().__init__("dicomnode-sender", cfg.delivery.poll_seconds)
        self.engine = engine
        self.cfg = cfg
        self.metrics = metrics
        self.destinations = {d.name: d for d in cfg.destinations}

    def step(self) -> bool:
        """Send what is due; ``True`` when there was something (look again at once)."""
        return self.run_once() > 0

    def run_once(self) -> int:
        """Claim and process the deliveries that are due; returns how many."""
        lease = self.cfg.delivery.network_timeout * 4 + 60
        due = claim_due(self.engine, lease)
        for d in due:
            if self.stopping:
                break
            self.process(d)
        return len(due)

    def on_event_report(self, event_type: int, ds: Dataset | None, *, calling_ae: str, address: str) -> int:
        """The listener's hook for a Storage Commitment report on a new association.

        Returns
        -------
        int
            The status to answer: success when the report settled its delivery,
            else the reason it was refused (see :meth:`settle_report`).
        """
        return self.settle_report(event_type, ds, calling_ae=calling_ae, address=address)

    def settle_report(self, event_type: int, ds: Dataset | None, *, calling_ae: str, address: str, via: str | None = None) -> int:
        """Check a Storage Commitment report and settle the delivery it names; returns the status to answer.

        The report must name the transaction of a delivery's current attempt,
        come from that delivery's destination (its AE title and one of its
        host's addresses; ``via`` names the destination whose own association
        carried it), and list exactly the objects sent.  A refused report
        changes nothing: the delivery keeps waiting, and is sent again when
        ``commitment_timeout_seconds`` pass without an acceptable one.
        """
        reporter = f"{printable(calling_ae, 16)}@{printable(address)}"
        uid = transaction_uid_of(ds)
        d = awaiting_commitment(self.engine, uid) if uid else None
        dest = self.destinations.get(d.destination) if d is not None else None
        try:
            if d is None:
                self._unknown_transaction(calling_ae, address)
            if dest is None:
                raise CommitmentRefused("its destination is no longer configured", NOT_AUTHORIZED)
            if via != dest.name:
                check_reporter(dest, calling_ae, address)
            failed = check_content(parse_report(event_type, ds), self._sent(d))
        except CommitmentRefused as exc:
            job = f"job {d.job_id}" if d is not None else "an unknown transaction"
            logger.warning("Storage Commitment report for %s refused (%s): %s", job, describe(exc.status), exc)
            audit("commitment", reporter_ae=printable(calling_ae, 16), reporter_address=printable(address),
                  destination=d.destination if d else None, job=d.job_id if d else None, outcome=ReportOutcome.REFUSED,
                  status=f"0x{exc.status:04X}", reason=str(exc))
            if d is not None:
                note_refused_report(self.engine, d.id, d.commitment_uid or "", f"{reporter}: {exc}")
            return exc.status
        audit("commitment", reporter_ae=dest.ae_title, reporter_address=printable(address), destination=d.destination,
              job=d.job_id, outcome=ReportOutcome.ACCEPTED, failed=len(failed))
        if failed:
            what, why = next(iter(failed.items()))
            self._fail(d, f"{d.destination} did not commit {len(failed)} object(s) (e.g. {what}: {why})")
        elif record_committed(self.engine, d.id, d.commitment_uid or ""):
            logger.info("job %d: %s (%s) confirmed storage commitment", d.job_id, d.destination, reporter)
            audit("delivery", job=d.job_id, destination=d.destination, outcome=AttemptOutcome.COMMITTED)
            self._done(d)
        return SUCCESS

    def _unknown_transaction(self, calling_ae: str, address: str) -> NoReturn:
        # A reporter that is no destination learns nothing: the same refusal
        # whether or not the transaction exists.
        for dest in self.destinations.values():
            if dest.storage_commitment:
                try:
                    check_reporter(dest, calling_ae, address)
                except CommitmentRefused:
                    continue
                raise CommitmentRefused(
                    "it names no transaction that a delivery awaits (unknown, or of an earlier attempt)", NO_SUCH_SOP_INSTANCE
                )
        raise CommitmentRefused(
            f"sent by {printable(calling_ae, 16)}@{printable(address)}, which is no destination with storage_commitment",
            NOT_AUTHORIZED,
        )

    def _sent(self, d: DueDelivery) -> list[SentObject]:
        """The objects a delivery sends, named by kind and position."""
        rows = outputs_for(self.engine, d.job_id, d.variant)
        root = self.cfg.node.storage_dir
        return [
            SentObject(root / o.path, o.sop_class_uid, o.sop_instance_uid, f"the {_KIND_NAMES.get(o.kind, o.kind)} (object {i} of {len(rows)})")
            for i, o in enumerate(rows, 1)
        ]

    def _done(self, d: DueDelivery) -> None:
        if self.metrics is not None and d.created_at is not None:
            self.metrics.stage_seconds.labels(Stage.DELIVER, "-", d.destination).observe((utcnow() - d.created_at).total_seconds())

    def _fail(self, d: DueDelivery, error: str) -> None:
        if self.metrics is not None:
            self.metrics.delivery_attempts.labels(d.destination, AttemptOutcome.FAILED).inc()
        pol = self.cfg.delivery
        audit("delivery", job=d.job_id, destination=d.destination, attempt=d.attempts, outcome=AttemptOutcome.FAILED, error=error)
        if d.attempts >= pol.max_attempts:
            logger.error("job %d to %s: giving up after %d attempt(s): %s", d.job_id, d.destination, d.attempts, error)
            record_failure(self.engine, d.id, f"after {d.attempts} attempt(s): {error}", None)
        else:
            wait = backoff(pol, d.attempts)
            logger.warning("job %d to %s: attempt %d failed (%s); next in %.0f s", d.job_id, d.destination, d.attempts, error, wait)
            record_failure(self.engine, d.id, error, utcnow() + timedelta(seconds=wait))

    def _stow(self, d: DueDelivery, dest: Destination, objects: list[SentObject]) -> None:
        """One STOW-RS attempt: done when the peer stored every object, else retried with the refused ones named."""
        from dicomnode.net.stow import StowObject, stow

        t0 = time.perf_counter()
        try:
            out = stow([StowObject(o.path, o.sop_instance_uid, o.label) for o in objects], dest, self.cfg.delivery.network_timeout)
        except (NetworkError, OSError) as exc:
            self._fail(d, str(exc))
            return
        audit("delivery", job=d.job_id, destination=d.destination, url=dest.url, attempt=d.attempts,
              outcome=AttemptOutcome.SENT if not out.failed else AttemptOutcome.FAILED, objects=out.sent, refused=len(out.failed))
        if out.failed:
            reasons = "; ".join(f"{label}: {why}" for label, why in out.failed.items())
            self._fail(d, f"{dest.name} stored {out.sent} of {len(objects)} object(s) and refused {len(out.failed)}: {reasons}")
            return
        logger.info("job %d: stored %d object(s) at %s by STOW-RS in %.2f s", d.job_id, out.sent, dest.name, time.perf_counter() - t0)
        if self.metrics is not None:
            self.metrics.delivery_attempts.labels(d.destination, AttemptOutcome.SENT).inc()
        record_sent(self.engine, d.id, out.sent)
        self._done(d)

    def process(self, d: DueDelivery) -> None:
        """One attempt at one delivery."""
        dest = self.destinations.get(d.destination)
        if dest is None:
            record_failure(self.engine, d.id, f"destination {d.destination!r} is no longer configured", None)
            return
        if d.state == DeliveryState.AWAITING_COMMITMENT:
            refused = f" (last refused report: {d.last_error})" if d.last_error else ""
            self._fail(d, f"no Storage Commitment report from {dest.name} within {self.cfg.delivery.commitment_timeout_seconds:.0f} s{refused}")
            return
        objects = self._sent(d)
        missing = [o.label for o in objects if not o.path.is_file()]
        if missing or not objects:
            record_failure(self.engine, d.id, f"output file(s) missing: {', '.join(missing) or 'none recorded'}", None)
            return
        if dest.kind == DestinationKind.DICOMWEB:
            self._stow(d, dest, objects)
            return
        # Random, so that nobody who has not seen the request can report on it.
        commit_uid = new_transaction_uid() if d.storage_commitment else None
        if commit_uid is not None:
            begin_commitment(self.engine, d.id, commit_uid)
        t0 = time.perf_counter()

        def same_association(event_type: int, ds: Dataset | None, calling_ae: str, address: str) -> int:
            return self.settle_report(event_type, ds, calling_ae=calling_ae, address=address, via=dest.name)

        try:
            out = send_outputs(
                objects, dest, calling_ae=self.cfg.node.ae_title, timeout=self.cfg.delivery.network_timeout,
                commitment_uid=commit_uid, on_report=same_association, report_wait=self.cfg.delivery.report_wait_seconds,
            )
        except (NetworkError, OSError) as exc:
            self._fail(d, str(exc))
            return
        logger.info("job %d: sent %d object(s) to %s in %.2f s", d.job_id, out.sent, dest.name, time.perf_counter() - t0)
        audit("delivery", job=d.job_id, destination=d.destination, ae_title=dest.ae_title, host=dest.host, port=dest.port,
              attempt=d.attempts, outcome=AttemptOutcome.SENT, objects=out.sent, commitment=commit_uid is not None, tls=dest.tls)
        if self.metrics is not None:
            self.metrics.delivery_attempts.labels(d.destination, AttemptOutcome.SENT).inc()
        if commit_uid is None:
            record_sent(self.engine, d.id, out.sent)
            self._done(d)
            return
        # Unless a report on this association already settled it, the delivery awaits one until the deadline.
        deadline = utcnow() + timedelta(seconds=self.cfg.delivery.commitment_timeout_seconds)
        record_sent(self.engine, d.id, out.sent, commitment_uid=commit_uid, commitment_deadline=deadline)
