"""HTTP to the hospital's web peers (DICOMweb destinations and sources, webhooks): connections, credentials, errors in words.

One place for what every HTTP peer of the node shares: an ``https`` URL is
always verified (TLS 1.2 or later, the certificate and host name, with a
peer's ``tls_ca_file`` trusted besides the system's CAs); credentials are
read from their files at each request, so a rotated token needs no restart,
and never appear in messages; a failed exchange becomes a
:class:`~dicomnode.errors.NetworkError` that says what to check.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from dicomnode.config.peers import WebAuth
from dicomnode.errors import NetworkError


class WebPeer(Protocol):
    """A DICOMweb peer's name, credentials and trusted CAs (a destination or a source)."""

    @property
    def name(self) -> str: ...
    @property
    def auth(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password_file(self) -> Path | None: ...
    @property
    def token_file(self) -> Path | None: ...
    @property
    def tls_ca_file(self) -> Path | None: ...


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ with the peer's certificate and name verified, trusting ``ca_file`` besides the system's CAs."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def connect(url: str, timeout: float, ca_file: Path | None = None) -> tuple[http.client.HTTPConnection, str]:
    """A connection to ``url``'s host (HTTPS when it says so) and the URL's path."""
    parts = urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, context=tls_context(ca_file))
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    return conn, parts.path


def credential(name: str, path: Path, what: str = "credentials file") -> bytes:
    """A secret kept in ``path``, read now (so it can be rotated) without surrounding whitespace.

    Raises
    ------
    NetworkError
        The file cannot be read, in words (``what`` names it).
    """
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise NetworkError(f"{name}: cannot read its {what}: {exc.strerror or exc}") from exc


def bearer(name: str, token_file: Path) -> str:
    """The ``Authorization`` header of a bearer token kept in ``token_file`` (read now)."""
    return "Bearer " + credential(name, token_file).decode()


def authorization(peer: WebPeer) -> str | None:
    """The ``Authorization`` header for the peer (credentials read from their files now), or ``None``."""
    if peer.auth == WebAuth.BEARER and peer.token_file is not None:
        return bearer(peer.name, peer.token_file)
    if peer.auth == WebAuth.BASIC and peer.password_file is not None:
        password = credential(peer.name, peer.password_file).decode()
        return "Basic " + base64.b64encode(f"{peer.username}:{password}".encode()).decode("ascii")
    return None


@contextlib.contextmanager
def errors_in_words(name: str, what: str, timeout: float) -> Iterator[None]:
    """Turn a failed HTTP exchange with ``what`` (e.g. "the webhook") of peer ``name`` into a :class:`NetworkError`."""
    try:
        yield
    except ssl.SSLCertVerificationError as exc:
        raise NetworkError(f"{name}: its certificate is not trusted ({exc.verify_message}); set tls_ca_file to its CA") from exc
    except ssl.SSLError as exc:
        raise NetworkError(f"{name}: TLS failed: {exc.reason or exc}") from exc
    except TimeoutError as exc:
        raise NetworkError(f"{name}: {what} did not answer within {timeout:g} s") from exc
    except OSError as exc:
        raise NetworkError(f"{name}: cannot reach {what}: {exc.strerror or exc}") from exc
    except http.client.HTTPException as exc:
        raise NetworkError(f"{name}: the HTTP exchange failed: {type(exc).__name__}") from exc
