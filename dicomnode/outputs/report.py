"""The TID 1500 Measurement Report (Comprehensive 3D SR) of a model's result, through highdicom.

- For each label found: volume (mL), mean and standard deviation of the
  intensity (HU for CT), in a volumetric ROI group that references its
  segment in the SEG (without a SEG: a group that references the source
  images the label lies on).
- For each lesion (a connected component of a lesion-type label): its volume
  and maximum 3D diameter, referencing its label's segment (a reference to
  SEG frames may not name the segment, and viewers link groups to segments
  by number), or without a SEG the source images it lies on.
- For each label not found: its volume, 0 mL, so that "nothing found" is
  said explicitly.
- For a classifier: each class as a qualitative evaluation (Finding = class)
  with its probability.
- The model is the device observer and the algorithm of every group; the
  intended use ("demonstration; not for diagnosis") is a comment in the
  report's qualitative evaluations and in the series description.

Tracking UIDs are deterministic, and a label's group has the Tracking UID of
its segment in the SEG.
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
from pydicom.sr.coding import Code

from dicomnode.errors import OutputError
from dicomnode.outputs.seg import (
    PRIVATE_SCHEME,
    SourceFrame,
    label_type,
    private_scheme_item,
    tracking_uid,
)
from dicomnode.dicom.uids import derived_uid

if TYPE_CHECKING:
    from ai.bundle import Bundle, Label
    from ai.engine import Result
    from ai.measure import Lesion

logger = logging.getLogger(__name__)

MILLILITRE = Code("mL", "UCUM", "milliliter")  # codes.UCUM.Millilitre does not exist
HOUNSFIELD = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
MILLIMETRE = codes.UCUM.Millimeter
NO_UNITS = codes.UCUM.NoUnits
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
PROCEDURES = {  # CID 100
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
}
IMAGING_PROCEDURE = codes.SCT.ImagingProcedure


@dataclass(frozen=True)
class SRParams:
    """Identity of the report."""

    series_uid: str
    sop_uid: str
    uid_seed: str  # root of the tracking UIDs (the job key), shared with the SEG
    series_number: int
    series_description: str
    manufacturer: str
    software_version: str


@dataclass(frozen=True)
class _Stats:
    """What is reported for one label."""

    label: Label
    volume_ml: float
    voxels: int
    mean: float | None
    std: float | None
    lesions: Sequence[Lesion]


def _algorithm(bundle: Bundle) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=bundle.name[:64], version=bundle.version[:64])


def _coverage(result: Result) -> str:
    """A sentence for the report when the scan does not cover every organ measured (else nothing)."""
    a = result.anatomy
    if a is None or not a.partial:
        return ""
    return f" Partial coverage: {'; '.join(a.cut_off) or 'an organ reaches the edge of the scan'}; its volume is incomplete."


def _class_concept(name: str, labels: Sequence[Label]) -> hd.sr.CodedConcept:
    match = next((lb for lb in labels if lb.name == name), None)
    if match is not None and match.snomed_code:
        return label_type(match)
    return hd.sr.CodedConcept(name[:16], PRIVATE_SCHEME, name[:64])


def _source_images(frames: Sequence[SourceFrame], zs: Sequence[int]) -> list[hd.sr.SourceImageForMeasurementGroup]:
    out = []
    for z in zs:
        frame = frames[z].frame
        out.append(hd.sr.SourceImageForMeasurementGroup.from_source_image(
            frames[z].dataset, referenced_frame_numbers=[frame] if frame is not None else None
        ))
    return out


def _unique_sources(frames: Sequence[SourceFrame]) -> list[Dataset]:
    """Each source image once (a multi-frame image gives many frames)."""
    return list({id(f.dataset): f.dataset for f in frames}.values())


def _referenced_segment(seg: Dataset, number: int, frames: Sequence[SourceFrame]) -> hd.sr.ReferencedSegment:
    """The SR's reference to segment ``number`` of ``seg``.

    highdicom's ``from_segmentation`` reads the segment of each frame from the
    per-frame groups, but a SEG with a single segment keeps it in the shared
    groups; then the reference is built from the source images instead.
    """
    per_frame = seg.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and "SegmentIdentificationSequence" in per_frame[0]:
        return hd.sr.ReferencedSegment.from_segmentation(seg, number)
    sources = [hd.sr.SourceImageForSegmentation.from_source_image(ds) for ds in _unique_sources(frames)]
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number, source_images=sources
    )


def _label_stats(result: Result, bundle: Bundle, labels: np.ndarray, voxel_ml: float) -> list[_Stats]:
    by_value = {m.value: m for m in result.measurements}
    out: list[_Stats] = []
    for lb in bundle.labels:
        m = by_value.get(lb.value)
        if m is not None:
            out.append(_Stats(lb, m.volume_ml, m.voxels, m.mean, m.std, m.lesions))
        else:  # not measured by the engine: at least its volume, from the label map
            n = int(np.count_nonzero(labels == lb.value))
            out.append(_Stats(lb, n * voxel_ml, n, None, None, ()))
    return out


def build_sr(
    frames: Sequence[SourceFrame],
    labels: np.ndarray | None,
    voxel_ml: float,
    seg: Dataset | None,
    segment_numbers: dict[int, int],
    result: Result,
    bundle: Bundle,
    params: SRParams,
) -> hd.sr.Comprehensive3DSR:
    """Build the measurement report.

    Parameters
    ----------
    frames : sequence of SourceFrame
        The source of each volume slice (the evidence).
    labels : numpy.ndarray, optional
        ``[z, y, x]`` label map (None for a classifier).
    voxel_ml : float
        Volume of one voxel in mL.
    seg : Dataset, optional
        The SEG the measurements reference; without one, groups reference the source images.
    segment_numbers : dict
        Label value -> segment number in ``seg``.
    result : Result
        Measurements and class probabilities.
    bundle : Bundle
        Labels and the model's identity.
    params : SRParams
        UIDs and numbers.

    Raises
    ------
    OutputError
        There is nothing to report, or highdicom refused the content.
    """
    modality = str(frames[0].dataset.get("Modality", ""))
    intensity_unit = HOUNSFIELD if modality == "CT" else NO_UNITS
    private = False
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(derived_uid("dicomnode-device", bundle.name, bundle.version)),
            name=bundle.name[:64],
            manufacturer_name=params.manufacturer[:64],
            model_name=f"{bundle.name} {bundle.version}"[:64],
        ),
    )
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    ] = []
    for st in _label_stats(result, bundle, labels, voxel_ml) if labels is not None else []:
        assert labels is not None
        lb = st.label
        finding = label_type(lb)
        private |= finding.scheme_designator == PRIVATE_SCHEME
        common: dict[str, Any] = {"finding_type": finding, "algorithm_id": _algorithm(bundle)}
        track = hd.sr.TrackingIdentifier(uid=tracking_uid(params.uid_seed, lb.value), identifier=lb.name[:64])
        sizes = [hd.sr.Measurement(name=codes.SCT.Volume, value=round(st.volume_ml, 4), unit=MILLILITRE)]
        if st.voxels == 0:  # nothing found: say so (volume 0 mL), referencing no region
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=track, measurements=sizes, **common))
            continue
        if st.mean is not None:
            sizes.append(hd.sr.Measurement(name=codes.SCT.Mean, value=round(st.mean, 3), unit=intensity_unit))
        if st.std is not None:
            sizes.append(hd.sr.Measurement(name=codes.SCT.StandardDeviation, value=round(st.std, 3), unit=intensity_unit))
        mask = np.asarray(labels == lb.value)
        number = segment_numbers.get(lb.value)
        segment = _referenced_segment(seg, number, frames) if seg is not None and number is not None else None
        if segment is not None:
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=track, referenced_segment=segment, measurements=sizes, **common,
            ))
        else:
            zs = [int(z) for z in np.flatnonzero(mask.any(axis=(1, 2)))]
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=track, source_images=_source_images(frames, zs), measurements=sizes, **common
            ))
        for les in st.lesions:
            track = hd.sr.TrackingIdentifier(
                uid=tracking_uid(params.uid_seed, lb.value, les.index), identifier=f"{lb.name} {les.index}"[:64]
            )
            sizes = [
                hd.sr.Measurement(name=codes.SCT.Volume, value=round(les.volume_ml, 4), unit=MILLILITRE),
                hd.sr.Measurement(
                    name=codes.SCT.Diameter, value=round(les.max_diameter_mm, 2), unit=MILLIMETRE, derivation=codes.SCT.Maximum
                ),
            ]
            if segment is not None:
                groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=track, referenced_segment=segment, measurements=sizes, **common,
                ))
            else:
                groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=track, source_images=_source_images(frames, range(*les.slices)), measurements=sizes,
                    **common,
                ))
    for i, (name, p) in enumerate(result.class_probabilities.items(), start=1):
        concept = _class_concept(name, bundle.labels)
        private |= concept.scheme_designator == PRIVATE_SCHEME
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=str(derived_uid("dicomnode-tracking", params.uid_seed, "class", name)), identifier=f"classification: {name}"[:64]
            ),
            algorithm_id=_algorithm(bundle),
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=concept)],
            measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(p), 4), unit=NO_UNITS)],
        ))
    if not groups:
        raise OutputError(f"the model {bundle.name} produced nothing to report (no labels and no class scores)")
    try:
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=PROCEDURES.get(modality, IMAGING_PROCEDURE),
            imaging_measurements=groups,
        )
        # TID 1500 row 12: report-level qualitative evaluations; the intended use, for whoever reads the report.
        note = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        note.ContentSequence = hd.sr.ContentSequence([
            hd.sr.TextContentItem(
                name=codes.DCM.Comment, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                value=f"AI result of {bundle.name} {bundle.version}. Intended use: {bundle.intended_use}" + _coverage(result),
            )
        ])
        report[0].ContentSequence.append(note)
        evidence = _unique_sources(frames) + ([seg] if seg is not None else [])
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report[0],
            series_instance_uid=params.series_uid,
            series_number=params.series_number,
            sop_instance_uid=params.sop_uid,
            instance_number=1,
            manufacturer=params.manufacturer,
            series_description=params.series_description[:64],
            is_complete=True,
            record_evidence=True,
            software_versions=params.software_version,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"cannot build the measurement report: {exc}") from exc
    if private:
        sr.CodingSchemeIdentificationSequence = [private_scheme_item()]
    logger.debug("SR: %d measurement group(s)", len(groups))
    return sr
