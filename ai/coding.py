"""Coded concepts a bundle declares for its reports: finding site, laterality, finding, procedure.

Plain data, no DICOM library: the output stage turns them into SR and SEG
codes.  In a manifest a concept is ``{"code": "39607008", "meaning": "Lung"}``
with an optional ``"scheme"`` (SNOMED CT, ``SCT``, by default), e.g. on a
label::

    {"value": 1, "name": "right lung", "snomed": {...},
     "site": {"code": "39607008", "meaning": "Lung"}, "laterality": "right"}

and for the bundle's procedure ``"procedure": {"code": "24627-2", "scheme": "LN", "meaning": "CT Chest"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Laterality(str, Enum):
    """The side of a paired organ, with its SNOMED CT code (CID 244)."""

    RIGHT = "right"
    LEFT = "left"

    @property
    def code(self) -> str:
        """SNOMED CT code of the side."""
        return "24028007" if self is Laterality.RIGHT else "7771000"

    @property
    def meaning(self) -> str:
        """Code meaning of the side."""
        return "Right" if self is Laterality.RIGHT else "Left"


@dataclass(frozen=True)
class Concept:
    """A coded concept: code value, scheme designator and meaning."""

    code: str
    meaning: str
    scheme: str = "SCT"


def concept(value: Any) -> Concept | None:
    """A manifest's ``{"code", "meaning", "scheme"}`` as a :class:`Concept` (None when absent)."""
    if not value:
        return None
    return Concept(str(value["code"]), str(value["meaning"]), str(value.get("scheme", "SCT")))


def problems(where: str, value: Any) -> list[str]:
    """What is wrong with a manifest concept (empty when it is absent or well formed)."""
    if value is None:
        return []
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) and value.get(k) for k in ("code", "meaning")):
        return [f"{where} must be an object with a non-empty 'code' and 'meaning' (and optionally 'scheme')"]
    if "scheme" in value and not (isinstance(value["scheme"], str) and value["scheme"]):
        return [f"{where}.scheme must be a non-empty string"]
    return []


def label_problems(lb: dict[str, Any]) -> list[str]:
    """Problems in a label's report keys: ``site``, ``finding``, ``laterality``."""
    name = lb.get("name")
    out = problems(f"label {name!r}: site", lb.get("site")) + problems(f"label {name!r}: finding", lb.get("finding"))
    side = lb.get("laterality")
    if side is not None and side not in [s.value for s in Laterality]:
        out.append(f"label {name!r}: laterality must be 'right' or 'left', not {side!r}")
    return out
