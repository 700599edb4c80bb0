"""A JSON webhook: the job's summary POSTed to a URL, any 2xx answer counting as received."""

from __future__ import annotations

import http.client
import json
import ssl
from urllib.parse import urlsplit

from dicomnode.config.notify import Notify
from dicomnode.errors import NetworkError
from dicomnode.notify.summary import JobSummary


def post(target: Notify, summary: JobSummary) -> int:
    """POST the summary; returns the HTTP status.

    Raises
    ------
    NetworkError
        No connection, TLS failure, a timeout, or a status other than 2xx.
    """
    assert target.url is not None
    parts = urlsplit(target.url)
    body = json.dumps(summary.as_json()).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), "User-Agent": "dicomnode"}
    if target.token_file is not None:
        try:
            headers["Authorization"] = "Bearer " + target.token_file.read_text().strip()
        except OSError as exc:
            raise NetworkError(f"{target.name}: cannot read its token_file: {exc.strerror or exc}") from exc
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=str(target.tls_ca_file) if target.tls_ca_file else None)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=target.timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=target.timeout)
    try:
        conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body=body, headers=headers)
        resp = conn.getresponse()
        resp.read(1 << 16)
    except TimeoutError as exc:
        raise NetworkError(f"{target.name}: the webhook did not answer within {target.timeout:g} s") from exc
    except ssl.SSLError as exc:
        raise NetworkError(f"{target.name}: TLS failed: {getattr(exc, 'verify_message', None) or exc.reason or exc}") from exc
    except OSError as exc:
        raise NetworkError(f"{target.name}: cannot reach the webhook: {exc.strerror or exc}") from exc
    except http.client.HTTPException as exc:
        raise NetworkError(f"{target.name}: the HTTP exchange failed: {type(exc).__name__}") from exc
    finally:
        conn.close()
    if not 200 <= resp.status < 300:
        raise NetworkError(f"{target.name}: the webhook answered HTTP {resp.status} {resp.reason}")
    return resp.status
