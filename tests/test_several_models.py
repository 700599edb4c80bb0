"""Several segmentation models on one series: a SEG each or one merged SEG, and nodules placed in their lobe."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from ai.bundle import Label
from ai.coding import Laterality
from ai.engine import Result
from ai.findings import findings
from ai.measure import measure
from ai.placement import lobe_labels, place_in_lobes
from dicomnode.node import Node
from dicomnode.outputs.writer import IDENTITY, OutputFile, OutputOptions, write_outputs
from dicomnode.volume.reconstruct import Volume
from tests.helpers import require_tool
from tests import test_outputs
from tests.test_outputs import BUNDLE, SHIPPED, assert_valid, result_for, sphere

UPPER = Label(1, "lung_upper_lobe_right", "45653009", "Upper lobe of lung", "123037004", "Anatomical Structure",
              (100, 218, 227), laterality=Laterality.RIGHT)
LOWER = Label(2, "lung_lower_lobe_right", "90572001", "Lower lobe of lung", "123037004", "Anatomical Structure",
              (26, 144, 153), laterality=Laterality.RIGHT)
LOBES = replace(BUNDLE, name="lobes", version="2.0", labels=(UPPER, LOWER), scan_score=None, anatomy=None)
VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")
case = test_outputs.case  # the 20-slice series fixture


def lobe_map(shape: tuple[int, ...], hole: np.ndarray | None = None) -> np.ndarray:
    """Upper lobe above slice 11, lower lobe below, over most of the slice (``hole`` left out)."""
    out = np.zeros(shape, dtype=np.uint8)
    out[:11, 4:60, 4:60] = 1
    out[11:, 4:60, 4:60] = 2
    if hole is not None:
        out[hole] = 0
    return out


def lobe_result(vol: Volume, labels: np.ndarray) -> Result:
    m = measure(labels, vol.spacing, {1: UPPER.name, 2: LOWER.name}, image=vol.array)
    return Result(labels=labels, measurements=m, findings=findings(m, LOBES))


def test_lobe_labels_are_found_by_code_or_name() -> None:
    assert lobe_labels(LOBES) == (UPPER, LOWER)
    assert lobe_labels(BUNDLE) == ()  # lung and nodule are no lobes
    named = replace(LOBES, labels=(Label(3, "left lower lobe"), Label(4, "liver")))
    assert [lb.name for lb in lobe_labels(named)] == ["left lower lobe"]


def test_findings_are_placed_in_the_lobe_that_holds_them(case: tuple[list[Path], Volume]) -> None:
    _, vol = case
    res = result_for(vol)  # nodule 1 centred on slice 8 (upper lobe), nodule 2 on slice 14 (lower lobe)
    placed = place_in_lobes(res.findings, lobe_map(vol.array.shape), LOBES.labels, vol.spacing, "lobes 2.0")
    assert [(f.name, f.where) for f in placed] == [
        ("nodule 1", "upper lobe of right lung"), ("nodule 2", "lower lobe of right lung"),
    ]
    assert placed[0].site is not None and placed[0].site.code == "45653009" and placed[0].side == Laterality.RIGHT
    assert placed[0].lobe_model == "lobes 2.0"
    # A lobe model that leaves the nodules out of its lobes: the voxels around each decide.
    holes = lobe_map(vol.array.shape, hole=res.labels == 2)
    assert [f.where for f in place_in_lobes(res.findings, holes, LOBES.labels, vol.spacing)] == [
        "upper lobe of right lung", "lower lobe of right lung",
    ]
    # No lobe within reach: the finding keeps the site its own model gives it.
    far = np.zeros(vol.array.shape, dtype=np.uint8)
    far[:, :3, :3] = 1
    assert place_in_lobes(res.findings, far, LOBES.labels, vol.spacing) == res.findings
    # A finding across two lobes goes to the one with most of it (here the upper lobe, 7 of its 9 slices).
    split = np.zeros(vol.array.shape, dtype=np.uint8)
    split[:11] = 1
    split[11:] = 2
    assert place_in_lobes(res.findings[:1], split, LOBES.labels, vol.spacing)[0].lobe == UPPER


def _write(case: tuple[list[Path], Volume], out: Path, layout: str) -> tuple[list[OutputFile], Result, Result]:
    sources, vol = case
    res = result_for(vol)
    lobes = lobe_result(vol, lobe_map(vol.array.shape))
    res = replace(res, findings=place_in_lobes(res.findings, lobes.labels, LOBES.labels, vol.spacing, "lobes 2.0"))  # type: ignore[arg-type]
    opts = OutputOptions(preview=False, kos=False, multi_model_seg=layout)
    return write_outputs(sources, vol, res, BUNDLE, out, job_key="1.2.3/1", options=opts, others=[(LOBES, lobes)]), res, lobes


def _finding_sites(sr: hd.sr.Comprehensive3DSR) -> dict[str, tuple[str, str]]:
    """Tracking identifier -> (site code, laterality code) of each volumetric group."""
    out = {}
    for g in sr.content.get_volumetric_roi_measurement_groups():
        if not g.finding_sites:
            continue
        [site] = g.finding_sites
        lat = site.get("ContentSequence")
        out[str(g.tracking_identifier)] = (str(site.value.value), str(lat[0].ConceptCodeSequence[0].CodeValue) if lat else "")
    return out


def test_a_seg_and_a_report_per_model(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    out, res, lobes = _write(case, tmp_path / "out", "separate")
    assert [(o.kind, o.path.name) for o in out] == [("seg", "seg.dcm"), ("sr", "sr.dcm"), ("seg", "seg-1.dcm"), ("sr", "sr-1.dcm")]
    assert_valid(out)
    src = dcmread(case[0][0], stop_before_pixels=True)
    numbers = set()
    for o in out:
        ds = dcmread(o.path, stop_before_pixels=True)
        assert all(ds.get(k) == src.get(k) for k in IDENTITY), o.path.name
        numbers.add(int(ds.SeriesNumber))
    assert numbers == {9021, 9022, 9025, 9026} and len({o.series_instance_uid for o in out}) == 4
    lobe_seg = hd.seg.segread(out[2].path)
    assert [s.SegmentLabel for s in lobe_seg.SegmentSequence] == [UPPER.name, LOWER.name]
    assert lobe_seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "lobes"
    # The nodule report places each nodule in its lobe; the lobe report measures the lobes in their own SEG.
    assert _finding_sites(hd.sr.srread(out[1].path))["nodule 1"] == ("45653009", "24028007")
    assert _finding_sites(hd.sr.srread(out[1].path))["nodule 2"] == ("90572001", "24028007")
    lobe_sr = hd.sr.srread(out[3].path)
    groups = lobe_sr.content.get_volumetric_roi_measurement_groups()
    assert {str(g.tracking_identifier) for g in groups} == {UPPER.name, LOWER.name}
    assert {g.referenced_segment.referenced_sop_instance_uid for g in groups} == {lobe_seg.SOPInstanceUID}  # type: ignore[union-attr]
    volumes = {str(g.tracking_identifier): float(g.get_measurements(name=VOLUME)[0].value) for g in groups}
    assert volumes[UPPER.name] == pytest.approx(lobes.measurements[0].volume_ml, abs=1e-2)
    nodule_seg = hd.seg.segread(out[0].path)  # the nodule SEG's segments carry the lobe as their region
    assert nodule_seg.SegmentSequence[0].AnatomicRegionSequence[0].CodeValue == "45653009"


def test_one_merged_seg_for_every_model(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    out, res, lobes = _write(case, tmp_path / "out", "merged")
    assert [(o.kind, o.path.name) for o in out] == [("seg", "seg.dcm"), ("sr", "sr.dcm"), ("sr", "sr-1.dcm")]
    assert_valid(out)
    seg = hd.seg.segread(out[0].path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["nodule 1", "nodule 2", "lung", UPPER.name, LOWER.name]
    assert [s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName for s in seg.SegmentSequence] == [BUNDLE.name] * 3 + ["lobes"] * 2
    assert seg.SegmentsOverlap == "YES"  # nodules and lung lie in the lobes
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources]
    px = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2, 3, 4, 5], assert_missing_frames_are_empty=True,
    )
    big = sphere(vol.array.shape, (8, 25, 45), 4)
    assert (px[..., 0] == big).all() and (px[..., 2] == (res.labels == 1)).all()
    assert (px[..., 3] == (lobes.labels == 1)).all() and (px[..., 4] == (lobes.labels == 2)).all()
    # Both reports reference the one SEG, each group its own (renumbered) segment, with the same Tracking UID.
    tracking = {s.SegmentNumber: s.TrackingUID for s in seg.SegmentSequence}
    for path, expected in ((out[1].path, {"nodule 1": 1, "nodule 2": 2, "lung": 3}), (out[2].path, {UPPER.name: 4, LOWER.name: 5})):
        groups = hd.sr.srread(path).content.get_volumetric_roi_measurement_groups()
        refs = {str(g.tracking_identifier): g.referenced_segment.referenced_segment_numbers[0] for g in groups}  # type: ignore[union-attr]
        assert refs == expected
        assert all(g.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID for g in groups)  # type: ignore[union-attr]
        assert all(g.tracking_uid == tracking[refs[str(g.tracking_identifier)]] for g in groups)
    # A reader we did not write: dcmqi splits the merged SEG into one image per segment.
    exe = require_tool("segimage2itkimage")
    (tmp_path / "itk").mkdir()
    r = subprocess.run([exe, "--inputDICOM", str(out[0].path), "--outputDirectory", str(tmp_path / "itk"), "--outputType", "nrrd"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "itk").glob("*.nrrd"))) == 5
    # Its UIDs differ from the nodule model's SEG alone (another content), and stay the same when written again.
    alone = write_outputs(sources, vol, res, BUNDLE, tmp_path / "alone", job_key="1.2.3/1", options=OutputOptions(sr=False, preview=False, kos=False))
    again, _, _ = _write(case, tmp_path / "again", "merged")
    assert alone[0].sop_instance_uid != out[0].sop_instance_uid == again[0].sop_instance_uid


def test_merged_when_the_first_model_found_nothing(case: tuple[list[Path], Volume], tmp_path: Path) -> None:
    sources, vol = case
    empty = result_for(vol, empty=True)
    lobes = lobe_result(vol, lobe_map(vol.array.shape))
    out = write_outputs(sources, vol, empty, BUNDLE, tmp_path / "out", job_key="1.2.3/1",
                        options=OutputOptions(preview=False, kos=False, multi_model_seg="merged"), others=[(LOBES, lobes)])
    assert [o.path.name for o in out] == ["seg.dcm", "sr.dcm", "sr-1.dcm"]
    assert_valid(out)
    seg = hd.seg.segread(out[0].path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [UPPER.name, LOWER.name] and seg.SegmentsOverlap == "NO"
    refs = [g.referenced_segment.referenced_segment_numbers[0]  # type: ignore[union-attr]
            for g in hd.sr.srread(out[2].path).content.get_volumetric_roi_measurement_groups()]
    assert sorted(refs) == [1, 2]


def test_a_lobe_model_beside_the_nodule_model_through_the_worker(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    """Two segmentation models on one pushed series: two SEGs and two reports at the PACS, nodules placed in lobes.

    The "lobe" model is the shipped model under another name whose lung labels are coded as lobes (right: upper lobe
    of lung, right; left: upper lobe of left lung): a real installed model folder, run by the worker beside the
    shipped one, so each nodule's lobe is the lung it lies in.
    """
    from ai.phantoms import generate
    from dicomnode.testing.synthetic import write_phantom
    from tests.conftest import jobs_of
    from tests.helpers import storescu, wait_for
    from tests.peers import StoreSCP
    from tests.test_pipeline import SEG, SR, WORKER, destination

    lobes = tmp_path / "lobes-demo"
    shutil.copytree(SHIPPED, lobes)
    manifest = json.loads((lobes / "manifest.json").read_text())
    manifest["name"] = "lobes-demo"
    manifest["labels"][0].update(name="upper lobe right", snomed={"code": "45653009", "meaning": "Upper lobe of lung"})
    manifest["labels"][1].update(name="upper lobe left", snomed={"code": "44714003", "meaning": "Upper lobe of left lung"})
    for lb in manifest["labels"][:2]:
        lb.pop("site", None)
    (lobes / "manifest.json").write_text(json.dumps(manifest))
    ph = generate(4247, matrix=160, slice_mm=(4.0, 5.0))
    files = write_phantom(ph, tmp_path / "ct")
    pacs = StoreSCP(tmp_path / "pacs").start()
    try:
        worker = WORKER.replace("[worker]\n", f'[worker]\nmodels = ["chest-ct-lungs-nodules", "{lobes}"]\n')
        node = node_factory(extra_toml=worker + destination("pacs", "PACS", pacs.port))
        assert storescu(node.cfg.node.port, files).returncode == 0
        [job] = wait_for(lambda: [j for j in jobs_of(node) if j.state in ("done", "failed")] or None, 240, what="the job")
        assert job.state == "done", job.error
        assert job.model == "chest-ct-lungs-nodules 0.5.5 + lobes-demo 0.5.5"
        wait_for(lambda: len([f for f in pacs.files() if dcmread(f, stop_before_pixels=True).SOPClassUID in (SEG, SR)]) >= 4,
                 120, what="two SEGs and two reports at the PACS")
        got = {}
        for f in pacs.files():
            ds = dcmread(f, stop_before_pixels=True)
            if ds.SOPClassUID in (SEG, SR):
                got[(ds.Modality, int(ds.SeriesNumber) % 10)] = f
        assert set(got) == {("SEG", 1), ("SR", 2), ("SEG", 5), ("SR", 6)}
        lobe_seg = hd.seg.segread(got[("SEG", 5)])
        assert {s.SegmentLabel for s in lobe_seg.SegmentSequence} >= {"upper lobe right", "upper lobe left"}
        sites = _finding_sites(hd.sr.srread(got[("SR", 2)]))
        nodules = {k: v for k, v in sites.items() if k.startswith("nodule ")}
        assert nodules, sites  # the phantom has nodules; each is now placed in a "lobe" with its side
        assert set(nodules.values()) <= {("45653009", "24028007"), ("44714003", "7771000")}, nodules
    finally:
        pacs.stop()
