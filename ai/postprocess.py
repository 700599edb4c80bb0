"""Post-processing of label maps: argmax or threshold, connected components, hole filling."""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np
import torch


def to_labels(scores: torch.Tensor, *, threshold: float | None = None) -> np.ndarray:
    """Label map ``[z, y, x]`` from scores ``(K, z, y, x)``.

    With ``threshold``, channel k>0 wins where its score passes the threshold
    (the highest such channel); otherwise the argmax over channels.
    """
    if threshold is None:
        return scores.argmax(0).to(torch.uint8).numpy()
    fg = scores[1:]
    best = fg.argmax(0) + 1
    keep = fg.max(0).values >= threshold
    return torch.where(keep, best, torch.zeros_like(best)).to(torch.uint8).numpy()


def keep_largest(labels: np.ndarray, values: Sequence[int], connectivity: int = 26) -> np.ndarray:
    """Keep only the largest connected component of each label in ``values``."""
    out = labels.copy()
    for v in values:
        mask = labels == v
        if not mask.any():
            continue
        cc = cc3d.connected_components(mask, connectivity=connectivity)
        sizes = np.bincount(cc.ravel())
        sizes[0] = 0
        out[mask & (cc != int(sizes.argmax()))] = 0
    return out


def remove_small(labels: np.ndarray, min_voxels: int, values: Sequence[int] | None = None, connectivity: int = 26) -> np.ndarray:
    """Remove components smaller than ``min_voxels`` (of every label, or of ``values``)."""
    out = labels.copy()
    for v in values if values is not None else [int(x) for x in np.unique(labels) if x != 0]:
        cc = cc3d.connected_components(labels == v, connectivity=connectivity)
        sizes = np.bincount(cc.ravel())
        small = np.flatnonzero(sizes < min_voxels)
        small = small[small != 0]
        if small.size:
            out[np.isin(cc, small)] = 0
    return out


def fill_holes(labels: np.ndarray, values: Sequence[int] | None = None) -> np.ndarray:
    """Fill background cavities fully enclosed by one label (3D, 6-connected background)."""
    out = labels.copy()
    for v in values if values is not None else [int(x) for x in np.unique(labels) if x != 0]:
        outside = labels != v
        cc = cc3d.connected_components(outside, connectivity=6)
        border = np.unique(
            np.concatenate([cc[0].ravel(), cc[-1].ravel(), cc[:, 0].ravel(), cc[:, -1].ravel(), cc[:, :, 0].ravel(), cc[:, :, -1].ravel()])
        )
        enclosed = outside & ~np.isin(cc, border) & (labels == 0)
        out[enclosed] = v
    return out
