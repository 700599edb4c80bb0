"""SEG, TID 1500 SR and key images: dciodvfy-clean, read back with highdicom, identity of the source."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from ai.bundle import load_bundle
from ai.engine import Result
from ai.measure import measure
from dicomnode.errors import OutputError
from dicomnode.outputs import IDENTITY, OutputOptions, write_outputs
from dicomnode.volume import Volume, reconstruct
from tests.helpers import require_tool

BUNDLE = load_bundle(Path(__file__).resolve().parents[1] / "ai" / "bundles" / "chest-ct-lungs-nodules")


def sphere(shape: tuple[int, int, int], centre: tuple[float, float, float], r: float) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


def result_for(vol: Volume, empty: bool = False) -> Result:
    """A fabricated model result: a 'lung' block and two 'nodules', with real measurements."""
    labels = np.zeros(vol.array.shape, dtype=np.uint8)
    if not empty:
        labels[4:16, 10:40, 8:30] = 1
        labels[sphere(labels.shape, (8, 25, 45), 4)] = 2
        labels[sphere(labels.shape, (14, 45, 45), 3)] = 2
    probs = np.stack([(labels == k).astype(np.float32) * 0.9 + 0.05 for k in range(3)])
    m = measure(labels, vol.spacing, {1: "lung", 2: "nodule"}, image=vol.array, lesion_values=[2])
    return Result(labels=labels, probabilities=probs, measurements=m, class_probabilities={"nodule present": 0.83, "no nodule": 0.17})


@pytest.fixture
def case(make_series: Callable[..., list[Path]]) -> tuple[list[Path], Volume]:
    files = make_series("out", slices=20, rows=64, columns=64)
    vol = reconstruct(files)
    by_uid = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    return [by_uid[u] for u in vol.sop_uids], vol


def dciodvfy_errors(path: Path) -> list[str]:
    exe = require_tool("dciodvfy")
    r = subprocess.run([exe, str(path)], capture_output=True, text=True)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


def test_seg_sr_and_key_images_are_valid_and_read_back(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    res = result_for(vol)
    out = write_outputs(sources, vol, res, BUNDLE, tmp_path / "out", job_key="1.2.3/1")
    kinds = [o.kind for o in out]
    assert kinds[:2] == ["seg", "sr"] and 1 <= kinds.count("preview") <= 4
    for o in out:
        assert dciodvfy_errors(o.path) == [], o.kind
    src = dcmread(sources[0], stop_before_pixels=True)
    for o in out:
        ds = dcmread(o.path, stop_before_pixels=True)
        for key in IDENTITY:
            assert ds.get(key) == src.get(key), f"{o.kind}: {key}"
        assert ds.SeriesInstanceUID not in (src.SeriesInstanceUID,) and ds.StudyInstanceUID == src.StudyInstanceUID
    seg = hd.seg.segread(out[0].path)
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID and seg.SegmentationType == "BINARY"
    names = {s.SegmentNumber: s.SegmentLabel for s in seg.SegmentSequence}
    assert names == {1: "lung", 2: "nodule"}
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence] == ["39607008", "27925004"]
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources]
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2], assert_missing_frames_are_empty=True)
    assert (px[..., 0] == (res.labels == 1)).all() and (px[..., 1] == (res.labels == 2)).all()
    assert seg.NumberOfFrames < 2 * len(sources)  # empty frames omitted
    sr = hd.sr.srread(out[1].path)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    volumes = sorted(round(float(m.value), 3) for g in groups for m in g.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume")))
    expected = sorted([round(res.measurements[0].volume_ml, 3), round(res.measurements[1].volume_ml, 3)]
                      + [round(les.volume_ml, 3) for les in res.measurements[1].lesions])
    assert volumes == expected
    assert all(g.referenced_segment is not None for g in groups)
    assert len(sr.content.get_planar_roi_measurement_groups()) == 0
    text = dcmread(out[1].path).to_json()
    assert "nodule present" in text and "Probability" in text and "not for diagnosis" in str(sr.SeriesDescription)


def test_uids_are_deterministic_per_job(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    res = result_for(vol)
    opts = OutputOptions(preview=False)
    a = write_outputs(sources, vol, res, BUNDLE, tmp_path / "a", job_key="1.2.3/1", options=opts)
    b = write_outputs(sources, vol, res, BUNDLE, tmp_path / "b", job_key="1.2.3/1", options=opts)
    c = write_outputs(sources, vol, res, BUNDLE, tmp_path / "c", job_key="1.2.3/2", options=opts)
    ids = [(o.sop_instance_uid, o.series_instance_uid) for o in a]
    assert ids == [(o.sop_instance_uid, o.series_instance_uid) for o in b]
    assert not {u for pair in ids for u in pair} & {u for o in c for u in (o.sop_instance_uid, o.series_instance_uid)}
    assert dcmread(a[0].path).PixelData == dcmread(b[0].path).PixelData  # the same job writes the same SEG


def test_fractional_and_all_frames(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    res = result_for(vol)
    [frac] = write_outputs(sources, vol, res, BUNDLE, tmp_path / "f", job_key="k/1",
                           options=OutputOptions(sr=False, preview=False, fractional=True, keep_empty_frames=True))
    assert dciodvfy_errors(frac.path) == []
    seg = hd.seg.segread(frac.path)
    assert seg.SegmentationType == "FRACTIONAL" and seg.NumberOfFrames == 2 * len(sources)
    [sparse] = write_outputs(sources, vol, res, BUNDLE, tmp_path / "s", job_key="k/1", options=OutputOptions(sr=False, preview=False))
    assert sparse.sop_instance_uid != frac.sop_instance_uid  # different content, different UID


def test_an_empty_result_still_makes_valid_outputs(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    out = write_outputs(sources, vol, result_for(vol, empty=True), BUNDLE, tmp_path / "e", job_key="k/1")
    for o in out:
        assert dciodvfy_errors(o.path) == [], o.kind
    seg = hd.seg.segread(out[0].path)
    assert seg.NumberOfFrames == 2 * len(sources)  # an explicit, all-empty segmentation


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s, v, r: (s[:-1], v, r), "19 source file(s) for 20 slices"),
        (lambda s, v, r: (s, v, Result(labels=r.labels[:-1])), "does not match the volume"),
        (lambda s, v, r: (s, v, Result(labels=None)), "produced no label map"),
    ],
)
def test_bad_inputs_are_refused_readably(case: tuple[list[Path], Volume], tmp_path: Path, mutate: Callable[..., tuple], message: str) -> None:
    sources, vol = case
    s, v, r = mutate(sources, vol, result_for(vol))
    with pytest.raises(OutputError, match=re.escape(message)):
        write_outputs(s, v, r, BUNDLE, tmp_path / "x", job_key="k/1")


def test_fractional_needs_probabilities(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    res = result_for(vol)
    res.probabilities = None
    with pytest.raises(OutputError, match="FRACTIONAL segmentation needs the model's probabilities"):
        write_outputs(sources, vol, res, BUNDLE, tmp_path / "x", job_key="k/1", options=OutputOptions(fractional=True))
