"""DICOM Segmentation (SEG) of a model's label map, through highdicom.

One segment per finding (each lesion on its own: "nodule 1" is segment 1,
the largest) and one per organ found, with the bundle's SNOMED CT category
and type, the anatomic region and its side, its colour, the model as the
algorithm, and the Tracking ID and UID that the SR uses for the same thing.  The geometry is that of the
source images: the frames of every segment lie on the source slices (or
frames of a multi-frame source) and reference them, in the source's Frame of
Reference.  Only the source headers are needed, never their pixel data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.errors import OutputError
from dicomnode.dicom.uids import derived_uid

if TYPE_CHECKING:
    from ai.bundle import Bundle, Label
    from ai.coding import Concept, Laterality
    from ai.findings import Finding
    from dicomnode.volume.reconstruct import Volume

logger = logging.getLogger(__name__)

ANATOMICAL_STRUCTURE = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
PRIVATE_SCHEME = "99DCMNODE"  # for labels and classes a bundle gives no SNOMED CT code
POSITION_TOLERANCE = 0.25  # of the slice spacing, when matching volume slices to source frames


@dataclass(frozen=True)
class SourceFrame:
    """The source image (and frame of a multi-frame image) under one volume slice."""

    dataset: Dataset
    frame: int | None  # 1-based frame number in a multi-frame image; None for a single-frame image
    position: tuple[float, float, float]  # ImagePositionPatient of the slice, as the source stores it


@dataclass(frozen=True)
class SegParams:
    """How to write the SEG, and its identity."""

    series_uid: str
    sop_uid: str
    uid_seed: str  # root of the tracking UIDs (the job key): the same finding has the same UID in SEG and SR
    series_number: int
    series_description: str
    manufacturer: str
    software_version: str
    fractional: bool = False
    keep_empty_frames: bool = False


def private_scheme_item() -> Dataset:
    """The Coding Scheme Identification item that declares :data:`PRIVATE_SCHEME`."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "dicomnode local codes"
    item.CodingSchemeResponsibleOrganization = "dicomnode"
    return item


def tracking_uid(seed: str, label_value: int, lesion: int | None = None) -> str:
    """The deterministic Tracking UID of a label (or one of its lesions) in a job's SEG and SR."""
    return str(derived_uid("dicomnode-tracking", seed, label_value, "" if lesion is None else lesion))


def label_type(label: Label) -> hd.sr.CodedConcept:
    """The segmented property type of a label (its SNOMED CT code, else a private code)."""
    if label.snomed_code:
        return hd.sr.CodedConcept(label.snomed_code, "SCT", label.snomed_meaning or label.name)
    return hd.sr.CodedConcept(label.name[:16], PRIVATE_SCHEME, label.name[:64])


def label_category(label: Label) -> hd.sr.CodedConcept:
    """The segmented property category: the bundle's, else anatomical or abnormal structure."""
    if label.category_code:
        return hd.sr.CodedConcept(label.category_code, "SCT", label.category_meaning or label.category_code)
    return ABNORMAL_STRUCTURE if label.lesion else ANATOMICAL_STRUCTURE


def algorithm(bundle: Bundle) -> hd.AlgorithmIdentificationSequence:
    """The model, as the algorithm that made the segments."""
    return hd.AlgorithmIdentificationSequence(
        name=bundle.name[:64], version=bundle.version[:64], family=codes.cid7162.ArtificialIntelligence
    )


def _position(value: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    return (float(value[0]), float(value[1]), float(value[2]))


def is_multiframe(ds: Dataset) -> bool:
    """Whether ``ds`` is a multi-frame image (frames described by functional groups)."""
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds


def source_frames(sources: Sequence[Dataset], volume: Volume) -> list[SourceFrame]:
    """The source image and frame of every slice of ``volume``, in volume order.

    Single-frame sources are in volume order already (``volume.sop_uids``).
    The frames of a multi-frame source may be stored in any order, and some of
    them may belong to another stack; each volume slice is matched to the frame
    at its position.

    Raises
    ------
    OutputError
        A slice has no source frame at its position, or the sources mix
        single-frame and multi-frame images.
    """
    nz = volume.array.shape[0]
    if not any(is_multiframe(s) for s in sources):
        return [SourceFrame(s, None, _position(s.ImagePositionPatient)) for s in sources]
    if len(sources) != 1:
        raise OutputError(f"the slices come from {len(sources)} images, of which some are multi-frame: not supported")
    src = sources[0]
    try:
        positions = np.array(
            [p[0].ImagePositionPatient for p in hd.utils.get_plane_positions_of_image(src)], dtype=np.float64
        )
    except (AttributeError, KeyError, IndexError, ValueError) as exc:
        raise OutputError(f"the multi-frame source has no usable per-frame plane positions: {exc}") from exc
    step = np.asarray(volume.direction, dtype=np.float64)[:, 2] * float(volume.spacing[2])
    tolerance = POSITION_TOLERANCE * float(volume.spacing[2])
    out: list[SourceFrame] = []
    for z in range(nz):
        expected = np.asarray(volume.origin, dtype=np.float64) + z * step
        dist = np.linalg.norm(positions - expected, axis=1)
        f = int(np.argmin(dist))
        if dist[f] > tolerance:
            raise OutputError(
                f"slice {z + 1} of {nz} has no source frame at its position (nearest {dist[f]:.2f} mm away)"
            )
        out.append(SourceFrame(src, f + 1, _position(positions[f])))
    if len({f.frame for f in out}) != nz:
        raise OutputError("two slices of the volume fall on the same source frame")
    return out


@dataclass(frozen=True)
class Segment:
    """One segment of the SEG: a finding (one lesion) or a whole label (an organ)."""

    number: int
    label: Label
    finding: Finding | None
    tracking_uid: str

    @property
    def name(self) -> str:
        """``"nodule 2"`` for a finding, the label's name otherwise."""
        return self.finding.name if self.finding is not None else self.label.name

    def site(self) -> tuple[Concept | None, Laterality | None]:
        """Anatomic region and side of the segment."""
        if self.finding is not None:
            return self.finding.site, self.finding.side
        return self.label.site, self.label.laterality

    def paint(self, out: np.ndarray, labels: np.ndarray) -> None:
        """Write its segment number into ``out`` at its voxels (a finding only within its own box)."""
        les = self.finding.lesion if self.finding is not None else None
        if les is not None and les.box is not None and les.mask is not None:
            out[les.box][les.mask] = self.number
        elif les is None:
            out[labels == self.label.value] = self.number


def plan_segments(labels: np.ndarray, bundle: Bundle, findings: Sequence[Finding], seed: str) -> list[Segment]:
    """The segments of a result: its findings, numbered as they are (largest first), then the organs found.

    A lesion label with voxels but no findings (a result measured without
    lesions) becomes one whole-label segment.  Labels with no voxels get no
    segment: the report says what was not found.
    """
    out = [Segment(f.number, f.label, f, tracking_uid(seed, f.label.value, f.number)) for f in findings]
    with_findings = {f.label.value for f in findings}
    n = len(out)
    for lb in bundle.labels:
        if lb.value in with_findings or not (labels == lb.value).any():
            continue
        n += 1
        out.append(Segment(n, lb, None, tracking_uid(seed, lb.value)))
    return out


def anatomic_region(site: Concept | None) -> list[hd.sr.CodedConcept] | None:
    """The AnatomicRegionSequence of a segment (None when the site is unknown); the side goes in its modifier."""
    if site is None:
        return None
    return [hd.sr.CodedConcept(site.code, site.scheme, site.meaning)]


def build_seg(
    frames: Sequence[SourceFrame],
    labels: np.ndarray,
    probabilities: np.ndarray | None,
    bundle: Bundle,
    segments: Sequence[Segment],
    params: SegParams,
) -> hd.seg.Segmentation:
    """Build the SEG.

    Parameters
    ----------
    frames : sequence of SourceFrame
        The source of each slice, in volume order (see :func:`source_frames`).
    labels : numpy.ndarray
        ``[z, y, x]`` label values on the source grid.
    probabilities : numpy.ndarray, optional
        ``(K, z, y, x)`` scores, channel = label value; needed for FRACTIONAL.
    bundle : Bundle
        Labels, codes, colours and the model's identity.
    segments : sequence of Segment
        What goes in, numbered 1..N (see :func:`plan_segments`); at least one.
    params : SegParams
        UIDs, numbers and options.

    Returns
    -------
    Segmentation
        One segment per finding and per organ found; segments do not overlap.

    Raises
    ------
    OutputError
        Shapes disagree, FRACTIONAL was asked without probabilities, there
        is no segment, or highdicom refused the content.
    """
    first = frames[0].dataset
    if labels.shape[0] != len(frames) or labels.shape[1:] != (int(first.Rows), int(first.Columns)):
        raise OutputError(
            f"the label map {labels.shape} does not fit the {len(frames)} source slice(s) of {first.Rows}x{first.Columns}"
        )
    if not segments:
        raise OutputError("a segmentation needs at least one segment")
    if params.fractional and probabilities is None:
        raise OutputError("a FRACTIONAL segmentation needs the model's probabilities (the job did not keep them)")
    if params.fractional and probabilities is not None:
        need = max(lb.value for lb in bundle.labels) + 1
        if probabilities.ndim != 4 or probabilities.shape[0] < need or probabilities.shape[1:] != labels.shape:
            raise OutputError(f"the probabilities {probabilities.shape} do not fit {need} channel(s) of the label map {labels.shape}")
    descriptions = []
    for seg in segments:
        site, side = seg.site()
        desc = hd.seg.SegmentDescription(
            segment_number=seg.number,
            segment_label=seg.name[:64],
            segmented_property_category=label_category(seg.label),
            segmented_property_type=label_type(seg.label),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm(bundle),
            tracking_uid=seg.tracking_uid,
            tracking_id=seg.name[:64],
            anatomic_regions=anatomic_region(site),
            display_color=hd.color.CIELabColor.from_rgb(*seg.label.color),
        )
        if side is not None and "AnatomicRegionSequence" in desc:
            desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
                hd.sr.CodedConcept(side.code, "SCT", side.meaning)
            ]
        descriptions.append(desc)
    if params.fractional:
        assert probabilities is not None
        pixels: np.ndarray = np.zeros(labels.shape + (len(segments),), dtype=np.float32)
        for i, seg in enumerate(segments):
            p = np.clip(probabilities[seg.label.value], 0.0, 1.0)
            if seg.finding is not None and seg.finding.lesion.box is not None:  # the finding's neighbourhood only
                box = seg.finding.lesion.box
                pixels[box + (i,)] = p[box]
            else:
                pixels[..., i] = p
    else:  # segments do not overlap: a label map of segment numbers (one array, not one per segment)
        pixels = np.zeros(labels.shape, dtype=np.uint8 if len(segments) < 256 else np.uint16)
        for seg in segments:
            seg.paint(pixels, labels)
    geometry: dict[str, Any] = {}  # keyword arguments of hd.seg.Segmentation
    if frames[0].frame is not None:  # a multi-frame source: place each slice on its frame, highdicom references it
        geometry["plane_positions"] = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, f.position) for f in frames]
    try:
        seg_ds = hd.seg.Segmentation(
            source_images=[first] if frames[0].frame is not None else [f.dataset for f in frames],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if params.fractional else hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=params.series_uid,
            series_number=params.series_number,
            sop_instance_uid=params.sop_uid,
            instance_number=1,
            manufacturer=params.manufacturer,
            manufacturer_model_name=bundle.name[:64],
            software_versions=params.software_version,
            device_serial_number=bundle.version[:64],
            content_description=f"{bundle.name} {bundle.version}: {bundle.intended_use}"[:64],
            content_label="AI_SEGMENTATION",
            content_creator_name="dicomnode^AI",
            series_description=params.series_description[:64],
            omit_empty_frames=not params.keep_empty_frames,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            **geometry,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"cannot build the segmentation: {exc}") from exc
    if any(label_type(s.label).scheme_designator == PRIVATE_SCHEME for s in segments):
        seg_ds.CodingSchemeIdentificationSequence = [private_scheme_item()]
    logger.debug("SEG: %d segment(s), %d frame(s)", len(segments), int(seg_ds.NumberOfFrames))
    return seg_ds
