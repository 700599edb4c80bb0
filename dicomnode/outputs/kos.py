"""Key Object Selection (KOS) of a result: the slices and key images a radiologist should look at.

A viewer that shows KOS (most PACS do, as "key images" or flagged images)
opens the study at these instances: the source slice of each finding and the
Secondary Capture key image that shows it, under the title "Of Interest"
(CID 7010), with a description that names each finding.  The document is
built by highdicom (TID 2010), with its own series; its evidence is the
Current Requested Procedure Evidence Sequence highdicom derives from the
references.  The caller copies the patient and study identity of the source
onto it (:func:`dicomnode.outputs.writer._copy_identity`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.errors import OutputError

logger = logging.getLogger(__name__)

# What the evidence needs of each referenced instance, and the patient and study the document starts from
# (highdicom reads them off the first reference; the caller overwrites them with the source's).
_REFERENCE = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")
_IDENTITY = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
             "StudyTime", "ReferringPhysicianName", "SpecificCharacterSet")
DESCRIPTION_LIMIT = 1024  # a TEXT item is unlimited in DICOM, but a viewer shows a screenful


def _stub(ds: Dataset, identity: bool) -> Dataset:
    """Only what highdicom reads of a reference: no pixel data is copied, and absent type 2 identity becomes empty."""
    out = Dataset()
    for key in _REFERENCE + (_IDENTITY if identity else ()):
        if key in ds:
            setattr(out, key, ds[key].value)
        elif key in _IDENTITY and key != "SpecificCharacterSet":
            setattr(out, key, "")
    return out


def build_kos(
    referenced: Sequence[tuple[Dataset, int | None]],
    *,
    description: str,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    series_description: str,
    manufacturer: str,
    software_version: str,
) -> Dataset:
    """A Key Object Selection Document ("Of Interest") referencing key source slices and key images.

    Parameters
    ----------
    referenced : sequence of (Dataset, int or None)
        Each selected instance (its header is enough) and, for a frame of a
        multi-frame image, its 1-based frame number; in the order a viewer
        should show them.  All in one study.  A repeated (instance, frame) is
        referenced once.
    description : str
        The Key Object Description: what the selection shows (e.g. each
        finding with its number, tracking UID and image number).
    series_uid, sop_uid : str
        The document's (deterministic) UIDs; it is alone in its series.
    series_number : int
        Its series number.
    series_description, manufacturer, software_version : str
        Descriptive attributes.

    Returns
    -------
    pydicom.Dataset
        A ``highdicom.ko.KeyObjectSelectionDocument``, instance number 1.

    Raises
    ------
    OutputError
        Nothing is referenced, the references lack UIDs or span studies, or
        highdicom refuses the content.
    """
    picks: list[tuple[Dataset, int | None]] = []
    seen: set[tuple[str, int | None]] = set()
    for ds, frame in referenced:
        key = (str(ds.get("SOPInstanceUID", "")), frame)
        if key not in seen:
            seen.add(key)
            picks.append((ds, frame))
    if not picks:
        raise OutputError("a key object selection needs at least one referenced instance")
    studies = {str(ds.get("StudyInstanceUID", "")) for ds, _ in picks}
    if len(studies) != 1:
        raise OutputError(f"the key objects span {len(studies)} studies: a key object selection covers one")
    try:
        evidence = [_stub(ds, identity=i == 0) for i, (ds, _) in enumerate(picks)]
        content = hd.ko.KeyObjectSelection(
            document_title=codes.DCM.OfInterest,
            referenced_objects=evidence,
            description=description[:DESCRIPTION_LIMIT] or None,
        )
        # highdicom references whole instances; a frame of a multi-frame source is named in its item.
        items = [it for it in content[0].ContentSequence if "ReferencedSOPSequence" in it]
        for item, (_, frame) in zip(items, picks):
            if frame is not None:
                item.ReferencedSOPSequence[0].ReferencedFrameNumber = int(frame)
        kos = hd.ko.KeyObjectSelectionDocument(
            evidence=evidence, content=content, series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=sop_uid, instance_number=1, manufacturer=manufacturer,
            transfer_syntax_uid=ExplicitVRLittleEndian, software_versions=software_version,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"cannot build the key object selection: {exc}") from exc
    kos.SeriesDescription = series_description[:64]
    logger.debug("key object selection of %d instance(s)", len(picks))
    return kos
