"""The retention thread: purge delivered series by age, and by free-space watermark; purge old quarantine entries.

The rules of what may be purged live in :mod:`storage.retention` and
:mod:`storage.quarantine`; this module decides when.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine

from dicomnode.background import BackgroundLoop
from dicomnode.config import Config
from storage.errors import StorageError
from storage.models import utcnow
from storage.quarantine import QuarantineEntry, purge_older_than
from storage.retention import Purged, purge_series, purgeable

logger = logging.getLogger(__name__)


def free_percent(path: Path) -> float:
    """Free space of the filesystem holding ``path``, in percent."""
    usage = shutil.disk_usage(path)
    return 100.0 * usage.free / usage.total


class Retention(BackgroundLoop):
    """Purges in a background thread every ``retention.interval_seconds``.

    Parameters
    ----------
    engine : sqlalchemy.Engine
        The node's database.
    cfg : Config
        Retention settings and storage folders.
    free : callable, optional
        Free-space probe (percent) of the storage folder.
    """

    def __init__(self, engine: Engine, cfg: Config, free: Callable[[Path], float] = free_percent) -> None:
        super().__init__("dicomnode-retention", cfg.retention.interval_seconds, first_wait=True)
        self.engine, self.cfg, self.free = engine, cfg, free

    def step(self) -> bool:
        """Purge once; a database or file-system error is logged and tried again next interval."""
        try:
            self.run_once()
        except StorageError as exc:
            logger.warning("retention: %s; trying again later", exc)
        return False

    def _purge(self, series_id: int) -> Purged | None:
        node = self.cfg.node
        return purge_series(self.engine, series_id, node.incoming_dir, node.storage_dir)

    def purge_quarantine(self) -> list[QuarantineEntry]:
        """Purge the quarantine entries held longer than ``retention.quarantine_days`` (their files are deleted)."""
        cutoff = utcnow() - timedelta(days=self.cfg.retention.quarantine_days)
        purged = purge_older_than(self.engine, cutoff, self.cfg.node.quarantine_dir)
        if purged:
            logger.info(
                "retention: purged %d quarantine entr%s held longer than %g days (%d files, %.1f MB)", len(purged),
                "y" if len(purged) == 1 else "ies", self.cfg.retention.quarantine_days, sum(e.file_count for e in purged),
                sum(e.bytes for e in purged) / 1e6,
            )
        return purged

    def run_once(self) -> list[Purged]:
        """Purge the quarantine by age, then series by age, then by watermark; returns the series purged."""
        r = self.cfg.retention
        self.purge_quarantine()
        done: list[Purged] = []
        for sid in purgeable(self.engine, older_than=utcnow() - timedelta(days=r.keep_days), limit=1000):
            if (p := self._purge(sid)) is not None:
                done.append(p)
        storage = self.cfg.node.storage_dir
        while self.free(storage) < r.min_free_percent:
            candidates = purgeable(self.engine, limit=1)
            if not candidates:
                logger.warning(
                    "retention: less than %.0f%% of the disk is free and nothing more may be purged "
                    "(undelivered, failed or unprocessed series are kept)", r.min_free_percent,
                )
                break
            p = self._purge(candidates[0])
            if p is None:  # it changed meanwhile (a new instance arrived): look again next time
                break
            done.append(p)
        if done:
            logger.info(
                "retention: purged %d series (%d files, %.1f MB)", len(done), sum(p.files for p in done),
                sum(p.bytes for p in done) / 1e6,
            )
        return done
