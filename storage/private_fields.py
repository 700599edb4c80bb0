"""Which fields of a listing or an audit record would show an identifier (no database needed)."""

from __future__ import annotations

import re

# Fields a listing never shows, whatever a row gains later: DICOM UIDs (identifiers), stored
# paths (named after the UIDs) and patient attributes.  Rows are named by internal ids.
_PRIVATE_FIELD = re.compile(r"(^|_)(uids?|paths?)(_|$)|(^|_)(patient|accession|birth)", re.IGNORECASE)


def is_private_field(name: str) -> bool:
    """Whether a listing field would show an identifier (``sop_uid``, ``path``, ``patient_id``...)."""
    return bool(_PRIVATE_FIELD.search(name))
