"""Query/Retrieve SCU: find studies and series on a source PACS (C-FIND) and have it send them to the node (C-MOVE).

Study Root information model.  C-MOVE names the node's own AE title as the
move destination: the source opens its own association to the node's
listener, where the instances are stored, completed and processed as any
push.  Every failure comes back in words a PACS administrator acts on (most
often: the source does not know the node as a move destination).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import, unknown to the stubs
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomnode.config.peers import Destination
from dicomnode.config.sources import Source
from dicomnode.dicom.sopclasses import IMAGE_STORAGE_SOP_CLASSES, NON_IMAGE_STORAGE_SOP_CLASSES, storage_contexts
from dicomnode.errors import NetworkError
from dicomnode.net.scu import associate

logger = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
SUCCESS = 0x0000
CANCELLED = 0xFE00
SUB_OPERATIONS_WARNING = 0xB000  # some sub-operations failed
MOVE_DESTINATION_UNKNOWN = 0xA801
OUT_OF_RESOURCES_MATCHES = 0xA701
OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702
IDENTIFIER_DOES_NOT_MATCH = 0xA900
MOVE_FAILURES = {
    OUT_OF_RESOURCES_MATCHES: "it is out of resources (cannot calculate the number of matches)",
    OUT_OF_RESOURCES_SUB_OPERATIONS: "it is out of resources (cannot perform the sub-operations)",
    IDENTIFIER_DOES_NOT_MATCH: "the request does not match its information model",
    0x0122: "it does not support C-MOVE in the Study Root model",
    0x0124: "it does not allow us to retrieve",
}


@dataclass(frozen=True)
class StudyMatch:
    """A study a C-FIND found."""

    study_uid: str
    date: str
    modalities: tuple[str, ...]


@dataclass(frozen=True)
class SeriesMatch:
    """A series a C-FIND found."""

    series_uid: str
    modality: str
    number: str
    body_part: str
    instances: int | None


@dataclass(frozen=True)
class MoveOutcome:
    """What the source reported at the end of a C-MOVE: instances sent, failed, and with warnings."""

    completed: int
    failed: int
    warning: int


def _as_peer(source: Source) -> Destination:
    return Destination(source.name, source.ae_title, source.host, source.port)


def _ae(calling_ae: str, context: Any, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(context)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def find(source: Source, level: str, keys: dict[str, str], *, calling_ae: str, timeout: float = 30.0) -> list[Dataset]:
    """C-FIND at ``level`` (STUDY or SERIES) with ``keys`` as matching and return keys; every match.

    Raises
    ------
    NetworkError
        No association, or the source answered with a failure status.
    """
    query = Dataset()
    query.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(query, k, v)
    assoc = associate(_ae(calling_ae, StudyRootQueryRetrieveInformationModelFind, timeout), _as_peer(source))
    matches: list[Dataset] = []
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status or "Status" not in status:  # Orthanc, for one, closes the association on unknown requesters
                raise NetworkError(
                    f"{source.name} ({source.ae_title}) closed the association instead of answering our C-FIND (or did not "
                    f"answer within {timeout:.0f} s): it may not allow {calling_ae} to query; add {calling_ae} with this "
                    "node's host and port to its DICOM modalities"
                )
            code = int(status.Status)
            if code in PENDING and identifier is not None:
                matches.append(identifier)
            elif code not in PENDING and code != SUCCESS:
                raise NetworkError(f"{source.name}: C-FIND failed with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return matches


def find_studies(
    source: Source, *, since: str, until: str, modality: str | None, calling_ae: str, timeout: float = 30.0,
) -> list[StudyMatch]:
    """The studies dated ``since``..``until`` (YYYYMMDD), with ``modality`` among their modalities, oldest first."""
    keys = {"StudyInstanceUID": "", "StudyDate": f"{since}-{until}", "StudyTime": "", "ModalitiesInStudy": modality or ""}
    out = []
    for ds in find(source, "STUDY", keys, calling_ae=calling_ae, timeout=timeout):
        mods = ds.get("ModalitiesInStudy") or []
        mods = (mods,) if isinstance(mods, str) else tuple(str(m) for m in mods)
        if modality and mods and modality.upper() not in {m.upper() for m in mods}:
            continue  # a source that ignores the ModalitiesInStudy key
        if ds.get("StudyInstanceUID"):
            out.append(StudyMatch(str(ds.StudyInstanceUID), str(ds.get("StudyDate", "")) + str(ds.get("StudyTime", "")), mods))
    return sorted(out, key=lambda s: (s.date, s.study_uid))


def find_series(
    source: Source, study_uid: str, *, modality: str | None = None, body_part: str | None = None, calling_ae: str,
    timeout: float = 30.0,
) -> list[SeriesMatch]:
    """The series of a study, those of ``modality`` and ``body_part`` only when given."""
    keys = {
        "StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "Modality": modality or "", "SeriesNumber": "",
        "BodyPartExamined": "", "NumberOfSeriesRelatedInstances": "",
    }
    out = []
    for ds in find(source, "SERIES", keys, calling_ae=calling_ae, timeout=timeout):
        part = str(ds.get("BodyPartExamined", "") or "")
        if modality and str(ds.get("Modality", "")).upper() != modality.upper():
            continue
        if body_part and part.upper() != body_part.upper():
            continue
        n = ds.get("NumberOfSeriesRelatedInstances")
        out.append(SeriesMatch(str(ds.SeriesInstanceUID), str(ds.get("Modality", "")), str(ds.get("SeriesNumber", "")), part,
                               int(n) if n not in (None, "") else None))
    return out


def move(
    source: Source, study_uid: str, series_uids: Sequence[str] = (), *, destination_ae: str, calling_ae: str,
    timeout: float = 600.0,
) -> MoveOutcome:
    """Ask ``source`` to send a study (or some of its series) to ``destination_ae`` by C-MOVE.

    Raises
    ------
    NetworkError
        No association, or the source refused or failed the move; the
        message says what to check.
    """
    query = _retrieve_query(study_uid, series_uids)
    assoc = associate(_ae(calling_ae, StudyRootQueryRetrieveInformationModelMove, timeout), _as_peer(source))
    started = time.monotonic()
    last = _last_status(assoc, assoc.send_c_move(query, destination_ae, StudyRootQueryRetrieveInformationModelMove))
    return _final(source, last, started, timeout, calling_ae, destination_ae, "C-MOVE")


def _retrieve_query(study_uid: str, series_uids: Sequence[str]) -> Dataset:
    """The identifier of a C-MOVE or C-GET: a study, or some of its series."""
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES" if series_uids else "STUDY"
    query.StudyInstanceUID = study_uid
    if series_uids:
        query.SeriesInstanceUID = list(series_uids) if len(series_uids) > 1 else series_uids[0]
    return query


def _last_status(assoc: Any, responses: Any) -> Dataset | None:
    """The last status of a C-MOVE or C-GET (``None`` when there was none); the association is released after."""
    last: Dataset | None = None
    try:
        for status, _identifier in responses:
            if not status or "Status" not in status:
                break
            last = status
    finally:
        if assoc.is_established:
            assoc.release()
    return last


def _final(source: Source, last: Dataset | None, started: float, timeout: float, calling_ae: str, destination_ae: str,
           what: str) -> MoveOutcome:
    """The outcome of a C-MOVE or C-GET from its last response, or the failure in words."""
    if last is None or int(last.Status) in PENDING:  # no final answer
        if time.monotonic() - started < 0.9 * timeout:  # the source ended the association (Orthanc does, for unknown requesters)
            raise NetworkError(
                f"{source.name} ({source.ae_title}) closed the association instead of answering our {what}: it may not "
                f"allow {calling_ae} to retrieve; add {destination_ae} with this node's host and port to its DICOM modalities"
            )
        raise NetworkError(f"{source.name}: no {what} response within {timeout:.0f} s")
    code = int(last.Status)
    counts = MoveOutcome(
        int(last.get("NumberOfCompletedSuboperations", 0) or 0), int(last.get("NumberOfFailedSuboperations", 0) or 0),
        int(last.get("NumberOfWarningSuboperations", 0) or 0),
    )
    if code == MOVE_DESTINATION_UNKNOWN:
        raise NetworkError(
            f"{source.name} ({source.ae_title}) does not know {destination_ae} as a move destination (0xA801): "
            f"add {destination_ae} with this node's host and port to its DICOM modalities"
        )
    if code == CANCELLED:
        raise NetworkError(f"{source.name}: the {what} was cancelled after {counts.completed} instance(s)")
    if code not in (SUCCESS, SUB_OPERATIONS_WARNING):
        why = MOVE_FAILURES.get(code, "it refused")
        if 0xC000 <= code <= 0xCFFF:  # some PACS (Orthanc) answer an unknown move destination this way, not with 0xA801
            why = (f"it could not process the request; check that it lists {destination_ae} with this node's host and port "
                   "among its DICOM modalities")
        comment = str(last.get("ErrorComment", "") or "").strip()
        raise NetworkError(f"{source.name}: {what} failed with status 0x{code:04X}: {why}" + (f" (it says: {comment[:120]})" if comment else ""))
    return counts


def get(
    source: Source, study_uid: str, series_uids: Sequence[str], on_instance: Callable[[bytes], bool], *, calling_ae: str,
    timeout: float = 600.0,
) -> MoveOutcome:
    """Ask ``source`` for a study (or some of its series) by C-GET: it sends the instances on this association.

    ``on_instance`` takes each instance as a PS3.10 file (``False``: refused,
    answered 0xA700).  Raises :class:`NetworkError` as :func:`move` does.
    """
    query = _retrieve_query(study_uid, series_uids)
    ae = _ae(calling_ae, StudyRootQueryRetrieveInformationModelGet, timeout)
    for ctx in storage_contexts():  # we are the Storage SCP of the instances the source sends back
        assert ctx.abstract_syntax is not None
        ae.add_requested_context(ctx.abstract_syntax, ctx.transfer_syntax)
    roles = [build_role(uid, scp_role=True) for uid in IMAGE_STORAGE_SOP_CLASSES + NON_IMAGE_STORAGE_SOP_CLASSES]

    def store(event: Any) -> int:
        try:
            return 0x0000 if on_instance(bytes(event.encoded_dataset(include_meta=True))) else 0xA700
        except Exception:  # never let an exception reach pynetdicom
            logger.exception("C-GET: an instance could not be kept")
            return 0xA700

    assoc = associate(ae, _as_peer(source), ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, store)])
    started = time.monotonic()
    last = _last_status(assoc, assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    return _final(source, last, started, timeout, calling_ae, calling_ae, "C-GET")
