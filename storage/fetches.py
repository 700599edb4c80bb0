"""The record of studies the node asked a source for: a job whose study was fetched says so, and from where."""

from __future__ import annotations

from sqlalchemy import Engine

from storage.database import insert, write_transaction
from storage.models import Fetch, table_of, utcnow

_fetches = table_of(Fetch)


def record_fetch(engine: Engine, study_uid: str, source: str, requested_by: str | None = None) -> None:
    """Note that ``source`` was asked for the study (before the transfer, so the jobs it leads to find it)."""
    with write_transaction(engine) as conn:
        conn.execute(insert(conn, _fetches).values(study_uid=study_uid, source=source, requested_by=requested_by,
                                                   requested_at=utcnow()))
