"""Sending job outputs to their destinations: C-STORE, retries with backoff, Storage Commitment.

The :class:`Sender` works from the outbox in the database (see
:mod:`storage.outbox`), so retries survive restarts: a delivery that fails
is scheduled again after ``backoff_seconds * 2**(attempt - 1)`` (at most
``backoff_max_seconds``) until ``max_attempts``, after which the job shows
``delivery_failed`` with the peer's status or the network error.

The network side is :mod:`dicomnode.net.commitment`.  For destinations with
``storage_commitment``, the delivery counts as done only once the peer's
N-EVENT-REPORT confirms every object; the report is taken on the same
association, or later on a new one through the node's listener.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from pydicom import Dataset
from sqlalchemy import Engine

from dicomnode.audit import audit
from dicomnode.background import BackgroundLoop
from dicomnode.config import Config, DeliveryConfig
from dicomnode.dicom.uids import derived_uid
from dicomnode.errors import NetworkError
from dicomnode.metrics import Metrics
from dicomnode.net.commitment import CommitmentReport, parse_commitment_report, send_outputs
from storage.models import utcnow
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
from storage.states import AttemptOutcome, DeliveryState, Stage

logger = logging.getLogger(__name__)


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
            audit("delivery", job=d.job_id, destination=d.destination, outcome=AttemptOutcome.COMMITTED)
            self._done(d)
        return True

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

    def process(self, d: DueDelivery) -> None:
        """One attempt at one delivery."""
        dest = self.destinations.get(d.destination)
        if dest is None:
            record_failure(self.engine, d.id, f"destination {d.destination!r} is no longer configured", None)
            return
        if d.state == DeliveryState.AWAITING_COMMITMENT:
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
              attempt=d.attempts, outcome=AttemptOutcome.SENT, objects=out.sent, commitment=commit_uid is not None)
        if self.metrics is not None:
            self.metrics.delivery_attempts.labels(d.destination, AttemptOutcome.SENT).inc()
        if commit_uid is None:
            record_sent(self.engine, d.id, out.sent)
            self._done(d)
            return
        deadline = utcnow() + timedelta(seconds=self.cfg.delivery.commitment_timeout_seconds)
        record_sent(self.engine, d.id, out.sent, commitment_uid=commit_uid, commitment_deadline=deadline)
        if out.report is not None:
            self.commitment_report(out.report)
