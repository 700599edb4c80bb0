"""TLS for the listener: handshakes off the accept thread, and certificate subjects mapped to AE titles.

pynetdicom wraps each accepted socket in its single accept thread, so one
peer that opens a TCP connection and never starts the handshake blocks every
other TLS peer.  :class:`Handshakes` runs the handshake in the connection's
own thread (the listener calls :func:`handshake` there), within a deadline.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

# Short names of the subject attributes, as in RFC 4514 (CN=...,O=...).
_SHORT = {
    "commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
    "localityName": "L", "stateOrProvinceName": "ST", "emailAddress": "emailAddress", "domainComponent": "DC",
}


def handshake(raw: socket.socket, host: str, context: ssl.SSLContext, seconds: float) -> ssl.SSLSocket | None:
    """Wrap ``raw`` and complete the server handshake within ``seconds``; ``None`` (connection closed) on failure."""
    try:
        raw.settimeout(seconds)
        tls = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        tls.do_handshake()
        return tls
    except (TimeoutError, socket.timeout):
        logger.warning("TLS connection from %s closed: no handshake within %.0f s", host, seconds)
    except (ssl.SSLError, OSError) as exc:
        logger.warning("TLS handshake with %s failed: %s", host, getattr(exc, "reason", None) or exc)
    try:
        raw.close()
    except OSError:
        pass
    return None


def subject_of(sock: Any) -> str | None:
    """The client certificate's subject as ``CN=...,O=...`` (``None`` without a verified certificate)."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):
        return None
    if not cert:
        return None
    parts = []
    subject: Any = cert.get("subject", ())
    for rdn in subject:
        for name, value in rdn:
            parts.append(f"{_SHORT.get(name, name)}={value}")
    return ",".join(parts) or None


def _pairs(subject: str) -> set[tuple[str, str]]:
    out = set()
    for part in subject.split(","):
        name, _, value = part.partition("=")
        out.add((name.strip().upper() if name.strip() != "emailAddress" else "emailAddress", value.strip()))
    return out


def subject_allows(allowed: Mapping[str, tuple[str, ...]], subject: str | None, calling_ae: str) -> bool:
    """Whether a certificate with ``subject`` may call as ``calling_ae``.

    Each key of ``allowed`` is a set of ``attribute=value`` pairs; it matches a
    subject that has all of them (``CN=ct1.example.org`` matches
    ``CN=ct1.example.org,O=Hospital``).  The AE titles of every matching key
    are allowed.  An empty mapping allows everything.
    """
    if not allowed:
        return True
    if subject is None:
        return False
    have = _pairs(subject)
    return any(_pairs(key) <= have and calling_ae in aes for key, aes in allowed.items())


__all__ = ["handshake", "subject_allows", "subject_of"]
