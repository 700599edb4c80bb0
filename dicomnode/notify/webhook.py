"""A JSON webhook: the job's summary POSTed to a URL, any 2xx answer counting as received."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from dicomnode.config.notify import Notify
from dicomnode.errors import NetworkError
from dicomnode.net.webpeer import bearer, connect, errors_in_words
from dicomnode.notify.summary import JobSummary


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
