"""Rasterising tubes and blobs into partial-volume fractions, and smooth random fields.

Tubes are drawn as chains of soft spheres sampled densely along each segment
and scattered into the volume with a running maximum (``np.maximum.at``),
grouped by stencil size so the work is vectorised.  A sphere's fraction is a
linear ramp one voxel wide across its surface; a tube thinner than half a
voxel keeps that width but is dimmed by its true cross-section
(``(r / r_eff)^2``), as partial volume would.
"""

from __future__ import annotations

import numpy as np


def splat_spheres(vol: np.ndarray, spacing: np.ndarray, centres: np.ndarray, radii: np.ndarray, width: float,
                  chunk: int = 3_000_000) -> None:
    """Max-composite soft spheres into ``vol`` (float32 ``[z, y, x]``) in place.

    Parameters
    ----------
    vol : ndarray
        Target fractions.
    spacing : ndarray
        Voxel size (x, y, z) mm; voxel ``(k, j, i)`` is centred at ``(i, j, k) * spacing``.
    centres : ndarray
        ``(P, 3)`` sphere centres (V frame, mm).
    radii : ndarray
        ``(P,)`` radii in mm.
    width : float
        Ramp width in mm (about one voxel).
    chunk : int
        Candidate voxels per batch.
    """
    if len(centres) == 0:
        return
    sp = np.asarray(spacing, float)
    reff = np.maximum(radii, 0.5 * width)
    gain = np.minimum(1.0, (radii / reff) ** 2)
    half = np.ceil((reff[:, None] + 0.5 * width) / sp[None]).astype(int)
    key = half[:, 0] * 10_000 + half[:, 1] * 100 + half[:, 2]
    flat = vol.reshape(-1)
    nz, ny, nx = vol.shape
    for k in np.unique(key):
        sel = np.flatnonzero(key == k)
        hx, hy, hz = half[sel[0]]
        oz, oy, ox = np.meshgrid(np.arange(-hz, hz + 1), np.arange(-hy, hy + 1), np.arange(-hx, hx + 1), indexing="ij")
        off = np.stack([ox.ravel(), oy.ravel(), oz.ravel()], axis=1)
        per = max(1, chunk // len(off))
        for s0 in range(0, len(sel), per):
            ss = sel[s0:s0 + per]
            c = centres[ss]
            vox = np.rint(c / sp).astype(int)[:, None, :] + off[None]
            d = np.linalg.norm(vox * sp - c[:, None, :], axis=2)
            f = np.clip((reff[ss, None] - d) / width + 0.5, 0.0, 1.0) * gain[ss, None]
            ok = (f > 0) & (vox[..., 0] >= 0) & (vox[..., 0] < nx) & (vox[..., 1] >= 0) & (vox[..., 1] < ny) \
                & (vox[..., 2] >= 0) & (vox[..., 2] < nz)
            idx = (vox[..., 2] * ny + vox[..., 1]) * nx + vox[..., 0]
            np.maximum.at(flat, idx[ok], f[ok].astype(np.float32))


def splat_tubes(vol: np.ndarray, spacing: np.ndarray, p0: np.ndarray, p1: np.ndarray, radii: np.ndarray,
                width: float) -> None:
    """Max-composite constant-radius tubes (segments ``p0 -> p1``) into ``vol`` in place.

    Parameters
    ----------
    vol : ndarray
        Target fractions, float32 ``[z, y, x]``.
    spacing : ndarray
        Voxel size (x, y, z).
    p0, p1 : ndarray
        ``(S, 3)`` segment ends (V frame, mm).
    radii : ndarray
        ``(S,)`` radii.
    width : float
        Ramp width in mm.
    """
    if len(p0) == 0:
        return
    reff = np.maximum(radii, 0.5 * width)
    step = np.maximum(0.45 * reff, 0.2)
    length = np.linalg.norm(p1 - p0, axis=1)
    n = np.ceil(length / step).astype(int) + 1
    seg = np.repeat(np.arange(len(p0)), n)
    first = np.cumsum(n) - n
    t = (np.arange(n.sum()) - first[seg]) / np.maximum(n[seg] - 1, 1)
    pts = p0[seg] + t[:, None] * (p1 - p0)[seg]
    splat_spheres(vol, spacing, pts, radii[seg], width)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray, cell: float) -> np.ndarray:
    """A smooth random field (zero mean, unit-ish variance), linear interpolation of a coarse normal grid.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random stream.
    shape : tuple of int
        ``(z, y, x)`` output shape.
    spacing : ndarray
        Voxel size (x, y, z) mm.
    cell : float
        Coarse cell size in mm (the field's correlation length).

    Returns
    -------
    ndarray
        float32 field of ``shape``.
    """
    nz, ny, nx = shape
    ext = np.array([nx, ny, nz]) * np.asarray(spacing)
    cn = np.maximum(np.ceil(ext / cell).astype(int) + 2, 2)
    g = rng.normal(size=(cn[2], cn[1], cn[0])).astype(np.float32)

    def axis_interp(a: np.ndarray, n: int, sp: float, axis: int) -> np.ndarray:
        u = np.arange(n) * sp / cell
        i0 = np.floor(u).astype(int)
        w = (u - i0).astype(np.float32)
        shp = [1, 1, 1]
        shp[axis] = n
        w = w.reshape(shp)
        return np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i0 + 1, axis=axis) * w

    g = axis_interp(g, nx, spacing[0], 2)
    g = axis_interp(g, ny, spacing[1], 1)
    return axis_interp(g, nz, spacing[2], 0)
