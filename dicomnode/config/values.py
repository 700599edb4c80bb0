"""Validating configuration values, with errors that name the key.

Each function takes the dotted key (for the message) and the raw TOML value,
and returns the value checked and normalised, or raises
:class:`~dicomnode.errors.ConfigError` such as
``node.port: must be an integer from 0 to 65535, got 'abc'``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from dicomnode.errors import ConfigError

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash


def integer(key: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{key}: must be an integer from {lo} to {hi}, got {v!r}")
    return v


def number(key: str, v: Any, lo: float, hi: float = float("inf")) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        rng = f"at least {lo}" if hi == float("inf") else f"from {lo} to {hi}"
        raise ConfigError(f"{key}: must be a number {rng}, got {v!r}")
    return float(v)


def string(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{key}: must be a non-empty string, got {v!r}")
    return v


def boolean(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: must be true or false, got {v!r}")
    return v


def ae(key: str, v: Any) -> str:
    if not isinstance(v, str) or not _AE_RE.match(v) or not v.strip():
        raise ConfigError(f"{key}: must be an AE title of 1 to 16 printable characters without backslash, got {v!r}")
    return v.strip()


def str_list(key: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [s for s in (p.strip() for p in v.split(",")) if s]
    if isinstance(v, tuple):  # a default
        v = list(v)
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ConfigError(f"{key}: must be a list of strings, got {v!r}")
    return tuple(v)


def hosts(key: str, v: Any) -> tuple[str, ...]:
    found = str_list(key, v)
    for h in found:
        try:
            ipaddress.ip_network(h, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{key}: {h!r} is not an IP address or network (e.g. 10.0.0.0/8)") from exc
    return found


def check_keys(section: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")


def table(key: str, v: Any) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{key}: must be a table, got {v!r}")
    return v


def array_of_tables(section: str, data: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """The entries of ``[[section]]``, each with its key for messages (``section[i]``)."""
    if not isinstance(data, list):
        raise ConfigError(f"{section}: must be an array of tables ([[{section}]]), got {data!r}")
    return [(f"{section}[{i}]", table(f"{section}[{i}]", item)) for i, item in enumerate(data)]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_N = TypeVar("_N", bound=_Named)


def unique_names(section: str, what: str, entries: Sequence[_N]) -> tuple[_N, ...]:
    """``entries`` of ``[[section]]``, refused when two share a name."""
    for i, e in enumerate(entries):
        if any(o.name == e.name for o in entries[:i]):
            raise ConfigError(f"{section}[{i}].name: duplicate {what} name {e.name!r}")
    return tuple(entries)


def choice(*allowed: str) -> Callable[[str, Any], str]:
    def check(key: str, v: Any) -> str:
        if v not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(allowed)}, got {v!r}")
        return str(v)

    return check


_HOST_NAME_RE = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9][a-z0-9-]{0,62})*")


def host_names(key: str, v: Any) -> tuple[str, ...]:
    names = tuple(h.lower().rstrip(".") for h in str_list(key, v))
    for h in names:
        try:
            ipaddress.ip_address(h)
        except ValueError:
            if not _HOST_NAME_RE.fullmatch(h):
                raise ConfigError(f"{key}: {h!r} is not a host name or IP address (a leading '*.' matches subdomains)") from None
    return names


def header_name(key: str, v: Any) -> str:
    if v != "" and (not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9-]{1,64}", v) or v.lower() in ("authorization", "cookie", "host")):
        raise ConfigError(f"{key}: must be an HTTP header name such as X-Remote-User (or \"\" for none), got {v!r}")
    return str(v)


