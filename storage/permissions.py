"""File and folder modes that do not depend on the umask.

The database, the audit log and the stored instances hold or point to
patient data, so other local users must not read them.  A mode passed to
``open``/``mkdir`` is reduced by the process's umask but never widened, so
creating with the private mode gives that mode (or a stricter one) under any
umask, 000 included.  Files that already exist with a wider mode (made by an
older version under umask 022) are tightened when the node opens them.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

PRIVATE_FILE_MODE = 0o600  # the database (and its -wal/-shm), the audit log
PRIVATE_DIR_MODE = 0o750  # the storage folders: the group may read (backups), others nothing
_TOO_OPEN = 0o027  # group write, and any access for others


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with :data:`PRIVATE_DIR_MODE`, durably (existing folders are left alone)."""
    from storage.files import ensure_dir  # here, not at the top: storage.files imports this module

    ensure_dir(path)


def make_private_file(path: Path, mode: int = PRIVATE_FILE_MODE) -> bool:
    """Create ``path`` empty with ``mode`` unless it exists; tighten an existing one (see :func:`tighten`).

    Returns
    -------
    bool
        Whether the file was created.
    """
    make_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        tighten(path)
        return False
    os.close(fd)
    return True


def tighten(path: Path) -> bool:
    """Remove group write and every permission of others from an existing file; ``False`` if nothing changed."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return False
    if not current & _TOO_OPEN:
        return False
    os.chmod(path, current & ~_TOO_OPEN)
    logger.info("tightened the permissions of %s from %04o to %04o", path.name, current, current & ~_TOO_OPEN)
    return True
