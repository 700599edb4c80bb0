"""TLS and destination settings: the listener's ``[node.tls]``, the web's ``[web.tls]`` and ``[[destinations]]``."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from pathlib import Path
from typing import Any

from dicomnode.config.values import ae as _ae
from dicomnode.config.values import boolean as _bool
from dicomnode.config.values import check_keys as _check_keys
from dicomnode.config.values import integer as _int
from dicomnode.config.values import number as _num
from dicomnode.config.values import str_list as _str_list
from dicomnode.config.values import string as _str
from dicomnode.config.values import array_of_tables, unique_names
from dicomnode.config.values import table as _table
from dicomnode.errors import ConfigError


@dataclass(frozen=True)
class TLSConfig:
    """Optional TLS for the listener."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False
    # Certificate subject (e.g. "CN=ct1.example.org") -> calling AE titles it may use; empty: any.
    allowed_subjects: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    handshake_seconds: float = 10.0  # a TLS handshake must finish within this (it runs off the accept thread)


@dataclass(frozen=True)
class WebTLSConfig:
    """``[web.tls]``: serve the web face over HTTPS."""

    cert_file: Path
    key_file: Path


class DestinationKind(enum.StrEnum):
    """How a destination receives results."""

    DIMSE = "dimse"  # C-STORE to an AE title (the default)
    DICOMWEB = "dicomweb"  # STOW-RS to a DICOMweb service URL


class WebAuth(enum.StrEnum):
    """How the node identifies itself to a DICOMweb destination."""

    NONE = "none"
    BASIC = "basic"  # HTTP Basic: username and the password in password_file
    BEARER = "bearer"  # a bearer token, read from token_file at each delivery (so it can be rotated)


@dataclass(frozen=True)
class Destination:
    """A DICOM peer that results can be sent to: an AE title (DIMSE) or a DICOMweb service (STOW-RS)."""

    name: str
    ae_title: str  # DIMSE; empty for DICOMweb
    host: str  # for DICOMweb, the URL's host
    port: int  # for DICOMweb, the URL's port
    storage_commitment: bool = False  # done only once the peer confirms (N-ACTION / N-EVENT-REPORT)
    keep_empty_frames: bool = False  # SEG with every frame, for viewers that misplace sparse SEGs
    tls: bool = False  # DICOM over TLS 1.2+, the peer's certificate and host name verified
    tls_ca_file: Path | None = None  # CAs trusted for the peer's certificate (default: the system's)
    tls_cert_file: Path | None = None  # our client certificate and key, for peers that require mutual TLS
    tls_key_file: Path | None = None
    tls_server_name: str | None = None  # the name the peer's certificate must carry (default: host)
    tls_pinned: bool = False  # trust exactly the certificate in tls_ca_file, whatever names it carries (the node's own listener)
    kind: DestinationKind = DestinationKind.DIMSE
    url: str | None = None  # DICOMweb: the service root, e.g. https://pacs.example.org/dicom-web
    auth: WebAuth = WebAuth.NONE
    username: str | None = None  # HTTP Basic
    password_file: Path | None = None  # HTTP Basic: the password, in a file readable by the node only
    token_file: Path | None = None  # bearer token, in a file

    def describe(self) -> str:
        """How messages name the peer: ``AE@host:port`` or the DICOMweb URL."""
        return self.url or f"{self.ae_title}@{self.host}:{self.port}"


def parse_tls(data: Any) -> TLSConfig | None:
    if data is None:
        return None
    data = _table("node.tls", data)
    _check_keys("node.tls", data, {"cert_file", "key_file", "ca_file", "require_client_cert", "allowed_subjects", "handshake_seconds"})
    for k in ("cert_file", "key_file"):
        if k not in data:
            raise ConfigError(f"node.tls.{k}: required when [node.tls] is present")
    paths = {}
    for k in ("cert_file", "key_file", "ca_file"):
        if data.get(k) is not None:
            p = Path(_str(f"node.tls.{k}", data[k]))
            if not p.is_file():
                raise ConfigError(f"node.tls.{k}: file {p} does not exist")
            paths[k] = p
    if data.get("require_client_cert") and "ca_file" not in paths:
        raise ConfigError("node.tls.ca_file: required when require_client_cert is true; without it every public CA would be trusted")
    if data.get("allowed_subjects") and not data.get("require_client_cert"):
        raise ConfigError("node.tls.allowed_subjects: needs require_client_cert = true (subjects come from client certificates)")
    return TLSConfig(
        cert_file=paths["cert_file"],
        key_file=paths["key_file"],
        ca_file=paths.get("ca_file"),
        require_client_cert=_bool("node.tls.require_client_cert", data.get("require_client_cert", False)),
        allowed_subjects=_subjects(data.get("allowed_subjects", {})),
        handshake_seconds=_num("node.tls.handshake_seconds", data.get("handshake_seconds", 10.0), 0.5, 300),
    )


def _subjects(data: Any) -> dict[str, tuple[str, ...]]:
    """``[node.tls.allowed_subjects]``: "CN=...,O=..." = ["AE1", "AE2"]."""
    table = _table("node.tls.allowed_subjects", data)
    out: dict[str, tuple[str, ...]] = {}
    for subject, aes in table.items():
        key = f"node.tls.allowed_subjects.{subject!r}"
        if not all("=" in part for part in str(subject).split(",")):
            raise ConfigError(f"{key}: a subject is attribute=value pairs separated by commas, e.g. \"CN=ct1.example.org\"")
        out[str(subject)] = tuple(_ae(key, a) for a in _str_list(key, aes))
    return out


def parse_web_tls(key: str, v: Any) -> WebTLSConfig | None:
    if v is None:
        return None
    _check_keys(key, _table(key, v), {"cert_file", "key_file"})
    paths = []
    for k in ("cert_file", "key_file"):
        if k not in v:
            raise ConfigError(f"{key}.{k}: required when [{key}] is present")
        if not Path(_str(f"{key}.{k}", v[k])).is_file():
            raise ConfigError(f"{key}.{k}: file {v[k]} does not exist")
        paths.append(Path(v[k]))
    return WebTLSConfig(*paths)


WEB_KEYS = ("kind", "name", "url", "auth", "username", "password_file", "token_file", "tls_ca_file", "keep_empty_frames")


def dicomweb_peer(key: str, item: Mapping[str, Any]) -> Destination:
    """A ``kind = "dicomweb"`` destination: STOW-RS to ``url``, with its authentication and trusted CAs."""
    _check_keys(key, dict(item), set(WEB_KEYS))
    for k in ("name", "url"):
        if k not in item:
            raise ConfigError(f"{key}.{k}: required")
    url = _str(f"{key}.url", item["url"]).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}.url: must be an http:// or https:// DICOMweb service root, got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{key}.url: no credentials, query or fragment in the URL (use auth, username, password_file)")
    auth = item.get("auth", WebAuth.NONE)
    if auth not in tuple(WebAuth):
        raise ConfigError(f"{key}.auth: must be one of {', '.join(WebAuth)}, got {auth!r}")
    needs = {WebAuth.BASIC: ("username", "password_file"), WebAuth.BEARER: ("token_file",), WebAuth.NONE: ()}[WebAuth(auth)]
    for k in needs:
        if k not in item:
            raise ConfigError(f"{key}.{k}: required with auth = {auth!r}")
    for k in ("username", "password_file", "token_file"):
        if k in item and k not in needs:
            raise ConfigError(f"{key}.{k}: set, but auth is {auth!r}")
    paths = {}
    for k in ("password_file", "token_file", "tls_ca_file"):
        if k in item:
            p = Path(_str(f"{key}.{k}", item[k]))
            if not p.is_file():
                raise ConfigError(f"{key}.{k}: file {p} does not exist")
            paths[k] = p
    if "tls_ca_file" in paths and parts.scheme != "https":
        raise ConfigError(f"{key}.tls_ca_file: set, but the url is not https://")
    return Destination(
        name=_str(f"{key}.name", item["name"]), ae_title="", host=parts.hostname or "",
        port=parts.port or (443 if parts.scheme == "https" else 80),
        keep_empty_frames=_bool(f"{key}.keep_empty_frames", item.get("keep_empty_frames", False)),
        tls=parts.scheme == "https", tls_ca_file=paths.get("tls_ca_file"), kind=DestinationKind.DICOMWEB, url=url,
        auth=WebAuth(auth), username=_str(f"{key}.username", item["username"]) if "username" in item else None,
        password_file=paths.get("password_file"), token_file=paths.get("token_file"),
    )


def parse_destinations(data: Any) -> tuple[Destination, ...]:
    entries = array_of_tables("destinations", data)
    return unique_names("destinations", "destination", [_destination(key, item) for key, item in entries])


def _destination(key: str, item: Mapping[str, Any]) -> Destination:
    kind = item.get("kind", DestinationKind.DIMSE)
    if kind not in tuple(DestinationKind):
        raise ConfigError(f"{key}.kind: must be dimse or dicomweb, got {kind!r}")
    if kind == DestinationKind.DICOMWEB:
        if "storage_commitment" in item:
            raise ConfigError(
                f"{key}.storage_commitment: Storage Commitment is DIMSE; a DICOMweb destination's STOW-RS answer "
                "already says, per instance, what it stored"
            )
        return dicomweb_peer(key, item)
    item = {k: v for k, v in item.items() if k != "kind"}
    tls_keys = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")
    _check_keys(key, item, {"name", "ae_title", "host", "port", "storage_commitment", "keep_empty_frames", "tls", *tls_keys})
    for k in ("name", "ae_title", "host", "port"):
        if k not in item:
            raise ConfigError(f"{key}.{k}: required")
    tls = _bool(f"{key}.tls", item.get("tls", False))
    for k in (k for k in tls_keys if k in item):
        if not tls:
            raise ConfigError(f"{key}.{k}: set, but {key}.tls is not true")
        if not Path(_str(f"{key}.{k}", item[k])).is_file() and k != "tls_server_name":
            raise ConfigError(f"{key}.{k}: file {item[k]} does not exist")
    if ("tls_cert_file" in item) != ("tls_key_file" in item):
        which = "tls_key_file" if "tls_cert_file" in item else "tls_cert_file"
        raise ConfigError(f"{key}.{which}: required with the other; mutual TLS needs both tls_cert_file and tls_key_file")
    return Destination(
        name=_str(f"{key}.name", item["name"]),
        ae_title=_ae(f"{key}.ae_title", item["ae_title"]),
        host=_str(f"{key}.host", item["host"]),
        port=_int(f"{key}.port", item["port"], 1, 65535),
        storage_commitment=_bool(f"{key}.storage_commitment", item.get("storage_commitment", False)),
        keep_empty_frames=_bool(f"{key}.keep_empty_frames", item.get("keep_empty_frames", False)),
        tls=tls,
        tls_ca_file=Path(item["tls_ca_file"]) if "tls_ca_file" in item else None,
        tls_cert_file=Path(item["tls_cert_file"]) if "tls_cert_file" in item else None,
        tls_key_file=Path(item["tls_key_file"]) if "tls_key_file" in item else None,
        tls_server_name=item.get("tls_server_name"),
    )
