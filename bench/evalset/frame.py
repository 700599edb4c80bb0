"""The voxel grid and its relation to the anatomical frame.

Three frames, all in millimetres:

- V ("voxel frame"): the canonical grid before any flip for the patient
  position, ``x = i * pixel``, ``y = j * pixel``, ``z = k * thickness``;
  its axes point to the patient's left, posterior and head (LPS) whatever
  the position; the final arrays are this grid flipped (:mod:`.acquisition`).
- G: V centred on the middle of the in-plane matrix (the isocentre).
- A: the anatomical frame of :mod:`.layout` (the patient, shifted and rolled
  about the long axis inside G, with z = 0 at the lung bases).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .draw import Acquisition


@dataclass(frozen=True)
class Frame:
    """Grid geometry: shape, spacing and the rigid map between A and V."""

    nx: int
    ny: int
    nz: int
    pixel: float
    dz: float
    theta: float  # roll of the patient, radians
    shift: tuple[float, float]  # patient offset in G, mm
    z0: float  # A-frame z of slice 0

    @classmethod
    def build(cls, acq: Acquisition, lung_height: float) -> "Frame":
        """The grid that covers the lungs with the acquisition's margins.

        Parameters
        ----------
        acq : Acquisition
            Drawn acquisition.
        lung_height : float
            Apex height above the lung bases (A frame).

        Returns
        -------
        Frame
        """
        extent = lung_height + acq.margin_lo_mm + acq.margin_hi_mm
        nz = int(np.ceil(extent / acq.thickness_mm)) + 1
        return cls(acq.matrix, acq.matrix, nz, acq.pixel_mm, acq.thickness_mm,
                   float(np.radians(acq.roll_deg)), acq.shift_mm, -acq.margin_lo_mm)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(z, y, x)``."""
        return (self.nz, self.ny, self.nx)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (x, y, z) in mm."""
        return np.array([self.pixel, self.pixel, self.dz])

    def _centre(self) -> tuple[float, float]:
        return ((self.nx - 1) * self.pixel / 2, (self.ny - 1) * self.pixel / 2)

    def a_to_v(self, p: np.ndarray) -> np.ndarray:
        """Map A-frame points ``(..., 3)`` to V-frame points."""
        p = np.asarray(p, float)
        c, s = np.cos(self.theta), np.sin(self.theta)
        cx, cy = self._centre()
        x = c * p[..., 0] - s * p[..., 1] + self.shift[0] + cx
        y = s * p[..., 0] + c * p[..., 1] + self.shift[1] + cy
        return np.stack([x, y, p[..., 2] - self.z0], axis=-1)

    def v_to_a(self, p: np.ndarray) -> np.ndarray:
        """Map V-frame points ``(..., 3)`` to A-frame points."""
        p = np.asarray(p, float)
        c, s = np.cos(self.theta), np.sin(self.theta)
        cx, cy = self._centre()
        gx, gy = p[..., 0] - cx - self.shift[0], p[..., 1] - cy - self.shift[1]
        return np.stack([c * gx + s * gy, -s * gx + c * gy, p[..., 2] + self.z0], axis=-1)

    def plane_xy(self, sl: tuple[slice, slice] = (slice(None), slice(None))) -> tuple[np.ndarray, np.ndarray]:
        """A-frame x and y of the pixel centres of a plane (or a window of it), float32 ``[y, x]``."""
        j = np.arange(self.ny)[sl[0]].astype(float) * self.pixel
        i = np.arange(self.nx)[sl[1]].astype(float) * self.pixel
        c, s = np.cos(self.theta), np.sin(self.theta)
        cx, cy = self._centre()
        gx = (i - cx - self.shift[0])[None, :]
        gy = (j - cy - self.shift[1])[:, None]
        return (c * gx + s * gy).astype(np.float32), (-s * gx + c * gy).astype(np.float32)

    def window(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice] | None:
        """In-plane index window covering the A-frame box ``lo..hi`` (x, y), or None when outside.

        Parameters
        ----------
        lo, hi : ndarray
            Box corners (at least x and y) in the A frame.

        Returns
        -------
        tuple of slice or None
            ``(rows, columns)`` slices.
        """
        corners = np.array([[x, y, 0.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])])
        v = self.a_to_v(corners)
        i0, i1 = int(np.floor(v[:, 0].min() / self.pixel)), int(np.ceil(v[:, 0].max() / self.pixel)) + 1
        j0, j1 = int(np.floor(v[:, 1].min() / self.pixel)), int(np.ceil(v[:, 1].max() / self.pixel)) + 1
        i0, j0, i1, j1 = max(i0, 0), max(j0, 0), min(i1, self.nx), min(j1, self.ny)
        if i0 >= i1 or j0 >= j1:
            return None
        return (slice(j0, j1), slice(i0, i1))
