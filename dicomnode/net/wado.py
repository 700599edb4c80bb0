"""DICOMweb retrieval from a source: QIDO-RS to find studies and series, WADO-RS to download their instances.

QIDO-RS answers are DICOM JSON.  A WADO-RS study or series comes back as
``multipart/related; type="application/dicom"``, read as it arrives and cut
into instances with the shared splitter (:mod:`dicomnode.dicom.multipart`),
each bounded by ``max_part``; every complete instance is handed to the
caller, and a stream cut short never hands back its unfinished one.  Errors
are told in words, as for STOW-RS (credentials, URL, TLS, timeouts).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from dicomnode.config.sources import Source
from dicomnode.dicom.multipart import PartSplitter, boundary_param
from dicomnode.errors import NetworkError
from dicomnode.net.retrieve import SeriesMatch, StudyMatch
from dicomnode.net.webpeer import authorization, connect, errors_in_words

CHUNK = 1 << 20
STUDY_UID, SERIES_UID, STUDY_DATE, STUDY_TIME, MODALITIES = "0020000D", "0020000E", "00080020", "00080030", "00080061"
MODALITY, SERIES_NUMBER, BODY_PART, INSTANCES = "00080060", "00200011", "00180015", "00201209"


@dataclass(frozen=True)
class WadoOutcome:
    """How many instances came, how many of them the caller refused, and whether the stream was complete."""

    received: int
    refused: int
    complete: bool


def _open(source: Source, path: str, accept: str, timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    assert source.url is not None
    conn, root = connect(source.url, timeout, source.tls_ca_file)
    headers = {"Accept": accept}
    auth = authorization(source)
    if auth:
        headers["Authorization"] = auth
    try:
        with errors_in_words(source.name, source.url, timeout):
            conn.request("GET", root.rstrip("/") + path, headers=headers)
            resp = conn.getresponse()
    except NetworkError:
        conn.close()
        raise
    if resp.status == 204:  # QIDO-RS: no match
        return conn, resp
    if resp.status != 200:
        conn.close()
        hint = {401: ": it refused our credentials (check auth, username and password_file or token_file)",
                403: ": it does not allow us to read", 404: f": nothing at {source.url}{path.split('?')[0]} (is the url the DICOMweb root?)"}
        raise NetworkError(f"{source.name}: HTTP {resp.status} {resp.reason}{hint.get(resp.status, '')}")
    return conn, resp


def qido(source: Source, path: str, params: dict[str, str], timeout: float = 30.0) -> list[dict[str, Any]]:
    """A QIDO-RS search: each match as a DICOM JSON dataset."""
    query = urlencode({k: v for k, v in params.items() if v})
    conn, resp = _open(source, path + (f"?{query}" if query else ""), "application/dicom+json", timeout)
    try:
        text = resp.read(1 << 26).decode("utf-8", "replace") if resp.status == 200 else ""
    finally:
        conn.close()
    try:
        found = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise NetworkError(f"{source.name}: its QIDO-RS answer is not DICOM JSON") from exc
    return [m for m in found if isinstance(m, dict)] if isinstance(found, list) else []


def _value(ds: dict[str, Any], tag: str) -> Any:
    v = (ds.get(tag) or {}).get("Value") or []
    return v[0] if v else None


def find_studies(source: Source, *, since: str, until: str, modality: str | None, timeout: float = 30.0) -> list[StudyMatch]:
    """The studies dated ``since``..``until`` (YYYYMMDD) with ``modality``, oldest first."""
    found = qido(source, "/studies", {"StudyDate": f"{since}-{until}", "ModalitiesInStudy": modality or "",
                                      "includefield": f"{STUDY_DATE},{STUDY_TIME},{MODALITIES}"}, timeout)
    out = []
    for ds in found:
        uid = _value(ds, STUDY_UID)
        mods = tuple(str(m) for m in (ds.get(MODALITIES) or {}).get("Value") or [])
        if uid and (not modality or not mods or modality.upper() in {m.upper() for m in mods}):
            out.append(StudyMatch(str(uid), f"{_value(ds, STUDY_DATE) or ''}{_value(ds, STUDY_TIME) or ''}", mods))
    return sorted(out, key=lambda s: (s.date, s.study_uid))


def has_study(source: Source, study_uid: str, timeout: float = 30.0) -> bool:
    """Whether QIDO-RS finds the study."""
    return any(_value(ds, STUDY_UID) == study_uid for ds in qido(source, "/studies", {"StudyInstanceUID": study_uid}, timeout))


def find_series(
    source: Source, study_uid: str, *, modality: str | None = None, body_part: str | None = None, timeout: float = 30.0,
) -> list[SeriesMatch]:
    """The series of a study, those of ``modality`` and ``body_part`` only when given."""
    found = qido(source, f"/studies/{quote(study_uid)}/series", {"Modality": modality or "",
                                                                "includefield": f"{BODY_PART},{INSTANCES},{SERIES_NUMBER}"}, timeout)
    out = []
    for ds in found:
        part = str(_value(ds, BODY_PART) or "")
        if (modality and str(_value(ds, MODALITY) or "").upper() != modality.upper()) or (body_part and part.upper() != body_part.upper()):
            continue
        n = _value(ds, INSTANCES)
        out.append(SeriesMatch(str(_value(ds, SERIES_UID)), str(_value(ds, MODALITY) or ""), str(_value(ds, SERIES_NUMBER) or ""),
                               part, int(n) if n is not None else None))
    return out


def retrieve(
    source: Source, study_uid: str, series_uids: Sequence[str], on_instance: Callable[[bytes], bool], *, max_part: int,
    timeout: float = 60.0,
) -> WadoOutcome:
    """Download a study (or its ``series_uids``) by WADO-RS; ``on_instance`` takes each PS3.10 instance (``False``: refused).

    Raises
    ------
    NetworkError
        No connection, an HTTP error, or an answer that is not multipart/related.
    """
    paths = [f"/studies/{quote(study_uid)}/series/{quote(s)}" for s in series_uids] or [f"/studies/{quote(study_uid)}"]
    received = refused = 0
    for path in paths:
        conn, resp = _open(source, path, 'multipart/related; type="application/dicom"; transfer-syntax=*', timeout)
        try:
            media, params = boundary_param(resp.getheader("Content-Type", ""))
            if media != "multipart/related" or not params.get("boundary"):
                raise NetworkError(f"{source.name}: its WADO-RS answer is not multipart/related ({media or 'no type'})")
            splitter = PartSplitter(params["boundary"], max_part)
            while not splitter.done:
                try:
                    chunk = resp.read1(CHUNK) if hasattr(resp, "read1") else resp.read(CHUNK)
                except (OSError, http.client.HTTPException):
                    chunk = b""
                if not chunk:
                    break
                for part in splitter.feed(chunk):
                    received += 1
                    if part is None or not on_instance(part.content):
                        refused += 1
        finally:
            conn.close()
        if not splitter.done:
            return WadoOutcome(received, refused, complete=False)
    return WadoOutcome(received, refused, complete=True)
