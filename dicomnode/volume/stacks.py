"""Choosing and checking the stack of slices that becomes a volume.

Slices are ordered by their position along the slice normal, never by
InstanceNumber or file name.  A series that mixes stacks (localizers,
several acquisitions, echoes, temporal positions) yields its largest
consistent stack, and what was left out is recorded with the reason.
Defects are refused with a message that names the instances involved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dicomnode.dicom.geometry import (
    DEFAULT_GAP_FACTOR,
    Excluded,
    by_orientation,
    distance,
    find_gaps,
    slice_normal,
    split_repeats,
)
from dicomnode.errors import VolumeError
from dicomnode.volume.slices import SliceInfo

SPACING_TOLERANCE = 0.01  # relative: slice spacing may vary 1% before it counts as non-uniform

__all__ = ["Excluded", "Stack", "choose_stack"]


@dataclass
class Stack:
    """A sorted, checked stack of slices and its geometry."""

    slices: list[SliceInfo]
    row_dir: np.ndarray  # direction of increasing column index (x)
    col_dir: np.ndarray  # direction of increasing row index (y)
    normal: np.ndarray  # direction of increasing slice index (z)
    positions: np.ndarray  # distance of each slice along ``normal``, ascending (mm)
    spacing: tuple[float, float, float]  # (x, y, z) mm
    excluded: list[Excluded] = field(default_factory=list)
    uniform: bool = True


def _describe_orientation(o: Sequence[float]) -> str:
    n = np.cross(o[:3], o[3:])
    axis = int(np.argmax(np.abs(n)))
    if abs(n[axis]) > 0.999:
        return ("sagittal", "coronal", "axial")[axis]
    return "oblique"


def _is_localizer(group: Sequence[SliceInfo]) -> bool:
    return len(group) <= 3 or any("LOCALIZER" in s.image_type for s in group)


def _split_orientations(slices: list[SliceInfo], excluded: list[Excluded]) -> list[SliceInfo]:
    groups = by_orientation(slices)
    main_key, main = groups[0]
    for key, group in groups[1:]:
        if _is_localizer(group):
            excluded.append(Excluded(len(group), f"localizer or scout in another orientation ({_describe_orientation(key)})"))
        else:
            raise VolumeError(
                f"mixed orientations: {len(main)} {_describe_orientation(main_key)} images and {len(group)} "
                f"{_describe_orientation(key)} images (e.g. {group[0].label}) in one series"
            )
    return main


def _check_matrix(slices: list[SliceInfo]) -> None:
    shapes = {(s.rows, s.columns) for s in slices}
    if len(shapes) > 1:
        odd = [s for s in slices if (s.rows, s.columns) != (slices[0].rows, slices[0].columns)]
        raise VolumeError(
            f"inconsistent image size: {' and '.join(f'{r}x{c}' for r, c in sorted(shapes))} "
            f"(e.g. {slices[0].label} and {odd[0].label})"
        )
    spacings = {tuple(round(v, 4) for v in s.pixel_spacing) for s in slices if s.pixel_spacing}
    if len(spacings) > 1:
        raise VolumeError(f"inconsistent pixel spacing: {sorted(spacings)} mm")
    if any(s.samples_per_pixel != 1 for s in slices):
        raise VolumeError("colour images cannot become a volume (SamplesPerPixel is not 1)")


def choose_stack(
    slices: Sequence[SliceInfo],
    *,
    gap_factor: float = DEFAULT_GAP_FACTOR,
    allow_nonuniform: bool = False,
    prefer: Mapping[str, object] | None = None,
) -> Stack:
    """Select, sort and check the stack of ``slices`` that becomes the volume.

    Parameters
    ----------
    slices : sequence of SliceInfo
        Every image of the series, in any order.
    gap_factor : float
        A step above ``gap_factor`` x the median spacing is a missing slice.
    allow_nonuniform : bool
        Accept slice spacing that varies (the caller resamples); refused by default.
    prefer : mapping, optional
        Which stack to keep when positions repeat: ``{"echo": 2}``,
        ``{"temporal position": 1}`` or ``{"acquisition": 3}``.

    Raises
    ------
    VolumeError
        Missing or duplicate slices, mixed orientations, inconsistent sizes,
        non-uniform spacing or gantry tilt, each with the instances involved.
    """
    excluded: list[Excluded] = []
    usable = [s for s in slices if s.position is not None and s.orientation is not None]
    if len(usable) < len(slices):
        excluded.append(Excluded(len(slices) - len(usable), "no ImagePositionPatient/ImageOrientationPatient"))
    if not usable:
        raise VolumeError("no image in the series has a position and orientation: it cannot become a volume")
    main = _split_orientations(usable, excluded)
    o = np.asarray(main[0].orientation, dtype=float)
    row_dir, col_dir = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
    if abs(float(np.dot(row_dir, col_dir))) > 1e-3:
        raise VolumeError(f"ImageOrientationPatient of {main[0].label} is not orthogonal")
    normal = slice_normal(o.tolist())
    main = split_repeats(main, normal, excluded, prefer)
    _check_matrix(main)
    ordered = sorted(main, key=lambda s: distance(s, normal))
    pos = np.array([s.position for s in ordered], dtype=float)
    d = pos @ normal
    px = ordered[0].pixel_spacing or (1.0, 1.0)
    if len(ordered) == 1:
        thickness = 1.0
        return Stack(ordered, row_dir, col_dir, normal, d, (px[1], px[0], thickness), excluded)
    gaps = find_gaps(d, gap_factor)  # the rule series completion applies too (dicomnode.dicom.geometry)
    if gaps:
        g = gaps[0]
        raise VolumeError(f"missing slice(s): a {g.describe(ordered[g.index].label, ordered[g.index + 1].label)}")
    steps = np.diff(d)
    median = float(np.median(steps))
    uniform = bool(np.all(np.abs(steps - median) <= SPACING_TOLERANCE * median + 1e-3))
    if not uniform and not allow_nonuniform:
        raise VolumeError(
            f"non-uniform slice spacing: steps from {steps.min():.3f} to {steps.max():.3f} mm "
            "(set the volume policy to resample to accept it)"
        )
    # Gantry tilt: successive positions drift within the image plane.
    drift = pos[-1] - pos[0] - (d[-1] - d[0]) * normal
    length = d[-1] - d[0]
    if length > 0 and np.linalg.norm(drift) / length > 1e-3:
        angle = math.degrees(math.atan(np.linalg.norm(drift) / length))
        raise VolumeError(
            f"gantry tilt of {angle:.1f} degrees (the slices are sheared along the stack): "
            "tilt correction is not enabled"
        )
    return Stack(ordered, row_dir, col_dir, normal, d, (px[1], px[0], median), excluded, uniform)
