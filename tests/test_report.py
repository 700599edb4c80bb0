"""Findings a radiologist can act on: numbered, lateralised, located, read by dcmqi and highdicom.

Chest phantoms (``ai.phantoms``) in head-first, feet-first and prone
positions, written as DICOM and reconstructed; the phantom's own right lung,
left lung and nodule labels stand in for a model, so these tests grade the
pipeline from labels to DICOM: measurement, numbering, sides and codes.  A
slow test runs the shipped model too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from ai.bundle import load_bundle
from ai.engine import Result
from ai.findings import Finding, findings
from ai.measure import measure
from ai.phantoms import Phantom, generate
from dicomnode.outputs.writer import write_outputs
from dicomnode.testing.synthetic import write_phantom
from dicomnode.volume.reconstruct import Volume, reconstruct
from tests.helpers import require_tool
from tests.test_outputs import assert_valid

SHIPPED = load_bundle(Path(__file__).resolve().parents[1] / "ai" / "bundles" / "chest-ct-lungs-nodules")
NODULE = 3
SIDES = {"right": "24028007", "left": "7771000"}
CASES = {"HFS": 10, "FFS": 25, "HFP": 12}  # seeds whose position is that, each with nodules of 10 mm or more


def truth_on(vol: Volume, ph: Phantom) -> np.ndarray:
    """The phantom's labels on the reconstructed volume's grid (the same grid, maybe in another order)."""
    to_phantom = np.linalg.inv(ph.affine_lps) @ vol.affine
    nz, ny, nx = vol.array.shape
    zz, yy, xx = np.indices((nz, ny, nx)).reshape(3, -1)
    ijk = to_phantom[:3, :3] @ np.stack([xx, yy, zz]) + to_phantom[:3, 3:4]
    i, j, k = np.rint(ijk).astype(int)
    return ph.labels[k, j, i].reshape(nz, ny, nx)


def case(tmp_path: Path, seed: int, slice_mm: float = 2.5) -> tuple[list[Path], Volume, Phantom]:
    ph = generate(seed, matrix=96, slice_mm=(slice_mm, slice_mm), noise=False)
    files = write_phantom(ph, tmp_path / f"ct-{seed}-{slice_mm}")
    vol = reconstruct(files)
    by_uid = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    return [by_uid[u] for u in vol.sop_uids], vol, ph


def truth_result(vol: Volume, ph: Phantom) -> Result:
    """The phantom's labels, measured and numbered as the engine does for the shipped bundle."""
    labels = truth_on(vol, ph)
    names = {lb.value: lb.name for lb in SHIPPED.labels}
    m = measure(labels, vol.spacing, names, image=vol.array, lesion_values=[NODULE], contains=SHIPPED.contains)
    return Result(labels=labels, measurements=m, findings=findings(m, SHIPPED))


def truth_side(f: Finding, vol: Volume, ph: Phantom) -> str:
    """The side of the phantom nodule nearest to a finding's centre."""
    z, y, x = f.lesion.centroid_voxel
    centre = (vol.affine @ np.array([x, y, z, 1.0]))[:3]
    nearest = min(ph.nodules, key=lambda n: float(np.linalg.norm(ph.nodule_lps(n) - centre)))
    return str(nearest.side)


def tid1500(path: Path, tmp_path: Path) -> dict:
    exe = require_tool("tid1500reader")
    out = tmp_path / f"{path.stem}-tid1500.json"
    subprocess.run([exe, "--inputDICOM", str(path), "--outputMetadata", str(out)], check=True, capture_output=True, timeout=120)
    return json.loads(out.read_text())  # it exits 0 even when it parses nothing: the JSON tells


@pytest.mark.parametrize("position", list(CASES))
def test_sides_numbers_and_codes_follow_the_patient(tmp_path: Path, position: str) -> None:
    sources, vol, ph = case(tmp_path, CASES[position])
    assert ph.position == position
    res = truth_result(vol, ph)
    assert len(res.findings) >= 2
    out = write_outputs(sources, vol, res, SHIPPED, tmp_path / "out", job_key="k/1")
    assert_valid(out)
    kinds = [o.kind for o in out]
    assert kinds[:2] == ["seg", "sr"] and kinds[-1] == "kos" and kinds.count("preview") == min(len(res.findings), 6)

    volumes = [f.lesion.volume_ml for f in res.findings]
    assert volumes == sorted(volumes, reverse=True)  # nodule 1 is the largest
    for f in res.findings:
        assert f.side is not None and f.side.value == truth_side(f, vol, ph), f.name  # the side of the patient, not of the image

    # dcmqi's reader: every group parsed, each finding with its own segment, site and side.
    sr_file, seg_file = out[1].path, out[0].path
    meta = tid1500(sr_file, tmp_path)
    sr = hd.sr.srread(sr_file)
    groups = sr.content.get_volumetric_roi_measurement_groups() + sr.content.get_image_measurement_groups()
    assert len(meta["Measurements"]) == len(groups)
    by_id = {m["TrackingIdentifier"]: m for m in meta["Measurements"]}
    seg = dcmread(seg_file, stop_before_pixels=True)
    segments = {str(s.SegmentLabel): s for s in seg.SegmentSequence}
    for f in res.findings:
        m = by_id[f.name]
        assert m["ReferencedSegment"] == f.number and m["Finding"]["CodeValue"] == "786838002"  # Pulmonary nodule
        assert m["FindingSite"]["CodeValue"] == "39607008"  # Lung
        s = segments[f.name]
        assert s.TrackingUID == m["TrackingUniqueIdentifier"] and s.SegmentNumber == f.number
        region = s.AnatomicRegionSequence[0]
        assert region.CodeValue == "39607008" and region.AnatomicRegionModifierSequence[0].CodeValue == SIDES[f.side.value]  # type: ignore[union-attr]
        quantities = {q["quantity"]["CodeMeaning"] for q in m["measurementItems"]}
        assert {"Volume", "Long axis", "Short axis", "Diameter", "Mean", "Standard Deviation"} <= quantities
    for side in SIDES:
        lung = by_id[f"{side} lung"]
        assert lung["FindingSite"]["CodeValue"] == "39607008"
    assert meta["procedureReported"]["CodeValue"] == "24627-2"  # CT Chest, from the bundle

    # Laterality, centre and the long-axis slice, read back with highdicom.
    uids = [str(u) for u in vol.sop_uids]
    for g in sr.content.get_volumetric_roi_measurement_groups():
        name = str(g.tracking_identifier)
        f = next((f for f in res.findings if f.name == name), None)
        if f is None:
            continue
        [site] = g.finding_sites
        assert site.laterality is not None and site.laterality.value == SIDES[f.side.value]  # type: ignore[union-attr]
        [long_axis] = g.get_measurements(name=hd.sr.CodedConcept("103339001", "SCT", "Long axis"))
        [image] = long_axis.referenced_images
        assert image.referenced_sop_instance_uid == uids[f.lesion.axes.slice_index]  # type: ignore[union-attr]
        centre = next(i for i in g[0].ContentSequence if i.ValueType == "SCOORD3D")
        z, y, x = f.lesion.centroid_voxel
        assert np.allclose(centre.GraphicData, (vol.affine @ [x, y, z, 1.0])[:3], atol=0.01)


def test_numbers_do_not_change_with_slice_thickness_or_order(tmp_path: Path) -> None:
    """The same patient at 1.25 and 2.5 mm, and stored feet-first or prone: the same numbers."""
    thin_src, thin, ph_thin = case(tmp_path, CASES["FFS"], 1.25)
    thick_src, thick, ph_thick = case(tmp_path, CASES["FFS"], 2.5)

    def named(vol: Volume, ph: Phantom) -> dict[int, tuple[float, float, float]]:
        out = {}
        for f in truth_result(vol, ph).findings:
            z, y, x = f.lesion.centroid_voxel
            out[f.number] = tuple((vol.affine @ np.array([x, y, z, 1.0]))[:3])
        return out

    a, b = named(thin, ph_thin), named(thick, ph_thick)
    assert a.keys() == b.keys() and len(a) >= 2
    for n in a:
        assert np.linalg.norm(np.subtract(a[n], b[n])) < 3.0, f"nodule {n} is another nodule in the thick recon"
    # The same patient stored the other way round: slices reversed (feet-first) and rows and columns
    # reversed (prone: the image turned by 180 degrees). The numbers follow the patient, not the storage.
    for flip in ((0,), (1, 2), (0, 1, 2)):
        array, labels = thick.array, truth_on(thick, ph_thick)
        corner = [0, 0, 0]
        for axis in flip:
            array, labels = np.flip(array, axis), np.flip(labels, axis)
            corner[2 - axis] = thick.array.shape[axis] - 1  # (x, y, z) index of the new first voxel
        signs = np.ones(3)
        signs[[2 - a for a in flip]] = -1
        moved = Volume(np.ascontiguousarray(array), thick.spacing, tuple((thick.affine @ [*corner, 1])[:3]),
                       thick.direction * signs, list(thick.sop_uids))
        m = measure(np.ascontiguousarray(labels), moved.spacing, {lb.value: lb.name for lb in SHIPPED.labels},
                    image=moved.array, lesion_values=[NODULE], contains=SHIPPED.contains)
        c = {f.number: tuple((moved.affine @ [*f.lesion.centroid_voxel[::-1], 1])[:3]) for f in findings(m, SHIPPED)}
        assert c.keys() == b.keys() and all(np.linalg.norm(np.subtract(b[n], c[n])) < 0.01 for n in b), flip


def test_no_finding_is_said_and_an_edge_finding_is_flagged(tmp_path: Path) -> None:
    sources, vol, ph = case(tmp_path, CASES["HFS"])
    res = truth_result(vol, ph)
    labels = res.labels.copy()  # type: ignore[union-attr]
    labels[labels == NODULE] = 1
    names = {lb.value: lb.name for lb in SHIPPED.labels}
    m = measure(labels, vol.spacing, names, image=vol.array, lesion_values=[NODULE], contains=SHIPPED.contains)
    clean = Result(labels=labels, measurements=m, findings=findings(m, SHIPPED))
    out = write_outputs(sources, vol, clean, SHIPPED, tmp_path / "clean", job_key="k/1",
                        notes=["The source series was incomplete when it was processed (117 of 120)."])
    assert_valid(out)
    assert [o.kind for o in out] == ["seg", "sr", "preview"]
    seg = dcmread(out[0].path, stop_before_pixels=True)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["right lung", "left lung"]  # no empty nodule segment
    text = dcmread(out[1].path).to_json()
    assert "No nodule found." in text and "117 of 120" in text
    meta = tid1500(out[1].path, tmp_path)
    assert {m["TrackingIdentifier"] for m in meta["Measurements"]} >= {"nodule", "right lung", "left lung", "lungs, total"}

    # A nodule cut by the first slice: flagged as possibly truncated in the report and on its key image.
    cut = res.labels.copy()  # type: ignore[union-attr]
    z0 = int(res.findings[0].lesion.centroid_voxel[0])
    m = measure(cut[z0:], vol.spacing, names, image=vol.array[z0:], lesion_values=[NODULE], contains=SHIPPED.contains)
    edge = [f for f in findings(m, SHIPPED) if f.lesion.edges]
    assert edge and "first slice" in [e.value for e in edge[0].lesion.edges]


@pytest.mark.slow
@pytest.mark.parametrize("position", list(CASES))
def test_the_shipped_model_puts_nodules_on_the_right_side(tmp_path: Path, position: str) -> None:
    """The real model on head-first, feet-first and prone phantoms (about 8 s each): every nodule it finds
    where the phantom has one is reported on the phantom's side."""
    from ai.engine import Engine

    ph = generate(CASES[position], matrix=256, slice_mm=(2.5, 2.5))
    vol = reconstruct(write_phantom(ph, tmp_path / "ct"))
    res = Engine(SHIPPED, device="cpu").run(vol.array, vol.spacing, vol.direction)
    matched = 0
    for n in ph.nodules:
        for f in res.findings:
            z, y, x = f.lesion.centroid_voxel
            centre = (vol.affine @ np.array([x, y, z, 1.0]))[:3]
            if np.linalg.norm(centre - ph.nodule_lps(n)) < n.diameter_mm / 2 + 5:
                matched += 1
                assert f.side is not None and f.side.value == str(n.side), f"{f.name} vs a {n.diameter_mm:.0f} mm {n.side} nodule"
    assert matched >= 2


def test_the_outputs_page_is_generated_from_a_real_run(tmp_path: Path) -> None:
    """scripts/document_outputs.py (which writes docs/outputs.md) runs, and its page shows every object."""
    require_tool("dsrdump")
    doc = tmp_path / "outputs.md"
    root = Path(__file__).resolve().parents[1]
    stale = tmp_path / "images" / "outputs-key-image-9.png"  # an earlier run's, which found more findings
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    r = subprocess.run(
        [sys.executable, str(root / "scripts" / "document_outputs.py"), "--matrix", "96", "--doc", str(doc)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = doc.read_text()
    for part in ("## Series", "| SEG | 90", "| SR | 90", "Imaging Measurement Report", "Procedure reported", "## Key images"):
        assert part in text
    for picture in re.findall(r"\]\((images/[^)]+\.png)\)", text):
        assert (tmp_path / picture).stat().st_size > 1000
    assert not stale.exists()  # the page's pictures only


def test_a_series_completed_incomplete_is_said_in_the_outputs() -> None:
    """The worker's note for a series that completed on the incomplete timeout (after refused or aborted instances)."""
    from dicomnode.jobs.worker import source_notes
    from storage.queue import ClaimedJob
    from storage.series import SeriesFacts
    from storage.states import CompletionReason

    facts = SeriesFacts("CT", "CHEST", None, None, "SCANNER")
    job = ClaimedJob(1, 1, 1, 1, "1.2", "1.3", facts, False, CompletionReason.INCOMPLETE_TIMEOUT.value,
                     "missing slice(s): a gap of 2 slices between slice 40 and 43; 118 of 120 announced instances received", 118)
    [note] = source_notes(job, 118)
    assert "incomplete" in note and "118 instance(s) received" in note and "between slice 40 and 43" in note
    complete = ClaimedJob(1, 1, 1, 1, "1.2", "1.3", facts, False, CompletionReason.ASSOCIATION_RELEASED.value, None, 120)
    assert source_notes(complete, 120) == []
