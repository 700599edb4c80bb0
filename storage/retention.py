"""Retention: remove the files of old series once their results are safely delivered.

A series is eligible only when it is complete and every one of its jobs
ended as ``done`` (all deliveries confirmed) or ``ignored``; a series with a
job that is queued, running, delivering, failed or ``delivery_failed`` is
never touched.  Purging deletes the series' instance files and the output
files of its jobs, removes the instance rows and marks the series
``purged``; the series, job and delivery rows stay as the record of what
happened.  The quarantine is never purged (people inspect it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import ColumnElement, Engine, and_, exists, select, update

from storage.database import write_transaction
from storage.models import Instance, Job, Output, Series, table_of
from storage.states import JobState, OutputKind, SeriesState

logger = logging.getLogger(__name__)

_series, _jobs, _instances, _outputs = table_of(Series), table_of(Job), table_of(Instance), table_of(Output)
_SETTLED = (JobState.DONE, JobState.IGNORED, JobState.NOT_APPLICABLE, JobState.INCOMPLETE)


@dataclass(frozen=True)
class Purged:
    """What purging one series removed."""

    series_id: int
    files: int
    bytes: int


def _eligible() -> ColumnElement[bool]:
    unsettled = exists().where(and_(_jobs.c.series_id == _series.c.id, _jobs.c.state.not_in(_SETTLED)))
    return and_(_series.c.state == SeriesState.COMPLETE.value, ~unsettled)


def purgeable(engine: Engine, older_than: datetime | None = None, limit: int = 100) -> list[int]:
    """Eligible series, least recently received first (only those received before ``older_than``)."""
    stmt = select(_series.c.id).where(_eligible()).order_by(_series.c.last_received_at).limit(limit)
    if older_than is not None:
        stmt = stmt.where(_series.c.last_received_at < older_than)
    with engine.connect() as conn:
        return list(conn.execute(stmt).scalars())


def purge_series(engine: Engine, series_id: int, incoming_dir: Path, storage_dir: Path) -> Purged | None:
    """Purge one series if it is (still) eligible; ``None`` otherwise.

    The rows change in one transaction, re-checking eligibility; the files go
    after the commit (a crash in between leaves unreferenced files, never a
    row without its file).
    """
    with write_transaction(engine) as conn:
        ok = conn.execute(select(_series.c.id).where(_series.c.id == series_id, _eligible())).first()
        if ok is None:
            return None
        files = [incoming_dir / p for p in conn.execute(select(_instances.c.path).where(_instances.c.series_id == series_id)).scalars()]
        job_ids = select(_jobs.c.id).where(_jobs.c.series_id == series_id)
        files += [
            storage_dir / p
            for p in conn.execute(select(_outputs.c.path).where(_outputs.c.job_id.in_(job_ids), _outputs.c.kind != OutputKind.SOURCE)).scalars()
        ]
        conn.execute(_instances.delete().where(_instances.c.series_id == series_id))
        conn.execute(update(_series).where(_series.c.id == series_id).values(state=SeriesState.PURGED.value, instance_count=0))
    removed = size = 0
    for f in files:
        try:
            size += f.stat().st_size
            os.unlink(f)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("retention: cannot remove %s: %s", f.name, exc.strerror)
    return Purged(series_id, removed, size)
