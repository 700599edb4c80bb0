"""Procedural chest-CT phantoms with ground-truth labels, for training and tests.

No real patient data can ship with the node, so the default model learns
from these.  Each phantom has a body wall (fat, muscle), lungs, heart,
spine, a table and 0-6 nodules of 3-25 mm, in realistic HU with noise and
partial-volume blur, with its anatomy size, position and rotation, field of
view and spacing drawn at random from a seed.

Labels: 0 background, 1 lung, 2 nodule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

LUNG, NODULE = 1, 2
LABEL_NAMES = {LUNG: "lung", NODULE: "nodule"}


@dataclass(frozen=True)
class Nodule:
    """A spherical nodule: centre (x, y, z) mm in the volume's frame, diameter mm."""

    centre_mm: tuple[float, float, float]
    diameter_mm: float


@dataclass
class Phantom:
    """A generated chest CT: HU ``[z, y, x]``, labels, spacing ``(x, y, z)`` mm."""

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    nodules: list[Nodule] = field(default_factory=list)
    seed: int = 0

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        """Centre of the first voxel in LPS mm: the field of view is centred on the scanner axis."""
        nz, ny, nx = self.hu.shape
        return (-(nx - 1) * self.spacing[0] / 2, -(ny - 1) * self.spacing[1] / 2, 0.0)

    @property
    def affine_ras(self) -> np.ndarray:
        """Voxel (x, y, z) to RAS mm, for NIfTI (axial, patient supine, index axes along L, P, S)."""
        a = np.diag([-self.spacing[0], -self.spacing[1], self.spacing[2], 1.0])
        ox, oy, oz = self.origin_lps
        a[:3, 3] = (-ox, -oy, oz)
        return a

    def write_nifti(self, image_path: Path, label_path: Path) -> None:
        """Write the image (int16 HU) and the label map as NIfTI."""
        import nibabel as nib

        nib.save(nib.Nifti1Image(np.transpose(self.hu, (2, 1, 0)).astype(np.int16), self.affine_ras), str(image_path))
        nib.save(nib.Nifti1Image(np.transpose(self.labels, (2, 1, 0)).astype(np.uint8), self.affine_ras), str(label_path))


def _blur(hu: np.ndarray, sigma_vox: tuple[float, float, float]) -> np.ndarray:
    """Separable Gaussian blur (partial-volume effect), sigma per axis in voxels ``[z, y, x]``."""
    x = torch.from_numpy(hu)[None, None]
    for axis, s in enumerate(sigma_vox):
        if s <= 0:
            continue
        r = max(1, int(math.ceil(3 * s)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / s) ** 2)
        k = (k / k.sum()).view(*([1, 1] + [len(k) if a == axis else 1 for a in range(3)]))
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k)
    return x[0, 0].numpy()


def generate(
    seed: int,
    *,
    matrix: int = 512,
    slices: int | None = None,
    fov_mm: tuple[float, float] = (310.0, 500.0),
    slice_mm: tuple[float, float] = (1.0, 5.0),
    max_nodules: int = 6,
) -> Phantom:
    """Generate one phantom.

    Parameters
    ----------
    seed : int
        Everything random derives from it.
    matrix : int
        Rows and columns.
    slices : int, optional
        Number of slices (default: enough for 260-320 mm of chest).
    fov_mm : (float, float)
        Range of the field of view; with 512 columns the default gives the
        0.6-1 mm pixels of clinical chest CT (smaller matrices, coarser pixels).
    slice_mm : (float, float)
        Range of the slice spacing.
    max_nodules : int
        Up to this many nodules (0 allowed).
    """
    rng = np.random.default_rng(seed)
    fov = float(rng.uniform(*fov_mm))
    px = fov / matrix
    dz = float(rng.uniform(*slice_mm))
    length = float(rng.uniform(260, 320))
    nz = slices or max(8, int(round(length / dz)))
    zs = (np.arange(nz) + 0.5) * dz
    coords = (np.arange(matrix) + 0.5) * px - fov / 2
    z, y, x = np.meshgrid(zs, coords, coords, indexing="ij")
    # Anatomy size, position and in-plane rotation (supine patient: +y is posterior).
    scale = float(rng.uniform(0.8, 1.15))
    a, b = 165 * scale, 115 * scale  # body half-width and half-depth, mm
    a, b = min(a, fov * 0.46), min(b, fov * 0.36)
    cx, cy = rng.uniform(-0.05, 0.05) * fov, rng.uniform(-0.05, 0.02) * fov
    ang = math.radians(rng.uniform(-8, 8))
    xr = (x - cx) * math.cos(ang) + (y - cy) * math.sin(ang)
    yr = -(x - cx) * math.sin(ang) + (y - cy) * math.cos(ang)
    zc = zs.mean()
    taper = 1 - 0.08 * ((z - zc) / (length / 2)) ** 2  # narrower at the ends
    body = (xr / (a * taper)) ** 2 + (yr / (b * taper)) ** 2 <= 1
    fat_t, muscle_t = rng.uniform(8, 25), rng.uniform(6, 14)
    inner_fat = (xr / (a * taper - fat_t)) ** 2 + (yr / (b * taper - fat_t)) ** 2 <= 1
    inner_muscle = (xr / (a * taper - fat_t - muscle_t)) ** 2 + (yr / (b * taper - fat_t - muscle_t)) ** 2 <= 1

    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    hu[body] = -100.0  # subcutaneous fat
    hu[inner_fat] = 45.0  # muscle
    hu[inner_muscle] = 20.0  # mediastinum / soft tissue

    # Lungs: two ellipsoids either side of the mediastinum, apex to base.
    lung_len = length * rng.uniform(0.6, 0.75)
    lz0 = zc - lung_len / 2 + rng.uniform(-10, 10)
    lungs = np.zeros(x.shape, dtype=bool)
    for side in (-1, 1):
        lx = side * (a - fat_t - muscle_t) * rng.uniform(0.45, 0.55)
        ax, ay = (a - fat_t - muscle_t) * rng.uniform(0.38, 0.45), (b - fat_t - muscle_t) * rng.uniform(0.75, 0.85)
        az = lung_len / 2
        lungs |= ((xr - lx) / ax) ** 2 + ((yr + 5) / ay) ** 2 + ((z - lz0 - az) / az) ** 2 <= 1
    lungs &= inner_muscle
    # Heart: anterior, left of centre, in the lower half of the lungs; it displaces lung.
    hz = lz0 + lung_len * rng.uniform(0.55, 0.7)
    heart = ((xr - 0.2 * a) / (0.33 * a)) ** 2 + ((yr + 0.25 * b) / (0.42 * b)) ** 2 + ((z - hz) / (0.22 * lung_len)) ** 2 <= 1
    lungs &= ~heart
    hu[lungs] = -850.0 + rng.normal(0, 15)
    hu[heart] = 40.0
    # Spine: a vertebral body behind the mediastinum, cortical shell and marrow.
    sx, sy, sr = 0.0, 0.62 * b, rng.uniform(14, 20)
    d_spine = np.hypot(xr - sx, yr - sy)
    hu[d_spine <= sr] = 250.0
    hu[(d_spine <= sr) & (d_spine > sr - 2.5)] = 700.0
    # Table: a curved carbon-fibre slab under the patient.
    table_y = cy + b * taper.max() + rng.uniform(8, 25)
    table = (y > table_y) & (y < table_y + 12) & (np.abs(x - cx) < fov * 0.42)
    hu[table & ~body] = 150.0

    labels = np.zeros(x.shape, dtype=np.uint8)
    labels[lungs] = LUNG
    nodules: list[Nodule] = []
    lung_idx = np.argwhere(lungs)
    for _ in range(int(rng.integers(0, max_nodules + 1)) if len(lung_idx) else 0):
        d = float(rng.uniform(3, 25))
        for _attempt in range(20):
            k = lung_idx[rng.integers(len(lung_idx))]
            centre = (float(x[tuple(k)]), float(y[tuple(k)]), float(z[tuple(k)]))
            ball = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= (d / 2) ** 2
            if lungs[ball].mean() > 0.95:  # well inside the lung
                hu[ball] = float(rng.uniform(-20, 60))
                labels[ball] = NODULE
                nodules.append(Nodule(centre, d))
                break
    # Partial-volume blur (about the slice profile and in-plane PSF), then noise.
    hu = _blur(hu, (0.35, 0.6 * 0.8 / px, 0.6 * 0.8 / px))
    hu += rng.normal(0, rng.uniform(8, 22), hu.shape).astype(np.float32)
    return Phantom(np.clip(hu, -1024, 3071).round().astype(np.int16), labels, (px, px, dz), nodules, seed)
