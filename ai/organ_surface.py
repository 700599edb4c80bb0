"""The organ's surface around a lesion that touches it: where a juxtapleural nodule ends and the chest wall begins.

A nodule on the pleura and the chest wall behind it have the same density,
so the image alone cannot say where one ends; nor can a network's
component, which on its coarser grid spills a voxel or two into the wall.
The organ's own surface can: around the lesion, the lung meets the wall
along a smooth surface (the inner rib cage, the mediastinum, the diaphragm),
and the lesion ends where that surface runs.

:func:`inside_share` fits that surface to the organ's boundary voxels in a
ring around the lesion (a quadric, in the plane's own coordinates), places
it with sub-voxel care from the intensities across it (the partial-volume
crossing from the organ's background to the wall's level, lateral to the
lesion), and gives each voxel its share on the organ's side.
:func:`ai.lesion_volume.grown` weighs the lesion's voxels by that share
(``measurement.lesion_volume.surface_cut``).
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np

from ai.postprocess import dilate_box

ANNULUS_MM = (2.0, 12.0)  # the surface is fitted this far from the lesion: not on it (its own outline), not far from it
MIN_POINTS = 15  # boundary voxels needed for a fit
MAX_RMS_MM = 3.0  # a fit whose boundary voxels lie further from it than this (a corner, two surfaces) is not used
WALL_DEPTH_MM = 6.0  # the wall's level is sampled this deep beyond the surface (past its own partial-volume voxels)
MIN_WALL_CONTRAST = 5.0  # wall and background must differ by this many noise SDs to place the surface from the image


def _boundary(organ: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Voxels of ``organ`` with a face neighbour in ``outside`` (the box's own edges excepted)."""
    out = np.zeros_like(organ)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(lo)] |= organ[tuple(lo)] & outside[tuple(hi)]
        out[tuple(hi)] |= organ[tuple(hi)] & outside[tuple(lo)]
    return out


def _walls(outside: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """The parts of ``outside`` that are a wall: those reaching the box's edge or beyond the fitting annulus.

    A network leaves a few voxels at a lesion's rim labelled neither organ
    nor lesion (its coarser grid's partial volume); such an island beside an
    isolated nodule is no wall, and a surface fitted to it would run through
    the nodule.
    """
    pieces = cc3d.connected_components(outside, connectivity=26)
    edge = np.ones(outside.shape, dtype=bool)
    edge[1:-1, 1:-1, 1:-1] = False
    keep = np.unique(pieces[(edge | (dist > ANNULUS_MM[1])) & outside])
    return np.isin(pieces, keep[keep > 0])


def inside_share(
    comp: np.ndarray, organ: np.ndarray, outside: np.ndarray, image: np.ndarray, dist: np.ndarray,
    spacing_zyx: Sequence[float], background: float, noise: float,
) -> np.ndarray | None:
    """Each voxel's share on the organ's side of the surface fitted around a lesion that touches the outside.

    Parameters
    ----------
    comp : ndarray of bool
        The lesion's component in its box.
    organ : ndarray of bool
        The organ it lies in (the lung), in the same box.
    outside : ndarray of bool
        What lies beyond the organ's wall (neither organ nor lesion).
    image : ndarray
        Intensities in the box.
    dist : ndarray
        Each voxel's distance from the component, mm.
    spacing_zyx : sequence of float
        Voxel spacing, mm.
    background, noise : float
        The organ's intensity around the lesion and its noise SD.

    Returns
    -------
    ndarray or None
        Shares within 0..1; None where the lesion does not touch the outside,
        or no smooth surface runs around it (too few boundary voxels, or a
        poor fit).
    """
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    outside = _walls(outside, dist)
    if not (dilate_box(comp, (1, 1, 1)) & outside).any():
        return None  # not on the wall
    lateral = (dist >= ANNULUS_MM[0]) & (dist <= ANNULUS_MM[1])
    pts = np.argwhere(_boundary(organ, outside) & lateral) * sp
    if len(pts) < MIN_POINTS:
        return None
    mu = pts.mean(axis=0)
    q = pts - mu
    _, _, vt = np.linalg.svd(q, full_matrices=False)
    u, v, n = vt
    wall_pts = np.argwhere(outside & lateral) * sp - mu
    if not len(wall_pts):
        return None
    if float(np.median(wall_pts @ n)) < 0:
        n = -n  # the normal points into the wall
    a, b = q @ u, q @ v
    design = np.stack([np.ones_like(a), a, b, a * a, a * b, b * b], axis=1)
    coef, *_ = np.linalg.lstsq(design, q @ n, rcond=None)
    if float(np.sqrt(np.mean((q @ n - design @ coef) ** 2))) > MAX_RMS_MM:
        return None
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in comp.shape], indexing="ij"), axis=-1).reshape(-1, 3) * sp - mu
    ga, gb = grid @ u, grid @ v
    s = (grid @ n - np.stack([np.ones_like(ga), ga, gb, ga * ga, ga * gb, gb * gb], axis=1) @ coef).reshape(comp.shape)
    h = 0.5 * float(np.abs(n) @ sp)  # a voxel's half extent along the normal
    offset = _crossing(image, s, h, lateral, organ, outside, background, noise)
    if offset is None:
        offset = h / 2  # the boundary voxels' centres lie inside the organ: the surface is beyond them
    return np.asarray(np.clip(0.5 - (s - offset) / (2 * h), 0.0, 1.0))


def _crossing(
    image: np.ndarray, s: np.ndarray, h: float, lateral: np.ndarray, organ: np.ndarray, outside: np.ndarray,
    background: float, noise: float,
) -> float | None:
    """Where the intensities beside the lesion cross from the organ to the wall, along the normal (mm; None if unclear).

    In a slab of half width ``2h`` across the surface, the share of wall
    (each voxel's intensity between the background and the wall's level)
    says where a planar boundary lies: a slab holding wall from ``s0`` on
    holds ``(2h - s0) / 4h`` of it.
    """
    half = 2.0 * h
    deep = lateral & outside & (s > 2 * h) & (s < 2 * h + WALL_DEPTH_MM)
    slab = lateral & (np.abs(s) < half) & (organ | outside)
    if np.count_nonzero(deep) < 10 or np.count_nonzero(slab) < 20:
        return None
    wall = float(np.median(image[deep]))
    if wall - background < MIN_WALL_CONTRAST * noise:
        return None
    share = float(np.mean(np.clip((image[slab] - background) / (wall - background), 0.0, 1.0)))
    s0 = half - 2.0 * half * share
    return s0 if abs(s0) < 2 * h else None
