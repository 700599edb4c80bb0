"""Database engine, SQLite tuning and schema migrations.

SQLite is the embedded default and runs in WAL mode, so that readers (the
``jobs`` command, the status page) never block the receiver.  PostgreSQL runs
the same code; only :func:`insert` picks the dialect's ``ON CONFLICT`` form.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from storage.errors import DatabaseError
from storage.permissions import make_private_file, tighten

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_IMMEDIATE = "dicomnode_immediate"


def open_engine(url: str, *, sqlite_synchronous: str = "FULL", echo: bool = False) -> Engine:
    """Create an engine for ``url``, creating the SQLite file's directory if needed.

    Parameters
    ----------
    url : str
        SQLAlchemy URL, e.g. ``sqlite:///storage/dicomnode.db`` or
        ``postgresql+psycopg://user@host/db``.
    sqlite_synchronous : {"OFF", "NORMAL", "FULL", "EXTRA"}
        SQLite's ``synchronous`` pragma.  ``FULL`` (the default) fsyncs the WAL
        on every commit, so a committed row survives a power loss; ``NORMAL``
        survives a crash of the process but not of the machine.
    echo : bool
        Log every SQL statement (debugging).

    Returns
    -------
    sqlalchemy.Engine
    """
    sync = sqlite_synchronous.upper()
    if sync not in SQLITE_SYNCHRONOUS:
        raise DatabaseError(f"sqlite_synchronous must be one of {SQLITE_SYNCHRONOUS}, not {sqlite_synchronous!r}")
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a terse message
        raise DatabaseError(f"invalid database URL {url!r}: {exc}") from exc
    # hide_parameters: an error or a log line shows the SQL, never the values bound to it (UIDs, paths).
    kwargs: dict[str, Any] = {"echo": echo, "future": True, "hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _private_sqlite_file(Path(parsed.database))
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except Exception as exc:
        raise DatabaseError(f"cannot open database {parsed.render_as_string(hide_password=True)}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, sync)
    return engine


def _private_sqlite_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does (SQLite would create it 0644 less the umask).

    SQLite creates the ``-wal`` and ``-shm`` files with the database file's
    mode, so they follow; ones left by an older version are tightened too.
    """
    try:
        make_private_file(path)
        for suffix in ("-wal", "-shm", "-journal"):
            tighten(path.with_name(path.name + suffix))
    except OSError as exc:
        raise DatabaseError(f"cannot create the database file {path}: {exc.strerror or exc}") from exc


def describe(exc: BaseException) -> str:
    """What went wrong in a database call, without its statement or the values bound to it.

    The driver's own message is kept to its first line: PostgreSQL adds a
    ``DETAIL`` line that quotes the conflicting row (``Key (sop_uid)=(...)``).
    """
    orig = getattr(exc, "orig", None) or exc
    diag = getattr(orig, "diag", None)
    text = getattr(diag, "message_primary", None) or str(orig)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__


def _tune_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (see below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front (BEGIN IMMEDIATE) so that two
        # writers wait for each other (busy_timeout) instead of failing with
        # SQLITE_BUSY when a read lock cannot be upgraded.
        if conn.get_execution_options().get(_IMMEDIATE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: committed on success, rolled back on error.

    Raises
    ------
    DatabaseError
        The database failed (locked for too long, disk full, connection lost).
    """
    try:
        with engine.connect().execution_options(**{_IMMEDIATE: True}) as conn:
            with conn.begin():
                yield conn
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database write failed: {describe(exc)}") from exc


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction (never takes SQLite's write lock)."""
    try:
        with engine.connect() as conn:
            with conn.begin():
                yield conn
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database read failed: {describe(exc)}") from exc


def insert(engine_or_conn: Engine | Connection, table: Table) -> Any:
    """The dialect's INSERT construct, which offers ``on_conflict_do_nothing``/``do_update``."""
    name = engine_or_conn.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise DatabaseError(f"unsupported database dialect {name!r} (use SQLite or PostgreSQL)")


def alembic_config(engine: Engine) -> Config:
    """Alembic configuration bound to ``engine`` (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision`` with Alembic.

    Raises
    ------
    DatabaseError
        The migration failed; the message says which database.
    """
    try:
        command.upgrade(alembic_config(engine), revision)
    except Exception as exc:
        url = engine.url.render_as_string(hide_password=True)
        raise DatabaseError(f"cannot migrate database {url}: {describe(exc)}") from exc


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime (SQLite hands back naive ones)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
