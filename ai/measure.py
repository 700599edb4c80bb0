"""Measurements of a label map on its own voxel grid: volumes, intensities, lesions.

A label's volume is its voxel count (what its SEG segment holds), plus, for
an organ that ``contains`` lesion labels, the lesions that lie in it.  A
lesion's volume is measured with sub-voxel care (:class:`LesionVolume`):
counting the voxels of a small component misjudges it by a good part of
its boundary shell, which is most of a small nodule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from ai.axes import Axes, axial_axes
from ai.lesion_volume import Component, LesionVolume, grown, partial_volume, probability_volume
from ai.postprocess import components, dilate_box

MAX_SURFACE_POINTS = 4000  # for the maximum diameter; more are subsampled evenly


class Edge(str, Enum):
    """A side of the volume that a lesion touches: the scan may have cut it off."""

    FIRST_SLICE = "first slice"
    LAST_SLICE = "last slice"
    FIELD_OF_VIEW = "edge of the field of view"


@dataclass(frozen=True)
class Lesion:
    """One connected component of a lesion-type label.

    Lesions of a label are numbered by volume, largest first (``index`` 1),
    so that the same scan gives the same numbers whatever its slice order or
    patient position.
    """

    index: int
    volume_ml: float  # measured as ``method`` says
    max_diameter_mm: float
    centroid_voxel: tuple[float, float, float]  # [z, y, x]
    slices: tuple[int, int] = (0, 0)  # the z extent [first, stop): a connected component has no empty slice inside
    voxel_volume_ml: float = 0.0  # the component's voxel count times the voxel volume
    method: str = "voxels"  # how volume_ml was measured: grown, partial_volume, probability or voxels
    organ: int | None = None  # the organ label it lies in (``contains``), if any
    axes: Axes | None = None  # long and short axis in the slice where the long axis is largest
    mean: float | None = None  # intensity over its voxels
    std: float | None = None
    edges: tuple[Edge, ...] = ()  # sides of the volume it touches (possibly truncated)
    probability: float | None = None  # the candidate classifier's probability that it is a lesion (None: no classifier)
    box: tuple[slice, slice, slice] | None = field(default=None, repr=False, compare=False)  # where ``mask`` lies
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)  # its voxels within ``box``

    def voxels_in(self, shape: Sequence[int]) -> np.ndarray:
        """Its voxels as a boolean array of the volume's ``shape``."""
        out = np.zeros(tuple(shape), dtype=bool)
        if self.box is not None and self.mask is not None:
            out[self.box] = self.mask
        return out


@dataclass(frozen=True)
class LabelMeasurement:
    """What is measured for one label."""

    value: int
    name: str
    volume_ml: float  # voxels x voxel volume
    voxels: int  # its own voxels plus those of the lesions it contains
    mean: float | None  # intensity over its own voxels
    std: float | None
    lesions: list[Lesion] = field(default_factory=list)
    contained_ml: float = 0.0  # the part of volume_ml that is lesions inside this organ


def _surface(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1, 1:-1] = (
        mask[1:-1, 1:-1, 1:-1]
        & mask[:-2, 1:-1, 1:-1] & mask[2:, 1:-1, 1:-1]
        & mask[1:-1, :-2, 1:-1] & mask[1:-1, 2:, 1:-1]
        & mask[1:-1, 1:-1, :-2] & mask[1:-1, 1:-1, 2:]
    )
    inner[[0, -1], :, :] = False
    inner[:, [0, -1], :] = False
    inner[:, :, [0, -1]] = False
    return np.argwhere(mask & ~inner)


def max_diameter_mm(mask: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """Largest distance between two voxel centres of ``mask``, in mm.

    For a sphere sampled at voxel centres (voxels whose centre lies within the
    radius) this is the sphere's diameter; adding a voxel would overestimate it.
    """
    pts = _surface(mask).astype(np.float64) * np.asarray(spacing_zyx)
    if len(pts) == 0:
        return 0.0
    if len(pts) > MAX_SURFACE_POINTS:
        pts = pts[np.linspace(0, len(pts) - 1, MAX_SURFACE_POINTS).astype(int)]
    best = 0.0
    for i in range(0, len(pts), 512):
        d = ((pts[i : i + 512, None, :] - pts[None, :, :]) ** 2).sum(-1)
        best = max(best, float(d.max()))
    return float(np.sqrt(best))


def _components(
    labels: np.ndarray, value: int, pad: Sequence[int], lesion_values: Sequence[int], top: int
) -> tuple[list[Component], list[tuple[float, float, float]]]:
    """The connected components of ``value`` (26-connected), each in a box ``pad`` voxels wider, and their centroids."""
    out: list[Component] = []
    centroids: list[tuple[float, float, float]] = []
    others = [v for v in lesion_values if v != value]
    for _, box, comp in components(labels == value, pad):
        shell = dilate_box(comp, (1, 1, 1)) & ~comp
        values = labels[box][shell]
        values = values[(values != value) & ~np.isin(values, others)] if others else values[values != value]
        out.append(Component(box, comp, np.bincount(values.ravel().astype(np.int64), minlength=top + 1)))
        cz, cy, cx = np.argwhere(comp).mean(axis=0) + [b.start for b in box]
        centroids.append((float(cz), float(cy), float(cx)))
    return out, centroids


def measure(
    labels: np.ndarray,
    spacing_xyz: Sequence[float],
    names: dict[int, str],
    *,
    image: np.ndarray | None = None,
    lesion_values: Sequence[int] = (),
    probabilities: np.ndarray | None = None,
    contains: Mapping[int, Sequence[int]] | None = None,
    lesion_volume: LesionVolume | None = None,
) -> list[LabelMeasurement]:
    """Volume (mL), intensity mean/std and, for lesion labels, per-component volume and diameter.

    Parameters
    ----------
    labels : ndarray ``[z, y, x]``
        Label map on the image's grid.
    spacing_xyz : (float, float, float)
        Voxel spacing in mm, ``(x, y, z)``.
    names : dict
        Label value to display name.
    image : ndarray, optional
        Intensities on the same grid (e.g. HU), for mean and standard
        deviation, and for partial-volume lesion volumes.
    lesion_values : sequence of int
        Labels measured per connected component.
    probabilities : ndarray ``(K, z, y, x)``, optional
        The network's probabilities on the same grid (channel = label value),
        for probability lesion volumes.
    contains : mapping, optional
        Organ label -> lesion labels it contains (``{1: [3], 2: [3]}``): each
        lesion component counts in the volume of the organ it borders most.
    lesion_volume : LesionVolume, optional
        How lesion volumes are measured (default: :class:`LesionVolume`).

    Notes
    -----
    A lesion's maximum diameter is that of its voxel centres, scaled by the
    cube root of (measured volume / voxel-count volume): the component's
    shape at the measured volume, so diameter and volume agree.
    """
    cfg = lesion_volume or LesionVolume()
    sx, sy, sz = (float(v) for v in spacing_xyz)
    spacing_zyx = (sz, sy, sx)
    voxel_ml = sx * sy * sz / 1000.0
    shell = [max(1, round(cfg.shell_mm / s)) for s in spacing_zyx]
    tail = [max(1, round(cfg.tail_mm / s)) for s in spacing_zyx]
    pad = [max(2 * a + 1, b + 1) for a, b in zip(shell, tail)]
    organs_of: dict[int, list[int]] = {}
    for organ, held in (contains or {}).items():
        for v in held:
            organs_of.setdefault(int(v), []).append(int(organ))
    lesion_set = sorted({int(v) for v in lesion_values} | set(organs_of))
    lesions: dict[int, list[Lesion]] = {}
    contained: dict[int, int] = {}
    top = int(labels.max()) if labels.size else 0
    for value in lesion_set:
        comps, centroids = _components(labels, value, pad, lesion_set, top)
        if not comps:
            continue
        claimed = np.zeros(labels.shape, dtype=bool)  # shell voxels counted already: each counts once (largest lesion first)
        found: list[Lesion] = []
        for k in sorted(range(len(comps)), key=lambda i: -int(np.count_nonzero(comps[i].comp))):
            c = comps[k]
            count = int(np.count_nonzero(c.comp))
            touching = [o for o in organs_of.get(value, []) if o <= top and c.border[o] > 0]
            in_organ = max(touching, key=lambda o: (int(c.border[o]), -o)) if touching else None
            if in_organ is not None:
                contained[in_organ] = contained.get(in_organ, 0) + count
            if value not in lesion_values:
                continue
            free = ~claimed[c.box] & ~np.isin(labels[c.box], lesion_set)
            region_grown = grown(c, labels, image, free, cfg, spacing_zyx) if cfg.method == "grown" and image is not None else None
            if region_grown is not None:
                (voxels, region, region_box), method = region_grown, "grown"
                claimed[region_box] |= region
            else:
                voxels, method = _lesion_voxels(c, labels, value, image, probabilities, free, cfg, shell, tail)
                if method != "voxels":
                    claimed[c.box] |= dilate_box(c.comp, tail if method == "probability" else shell)
            scale = (voxels / count) ** (1 / 3)  # the component's shape at the measured volume
            diameter = max_diameter_mm(c.comp, spacing_zyx) * scale
            extent = _extent(c)
            slices = (extent[0][0], extent[0][1] + 1)
            offset = tuple(b.start for b in c.box)
            vals = image[c.box][c.comp].astype(np.float64) if image is not None else None
            found.append(Lesion(
                k + 1, voxels * voxel_ml, diameter, centroids[k], slices, count * voxel_ml, method, in_organ,
                axes=axial_axes(c.comp, spacing_zyx, offset, scale),
                mean=float(vals.mean()) if vals is not None else None, std=float(vals.std()) if vals is not None else None,
                edges=_edges(extent, labels.shape), box=c.box, mask=c.comp,
            ))
        ranked = sorted(found, key=lambda les: (-round(les.volume_ml, 6), les.centroid_voxel))
        lesions[value] = [replace(les, index=i) for i, les in enumerate(ranked, start=1)]
    out: list[LabelMeasurement] = []
    for value, name in sorted(names.items()):
        mask = labels == value
        n = int(np.count_nonzero(mask))
        mean = std = None
        if image is not None and n:
            vals = image[mask].astype(np.float64)
            mean, std = float(vals.mean()), float(vals.std())
        extra = contained.get(value, 0)
        out.append(
            LabelMeasurement(value, name, (n + extra) * voxel_ml, n + extra, mean, std, lesions.get(value, []), extra * voxel_ml)
        )
    return out


def _extent(c: Component) -> list[tuple[int, int]]:
    """Per axis (z, y, x), the first and last index of component ``c`` in the volume."""
    out = []
    for i, b in enumerate(c.box):
        hit = np.flatnonzero(c.comp.any(axis=tuple(a for a in range(3) if a != i)))
        out.append((b.start + int(hit[0]), b.start + int(hit[-1])))
    return out


def _edges(extent: Sequence[tuple[int, int]], shape: Sequence[int]) -> tuple[Edge, ...]:
    """The sides of the volume that a component spanning ``extent`` touches."""
    (z0, z1), (y0, y1), (x0, x1) = extent
    out: list[Edge] = []
    if z0 == 0:
        out.append(Edge.FIRST_SLICE)
    if z1 == shape[0] - 1:
        out.append(Edge.LAST_SLICE)
    if y0 == 0 or x0 == 0 or y1 == shape[1] - 1 or x1 == shape[2] - 1:
        out.append(Edge.FIELD_OF_VIEW)
    return tuple(out)


def _lesion_voxels(
    c: Component,
    labels: np.ndarray,
    value: int,
    image: np.ndarray | None,
    probabilities: np.ndarray | None,
    free: np.ndarray,
    cfg: LesionVolume,
    shell: Sequence[int],
    tail: Sequence[int],
) -> tuple[float, str]:
    """How many voxels' worth of lesion one component holds, and by which method (``grown`` is measured before)."""
    if cfg.method in ("auto", "partial_volume", "grown") and image is not None:
        v = partial_volume(c, labels, image, free, cfg, shell)
        if v is not None:
            return v, "partial_volume"
    if cfg.method in ("auto", "probability", "partial_volume", "grown") and probabilities is not None and value < len(probabilities):
        return probability_volume(c, probabilities[value], free, float(cfg.thresholds.get(value, 0.5)), tail), "probability"
    return float(np.count_nonzero(c.comp)), "voxels"
