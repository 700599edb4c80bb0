"""Place each finding of one model in a lobe segmented by another (e.g. TotalSegmentator's lung lobes).

When a lobe model runs on the same series as a nodule model, a finding's
anatomic site becomes its lobe: the lobe label that holds most of the
finding's voxels.  A lobe model may leave a nodule out of its lobes (it sees
it as not lung); then the voxels around the nodule, within
:data:`SHELL_MM`, decide.  A finding no lobe reaches keeps the site its own
model gives it.  Both label maps are on the source grid, so no resampling
is needed here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from ai.bundle import Bundle, Label
from ai.findings import Finding

# SNOMED CT codes of lung lobes (DICOM CID 6124 and pydicom's concept table): upper and lower lobe of lung, which
# TotalSegmentator sides with a modifier, middle lobe (of right lung), upper lobe of left lung, and lobe of lung.
LOBE_CODES = frozenset({"45653009", "90572001", "72481006", "40020002", "44714003", "31094006"})
_LOBE_NAME = re.compile(r"\blobe\b|_lobe_", re.IGNORECASE)
SHELL_MM = 3.0  # how far around a finding its lobe is looked for when the lobe map leaves it out
MIN_SHARE = 0.5  # of the finding's lobe-labelled voxels that its lobe must hold; else the lobe is not named


def lobe_labels(bundle: Bundle) -> tuple[Label, ...]:
    """The labels of ``bundle`` that are lung lobes (by SNOMED CT code, else by name)."""
    return tuple(
        lb for lb in bundle.labels
        if not lb.lesion and (lb.snomed_code in LOBE_CODES or (not lb.snomed_code and _LOBE_NAME.search(lb.name)))
    )


def place_in_lobes(
    found: Sequence[Finding],
    lobe_map: np.ndarray,
    lobes: Sequence[Label],
    spacing_xyz: tuple[float, float, float],
    model: str = "",
) -> list[Finding]:
    """``found`` with the lobe each finding lies in (findings no lobe reaches are unchanged).

    Parameters
    ----------
    found : sequence of Finding
        One model's findings, on the source grid.
    lobe_map : numpy.ndarray
        ``[z, y, x]`` labels of the lobe model, on the same grid.
    lobes : sequence of Label
        The lobe labels of that model (see :func:`lobe_labels`).
    spacing_xyz : tuple of float
        Voxel size in mm, for the shell around a finding.
    model : str
        ``"name version"`` of the lobe model, recorded on each placed finding.
    """
    if not lobes or not found:
        return list(found)
    by_value = {lb.value: lb for lb in lobes}
    values = np.array(sorted(by_value), dtype=np.int64)
    out = []
    for f in found:
        lobe = _lobe_of(f, lobe_map, values, spacing_xyz)
        out.append(dataclasses.replace(f, lobe=by_value[lobe], lobe_model=model) if lobe is not None else f)
    return out


def _lobe_of(f: Finding, lobe_map: np.ndarray, values: np.ndarray, spacing_xyz: tuple[float, float, float]) -> int | None:
    les = f.lesion
    if les.box is None or les.mask is None:
        return None
    counts = _counts(lobe_map[les.box][les.mask], values)
    if counts.sum() == 0:  # the lobe map leaves the finding out: look in a shell around it
        reach = [max(1, int(np.ceil(SHELL_MM / max(s, 1e-3)))) for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]
        box = tuple(
            slice(max(0, sl.start - r), min(n, sl.stop + r)) for sl, r, n in zip(les.box, reach, lobe_map.shape)
        )
        counts = _counts(lobe_map[box].ravel(), values)
    total = int(counts.sum())
    if total == 0:
        return None
    best = int(np.argmax(counts))
    return int(values[best]) if counts[best] >= MIN_SHARE * total else None


def _counts(voxels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many of ``voxels`` carry each of ``values``."""
    hist = np.bincount(voxels.astype(np.int64).ravel(), minlength=int(values.max()) + 1)
    return hist[values]
