"""``[[sources]]``: PACS the node can query and pull studies from (``dicomnode fetch``).

A DIMSE source is queried with C-FIND (Study Root) and asked to send with
C-MOVE to the node's own AE title, which the source must know (with the
node's host and port) as a move destination; the instances then arrive at the
node's listener like any push, and are stored, completed, selected and
processed as if pushed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from dicomnode.config.values import ae as _ae
from dicomnode.config.values import check_keys as _check_keys
from dicomnode.config.values import integer as _int
from dicomnode.config.values import string as _str
from dicomnode.config.values import table as _table
from dicomnode.errors import ConfigError


class Retrieve(enum.StrEnum):
    """How a DIMSE source is asked for instances."""

    C_MOVE = "c-move"  # the source opens an association to the node's listener (it must know the node's AE)


@dataclass(frozen=True)
class Source:
    """A PACS to query and retrieve from."""

    name: str
    ae_title: str
    host: str
    port: int
    retrieve: Retrieve = Retrieve.C_MOVE

    def describe(self) -> str:
        """``AE@host:port``."""
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_sources(data: Any) -> tuple[Source, ...]:
    """Validate ``[[sources]]``.

    Raises
    ------
    ConfigError
        A key is unknown or missing, a value invalid or a name repeated.
    """
    if not isinstance(data, list):
        raise ConfigError(f"sources: must be an array of tables ([[sources]]), got {data!r}")
    out: list[Source] = []
    for i, item in enumerate(data):
        key = f"sources[{i}]"
        item = _table(key, item)
        _check_keys(key, item, {"name", "ae_title", "host", "port", "retrieve", "kind"})
        if item.get("kind", "dimse") != "dimse":
            raise ConfigError(f"{key}.kind: only dimse sources (C-FIND and C-MOVE) in this version, got {item.get('kind')!r}")
        for k in ("name", "ae_title", "host", "port"):
            if k not in item:
                raise ConfigError(f"{key}.{k}: required")
        retrieve = item.get("retrieve", Retrieve.C_MOVE)
        if retrieve not in tuple(Retrieve):
            raise ConfigError(f"{key}.retrieve: must be one of {', '.join(Retrieve)}, got {retrieve!r}")
        src = Source(
            name=_str(f"{key}.name", item["name"]), ae_title=_ae(f"{key}.ae_title", item["ae_title"]),
            host=_str(f"{key}.host", item["host"]), port=_int(f"{key}.port", item["port"], 1, 65535),
            retrieve=Retrieve(retrieve),
        )
        if any(s.name == src.name for s in out):
            raise ConfigError(f"{key}.name: duplicate source name {src.name!r}")
        out.append(src)
    return tuple(out)
