"""The audit trail: who sent what, what ran on it, and where the results went.

One JSON object per line on the ``dicomnode.audit`` logger, which the CLI
writes to ``node.audit_log`` (created 0600).  Entries name AE titles,
addresses, internal series and job numbers, counts and destinations; never
UIDs, file paths or patient attributes.  :func:`audit` enforces it as well
as its callers do: a field named like an identifier (``sop_uid``, ``path``,
``patient_id``) is dropped, and text that holds a UID is masked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from dicomnode.redaction import redact
from storage.private_fields import is_private_field

audit_logger = logging.getLogger("dicomnode.audit")


def _clean(value: object) -> object:
    """``value`` with every string in it masked (UIDs), through lists and mappings."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items() if not is_private_field(str(k))}
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [_clean(v) for v in value]
    return value


def audit_entry(event: str, **fields: object) -> dict[str, object]:
    """The JSON object :func:`audit` writes: time, event and ``fields`` without identifiers."""
    kept = {k: _clean(v if isinstance(v, (str, int, float, bool, type(None), Mapping, Sequence)) else str(v))
            for k, v in fields.items() if not is_private_field(k)}
    return {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event, **kept}


def audit(event: str, **fields: object) -> None:
    """Record one audit event (``association``, ``job``, ``delivery``...).

    Parameters
    ----------
    event : str
        What happened.
    **fields
        AE titles, addresses, internal ids, counts, destinations, outcomes.
        A field named like an identifier is left out; a UID in a text is masked.
    """
    if audit_logger.isEnabledFor(logging.INFO):
        audit_logger.info(json.dumps(audit_entry(event, **fields), default=str))
