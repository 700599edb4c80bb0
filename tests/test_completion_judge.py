"""The completion rules as a pure function: which evidence completes a series."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomnode.receive.completion import gap_lines, judge
from dicomnode.config import SeriesConfig
from storage.series import InstanceGeometry, OpenSeries

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
CFG = SeriesConfig(quiet_seconds=10, incomplete_timeout_seconds=60)
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def stack(n: int, skip: tuple[int, ...] = (), assoc: str = "a1", orientation: tuple[float, ...] = AXIAL, spacing: float = 2.5) -> list[InstanceGeometry]:
    o = np.asarray(orientation)
    normal = np.cross(o[:3], o[3:])
    return [
        InstanceGeometry(tuple(float(v) for v in i * spacing * normal), orientation, None, 1, 1, assoc)  # type: ignore[arg-type]
        for i in range(n)
        if i not in skip
    ]


def series(count: int, idle: float, expected: int | None = None, temporal: int | None = None) -> OpenSeries:
    return OpenSeries(1, count, expected, temporal, NOW - timedelta(seconds=idle), 0)


def test_quiet_period() -> None:
    assert judge(series(10, 11), stack(10), NOW, CFG).reason == "quiet_period"
    assert not judge(series(10, 5), stack(10), NOW, CFG).complete


def test_expected_count_before_quiet_and_timeout_when_short() -> None:
    assert judge(series(10, 1, expected=10), stack(10), NOW, CFG).reason == "expected_count"
    v = judge(series(8, 30, expected=10), stack(8), NOW, CFG)
    assert not v.complete and "8 of 10" in (v.missing or "")
    v = judge(series(8, 61, expected=10), stack(8), NOW, CFG)
    assert v.reason == "incomplete_timeout" and "8 of 10" in (v.detail or "")


def test_gap_waits_for_the_incomplete_timeout() -> None:
    geo = stack(10, skip=(4,))
    assert "gap of 5.00 mm" in gap_lines(geo)[0]
    assert not judge(series(9, 30), geo, NOW, CFG).complete
    assert judge(series(9, 61), geo, NOW, CFG).reason == "incomplete_timeout"


def test_release_of_the_association_that_carried_everything() -> None:
    assert judge(series(10, 0), stack(10), NOW, CFG, released_assoc="a1").reason == "association_released"
    mixed = stack(5) + [g.__class__(g.position, g.orientation, None, 1, 1, "a2") for g in stack(10)[5:]]
    assert not judge(series(10, 0), mixed, NOW, CFG, released_assoc="a2").complete
    assert judge(series(10, 0), mixed, NOW, CFG, released_assoc="a2", released_carried=10).complete
    off = SeriesConfig(quiet_seconds=10, incomplete_timeout_seconds=60, complete_on_release=False)
    assert not judge(series(10, 0), stack(10), NOW, off, released_assoc="a1").complete
    # A lone single-frame slice is not a series (one-instance-per-association senders).
    assert not judge(series(1, 0), stack(1), NOW, CFG, released_assoc="a1").complete


def test_localizer_of_another_orientation_is_not_a_gap() -> None:
    geo = stack(10) + stack(2, orientation=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0), spacing=40)
    assert gap_lines(geo) == []


def test_temporal_positions_multiply_the_positions() -> None:
    geo = stack(10) * 2  # 10 positions x 2 of 3 temporal positions received
    v = judge(series(20, 1, temporal=3), geo, NOW, CFG)
    assert not v.complete and "20 of 30" in (v.missing or "")
    assert judge(series(30, 1, temporal=3), stack(10) * 3, NOW, CFG).reason == "expected_count"


@settings(max_examples=40, deadline=None)
@given(
    axis=st.lists(st.floats(-1, 1), min_size=3, max_size=3).filter(lambda v: np.linalg.norm(v) > 0.1),
    spacing=st.floats(0.5, 5.0),
    n=st.integers(5, 60),
    data=st.data(),
)
def test_gaps_found_in_any_orientation_iff_a_slice_is_missing(axis: list[float], spacing: float, n: int, data: st.DataObject) -> None:
    a = np.asarray(axis) / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    row = np.cross(a, helper)
    row /= np.linalg.norm(row)
    col = np.cross(a, row)
    orientation = (*row, *col)
    remove = data.draw(st.booleans())
    skip = (data.draw(st.integers(1, n - 2)),) if remove else ()
    geo = stack(n, skip=skip, orientation=orientation, spacing=spacing)
    data.draw(st.randoms()).shuffle(geo)
    assert bool(gap_lines(geo)) == remove
