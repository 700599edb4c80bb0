"""Retention: remove the files of old series once their results are safely delivered.

A series is eligible only when it is complete and every one of its jobs
ended as ``done`` (all deliveries confirmed) or ``ignored``; a series with a
job that is queued, running, delivering, failed or ``delivery_failed`` is
never touched.  Purging deletes the series' instance files and the output
files of its jobs, removes the instance rows and marks the series
``purged``; the series, job and delivery rows stay as the record of what
happened.  Quarantine entries of the series are not touched: they have
their own lifecycle (:mod:`storage.quarantine`, ``retention.quarantine_days``).

A purge cannot remove a file that an acknowledged instance needs: it
removes only the files named by the rows it deleted, and the receiver never
writes a file name twice (every write gets a new name, see
:func:`storage.files.unique_name`).  An instance re-sent while the series is
purged is either committed first (the series is then receiving again, no
longer eligible, and the purge does nothing) or after (a new row naming a
new file, which the purge does not know).
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


@dataclass(frozen=True)
class PurgePlan:
    """The committed half of a purge: the series is ``purged`` and these files are no longer named by any row."""

    series_id: int
    files: list[Path]


def purge_series(engine: Engine, series_id: int, incoming_dir: Path, storage_dir: Path) -> Purged | None:
    """Purge one series if it is (still) eligible; ``None`` otherwise.

    The rows change in one transaction, re-checking eligibility
    (:func:`claim_purge`); the files go after the commit
    (:func:`remove_files`): a crash in between leaves unreferenced files,
    never a row without its file.
    """
    plan = claim_purge(engine, series_id, incoming_dir, storage_dir)
    return None if plan is None else remove_files(plan)


def claim_purge(engine: Engine, series_id: int, incoming_dir: Path, storage_dir: Path) -> PurgePlan | None:
    """Delete the series' instance rows and mark it ``purged``, if it is (still) eligible; returns the files to remove."""
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
    return PurgePlan(series_id, files)


def remove_files(plan: PurgePlan) -> Purged:
    """Remove the files a committed purge no longer references (each name was written once: no new copy is among them)."""
    removed = size = 0
    for f in plan.files:
        try:
            size += f.stat().st_size
            os.unlink(f)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("retention: cannot remove a file of series %d: %s", plan.series_id, exc.strerror)  # its name is a UID
    return Purged(plan.series_id, removed, size)
