"""DICOM Segmentation (SEG) of a model's label map, through highdicom.

One segment per label found, with the bundle's SNOMED CT category and type,
its colour and the model as the algorithm.  The geometry is that of the
source images: frame ``i`` of every segment lies on source slice ``i`` and
references it, in the source's Frame of Reference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.errors import OutputError

if TYPE_CHECKING:
    from ai.bundle import Bundle, Label

logger = logging.getLogger(__name__)

ANATOMICAL_STRUCTURE = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
ABNORMAL_STRUCTURE = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
PRIVATE_SCHEME = "99DCMNODE"  # for labels a bundle gives no SNOMED CT code


@dataclass(frozen=True)
class SegParams:
    """How to write the SEG, and its identity."""

    series_uid: str
    sop_uid: str
    series_number: int
    series_description: str
    manufacturer: str
    software_version: str
    fractional: bool = False
    keep_empty_frames: bool = False


def label_type(label: Label) -> hd.sr.CodedConcept:
    """The segmented property type of a label (its SNOMED CT code, else a private code)."""
    if label.snomed_code:
        return hd.sr.CodedConcept(label.snomed_code, "SCT", label.snomed_meaning or label.name)
    return hd.sr.CodedConcept(label.name[:16], PRIVATE_SCHEME, label.name)


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


def build_seg(
    sources: Sequence[Dataset],
    labels: np.ndarray,
    probabilities: np.ndarray | None,
    bundle: Bundle,
    params: SegParams,
) -> tuple[hd.seg.Segmentation, dict[int, int]]:
    """Build the SEG.

    Parameters
    ----------
    sources : sequence of Dataset
        Source image headers (no pixel data needed): one per slice in volume
        order, or one multi-frame image with a frame per slice.
    labels : numpy.ndarray
        ``[z, y, x]`` label values on the source grid.
    probabilities : numpy.ndarray, optional
        ``(K, z, y, x)`` scores, channel = label value; needed for FRACTIONAL.
    bundle : Bundle
        Labels, codes, colours and the model's identity.
    params : SegParams
        UIDs, numbers and options.

    Returns
    -------
    (Segmentation, dict)
        The SEG, and which segment number each label value got.

    Raises
    ------
    OutputError
        Shapes disagree, or FRACTIONAL was asked without probabilities.
    """
    frames = sum(int(getattr(s, "NumberOfFrames", 1) or 1) for s in sources)
    if labels.shape[0] != frames or labels.shape[1:] != (int(sources[0].Rows), int(sources[0].Columns)):
        raise OutputError(
            f"the label map {labels.shape} does not fit the {frames} source frame(s) of "
            f"{sources[0].Rows}x{sources[0].Columns}"
        )
    if params.fractional and probabilities is None:
        raise OutputError("a FRACTIONAL segmentation needs the model's probabilities (the job did not keep them)")
    present = [lb for lb in bundle.labels if (labels == lb.value).any()]
    # With nothing found, an explicit empty segmentation (every frame) says so.
    chosen = present or list(bundle.labels)
    keep_empty = params.keep_empty_frames or not present
    numbers = {lb.value: i for i, lb in enumerate(chosen, start=1)}
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=numbers[lb.value],
            segment_label=lb.name[:64],
            segmented_property_category=label_category(lb),
            segmented_property_type=label_type(lb),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm(bundle),
            tracking_uid=hd.UID(),  # regenerated below from the SEG's own UID (deterministic)
            tracking_id=f"{lb.name} segment"[:64],
            display_color=hd.color.CIELabColor.from_rgb(*lb.color),
        )
        for lb in chosen
    ]
    for d in descriptions:  # deterministic tracking UIDs: SEG UID + segment number
        d.TrackingUID = f"{params.sop_uid}.{d.SegmentNumber}"[:64] if len(params.sop_uid) < 60 else d.TrackingUID
    if params.fractional:
        assert probabilities is not None
        pixels = np.stack([probabilities[lb.value] for lb in chosen], axis=-1).astype(np.float32)
    else:
        pixels = np.stack([labels == lb.value for lb in chosen], axis=-1).astype(np.uint8)
    try:
        seg = hd.seg.Segmentation(
            source_images=list(sources),
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
            omit_empty_frames=not keep_empty,
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"cannot build the segmentation: {exc}") from exc
    return seg, numbers
