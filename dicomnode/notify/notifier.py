"""The notifier: announces each job that ended to every ``[[notify]]`` target, with retries.

It works from the notification outbox (:mod:`storage.notify`), so an
announcement that fails is tried again after the delivery backoff
(``delivery.backoff_seconds``, doubling) up to ``delivery.max_attempts``,
across restarts.  A job's outcome is not changed by its notifications.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from sqlalchemy import Engine

from dicomnode.audit import audit
from dicomnode.background import BackgroundLoop
from dicomnode.config import Config
from dicomnode.config.notify import NotifyKind
from dicomnode.errors import NetworkError
from dicomnode.jobs.delivery import backoff
from dicomnode.notify.summary import summarize
from storage.errors import StorageError
from storage.models import utcnow
from storage.notify import DueNotification, claim_due, queue_new, record_done, record_failure

logger = logging.getLogger(__name__)


class Notifier(BackgroundLoop):
    """Sends due notifications in a background thread (started by the node when ``[[notify]]`` targets exist)."""

    def __init__(self, engine: Engine, cfg: Config) -> None:
        super().__init__("dicomnode-notifier", cfg.delivery.poll_seconds)
        self.engine, self.cfg = engine, cfg
        self.targets = {t.name: t for t in cfg.notify}

    def step(self) -> bool:
        """Queue announcements of jobs that ended, then send what is due; ``True`` when there was something."""
        return self.run_once() > 0

    def run_once(self) -> int:
        """One round; returns how many notifications were attempted."""
        queue_new(self.engine, [(t.name, t.on) for t in self.cfg.notify])
        due = claim_due(self.engine, max(t.timeout for t in self.cfg.notify) * 4 + 60) if self.targets else []
        for n in due:
            if self.stopping:
                break
            self.process(n)
        return len(due)

    def process(self, n: DueNotification) -> None:
        """One attempt at one notification."""
        target = self.targets.get(n.target)
        if target is None:
            record_failure(self.engine, n.id, f"notify target {n.target!r} is no longer configured", None)
            return
        try:
            summary = summarize(self.engine, self.cfg.node, n.job_id, n.event)
            if target.kind == NotifyKind.HL7:
                from dicomnode.notify.hl7 import oru, send_mllp

                send_mllp(target, oru(summary, target, control_id=uuid.uuid4().hex[:20]))
            else:
                from dicomnode.notify.webhook import post

                post(target, summary)
        except (NetworkError, StorageError, OSError) as exc:
            pol = self.cfg.delivery
            retry = utcnow() + timedelta(seconds=backoff(pol, n.attempts)) if n.attempts < pol.max_attempts else None
            logger.warning("job %d: notification to %s failed (attempt %d): %s", n.job_id, n.target, n.attempts, exc)
            audit("notify", job=n.job_id, target=n.target, on=n.event, attempt=n.attempts, outcome="failed", error=str(exc))
            record_failure(self.engine, n.id, str(exc), retry)
            return
        logger.info("job %d: %s notified (%s)", n.job_id, n.target, n.event)
        audit("notify", job=n.job_id, target=n.target, on=n.event, attempt=n.attempts, outcome="sent")
        record_done(self.engine, n.id)
