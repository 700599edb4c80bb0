"""Choosing and checking the stack of slices that becomes a volume.

Slices are ordered by their position along the slice normal, never by
InstanceNumber or file name.  A series that mixes stacks (localizers,
several acquisitions, echoes, temporal positions) yields its largest
consistent stack, and what was left out is recorded with the reason.
Defects are refused with a message that names the instances involved.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dicomnode.volume.slices import SliceInfo, VolumeError

ORIENTATION_DECIMALS = 3
SPACING_TOLERANCE = 0.01  # relative: slice spacing may vary 1% before it counts as non-uniform


@dataclass(frozen=True)
class Excluded:
    """Images left out of the volume, and why."""

    count: int
    reason: str


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
    groups: dict[tuple[float, ...], list[SliceInfo]] = defaultdict(list)
    for s in slices:
        assert s.orientation is not None
        groups[tuple(round(v, ORIENTATION_DECIMALS) + 0.0 for v in s.orientation)].append(s)
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    main_key, main = ordered[0]
    for key, group in ordered[1:]:
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


def _duplicates(slices: Sequence[SliceInfo], normal: np.ndarray) -> list[tuple[SliceInfo, SliceInfo]]:
    seen: dict[float, SliceInfo] = {}
    dups = []
    for s in slices:
        d = round(float(np.dot(s.position, normal)), 2)  # type: ignore[arg-type]
        if d in seen:
            dups.append((seen[d], s))
        else:
            seen[d] = s
    return dups


_SPLITTERS: list[tuple[str, Callable[[SliceInfo], object]]] = [
    ("temporal position", lambda s: s.temporal_position),
    ("echo", lambda s: s.echo_number),
    ("acquisition", lambda s: s.acquisition_number),
]


def _split_repeats(
    slices: list[SliceInfo],
    normal: np.ndarray,
    excluded: list[Excluded],
    prefer: Mapping[str, object] | None = None,
) -> list[SliceInfo]:
    """Pick one stack when positions repeat across temporal positions, echoes or acquisitions.

    The largest stack wins (ties: the lowest key) unless ``prefer`` names the
    value to keep, e.g. ``{"echo": 2}``.
    """
    if not _duplicates(slices, normal):
        return slices
    for name, key in _SPLITTERS:
        groups: dict[object, list[SliceInfo]] = defaultdict(list)
        for s in slices:
            groups[key(s)].append(s)
        if len(groups) < 2 or any(_duplicates(g, normal) for g in groups.values()):
            continue
        # Largest first; ties go to the first echo/position/acquisition (unnumbered first).
        ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0] is not None, kv[0] if isinstance(kv[0], int) else 0))
        if prefer and name in prefer:
            wanted = [kv for kv in ordered if str(kv[0]) == str(prefer[name])]
            if not wanted:
                raise VolumeError(
                    f"the rule asks for {name} {prefer[name]}, but the series has {name}s "
                    f"{', '.join(str(k) for k, _ in ordered)}"
                )
            ordered.remove(wanted[0])
            ordered.insert(0, wanted[0])
        chosen_key, chosen = ordered[0]
        for k, g in ordered[1:]:
            excluded.append(Excluded(len(g), f"other {name} ({k}); kept {name} {chosen_key}"))
        return chosen
    a, b = _duplicates(slices, normal)[0]
    n = len(_duplicates(slices, normal))
    raise VolumeError(
        f"duplicate slice positions: {a.label} and {b.label} are both at "
        f"{float(np.dot(a.position, normal)):.2f} mm along the slice normal ({n} duplicate(s) in all)"  # type: ignore[arg-type]
    )


def choose_stack(
    slices: Sequence[SliceInfo],
    *,
    gap_factor: float = 1.5,
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
    normal = np.cross(row_dir, col_dir)
    main = _split_repeats(main, normal, excluded, prefer)
    _check_matrix(main)
    ordered = sorted(main, key=lambda s: float(np.dot(s.position, normal)))  # type: ignore[arg-type]
    pos = np.array([s.position for s in ordered], dtype=float)
    d = pos @ normal
    px = ordered[0].pixel_spacing or (1.0, 1.0)
    if len(ordered) == 1:
        thickness = 1.0
        return Stack(ordered, row_dir, col_dir, normal, d, (px[1], px[0], thickness), excluded)
    steps = np.diff(d)
    median = float(np.median(steps))
    for i, step in enumerate(steps):
        if step > gap_factor * median:
            missing = round(step / median) - 1
            raise VolumeError(
                f"missing slice(s): a gap of {step:.2f} mm between {ordered[i].label} at {d[i]:.2f} mm and "
                f"{ordered[i + 1].label} at {d[i + 1]:.2f} mm (median spacing {median:.2f} mm, about "
                f"{missing} slice(s) missing)"
            )
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
