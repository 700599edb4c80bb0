"""The TID 1500 Measurement Report (Comprehensive 3D SR) of a model's result, through highdicom.

- For each segment: volume (mL), mean and standard deviation of the
  intensity (HU), referencing the segment in the SEG.
- For each lesion (a connected component of a lesion-type label): its volume
  and maximum 3D diameter.
- For a classifier: each class as a qualitative evaluation with its probability.
- The model is the device observer; its name, version and intended use
  ("demonstration; not for diagnosis") are in the algorithm identification
  and the series description.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicomnode.errors import OutputError
from dicomnode.seg import PRIVATE_SCHEME, label_type

if TYPE_CHECKING:
    from ai.bundle import Bundle, Label
    from ai.engine import Result
    from ai.measure import LabelMeasurement

MILLILITRE = Code("mL", "UCUM", "milliliter")
HOUNSFIELD = codes.UCUM.HounsfieldUnit
MILLIMETRE = codes.UCUM.Millimeter
NO_UNITS = codes.UCUM.NoUnits
CT_PROCEDURE = Code("25045-6", "LN", "CT unspecified body region")


@dataclass(frozen=True)
class SRParams:
    """Identity of the report."""

    series_uid: str
    sop_uid: str
    series_number: int
    series_description: str
    manufacturer: str
    software_version: str


def _algorithm(bundle: Bundle) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=bundle.name[:64], version=bundle.version[:64])


def _tracking(params: SRParams, n: int, what: str) -> hd.sr.TrackingIdentifier:
    # Deterministic: the report's UID plus a group number.
    uid = f"{params.sop_uid}.{n}" if len(params.sop_uid) <= 58 else hd.UID()
    return hd.sr.TrackingIdentifier(uid=uid, identifier=what[:64])


def _stats(m: LabelMeasurement) -> list[hd.sr.Measurement]:
    out = [hd.sr.Measurement(name=codes.SCT.Volume, value=round(m.volume_ml, 4), unit=MILLILITRE)]
    if m.mean is not None:
        out.append(hd.sr.Measurement(name=codes.SCT.Mean, value=round(m.mean, 3), unit=HOUNSFIELD))
    if m.std is not None:
        out.append(hd.sr.Measurement(name=codes.SCT.StandardDeviation, value=round(m.std, 3), unit=HOUNSFIELD))
    return out


def _class_concept(name: str, labels: Sequence[Label]) -> hd.sr.CodedConcept:
    match = next((lb for lb in labels if lb.name == name), None)
    if match is not None and match.snomed_code:
        return label_type(match)
    return hd.sr.CodedConcept(name[:16], PRIVATE_SCHEME, name[:64])


def build_sr(
    sources: Sequence[Dataset],
    seg: Dataset | None,
    segment_numbers: dict[int, int],
    result: Result,
    bundle: Bundle,
    params: SRParams,
) -> hd.sr.Comprehensive3DSR:
    """Build the measurement report.

    Parameters
    ----------
    sources : sequence of Dataset
        Source image headers (the evidence).
    seg : Dataset, optional
        The SEG the measurements reference; without one, the groups reference no region.
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
        highdicom refused the content.
    """
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=f"{params.sop_uid}.0" if len(params.sop_uid) <= 60 else hd.UID(),
            name=bundle.name[:64],
            manufacturer_name=params.manufacturer,
            model_name=f"{bundle.name} {bundle.version}"[:64],
        ),
    )
    groups: list[object] = []
    n = 0
    labels = {lb.value: lb for lb in bundle.labels}
    for m in result.measurements:
        lb = labels.get(m.value)
        if lb is None or m.voxels == 0:
            continue
        n += 1
        common = {"finding_type": label_type(lb), "algorithm_id": _algorithm(bundle)}
        if seg is not None and m.value in segment_numbers:
            ref = hd.sr.ReferencedSegment.from_segmentation(seg, segment_numbers[m.value])
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(params, n, lb.name), referenced_segment=ref, measurements=_stats(m), **common
            ))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(params, n, lb.name), measurements=_stats(m), **common
            ))
        for lesion in m.lesions:
            n += 1
            sizes = [
                hd.sr.Measurement(name=codes.SCT.Volume, value=round(lesion.volume_ml, 4), unit=MILLILITRE),
                hd.sr.Measurement(
                    name=codes.SCT.Diameter, value=round(lesion.max_diameter_mm, 2), unit=MILLIMETRE,
                    derivation=codes.SCT.Maximum,
                ),
            ]
            what = f"{lb.name} {lesion.index}"
            if seg is not None and m.value in segment_numbers:
                groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=_tracking(params, n, what),
                    referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, segment_numbers[m.value]),
                    measurements=sizes, **common,
                ))
            else:
                groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=_tracking(params, n, what), measurements=sizes, **common
                ))
    for name, p in result.class_probabilities.items():
        n += 1
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(params, n, f"classification: {name}"),
            algorithm_id=_algorithm(bundle),
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=_class_concept(name, bundle.labels))],
            measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(p), 4), unit=NO_UNITS)],
        ))
    try:
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=CT_PROCEDURE,
            imaging_measurements=groups,  # type: ignore[arg-type]
        )
        evidence = list(sources) + ([seg] if seg is not None else [])
        return hd.sr.Comprehensive3DSR(
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
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise OutputError(f"cannot build the measurement report: {exc}") from exc
