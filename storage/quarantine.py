"""The quarantine: files of series a job could not process, each quarantine in a folder of its own, with a lifecycle.

Every quarantine is a row of the ``quarantine`` table and a new folder
``<quarantine_dir>/<id>-<random>/`` holding the files with the layout they had
in the live tree (``<study>/<series>/<file>``), so a later quarantine of the
same series never overwrites an earlier one, and every file in the
quarantine is accounted for.  An entry is in one :class:`QuarantineState`:

``held``
    The files are in the entry's folder, out of the live tree.  A job of the
    series still reads them from there (:func:`locate_files`); nothing else
    touches them until a person releases or purges the entry, a later job of
    the series succeeds, or ``retention.quarantine_days`` pass.
``released``
    A person put the files back (``dicomnode quarantine release``): those that
    are still the stored copy of their instance returned to the live tree
    under the name their row records, older copies (replaced by a later
    re-send) were deleted, and the series' failed job was queued again.
``superseded``
    A later job of the series succeeded: the files that are still the stored
    copy of their instance returned to the live tree (retention removes them
    with the series), older copies were deleted.
``purged``
    The files were deleted, by ``dicomnode quarantine purge`` or by
    retention after ``retention.quarantine_days``.

The row stays in every state, as the record of what happened.  Retention
purging a series does not touch its quarantine entries: they keep their own
lifecycle.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, func, select, update

from storage.database import as_utc, read_transaction, write_transaction
from storage.errors import StorageError
from storage.files import TEMP_PREFIX, move_tree
from storage.models import Instance, Job, Output, Quarantine, Series, table_of, utcnow
from storage.permissions import make_private_dir
from storage.states import JobState, OutputKind, QuarantineState, SeriesState

logger = logging.getLogger(__name__)

_q, _instances, _jobs, _series = table_of(Quarantine), table_of(Instance), table_of(Job), table_of(Series)
_outputs = table_of(Output)
_ENTRY_FOLDER = re.compile(r"[0-9]+-[0-9a-f]{8}")




class QuarantineError(StorageError):
    """A quarantine entry cannot do what was asked (no such entry, not held, its series purged or running)."""


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantine, as recorded."""

    id: int
    series_id: int
    job_id: int | None
    reason: str
    created_at: datetime
    state: QuarantineState
    file_count: int
    bytes: int
    folder: str  # relative to the storage folder
    ended_at: datetime | None


@dataclass(frozen=True)
class Released:
    """What releasing (or superseding) an entry did."""

    entry_id: int
    restored: int  # files back in the live tree
    removed: int  # older copies deleted (a later re-send replaced their instance)
    requeued_job: int | None  # the job queued again, if any


def _entry(row: object) -> QuarantineEntry:
    r = row._mapping  # type: ignore[attr-defined]
    return QuarantineEntry(
        id=r["id"], series_id=r["series_id"], job_id=r["job_id"], reason=r["reason"], created_at=as_utc(r["created_at"]),
        state=QuarantineState(r["state"]), file_count=r["file_count"], bytes=r["bytes"], folder=r["folder"],
        ended_at=as_utc(r["ended_at"]) if r["ended_at"] is not None else None,
    )


def _folder(quarantine_dir: Path, entry: QuarantineEntry) -> Path:
    """The entry's folder: ``folder`` is recorded relative to the storage folder (the quarantine folder's parent)."""
    return quarantine_dir.parent / entry.folder


def quarantine_files(
    engine: Engine, files: Sequence[Path], *, series_id: int, job_id: int | None, reason: str,
    incoming_dir: Path, quarantine_dir: Path,
) -> QuarantineEntry:
    """Move ``files`` (under ``incoming_dir``) into a new quarantine entry of their own.

    The row is committed first, so that no file ever sits in the quarantine
    without one; its counts are those of the files actually moved.

    Raises
    ------
    StorageError
        A file could not be moved; the entry records those that were.
    """
    sizes = {f: f.stat().st_size for f in files if f.is_file()}
    with write_transaction(engine) as conn:
        entry_id: int = conn.execute(
            _q.insert()
            .values(
                series_id=series_id, job_id=job_id, reason=reason, created_at=utcnow(), state=QuarantineState.HELD,
                file_count=len(sizes), bytes=sum(sizes.values()), folder="",
            )
            .returning(_q.c.id)
        ).scalar_one()
        # A random tag as well as the id: a database re-created from scratch restarts the ids.
        folder = f"{quarantine_dir.name}/{entry_id}-{secrets.token_hex(4)}"
        conn.execute(update(_q).where(_q.c.id == entry_id).values(folder=folder))
    dest = quarantine_dir.parent / folder
    moved: list[Path] = []
    try:
        make_private_dir(dest)  # 0750 with its parents, whatever the umask
        moved = move_tree(sizes, incoming_dir, dest)
    except OSError as exc:
        raise StorageError(f"cannot create quarantine folder {entry_id}: {exc.strerror}") from exc
    finally:
        if len(moved) != len(sizes):  # record what is really there
            done = [f for f in sizes if not f.exists()]
            with write_transaction(engine) as conn:
                conn.execute(update(_q).where(_q.c.id == entry_id).values(file_count=len(done), bytes=sum(sizes[f] for f in done)))
    logger.warning("series %d: %d file(s) moved to quarantine entry %d", series_id, len(moved), entry_id)
    return get_entry(engine, entry_id)


def get_entry(engine: Engine, entry_id: int) -> QuarantineEntry:
    """One entry.

    Raises
    ------
    QuarantineError
        There is no such entry.
    """
    with read_transaction(engine) as conn:
        row = conn.execute(select(_q).where(_q.c.id == entry_id)).one_or_none()
    if row is None:
        raise QuarantineError(f"there is no quarantine entry {entry_id}")
    return _entry(row)


def list_entries(engine: Engine, state: QuarantineState | None = None, limit: int = 100) -> list[QuarantineEntry]:
    """Entries, newest first (only those in ``state`` if given)."""
    stmt = select(_q).order_by(_q.c.id.desc()).limit(limit)
    if state is not None:
        stmt = stmt.where(_q.c.state == state)
    with read_transaction(engine) as conn:
        return [_entry(r) for r in conn.execute(stmt)]


def locate_files(engine: Engine, series_id: int, rels: Iterable[str], incoming_dir: Path, quarantine_dir: Path) -> dict[str, Path]:
    """Where each file of a series is: the live tree, else the newest held entry of the series that has it.

    The database is asked only when a file is missing from the live tree.
    Files found nowhere map to their live path (the caller reports them missing).
    """
    out = {rel: incoming_dir / rel for rel in rels}
    missing = [rel for rel, p in out.items() if not p.exists()]
    if not missing:
        return out
    with read_transaction(engine) as conn:
        folders = list(
            conn.execute(
                select(_q.c.folder).where(_q.c.series_id == series_id, _q.c.state == QuarantineState.HELD).order_by(_q.c.id.desc())
            ).scalars()
        )
    for rel in missing:
        for folder in folders:
            held = quarantine_dir.parent / folder / rel
            if held.exists():
                out[rel] = held
                break
    return out


def _stored_paths(conn: Connection, series_id: int) -> set[str]:
    # FOR UPDATE: on PostgreSQL no re-send replaces one of these rows while their files move (SQLite's write lock does that).
    stmt = select(_instances.c.path).where(_instances.c.series_id == series_id).with_for_update()
    return set(conn.execute(stmt).scalars())


def _put_back(conn: Connection, entry: QuarantineEntry, incoming_dir: Path, quarantine_dir: Path) -> tuple[int, int]:
    """Move the entry's files that are still their instance's stored copy back to the live tree; delete the others.

    Returns ``(restored, removed)``.  Run inside the transaction that changes
    the entry's state: the instance rows cannot change meanwhile.
    """
    folder = _folder(quarantine_dir, entry)
    if not folder.is_dir():
        return 0, 0
    stored = _stored_paths(conn, entry.series_id)
    current: list[Path] = []
    stale: list[Path] = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        live = incoming_dir / rel
        # The row names this very file, and no live copy exists: it is the instance's stored copy.
        (current if rel in stored and not live.exists() and not f.name.startswith(TEMP_PREFIX) else stale).append(f)
    restored = len(move_tree(current, folder, incoming_dir))
    _repoint_outputs(conn, entry.folder, incoming_dir, quarantine_dir.parent)
    for f in stale:
        f.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    return restored, len(stale)


def _repoint_outputs(conn: Connection, folder: str, incoming_dir: Path, storage_dir: Path) -> None:
    """Forwarded source instances a job read from the entry's folder now name their live copy (for the sender)."""
    try:
        live = incoming_dir.relative_to(storage_dir).as_posix()
    except ValueError:
        return
    conn.execute(
        update(_outputs)
        .where(_outputs.c.kind == OutputKind.SOURCE, _outputs.c.path.startswith(f"{folder}/", autoescape=True))
        .values(path=func.replace(_outputs.c.path, f"{folder}/", f"{live}/"))
    )


def _end(conn: Connection, entry_id: int, state: QuarantineState) -> bool:
    n = conn.execute(
        update(_q).where(_q.c.id == entry_id, _q.c.state == QuarantineState.HELD).values(state=state, ended_at=utcnow())
    ).rowcount
    return n == 1


def release(engine: Engine, entry_id: int, incoming_dir: Path, quarantine_dir: Path) -> Released:
    """Put a held entry's files back into the live tree and queue the series' failed job again.

    Files that are still the stored copy of their instance go back under the
    name their row records (unique names: no live file is ever replaced);
    copies a later re-send replaced are deleted (the live tree has the newer
    one).  The series' latest job is queued again if it failed.

    Raises
    ------
    QuarantineError
        The entry is not held, its series was purged by retention (the
        instance records are gone: purge the entry, or copy its files out and
        send them again), or a job of the series is running.
    """
    entry = get_entry(engine, entry_id)
    if entry.state is not QuarantineState.HELD:
        raise QuarantineError(f"quarantine entry {entry_id} is {entry.state}: only a held entry can be released")
    with write_transaction(engine) as conn:
        series_state = conn.execute(select(_series.c.state).where(_series.c.id == entry.series_id)).scalar_one()
        if series_state == SeriesState.PURGED:
            raise QuarantineError(
                f"series {entry.series_id} was purged by retention after quarantine entry {entry_id}: its instance records "
                "are gone, so nothing can be processed from it; purge the entry, or copy its files out and send them again"
            )
        latest = conn.execute(
            select(_jobs.c.id, _jobs.c.state).where(_jobs.c.series_id == entry.series_id).order_by(_jobs.c.version.desc()).limit(1)
        ).one_or_none()
        if latest is not None and latest.state == JobState.RUNNING:
            raise QuarantineError(f"job {latest.id} of series {entry.series_id} is running: release the entry once it has ended")
        if not _end(conn, entry_id, QuarantineState.RELEASED):
            raise QuarantineError(f"quarantine entry {entry_id} changed meanwhile; look again")
        restored, removed = _put_back(conn, entry, incoming_dir, quarantine_dir)
        requeued = None
        if latest is not None and latest.state == JobState.FAILED:
            conn.execute(
                update(_jobs).where(_jobs.c.id == latest.id, _jobs.c.state == JobState.FAILED).values(
                    state=JobState.QUEUED, attempts=0, error=None, worker=None, stage=None, finished_at=None,
                )
            )
            requeued = latest.id
    logger.warning(
        "quarantine entry %d released: %d file(s) back in the live tree, %d older copie(s) removed%s", entry_id, restored,
        removed, f", job {requeued} queued again" if requeued else "",
    )
    return Released(entry_id, restored, removed, requeued)


def supersede(engine: Engine, series_id: int, version: int, incoming_dir: Path, quarantine_dir: Path) -> list[Released]:
    """A job of version ``version`` of the series succeeded: its earlier held entries become ``superseded``.

    Their files that are still the stored copy of an instance go back to the
    live tree (the successful job may have read them from the quarantine);
    older copies are deleted.  Entries of later versions stay held.
    """
    done: list[Released] = []
    with read_transaction(engine) as conn:
        ids = list(
            conn.execute(
                select(_q.c.id)
                .outerjoin(_jobs, _jobs.c.id == _q.c.job_id)
                .where(_q.c.series_id == series_id, _q.c.state == QuarantineState.HELD)
                .where((_jobs.c.version <= version) | _q.c.job_id.is_(None))
            ).scalars()
        )
    for entry_id in ids:
        entry = get_entry(engine, entry_id)
        with write_transaction(engine) as conn:
            if not _end(conn, entry_id, QuarantineState.SUPERSEDED):
                continue  # released or purged meanwhile
            restored, removed = _put_back(conn, entry, incoming_dir, quarantine_dir)
        done.append(Released(entry_id, restored, removed, None))
        logger.info("quarantine entry %d superseded by a successful job of series %d", entry_id, series_id)
    return done


def purge(engine: Engine, entry_id: int, quarantine_dir: Path) -> QuarantineEntry:
    """Delete a held entry's files and mark it ``purged``.

    An entry no longer held whose folder is still there (a purge interrupted
    by a crash) has its folder removed too.

    Raises
    ------
    QuarantineError
        No such entry, or it is not held (and has no folder left).
    """
    entry = get_entry(engine, entry_id)
    folder = _folder(quarantine_dir, entry)
    with write_transaction(engine) as conn:
        ended = _end(conn, entry_id, QuarantineState.PURGED)
    if not ended and not folder.exists():
        raise QuarantineError(f"quarantine entry {entry_id} is {entry.state}: its files are gone already")
    _remove(folder)
    if ended:
        logger.info("quarantine entry %d purged (%d file(s), %.1f MB)", entry_id, entry.file_count, entry.bytes / 1e6)
    return get_entry(engine, entry_id)


def purge_older_than(engine: Engine, cutoff: datetime, quarantine_dir: Path) -> list[QuarantineEntry]:
    """Purge every held entry created before ``cutoff`` (``retention.quarantine_days``)."""
    with read_transaction(engine) as conn:
        ids = list(
            conn.execute(
                select(_q.c.id).where(_q.c.state == QuarantineState.HELD, _q.c.created_at < cutoff).order_by(_q.c.id)
            ).scalars()
        )
    return [purge(engine, i, quarantine_dir) for i in ids]


def _remove(folder: Path) -> None:
    if not folder.exists():
        return
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        raise StorageError(f"cannot remove a quarantine folder: {exc.strerror}") from exc


def held_summary(engine: Engine) -> tuple[int, int, int]:
    """``(entries, files, bytes)`` held in the quarantine now."""
    with read_transaction(engine) as conn:
        n, files, size = conn.execute(
            select(func.count(), func.coalesce(func.sum(_q.c.file_count), 0), func.coalesce(func.sum(_q.c.bytes), 0)).where(
                _q.c.state == QuarantineState.HELD
            )
        ).one()
    return int(n), int(files), int(size)


def adopt_unrecorded(engine: Engine, quarantine_dir: Path) -> int:
    """Give files quarantined before entries were recorded (``<quarantine>/<study>/<series>/``) an entry each.

    Run at start-up.  They move into a new entry folder of their series
    (keeping their layout), so that the worker, release, purge and retention
    find them; a folder of an unknown series is left alone and reported.

    Returns
    -------
    int
        Entries created.
    """
    if not quarantine_dir.is_dir():
        return 0
    created = 0
    for study in sorted(p for p in quarantine_dir.iterdir() if p.is_dir() and not _ENTRY_FOLDER.fullmatch(p.name)):
        for series_dir in sorted(p for p in study.iterdir() if p.is_dir()):
            files = [f for f in series_dir.rglob("*") if f.is_file()]
            with read_transaction(engine) as conn:
                sid = conn.execute(select(_series.c.id).where(_series.c.series_uid == series_dir.name)).scalar_one_or_none()
                job = None if sid is None else conn.execute(
                    select(_jobs.c.id).where(_jobs.c.series_id == sid).order_by(_jobs.c.version.desc()).limit(1)
                ).scalar_one_or_none()
            if sid is None or not files:
                if files:
                    logger.warning("quarantine: %d file(s) of a series this database does not know are left in place", len(files))
                continue
            quarantine_files(
                engine, files, series_id=sid, job_id=job, reason="quarantined by an earlier version (no reason recorded; see the job)",
                incoming_dir=quarantine_dir, quarantine_dir=quarantine_dir,
            )
            created += 1
            _prune_empty(series_dir, quarantine_dir)
    return created


def _prune_empty(d: Path, root: Path) -> None:
    while d != root and d.is_dir() and not any(d.iterdir()):
        os.rmdir(d)
        d = d.parent


__all__ = [
    "QuarantineEntry",
    "QuarantineError",
    "QuarantineState",
    "Released",
    "adopt_unrecorded",
    "get_entry",
    "held_summary",
    "list_entries",
    "locate_files",
    "purge",
    "purge_older_than",
    "quarantine_files",
    "release",
    "supersede",
]
