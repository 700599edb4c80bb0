"""The whole path with real peers: storescu -> node -> model -> SEG/SR/SC -> storescp and Orthanc.

Also: a bad series fails readably and is quarantined, a series no model
applies to is ignored, and ``dicomnode jobs|retry`` show and redo the work.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from ai.phantoms import LEFT_LUNG, RIGHT_LUNG, generate
from dicomnode.node import Node
from dicomnode.testing.synthetic import write_phantom
from tests.browser import Browser
from tests.conftest import jobs_of
from tests.helpers import NodeProcess, storescu, wait_for, write_config
from tests.peers import Orthanc, StoreSCP

SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
            "AccessionNumber", "ReferringPhysicianName")
WORKER = "[worker]\nenabled = true\ndevice = \"cpu\"\n[delivery]\nbackoff_seconds = 0.5\npoll_seconds = 0.1\n"


def destination(name: str, ae: str, port: int) -> str:
    return f'[[destinations]]\nname = "{name}"\nae_title = "{ae}"\nhost = "127.0.0.1"\nport = {port}\n'


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def test_phantom_ct_comes_back_as_seg_sr_and_preview_at_storescp_and_orthanc(tmp_path: Path) -> None:
    import highdicom as hd

    ph = generate(4247, matrix=160, slice_mm=(4.0, 5.0))  # feet-first supine: the SEG must still land on the right slices
    files = write_phantom(ph, tmp_path / "ct")
    pacs = StoreSCP(tmp_path / "storescp").start()
    orthanc = Orthanc(tmp_path / "orthanc").start()
    cfg = write_config(
        tmp_path, series="quiet_seconds = 30", web="enabled = true\nport = 0",
        extra=WORKER + destination("storescp", "PACS", pacs.port) + destination("orthanc", "ORTHANC", orthanc.port),
    )
    node = NodeProcess(cfg, tmp_path / "node.log").start()
    try:
        # The PACS has the study; the scanner (or the PACS's auto-routing) also sends it to the node.
        assert storescu(orthanc.port, files, called="ORTHANC").returncode == 0
        r = storescu(node.port, files)
        assert r.returncode == 0, r.stderr
        # complete_on_release: the association carried the whole series.
        wait_for(lambda: pacs.sop_classes() >= {SEG, SR, SC}, 180,
                 what="SEG, SR and SC at storescp")
        out = pacs.by_sop_class()
        source = dcmread(files[0], stop_before_pixels=True)
        for f in out.values():
            ds = dcmread(f, stop_before_pixels=True)
            for key in IDENTITY:
                assert ds.get(key) == source.get(key), f"{key} of {ds.Modality} differs from the source"
            assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        seg = hd.seg.segread(out[SEG])
        assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
        uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        for name, value in (("right lung", RIGHT_LUNG), ("left lung", LEFT_LUNG)):
            number = next(s.segment_number for s in seg.SegmentSequence if s.SegmentLabel.lower() == name)
            mask = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=uids, segment_numbers=[number], assert_missing_frames_are_empty=True,
                ignore_spatial_locations=True,
            )[..., 0]
            assert dice(mask > 0, ph.labels == value) > 0.9, name
        sr = hd.sr.srread(out[SR])
        groups = sr.content.get_volumetric_roi_measurement_groups()  # a TID 1500 report
        assert {str(g.finding_type.meaning) for g in groups} >= {"Right lung", "Left lung"}
        nodules = sr.content.get_image_measurement_groups(finding_type=hd.sr.CodedConcept("786838002", "SCT", "Pulmonary nodule"))
        nodules += [g for g in groups if str(g.finding_type.value) == "786838002"]
        assert nodules  # each finding, or an explicit "absent"
        # Orthanc's study now holds the three new series beside the CT.
        study = orthanc.get("/studies")
        assert len(study) == 1
        # With findings, a Key Object Selection flags their slices (a series of its own).
        findings = [g for g in groups if re.fullmatch(r"nodule \d+", str(g.tracking_identifier))]
        if findings:
            wait_for(lambda: KOS in pacs.sop_classes(), 60,
                     what="the KOS at storescp")
        modalities = sorted(["CT", "OT", "SEG", "SR"] + (["KO"] if findings else []))
        wait_for(lambda: len(orthanc.get(f"/studies/{study[0]}/series")) == len(modalities), 30, what="Orthanc to hold the series")
        series = orthanc.get(f"/studies/{study[0]}/series")
        assert sorted(s["MainDicomTags"].get("Modality") for s in series) == modalities
        assert orthanc.get(f"/studies/{study[0]}")["MainDicomTags"]["StudyInstanceUID"] == source.StudyInstanceUID
        # The job and its deliveries, as an administrator sees them.
        jobs = subprocess.run([sys.executable, "-m", "dicomnode", "jobs", "1", "--config", str(cfg)], capture_output=True, text=True)
        assert "done" in jobs.stdout and "storescp:done" in jobs.stdout and "orthanc:done" in jobs.stdout, jobs.stdout
        assert "infer" in jobs.stdout and "reconstruct" in jobs.stdout
        # The status page, in a real browser, after logging in: the finished job with its preview image.
        with Browser(tmp_path / "chromium") as browser:
            browser.goto(f"http://127.0.0.1:{node.web_port}/login")
            password = (tmp_path / "storage" / "web-admin-password").read_text().strip()
            browser.submit_form('form[action="/login"]', {"username": "admin", "password": password})
            dom = browser.dom()
            row = re.search(r'<tr id="job-1">.*?</tr>', dom, re.S)
            assert row is not None and "done" in row.group(0), dom[:3000]
            wait_for(lambda: browser.images_loaded("#job-1 img.preview"), 30, what="the preview image in the browser")
            assert browser.screenshot(tmp_path / "status-page.png").stat().st_size > 10_000
        # dicomnode retry sends the same objects again: the PACS sees the same UIDs, not new ones.
        before = len(pacs.files())
        retry = subprocess.run([sys.executable, "-m", "dicomnode", "retry", "1", "--config", str(cfg)], capture_output=True, text=True)
        assert retry.returncode == 0, retry.stdout + retry.stderr
        wait_for(lambda: len(pacs.files()) >= 2 * before, 60, what="the re-send")
        resent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in pacs.files()}
        assert len(resent) == before
        assert len(orthanc.get(f"/studies/{study[0]}/instances")) == len(files) + before
    finally:
        node.stop()
        pacs.stop()
        orthanc.stop()


def test_a_bad_series_fails_readably_and_is_quarantined(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    files = make_series("tilt", slices=24)
    for i, f in enumerate(files):  # a gantry tilt: every slice shifted a little more (reconstruction refuses it)
        ds = dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * i, z]
        ds.save_as(f)
    node = node_factory(series_toml="quiet_seconds = 0.5", extra_toml=WORKER)
    assert storescu(node.cfg.node.port, files).returncode == 0
    [job] = wait_for(lambda: [j for j in jobs_of(node) if j.state == "failed"] or None, 60, what="the failed job")
    assert job.error.startswith("the series cannot be reconstructed:") and "gantry tilt" in job.error
    assert "24 file(s) moved to the quarantine" in job.error
    assert len(list(node.cfg.node.quarantine_dir.rglob("*.dcm"))) == 24
    assert not list(node.cfg.node.incoming_dir.rglob("*.dcm"))


def test_a_series_no_model_applies_to_is_ignored(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]]
) -> None:
    files = make_series("head", slices=8, body_part="HEAD")
    node = node_factory(extra_toml=WORKER)
    assert storescu(node.cfg.node.port, files).returncode == 0
    [job] = wait_for(lambda: [j for j in jobs_of(node) if j.state == "ignored"] or None, 60, what="the ignored job")
    assert job.error.startswith("no model applies to modality CT / body part HEAD, read as HEAD")



def test_a_head_ct_labelled_chest_is_not_applicable(
    node_factory: Callable[..., Node], tmp_path: Path
) -> None:
    """A head scan that says CHEST: the model runs, its anatomy gate finds no plausible lungs, nothing is sent."""
    from dicomnode.testing.synthetic import SeriesSpec, write_series
    from tests.test_anatomy import head

    hu, _taken, _sinus = head((40, 96, 96), (2.0, 2.0, 4.0))
    spec = SeriesSpec(slices=40, rows=96, columns=96, pixel_spacing=(2.0, 2.0), slice_spacing=4.0, seed="head-as-chest",
                      body_part="CHEST", signed=True)
    files = write_series(spec, tmp_path / "head", volume=np.round(hu).astype(np.int16))
    pacs = StoreSCP(tmp_path / "pacs").start()
    try:
        node = node_factory(extra_toml=WORKER + destination("pacs", "PACS", pacs.port))
        assert storescu(node.cfg.node.port, files).returncode == 0
        [job] = wait_for(lambda: [j for j in jobs_of(node) if j.state == "not_applicable"] or None, 120, what="the job")
        assert "lung" in (job.error or ""), job.error
        assert not pacs.files()
        assert not list(node.cfg.node.quarantine_dir.rglob("*.dcm"))  # the series is not at fault
        assert len(list(node.cfg.node.incoming_dir.rglob("*.dcm"))) == 40
    finally:
        pacs.stop()


@pytest.mark.parametrize(("body_part", "description", "state"), [(None, "Recon 2", "not_applicable"), ("", "CT Brain", "ignored")])
def test_an_unlabelled_series_is_read_from_its_description_or_left_to_the_image(
    node_factory: Callable[..., Node], tmp_path: Path, body_part: str | None, description: str, state: str
) -> None:
    """No body part: a description that names the head skips the chest model (ignored, with the reason); one that
    names nothing runs it, and its anatomy gate looks at the image (a head: not applicable, nothing sent)."""
    from dicomnode.testing.synthetic import SeriesSpec, write_series
    from tests.test_anatomy import head

    hu, _taken, _sinus = head((40, 96, 96), (2.0, 2.0, 4.0))
    spec = SeriesSpec(slices=40, rows=96, columns=96, pixel_spacing=(2.0, 2.0), slice_spacing=4.0, seed=f"head-{state}",
                      body_part=body_part, series_description=description, signed=True)
    files = write_series(spec, tmp_path / "head", volume=np.round(hu).astype(np.int16))
    node = node_factory(extra_toml=WORKER)
    assert storescu(node.cfg.node.port, files).returncode == 0
    [job] = wait_for(lambda: [j for j in jobs_of(node) if j.state == state] or None, 120, what=f"the {state} job")
    if state == "ignored":
        assert "read as HEAD (SeriesDescription 'CT Brain')" in (job.error or ""), job.error
    else:
        assert "lung" in (job.error or ""), job.error
