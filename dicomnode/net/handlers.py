"""What the listener asks of the rest of the node: a C-STORE handler and its answer.

The listener (:mod:`dicomnode.net.scp`) turns each request into a call of a
:class:`StoreHandler` and its :class:`StoreResult` into the C-STORE
response, so the network layer knows nothing of files, series or jobs;
:class:`dicomnode.receive.ingest.Ingestor` is the node's handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoreResult:
    """What happened to one C-STORE request."""

    status: int  # the DICOM status to answer with
    duplicate: bool = False  # an identical copy of an instance already stored
    series_id: int | None = None  # the node's number for the instance's series
    sop_uid: str | None = None
    reason: str | None = None  # for failures: readable, no patient data


class StoreHandler(Protocol):
    """Stores one received dataset and says how it went; it must never raise."""

    def store(
        self,
        data: bytes | memoryview,
        transfer_syntax: str,
        *,
        assoc_uid: str,
        calling_ae: str | None = None,
        affected_sop_class: str | None = None,
        affected_sop_instance: str | None = None,
    ) -> StoreResult:
        """Store ``data`` (the dataset exactly as received; valid only during the call) and return the status to answer with."""
        ...
