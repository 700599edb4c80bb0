"""A key image as a Secondary Capture image: in the source's study, referencing the slice it shows.

The pixels come from :mod:`dicomnode.outputs.preview`.  The image carries its
caption, the finding's Tracking ID and UID (as in the SEG and SR) and the
model's intended use in ImageComments, and the source slice (and frame) in
its Source Image Sequence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomnode.errors import OutputError
from dicomnode.outputs.preview import KeyImage, intended_use_line

if TYPE_CHECKING:
    from pydicom import Dataset

    from ai.bundle import Bundle
    from dicomnode.outputs.seg import SourceFrame

SOURCE_IMAGE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")  # CID 7202


def _ascii(text: str) -> str:
    """The caption in plain ASCII, for ImageComments: the output takes the source's character set, which may lack · and ×."""
    for a, b in ((" · ", "; "), ("×", "x"), ("mm³", "mm3")):
        text = text.replace(a, b)
    return text.encode("ascii", "replace").decode("ascii")


def _source_item(source: SourceFrame) -> Dataset:
    from pydicom import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = source.dataset.SOPClassUID
    item.ReferencedSOPInstanceUID = source.dataset.SOPInstanceUID
    if source.frame is not None:
        item.ReferencedFrameNumber = source.frame
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = SOURCE_IMAGE_PURPOSE
    item.PurposeOfReferenceCodeSequence = [code]
    return item


def build_key_image(
    ref: Dataset,
    image: KeyImage,
    bundle: Bundle,
    *,
    series_uid: str,
    sop_uid: str,
    instance_number: int,
    series_number: int,
    series_description: str,
    manufacturer: str,
    software_version: str,
    orientation: tuple[str, str],
    source: SourceFrame | None = None,
    tracking: tuple[str, str] | None = None,
) -> Dataset:
    """A Secondary Capture image (RGB) of one key image, in the study of ``ref``.

    Parameters
    ----------
    ref : Dataset
        Header of the source image the key image shows (patient and study).
    image : KeyImage
        The rendering.
    bundle : Bundle
        The model (its intended use goes into ImageComments too).
    series_uid, sop_uid : str
        The (deterministic) UIDs.
    instance_number, series_number : int
        Numbers of the image and of its series.
    series_description, manufacturer, software_version : str
        Descriptive attributes.
    orientation : (str, str)
        PatientOrientation of the rendering (see :func:`dicomnode.outputs.preview.patient_orientation`).
    source : SourceFrame, optional
        The source slice shown: referenced in the Source Image Sequence (with
        its frame number for a multi-frame source).
    tracking : (str, str), optional
        The shown finding's Tracking ID and UID (as in the SEG and SR), for ImageComments.

    Raises
    ------
    OutputError
        highdicom refused the content.
    """
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian

    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=image.rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
            sop_instance_uid=sop_uid, instance_number=instance_number, manufacturer=manufacturer,
            patient_orientation=orientation, series_description=series_description[:64],
            software_versions=software_version, transfer_syntax_uid=ExplicitVRLittleEndian,
        )
        if source is not None:
            sc.SourceImageSequence = [_source_item(source)]
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise OutputError(f"cannot build key image {instance_number}: {exc}") from exc
    sc.BurnedInAnnotation = "YES"  # caption, legend, letters and the intended use are in the pixels
    comments = _ascii(image.caption)
    if tracking is not None:
        comments += f". {_ascii(tracking[0])} (tracking UID {tracking[1]})"
    sc.ImageComments = f"{comments}. {intended_use_line(bundle)}"[:10240]
    if "BodyPartExamined" in ref:
        sc.BodyPartExamined = ref.BodyPartExamined
    if "Laterality" in ref:
        sc.Laterality = ref.Laterality
    elif "BodyPartExamined" not in ref:
        sc.Laterality = ""  # type 2C: without a body part nobody knows whether it is paired
    return sc
