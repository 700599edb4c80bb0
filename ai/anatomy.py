"""Is this the anatomy the model is for?  A plausibility gate on the post-processed label map.

A chest model run on a head CT (labelled CHEST by mistake) still finds
"lung" in the air around the skull; the measurements that follow are
nonsense.  :func:`assess` checks the organs that a bundle's ``anatomy`` key
names: each present, of a plausible volume and cranio-caudal extent, a
right/left pair on the right sides of the patient (from the direction
matrix, so any patient position or image orientation works), and says
which organs the scan range or field of view cuts off (``partial``: an
apex-only scan is a chest, but its lung volumes are not whole lungs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cc3d
import numpy as np

#: Patient direction (LPS axis, sign) -> the side it points to.
_SIDE = {(0, 1): "left", (0, -1): "right", (1, 1): "posterior", (1, -1): "anterior", (2, 1): "superior", (2, -1): "inferior"}


@dataclass(frozen=True)
class AnatomySpec:
    """The organs a bundle expects (``anatomy`` of its manifest).

    Attributes
    ----------
    labels : tuple of int
        The organ labels that must be present.
    paired : (int, int), optional
        ``(right, left)``: the first label must lie on the patient's right
        of the second (e.g. the right and the left lung).
    volume_ml : (float, float)
        Plausible volume of each organ (with the lesions it contains).
    min_extent_mm : float
        Least cranio-caudal extent of each organ that the scan covers whole.
    min_fill : float
        Least fraction of its bounding box that each organ fills: a lung is a
        solid (a third to two thirds of its box), the air around a head that
        a chest model takes for lung is a thin shell (a few percent).
    partial_min_ml : float
        Least volume of an organ that the scan range cuts (it reaches the
        first or last slice: an apex-only chest); smaller, it is noise or
        another body part.  An organ cut by the field of view in-plane gets
        no such allowance.
    min_inside_body : float
        Least share of each organ's voxels that lie inside the body's outline
        on their axial slice (see :func:`inside_body`); 0 turns the check off.
        Lungs lie within the chest wall; the air around a head that a chest
        model takes for lung lies outside the outline.
    """

    labels: tuple[int, ...]
    paired: tuple[int, int] | None = None
    volume_ml: tuple[float, float] = (0.0, math.inf)
    min_extent_mm: float = 0.0
    min_fill: float = 0.15
    partial_min_ml: float = 0.0
    min_inside_body: float = 0.0


@dataclass(frozen=True)
class Organ:
    """What the gate found of one organ label."""

    value: int
    name: str
    volume_ml: float
    extent_mm: float  # cranio-caudal
    fill: float  # fraction of its bounding box
    centre_lps_mm: tuple[float, float, float]  # centroid relative to the first voxel's centre, LPS
    cut: tuple[str, ...] = ()  # sides where it reaches the edge of the volume: "superior", "left", ...
    cut_by_range: bool = False  # at the first or last slice along the cranio-caudal axis (the scan range)
    inside_body: float | None = None  # share of its voxels inside the body outline (None: not checked)


@dataclass(frozen=True)
class AnatomyVerdict:
    """The gate's answer: may the model's measurements be trusted as those of the anatomy it is for?"""

    applicable: bool
    reason: str
    partial: bool = False  # an organ is cut off by the scan range or the field of view
    cut_off: tuple[str, ...] = ()  # e.g. "'right lung' at the inferior end"
    organs: tuple[Organ, ...] = ()


EDGE_FRACTION = 0.05  # an organ is cut by an edge when its cross-section there exceeds 5 % of its largest one


def edge_sides(direction: np.ndarray) -> list[tuple[str, str]]:
    """For each array axis (z, y, x): the patient side of its first and of its last index.

    Parameters
    ----------
    direction : ndarray
        3x3, column i the LPS direction of index axis i (x, y, z).

    Returns
    -------
    list of (str, str)
        E.g. ``("inferior", "superior")`` for the z axis of a plain axial CT.
    """
    out = []
    for axis in range(3):
        col = np.asarray(direction, dtype=np.float64)[:, 2 - axis]
        j = int(np.argmax(np.abs(col)))
        sign = 1 if col[j] > 0 else -1
        out.append((_SIDE[(j, -sign)], _SIDE[(j, sign)]))
    return out


def _organ(labels: np.ndarray, value: int, name: str, spacing_zyx: np.ndarray, direction: np.ndarray, volume_ml: float | None) -> Organ:
    mask = labels == value
    pz = np.count_nonzero(mask, axis=(1, 2))
    n = int(pz.sum())
    if n == 0:
        return Organ(value, name, 0.0, 0.0, 0.0, (0.0, 0.0, 0.0))
    zs = np.flatnonzero(pz)
    slab = mask[int(zs[0]) : int(zs[-1]) + 1]  # the slices it lies on: the other profiles cost less
    profiles = [pz, np.count_nonzero(slab, axis=2).sum(axis=0), np.count_nonzero(slab, axis=(0, 1))]
    centre_idx = np.array([float(np.arange(len(p)) @ p) / n for p in profiles])  # [z, y, x]
    sides = edge_sides(direction)
    cut: list[str] = []
    extent = 0.0
    cranio = int(np.argmax([abs(float(direction[2, 2 - a])) for a in range(3)]))  # the array axis most along S
    by_range = False
    box = 1
    for axis, p in enumerate(profiles):
        idx = np.flatnonzero(p)
        box *= int(idx[-1] - idx[0] + 1)
        # Cut at an edge: it reaches the edge with a real cross-section, not the tip of an apex grazing the first slice.
        floor = EDGE_FRACTION * float(p.max())
        ends = [i for i, touches in enumerate((p[0] > floor, p[-1] > floor)) if touches]
        cut += [sides[axis][i] for i in ends]
        if axis == cranio:
            extent = float((idx[-1] - idx[0] + 1) * spacing_zyx[axis])
            by_range = bool(ends)
    # LPS offset of the centroid: direction columns are index axes (x, y, z), scaled by their spacing.
    d = np.asarray(direction, dtype=np.float64) @ (centre_idx[::-1] * spacing_zyx[::-1])
    voxel_ml = float(np.prod(spacing_zyx)) / 1000
    vol = volume_ml if volume_ml is not None else n * voxel_ml
    return Organ(value, name, vol, extent, n / box, (float(d[0]), float(d[1]), float(d[2])), tuple(cut), by_range)


def assess(
    labels: np.ndarray,
    spacing_xyz: Sequence[float],
    direction: np.ndarray,
    spec: AnatomySpec,
    names: Mapping[int, str],
    volumes_ml: Mapping[int, float] | None = None,
    inside: Mapping[int, float] | None = None,
) -> AnatomyVerdict:
    """Check the organs of ``spec`` in a label map.

    Parameters
    ----------
    labels : ndarray ``[z, y, x]``
        The post-processed label map.
    spacing_xyz : (float, float, float)
        Voxel spacing in mm.
    direction : ndarray
        3x3, column i the LPS direction of index axis i (x, y, z); LPS +x is
        the patient's left.
    spec : AnatomySpec
        What to expect.
    names : mapping
        Label value -> name, for the reason.
    volumes_ml : mapping, optional
        Organ volumes as measured (with the lesions they contain); by default
        the label's voxel count.
    inside : mapping, optional
        Per organ label, the share of its voxels inside the body outline
        (:func:`inside_body`); checked against ``spec.min_inside_body``.

    Returns
    -------
    AnatomyVerdict
        ``applicable`` False with the reason in words when an organ is
        missing, too small or large, too short, or on the wrong side.
    """
    spacing_zyx = np.asarray([float(v) for v in spacing_xyz][::-1])
    organs = [
        dataclasses.replace(
            _organ(labels, v, names.get(v, str(v)), spacing_zyx, direction, (volumes_ml or {}).get(v)),
            inside_body=(inside or {}).get(v),
        )
        for v in spec.labels
    ]
    problems: list[str] = []
    cut_off: list[str] = []
    lo, hi = spec.volume_ml
    for o in organs:
        if o.volume_ml <= 0:
            problems.append(f"label '{o.name}' is absent")
            continue
        if o.cut:
            cut_off.append(f"'{o.name}' at the {' and '.join(o.cut)} edge")
        # Cut by the scan range (an apex-only chest), an organ may be small and short; cut by the field of view
        # (or "organ" in the air around the body), it gets no allowance.
        low = spec.partial_min_ml if o.cut_by_range else lo
        if not low <= o.volume_ml <= hi:
            problems.append(f"label '{o.name}' {o.volume_ml:.1f} mL (expected {low:g}-{hi:g} mL{' for an organ cut by the scan range' if o.cut_by_range else ''})")
        elif o.fill < spec.min_fill:
            problems.append(
                f"label '{o.name}' fills {100 * o.fill:.0f}% of its bounding box (expected at least {100 * spec.min_fill:g}%): "
                "a shell or scattered specks, not an organ"
            )
        elif o.inside_body is not None and o.inside_body < spec.min_inside_body:
            problems.append(
                f"label '{o.name}' lies {100 * (1 - o.inside_body):.0f}% outside the body's outline "
                f"(expected at most {100 * (1 - spec.min_inside_body):g}%): air around the patient, not an organ"
            )
        elif not o.cut_by_range and o.extent_mm < spec.min_extent_mm:
            problems.append(f"label '{o.name}' spans {o.extent_mm:.0f} mm cranio-caudally (expected at least {spec.min_extent_mm:g} mm)")
    if spec.paired is not None:
        by_value = {o.value: o for o in organs}
        right, left = by_value[spec.paired[0]], by_value[spec.paired[1]]
        if right.volume_ml > 0 and left.volume_ml > 0 and right.centre_lps_mm[0] >= left.centre_lps_mm[0]:
            problems.append(
                f"label '{right.name}' lies on the patient's left of label '{left.name}' "
                f"({right.centre_lps_mm[0] - left.centre_lps_mm[0]:+.0f} mm along L)"
            )
    partial = bool(cut_off)
    if problems:
        what = " and ".join(o.name for o in organs)
        reason = f"no plausible {what}: " + "; ".join(problems)
    else:
        reason = "plausible: " + ", ".join(f"'{o.name}' {o.volume_ml:.0f} mL" for o in organs)
    if partial:
        reason += "; partial coverage: " + "; ".join(cut_off)
    return AnatomyVerdict(not problems, reason, partial, tuple(cut_off), tuple(organs))


def inside_body(
    image: np.ndarray, labels: np.ndarray, values: Sequence[int], direction: np.ndarray, body_above: float,
    spacing_xyz: Sequence[float], step_mm: float = 2.0,
) -> dict[int, float]:
    """Per label, the share of its voxels inside the body's outline on their axial slice.

    The body is ``image > body_above``; its outline on an axial slice is the
    body with its holes filled (whatever air no path along the slice joins
    to the slice's border: the lungs, the airways, the bowel).  Air around
    the patient, or around a head, is outside.  The slices are taken across
    the array axis most along the patient's S axis (any acquisition plane),
    and sampled every ``step_mm`` or so in each direction: the share does not
    need every voxel.

    Parameters
    ----------
    image, labels : ndarray ``[z, y, x]``
        Intensities (e.g. HU) and the label map, on one grid.
    values : sequence of int
        The labels to measure.
    direction : ndarray
        3x3, column i the LPS direction of index axis i (x, y, z).
    body_above : float
        Body threshold in the image's units (e.g. -500 HU).
    spacing_xyz : sequence of float
        Voxel spacing, mm.
    step_mm : float
        Sampling distance.

    Returns
    -------
    dict of int to float
        For each label present; a label with no voxel is left out.
    """
    axis = int(np.argmax([abs(float(direction[2, 2 - a])) for a in range(3)]))  # array axis most along S
    spacing_zyx = [float(v) for v in spacing_xyz][::-1]
    steps = tuple(max(1, int(step_mm // s)) for s in spacing_zyx)
    sl = tuple(slice(None, None, st) for st in steps)
    body = np.moveaxis(image[sl] > body_above, axis, 0)
    lab = np.moveaxis(labels[sl], axis, 0)
    counts = {int(v): [0, 0] for v in values}
    for k in range(body.shape[0]):
        present = [v for v in counts if (lab[k] == v).any()]
        if not present:
            continue
        outside = ~body[k]
        cc = cc3d.connected_components(outside, connectivity=4)
        border = np.unique(np.concatenate([cc[0], cc[-1], cc[:, 0], cc[:, -1]]))
        open_air = np.isin(cc, border[border > 0])
        for v in present:
            m = lab[k] == v
            counts[v][0] += int(np.count_nonzero(m & ~open_air))
            counts[v][1] += int(np.count_nonzero(m))
    return {v: a / n for v, (a, n) in counts.items() if n}
