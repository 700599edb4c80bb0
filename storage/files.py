"""Durable file writes: temp file, fsync, rename, fsync of the directory.

A file written with :func:`durable_write` either exists completely under its
final name after the call returns, or not at all, even if the process is
killed or the machine loses power at any point.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from storage.errors import DiskFullError, StorageError
from storage.permissions import PRIVATE_DIR_MODE

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
# The tag follows a hyphen, which no UID contains: "<sop>.dcm" (before unique names) never parses as one.
_UNIQUE = re.compile(r"(?P<stem>.+)-(?P<tag>[0-9a-f]{8})(?P<suffix>\.[A-Za-z0-9]+)")


def unique_name(stem: str, suffix: str = ".dcm") -> str:
    """``<stem>-<8 random hex digits><suffix>``: a file name never used before.

    Every write of a received instance gets a fresh name, so that no writer
    ever replaces a file that a committed row (or a purge in progress) names:
    a new copy is committed first, and only then is the old one removed.
    """
    return f"{stem}-{secrets.token_hex(4)}{suffix}"


def unique_stem(name: str) -> str | None:
    """The stem a :func:`unique_name` was made from, or ``None`` for any other name."""
    m = _UNIQUE.fullmatch(name)
    return m.group("stem") if m else None


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename in it becomes durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create ``path`` and its parents durably (each new entry is fsynced).

    Parameters
    ----------
    path : pathlib.Path
        Directory to create.
    """
    if path.is_dir():
        return
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(PRIVATE_DIR_MODE)  # storage folders: owner and group only, whatever the umask
        except FileExistsError:
            continue
        except OSError as exc:
            raise _translate(exc, d) from exc
        # The new directory entry lives in its parent: make it durable there.
        fsync_dir(d.parent)


def _translate(exc: OSError, path: Path) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError("disk full while writing a file")
    # Not the path: instance files are named by UIDs, and this message reaches logs and job errors.
    return StorageError(f"cannot write a file in the {_area(path)} folder: {exc.strerror or exc}")


def _area(path: Path) -> str:
    """The top folder a path is in (incoming, quarantine, outputs...), never a name made of UIDs."""
    for part in reversed(path.parts):
        if part in ("incoming", "quarantine", "outputs", "other"):
            return part
    return "storage"


def durable_write(path: Path, chunks: Iterable[bytes | memoryview], *, sync_dir: bool = True) -> int:
    """Write ``chunks`` to ``path`` atomically and durably.

    The data goes to a temporary file in the same directory, which is fsynced
    and renamed over ``path``; then the directory is fsynced so the rename
    itself survives a power loss.

    Parameters
    ----------
    path : pathlib.Path
        Final file name.  Its directory is created if needed.
    chunks : iterable of bytes
        The content, in order.
    sync_dir : bool
        Fsync the directory after the rename (default).  A caller that passes
        ``False`` must call :func:`fsync_dir` itself before it reports success;
        the receiver does so in parallel with its database commit, which lets
        the filesystem journal both in one commit.

    Returns
    -------
    int
        Number of bytes written.

    Raises
    ------
    DiskFullError
        The disk ran out of space (the temporary file is removed).
    StorageError
        Any other I/O failure.
    """
    ensure_dir(path.parent)
    # The temporary name ends with the final name, so that recovery after a
    # crash knows where a complete temporary file belongs.
    tmp = path.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
    written = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    written += n
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    except OSError as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise _translate(exc, path) from exc
    return written


def free_bytes(path: Path) -> int:
    """Free bytes available to unprivileged users on the filesystem of ``path``."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def temp_target(tmp: Path) -> Path | None:
    """The final path a temporary file from :func:`durable_write` was meant for."""
    name = tmp.name
    if not name.startswith(TEMP_PREFIX) or len(name) < len(TEMP_PREFIX) + 34 or name[len(TEMP_PREFIX) + 32] != "-":
        return None
    return tmp.parent / name[len(TEMP_PREFIX) + 33 :]


def recover_temp_files(
    root: Path, is_committed: Callable[[Path, Path], bool], on_restored: Callable[[Path], None] | None = None
) -> tuple[int, int]:
    """Finish or discard the temporary files a crash left under ``root``.

    A writer that fsyncs the directory in parallel with its database commit can
    crash after the commit but before the rename is durable.  The complete,
    fsynced temporary file is then put in place, if ``is_committed(tmp, target)``
    confirms that the database holds exactly this content.  Every other
    temporary file was never acknowledged and is removed.

    Parameters
    ----------
    root : pathlib.Path
        Tree to search for temporary files.
    is_committed : callable
        ``(tmp, target) -> bool``: the database names ``target`` with exactly this content.
    on_restored : callable, optional
        Called with each restored target (the receiver removes the copy it replaced).

    Returns
    -------
    (int, int)
        Files restored, files removed.
    """
    restored = removed = 0
    if not root.exists():
        return 0, 0
    for tmp in sorted(root.rglob(f"{TEMP_PREFIX}*")):
        target = temp_target(tmp)
        try:
            if target is not None and not target.exists() and is_committed(tmp, target):
                os.replace(tmp, target)
                fsync_dir(target.parent)
                restored += 1
                if on_restored is not None:
                    on_restored(target)
                continue
            tmp.unlink()
            removed += 1
        except OSError as exc:  # no file name: it holds UIDs
            logger.warning("could not recover a temporary file after a crash: %s", exc.strerror or exc)
    return restored, removed


def move_tree(paths: Iterable[Path], root: Path, dest_dir: Path) -> list[Path]:
    """Move files from under ``root`` to ``dest_dir``, keeping their layout relative to ``root``.

    A file already present at the destination is never replaced
    (:class:`StorageError`); the new entries are fsynced in both directories.

    Parameters
    ----------
    paths : iterable of pathlib.Path
        Files under ``root``.
    root : pathlib.Path
        Where the files are.
    dest_dir : pathlib.Path
        Destination root.

    Returns
    -------
    list of pathlib.Path
        The new locations.
    """
    moved: list[Path] = []
    touched: set[Path] = set()
    try:
        for src in paths:
            dst = dest_dir / src.relative_to(root)
            ensure_dir(dst.parent)
            if dst.exists():
                raise StorageError("cannot move a file: one exists already at the destination (never overwritten)")
            try:
                os.rename(src, dst)
            except OSError as exc:
                raise _translate(exc, dst) from exc
            moved.append(dst)
            touched.update((src.parent, dst.parent))
    finally:
        for d in touched:  # the renames become durable
            try:
                fsync_dir(d)
            except OSError as exc:
                logger.warning("cannot sync a directory after moving files: %s", exc.strerror)
    return moved


def quarantine(paths: Iterable[Path], root: Path, quarantine_dir: Path) -> list[Path]:
    """Move files out of the live tree into ``quarantine_dir`` (see :func:`move_tree`).

    :mod:`storage.quarantine` gives each quarantine its own, new folder and
    records it in the database.
    """
    return move_tree(paths, root, quarantine_dir)
