"""``[[notify]]``: who hears that a job is done or failed (a JSON webhook, or an HL7 v2 ORU^R01 over MLLP to a RIS)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dicomnode.config.values import boolean as _bool
from dicomnode.config.values import check_keys as _check_keys
from dicomnode.config.values import integer as _int
from dicomnode.config.values import number as _num
from dicomnode.config.values import str_list as _str_list
from dicomnode.config.values import string as _str
from dicomnode.config.values import array_of_tables, unique_names
from dicomnode.errors import ConfigError


class NotifyKind(enum.StrEnum):
    """How a target is told."""

    WEBHOOK = "webhook"  # an HTTP POST of a JSON summary
    HL7 = "hl7"  # an HL7 v2.5 ORU^R01 over MLLP


EVENTS = ("done", "failed")


@dataclass(frozen=True)
class Notify:
    """One ``[[notify]]`` target."""

    name: str
    kind: NotifyKind
    on: tuple[str, ...] = EVENTS
    url: str | None = None  # webhook
    token_file: Path | None = None  # webhook: a bearer token, read at each attempt
    secret_file: Path | None = None  # webhook: an HMAC-SHA256 key that signs each body, read at each attempt
    tls_ca_file: Path | None = None  # webhook over https, hl7 with tls: CAs to trust besides the system's
    host: str | None = None  # hl7
    port: int | None = None  # hl7
    tls: bool = False  # hl7: MLLP inside TLS 1.2+, the listener's certificate and name verified
    tls_cert_file: Path | None = None  # hl7 with tls: our client certificate, for a listener that asks for one
    tls_key_file: Path | None = None
    sending_application: str = "DICOMNODE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    timeout: float = 10.0


def parse_notify(data: Any) -> tuple[Notify, ...]:
    """Validate ``[[notify]]``.

    Raises
    ------
    ConfigError
        A key is unknown or missing, a value invalid or a name repeated.
    """
    entries = array_of_tables("notify", data)
    return unique_names("notify", "notify", [_notify(i, key, item) for i, (key, item) in enumerate(entries)])


def _notify(i: int, key: str, item: Mapping[str, Any]) -> Notify:
    kind = item.get("kind")
    if kind not in tuple(NotifyKind):
        raise ConfigError(f"{key}.kind: must be webhook or hl7, got {kind!r}")
    common = {"name", "kind", "on", "timeout"}
    if kind == NotifyKind.WEBHOOK:
        _check_keys(key, item, common | {"url", "token_file", "secret_file", "tls_ca_file"})
        url = _str(f"{key}.url", item.get("url", ""))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{key}.url: must be an http:// or https:// URL, got {url!r}")
    else:
        _check_keys(key, item, common | {"host", "port", "sending_application", "sending_facility", "receiving_application",
                                         "receiving_facility", "tls", "tls_ca_file", "tls_cert_file", "tls_key_file"})
        for k in ("host", "port"):
            if k not in item:
                raise ConfigError(f"{key}.{k}: required for an hl7 target (the RIS's MLLP listener)")
        tls = _bool(f"{key}.tls", item.get("tls", False))
        for k in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            if k in item and not tls:
                raise ConfigError(f"{key}.{k}: only with tls = true")
        if ("tls_cert_file" in item) != ("tls_key_file" in item):
            raise ConfigError(f"{key}: tls_cert_file and tls_key_file go together (a client certificate and its key)")
    paths = {}
    for k in ("token_file", "secret_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        if k in item:
            p = Path(_str(f"{key}.{k}", item[k]))
            if not p.is_file():
                raise ConfigError(f"{key}.{k}: file {p} does not exist")
            paths[k] = p
    on = _str_list(f"{key}.on", item.get("on", list(EVENTS)))
    if not on or any(e not in EVENTS for e in on):
        raise ConfigError(f"{key}.on: a list of {', '.join(EVENTS)}, got {on!r}")
    return Notify(
        name=_str(f"{key}.name", item.get("name", f"notify {i + 1}")), kind=NotifyKind(kind), on=tuple(on),
        url=item.get("url"), token_file=paths.get("token_file"), secret_file=paths.get("secret_file"),
        tls_ca_file=paths.get("tls_ca_file"),
        host=_str(f"{key}.host", item["host"]) if "host" in item else None,
        port=_int(f"{key}.port", item["port"], 1, 65535) if "port" in item else None,
        tls=_bool(f"{key}.tls", item.get("tls", False)), tls_cert_file=paths.get("tls_cert_file"), tls_key_file=paths.get("tls_key_file"),
        timeout=_num(f"{key}.timeout", item.get("timeout", 10.0), 0.5, 300.0),
        **{k: _str(f"{key}.{k}", item[k]) for k in ("sending_application", "sending_facility", "receiving_application",
                                                   "receiving_facility") if k in item},
    )
