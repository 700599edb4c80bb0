"""``[[sources]]``: PACS the node can query and pull studies from (``dicomnode fetch``).

A DIMSE source is queried with C-FIND (Study Root) and asked to send with
C-MOVE to the node's own AE title, which the source must know (with the
node's host and port) as a move destination; the instances then arrive at the
node's listener like any push, and are stored, completed, selected and
processed as if pushed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomnode.config.values import ae as _ae
from dicomnode.config.values import check_keys as _check_keys
from dicomnode.config.values import integer as _int
from dicomnode.config.values import string as _str
from dicomnode.config.values import array_of_tables, unique_names
from dicomnode.errors import ConfigError


class Retrieve(enum.StrEnum):
    """How a source is asked for instances."""

    C_MOVE = "c-move"  # DIMSE: the source opens an association to the node's listener (it must know the node's AE)
    C_GET = "c-get"  # DIMSE: the source sends on the fetch's own association; stored through the node's listener
    WADO_RS = "wado-rs"  # DICOMweb: the fetch command downloads them and stores them through the node's listener


@dataclass(frozen=True)
class Source:
    """A PACS to query and retrieve from: by DIMSE (C-FIND, C-MOVE) or DICOMweb (QIDO-RS, WADO-RS)."""

    name: str
    ae_title: str  # DIMSE: the source's; DICOMweb: the calling AE title its instances arrive at the node with
    host: str
    port: int
    retrieve: Retrieve = Retrieve.C_MOVE
    url: str | None = None  # DICOMweb service root
    auth: str = "none"  # none | basic | bearer, as for DICOMweb destinations
    username: str | None = None
    password_file: Path | None = None
    token_file: Path | None = None
    tls_ca_file: Path | None = None

    def describe(self) -> str:
        """``AE@host:port``, or the DICOMweb URL."""
        return self.url or f"{self.ae_title}@{self.host}:{self.port}"


def parse_sources(data: Any) -> tuple[Source, ...]:
    """Validate ``[[sources]]``.

    Raises
    ------
    ConfigError
        A key is unknown or missing, a value invalid or a name repeated.
    """
    return unique_names("sources", "source", [_source(key, item) for key, item in array_of_tables("sources", data)])


def _source(key: str, item: Mapping[str, Any]) -> Source:
    kind = item.get("kind", "dimse")
    if kind not in ("dimse", "dicomweb"):
        raise ConfigError(f"{key}.kind: must be dimse (C-FIND, C-MOVE) or dicomweb (QIDO-RS, WADO-RS), got {kind!r}")
    if kind == "dicomweb":
        return _dicomweb(key, item)
    _check_keys(key, item, {"name", "ae_title", "host", "port", "retrieve", "kind"})
    for k in ("name", "ae_title", "host", "port"):
        if k not in item:
            raise ConfigError(f"{key}.{k}: required")
    retrieve = item.get("retrieve", Retrieve.C_MOVE)
    if retrieve not in (Retrieve.C_MOVE, Retrieve.C_GET):
        raise ConfigError(f"{key}.retrieve: a dimse source retrieves by c-move or c-get, got {retrieve!r}")
    return Source(
        name=_str(f"{key}.name", item["name"]), ae_title=_ae(f"{key}.ae_title", item["ae_title"]),
        host=_str(f"{key}.host", item["host"]), port=_int(f"{key}.port", item["port"], 1, 65535),
        retrieve=Retrieve(retrieve),
    )


def _dicomweb(key: str, item: Mapping[str, Any]) -> Source:
    """A ``kind = "dicomweb"`` source: QIDO-RS and WADO-RS at ``url``, with a destination's authentication keys."""
    from dicomnode.config.peers import dicomweb_peer

    if "keep_empty_frames" in item or "retrieve" in item:
        raise ConfigError(f"{key}: keep_empty_frames and retrieve are not for a dicomweb source (it retrieves by WADO-RS)")
    own = {k: v for k, v in item.items() if k not in ("kind", "ae_title")}
    peer = dicomweb_peer(key, own)  # the same checks as a DICOMweb destination (url, auth, files)
    ae = _ae(f"{key}.ae_title", item.get("ae_title", peer.name.upper().replace(" ", "_")[:16]))
    return Source(
        name=peer.name, ae_title=ae, host=peer.host, port=peer.port, retrieve=Retrieve.WADO_RS, url=peer.url,
        auth=str(peer.auth), username=peer.username, password_file=peer.password_file, token_file=peer.token_file,
        tls_ca_file=peer.tls_ca_file,
    )
