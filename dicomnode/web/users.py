"""The web users file: names, roles and argon2id password hashes.

One JSON file (``web.users_file``, by default ``<storage_dir>/web-users.json``)
that only the node's account can read (mode 0600 whatever the umask).  The
running node re-reads it when it changes, so ``dicomnode users add|remove|passwd``
take effect without a restart: a removed user, or one whose password changed,
loses every session at the next request.  Only the CLI writes it (under a lock
file), and the node once, to create the first administrator.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from dicomnode.errors import DicomNodeError

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MIN_PASSWORD = 12  # characters; the generated first-admin password has 24
MAX_PASSWORD = 1024  # longer ones are refused before hashing (hashing cost is per byte)
ADMIN_PASSWORD_FILE = "web-admin-password"
_FORMAT = 1
_HASHER = PasswordHasher()  # argon2id with the RFC 9106 "low memory" parameters (64 MiB, 3 passes)


class UserStoreError(DicomNodeError):
    """The users file cannot be read or written, or a user command is not possible; the message says why."""


class Role(StrEnum):
    """What a web user may do."""

    ADMIN = "admin"  # read everything and act (retry jobs)
    READ_ONLY = "read-only"  # read the page, the API, previews and metrics


@dataclass(frozen=True)
class User:
    """One web user."""

    name: str
    role: Role
    password_hash: str

    @property
    def stamp(self) -> str:
        """Changes when the password changes: sessions opened before are void."""
        return hashlib.sha256(self.password_hash.encode()).hexdigest()[:16]


def check_name(name: str) -> str:
    """``name`` if it is a valid user name (letters, digits, ``._@-``, up to 64), else :class:`UserStoreError`."""
    if not NAME_RE.fullmatch(name):
        raise UserStoreError(f"user name {name!r}: use 1 to 64 letters, digits or . _ @ - (starting with a letter or digit)")
    return name


def check_password(password: str) -> str:
    """``password`` if it is long enough to be hashed and kept, else :class:`UserStoreError`."""
    if len(password) < MIN_PASSWORD:
        raise UserStoreError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserStoreError(f"the password must have at most {MAX_PASSWORD} characters")
    return password


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 whatever the umask (a temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask can only narrow the mode; this makes it exact
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class UserStore:
    """The users of the web face, read from (and written to) one JSON file.

    Parameters
    ----------
    path : pathlib.Path
        The users file; it need not exist yet.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}
        # Verifying against this when the user is unknown takes as long as a real check.
        self._dummy = _HASHER.hash(secrets.token_urlsafe(16))

    def users(self) -> dict[str, User]:
        """Every user by name, re-read when the file changed (``{}`` when there is no file)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._users = None, {}
            return {}
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._seen:
            if stat.S_IMODE(st.st_mode) & 0o077:
                logger.warning("web: %s can be read by other accounts (mode %o): run chmod 600 on it", self.path, stat.S_IMODE(st.st_mode))
            self._users = self._parse(self._read())
            self._seen = key
        return dict(self._users)

    def get(self, name: str) -> User | None:
        """The user called ``name``, if any."""
        return self.users().get(name)

    def verify(self, name: str, password: str) -> User | None:
        """The user, if ``password`` is theirs; ``None`` otherwise (after as much work as a real check)."""
        user = self.get(name) if NAME_RE.fullmatch(name) else None
        if len(password) > MAX_PASSWORD:
            return None
        try:
            _HASHER.verify(user.password_hash if user else self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return user

    # ------------------------------------------------------------ changes (CLI)

    def add(self, name: str, role: Role, password: str) -> User:
        """Add a user; :class:`UserStoreError` if the name is taken or invalid, or the password too short."""
        user = User(check_name(name), Role(role), _HASHER.hash(check_password(password)))
        with self._locked() as users:
            if name in users:
                raise UserStoreError(f"there is already a user {name!r} (use 'dicomnode users passwd' to change the password)")
            users[name] = user
        return user

    def set_password(self, name: str, password: str) -> None:
        """Give ``name`` a new password; their sessions end."""
        hashed = _HASHER.hash(check_password(password))
        with self._locked() as users:
            if name not in users:
                raise UserStoreError(f"there is no user {name!r}")
            users[name] = User(name, users[name].role, hashed)

    def remove(self, name: str) -> None:
        """Remove ``name``; refused for the last administrator (nobody could then act on jobs)."""
        with self._locked() as users:
            if name not in users:
                raise UserStoreError(f"there is no user {name!r}")
            admins = [u for u in users.values() if u.role == Role.ADMIN]
            if users[name].role == Role.ADMIN and len(admins) == 1:
                raise UserStoreError(f"{name!r} is the last admin: add another admin first")
            del users[name]

    @contextmanager
    def _locked(self) -> Iterator[dict[str, User]]:
        """Read, let the caller change, and write the users under an exclusive lock (CLI against CLI)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            users = self._parse(self._read()) if self.path.exists() else {}
            yield users
            body = {"format": _FORMAT, "users": [
                {"name": u.name, "role": str(u.role), "password": u.password_hash} for u in sorted(users.values(), key=lambda u: u.name)
            ]}
            write_private(self.path, json.dumps(body, indent=2) + "\n")
        finally:
            os.close(lock_fd)  # also releases the lock

    def _read(self) -> Any:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserStoreError(f"web.users_file: cannot read {self.path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise UserStoreError(f"web.users_file: {self.path} is not valid JSON: {exc}") from exc

    def _parse(self, data: Any) -> dict[str, User]:
        where = f"web.users_file: {self.path}"
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("users"), list):
            raise UserStoreError(f"{where}: expected {{\"format\": {_FORMAT}, \"users\": [...]}}")
        users: dict[str, User] = {}
        for i, item in enumerate(data["users"]):
            try:
                name, role, hashed = item["name"], Role(item["role"]), item["password"]
            except (TypeError, KeyError, ValueError) as exc:
                raise UserStoreError(f"{where}: users[{i}] needs a name, a role (admin or read-only) and a password hash") from exc
            if not isinstance(name, str) or not NAME_RE.fullmatch(name) or not str(hashed).startswith("$argon2"):
                raise UserStoreError(f"{where}: users[{i}] has an invalid name or a password that is not an argon2 hash")
            users[name] = User(name, role, str(hashed))
        return users


def ensure_first_admin(store: UserStore, password_file: Path) -> bool:
    """Create the user ``admin`` with a random password when there are no users yet.

    The password is written to ``password_file`` (mode 0600), never logged;
    one WARNING names the file.  Returns whether the user was created.
    """
    if store.users():
        return False
    password = secrets.token_urlsafe(18)  # 24 characters, 144 random bits
    write_private(password_file, password + "\n")
    store.add("admin", Role.ADMIN, password)
    logger.warning(
        "web: no users yet: created the user 'admin' with a random password, written to %s (readable by this account only); "
        "log in with it, then run 'dicomnode users passwd admin' (which removes that file) or add your own users",
        password_file,
    )
    return True
