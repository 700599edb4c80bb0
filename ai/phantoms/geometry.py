"""Frames: patient position, the render grid, the patient's pose on the table, seeded streams.

Everything anatomical is built in patient LPS millimetres (x to the
patient's left, y posterior, z superior) around the thorax axis ``x = y = 0``
with the lung apices at ``z = 0``.  The patient lies slightly rolled and
off-centre (:class:`Pose`); the scanner reconstructs a patient-aligned grid
(:class:`Grid`) that is flipped into the image orientation of the patient
position at the end (:func:`direction`, :func:`to_image`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Position(StrEnum):
    """DICOM patient position."""

    HFS = "HFS"
    HFP = "HFP"
    FFS = "FFS"
    FFP = "FFP"


#: Signs of the image index axes along L, P and S (the scanner's x, y, z in patient terms).
_AXIS_SIGNS = {
    Position.HFS: (1, 1, 1),
    Position.HFP: (-1, -1, 1),
    Position.FFS: (-1, 1, -1),
    Position.FFP: (1, -1, -1),
}


def axis_signs(position: Position) -> tuple[int, int, int]:
    """Sign of each image index axis (x, y, z) along the patient's L, P and S."""
    return _AXIS_SIGNS[position]


def direction(position: Position) -> np.ndarray:
    """Direction cosines (columns: LPS directions of the x, y, z index axes) for a position."""
    return np.diag(np.asarray(_AXIS_SIGNS[position], dtype=float))


def is_prone(position: Position) -> bool:
    """Whether the patient lies on the front (gravity points anterior)."""
    return position in (Position.HFP, Position.FFP)


def streams(seed: int, *names: str) -> dict[str, np.random.Generator]:
    """Independent generators per component, so one part's draws never shift another's."""
    children = np.random.SeedSequence(int(seed)).spawn(len(names))
    return {n: np.random.default_rng(c) for n, c in zip(names, children)}


@dataclass(frozen=True)
class Pose:
    """Rigid in-plane pose of the anatomy on the table: roll about z, then a shift.

    ``patient = R(roll) @ anatomy + (dx, dy, 0)``.
    """

    roll_rad: float = 0.0
    dx: float = 0.0
    dy: float = 0.0

    @property
    def matrix(self) -> np.ndarray:
        """3 x 3 rotation, anatomy to patient."""
        c, s = math.cos(self.roll_rad), math.sin(self.roll_rad)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def to_patient(self, pts: np.ndarray) -> np.ndarray:
        """Anatomical points ``(..., 3)`` to patient LPS."""
        return np.asarray(pts) @ self.matrix.T + np.array([self.dx, self.dy, 0.0])

    def vectors_to_patient(self, vec: np.ndarray) -> np.ndarray:
        """Directions ``(..., 3)`` (no shift) to patient LPS."""
        return np.asarray(vec) @ self.matrix.T

    def plane_to_anatomy(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Patient (x, y) coordinates (broadcastable) to anatomical ones."""
        c, s = math.cos(self.roll_rad), math.sin(self.roll_rad)
        xs, ys = x - self.dx, y - self.dy
        return (c * xs + s * ys).astype(np.float32), (-s * xs + c * ys).astype(np.float32)


@dataclass(frozen=True)
class Grid:
    """The patient-aligned render grid: voxel ``[k, j, i]`` is at ``(x0 + i px, y0 + j py, z0 + k dz)``."""

    nx: int
    ny: int
    nz: int
    px: float
    py: float
    dz: float
    x0: float
    y0: float
    z0: float

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(nz, ny, nx)``."""
        return (self.nz, self.ny, self.nx)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (x, y, z), mm."""
        return (self.px, self.py, self.dz)

    @property
    def origin(self) -> np.ndarray:
        """Patient LPS of voxel 0 of the render grid."""
        return np.array([self.x0, self.y0, self.z0])

    def xs(self) -> np.ndarray:
        """Voxel-centre x coordinates (patient mm)."""
        return (self.x0 + np.arange(self.nx) * self.px).astype(np.float32)

    def ys(self) -> np.ndarray:
        """Voxel-centre y coordinates (patient mm)."""
        return (self.y0 + np.arange(self.ny) * self.py).astype(np.float32)

    def zs(self, k0: int = 0, k1: int | None = None) -> np.ndarray:
        """Voxel-centre z coordinates of slices ``k0..k1`` (patient mm)."""
        k1 = self.nz if k1 is None else k1
        return (self.z0 + np.arange(k0, k1) * self.dz).astype(np.float32)

    def index_of(self, pts: np.ndarray) -> np.ndarray:
        """Continuous voxel index ``(..., 3)`` as (i, j, k) of patient points."""
        return (np.asarray(pts) - self.origin) / np.array([self.px, self.py, self.dz])


def to_image(arr: np.ndarray, position: Position) -> np.ndarray:
    """Flip a render-grid array ``[z, y, x]`` into the image orientation of ``position``."""
    sx, sy, sz = _AXIS_SIGNS[position]
    axes = tuple(ax for ax, s in ((2, sx), (1, sy), (0, sz)) if s < 0)
    return np.ascontiguousarray(np.flip(arr, axes)) if axes else arr


def image_origin(grid: Grid, position: Position) -> tuple[float, float, float]:
    """LPS of image voxel 0 after :func:`to_image`."""
    sx, sy, sz = _AXIS_SIGNS[position]
    ox = grid.x0 if sx > 0 else grid.x0 + (grid.nx - 1) * grid.px
    oy = grid.y0 if sy > 0 else grid.y0 + (grid.ny - 1) * grid.py
    oz = grid.z0 if sz > 0 else grid.z0 + (grid.nz - 1) * grid.dz
    return (float(ox), float(oy), float(oz))


def image_mm(grid: Grid, position: Position, pts: np.ndarray) -> np.ndarray:
    """Patient points ``(..., 3)`` to millimetres from image voxel 0 along the image index axes."""
    signs = np.asarray(_AXIS_SIGNS[position], dtype=float)
    return (np.asarray(pts) - np.asarray(image_origin(grid, position))) * signs


def rotation_to(u: np.ndarray) -> np.ndarray:
    """A rotation whose third column is the unit vector ``u`` (any first two)."""
    u = np.asarray(u, dtype=float)
    u = u / np.linalg.norm(u)
    a = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    v = np.cross(u, a)
    v /= np.linalg.norm(v)
    return np.stack([v, np.cross(u, v), u], axis=1)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation matrix."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
