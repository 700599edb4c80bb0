"""Key images a radiologist can act on (one per finding, captioned, highlighted, oriented) and the Key Object Selection."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread

from ai.bundle import Label, load_bundle
from ai.coding import Laterality
from ai.findings import Finding, findings
from ai.measure import Edge, measure
from dicomnode.errors import OutputError
from dicomnode.outputs.key_image import build_key_image
from dicomnode.outputs.kos import build_kos
from dicomnode.outputs.preview import (
    EdgeLetters,
    KeyImage,
    caption_of,
    wrap_at_separators,
    edge_letters,
    key_images,
    patient_orientation,
)
from dicomnode.outputs.seg import SourceFrame, source_frames
from dicomnode.outputs.writer import _copy_identity, _save
from dicomnode.testing.synthetic import SeriesSpec, write_series
from dicomnode.volume.reconstruct import Volume, reconstruct
from tests.helpers import require_tool

SHIPPED = Path(__file__).resolve().parents[1] / "ai" / "bundles" / "chest-ct-lungs-nodules"
# The shipped model's identity with two labels of our own: 1 right lung (holding the nodules), 2 nodule.
BUNDLE = replace(
    load_bundle(SHIPPED),
    labels=(
        Label(value=1, name="right lung", snomed_code="3341006", snomed_meaning="Right lung", color=(0, 128, 255),
              laterality=Laterality.RIGHT),
        Label(value=2, name="nodule", snomed_code="27925004", snomed_meaning="Nodule", color=(255, 64, 0), lesion=True),
    ),
    contains={1: (2,)},
)
NODULE_RGB = np.array(BUNDLE.labels[1].color)
SLICES = 20
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


@dataclass(frozen=True)
class Case:
    sources: Sequence[Dataset]  # headers, in volume order
    volume: Volume
    labels: np.ndarray
    findings: list[Finding]
    instance_numbers: list[str]


def sphere(shape: tuple[int, ...], centre: tuple[float, float, float], r: float) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """A 64x64x20 CT: a right lung holding a large nodule (image left) and a small one (image right), both on slice 10."""
    files = write_series(SeriesSpec(seed="key", patient_name="Müller^Jörg"), tmp_path_factory.mktemp("key"))
    vol = reconstruct(files)
    by_uid = {str(h.SOPInstanceUID): h for h in (dcmread(f, stop_before_pixels=True) for f in files)}
    sources = [by_uid[u] for u in vol.sop_uids]
    labels = np.zeros(vol.array.shape, dtype=np.uint8)
    labels[3:18, 8:56, 6:58] = 1
    labels[sphere(labels.shape, (10, 26, 18), 5)] = 2
    labels[sphere(labels.shape, (10, 40, 46), 3)] = 2
    image = np.where(labels == 2, 20.0, vol.array)
    m = measure(labels, vol.spacing, {1: "right lung", 2: "nodule"}, image=image, lesion_values=[2], contains={1: [2]})
    numbers = [str(d.InstanceNumber) for d in sources]
    return Case(sources, replace(vol, array=image), labels, findings(m, BUNDLE), numbers)


def render(c: Case, *, limit: int = 6, notes: Sequence[str] = ()) -> list[KeyImage]:
    v = c.volume
    return key_images(v.array, c.labels, BUNDLE, v.spacing, v.direction, c.findings, instance_numbers=c.instance_numbers,
                      limit=limit, notes=notes)


def saturated(rgb: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Pixels drawn in ``colour`` at full strength (a dimmed outline blends with the grey below it)."""
    return np.abs(rgb.astype(int) - colour).sum(axis=-1) < 60


def dciodvfy_messages(path: Path) -> list[str]:
    exe = require_tool("dciodvfy")
    r = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith(("Error", "Warning"))]


def test_one_key_image_per_finding_largest_first_with_a_caption_a_radiologist_can_use(case: Case) -> None:
    big, small = case.findings
    assert (big.number, small.number) == (1, 2) and big.lesion.volume_ml > small.lesion.volume_ml
    imgs = render(case, notes=["source series incomplete: 18 of 20 instances"])
    assert [i.finding for i in imgs] == [1, 2]
    for img, f in zip(imgs, case.findings):
        assert f.lesion.axes is not None
        assert img.slice_index == f.lesion.axes.slice_index == 10
        assert img.rgb.shape == (512, 512, 3) and img.rgb.dtype == np.uint8
        long_short = f"{f.lesion.axes.long_mm:.1f} × {f.lesion.axes.short_mm:.1f} mm"
        image_number = case.instance_numbers[img.slice_index]
        assert img.caption == f"nodule {f.number} · right lung · {long_short} · {f.lesion.volume_ml:.2f} mL · image {image_number} of 20"
    assert [i.finding for i in render(case, limit=1)] == [1]
    # With a candidate classifier each finding carries its probability, on the image as in the SR.
    sure = replace(small, lesion=replace(small.lesion, probability=0.372))
    assert caption_of(sure, "image 7 of 20").endswith(f"{small.lesion.volume_ml:.2f} mL · probability 0.37 · image 7 of 20")
    # A caption too long for one line breaks between its parts, never inside one (unless a part is itself too long).
    text = "nodule 1 · right lung · 26.0 × 20.6 mm · 5.84 mL · probability 0.96 · image 45 of 112"
    assert wrap_at_separators(text, 71) == ["nodule 1 · right lung · 26.0 × 20.6 mm · 5.84 mL · probability 0.96", "image 45 of 112"]
    assert wrap_at_separators("a · " + "b" * 30, 20) == ["a", "b" * 20, "b" * 10]

    # The captioned finding is drawn at full strength (thick outline and marker); the other one is dimmed.
    left, right = (saturated(img.rgb, NODULE_RGB) for img in imgs)
    assert left[:, :256].sum() > 5 * left[:, 256:].sum()  # finding 1 lies in the image's left half
    assert right[:, 256:].sum() > 5 * right[:, :256].sum()


def test_the_caption_names_the_viewers_image_and_a_truncated_finding(case: Case) -> None:
    reversed_numbers = [str(SLICES - z) for z in range(SLICES)]  # InstanceNumber running against the volume
    f = case.findings[1]
    cut = replace(f, lesion=replace(f.lesion, edges=(Edge.FIRST_SLICE,)))
    [img] = key_images(case.volume.array, case.labels, BUNDLE, case.volume.spacing, case.volume.direction, [cut],
                       instance_numbers=reversed_numbers)
    assert f"image {SLICES - img.slice_index} of 20" in img.caption
    assert img.caption.endswith("· possibly truncated (touches the first slice)")
    frames = [f"frame {z + 1}" for z in range(SLICES)]
    [img] = key_images(case.volume.array, case.labels, BUNDLE, case.volume.spacing, case.volume.direction, [f],
                       instance_numbers=frames)
    assert f"· frame {img.slice_index + 1} of 20" in img.caption
    with pytest.raises(OutputError, match="instance number"):
        key_images(case.volume.array, case.labels, BUNDLE, case.volume.spacing, case.volume.direction, [f], instance_numbers=["1"])


def test_without_findings_one_overview_at_the_largest_organ_area(case: Case) -> None:
    organ_only = np.where(case.labels == 1, 1, 0).astype(np.uint8)
    organ_only[3:6] = 0
    organ_only[12, 2:62, 2:62] = 1  # the largest area
    v = case.volume
    [img] = key_images(v.array, organ_only, BUNDLE, v.spacing, v.direction, [], instance_numbers=case.instance_numbers)
    assert (img.slice_index, img.finding) == (12, None)
    assert img.caption == f"no nodule found · image {case.instance_numbers[12]} of 20"
    no_lesions = replace(BUNDLE, labels=BUNDLE.labels[:1])
    [img] = key_images(v.array, organ_only, no_lesions, v.spacing, v.direction, [], instance_numbers=case.instance_numbers)
    assert img.caption.startswith("overview · image")


def test_orientation_letters_follow_the_direction_of_the_stored_pixels() -> None:
    assert edge_letters(np.eye(3)) == EdgeLetters(left="R", right="L", top="A", bottom="P")  # head first supine
    assert edge_letters(np.diag([-1.0, 1.0, -1.0])) == EdgeLetters(left="L", right="R", top="A", bottom="P")  # feet first
    assert edge_letters(np.diag([-1.0, -1.0, 1.0])) == EdgeLetters(left="L", right="R", top="P", bottom="A")  # prone
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    tilted = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    assert edge_letters(tilted) == EdgeLetters(left="RA", right="LP", top="AL", bottom="PR")
    assert patient_orientation(np.eye(3)) == ("L", "P") and patient_orientation(np.diag([-1.0, -1.0, 1.0])) == ("R", "A")


def test_the_letters_are_drawn_on_the_edges(case: Case) -> None:
    """Head first against feet first: only the left and right edges' letters differ between the two pictures."""
    v = case.volume
    f = case.findings[:1]
    hfs, ffs = (
        key_images(v.array, case.labels, BUNDLE, v.spacing, d, f, instance_numbers=case.instance_numbers)[0].rgb
        for d in (np.eye(3), np.diag([-1.0, 1.0, -1.0]))
    )
    differs = np.argwhere((hfs != ffs).any(axis=-1))
    assert differs.size and set(np.unique(differs[:, 1] // 64)) <= {0, 7}  # only near the left and right edges


def key_image_sc(case: Case, img: KeyImage, source: SourceFrame, n: int = 1) -> Dataset:
    f = case.findings[(img.finding or 1) - 1]
    sc = build_key_image(
        source.dataset, img, BUNDLE, series_uid="2.25.100", sop_uid=f"2.25.100{n}", instance_number=n, series_number=9003,
        series_description="AI key images", manufacturer="dicomnode", software_version="1.0",
        orientation=patient_orientation(case.volume.direction), source=source, tracking=(f.name, f"2.25.77{f.number}"),
    )
    _copy_identity(sc, case.sources[0], frame_of_reference=False)
    return sc


def test_key_image_references_its_source_slice_and_stays_dciodvfy_clean(case: Case, tmp_path: Path) -> None:
    frames = source_frames(case.sources, case.volume)
    img = render(case, limit=1)[0]
    sc = key_image_sc(case, img, frames[img.slice_index])
    out = _save(sc, tmp_path / "key.dcm", "preview", [])
    assert dciodvfy_messages(out.path) == []
    ds = dcmread(out.path)
    [src] = ds.SourceImageSequence
    assert src.ReferencedSOPInstanceUID == case.sources[img.slice_index].SOPInstanceUID
    assert src.ReferencedSOPClassUID == case.sources[img.slice_index].SOPClassUID and "ReferencedFrameNumber" not in src
    purpose = src.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "YES"
    assert ds.ImageComments.startswith("nodule 1; right lung; ") and "nodule 1 (tracking UID 2.25.771)" in ds.ImageComments
    assert str(ds.PatientName) == "Müller^Jörg"
    assert (ds.pixel_array == img.rgb).all()
    frame_of = replace(frames[img.slice_index], frame=7)  # a frame of a multi-frame source is named
    assert build_key_image(case.sources[0], img, BUNDLE, series_uid="2.25.1", sop_uid="2.25.2", instance_number=1,
                           series_number=1, series_description="", manufacturer="", software_version="",
                           orientation=("L", "P"), source=frame_of).SourceImageSequence[0].ReferencedFrameNumber == 7


def test_key_object_selection_is_dciodvfy_clean_and_reads_back(case: Case, tmp_path: Path) -> None:
    frames = source_frames(case.sources, case.volume)
    imgs = render(case)
    scs = [key_image_sc(case, img, frames[img.slice_index], n) for n, img in enumerate(imgs, start=1)]
    enhanced = Dataset()  # a frame of a multi-frame image of the same study
    enhanced.SOPClassUID, enhanced.SOPInstanceUID = ENHANCED_CT, "2.25.555"
    enhanced.StudyInstanceUID, enhanced.SeriesInstanceUID = case.sources[0].StudyInstanceUID, "2.25.556"
    enhanced.Rows = enhanced.Columns = 64
    refs: list[tuple[Dataset, int | None]] = [(frames[i.slice_index].dataset, None) for i in imgs]  # both on slice 10: once
    refs += [(sc, None) for sc in scs] + [(enhanced, 3)]
    description = "; ".join(f"{f.name} (tracking UID 2.25.77{f.number}): image 11" for f in case.findings)
    kos = build_kos(refs, description=description, series_uid="2.25.200", sop_uid="2.25.201", series_number=9004,
                    series_description="AI key objects", manufacturer="dicomnode", software_version="1.0")
    _copy_identity(kos, case.sources[0], frame_of_reference=False)
    out = _save(kos, tmp_path / "kos.dcm", "kos", [])
    assert dciodvfy_messages(out.path) == []

    doc = hd.ko.KeyObjectSelectionDocument.from_dataset(dcmread(out.path))
    assert doc.Modality == "KO" and doc.SeriesInstanceUID == "2.25.200" and str(doc.PatientName) == "Müller^Jörg"
    assert doc.StudyInstanceUID == case.sources[0].StudyInstanceUID
    root = doc.content[0]
    assert (root.ConceptNameCodeSequence[0].CodeValue, root.ConceptNameCodeSequence[0].CodingSchemeDesignator) == ("113000", "DCM")
    items = root.ContentSequence
    [text] = [i for i in items if i.ValueType == "TEXT"]
    assert text.TextValue == description and text.ConceptNameCodeSequence[0].CodeValue == "113012"
    images = [i.ReferencedSOPSequence[0] for i in items if i.ValueType == "IMAGE"]
    expected = [case.sources[10].SOPInstanceUID, *(sc.SOPInstanceUID for sc in scs), "2.25.555"]
    assert [r.ReferencedSOPInstanceUID for r in images] == expected
    assert images[-1].ReferencedFrameNumber == 3 and all("ReferencedFrameNumber" not in r for r in images[:-1])
    assert {doc.resolve_reference(u)[1] for u in expected} == {case.sources[0].SeriesInstanceUID, "2.25.100", "2.25.556"}
    with pytest.raises(OutputError, match="at least one"):
        build_kos([], description="", series_uid="2.25.3", sop_uid="2.25.4", series_number=1, series_description="",
                  manufacturer="", software_version="")

