"""One gap rule: series completion and volume reconstruction give the same verdict on the same series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import UID

from dicomnode.dicom.geometry import find_gaps, slice_normal
from dicomnode.dicom.header import parse_header
from dicomnode.errors import VolumeError
from dicomnode.receive.completion import gap_lines
from dicomnode.testing.synthetic import SeriesSpec, make_slice
from dicomnode.volume.reconstruct import reconstruct
from dicomnode.volume.slices import SliceInfo
from dicomnode.volume.stacks import choose_stack
from storage.series import InstanceGeometry

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def slice_info(i: int, position: tuple[float, float, float], orientation: tuple[float, ...] = AXIAL,
               temporal: int | None = None, image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")) -> SliceInfo:
    return SliceInfo(
        path=Path(f"IM{i:04d}.dcm"), frame=None, sop_uid=f"1.2.{i}", instance_number=i + 1, position=position,
        orientation=orientation, rows=8, columns=8, pixel_spacing=(1.0, 1.0), slope=1.0, intercept=0.0,  # type: ignore[arg-type]
        acquisition_number=1, temporal_position=temporal, echo_number=None, image_type=image_type,
        transfer_syntax="1.2.840.10008.1.2.1", bits_allocated=16, bits_stored=16, signed=True, samples_per_pixel=1,
        photometric="MONOCHROME2", pixel_offset=0,
    )


def geometry_of(s: SliceInfo) -> InstanceGeometry:
    """What the database holds of the same image."""
    return InstanceGeometry(s.position, s.orientation, s.temporal_position, s.acquisition_number, 1, "assoc")


def verdicts(slices: list[SliceInfo], factor: float = 1.5) -> tuple[bool, bool]:
    """(completion sees a gap, reconstruction refuses a gap)."""
    at_completion = bool(gap_lines([geometry_of(s) for s in slices], factor))
    try:
        choose_stack(slices, gap_factor=factor, allow_nonuniform=True)
        at_reconstruction = False
    except VolumeError as exc:
        at_reconstruction = "missing slice" in str(exc)
    return at_completion, at_reconstruction


def stack(distances: list[float], orientation: tuple[float, ...] = AXIAL, temporal: int | None = None, first: int = 0) -> list[SliceInfo]:
    n = slice_normal(orientation)
    return [slice_info(first + i, tuple(float(v) for v in d * n), orientation, temporal) for i, d in enumerate(distances)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("distances", "gap"),
    [
        ([2.5 * i for i in range(12)], False),  # whole
        ([2.5 * i for i in range(12) if i != 5], True),  # one slice missing
        ([2.5 * i for i in range(6)] + [12.5 + 3.75 + 2.5 * i for i in range(6)], False),  # 3.75 mm: exactly 1.5 x median
        ([2.5 * i for i in range(6)] + [12.5 + 3.76 + 2.5 * i for i in range(6)], True),  # just above
        ([2.5 * i + (1e-4 if i % 2 else -1e-4) for i in range(12) if i != 3], True),  # noise below the rounding
        ([0.0, 2.5, 5.0], False),  # too short to judge
        ([0.0, 10.0], False),
    ],
)
def test_the_same_verdict_at_completion_and_reconstruction(distances: list[float], gap: bool) -> None:
    assert verdicts(stack(distances)) == (gap, gap)


def test_a_localizer_in_another_orientation_is_left_out_by_both() -> None:
    series = stack([2.5 * i for i in range(12)]) + stack([0.0, 40.0], SAGITTAL, first=100)
    assert verdicts(series) == (False, False)


def test_repeated_positions_are_judged_on_the_stack_that_is_kept() -> None:
    # Two temporal positions; the second lacks a slice.  Reconstruction keeps the first (the larger),
    # which is whole, so completion must not wait for a slice the volume will never use.
    first = stack([2.5 * i for i in range(10)], temporal=1)
    second = stack([2.5 * i for i in range(10) if i != 4], temporal=2, first=50)
    assert verdicts(first + second) == (False, False)
    # And the other way round: the larger stack has the gap.
    first = stack([2.5 * i for i in range(12) if i != 6], temporal=1)
    second = stack([2.5 * i for i in range(8)], temporal=2, first=50)
    assert verdicts(first + second) == (True, True)


@settings(max_examples=150, deadline=None)
@given(
    axis=st.lists(st.floats(-1, 1), min_size=3, max_size=3).filter(lambda v: float(np.linalg.norm(v)) > 0.1),
    spacing=st.floats(0.5, 5.0),
    n=st.integers(3, 40),
    factor=st.floats(1.2, 2.5),
    data=st.data(),
)
def test_same_verdict_for_any_stack(axis: list[float], spacing: float, n: int, factor: float, data: st.DataObject) -> None:
    a = np.asarray(axis) / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    row = np.cross(a, helper)
    row /= np.linalg.norm(row)
    col = np.cross(a, row)
    orientation = tuple(float(v) for v in (*row, *col))
    steps = [spacing * data.draw(st.sampled_from([1.0, 1.0, 1.0, 1.3, 1.5, 1.6, 2.0, 3.0])) for _ in range(n - 1)]
    distances = [0.0] + list(np.cumsum(steps))
    noise = data.draw(st.floats(0, 5e-4))
    distances = [d + (noise if i % 2 else 0.0) for i, d in enumerate(distances)]
    slices = stack(distances, orientation)
    data.draw(st.randoms()).shuffle(slices)
    at_completion, at_reconstruction = verdicts(slices, factor)
    assert at_completion == at_reconstruction
    assert at_completion == bool(find_gaps(distances, factor))


def test_real_files_through_both_readers(tmp_path: Path) -> None:
    """The header walker (what the database records) and the volume reader agree on a series with a hole."""
    spec = SeriesSpec(slices=14, rows=16, columns=16, seed="gap-pin")
    paths = []
    for i in range(spec.slices):
        if i == 7:
            continue
        ds = make_slice(spec, i)
        p = tmp_path / f"IM{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    geometry = []
    for p in paths:
        syntax = UID(str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID))
        header, _ = parse_header(_dataset_bytes(p), syntax)
        geometry.append(InstanceGeometry(header.position, header.orientation, header.temporal_position, header.acquisition_number, 1, "a"))
    lines = gap_lines(geometry)
    assert len(lines) == 1 and "gap of 5.00 mm" in lines[0]
    with pytest.raises(VolumeError, match=r"missing slice\(s\): a gap of 5\.00 mm between instance 7 of 13 \(InstanceNumber 7\) at .* "
                       r"and instance 8 of 13 \(InstanceNumber 9\) at "):
        reconstruct(paths)


def _dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, without preamble and file meta (what a C-STORE carries)."""
    raw = path.read_bytes()
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length :]
