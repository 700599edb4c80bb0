"""The STOW-RS receiver: ``POST /dicom-web/studies[/{study}]`` on the web port, with C-STORE's guarantees.

The body (``multipart/related; type="application/dicom"``) is read as it
arrives and cut into parts at the boundary; each complete part, a DICOM file
(PS3.10), goes to the same ingest as a C-STORE (written, fsynced, renamed and
recorded before it counts), so an instance is acknowledged in the answer
only once it is durable.  A part larger than ``node.max_instance_mb`` is
skipped unread (refused, 0xA700); a part that is not DICOM is refused
(0xC000); an instance of another study than the URL names is refused
(0xA900).  A body cut short never stores its unfinished part, and the series
it carried then wait for their instances like after an aborted association.
The answer is a DICOM JSON dataset: the stored instances in the Referenced
SOP Sequence, the refused ones in the Failed SOP Sequence with their Failure
Reason; 200 when all were stored, 202 when some, 409 when none.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dicomnode.audit import audit
from dicomnode.dicom.multipart import Part, PartSplitter, boundary_param
from dicomnode.web.guard import peer_of

logger = logging.getLogger(__name__)

CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
SUCCESS_CODES = (0x0000, 0xB000, 0xB006, 0xB007)
CALLING = "STOW-RS"  # what the stored series record as their sender


class StoreOutcome(Protocol):
    """What the ingest answered for one instance (a :class:`dicomnode.net.handlers.StoreResult`)."""

    @property
    def status(self) -> int: ...
    @property
    def series_id(self) -> int | None: ...
    @property
    def reason(self) -> str | None: ...


class StowError(Exception):
    """The request as a whole is refused (HTTP status and reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class StowHooks:
    """What the receiver needs of the node: its ingest, and the completion monitor's association hints."""

    store: Callable[[bytes, str, str, str, str], StoreOutcome]  # (dataset, transfer syntax, request uid, SOP class, SOP instance)
    released: Callable[[str, dict[int, int], int], None]  # a request that ended normally (uid, carried, refused)
    aborted: Callable[[str, dict[int, int]], None]  # a request cut short
    max_part: int  # bytes: node.max_instance_mb
    max_body: int = 4096 << 20  # bytes: web.stow_max_mb (a chunked body is counted as it arrives)


@dataclass
class StowResult:
    """What one request stored and refused."""

    stored: list[tuple[str, str]] = field(default_factory=list)  # (SOP class, SOP instance)
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)  # (SOP class, SOP instance, reason code, why)
    carried: dict[int, int] = field(default_factory=dict)  # series id -> instances stored
    complete: bool = False  # the closing boundary arrived
    request_uid: str = ""  # the request's name for the completion monitor, as an association's

    def answer(self) -> tuple[int, dict[str, Any]]:
        """HTTP status and DICOM JSON body (PS3.18 10.5.3)."""
        body: dict[str, Any] = {}
        if self.stored:
            body["00081199"] = {"vr": "SQ", "Value": [
                {"00081150": {"vr": "UI", "Value": [c]}, "00081155": {"vr": "UI", "Value": [i]}} for c, i in self.stored
            ]}
        if self.failed:
            body["00081198"] = {"vr": "SQ", "Value": [
                {**({"00081150": {"vr": "UI", "Value": [c]}} if c else {}), **({"00081155": {"vr": "UI", "Value": [i]}} if i else {}),
                 "00081197": {"vr": "US", "Value": [code]}}
                for c, i, code, _ in self.failed
            ]}
        status = 200 if not self.failed else 202 if self.stored else 409
        return status, body


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` body.

    Raises
    ------
    StowError
        Not multipart/related, another type than application/dicom, or no boundary (415).
    """
    main, found = boundary_param(content_type)
    if main != "multipart/related":
        raise StowError(415, 'STOW-RS takes multipart/related; type="application/dicom" bodies')
    if found.get("type", "application/dicom").lower() != "application/dicom":
        raise StowError(415, f"parts of type {found.get('type')!r} are not stored: only application/dicom")
    if not found.get("boundary") or len(found["boundary"]) > 200:  # RFC 2046 says 70; Orthanc sends 73
        raise StowError(415, "the multipart body has no (valid) boundary")
    return found["boundary"]


async def _bounded(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise StowError(413, f"the body is larger than the node accepts ({limit >> 20} MB, web.stow_max_mb)")
        yield chunk


async def read_parts(chunks: AsyncIterator[bytes], boundary: str, max_part: int) -> AsyncIterator[Part | None | bool]:
    """Each complete part of the body (``None`` for one over ``max_part``), then ``True`` if the closing boundary came."""
    splitter = PartSplitter(boundary, max_part)
    async for chunk in chunks:
        for part in splitter.feed(chunk):
            yield part
        if splitter.done:
            break
    yield splitter.done


def dicom_file(content: bytes) -> tuple[bytes, str, str, str]:
    """The dataset bytes, transfer syntax, SOP class and SOP instance of a PS3.10 file.

    Raises
    ------
    InvalidDicomError
        No preamble and ``DICM`` prefix, or no usable File Meta Information.
    """
    fp = io.BytesIO(content)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)  # leaves fp at the dataset (pydicom's public reader takes only a path)
    ts = str(meta.get("TransferSyntaxUID", "") or "")
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
    if not (ts and sop_class and sop_uid):
        raise InvalidDicomError("its File Meta Information lacks the transfer syntax or the SOP class and instance")
    return content[fp.tell():], ts, sop_class, sop_uid


async def receive(
    chunks: AsyncIterator[bytes], content_type: str, store: Callable[[bytes, str, str, str, str], Awaitable[StoreOutcome]], *,
    study: str | None, max_part: int, max_body: int = 4096 << 20,
) -> StowResult:
    """Store each instance of a STOW-RS body and tell what happened.

    ``store(dataset, transfer_syntax, request_uid, sop_class, sop_uid)`` runs the ingest.
    """
    boundary = boundary_of(content_type)
    out = StowResult(request_uid=f"stow-{uuid.uuid4().hex}")
    try:
        await _receive_parts(out, read_parts(_bounded(chunks, max_body), boundary, max_part), store, study, max_part)
    except ClientDisconnect:  # cut short: what was stored stays (durable), the unfinished part was only in memory
        out.complete = False
    return out


async def _receive_parts(
    out: StowResult, parts: AsyncIterator[Part | None | bool], store: Callable[[bytes, str, str, str, str], Awaitable[StoreOutcome]],
    study: str | None, max_part: int,
) -> None:
    request_uid = out.request_uid
    async for part in parts:
        if isinstance(part, bool):
            out.complete = part
            break
        if part is None:
            out.failed.append(("", "", OUT_OF_RESOURCES, f"larger than the node's limit of {max_part >> 20} MB (node.max_instance_mb)"))
            continue
        content = part.content
        kind = part.headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if kind != "application/dicom":
            out.failed.append(("", "", CANNOT_UNDERSTAND, f"a part of type {kind[:40]!r}, not application/dicom"))
            continue
        try:
            data, ts, sop_class, sop_uid = dicom_file(content)
        except (InvalidDicomError, ValueError, EOFError, KeyError, AttributeError) as exc:
            out.failed.append(("", "", CANNOT_UNDERSTAND, f"not a DICOM file (PS3.10): {type(exc).__name__}"))
            continue
        if study is not None:
            try:
                own = str(dcmread(io.BytesIO(content), stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).get("StudyInstanceUID", ""))
            except (InvalidDicomError, ValueError, EOFError, KeyError, AttributeError):
                own = ""
            if own != study:
                out.failed.append((sop_class, sop_uid, DOES_NOT_MATCH, "an instance of another study than the URL names"))
                continue
        result = await store(data, ts, request_uid, sop_class, sop_uid)
        if result.status in SUCCESS_CODES:
            out.stored.append((sop_class, sop_uid))
            if result.series_id is not None:
                out.carried[result.series_id] = out.carried.get(result.series_id, 0) + 1
        else:
            out.failed.append((sop_class, sop_uid, int(result.status), result.reason or f"refused (0x{result.status:04X})"))


def add_stow_routes(app: Any, hooks: StowHooks, who: Callable[[Any], Any]) -> None:
    """``POST /dicom-web/studies`` and ``/dicom-web/studies/{study}``: STOW-RS into the node's ingest (admin role)."""
    async def store(data: bytes, ts: str, request_uid: str, sop_class: str, sop_uid: str) -> StoreOutcome:
        outcome: StoreOutcome = await run_in_threadpool(hooks.store, data, ts, request_uid, sop_class, sop_uid)  # fsyncs
        return outcome

    async def stow(request: Request, study: str | None) -> Response:
        user = who(request)
        if not user.is_admin:
            audit("web_action", user=user.name, peer=peer_of(request.scope), action="stow", outcome="forbidden")
            return JSONResponse({"detail": "storing instances needs the admin role"}, status_code=403)
        try:
            result = await receive(request.stream(), request.headers.get("content-type", ""), store, study=study,
                                   max_part=hooks.max_part, max_body=hooks.max_body)
        except StowError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        if not result.complete:  # cut short: what it stored waits as after an aborted association
            if result.carried:
                hooks.aborted(result.request_uid, result.carried)
            logger.warning("STOW-RS request cut short by the client; its unfinished instance was not stored")
            audit("stow", user=user.name, peer=peer_of(request.scope), outcome="cut short", stored=len(result.stored))
            return JSONResponse({"detail": "the body ended before its closing boundary"}, status_code=400)
        if result.carried:
            hooks.released(result.request_uid, result.carried, len(result.failed))
        for n, (_, _, code, why) in enumerate(result.failed, 1):
            logger.warning("STOW-RS: refused instance %d of the request (0x%04X): %s", n, code, why)
        audit("stow", user=user.name, peer=peer_of(request.scope), outcome="stored", stored=len(result.stored), refused=len(result.failed))
        status, body = result.answer()
        return JSONResponse(body, status_code=status, media_type="application/dicom+json")

    @app.post("/dicom-web/studies", include_in_schema=False)
    async def stow_all(request: Request) -> Response:
        return await stow(request, None)

    @app.post("/dicom-web/studies/{study}", include_in_schema=False)
    async def stow_study(study: str, request: Request) -> Response:
        return await stow(request, study)
