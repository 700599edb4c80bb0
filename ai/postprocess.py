"""Post-processing of label maps: argmax or threshold, connected components, hole filling (lesion shape: :mod:`ai.shape`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import cc3d
import numpy as np
import torch

Connectivity = Literal[6, 18, 26]  # 3D voxel neighbourhoods: faces, +edges, +corners


def to_labels(
    scores: torch.Tensor,
    *,
    threshold: float | None = None,
    label_thresholds: Mapping[int, float] | None = None,
    detection_thresholds: Mapping[int, float] | None = None,
) -> np.ndarray:
    """Label map ``[z, y, x]`` from scores ``(K, z, y, x)``.

    With ``threshold``, channel k>0 wins where its score passes the threshold
    (the highest such channel); otherwise the argmax over channels.  Then each
    label of ``label_thresholds`` (in the order given) takes every voxel where
    its own score reaches its threshold: a lower bar for a small lesion class
    than the argmax, which favours sensitivity over precision.

    ``detection_thresholds`` finds faint lesions without inflating the others:
    a connected region of score >= the detection threshold that nothing above
    has labelled yet becomes the label where its score is at least half its
    own peak (the lesion's core).
    """
    s = scores.numpy()
    if threshold is None:
        out = _argmax(s, 0)
    else:
        out = _argmax(s, 1)
        best = s[1:].max(axis=0)
        out[best < threshold] = 0
    for value, thr in (label_thresholds or {}).items():
        out[s[int(value)] >= thr] = int(value)
    for value, thr in (detection_thresholds or {}).items():
        score = scores[int(value)].numpy()
        comps, n = cc3d.connected_components(score >= thr, connectivity=26, return_N=True)
        if n == 0:
            continue
        labelled = np.bincount(comps[out == int(value)].ravel(), minlength=n + 1) > 0
        inside = comps > 0
        peaks = np.zeros(n + 1, dtype=np.float32)
        np.maximum.at(peaks, comps[inside], score[inside])
        faint = ~labelled
        faint[0] = False
        core = faint[comps] & (score >= 0.5 * peaks[comps])
        out[core] = int(value)
    return out


def _argmax(s: np.ndarray, first: int) -> np.ndarray:
    """Argmax over channels ``first..K-1`` as uint8, one channel at a time (far faster than a strided
    reduction on a 300x512x512 volume); ties go to the lower channel, as ``argmax`` does."""
    out = np.full(s.shape[1:], first, dtype=np.uint8)
    best = s[first].copy()
    for k in range(first + 1, s.shape[0]):
        better = s[k] > best
        out[better] = k
        np.maximum(best, s[k], out=best)
    return out


def keep_largest(labels: np.ndarray, values: Sequence[int], connectivity: Connectivity = 26) -> np.ndarray:
    """Keep only the largest connected component of each label in ``values``."""
    out = labels.copy()
    for v in values:
        mask = labels == v
        if not mask.any():
            continue
        area = _bounding_box(mask)  # the labelling and the clearing cost follow the organ, not the whole scan
        sub = mask[area]
        cc = cc3d.connected_components(sub, connectivity=connectivity)
        sizes = np.asarray(cc3d.statistics(cc)["voxel_counts"]).copy()
        sizes[0] = 0
        if np.count_nonzero(sizes) > 1:
            out[area][sub & (cc != int(sizes.argmax()))] = 0
    return out


def remove_small(labels: np.ndarray, min_voxels: int, values: Sequence[int] | None = None, connectivity: Connectivity = 26) -> np.ndarray:
    """Remove components smaller than ``min_voxels`` (of every label, or of ``values``).

    Components are found within each label's bounding box and cleared within
    their own, so the cost follows the labels, not the whole volume.
    """
    out = labels.copy()
    for v in values if values is not None else [int(x) for x in np.unique(labels) if x != 0]:
        mask = labels == v
        if not mask.any():
            continue
        area = _bounding_box(mask)
        cc = cc3d.connected_components(mask[area], connectivity=connectivity)
        stats = cc3d.statistics(cc)
        small = np.flatnonzero(np.asarray(stats["voxel_counts"]) < min_voxels)
        small = small[small != 0]
        view = out[area]
        if small.size > 256:  # many specks: one lookup over the area
            lut = np.zeros(len(stats["voxel_counts"]), dtype=bool)
            lut[small] = True
            view[lut[cc]] = 0
            continue
        for k in small:
            box = stats["bounding_boxes"][k]
            view[box][cc[box] == k] = 0
    return out


def dilate_box(mask: np.ndarray, half: Sequence[int]) -> np.ndarray:
    """Dilation by a box of ``2 * half + 1`` voxels per axis: shifted ORs, one axis at a time (a separable max filter).

    On a lesion's neighbourhood this is an order of magnitude faster than a pooling layer.
    """
    out = mask
    for axis, h in enumerate(half):
        grown = out.copy()
        for step in range(1, min(int(h), out.shape[axis] - 1) + 1):
            ahead = [slice(None)] * 3
            behind = [slice(None)] * 3
            ahead[axis], behind[axis] = slice(step, None), slice(None, -step)
            grown[tuple(ahead)] |= out[tuple(behind)]
            grown[tuple(behind)] |= out[tuple(ahead)]
        out = grown
    return out


def min_voxels(min_size_mm3: float, voxel_mm3: float) -> int:
    """The fewest voxels whose volume reaches ``min_size_mm3``: a floor rounds up, never down.

    Two voxels of 4.95 mm3 make 9.9 mm3, under a 10 mm3 floor: 3 voxels are needed.
    """
    return max(1, math.ceil(min_size_mm3 / voxel_mm3 - 1e-9))


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


def keep_within(
    labels: np.ndarray, child: int, parent: int | Sequence[int], margin: int = 2, connectivity: Connectivity = 26,
    min_fraction: float = 0.0,
) -> np.ndarray:
    """Drop components of ``child`` that do not come within ``margin`` voxels of ``parent`` (or of any of them).

    An anatomical prior: a lung nodule lies in (or on the wall of) a lung, so
    a "nodule" on the table or in the body wall is a false positive.  With a
    list of parents (``[1, 2]``: the right and the left lung) a component needs
    to come near any one of them.  With ``min_fraction`` a component must
    also be bordered mostly by them: at least that share of the voxels just
    outside it (its face-connected outer shell) must be parent voxels.  A
    nodule inside a lung is bordered by lung all round and one on the pleura
    (juxta-pleural) still mostly so, while a lymph node, a hilar vessel or a
    piece of mediastinum that the network calls a nodule is bordered mostly
    by other tissue.  Each component is checked in its own bounding box, so
    the cost follows the lesions, not the volume.
    """
    parents = [int(parent)] if isinstance(parent, (int, np.integer)) else [int(p) for p in parent]
    out = labels.copy()
    for _, box, comp in components(labels == child, (margin, margin, margin), connectivity):
        in_parent = np.isin(labels[box], parents)
        near = bool((dilate_box(comp, (margin, margin, margin)) & in_parent).any())
        if near and min_fraction > 0:
            near = border_fraction(comp, in_parent) >= min_fraction
        if not near:
            view = out[box]
            view[comp] = 0
    return out


def border_fraction(comp: np.ndarray, inside: np.ndarray) -> float:
    """The share of the face-connected outer shell of ``comp`` that lies in ``inside`` (both boolean, same box).

    The box must leave at least one voxel of margin around ``comp`` where the
    volume allows; shell voxels beyond the box's edge do not count.
    """
    padded = np.pad(comp, 1)  # so that np.roll wraps only padding around
    grown = padded.copy()
    for axis in range(3):
        for step in (1, -1):
            grown |= np.roll(padded, step, axis=axis)
    shell = (grown & ~padded)[1:-1, 1:-1, 1:-1]
    n = int(shell.sum())
    return float((shell & inside).sum() / n) if n else 1.0


def components(
    mask: np.ndarray, pad: Sequence[int], connectivity: Connectivity = 26
) -> Iterator[tuple[int, tuple[slice, slice, slice], np.ndarray]]:
    """The connected components of ``mask``, one at a time, each in its own box.

    The components are found within the bounding box of ``mask``, so the cost
    follows the objects, not the volume.

    Parameters
    ----------
    mask : ndarray of bool ``[z, y, x]``
        The voxels to split into components.
    pad : sequence of int
        How many voxels to widen each component's bounding box by, per axis
        (within the array).
    connectivity : {6, 18, 26}
        Voxel neighbourhood.

    Yields
    ------
    (int, tuple of slice, ndarray)
        The component's number, its widened box in ``mask``, and its voxels
        in that box.
    """
    if not mask.any():
        return
    area = _bounding_box(mask)
    cc = cc3d.connected_components(mask[area], connectivity=connectivity)
    for k, bb in enumerate(cc3d.statistics(cc)["bounding_boxes"][1:], start=1):
        box = _triple([
            slice(max(0, a.start + b.start - h), min(n, a.start + b.stop + h)) for a, b, h, n in zip(area, bb, pad, mask.shape)
        ])
        both = [slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(area, box)]
        comp = np.zeros(tuple(b.stop - b.start for b in box), dtype=bool)
        comp[tuple(slice(c.start - b.start, c.stop - b.start) for b, c in zip(box, both))] = (
            cc[tuple(slice(c.start - a.start, c.stop - a.start) for a, c in zip(area, both))] == k
        )
        yield k, box, comp


def _triple(values: Sequence[slice]) -> tuple[slice, slice, slice]:
    a, b, c = values
    return a, b, c


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The smallest box holding every True voxel of a non-empty 3D ``mask``."""
    box = []
    for axis in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return _triple(box)
