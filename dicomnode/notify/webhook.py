"""A JSON webhook: the job's summary POSTed to a URL, any 2xx answer counting as received.

With a ``secret_file``, each body is signed so that the receiver can tell it
came from the node and was not replayed: ``X-Dicomnode-Timestamp`` is the
Unix time of the attempt and ``X-Dicomnode-Signature`` is ``sha256=`` and the
hex HMAC-SHA256, keyed with the secret, of the timestamp, a full stop and
the body.  ``X-Dicomnode-Delivery`` names the notification (the same on every
retry), so a receiver can drop a repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

from dicomnode.config.notify import Notify
from dicomnode.errors import NetworkError
from dicomnode.net.webpeer import bearer, connect, credential, errors_in_words
from dicomnode.notify.summary import JobSummary


SIGNATURE = "X-Dicomnode-Signature"
TIMESTAMP = "X-Dicomnode-Timestamp"
DELIVERY = "X-Dicomnode-Delivery"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Dicomnode-Signature`` value of ``body`` sent at ``timestamp``."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _secret(name: str, path: Path) -> bytes:
    """The signing key kept in ``path`` (read now; surrounding whitespace is not part of it)."""
    secret = credential(name, path, "secret file")
    if not secret:
        raise NetworkError(f"{name}: its secret file {path} is empty, so the webhook cannot be signed")
    return secret


def post(target: Notify, summary: JobSummary) -> int:
    """POST the summary; returns the HTTP status.

    Raises
    ------
    NetworkError
        No connection, TLS failure, a timeout, or a status other than 2xx.
    """
    assert target.url is not None
    body = json.dumps(summary.as_json()).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), "User-Agent": "dicomnode"}
    if target.token_file is not None:
        headers["Authorization"] = bearer(target.name, target.token_file)
    headers[DELIVERY] = f"job-{summary.job}-{summary.event}"
    if target.secret_file is not None:
        headers[TIMESTAMP] = str(int(time.time()))
        headers[SIGNATURE] = signature(_secret(target.name, target.secret_file), headers[TIMESTAMP], body)
    conn, path = connect(target.url, target.timeout, target.tls_ca_file)
    query = urlsplit(target.url).query
    try:
        with errors_in_words(target.name, "the webhook", target.timeout):
            conn.request("POST", (path or "/") + (f"?{query}" if query else ""), body=body, headers=headers)
            resp = conn.getresponse()
            resp.read(1 << 16)
    finally:
        conn.close()
    if not 200 <= resp.status < 300:
        raise NetworkError(f"{target.name}: the webhook answered HTTP {resp.status} {resp.reason}")
    return resp.status
