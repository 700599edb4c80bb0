"""Where images lie: slice normals, which images form one stack, and the missing-slice rule.

One home for the rules that both series completion (from the positions in
the database) and volume reconstruction (from the files) apply, so that a
series judged whole at completion is never refused for a gap when it is
reconstructed, and the reverse:

- images are grouped by orientation, rounded to :data:`ORIENTATION_DECIMALS`;
  the largest group is the stack, the others are localizers or a mix;
- when positions repeat in that group (temporal positions, echoes,
  acquisitions), the largest sub-stack is kept (:func:`split_repeats`);
- a slice is missing where the step between neighbouring positions along
  the normal, rounded to :data:`POSITION_DECIMALS`, is larger than
  ``factor`` times the median step (:func:`find_gaps`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from dicomnode.errors import VolumeError

ORIENTATION_DECIMALS = 3
POSITION_DECIMALS = 3  # mm: positions closer than this are one position
DUPLICATE_DECIMALS = 2  # mm: two images this close along the normal are at the same place
DEFAULT_GAP_FACTOR = 1.5


class Placed(Protocol):
    """An image with a place in space (a stored file, one frame, or a database row)."""

    @property
    def position(self) -> tuple[float, float, float] | None: ...
    @property
    def orientation(self) -> tuple[float, ...] | None: ...
    @property
    def temporal_position(self) -> int | None: ...
    @property
    def echo_number(self) -> int | None: ...
    @property
    def acquisition_number(self) -> int | None: ...
    @property
    def label(self) -> str: ...


P = TypeVar("P", bound=Placed)


@dataclass(frozen=True)
class Excluded:
    """Images left out of the volume, and why."""

    count: int
    reason: str


@dataclass(frozen=True)
class Gap:
    """A step between two neighbouring slice positions that is too large."""

    index: int  # of the lower position in the sorted, distinct positions
    lower: float  # mm along the normal
    upper: float
    median: float  # the median step

    @property
    def step(self) -> float:
        """The step, in mm."""
        return self.upper - self.lower

    @property
    def missing(self) -> int:
        """About how many slices fit in the gap."""
        return round(self.step / self.median) - 1

    def describe(self, lower: str | None = None, upper: str | None = None) -> str:
        """E.g. ``gap of 5.00 mm between slices at 7.50 and 12.50 mm (median spacing 2.50 mm, about 1 slice(s) missing)``.

        With ``lower`` and ``upper`` (how to name the two images), they are named instead of "slices".
        """
        where = (
            f"{lower} at {self.lower:.2f} mm and {upper} at {self.upper:.2f} mm"
            if lower is not None and upper is not None
            else f"slices at {self.lower:.2f} and {self.upper:.2f} mm"
        )
        return f"gap of {self.step:.2f} mm between {where} (median spacing {self.median:.2f} mm, about {self.missing} slice(s) missing)"


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """The unit normal (row x column direction) of an ImageOrientationPatient."""
    o = np.asarray(orientation, dtype=float)
    n = np.cross(o[:3], o[3:6])
    length = float(np.linalg.norm(n))
    return n / length if length > 0 else n


def orientation_key(orientation: Sequence[float]) -> tuple[float, ...]:
    """The orientation rounded so that images of one stack share it (``+ 0.0`` folds ``-0.0`` into ``0.0``)."""
    return tuple(round(float(v), ORIENTATION_DECIMALS) + 0.0 for v in orientation)


def distance(item: Placed, normal: np.ndarray) -> float:
    """How far along ``normal`` the image lies, in mm."""
    assert item.position is not None
    return float(np.dot(item.position, normal))


def by_orientation(items: Sequence[P]) -> list[tuple[tuple[float, ...], list[P]]]:
    """Images with a position and an orientation, grouped by orientation, largest group first."""
    groups: dict[tuple[float, ...], list[P]] = defaultdict(list)
    for s in items:
        if s.position is not None and s.orientation is not None and len(s.orientation) == 6:
            groups[orientation_key(s.orientation)].append(s)
    return sorted(groups.items(), key=lambda kv: -len(kv[1]))


def duplicates(items: Sequence[P], normal: np.ndarray) -> list[tuple[P, P]]:
    """Pairs of images at the same place along ``normal`` (first seen, then the other)."""
    seen: dict[float, P] = {}
    dups = []
    for s in items:
        d = round(distance(s, normal), DUPLICATE_DECIMALS)
        if d in seen:
            dups.append((seen[d], s))
        else:
            seen[d] = s
    return dups


SPLITTERS: list[tuple[str, Callable[[Placed], object]]] = [
    ("temporal position", lambda s: s.temporal_position),
    ("echo", lambda s: s.echo_number),
    ("acquisition", lambda s: s.acquisition_number),
]


def split_repeats(
    items: list[P], normal: np.ndarray, excluded: list[Excluded], prefer: Mapping[str, object] | None = None
) -> list[P]:
    """Pick one stack when positions repeat across temporal positions, echoes or acquisitions.

    The largest stack wins (ties: the lowest key) unless ``prefer`` names the
    value to keep, e.g. ``{"echo": 2}``.  What is left out is appended to ``excluded``.

    Raises
    ------
    VolumeError
        ``prefer`` names a value the series lacks, or positions repeat and no
        key separates them (duplicate slices).
    """
    if not duplicates(items, normal):
        return items
    for name, key in SPLITTERS:
        groups: dict[object, list[P]] = defaultdict(list)
        for s in items:
            groups[key(s)].append(s)
        if len(groups) < 2 or any(duplicates(g, normal) for g in groups.values()):
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
    dups = duplicates(items, normal)
    a, b = dups[0]
    raise VolumeError(
        f"duplicate slice positions: {a.label} and {b.label} are both at "
        f"{distance(a, normal):.2f} mm along the slice normal ({len(dups)} duplicate(s) in all)"
    )


def find_gaps(distances: Sequence[float], factor: float = DEFAULT_GAP_FACTOR) -> list[Gap]:
    """Steps between neighbouring positions larger than ``factor`` x the median step.

    Positions are rounded to :data:`POSITION_DECIMALS` and repeats count
    once.  Fewer than three distinct positions have no gap (two positions
    are one step, which is its own median).

    Parameters
    ----------
    distances : sequence of float
        Positions along the slice normal (mm), in any order.
    factor : float
        How much larger than the median a step must be to be a gap.

    Returns
    -------
    list of Gap
        In ascending order of position; empty when nothing is missing.
    """
    ordered = sorted({round(float(d), POSITION_DECIMALS) for d in distances})
    if len(ordered) < 3:
        return []
    steps = [b - a for a, b in zip(ordered, ordered[1:])]
    median = statistics.median(steps)
    if median <= 0:
        return []
    return [Gap(i, a, b, median) for i, (a, b, step) in enumerate(zip(ordered, ordered[1:], steps)) if step > factor * median]


def stack_distances(items: Sequence[Placed], prefer: Mapping[str, object] | None = None) -> list[float]:
    """Positions along the normal of the images a volume would be built from (empty when there is no stack).

    The largest orientation group, and within it, where positions repeat,
    the sub-stack :func:`split_repeats` keeps.  Repeats that no key separates
    are left as they are (reconstruction will refuse them with its own message).
    """
    groups = by_orientation(items)
    if not groups:
        return []
    _key, main = groups[0]
    normal = slice_normal(main[0].orientation or ())  # as the volume's: from the first image, not the rounded key
    try:
        main = split_repeats(list(main), normal, [], prefer)
    except VolumeError:
        pass
    return [distance(s, normal) for s in main]
