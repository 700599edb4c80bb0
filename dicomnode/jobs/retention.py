"""The retention thread: purge delivered series by age, and by free-space watermark.

The rules of what may be purged live in :mod:`storage.retention`; this
module decides when.
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

    def run_once(self) -> list[Purged]:
        """Purge by age, then by watermark; returns what was purged."""
        r = self.cfg.retention
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
