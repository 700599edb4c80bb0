"""Measurements of a label map on its own voxel grid: volumes, intensities, lesions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cc3d
import numpy as np

MAX_SURFACE_POINTS = 4000  # for the maximum diameter; more are subsampled evenly


@dataclass(frozen=True)
class Lesion:
    """One connected component of a lesion-type label."""

    index: int
    volume_ml: float
    max_diameter_mm: float
    centroid_voxel: tuple[float, float, float]  # [z, y, x]
    slices: tuple[int, int] = (0, 0)  # the z extent [first, stop): a connected component has no empty slice inside


@dataclass(frozen=True)
class LabelMeasurement:
    """What is measured for one label."""

    value: int
    name: str
    volume_ml: float
    voxels: int
    mean: float | None
    std: float | None
    lesions: list[Lesion] = field(default_factory=list)


def _surface(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1, 1:-1] = (
        mask[1:-1, 1:-1, 1:-1]
        & mask[:-2, 1:-1, 1:-1] & mask[2:, 1:-1, 1:-1]
        & mask[1:-1, :-2, 1:-1] & mask[1:-1, 2:, 1:-1]
        & mask[1:-1, 1:-1, :-2] & mask[1:-1, 1:-1, 2:]
    )
    inner[[0, -1], :, :] = False
    inner[:, [0, -1], :] = False
    inner[:, :, [0, -1]] = False
    return np.argwhere(mask & ~inner)


def max_diameter_mm(mask: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """Largest distance between two voxel centres of ``mask``, in mm.

    For a sphere sampled at voxel centres (voxels whose centre lies within the
    radius) this is the sphere's diameter; adding a voxel would overestimate it.
    """
    pts = _surface(mask).astype(np.float64) * np.asarray(spacing_zyx)
    if len(pts) == 0:
        return 0.0
    if len(pts) > MAX_SURFACE_POINTS:
        pts = pts[np.linspace(0, len(pts) - 1, MAX_SURFACE_POINTS).astype(int)]
    best = 0.0
    for i in range(0, len(pts), 512):
        d = ((pts[i : i + 512, None, :] - pts[None, :, :]) ** 2).sum(-1)
        best = max(best, float(d.max()))
    return float(np.sqrt(best))


def measure(
    labels: np.ndarray,
    spacing_xyz: Sequence[float],
    names: dict[int, str],
    *,
    image: np.ndarray | None = None,
    lesion_values: Sequence[int] = (),
) -> list[LabelMeasurement]:
    """Volume (mL), intensity mean/std and, for lesion labels, per-component volume and diameter.

    Parameters
    ----------
    labels : ndarray ``[z, y, x]``
        Label map on the image's grid.
    spacing_xyz : (float, float, float)
        Voxel spacing in mm, ``(x, y, z)``.
    names : dict
        Label value to display name.
    image : ndarray, optional
        Intensities on the same grid (e.g. HU), for mean and standard deviation.
    lesion_values : sequence of int
        Labels measured per connected component.
    """
    sx, sy, sz = (float(v) for v in spacing_xyz)
    voxel_ml = sx * sy * sz / 1000.0
    out: list[LabelMeasurement] = []
    for value, name in sorted(names.items()):
        mask = labels == value
        n = int(mask.sum())
        mean = std = None
        if image is not None and n:
            vals = image[mask].astype(np.float64)
            mean, std = float(vals.mean()), float(vals.std())
        lesions: list[Lesion] = []
        if value in lesion_values and n:
            cc = cc3d.connected_components(mask, connectivity=26)
            stats = cc3d.statistics(cc)
            for k in range(1, int(cc.max()) + 1):
                bbox = stats["bounding_boxes"][k]
                comp = cc[bbox] == k
                cz, cy, cx = stats["centroids"][k]
                lesions.append(
                    Lesion(
                        index=k,
                        volume_ml=float(stats["voxel_counts"][k]) * voxel_ml,
                        max_diameter_mm=max_diameter_mm(comp, (sz, sy, sx)),
                        centroid_voxel=(float(cz), float(cy), float(cx)),
                        slices=(int(bbox[0].start), int(bbox[0].stop)),
                    )
                )
            lesions.sort(key=lambda les: -les.volume_ml)
        out.append(LabelMeasurement(value, name, n * voxel_ml, n, mean, std, lesions))
    return out
