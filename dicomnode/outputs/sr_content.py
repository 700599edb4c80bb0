"""The content of the measurement report: codes and one builder per kind of group.

- a finding (one lesion): TID 1411 referencing its own segment, with its
  finding concept, Finding Site and laterality, volume, long and short axis
  in the axial slice where the long axis is largest (each a 3D line in that
  slice, and that slice as the source of the measurement), the mean diameter
  (Fleischner), and mean and SD of HU; a 3D point at its centre;
- an organ: TID 1411 referencing its segment, volume with site and side;
- a site with organs on both sides: the total volume (laterality "Right and left");
- a lesion label with no finding: "absent", explicitly;
- a classification: the probability, under the model that computed it.

Standard codes (SNOMED CT, DCM, LOINC, UCUM) wherever one exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.outputs.seg import PRIVATE_SCHEME, SourceFrame, label_type

if TYPE_CHECKING:
    from ai.bundle import Bundle, Label
    from ai.coding import Concept, Laterality
    from ai.findings import Finding

MILLILITRE = Code("mL", "UCUM", "milliliter")  # codes.UCUM.Millilitre does not exist
HOUNSFIELD = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
MILLIMETRE = codes.UCUM.Millimeter
NO_UNITS = codes.UCUM.NoUnits
RIGHT_AND_LEFT = Code("51440002", "SCT", "Right and left")  # CID 244; pydicom says "(qualifier value)"
STANDARD_SCHEMES = frozenset({"SCT", "DCM", "LN", "UCUM", "RADLEX", "NCIt", "UMLS", "FMA"})
PROCEDURES = {  # CID 100, by modality
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
}
REGION_PROCEDURES = {("CT", "CHEST"): Code("24627-2", "LN", "CT Chest")}  # CID 100 is extensible
IMAGING_PROCEDURE = codes.SCT.ImagingProcedure

Group = Union[hd.sr.MeasurementsAndQualitativeEvaluations, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]


def coded(c: Concept) -> hd.sr.CodedConcept:
    """A bundle's concept as an SR code."""
    return hd.sr.CodedConcept(c.code, c.scheme, c.meaning)


def side_code(side: Laterality | None) -> hd.sr.CodedConcept | None:
    """The SNOMED CT code of a side (CID 244)."""
    return None if side is None else hd.sr.CodedConcept(side.code, "SCT", side.meaning)


def finding_concept(label: Label) -> hd.sr.CodedConcept:
    """What a lesion label's findings are (e.g. Pulmonary nodule): its ``finding``, else its segment type."""
    return coded(label.finding) if label.finding is not None else label_type(label)


def procedure(source: Dataset, bundle: Bundle, modality: str) -> hd.sr.CodedConcept:
    """The procedure reported: the source's own code, else the bundle's, else one from modality and body part.

    A source code in a local scheme is not copied: the report would need that
    scheme's identification, which the source does not give.
    """
    for item in source.get("ProcedureCodeSequence") or []:
        scheme = str(item.get("CodingSchemeDesignator", ""))
        if scheme in STANDARD_SCHEMES and item.get("CodeValue") and item.get("CodeMeaning"):
            return hd.sr.CodedConcept(str(item.CodeValue), scheme, str(item.CodeMeaning)[:64])
    if bundle.procedure is not None:
        return coded(bundle.procedure)
    part = str(source.get("BodyPartExamined", "") or (bundle.body_parts[0] if bundle.body_parts else "")).upper()
    hit = REGION_PROCEDURES.get((modality, part))
    if hit is not None:
        return hd.sr.CodedConcept.from_code(hit)
    return hd.sr.CodedConcept.from_code(PROCEDURES.get(modality, IMAGING_PROCEDURE))


@dataclass(frozen=True)
class Geometry:
    """From volume voxels to the patient, and which source image each slice is."""

    frames: Sequence[SourceFrame]
    affine: np.ndarray  # 4x4, voxel index (x, y, z) -> LPS mm
    frame_of_reference_uid: str

    def patient(self, zyx: Sequence[float]) -> np.ndarray:
        """LPS millimetres of a (z, y, x) voxel coordinate."""
        return (self.affine @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))[:3]

    def source_image(self, z: int) -> hd.sr.SourceImageForMeasurement:
        """The source image (and frame) of slice ``z``."""
        f = self.frames[z]
        return hd.sr.SourceImageForMeasurement.from_source_image(
            f.dataset, referenced_frame_numbers=[f.frame] if f.frame is not None else None
        )

    def group_image(self, z: int) -> hd.sr.SourceImageForMeasurementGroup:
        """The source image (and frame) of slice ``z``, as the evidence of a TID 1501 group."""
        f = self.frames[z]
        return hd.sr.SourceImageForMeasurementGroup.from_source_image(
            f.dataset, referenced_frame_numbers=[f.frame] if f.frame is not None else None
        )

    def line(self, ends: Sequence[Sequence[float]]) -> hd.sr.CoordinatesForMeasurement3D:
        """A 3D polyline between two voxel coordinates."""
        pts = np.stack([self.patient(e) for e in ends]).astype(np.float32)
        return hd.sr.CoordinatesForMeasurement3D(hd.sr.GraphicTypeValues3D.POLYLINE, pts, self.frame_of_reference_uid)


def site(c: Concept | None, side: Laterality | None) -> list[hd.sr.FindingSite]:
    """The Finding Site (with its laterality) of a group, or none when the site is unknown."""
    if c is None:
        return []
    return [hd.sr.FindingSite(anatomic_location=coded(c), laterality=side_code(side))]


def _intensity(mean: float | None, std: float | None, unit: Code) -> list[hd.sr.Measurement]:
    out = []
    if mean is not None:
        out.append(hd.sr.Measurement(name=codes.SCT.Mean, value=round(mean, 1), unit=unit))
    if std is not None:
        out.append(hd.sr.Measurement(name=codes.SCT.StandardDeviation, value=round(std, 1), unit=unit))
    return out


def comment(text: str) -> hd.sr.TextContentItem:
    """A Comment text item (DCM 121106)."""
    return hd.sr.TextContentItem(name=codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _infer_from(num: hd.sr.Measurement, coords: hd.sr.CoordinatesForMeasurement3D) -> None:
    """Add ``coords`` as the source of measurement ``num`` (TID 300 row "INFERRED FROM SCOORD3D").

    highdicom refuses coordinates in the measurements of a TID 1411 group
    when it builds one; TID 1411 is extensible, and a viewer can then draw
    the axis where it was measured, so they are added after the group is built.
    """
    item = num[0]
    if "ContentSequence" not in item:
        item.ContentSequence = hd.sr.ContentSequence([])
    item.ContentSequence.append(coords)


def finding_group(
    f: Finding,
    track: hd.sr.TrackingIdentifier,
    segment: hd.sr.ReferencedSegment | None,
    geo: Geometry,
    algorithm: hd.sr.AlgorithmIdentification,
    intensity_unit: Code,
) -> Group:
    """The TID 1411 group of one finding (TID 1501 with its source images when there is no SEG)."""
    les = f.lesion
    measurements = [hd.sr.Measurement(name=codes.SCT.Volume, value=round(les.volume_ml, 4), unit=MILLILITRE)]
    lines: list[tuple[hd.sr.Measurement, hd.sr.CoordinatesForMeasurement3D]] = []
    ax = les.axes
    if ax is not None:
        source = [geo.source_image(ax.slice_index)]  # the slice it was measured on: where a viewer should go
        long_axis = hd.sr.Measurement(name=codes.SCT.LongAxis, value=round(ax.long_mm, 1), unit=MILLIMETRE, referenced_images=source)
        short_axis = hd.sr.Measurement(name=codes.SCT.ShortAxis, value=round(ax.short_mm, 1), unit=MILLIMETRE, referenced_images=source)
        lines = [(long_axis, geo.line(ax.long_ends)), (short_axis, geo.line(ax.short_ends))]
        measurements += [
            long_axis, short_axis,
            hd.sr.Measurement(name=codes.SCT.Diameter, value=round(ax.mean_mm, 1), unit=MILLIMETRE, derivation=codes.SCT.Mean),
        ]
    measurements += _intensity(les.mean, les.std, intensity_unit)
    if les.probability is not None:  # the candidate classifier's: how sure the model is that this is a lesion
        measurements.append(hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(les.probability), 4), unit=NO_UNITS))
    common: dict[str, Any] = {
        "tracking_identifier": track, "finding_type": finding_concept(f.label), "algorithm_id": algorithm,
        "finding_sites": site(f.site, f.side) or None, "measurements": measurements,
    }
    group: Group
    if segment is not None:
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **common)
    else:
        zs = range(*les.slices)
        group = hd.sr.MeasurementsAndQualitativeEvaluations(source_images=[geo.group_image(z) for z in zs], **common)
    for num, coords in lines:
        _infer_from(num, coords)
    centre = hd.sr.Scoord3DContentItem(
        name=codes.DCM.Center, graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=geo.patient(les.centroid_voxel)[None, :].astype(np.float32),
        frame_of_reference_uid=geo.frame_of_reference_uid, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    group[0].ContentSequence.append(centre)
    if les.edges:
        edges = " and ".join(e.value for e in les.edges)
        group[0].ContentSequence.append(comment(f"Possibly truncated: {f.name} touches the {edges} of the scan."))
    return group


def organ_group(
    label: Label,
    volume_ml: float,
    mean: float | None,
    std: float | None,
    track: hd.sr.TrackingIdentifier,
    segment: hd.sr.ReferencedSegment | None,
    source_images: Sequence[hd.sr.SourceImageForMeasurementGroup],
    algorithm: hd.sr.AlgorithmIdentification,
    intensity_unit: Code,
) -> Group:
    """The group of an organ label: its volume (with the lesions it contains), intensity, site and side."""
    measurements = [hd.sr.Measurement(name=codes.SCT.Volume, value=round(volume_ml, 2), unit=MILLILITRE)]
    measurements += _intensity(mean, std, intensity_unit)
    common: dict[str, Any] = {
        "tracking_identifier": track, "finding_type": label_type(label), "algorithm_id": algorithm,
        "finding_sites": site(label.site, label.laterality) or None, "measurements": measurements,
    }
    if segment is not None:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=segment, **common)
    return hd.sr.MeasurementsAndQualitativeEvaluations(source_images=list(source_images) or None, **common)


def absent_group(
    label: Label, track: hd.sr.TrackingIdentifier, algorithm: hd.sr.AlgorithmIdentification, what: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A label the model did not find: "absent", said explicitly, with a volume of 0 mL."""
    concept = finding_concept(label) if label.lesion else label_type(label)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=track, finding_type=concept, algorithm_id=algorithm,
        finding_sites=site(label.site, label.laterality) or None,
        measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=0.0, unit=MILLILITRE)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=concept, value=codes.SCT.Absent)],
    )
    group[0].ContentSequence.append(comment(f"No {what} found."))
    return group


def total_group(
    concept: Concept, volume_ml: float, parts: str, track: hd.sr.TrackingIdentifier, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The total volume of a paired site (e.g. both lungs), laterality "Right and left"."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=track, finding_type=coded(concept), algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(anatomic_location=coded(concept), laterality=RIGHT_AND_LEFT)],
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(volume_ml, 2), unit=MILLILITRE, derivation=codes.SCT.Total)
        ],
    )
    group[0].ContentSequence.append(comment(f"Total of {parts}."))
    return group


def probability_group(
    finding: hd.sr.CodedConcept,
    value: hd.sr.CodedConcept,
    p: float,
    track: hd.sr.TrackingIdentifier,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A classification: ``finding`` is ``value`` (e.g. Pulmonary nodule: Present) with probability ``p``."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=track, finding_type=finding, algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=finding, value=value)],
        measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(p), 4), unit=NO_UNITS)],
    )


def class_concept(name: str, labels: Sequence[Label]) -> hd.sr.CodedConcept:
    """A classifier's class: its label's code, else a private code (the bundle gave none)."""
    match = next((lb for lb in labels if lb.name == name), None)
    if match is not None and match.snomed_code:
        return label_type(match)
    return hd.sr.CodedConcept(name[:16], PRIVATE_SCHEME, name[:64])
