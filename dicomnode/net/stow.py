"""STOW-RS: sending a job's outputs to a DICOMweb destination (PS3.18 10.5).

One ``POST {url}/studies`` per attempt carries every object of the delivery
as ``multipart/related; type="application/dicom"``.  The body is streamed
from the output files with its length announced, so memory holds one chunk,
not the objects.  The answer says per instance what the peer stored: the
Referenced SOP Sequence lists the stored ones, the Failed SOP Sequence the
refused ones with a Failure Reason; together they must name every instance
sent, else the missing ones count as not stored.  HTTP and TLS failures are
told in words a PACS administrator understands (credentials refused, no
STOW-RS service at that URL, certificate not trusted ...).  Over https the
peer's certificate and host name are always verified (``tls_ca_file`` adds
trusted CAs).  Credentials are read from their files at each attempt, so a
rotated token needs no restart, and never appear in messages.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dicomnode.config.peers import Destination
from dicomnode.errors import NetworkError
from dicomnode.net.webpeer import authorization, connect, errors_in_words

CHUNK = 1 << 20
STUDIES = "/studies"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
# PS3.18 table 10.5.3-1 and PS3.4 annex B: why a peer refused an instance, in words.
FAILURE_REASONS = {
    0x0110: "processing failure", 0x0122: "SOP class not supported", 0xA700: "out of resources",
    0xA900: "data set does not match SOP class", 0xC000: "cannot understand", 0x0111: "duplicate SOP instance",
    0x0119: "class-instance conflict", 0x0124: "not authorized",
}


@dataclass(frozen=True)
class StowObject:
    """One object of a delivery: its file, SOP Instance UID and how messages name it."""

    path: Path
    sop_instance_uid: str
    label: str


@dataclass
class StowOutcome:
    """What the peer stored: how many, and each refused object's label with the reason."""

    sent: int
    failed: dict[str, str] = field(default_factory=dict)


def _body(objects: Sequence[StowObject], boundary: str) -> tuple[list[tuple[bytes, Path | None]], int]:
    """The multipart parts (literal bytes, or a file to stream) and the body's length."""
    parts: list[tuple[bytes, Path | None]] = []
    length = 0
    for o in objects:
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        parts += [(head, None), (b"", o.path), (b"\r\n", None)]
        length += len(head) + o.path.stat().st_size + 2
    tail = f"--{boundary}--\r\n".encode()
    parts.append((tail, None))
    return parts, length + len(tail)


def _stream(parts: list[tuple[bytes, Path | None]]) -> Iterator[bytes]:
    for data, path in parts:
        if path is None:
            yield data
            continue
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk


def _http_error(dest: Destination, status: int, reason: str, text: str) -> NetworkError:
    hint = {
        401: "it refused our credentials (check auth, username and password_file or token_file)",
        403: "it does not allow us to store (check the account's rights)",
        404: f"there is no STOW-RS service at {dest.url}{STUDIES} (check the url: the DICOMweb service root)",
        405: f"{dest.url}{STUDIES} does not accept POST (is the url the DICOMweb root?)",
        413: "the objects are larger than it accepts",
        415: "it does not accept multipart/related application/dicom",
    }.get(status, "a server error; it may be busy or misconfigured" if status >= 500 else "")
    detail = " ".join(text.split())[:200]
    return NetworkError(f"{dest.name}: HTTP {status} {reason}" + (f": {hint}" if hint else "") + (f" ({detail})" if detail and not hint else ""))


def _failures(answer: dict[str, object], objects: Sequence[StowObject]) -> dict[str, str]:
    """Each sent object the answer does not list as stored, with the peer's reason."""

    def items(tag: str) -> list[dict[str, object]]:
        seq = answer.get(tag)
        value = seq.get("Value") if isinstance(seq, dict) else None
        return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

    def first(item: dict[str, object], tag: str) -> object:
        el = item.get(tag)
        value = el.get("Value") if isinstance(el, dict) else None
        return value[0] if isinstance(value, list) and value else None

    stored = {str(first(i, REFERENCED_SOP_INSTANCE_UID)) for i in items(REFERENCED_SOP_SEQUENCE)}
    refused: dict[str, str] = {}
    for i in items(FAILED_SOP_SEQUENCE):
        code = first(i, FAILURE_REASON)
        why = f"0x{int(code):04X} {FAILURE_REASONS.get(int(code), 'refused')}" if isinstance(code, (int, float)) else "refused, no reason given"
        refused[str(first(i, REFERENCED_SOP_INSTANCE_UID))] = why
    out = {}
    for o in objects:
        if o.sop_instance_uid in refused:
            out[o.label] = refused[o.sop_instance_uid]
        elif o.sop_instance_uid not in stored:
            out[o.label] = "not listed as stored in the answer"
    return out


def stow(objects: Sequence[StowObject], dest: Destination, timeout: float) -> StowOutcome:
    """Send ``objects`` to ``dest`` in one STOW-RS request.

    Returns
    -------
    StowOutcome
        How many were stored, and each refused object with the reason.

    Raises
    ------
    NetworkError
        The peer cannot be reached, TLS fails, or it answers with an HTTP
        error (the message says what to check).
    """
    if dest.url is None:
        raise NetworkError(f"{dest.name} is not a DICOMweb destination")
    boundary = "dicomnode-" + secrets.token_hex(16)
    parts, length = _body(objects, boundary)
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
        "Content-Length": str(length),
    }
    auth = authorization(dest)
    if auth:
        headers["Authorization"] = auth
    conn, root = connect(dest.url, timeout, dest.tls_ca_file)
    try:
        with errors_in_words(dest.name, dest.url, timeout):
            conn.request("POST", root + STUDIES, body=_stream(parts), headers=headers)
            resp = conn.getresponse()
            text = resp.read(1 << 22).decode("utf-8", "replace")
    finally:
        conn.close()
    if resp.status not in (200, 202, 409):  # 409: every instance refused; the answer says why
        raise _http_error(dest, resp.status, resp.reason, text)
    try:
        answer = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise NetworkError(f"{dest.name}: HTTP {resp.status}, but its answer is not DICOM JSON") from exc
    if isinstance(answer, list):  # some servers wrap the one dataset in a list
        answer = answer[0] if answer and isinstance(answer[0], dict) else {}
    if not isinstance(answer, dict):
        raise NetworkError(f"{dest.name}: HTTP {resp.status}, but its answer is not a DICOM JSON dataset")
    failed = _failures(answer, objects)
    return StowOutcome(sent=len(objects) - len(failed), failed=failed)
