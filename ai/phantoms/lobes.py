"""Lobes and fissures: oblique fissures in both lungs, the horizontal fissure in the right.

The oblique fissure runs from high at the back (about T4) down and forward
to the anterior diaphragm; above/in front of it lie the upper lobe (and on
the right the middle lobe, below the horizontal fissure), behind/below it
the lower lobe.  Vessel trees branch lobe by lobe, so no large vessel
crosses a fissure, and fissures render as thin, slightly denser surfaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ai.phantoms.anatomy import Anatomy

UPPER, MIDDLE, LOWER = 1, 2, 3


@dataclass(frozen=True)
class Fissures:
    """Fissure surfaces ``z = f(x, y)`` per side (index 0 right, 1 left)."""

    oblique_z0: tuple[float, float]
    oblique_slope: tuple[float, float]
    oblique_bow: tuple[float, float]
    oblique_turn: tuple[float, float]  # the lateral part of the fissure lies further forward
    horizontal_z0: float
    horizontal_tilt: float
    thickness: float
    completeness: float  # 1: complete; lower: gaps along the surface

    def oblique_z(self, x: np.ndarray, y: np.ndarray, side: int) -> np.ndarray:
        """Height of the oblique fissure over (x, y)."""
        i = 0 if side < 0 else 1
        ye = y + self.oblique_turn[i] * (np.abs(x) - 55.0)
        return self.oblique_z0[i] + self.oblique_slope[i] * ye + self.oblique_bow[i] * (np.abs(x) - 70.0) ** 2 / 100.0

    def horizontal_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of the right horizontal fissure over (x, y)."""
        return self.horizontal_z0 + self.horizontal_tilt * y - 0.04 * (np.abs(x) - 60.0)

    def lobe(self, pts: np.ndarray, side: np.ndarray) -> np.ndarray:
        """Lobe of each point (``side`` 1 right, 2 left): UPPER, MIDDLE or LOWER."""
        x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
        sgn = np.where(side == 1, -1, 1)
        zf = np.where(sgn < 0, self.oblique_z(x, y, -1), self.oblique_z(x, y, 1))
        out = np.where(z > zf, UPPER, LOWER)
        mid = (side == 1) & (out == UPPER) & (z < self.horizontal_z(x, y))
        out[mid] = MIDDLE
        return out

    def coverage(self, x: np.ndarray, y: np.ndarray, zs: np.ndarray, px: float, dz: float) -> np.ndarray:
        """Partial-volume coverage of all fissures over a chunk: ``x, y`` anatomical ``(1, ny, nx)``,
        ``zs`` the chunk's slice heights (uniform steps of ``dz``); a slab of ``thickness`` seen by a
        px x px x dz voxel.  Only the few slices around each surface are evaluated."""
        zs = np.asarray(zs, dtype=np.float64).reshape(-1)
        x2, y2 = np.broadcast_arrays(x.reshape(x.shape[-2:]) if x.ndim == 3 else x, y.reshape(y.shape[-2:]) if y.ndim == 3 else y)
        out = np.zeros((len(zs),) + x2.shape, dtype=np.float32)
        t = self.thickness
        surfaces = []
        for side in (-1, 1):
            slope = self.oblique_slope[0 if side < 0 else 1]
            gx, gy = slope * self.oblique_turn[0 if side < 0 else 1], slope
            norm = math.sqrt(1 + gx * gx + gy * gy)
            w = math.sqrt((gx * px) ** 2 + (gy * px) ** 2 + dz * dz) / norm
            surfaces.append((self.oblique_z(x2, y2, side), norm, w, (x2 < 0) if side < 0 else (x2 >= 0), False))
        surfaces.append((self.horizontal_z(x2, y2), 1.0, math.hypot(0.1 * px, dz), x2 < 0, True))
        obl_r = self.oblique_z(x2, y2, -1)
        jj, ii = np.nonzero(np.ones(x2.shape, bool))
        for zf, norm, w, mask, horizontal in surfaces:
            half = (t / 2 + w / 2) * norm
            kf = np.floor((zf - zs[0]) / dz).astype(np.int64).reshape(-1)
            n = math.ceil(half / dz) + 1
            zfl, m = zf.reshape(-1), mask.reshape(-1)
            for o in range(-n, n + 2):
                k = kf + o
                ok = m & (k >= 0) & (k < len(zs))
                if not ok.any():
                    continue
                kk, zz = k[ok], zs[0] + k[ok] * dz
                cov = _slab((zz - zfl[ok]) / norm, t, w)
                if horizontal:
                    cov = cov * (zz > obl_r.reshape(-1)[ok])
                idx = (kk, jj[ok], ii[ok])
                out[idx] = np.maximum(out[idx], cov)
        return out


def _slab(d: np.ndarray, t: float, w: float) -> np.ndarray:
    """Fraction of a voxel of extent ``w`` across a slab of thickness ``t``, at distance ``d`` from its mid-plane."""
    ad = np.abs(d)
    lo = np.maximum(ad - w / 2, -t / 2)
    hi = np.minimum(ad + w / 2, t / 2)
    return np.clip(hi - lo, 0.0, None) * (1.0 / w)


def draw_fissures(rng: np.random.Generator, anat: Anatomy) -> Fissures:
    """Draw the fissure surfaces of one patient."""
    h = anat.lung_height
    return Fissures(
        oblique_z0=(-h * float(rng.uniform(0.5, 0.58)), -h * float(rng.uniform(0.48, 0.56))),
        oblique_slope=(float(rng.uniform(0.72, 0.98)), float(rng.uniform(0.8, 1.08))),
        oblique_bow=(float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25))),
        oblique_turn=(float(rng.uniform(0.35, 0.8)), float(rng.uniform(0.35, 0.8))),
        horizontal_z0=-h * float(rng.uniform(0.42, 0.5)),
        horizontal_tilt=float(rng.uniform(-0.05, 0.12)),
        thickness=float(rng.uniform(0.5, 1.0)),
        completeness=float(rng.uniform(0.3, 1.0)),
    )
