"""The audit trail: who sent what, what ran on it, and where the results went.

One JSON object per line on the ``dicomnode.audit`` logger, which the CLI
writes to ``node.audit_log``.  Entries name AE titles, addresses, internal
series and job numbers, counts and destinations; never patient names or IDs.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

audit_logger = logging.getLogger("dicomnode.audit")


def audit(event: str, **fields: object) -> None:
    """Record one audit event (``association``, ``job``, ``delivery``...)."""
    if audit_logger.isEnabledFor(logging.INFO):
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event, **fields}
        audit_logger.info(json.dumps(entry, default=str))
