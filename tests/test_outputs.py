"""SEG, TID 1500 SR and key images: dciodvfy-clean, read back with highdicom, identity of the source."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from ai.bundle import Label, load_bundle
from ai.engine import Result
from ai.findings import findings
from ai.measure import measure
from dicomnode.errors import OutputError
from dicomnode.outputs.writer import IDENTITY, OutputFile, OutputOptions, write_outputs
from dicomnode.volume.reconstruct import Volume, reconstruct
from tests.helpers import require_tool

SHIPPED = Path(__file__).resolve().parents[1] / "ai" / "bundles" / "chest-ct-lungs-nodules"
# The writers take names and codes from the bundle: these tests pin a two-label one (1 lung, 2 nodule) of the shipped
# bundle's identity, so that they do not depend on which labels the shipped model happens to have.
BUNDLE = replace(
    load_bundle(SHIPPED),
    labels=(
        Label(value=1, name="lung", snomed_code="39607008", snomed_meaning="Lung", color=(0, 128, 255)),
        Label(value=2, name="nodule", snomed_code="27925004", snomed_meaning="Nodule", color=(255, 64, 0), lesion=True),
    ),
    scan_score=replace(load_bundle(SHIPPED).scan_score, label=2),
)
VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")
DIAMETER = hd.sr.CodedConcept("81827009", "SCT", "Diameter")
NO_FILES = OutputOptions(sr=False, preview=False, kos=False)


def sphere(shape: tuple[int, int, int], centre: tuple[float, float, float], r: float) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


def fabricate(vol: Volume, labels: np.ndarray, classes: bool = True) -> Result:
    """A model result for ``labels``, with real measurements, probabilities and (optionally) class scores."""
    probs = np.stack([(labels == k).astype(np.float32) * 0.9 + 0.05 for k in range(3)])
    m = measure(labels, vol.spacing, {1: "lung", 2: "nodule"}, image=vol.array, lesion_values=[2])
    scores = {"nodule present": 0.83, "no nodule": 0.17} if classes else {}
    return Result(labels=labels, probabilities=probs, measurements=m, class_probabilities=scores, findings=findings(m, BUNDLE))


def result_for(vol: Volume, empty: bool = False, classes: bool = True) -> Result:
    """A 'lung' block and two 'nodules' (or nothing)."""
    labels = np.zeros(vol.array.shape, dtype=np.uint8)
    if not empty:
        labels[4:16, 10:40, 8:30] = 1
        labels[sphere(labels.shape, (8, 25, 45), 4)] = 2
        labels[sphere(labels.shape, (14, 45, 45), 3)] = 2
    return fabricate(vol, labels, classes)


@pytest.fixture
def case(make_series: Callable[..., list[Path]]) -> tuple[list[Path], Volume]:
    files = make_series("out", slices=20, rows=64, columns=64, patient_name="Müller^Jörg")
    vol = reconstruct(files)
    by_uid = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    return [by_uid[u] for u in vol.sop_uids], vol


def dciodvfy_errors(path: Path, warnings: bool = True) -> list[str]:
    """dciodvfy's errors (and warnings) on ``path``."""
    exe = require_tool("dciodvfy")
    r = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60, check=False)  # it exits 1 on warnings
    kinds = ("Error", "Warning") if warnings else ("Error",)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith(kinds)]


def assert_valid(outputs: list[OutputFile], warnings: bool = True) -> None:
    for o in outputs:
        assert dciodvfy_errors(o.path, warnings) == [], f"{o.kind}: {o.path.name}"


def sr_volumes(sr: hd.sr.Comprehensive3DSR) -> list[float]:
    groups = [*sr.content.get_volumetric_roi_measurement_groups(), *sr.content.get_image_measurement_groups()]
    groups = [g for g in groups if not str(g.tracking_identifier).endswith("total")]  # a sum of the others
    return sorted(float(m.value) for g in groups for m in g.get_measurements(name=VOLUME))


def expected_volumes(res: Result) -> object:
    """What :func:`sr_volumes` reads back: every label and lesion volume, to the 0.1 uL the report keeps."""
    volumes = [m.volume_ml for m in res.measurements if not m.lesions] + [les.volume_ml for m in res.measurements for les in m.lesions]
    return pytest.approx(sorted(volumes), abs=1e-2)


def test_each_finding_reports_how_sure_the_model_is(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    """A finding judged by a candidate classifier carries its probability in the SR (a TID 1411 Probability) and the KOS text."""
    sources, vol = case
    res = result_for(vol)
    res.measurements = [
        replace(m, lesions=[replace(les, probability=p) for les, p in zip(m.lesions, (0.91, 0.42))]) if m.lesions else m
        for m in res.measurements
    ]
    res.findings = findings(res.measurements, BUNDLE)
    out = write_outputs(sources, vol, res, BUNDLE, tmp_path / "out", job_key="1.2.3/1")
    assert_valid(out)
    sr = hd.sr.srread(out[1].path)
    groups = {str(g.tracking_identifier): g for g in sr.content.get_volumetric_roi_measurement_groups()}
    got = {name: [float(m.value) for m in g.get_measurements() if m.name.meaning == "Probability"] for name, g in groups.items()}
    assert got == {"nodule 1": [0.91], "nodule 2": [0.42], "lung": []}
    kos = dcmread(out[-1].path)
    assert "nodule 1: " in str(kos.to_json()) and "mL, probability 0.91, image" in str(kos.to_json())
    from dicomnode.notify.summary import _findings

    told, _ = _findings(dcmread(out[1].path))  # what a webhook or the RIS is told, read back from the SR
    assert {f["name"]: f["probability"] for f in told} == {"nodule 1": 0.91, "nodule 2": 0.42, "lung": None}


def test_seg_sr_and_key_images_are_valid_and_read_back(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    res = result_for(vol)
    out = write_outputs(sources, vol, res, BUNDLE, tmp_path / "out", job_key="1.2.3/1")
    kinds = [o.kind for o in out]
    assert kinds == ["seg", "sr", "preview", "preview", "kos"]  # one key image per finding
    assert_valid(out)
    src = dcmread(sources[0], stop_before_pixels=True)
    assert str(src.PatientName) == "Müller^Jörg"
    for o in out:
        ds = dcmread(o.path, stop_before_pixels=True)
        for key in IDENTITY:
            assert ds.get(key) == src.get(key), f"{o.kind}: {key}"
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID == o.sop_instance_uid
        assert ds.file_meta.TransferSyntaxUID == o.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert len({o.series_instance_uid for o in out}) == 4  # SEG, SR, key images and KOS: one new series each

    seg = hd.seg.segread(out[0].path)
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID and seg.SegmentationType == "BINARY"
    # One block of series numbers per source series (source series 2: 9021...), its number in the description too.
    assert (seg.SeriesNumber, seg.SeriesDescription) == (9021, "AI chest-ct-lungs-nodules SEG of series 2 - not for diagnosis")
    # One segment per finding, numbered by size (the r=4 sphere is nodule 1), then the organ.
    assert {s.SegmentNumber: s.SegmentLabel for s in seg.SegmentSequence} == {1: "nodule 1", 2: "nodule 2", 3: "lung"}
    assert [s.TrackingID for s in seg.SegmentSequence] == ["nodule 1", "nodule 2", "lung"]
    nodule, lung_label = BUNDLE.labels[1], BUNDLE.labels[0]
    for s, lb in zip(seg.SegmentSequence, (nodule, nodule, lung_label)):
        assert s.SegmentedPropertyTypeCodeSequence[0].CodeValue == lb.snomed_code
        assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == ("49755003" if lb.lesion else "91723000")
        assert list(s.RecommendedDisplayCIELabValue) == list(hd.color.CIELabColor.from_rgb(*lb.color).value)
        algo = s.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (BUNDLE.name, BUNDLE.version)
        assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources]
    px = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2, 3], assert_missing_frames_are_empty=True
    )
    big = sphere(res.labels.shape, (8, 25, 45), 4)  # type: ignore[union-attr]
    assert (px[..., 0] == big).all() and (px[..., 1] == ((res.labels == 2) & ~big)).all() and (px[..., 2] == (res.labels == 1)).all()
    assert seg.NumberOfFrames == int(px.any(axis=(1, 2)).sum())  # empty frames omitted

    sr = hd.sr.srread(out[1].path)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert sr_volumes(sr) == expected_volumes(res)
    refs = {str(g.tracking_identifier): g.referenced_segment.referenced_segment_numbers for g in groups}  # type: ignore[union-attr]
    assert refs == {"nodule 1": [1], "nodule 2": [2], "lung": [3]}  # each finding references its own segment
    assert all(g.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID for g in groups)  # type: ignore[union-attr]
    for g, s in zip(sorted(groups, key=lambda g: str(g.tracking_identifier)), (seg.SegmentSequence[2], *seg.SegmentSequence[:2])):
        assert g.tracking_uid == s.TrackingUID  # one finding, one Tracking UID in SEG and SR
    n1 = next(g for g in groups if g.tracking_identifier == "nodule 1")
    sizes = {str(m.name.meaning): float(m.value) for m in n1.get_measurements()}
    assert sizes["Long axis"] == pytest.approx(9.0 * vol.spacing[0], abs=vol.spacing[0]) and sizes["Short axis"] <= sizes["Long axis"]
    assert sizes["Diameter"] == pytest.approx((sizes["Long axis"] + sizes["Short axis"]) / 2, abs=0.06)
    assert str(n1.finding_type.value) == "27925004"
    lung = next(g for g in groups if g.tracking_identifier == "lung")
    assert {str(m.name.meaning) for m in lung.get_measurements()} == {"Volume", "Mean", "Standard Deviation"}
    assert all(str(m.unit.value) == "[hnsf'U]" for m in lung.get_measurements() if m.name.meaning != "Volume")
    [device] = sr.content.get_observer_contexts(observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"))
    assert device.observer_identifying_attributes.name == BUNDLE.name  # type: ignore[union-attr]
    [score] = sr.content.get_image_measurement_groups()
    assert str(score.tracking_identifier) == "classification: nodule present"
    assert [float(m.value) for m in score.get_measurements() if m.name.meaning == "Probability"] == [0.83]
    assert "scan score: calibrated peak nodule probability" in dcmread(out[1].path).to_json()
    text = dcmread(out[1].path).to_json()
    assert "nodule present" in text and BUNDLE.intended_use in text and "not for diagnosis" in str(sr.SeriesDescription)

    for o in out[2:4]:
        sc = dcmread(o.path)
        assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape == (512, 512, 3)
        assert sc.BurnedInAnnotation == "YES" and BUNDLE.intended_use in sc.ImageComments
        assert list(sc.PatientOrientation) == ["L", "P"] and sc.SeriesNumber == 9023


def test_uids_are_deterministic_per_job(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    res = result_for(vol)
    opts = OutputOptions(preview=False)
    a = write_outputs(sources, vol, res, BUNDLE, tmp_path / "a", job_key="1.2.3/1", options=opts)
    b = write_outputs(sources, vol, res, BUNDLE, tmp_path / "b", job_key="1.2.3/1", options=opts)
    c = write_outputs(sources, vol, res, BUNDLE, tmp_path / "c", job_key="1.2.3/2", options=opts)

    def uids(out: list[OutputFile]) -> list[str]:
        seg = dcmread(out[0].path, stop_before_pixels=True)
        sr = hd.sr.srread(out[1].path)
        tracking = [str(s.TrackingUID) for s in seg.SegmentSequence]
        tracking += [str(g.tracking_uid) for g in sr.content.get_volumetric_roi_measurement_groups()]
        return [u for o in out for u in (o.sop_instance_uid, o.series_instance_uid)] + tracking

    assert uids(a) == uids(b)
    assert not set(uids(a)) & set(uids(c))
    assert dcmread(a[0].path).PixelData == dcmread(b[0].path).PixelData  # the same job writes the same SEG


def test_fractional_and_all_frames(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    res = result_for(vol)
    [frac] = write_outputs(sources, vol, res, BUNDLE, tmp_path / "f", job_key="k/1", options=replace(NO_FILES, fractional=True))
    [full] = write_outputs(sources, vol, res, BUNDLE, tmp_path / "a", job_key="k/1", options=replace(NO_FILES, keep_empty_frames=True))
    [sparse] = write_outputs(sources, vol, res, BUNDLE, tmp_path / "s", job_key="k/1", options=NO_FILES)
    assert_valid([frac, full])
    seg = hd.seg.segread(frac.path)
    assert seg.SegmentationType == "FRACTIONAL"
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources]
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 3])
    assert np.allclose(px[..., 1], res.probabilities[1], atol=1 / 255)  # type: ignore[index]  # the organ: its probability
    box = res.findings[0].lesion.box if res.findings else None
    assert box is not None and np.allclose(px[box][..., 0], res.probabilities[2][box], atol=1 / 255)  # type: ignore[index]
    outside = np.ones(px.shape[:3], dtype=bool)
    outside[box] = False
    assert (px[..., 0][outside] == 0).all()  # a finding's segment stays in its neighbourhood
    assert hd.seg.segread(full.path).NumberOfFrames == 3 * len(sources) > dcmread(sparse.path, stop_before_pixels=True).NumberOfFrames
    assert len({frac.sop_instance_uid, full.sop_instance_uid, sparse.sop_instance_uid}) == 3  # other content, other UID


def test_an_empty_result_still_makes_valid_outputs(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    res = result_for(vol, empty=True, classes=False)
    out = write_outputs(sources, vol, res, BUNDLE, tmp_path / "e", job_key="k/1")
    assert [o.kind for o in out] == ["sr", "preview"]  # no empty segments, no key slices to flag
    assert_valid(out)
    sr = hd.sr.srread(out[0].path)
    assert sr_volumes(sr) == [0.0, 0.0]  # "nothing found", said per label
    absent = hd.sr.CodedConcept("272519000", "SCT", "Absent")
    evaluations = [e for g in sr.content.get_image_measurement_groups() for e in g.get_qualitative_evaluations()]
    assert [e.value for e in evaluations] == [absent, absent]
    assert "No nodule found." in dcmread(out[0].path).to_json()
    assert "no nodule found" in dcmread(out[1].path).ImageComments


def test_report_without_seg_references_the_source_images(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    res = result_for(vol)
    [sr_file] = write_outputs(sources, vol, res, BUNDLE, tmp_path / "r", job_key="k/1", options=OutputOptions(seg=False, preview=False, kos=False))
    assert_valid([sr_file])
    sr = hd.sr.srread(sr_file.path)
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    assert sr_volumes(sr) == expected_volumes(res)
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources]
    lung = next(g for g in sr.content.get_image_measurement_groups() if g.tracking_identifier == "lung")
    assert [s.referenced_sop_instance_uid for s in lung.source_images] == [uids[z] for z in range(4, 16)]
    nodule1 = next(g for g in sr.content.get_image_measurement_groups() if g.tracking_identifier == "nodule 1")
    assert [s.referenced_sop_instance_uid for s in nodule1.source_images] == uids[4:13]  # the slices of that sphere


def test_a_classifier_gets_a_report_only(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    classifier = replace(
        BUNDLE, name="nodule-classifier", version="2.1", task="classification", scan_score=None,
        labels=(Label(1, "no nodule"), Label(2, "nodule present", snomed_code="786838002", snomed_meaning="Pulmonary nodule")),
    )
    res = Result(class_probabilities={"nodule present": 0.4, "no nodule": 0.6})
    [sr_file] = write_outputs(sources, vol, res, classifier, tmp_path / "c", job_key="k/1")
    assert sr_file.kind == "sr"
    assert_valid([sr_file], warnings=False)  # "no nodule" has no standard code: a declared private one
    groups = hd.sr.srread(sr_file.path).content.get_image_measurement_groups()
    assert len(groups) == 2
    text = dcmread(sr_file.path).to_json()
    assert "nodule-classifier" in text and "786838002" in text  # the classifier names itself, with its own codes


def test_a_second_classifier_is_reported_under_its_own_name(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    from ai.engine import ClassScores

    sources, vol = case
    res = result_for(vol)
    labels = (Label(1, "emphysema", snomed_code="87433001", snomed_meaning="Pulmonary emphysema"),)
    res.classifications.append(ClassScores("emphysema-classifier", "0.9", {"emphysema": 0.12}, labels))
    [_seg, sr_file] = write_outputs(sources, vol, res, BUNDLE, tmp_path / "c", job_key="k/1", options=OutputOptions(preview=False, kos=False))
    assert_valid([sr_file])
    text = dcmread(sr_file.path).to_json()
    assert "emphysema-classifier" in text and "87433001" in text and "0.12" in text


def test_multiframe_source_frames_are_matched_by_position(tmp_path: Path) -> None:
    data = pytest.importorskip("pydicom.data")
    found = data.get_testdata_file("eCT_Supplemental.dcm")  # enhanced CT from pydicom-data: 2 frames, stored head first
    if found is None:
        pytest.skip("eCT_Supplemental.dcm is not available (pydicom-data is not installed)")
    path = Path(found)
    vol = reconstruct([path])
    assert vol.origin[2] == -149.0  # volume slice 0 is source frame 2: the order differs
    labels = np.zeros(vol.array.shape, dtype=np.uint8)
    labels[0, 100:200, 100:200] = 1
    labels[1, 300:320, 300:330] = 2
    out = write_outputs([path, path], vol, fabricate(vol, labels), BUNDLE, tmp_path / "mf", job_key="k/1",
                        options=OutputOptions(preview=False))
    assert_valid(out)
    seg = hd.seg.segread(out[0].path)
    px = seg.get_pixels_by_source_frame(
        str(vol.sop_uids[0]), source_frame_numbers=[2, 1], segment_numbers=[1, 2], assert_missing_frames_are_empty=True
    )
    assert (px[..., 1] == (labels == 1)).all() and (px[..., 0] == (labels == 2)).all()  # nodule 1, then the lung
    assert sr_volumes(hd.sr.srread(out[1].path)) == expected_volumes(fabricate(vol, labels))


def _without(src: Path, dst: Path, key: str) -> Path:
    ds = dcmread(src)
    delattr(ds, key)
    ds.save_as(dst)
    return dst


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s, v, r, t: (s[:-1], v, r), "19 source file(s) for 20 slices"),
        (lambda s, v, r, t: (s[::-1], v, r), "source file 1 of 20 is not slice 1 of the volume"),
        (lambda s, v, r, t: (s, v, Result(labels=r.labels[:-1])), "does not match the volume"),
        (lambda s, v, r, t: (s, v, Result(labels=None)), "produced no label map and no class scores"),
        (
            lambda s, v, r, t: (s, replace(v, array=v.array[:-1]), Result(labels=r.labels[:-1])),
            "the volume has 19 slices but 20 source images (was it resampled?)",
        ),
        (
            lambda s, v, r, t: ([*s[:3], _without(s[3], t / "x.dcm", "FrameOfReferenceUID"), *s[4:]], v, r),
            "source image 4 of 20 lacks FrameOfReferenceUID",
        ),
        (lambda s, v, r, t: ([*s[:-1], t / "missing.dcm"], v, r), "cannot read source image 20 of 20"),
    ],
)
def test_bad_inputs_are_refused_readably(
    case: tuple[list[Path], Volume], tmp_path: Path, mutate: Callable[..., tuple], message: str
) -> None:
    sources, vol = case
    s, v, r = mutate(sources, vol, result_for(vol), tmp_path)
    with pytest.raises(OutputError, match=re.escape(message)):
        write_outputs(s, v, r, BUNDLE, tmp_path / "x", job_key="k/1")
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_fractional_needs_probabilities(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    res = result_for(vol)
    res.probabilities = None
    with pytest.raises(OutputError, match="FRACTIONAL segmentation needs the model's probabilities"):
        write_outputs(sources, vol, res, BUNDLE, tmp_path / "x", job_key="k/1", options=OutputOptions(fractional=True))
    res.probabilities = np.zeros((2, *vol.array.shape), dtype=np.float32)
    with pytest.raises(OutputError, match="do not fit 3 channel"):
        write_outputs(sources, vol, res, BUNDLE, tmp_path / "x", job_key="k/1", options=OutputOptions(fractional=True))


@pytest.mark.slow
def test_default_bundle_on_a_phantom(tmp_path: Path) -> None:
    """The real model on a small chest phantom: the outputs carry what it found (about 5 s)."""
    from ai.engine import Engine
    from ai.phantoms import generate
    from dicomnode.testing.synthetic import write_phantom

    ph = generate(4242, matrix=128, slice_mm=(4.0, 5.0))
    files = write_phantom(ph, tmp_path / "ct")
    vol = reconstruct(files)
    shipped = load_bundle(SHIPPED)
    res = Engine(shipped, device="cpu").run(vol.array, vol.spacing, vol.direction)
    by_uid = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    out = write_outputs([by_uid[u] for u in vol.sop_uids], vol, res, shipped, tmp_path / "out", job_key="k/1")
    assert_valid(out)
    assert sr_volumes(hd.sr.srread(out[1].path)) == expected_volumes(res)
    seg = hd.seg.segread(out[0].path)
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(vol.sop_uids), combine_segments=True, relabel=True)
    assert res.labels is not None and (px > 0).sum() == (res.labels > 0).sum()


def test_a_single_segment_seg_is_referenced_by_the_report(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    """Lungs but no nodule: highdicom keeps the lone segment in the shared groups (a job on a clean scan)."""
    sources, vol = case
    labels = np.zeros(vol.array.shape, dtype=np.uint8)
    labels[4:16, 10:40, 8:30] = 1
    out = write_outputs(sources, vol, fabricate(vol, labels), BUNDLE, tmp_path / "one", job_key="k/1")
    assert_valid(out)
    seg = hd.seg.segread(out[0].path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lung"]
    groups = hd.sr.srread(out[1].path).content.get_volumetric_roi_measurement_groups()
    [lung] = groups
    assert lung.referenced_segment is not None
    assert str(lung.referenced_segment.referenced_sop_instance_uid) == str(seg.SOPInstanceUID)


def test_outputs_of_two_recons_are_told_apart(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    """Series numbers and descriptions name the source series, so a PACS list shows which result is whose."""
    sources, vol = case
    res = result_for(vol)
    out = write_outputs(sources, vol, res, BUNDLE, tmp_path / "a", job_key="k/1", options=OutputOptions(preview=False, kos=False))
    seg, sr = (dcmread(o.path, stop_before_pixels=True) for o in out)
    assert (seg.SeriesNumber, sr.SeriesNumber) == (9021, 9022)
    assert "of series 2" in seg.SeriesDescription and "not for diagnosis" in sr.SeriesDescription and len(sr.SeriesDescription) <= 64
    fixed = write_outputs(sources, vol, res, BUNDLE, tmp_path / "b", job_key="k/1",
                          options=OutputOptions(preview=False, kos=False, number_by_source=False))
    assert dcmread(fixed[0].path, stop_before_pixels=True).SeriesNumber == 9001
