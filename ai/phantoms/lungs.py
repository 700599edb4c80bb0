"""Point queries on the lung region (anatomical mm): which lung a point is in, uniform samples,
and the costal pleura along a ray, for growing trees and placing lesions.

The lung here is exactly what the label map shows: the pleural cavity minus
the mediastinum, the heart with its pericardial fat and the dilated hilar
and mediastinal structures.
"""

from __future__ import annotations

import numpy as np

from ai.phantoms.anatomy import Anatomy
from ai.phantoms.raster import Capsules


class LungQuery:
    """Answers "which lung?" for points, given the anatomy and the mediastinal exclusions."""

    def __init__(self, anat: Anatomy, excl: Capsules) -> None:
        self.anat = anat
        self.excl = excl

    def side(self, pts: np.ndarray) -> np.ndarray:
        """1 right lung, 2 left lung, 0 neither, per point ``(N, 3)``."""
        pts = np.asarray(pts, dtype=float).reshape(-1, 3)
        out = self.anat.lung_points(pts)
        near = (out > 0) & (np.abs(pts[:, 0]) < 100.0)
        if near.any():
            bad = self.excl.distance(pts[near]) < 0
            idx = np.flatnonzero(near)[bad]
            out[idx] = 0
        return out

    def sample(self, rng: np.random.Generator, n: int, zone: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """About ``2 n`` points uniformly in the lungs (optionally only at normalised heights ``zone``): points and sides."""
        lo, hi = self.anat.bounds()
        if zone is not None:
            h = self.anat.lung_height
            lo, hi = lo.copy(), hi.copy()
            lo[2], hi[2] = -zone[1] * h, -zone[0] * h
        got_p: list[np.ndarray] = []
        got_s: list[np.ndarray] = []
        total = 0
        for _ in range(10):
            cand = rng.uniform(lo, hi, size=(6 * n, 3))
            s = self.side(cand)
            got_p.append(cand[s > 0])
            got_s.append(s[s > 0])
            total += int((s > 0).sum())
            if total >= 2 * n:
                break
        return np.concatenate(got_p), np.concatenate(got_s)

    def costal_exit(self, p: np.ndarray, side: int, z_dir: float = 0.0) -> tuple[np.ndarray, np.ndarray] | None:
        """Walk from ``p`` outward (away from the lung's axis) to the costal pleura.

        Returns the last point inside the lung and the outward unit direction,
        or None if the walk leaves through the mediastinum or diaphragm instead.
        """
        centre = np.array([(-1 if side == 1 else 1) * 0.45 * self.anat.ac, 0.05 * self.anat.bc, p[2]])
        d = p - centre
        d[2] = z_dir * np.hypot(d[0], d[1])
        n = float(np.linalg.norm(d))
        if n < 1e-6:
            return None
        d /= n
        steps = p[None] + np.arange(0, 200, 0.5)[:, None] * d[None]
        s = self.side(steps)
        out = np.flatnonzero(s != side)
        if not len(out) or out[0] == 0:
            return None
        last = steps[out[0] - 1]
        beyond = steps[min(out[0] + 2, len(steps) - 1)]
        if self.anat.cavity_q(beyond[None, 0], beyond[None, 1], beyond[None, 2])[0] < 1.0:
            return None  # left through the mediastinum or the diaphragm, not the chest wall
        return last, d


class LungGrid:
    """The lung region on a coarse grid (``cell`` mm), for fast "is this point in a lung?" lookups."""

    def __init__(self, lungs: LungQuery, cell: float = 3.0) -> None:
        lo, hi = lungs.anat.bounds()
        self.lo = lo - cell
        self.cell = cell
        n = np.ceil((hi + cell - self.lo) / cell).astype(int) + 1
        axes = [self.lo[i] + np.arange(n[i]) * cell for i in range(3)]
        X, Y, Z = np.meshgrid(*axes, indexing="ij")
        self.side = lungs.side(np.stack([X.ravel(), Y.ravel(), Z.ravel()], 1)).reshape(tuple(n))

    def lookup(self, pts: np.ndarray) -> np.ndarray:
        """Side (0 none, 1 right, 2 left) of the cell nearest each point ``(N, 3)``."""
        idx = np.rint((np.asarray(pts) - self.lo) / self.cell).astype(int)
        shape = np.asarray(self.side.shape)
        ok = ((idx >= 0) & (idx < shape)).all(1)
        out = np.zeros(len(idx), dtype=np.uint8)
        i = idx[ok]
        out[ok] = self.side[i[:, 0], i[:, 1], i[:, 2]]
        return out
