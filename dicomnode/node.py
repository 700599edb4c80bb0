"""The running node: database, listener, series completion, job runners and the sender, wired together."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from dicomnode.receive.completion import CompletionMonitor
from dicomnode.config import Config
from dicomnode.jobs.delivery import Sender
from dicomnode.errors import ConfigError, DicomNodeError, NetworkError
from dicomnode.jobs.gpu import GPUAdmission
from dicomnode.receive.ingest import Ingestor
from dicomnode.metrics import Metrics
from dicomnode.jobs.retention import Retention
from dicomnode.routing import Router
from dicomnode.net.scp import StorageSCP
from dicomnode.jobs.worker import JobRunner, worker_name
from storage.database import migrate, open_engine
from storage.errors import StorageError
from storage.files import ensure_dir
from storage.quarantine import adopt_unrecorded

if TYPE_CHECKING:
    from dicomnode.notify.notifier import Notifier
    from dicomnode.web import WebServer

logger = logging.getLogger(__name__)

class Node:
    """Everything ``dicomnode serve`` runs, in one object.

    Parameters
    ----------
    cfg : Config
        Validated configuration.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.engine = open_engine(cfg.node.database_url, sqlite_synchronous=cfg.node.sqlite_synchronous)
        router = Router(cfg.rules, cfg.routing, [d.name for d in cfg.destinations])
        self.metrics = Metrics(self.engine, known_aes=cfg.known_ae_titles())
        self.monitor = CompletionMonitor(self.engine, cfg.series, priority=router.priority)
        self.ingestor = Ingestor(
            self.engine,
            cfg.node.incoming_dir,
            min_free_bytes=cfg.node.min_free_mb * 1_000_000,
            max_instance_bytes=cfg.node.max_instance_mb << 20,
            on_stored=self.monitor.instance_stored,
            non_image=cfg.node.non_image_objects,
            other_dir=cfg.node.other_dir,
            metrics=self.metrics,
        )
        self.sender = Sender(self.engine, cfg, self.metrics)
        gpu = GPUAdmission(cfg.worker.gpu_concurrency, cfg.worker.gpu_memory_mb)
        self.runners = [
            JobRunner(
                self.engine, cfg, name=worker_name(str(i) if cfg.worker.threads > 1 else ""), on_finished=self.sender.wake,
                metrics=self.metrics, gpu=gpu,
            )
            for i in range(cfg.worker.threads if cfg.worker.enabled else 0)
        ]
        self.scp = StorageSCP(
            cfg.node, self.ingestor, on_released=self.monitor.association_released, on_commitment=self.sender.on_event_report,
            on_aborted=self.monitor.association_aborted,
            metrics=self.metrics,
        )
        self.retention = Retention(self.engine, cfg) if cfg.retention.enabled else None
        self.notifier: Notifier | None = None
        if cfg.notify:
            from dicomnode.notify.notifier import Notifier

            self.notifier = Notifier(self.engine, cfg)
        self.web: WebServer | None = None
        self.web_port: int | None = None
        self._stopped = threading.Event()
        self._fetching = threading.Lock()  # one fetch from the status page at a time

    def start(self) -> int:
        """Migrate the database, clean up after a crash, start completion, the workers and the listener.

        Returns
        -------
        int
            The port the listener is bound to.
        """
        ensure_dir(self.cfg.node.incoming_dir)
        migrate(self.engine)
        restored, removed = self.ingestor.recover()
        if adopted := adopt_unrecorded(self.engine, self.cfg.node.quarantine_dir):
            logger.warning("quarantine: %d series quarantined by an earlier version now have an entry each", adopted)
        if restored or removed:
            logger.warning(
                "after an earlier crash: %d committed file(s) restored, %d partial file(s) removed (never acknowledged)",
                restored,
                removed,
            )
        self.monitor.start()
        port = self.scp.start()
        if self.cfg.web.enabled:
            from dicomnode.web import WebServer, create_app

            try:
                from dicomnode.web.stow import CALLING, StowHooks

                ingest = self.ingestor
                hooks = StowHooks(
                    store=lambda data, ts, uid, cls, sop: ingest.store(
                        data, ts, assoc_uid=uid, calling_ae=CALLING, affected_sop_class=cls, affected_sop_instance=sop,
                    ),
                    released=self.monitor.association_released, aborted=self.monitor.association_aborted,
                    max_part=self.cfg.node.max_instance_mb << 20, max_body=self.cfg.web.stow_max_mb << 20,
                )
                app = create_app(self.engine, self.cfg, self.metrics, is_listening=lambda: self.scp.server is not None, dicom_port=port,
                                 stow=hooks, fetch=self.fetch_in_background)
                self.web = WebServer(app, self.cfg.web.host, self.cfg.web.port, tls=self.cfg.web.tls)
            except OSError as exc:
                self.scp.stop()
                raise NetworkError(f"web: cannot listen on {self.cfg.web.host}:{self.cfg.web.port}: {exc.strerror or exc}") from exc
            except DicomNodeError:  # an unreadable users file, a certificate that does not load
                self.scp.stop()
                raise
            self.web_port = self.web.start()
            logger.info("status page on %s://%s:%d/", self.web.scheme, self.cfg.web.host, self.web_port)
        for runner in self.runners:
            runner.start()
        self.sender.start()
        if self.notifier is not None:
            self.notifier.start()
        if self.retention is not None:
            self.retention.start()
        return port

    def fetch_in_background(self, source_name: str, study: str, user: str) -> str:
        """Start fetching one study from a configured source (the status page's form); what was started, in words.

        Raises
        ------
        ValueError
            No such source, or another fetch is running (one at a time).
        """
        try:
            source = self.cfg.source_named(source_name)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        if not self._fetching.acquire(blocking=False):
            raise ValueError("another fetch is running; try again when it is done")

        def run() -> None:
            from dicomnode.audit import audit
            from dicomnode.net.fetching import fetch_study, holds_study

            from storage.fetches import record_fetch

            try:
                if not holds_study(self.cfg, source, study):
                    raise NetworkError(f"{source.name} holds no study with that Study Instance UID")
                record_fetch(self.engine, study, source.name, requested_by=user)
                done = fetch_study(self.cfg, source, study)
                assert done is not None  # no series filter
                out, _ = done
                logger.info("fetch from %s for %s: %d instance(s) sent, %d failed", source.name, user, out.completed, out.failed)
                audit("fetch", source=source.name, user=user, outcome="moved", instances=out.completed, failed=out.failed)
            except (NetworkError, ConfigError, StorageError) as exc:
                logger.warning("fetch from %s for %s failed: %s", source.name, user, exc)
                audit("fetch", source=source.name, user=user, outcome="failed", error=str(exc))
            finally:
                self._fetching.release()

        threading.Thread(target=run, name="dicomnode-fetch", daemon=True).start()
        return f"fetching the study from {source.name} ({source.describe()}); it appears on the status page as it arrives"

    def stop(self) -> None:
        """Stop listening, then series completion, the workers (after their current job) and the sender."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        logger.info("stopping")
        self.scp.stop()
        if self.web is not None:
            self.web.stop()
        self.monitor.stop()
        for runner in self.runners:
            runner.stop()
        self.sender.stop()
        if self.notifier is not None:
            self.notifier.stop()
        if self.retention is not None:
            self.retention.stop()
        self.ingestor.close()
        self.engine.dispose()

    def serve_forever(self, ready_file: Path | None = None) -> None:
        """Start, then block until SIGINT or SIGTERM.

        Parameters
        ----------
        ready_file : pathlib.Path, optional
            Written (atomically) with ``{"port": ..., "pid": ...}`` once the
            node listens, for scripts and tests that start it on port 0.
        """
        done = threading.Event()

        def _signal(signum: int, _frame: FrameType | None) -> None:
            logger.info("received %s", signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        port = self.start()
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"port": port, "pid": os.getpid(), "ae_title": self.cfg.node.ae_title, "web_port": self.web_port}))
            os.replace(tmp, ready_file)
        try:
            while not done.wait(1.0):
                pass
        finally:
            self.stop()
