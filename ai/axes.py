"""Long and short axis of a lesion in one image plane, as Fleischner and Lung-RADS measure them.

The long axis is the longest diameter of the lesion in the slice where it is
longest; the short axis is the longest diameter perpendicular to it in the
same slice (not the smallest width); the mean diameter is their average.
A lesion ``n`` pixels across measures ``n`` pixel widths (its edge pixels'
centres are half a pixel inside its outline, in any direction), and the ends
of each axis lie on the outline, not at the centres of its edge pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ANGLES = np.deg2rad(np.arange(0.0, 180.0, 1.0))  # caliper directions tried for the long axis
Point = tuple[float, float, float]  # (z, y, x) voxel coordinates, fractional


@dataclass(frozen=True)
class Axes:
    """Long and short axis of a lesion in the slice where its long axis is largest.

    Attributes
    ----------
    slice_index : int
        The slice (index along the volume's first axis) where they were measured.
    long_mm, short_mm : float
        Long axis, and the longest diameter perpendicular to it, in mm.
    long_ends, short_ends : (Point, Point)
        The ends of each axis as ``(z, y, x)`` voxel coordinates of the volume
        (fractional: they lie on the outline of the lesion's pixels).
    """

    slice_index: int
    long_mm: float
    short_mm: float
    long_ends: tuple[Point, Point]
    short_ends: tuple[Point, Point]

    @property
    def mean_mm(self) -> float:
        """The average of long and short axis (Fleischner's "mean diameter")."""
        return (self.long_mm + self.short_mm) / 2.0


def _slice_axes(yx: np.ndarray, sy: float, sx: float) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Long and short axis of the pixels ``yx`` (row, column) of one slice.

    Returns the two lengths in mm and the ends of each axis as ``(2, 2)``
    arrays of (y, x) pixel coordinates.
    """
    mm = yx.astype(np.float64) * (sy, sx)
    dirs = np.stack([np.sin(ANGLES), np.cos(ANGLES)], axis=1)  # (y, x) unit vectors
    half = 0.5 * np.hypot(dirs[:, 0] * sy, dirs[:, 1] * sx)  # half a pixel along each direction
    proj = mm @ dirs.T  # (n, angles)
    widths = proj.max(axis=0) - proj.min(axis=0) + 2 * half
    k = int(np.argmax(widths))
    lo, hi = int(np.argmin(proj[:, k])), int(np.argmax(proj[:, k]))
    u = mm[hi] - mm[lo]
    norm = float(np.linalg.norm(u))
    u = u / norm if norm > 0 else dirs[k]
    h = 0.5 * float(np.hypot(u[0] * sy, u[1] * sx))
    long_mm = norm + 2 * h
    long_ends = np.stack([mm[lo] - u * h, mm[hi] + u * h])
    # Short axis: the longest chord perpendicular to the long axis, pixels binned by their place along it.
    v = np.array([-u[1], u[0]])
    hv = 0.5 * float(np.hypot(v[0] * sy, v[1] * sx))
    along = mm @ u
    across = mm @ v
    step = min(sy, sx)
    bins = np.round((along - along.min()) / step).astype(np.int64)
    order = np.argsort(bins, kind="stable")
    b_sorted = bins[order]
    starts = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
    a_sorted = across[order]
    mins = np.minimum.reduceat(a_sorted, starts)
    maxs = np.maximum.reduceat(a_sorted, starts)
    j = int(np.argmax(maxs - mins))
    short_mm = float(maxs[j] - mins[j]) + 2 * hv
    centre_along = float(np.mean(along[order][starts[j] : (starts[j + 1] if j + 1 < len(starts) else len(order))]))
    base = u * centre_along
    short_ends = np.stack([base + v * (mins[j] - hv), base + v * (maxs[j] + hv)])
    return long_mm, short_mm, long_ends / (sy, sx), short_ends / (sy, sx)


def axial_axes(
    mask: np.ndarray, spacing_zyx: Sequence[float], offset: Sequence[int] = (0, 0, 0), scale: float = 1.0
) -> Axes | None:
    """Long and short axis of ``mask`` in the slice (first axis) where the long axis is largest.

    Parameters
    ----------
    mask : ndarray of bool ``[z, y, x]``
        One lesion (a box around it is enough).
    spacing_zyx : (float, float, float)
        Voxel size in mm.
    offset : (int, int, int)
        Where ``mask[0, 0, 0]`` lies in the volume: the returned slice and
        ends are in volume coordinates.
    scale : float
        Multiplies both lengths about the axes' centres (the lesion's
        measured size over its voxel-count size; 1 by default).

    Returns
    -------
    Axes or None
        None for an empty mask.
    """
    sy, sx = float(spacing_zyx[1]), float(spacing_zyx[2])
    best: tuple[float, float, int, np.ndarray, np.ndarray] | None = None
    for z in (int(v) for v in np.flatnonzero(mask.any(axis=(1, 2)))):
        yx = np.argwhere(mask[z])
        long_mm, short_mm, le, se = _slice_axes(yx, sy, sx)
        # The longest long axis; among equal ones (within 1 %), the widest.
        if best is None or long_mm > best[0] * 1.01 or (long_mm >= best[0] * 0.99 and short_mm > best[1]):
            best = (long_mm, short_mm, int(z), le, se)
    if best is None:
        return None
    long_mm, short_mm, z, le, se = best

    def ends(e: np.ndarray) -> tuple[Point, Point]:
        mid = e.mean(axis=0)
        e = mid + (e - mid) * scale
        zz = float(z + offset[0])
        return (
            (zz, float(e[0, 0] + offset[1]), float(e[0, 1] + offset[2])),
            (zz, float(e[1, 0] + offset[1]), float(e[1, 1] + offset[2])),
        )

    return Axes(z + int(offset[0]), long_mm * scale, short_mm * scale, ends(le), ends(se))
