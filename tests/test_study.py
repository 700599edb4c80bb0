"""A realistic chest CT study, pushed as a PACS auto-route would: one result, from the right series.

The study holds a topogram, a thin (2.5 mm, lung kernel) and a thick (5 mm,
soft kernel) reconstruction of one acquisition, a dose screen and a dose
report, all sent by dcmtk's storescu on one association.  Exactly one SEG and
one SR must reach the PACS, made from the thin recon; every send succeeds,
no job fails, and each skipped series says why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from ai.phantoms import generate
from dicomnode.testing.synthetic import SeriesSpec, write_phantom, write_series
from tests.helpers import NodeProcess, storescu, wait_for, write_config
from tests.peers import StoreSCP
from tests.test_non_image import CLASSES, non_image
from tests.test_pipeline import SEG, SR, WORKER, destination

SEED = 10  # head-first supine, nodules of 11 and 22 mm


def restamp(files: list[Path], **values: object) -> None:
    """Rewrite attributes of every file (what makes separate recons one study)."""
    for f in files:
        ds = dcmread(f)
        for key, value in values.items():
            if value is None:
                if key in ds:
                    delattr(ds, key)
            else:
                setattr(ds, key, value)
        ds.save_as(f)


def study(tmp_path: Path, body_part: str | None) -> tuple[list[Path], str, str]:
    """Topogram, thin and thick recon, dose screen and dose SR of one patient and study: (files, thin series UID, study UID)."""
    thin = write_phantom(generate(SEED, matrix=128, slice_mm=(2.5, 2.5)), tmp_path / "thin")
    thick = write_phantom(generate(SEED, matrix=128, slice_mm=(5.0, 5.0)), tmp_path / "thick")
    first = dcmread(thin[0], stop_before_pixels=True)
    same = {k: first.get(k) for k in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName", "AccessionNumber")}
    restamp(thin, SeriesNumber=3, ConvolutionKernel="B70f", SliceThickness=2.5, BodyPartExamined=body_part,
            SeriesDescription="Thorax 2.5 B70f")
    restamp(thick, SeriesInstanceUID=generate_uid(), SeriesNumber=2, ConvolutionKernel="B31f", SliceThickness=5.0,
            BodyPartExamined=body_part, SeriesDescription="Thorax 5.0 B31f", **same)
    for f in thick:  # its own SOP instances
        ds = dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(f)
    topo = write_series(SeriesSpec(slices=2, rows=128, columns=128, seed="topogram", body_part=body_part,
                                   series_description="Topogram 0.6 T80f"), tmp_path / "topo")
    restamp(topo, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesNumber=1, **same)
    extras = [non_image(tmp_path, what, CLASSES[what]) for what in ("dose screen", "dose SR")]
    restamp(extras, StudyInstanceUID=same["StudyInstanceUID"])
    return topo + thick + thin + extras, str(first.SeriesInstanceUID), str(same["StudyInstanceUID"])


@pytest.mark.slow
@pytest.mark.parametrize("body_part", ["THORAX", None, "chest", "CHEST_ABDOMEN_PELVIS"])
def test_one_result_per_study_from_the_thin_recon(tmp_path: Path, body_part: str | None) -> None:
    from storage.database import open_engine
    from storage.listings import list_jobs

    files, thin_uid, _study_uid = study(tmp_path, body_part)
    pacs = StoreSCP(tmp_path / "pacs").start()
    cfg = write_config(tmp_path, series="quiet_seconds = 30", extra=WORKER + destination("pacs", "PACS", pacs.port))
    node = NodeProcess(cfg, tmp_path / "node.log").start()
    try:
        r = storescu(node.port, files)
        assert r.returncode == 0, r.stdout + r.stderr  # every send succeeds, the dose objects included
        engine = open_engine(f"sqlite:///{tmp_path / 'storage' / 'dicomnode.db'}")
        jobs = wait_for(
            lambda: (js := list_jobs(engine, limit=20)) and len(js) == 3 and all(j.state not in ("queued", "running", "delivering") for j in js) and js,
            180, what="the study's three jobs to finish",
        )
        states = sorted((j.state, j.error or "") for j in jobs)
        assert not [s for s in states if s[0] == "failed"], states
        skipped = [e for s, e in states if s == "ignored"]
        assert len(skipped) == 2, states
        assert any("localizer" in e for e in skipped) and any("series 3" in e and "processed instead" in e for e in skipped), skipped
        wait_for(lambda: {SEG, SR} <= pacs.sop_classes(), 60, what="SEG and SR at the PACS")
        classes = [c for c in (str(dcmread(f, stop_before_pixels=True).SOPClassUID) for f in pacs.files())]
        assert classes.count(SEG) == 1 and classes.count(SR) == 1  # one result for the study
        seg = dcmread(pacs.by_sop_class()[SEG], stop_before_pixels=True)
        assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == thin_uid  # from the thin recon
        assert seg.SeriesNumber == 9031 and "of series 3" in seg.SeriesDescription
        engine.dispose()
    finally:
        node.stop()
        pacs.stop()
