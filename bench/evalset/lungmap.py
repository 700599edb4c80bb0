"""A coarse map of the lungs for placing things: mask, side and depth below the pleura.

Built from the anatomy planes subsampled in-plane, it answers "is this V-frame
point inside a lung, which one, how deep?" for the vessel trees, the nodules
and the confounders, without touching the full-resolution volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .frame import Frame

RIGHT, LEFT = 1, 2


@dataclass
class LungMap:
    """Coarse lung map on a regular V-frame grid.

    Attributes
    ----------
    side : ndarray
        uint8 ``[z, y, x]``: 0 outside, 1 right lung, 2 left lung.
    depth : ndarray
        float32 distance (mm) from each inside point to the lung surface (0 outside).
    spacing : ndarray
        Grid spacing (x, y, z) mm; grid point ``(k, j, i)`` sits at ``(i, j, k) * spacing``.
    """

    side: np.ndarray
    depth: np.ndarray
    spacing: np.ndarray
    _cache: dict[tuple[int, float, float], np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, lung_planes: np.ndarray, plane_z_v: np.ndarray, fr: Frame, step: int = 2) -> "LungMap":
        """From the plane signed distances (``[plane, y, x]``) at V heights ``plane_z_v`` (evenly spaced).

        Parameters
        ----------
        lung_planes : ndarray
            Lung signed distance per plane.
        plane_z_v : ndarray
            V-frame z of each plane (evenly spaced, starting at 0).
        fr : Frame
            Grid geometry.
        step : int
            In-plane subsampling.

        Returns
        -------
        LungMap
        """
        sub = lung_planes[:, ::step, ::step] < 0
        xa, _ = fr.plane_xy()
        side = np.where(sub, np.where(xa[::step, ::step] < 0, RIGHT, LEFT)[None], 0).astype(np.uint8)
        dz = float(plane_z_v[1] - plane_z_v[0]) if len(plane_z_v) > 1 else fr.dz
        spacing = np.array([fr.pixel * step, fr.pixel * step, dz])
        img = sitk.GetImageFromArray(sub.astype(np.uint8))
        img.SetSpacing([float(s) for s in spacing])
        dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
            img, insideIsPositive=True, squaredDistance=False, useImageSpacing=True))
        depth = np.where(sub, dist + 0.5 * float(spacing.min()), 0).astype(np.float32)
        return cls(side, depth, spacing)

    def _index(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        q = np.rint(np.asarray(p, float) / self.spacing).astype(int)
        nz, ny, nx = self.side.shape
        ok = (q[..., 0] >= 0) & (q[..., 0] < nx) & (q[..., 1] >= 0) & (q[..., 1] < ny) & (q[..., 2] >= 0) & (q[..., 2] < nz)
        return np.clip(q[..., 2], 0, nz - 1), np.clip(q[..., 1], 0, ny - 1), np.clip(q[..., 0], 0, nx - 1), ok

    def side_at(self, p: np.ndarray) -> np.ndarray:
        """Lung side (0, 1 right, 2 left) at V-frame points ``(..., 3)``."""
        k, j, i, ok = self._index(p)
        return np.where(ok, self.side[k, j, i], 0)

    def depth_at(self, p: np.ndarray) -> np.ndarray:
        """Depth below the pleura (mm, 0 outside) at V-frame points ``(..., 3)``."""
        k, j, i, ok = self._index(p)
        return np.where(ok, self.depth[k, j, i], 0.0)

    def sample(self, rng: np.random.Generator, n: int, side: int, lo: float = 0.0, hi: float = np.inf,
               weight: np.ndarray | None = None) -> np.ndarray:
        """``n`` random V-frame points in lung ``side`` whose depth is within ``[lo, hi]`` mm.

        Parameters
        ----------
        rng : numpy.random.Generator
            Random stream.
        n : int
            Number of points.
        side : int
            1 (right) or 2 (left).
        lo, hi : float
            Depth range.
        weight : ndarray, optional
            Extra per-grid-point weights (same shape as the map).

        Returns
        -------
        ndarray
            ``(n, 3)`` points (fewer when no grid point qualifies), jittered within their cell.
        """
        key = (side, float(lo), float(hi))
        idx = self._cache.get(key) if weight is None else None
        if idx is None:
            idx = np.flatnonzero((self.side == side) & (self.depth >= lo) & (self.depth <= hi))
            if weight is None:
                self._cache[key] = idx
        if idx.size == 0:
            return np.zeros((0, 3))
        w = None
        if weight is not None:
            w = np.broadcast_to(weight, self.side.shape).ravel()[idx].astype(float)
            w = w / w.sum()
        pick = rng.choice(idx, size=n, replace=True, p=w)
        k, j, i = np.unravel_index(pick, self.side.shape)
        pts = np.stack([i, j, k], axis=1) * self.spacing
        return pts + (rng.random((n, 3)) - 0.5) * self.spacing
