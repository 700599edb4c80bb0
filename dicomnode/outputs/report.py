"""The TID 1500 Measurement Report (Comprehensive 3D SR) of a model's result, through highdicom.

In order:

- one group per finding ("nodule 1" is the largest), referencing its own
  segment in the SEG, located (Finding Site with laterality, a 3D point at
  its centre, long and short axis as 3D lines in their slice, that slice as
  the source image) and measured by the clinical conventions (see
  :mod:`dicomnode.outputs.sr_content`);
- for a lesion label with no finding: "absent", explicitly;
- one group per organ (volume with the lesions inside it, site and side),
  and the total of a paired organ;
- the class probabilities, each under the model that computed them;
- report-level comments: the intended use, partial coverage, and an
  incomplete source series (how many instances of how many, and where the gap is).

The model is the device observer.  Tracking UIDs are those of the SEG's
segments: a finding is followed from the SEG to the SR (and to the key
images and the Key Object Selection) by its UID.
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
from pydicom.sr.coding import Code

from dicomnode.dicom.uids import derived_uid
from dicomnode.errors import OutputError
from dicomnode.outputs import sr_content as content
from dicomnode.outputs.seg import PRIVATE_SCHEME, Segment, SourceFrame, private_scheme_item, tracking_uid

if TYPE_CHECKING:
    from ai.bundle import Bundle, Label
    from ai.engine import Result

logger = logging.getLogger(__name__)

QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
PRESENT = hd.sr.CodedConcept.from_code(codes.SCT.Present)


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


def algorithm(bundle: Bundle, *parameters: str) -> hd.sr.AlgorithmIdentification:
    """A model as the algorithm of a group."""
    return hd.sr.AlgorithmIdentification(
        name=bundle.name[:64], version=bundle.version[:64], parameters=[p[:64] for p in parameters] or None
    )


def coverage_note(result: Result) -> str:
    """A sentence for the report when the scan does not cover every organ measured (else nothing)."""
    a = result.anatomy
    if a is None or not a.partial:
        return ""
    return f"Partial coverage: {'; '.join(a.cut_off) or 'an organ reaches the edge of the scan'}; its volume is incomplete."


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


def _track(uid: str, name: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=uid, identifier=name[:64])


def _lesion_word(bundle: Bundle) -> str:
    names = [lb.name for lb in bundle.labels if lb.lesion]
    return " or ".join(names) or "finding"


def _groups(
    labels: np.ndarray | None,
    geo: content.Geometry,
    seg: Dataset | None,
    segments: Sequence[Segment],
    result: Result,
    bundle: Bundle,
    seed: str,
) -> list[content.Group]:
    """Findings, absent lesion labels, organs and totals (in that order)."""
    if labels is None:
        return []
    modality = str(geo.frames[0].dataset.get("Modality", ""))
    unit = content.HOUNSFIELD if modality == "CT" else content.NO_UNITS
    algo = algorithm(bundle)
    by_key = {(s.label.value, s.finding.number if s.finding is not None else None): s for s in segments}

    def ref(value: int, number: int | None = None) -> hd.sr.ReferencedSegment | None:
        s = by_key.get((value, number))
        return _referenced_segment(seg, s.number, geo.frames) if seg is not None and s is not None else None

    groups: list[content.Group] = []
    for f in result.findings:
        track = _track(tracking_uid(seed, f.label.value, f.number), f.name)
        groups.append(content.finding_group(f, track, ref(f.label.value, f.number), geo, algo, unit))
    found = {f.label.value for f in result.findings}
    measured = {m.value: m for m in result.measurements}
    totals: dict[tuple[str, str], list[tuple[Label, float]]] = {}
    for lb in bundle.labels:
        track = _track(tracking_uid(seed, lb.value), lb.name)
        m = measured.get(lb.value)
        voxels = m.voxels if m is not None else int(np.count_nonzero(labels == lb.value))
        if lb.lesion and lb.value in found:
            continue
        if voxels == 0:  # said explicitly: the model looked and found none
            groups.append(content.absent_group(lb, track, algo, lb.name))
            continue
        volume = m.volume_ml if m is not None else voxels * float(abs(np.linalg.det(geo.affine[:3, :3]))) / 1000.0
        zs = [int(z) for z in np.flatnonzero((labels == lb.value).any(axis=(1, 2)))] if ref(lb.value) is None else []
        groups.append(content.organ_group(
            lb, volume, m.mean if m else None, m.std if m else None, track, ref(lb.value),
            [geo.group_image(z) for z in zs], algo, unit,
        ))
        if lb.site is not None and lb.laterality is not None:
            totals.setdefault((lb.site.code, lb.site.scheme), []).append((lb, volume))
    for parts in totals.values():
        if len({lb.laterality for lb, _ in parts}) < 2:
            continue
        site = parts[0][0].site
        assert site is not None
        names = " and ".join(lb.name for lb, _ in parts)
        track = _track(str(derived_uid("dicomnode-tracking", seed, "total", site.code)), f"{site.meaning.lower()}s, total")
        groups.append(content.total_group(site, sum(v for _, v in parts), names, track, algo))
    return groups


def _class_groups(result: Result, bundle: Bundle, seed: str) -> list[content.Group]:
    """Class probabilities, each under the model that computed it."""

    def track(model: str, name: str) -> hd.sr.TrackingIdentifier:
        return _track(str(derived_uid("dicomnode-tracking", seed, "class", model, name)), f"classification: {name}")

    out: list[content.Group] = []
    score = bundle.scan_score
    if score is not None and score.present in result.class_probabilities:
        lesion = next((lb for lb in bundle.labels if lb.value == score.label), None)
        finding = content.finding_concept(lesion) if lesion is not None else content.class_concept(score.present, ())
        algo = algorithm(bundle, f"scan score: calibrated peak {lesion.name if lesion else 'lesion'} probability")
        out.append(content.probability_group(
            finding, PRESENT, result.class_probabilities[score.present], track(bundle.name, score.present), algo
        ))
    elif result.class_probabilities:  # the bundle is a classifier
        for name, p in result.class_probabilities.items():
            concept = content.class_concept(name, bundle.labels)
            out.append(content.probability_group(concept, PRESENT, p, track(bundle.name, name), algorithm(bundle)))
    for c in result.classifications:
        algo = hd.sr.AlgorithmIdentification(name=c.model[:64], version=c.version[:64])
        for name, p in c.probabilities.items():
            concept = content.class_concept(name, c.labels)
            out.append(content.probability_group(concept, PRESENT, p, track(c.model, name), algo))
    return out


def build_sr(
    frames: Sequence[SourceFrame],
    labels: np.ndarray | None,
    geo: content.Geometry,
    seg: Dataset | None,
    segments: Sequence[Segment],
    result: Result,
    bundle: Bundle,
    params: SRParams,
    notes: Sequence[str] = (),
) -> hd.sr.Comprehensive3DSR:
    """Build the measurement report.

    Parameters
    ----------
    frames : sequence of SourceFrame
        The source of each volume slice (the evidence).
    labels : numpy.ndarray, optional
        ``[z, y, x]`` label map (None for a classifier).
    geo : Geometry
        Voxel to patient coordinates, for the locations of the findings.
    seg : Dataset, optional
        The SEG the groups reference; without one, groups reference the source images.
    segments : sequence of Segment
        The segments of ``seg`` (findings and organs).
    result : Result
        Findings, measurements and class probabilities.
    bundle : Bundle
        Labels, codes and the model's identity.
    params : SRParams
        UIDs and numbers.
    notes : sequence of str
        Sentences for the report's comment (e.g. an incomplete source series).

    Raises
    ------
    OutputError
        There is nothing to report, or highdicom refused the content.
    """
    first = frames[0].dataset
    modality = str(first.get("Modality", ""))
    try:
        groups = _groups(labels, geo, seg, segments, result, bundle, params.uid_seed)
        groups += _class_groups(result, bundle, params.uid_seed)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"cannot build the measurement report: {exc}") from exc
    if not groups:
        raise OutputError(f"the model {bundle.name} produced nothing to report (no labels and no class scores)")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(derived_uid("dicomnode-device", bundle.name, bundle.version)),
            name=bundle.name[:64],
            manufacturer_name=params.manufacturer[:64],
            model_name=f"{bundle.name} {bundle.version}"[:64],
        ),
    )
    sentences = [f"AI result of {bundle.name} {bundle.version}. Intended use: {bundle.intended_use}."]
    if labels is not None and not result.findings and any(lb.lesion for lb in bundle.labels):
        sentences.append(f"No {_lesion_word(bundle)} found.")
    elif result.findings:
        sentences.append(f"{len(result.findings)} finding(s), numbered by volume, largest first.")
    sentences += [s for s in (coverage_note(result), *notes) if s]
    try:
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=content.procedure(first, bundle, modality),
            imaging_measurements=groups,
        )
        # TID 1500 row 12: report-level qualitative evaluations; what whoever reads the report must know.
        note = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        note.ContentSequence = hd.sr.ContentSequence([content.comment(" ".join(sentences))])
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
    if _uses_private(sr):
        sr.CodingSchemeIdentificationSequence = [private_scheme_item()]
    logger.debug("SR: %d measurement group(s)", len(groups))
    return sr


def _uses_private(ds: Dataset) -> bool:
    """Whether any code in the report is in the private scheme."""
    stack = [ds]
    while stack:
        d = stack.pop()
        for elem in d:
            if elem.VR == "SQ":
                stack.extend(elem.value)
            elif elem.keyword == "CodingSchemeDesignator" and elem.value == PRIVATE_SCHEME:
                return True
    return False
