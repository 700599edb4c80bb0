"""What a PACS sends with every study but is no image to process: accepted, stored or dropped, never a job.

Dose reports, dose screens (single-frame Secondary Capture with Modality CT),
key object selections, presentation states, PDFs and segmentations (ours,
routed back) are sent by dcmtk's storescu on real associations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from dicomnode.dicom import status
from dicomnode.node import Node
from tests.conftest import jobs_of, series_of
from tests.helpers import storescu

STUDY = generate_uid()
CLASSES = {
    "dose SR": "1.2.840.10008.5.1.4.1.1.88.67",
    "dose screen": "1.2.840.10008.5.1.4.1.1.7",
    "KOS": "1.2.840.10008.5.1.4.1.1.88.59",
    "presentation state": "1.2.840.10008.5.1.4.1.1.11.1",
    "PDF": "1.2.840.10008.5.1.4.1.1.104.1",
}


def non_image(folder: Path, what: str, sop_class: str, series: str | None = None) -> Path:
    """A small, valid object of ``sop_class`` in the study :data:`STUDY`."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series or generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Dose^Test", "DOSE-1", "CT" if what == "dose screen" else "SR"
    ds.SeriesNumber, ds.InstanceNumber = 999, 1
    if what == "dose screen":  # what scanners send: a picture of the dose table
        ds.Rows = ds.Columns = 32
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.zeros((32, 32), dtype=np.uint8).tobytes()
    elif what == "PDF":
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{what.replace(' ', '-')}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_objects_that_come_with_a_study_are_accepted_and_make_no_job(
    node_factory: Callable[..., Node], make_series: Callable[..., list[Path]], tmp_path: Path
) -> None:
    node = node_factory(extra_toml="[worker]\nenabled = false\n")
    files = [non_image(tmp_path, what, uid) for what, uid in CLASSES.items()]
    r = storescu(node.cfg.node.port, files, extra=["-v"])
    assert r.returncode == 0, r.stdout + r.stderr  # every one acknowledged with success
    assert series_of(node) == [] and jobs_of(node) == []  # nothing to complete, no job, no failure
    assert not list(node.cfg.node.storage_dir.rglob("*.dcm"))  # dropped by default
    assert not node.cfg.node.quarantine_dir.exists() or not any(node.cfg.node.quarantine_dir.iterdir())
    # The images of the study still work as before.
    assert storescu(node.cfg.node.port, make_series("ct", slices=4)).returncode == 0
    assert len(series_of(node)) == 1


def test_non_image_objects_can_be_kept(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    node = node_factory('non_image_objects = "store"')
    files = [non_image(tmp_path, what, uid) for what, uid in CLASSES.items()]
    assert storescu(node.cfg.node.port, files).returncode == 0
    kept = sorted(node.cfg.node.other_dir.rglob("*.dcm"))
    assert len(kept) == len(files) and all(p.parts[-3] == STUDY for p in kept)
    assert {p.read_bytes()[128:132] for p in kept} == {b"DICM"}  # Part 10 files, written durably
    assert series_of(node) == [] and jobs_of(node) == []


def test_a_non_image_object_whose_uids_are_not_uids_is_refused_readably(node_factory: Callable[..., Node], tmp_path: Path) -> None:
    """Kept objects are named by their UIDs: one that would name a path outside the store is refused."""
    node = node_factory('non_image_objects = "store"')
    bad = non_image(tmp_path, "dose SR", CLASSES["dose SR"], series="../../../../tmp/evil")
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CLASSES["dose SR"], ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.cfg.node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(bad)
    finally:
        assoc.release()
    assert int(rsp.Status) == status.ERROR_CANNOT_UNDERSTAND
    assert "cannot be parsed" in str(rsp.get("ErrorComment"))
    assert not list(tmp_path.parent.rglob("evil*")) and not list(node.cfg.node.other_dir.rglob("*.dcm"))
