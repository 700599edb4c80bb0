"""Calcification in a lesion, for :func:`ai.lesion_volume.grown`'s ``calcium`` option.

A partly calcified nodule's pure voxels are mostly its calcified part, so a
core taken from them is the calcium's, and the soft-tissue rim then counts
short.  Here a lesion is found calcified, or partly calcified (soft tissue
around calcium), and a partly calcified one gets the intensity of its soft
tissue to be measured against.
"""

from __future__ import annotations

import cc3d
import numpy as np

CALCIFIED_SHARE = (0.02, 0.5)  # a partly calcified component has this share of its voxels calcified: fewer are noise, more
# are a nodule calcified throughout (its rim partial)
CALCIUM_NOISE_SDS = 2.0  # calcification is this many noise SDs brighter than the densest soft tissue
SOFT_TISSUE_BAND = 200.0  # soft tissue lies within this much below ``calcium`` (for 150 HU: -50 to 150 HU)
SOFT_SHARE_MIN = 0.25  # a partly calcified lesion: at least this share of its component's voxels is in that band
VESSEL_RUN_MM = 3.0  # a structure as dense as calcium that runs this far out of a lesion's component is a vessel
SOFT_CORE_PERCENTILE = 75.0  # a partly calcified lesion without pure soft-tissue voxels: its soft tissue's core


def calcification(img: np.ndarray, comp: np.ndarray, vals: np.ndarray, dist: np.ndarray, calcium: float | None,
                  noise: float) -> tuple[bool, float | None]:
    """Whether a lesion holds calcification, and for a partly calcified one the intensity above which its voxels are
    calcification (``calcium`` plus :data:`CALCIUM_NOISE_SDS` noise SDs).

    ``comp``: the lesion's component in image box ``img``; ``vals``: its intensities; ``dist``: the distance to it in
    mm.

    Calcification lies within the lesion: a structure that bright which runs on out of the component (more than
    :data:`VESSEL_RUN_MM` beyond it) is a contrast-enhanced vessel that the component took part of, and does not
    count; a lesion's own calcified body may lie a little beyond a component that the network misplaced.
    Calcified: at least the lower bound of :data:`CALCIFIED_SHARE` of its voxels (fewer are noise).  Partly
    calcified: fewer than the upper bound, and at least :data:`SOFT_SHARE_MIN` soft tissue (within
    :data:`SOFT_TISSUE_BAND` below ``calcium``).  A nodule calcified throughout has most of its voxels calcified and
    the rest spread thinly from the lung up (its partial rim, which on thick slices is most of a small nodule); a
    partly calcified one has a plateau of soft tissue.
    """
    if calcium is None or not comp.any():
        return False, None
    above = calcium + CALCIUM_NOISE_SDS * noise
    dense = img > above
    if not (dense & comp).any():
        return False, None
    pieces = cc3d.connected_components(dense, connectivity=26)
    out = np.unique(pieces[dense & (dist > VESSEL_RUN_MM)])
    inside = dense & comp & ~np.isin(pieces, out[out > 0])
    share = float(np.count_nonzero(inside)) / len(vals)
    soft = float(np.mean((vals > calcium - SOFT_TISSUE_BAND) & (vals <= above)))
    partly = CALCIFIED_SHARE[0] <= share < CALCIFIED_SHARE[1] and soft >= SOFT_SHARE_MIN
    return share >= CALCIFIED_SHARE[0], above if partly else None


def soft_core(img: np.ndarray, region: np.ndarray, inner: np.ndarray, calcified: float, level: float,
              core: float | None, min_voxels: int) -> float:
    """The soft tissue's intensity of a partly calcified lesion.

    ``region``: the lesion; ``inner``: its pure voxels; ``calcified``: the intensity above which its voxels are
    calcification.  The median of its pure soft-tissue voxels where it has ``min_voxels`` of them, else ``core`` (the
    lesion class's own intensity, when the bundle gives one), else the :data:`SOFT_CORE_PERCENTILE` th percentile of
    its soft tissue, these two never dimmer than its ``level``.  The 95th, as for ``small_core`` ``brightest``, takes
    noise and the calcification's blur for soft tissue.
    """
    pure = img[inner]
    pure = pure[pure <= calcified]
    if len(pure) >= min_voxels:
        return float(np.median(pure))
    if core is not None:
        return max(float(core), level)
    soft = img[region]
    soft = soft[soft <= calcified]
    return max(level, float(np.percentile(soft, SOFT_CORE_PERCENTILE))) if len(soft) else level
