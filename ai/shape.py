"""Lesion shape: vessels are tubes, nodules are blobs (``postprocessing.lesion_shape`` of a bundle).

Each component of a lesion label is measured in millimetres on the source
grid: how elongated it is, its length along its main axis, and how much of
its equivalent ellipsoid it fills.  It is first opened with a ball the size
of a vessel, so that thin vessels attached to a nodule come off; what looks
like a vessel goes to the label around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

import cc3d

from ai.postprocess import Connectivity, components, dilate_box


@dataclass(frozen=True)
class ShapeRule:
    """What a component of a lesion label may look like (``postprocessing.lesion_shape`` of a bundle).

    Attributes
    ----------
    max_elongation : float or None
        Largest ratio of the longest to the shortest principal axis (of the
        component's equivalent ellipsoid).  A sphere is 1, a 2:1 ellipsoid 2,
        a straight tube about 1.15 x its length / diameter.
    max_length_mm : float or None
        Longest extent along the main axis; longer components are no nodule.
    min_fill : float or None
        Smallest volume / volume of the equivalent ellipsoid.  Solid blobs
        (and straight tubes) are near 1; bent, looping or branching tubes
        fill a small part of their ellipsoid.
    vessel_radius_mm : float
        Radius of the ball of the morphological opening that detaches thin
        tubes (vessels touching a nodule) before the shape is judged; 0 turns
        the opening off.
    """

    max_elongation: float | None = 3.0
    max_length_mm: float | None = None
    min_fill: float | None = 0.3
    vessel_radius_mm: float = 1.5


@dataclass(frozen=True)
class Shape:
    """The shape of one connected component, in mm (see :func:`shape_of`)."""

    volume_mm3: float
    elongation: float
    length_mm: float
    fill: float

    def rejected_by(self, rule: ShapeRule) -> str | None:
        """Why ``rule`` rejects this shape, in words, or None when it passes."""
        if rule.max_elongation is not None and self.elongation > rule.max_elongation:
            return f"elongated {self.elongation:.1f}:1 (at most {rule.max_elongation:g}:1)"
        if rule.max_length_mm is not None and self.length_mm > rule.max_length_mm:
            return f"{self.length_mm:.0f} mm long (at most {rule.max_length_mm:g} mm)"
        if rule.min_fill is not None and self.fill < rule.min_fill:
            return f"fills {self.fill:.2f} of its ellipsoid (at least {rule.min_fill:g}): bent or branching"
        return None


def shape_of(mask: np.ndarray, spacing_zyx: Sequence[float]) -> Shape:
    """Principal-axis shape of the voxels of ``mask`` in mm.

    The covariance of the voxel centres plus each voxel's own extent
    (``s**2 / 12`` per axis: a one-slice component still has a thickness)
    gives the equivalent ellipsoid (semi-axes ``sqrt(5 * eigenvalue)``).
    The elongation is the ratio of its longest to shortest axis, with the
    coarsest spacing's ``s**2 / 12`` added to both eigenvalues: a shape is
    only known to a voxel, and on 5 mm slices a 6 mm nodule spans one or two
    slices.  The length is the extent of the voxels along the main axis.

    Parameters
    ----------
    mask : ndarray of bool
        One component (or any set of voxels).
    spacing_zyx : sequence of float
        Voxel spacing in mm, ``(z, y, x)``.

    Returns
    -------
    Shape
        Volume, elongation, length and fill.
    """
    s = np.asarray(spacing_zyx, dtype=np.float64)
    pts = np.argwhere(mask).astype(np.float64) * s
    n = len(pts)
    if n == 0:
        return Shape(0.0, 1.0, 0.0, 1.0)
    cov = np.cov(pts, rowvar=False, bias=True) if n > 1 else np.zeros((3, 3))
    cov = cov + np.diag(s**2 / 12)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    evals = np.maximum(evals, 1e-12)
    slack = float(s.max()) ** 2 / 12
    axis = evecs[:, 2]
    proj = pts @ axis
    volume = n * float(np.prod(s))
    ellipsoid = 4 / 3 * np.pi * float(np.sqrt(125 * np.prod(evals)))
    return Shape(
        volume_mm3=volume,
        elongation=float(np.sqrt((evals[2] + slack) / (evals[0] + slack))),
        length_mm=float(proj.max() - proj.min() + np.abs(axis) @ s),
        fill=volume / ellipsoid,
    )


def sq_distance(mask: np.ndarray, cap_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Squared distance (mm2) from each voxel centre to the nearest voxel of ``mask``, exact up to ``cap_mm``.

    A separable min-plus filter, one axis at a time (squared Euclidean
    distance splits into per-axis terms), truncated at ``cap_mm``: beyond it
    the values are larger than ``cap_mm ** 2`` but no longer exact.  Nothing
    outside the array counts.  Binary erosion by a ball of radius ``r`` is
    ``sq_distance(~mask, r) > r**2``, dilation ``sq_distance(mask, r) <= r**2``:
    a few shifted minima per axis, where a convolution would compile a new
    kernel for every box shape.

    Parameters
    ----------
    mask : ndarray of bool ``[z, y, x]``
        The voxels to measure the distance to.
    cap_mm : float
        Distances up to this are exact.
    spacing_zyx : sequence of float
        Voxel spacing in mm, ``(z, y, x)``.

    Returns
    -------
    ndarray of float32
        Squared distances in mm2 (``inf`` where no voxel of ``mask`` lies within
        the per-axis reach of ``cap_mm``).
    """
    d = np.where(mask, np.float32(0), np.float32(np.inf))
    for axis, s in enumerate(spacing_zyx):
        steps = min(int(cap_mm // float(s)), d.shape[axis] - 1)
        if steps < 1:
            continue
        out = d.copy()
        for k in range(1, steps + 1):
            w = np.float32((k * float(s)) ** 2)
            ahead = [slice(None)] * 3
            behind = [slice(None)] * 3
            ahead[axis], behind[axis] = slice(k, None), slice(None, -k)
            a, b = tuple(ahead), tuple(behind)
            np.minimum(out[a], d[b] + w, out=out[a])
            np.minimum(out[b], d[a] + w, out=out[b])
        d = out
    return d


def lesion_part(comp: np.ndarray, rule: ShapeRule, spacing_zyx: Sequence[float]) -> np.ndarray:
    """The voxels of one component that ``rule`` keeps as a lesion (all, none, or the blob without its vessels).

    The component is opened with a ball of ``vessel_radius_mm``: thin tubes
    vanish, blobs stay.  A piece of what remains is a lesion when it is
    thicker than a vessel (it holds a ball of 1.5 x ``vessel_radius_mm``:
    the fragments that the opening leaves of a tube about as thick as the
    ball do not) and passes ``rule`` (:func:`shape_of`); when several pieces
    do, they must also pass together (on thick slices a bent vessel falls
    apart into compact pieces that line up).  The component keeps its voxels
    within ``vessel_radius_mm`` (and one voxel) of its lesion pieces, so a
    nodule keeps its margin and sheds the vessels attached to it.  A
    component without such a piece (a small nodule, or a vessel) is judged
    whole: kept if its own shape passes, else dropped.  ``comp`` needs an empty margin of one ball
    radius (of 1.5 x ``vessel_radius_mm``) around it.

    Parameters
    ----------
    comp : ndarray of bool
        One component, with its empty margin.
    rule : ShapeRule
        What a lesion may look like.
    spacing_zyx : sequence of float
        Voxel spacing in mm, ``(z, y, x)``.

    Returns
    -------
    ndarray of bool
        The voxels of ``comp`` kept as lesion.
    """
    radius = rule.vessel_radius_mm
    whole = shape_of(comp, spacing_zyx)
    r2, thick2 = radius**2 + 1e-6, (1.5 * radius) ** 2 + 1e-6
    # The ball must hold more than its centre, and the component a blob thicker than a vessel, for opening to tell.
    if radius >= min(spacing_zyx) and whole.volume_mm3 >= 4 / 3 * np.pi * (1.5 * radius) ** 3:
        depth = sq_distance(~comp, 1.5 * radius, spacing_zyx)  # how deep inside: erosion by a ball is depth > r**2
        core = sq_distance(depth > r2, radius, spacing_zyx) <= r2  # the opening
        pieces, n = cc3d.connected_components(core, connectivity=26, return_N=True)
        good = np.zeros(n + 1, dtype=bool)
        good[np.unique(pieces[depth > thick2])] = True
        good[0] = False
        boxes = cc3d.statistics(pieces)["bounding_boxes"]
        for j in np.flatnonzero(good):
            good[j] = shape_of(pieces[boxes[j]] == j, spacing_zyx).rejected_by(rule) is None
        accepted = good[pieces]
        if np.count_nonzero(good) > 1 and shape_of(accepted, spacing_zyx).rejected_by(rule) is not None:
            accepted[:] = False
        if accepted.any():  # within reach of the blob: a ball, and at least the next voxel (thick slices)
            return comp & dilate_box(sq_distance(accepted, radius, spacing_zyx) <= r2, (1, 1, 1))
    return comp if whole.rejected_by(rule) is None else np.zeros_like(comp)


def surrounding_label(labels: np.ndarray, mask: np.ndarray, exclude: Sequence[int] = ()) -> int:
    """The label most common on the one-voxel shell of ``mask`` (0 if none), ignoring ``exclude``."""
    shell = dilate_box(mask, (1, 1, 1)) & ~mask
    values = labels[shell]
    if exclude:
        values = values[~np.isin(values, list(exclude))]
    return int(np.bincount(values.ravel().astype(np.int64)).argmax()) if values.size else 0


def filter_shapes(
    labels: np.ndarray,
    rules: Mapping[int, ShapeRule],
    spacing_zyx: Sequence[float],
    connectivity: Connectivity = 26,
) -> np.ndarray:
    """Give the tubes among the components of each lesion label in ``rules`` to their surroundings.

    Each connected component is judged on its own bounding box by
    :func:`lesion_part`; the voxels it rejects (a vessel, the vessels on a
    nodule, a component far longer than a lesion) take the label around
    them (lung, for a vessel in a lung; else background), never another
    lesion label.

    Parameters
    ----------
    labels : ndarray ``[z, y, x]``
        Label map on the source grid.
    rules : mapping of int to ShapeRule
        Lesion label -> the rule its components must pass.
    spacing_zyx : sequence of float
        Voxel spacing in mm, ``(z, y, x)``.
    connectivity : {6, 18, 26}
        Voxel neighbourhood of a component.

    Returns
    -------
    ndarray
        A new label map.
    """
    out = labels.copy()
    lesion_values = [int(v) for v in rules]
    for value, rule in rules.items():
        half = [int(1.5 * rule.vessel_radius_mm // s) + 1 for s in spacing_zyx]
        for _, box, comp in components(labels == int(value), half, connectivity):
            inner = tuple(slice(h, h + n) for h, n in zip(half, comp.shape))
            kept = lesion_part(np.pad(comp, [(h, h) for h in half]), rule, spacing_zyx)[inner]  # margin at the array's edge too
            removed = comp & ~kept
            if removed.any():
                view = out[box]
                view[removed] = surrounding_label(labels[box], comp, lesion_values)
    return out
