"""Patch sampling and augmentation shared by the training tasks.

Every function that draws takes the generator and draws in a fixed order,
so that a task's patch stream is a pure function of its seed: the same
seed gives the same patches, run after run.  Each DDP rank and DataLoader
worker gets its own generator (:func:`worker_rng`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np
import torch.distributed as dist
from torch.utils.data import get_worker_info

Shape3 = tuple[int, int, int]


def worker_rng(seed: int, *extra: int) -> np.random.Generator:
    """The generator of this DDP rank and DataLoader worker: seeded by ``[seed, rank, worker, *extra]``.

    Parameters
    ----------
    seed : int
        The run's seed.
    *extra : int
        More entropy, to give a task a stream of its own.
    """
    info = get_worker_info()
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return np.random.default_rng([seed, rank, info.id if info else 0, *extra])


def pad_to(a: np.ndarray, patch: Shape3, fill: float) -> np.ndarray:
    """``a`` padded at the far end of each axis with ``fill`` to at least ``patch`` (``a`` itself when large enough)."""
    pad = [(0, max(0, p - s)) for p, s in zip(patch, a.shape)]
    return np.pad(a, pad, constant_values=fill) if any(p[1] for p in pad) else a


def patch_slices(centre: Sequence[int] | np.ndarray, patch: Shape3, shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """The window of size ``patch`` centred on ``centre``, moved inside ``shape`` (clipped at 0 when ``shape`` is smaller).

    Parameters
    ----------
    centre : sequence of int
        Voxel ``(z, y, x)``; it may lie outside the volume (jittered centres).
    patch : (int, int, int)
        Window size.
    shape : sequence of int
        The volume's shape.
    """
    lo = [int(np.clip(c - p // 2, 0, max(0, s - p))) for c, p, s in zip(centre, patch, shape)]
    z, y, x = (slice(a, a + p) for a, p in zip(lo, patch))
    return z, y, x


def random_voxel(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A voxel drawn uniformly in ``shape`` (one draw per axis, ``z`` first)."""
    return np.array([rng.integers(s) for s in shape])


def _components(lab: np.ndarray) -> dict[int, list[np.ndarray]]:
    """Voxel coordinates (int16, ``[n, 3]``) of each 26-connected component, grouped by label.

    Parameters
    ----------
    lab : ndarray
        A label map ``[z, y, x]``.

    Returns
    -------
    dict of int to list of ndarray
        For each label present, the coordinates of each of its components.
    """
    cc = cc3d.connected_components(lab, connectivity=26)
    flat = cc.ravel()
    order = np.argsort(flat, kind="stable")
    ids, starts = np.unique(flat[order], return_index=True)
    bounds = list(starts[1:]) + [len(order)]
    by_label: dict[int, list[np.ndarray]] = {}
    for cid, a, b in zip(ids, starts, bounds):
        if cid == 0:
            continue
        idx = order[a:b]
        coords = np.stack(np.unravel_index(idx, lab.shape), axis=1).astype(np.int16)
        by_label.setdefault(int(lab.flat[idx[0]]), []).append(coords)
    return by_label


def component_centre(by_label: dict[int, list[np.ndarray]], patch: Shape3, rng: np.random.Generator) -> np.ndarray:
    """A patch centre balanced over structures: a label uniformly, then one of its components, then a voxel.

    So a 6 mm nodule is the centre as often as a 25 mm one (or a lung).  The
    centre is jittered by up to a quarter patch, so that a small component is
    not always in the middle of the patch.

    Parameters
    ----------
    by_label : dict
        :func:`_components` of the label map (not empty).
    patch : (int, int, int)
        Patch size, for the jitter.
    rng : Generator
        Draws: label, component, voxel, then the jitter of each axis.
    """
    comps = by_label[list(by_label)[int(rng.integers(len(by_label)))]]
    vox = comps[int(rng.integers(len(comps)))]
    centre = vox[int(rng.integers(len(vox)))].astype(np.int64)
    return centre + np.array([int(rng.integers(-(p // 4), p // 4 + 1)) for p in patch])


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Left-right flip (of image and target together), then intensity scale, shift and noise of the image.

    Parameters
    ----------
    x : ndarray
        Image patch, float32 ``[z, y, x]``.
    y : ndarray
        Its target (labels or mask), on the same grid.
    rng : Generator
        Draws, in this order: flip, scale (0.9-1.1), shift (+-0.05), noise (sd 0.01).
    flip : bool
        Whether to flip at all (no draw is made for it when not).

    Returns
    -------
    (ndarray, ndarray)
        Contiguous arrays.
    """
    if flip and rng.random() < 0.5:  # left-right flip
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05))
    x = x + rng.normal(0, 0.01, x.shape).astype(np.float32)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)
