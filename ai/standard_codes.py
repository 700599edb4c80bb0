"""Standard codes for the segments of models the node did not write, from TotalSegmentator's own table.

TotalSegmentator ships, in its package, the DICOM coding of every structure
it segments (``resources/totalsegmentator_snomed_mapping.csv``: segmented
property category and type, type modifier for the side, anatomic region and
a colour), the table its own DICOM-SEG export uses.  When the package is
installed, a MONAI or nnU-Net model's label named like a TotalSegmentator
structure (``lung_upper_lobe_left``, ``trachea``, ``lung_vessels`` ...; case,
spaces and hyphens ignored) takes those codes, so TotalSegmentator's own
weights, and models trained on its label names, come out standard-coded.
The table is read as data: no TotalSegmentator code is imported.  A model's
label-coding file (:mod:`ai.label_coding`) still overrides it.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
from pathlib import Path
from typing import Any

TABLE = ("resources", "totalsegmentator_snomed_mapping.csv")
_SIDES = {"24028007": "right", "7771000": "left"}


def table_path() -> Path | None:
    """Where the installed TotalSegmentator package keeps its coding table, or ``None``."""
    spec = importlib.util.find_spec("totalsegmentator")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*TABLE)
    return path if path.is_file() else None


def key(name: str) -> str:
    """A structure name as the table writes it: lower case, words joined by ``_``."""
    return "_".join(name.strip().lower().replace("-", " ").split())


@functools.lru_cache(maxsize=1)
def table() -> dict[str, dict[str, Any]]:
    """Structure name -> manifest label fields (``snomed``, ``category``, ``site``, ``laterality``, ``color``); empty without the package."""
    path = table_path()
    if path is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            fields: dict[str, Any] = {
                "category": _concept(row, "SegmentedPropertyCategoryCodeSequence"),
                "snomed": _concept(row, "SegmentedPropertyTypeCodeSequence"),
            }
            side = _SIDES.get(row.get("SegmentedPropertyTypeModifierCodeSequence.CodeValue", ""))
            if side:
                fields["laterality"] = side
            region = _concept(row, "AnatomicRegionSequence")
            if region:
                fields["site"] = region
            rgb = [int(v) for v in (row.get("DicomRGBColor") or "").split(",") if v.strip().isdigit()]
            if len(rgb) == 3 and all(0 <= v <= 255 for v in rgb):
                fields["color"] = rgb
            if fields["snomed"] and fields["category"]:
                out[key(row["Structure"])] = {k: v for k, v in fields.items() if v}
    return out


def _concept(row: dict[str, str], prefix: str) -> dict[str, str] | None:
    code, meaning = row.get(f"{prefix}.CodeValue", ""), row.get(f"{prefix}.CodeMeaning", "")
    scheme = row.get(f"{prefix}.CodingSchemeDesignator", "") or "SCT"
    if not code or not meaning:
        return None
    return {"code": code, "meaning": meaning, **({"scheme": scheme} if scheme != "SCT" else {})}


def code_labels(labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifest labels with the table's codes added where a label's name is a TotalSegmentator structure."""
    known = table()
    return [{**lb, **known.get(key(str(lb.get("name", ""))), {})} for lb in labels]
