"""The SOP classes and transfer syntaxes the node accepts as a Storage SCP."""

from __future__ import annotations

from pydicom.uid import UID
from pynetdicom import ALL_TRANSFER_SYNTAXES, build_context
from pynetdicom import sop_class as sc
from pynetdicom.presentation import PresentationContext

# Image storage SOP classes a radiology AI node sees: the ones that can make a
# volume (or an image a model reads).  Others a PACS routinely sends with a
# study are NON_IMAGE_STORAGE_SOP_CLASSES; anything else (RT plans, waveforms...)
# is refused at negotiation, so the sender reports it clearly.
IMAGE_STORAGE_SOP_CLASSES: tuple[UID, ...] = tuple(
    UID(getattr(sc, name))
    for name in (
        "CTImageStorage",
        "EnhancedCTImageStorage",
        "LegacyConvertedEnhancedCTImageStorage",
        "MRImageStorage",
        "EnhancedMRImageStorage",
        "EnhancedMRColorImageStorage",
        "LegacyConvertedEnhancedMRImageStorage",
        "PositronEmissionTomographyImageStorage",
        "EnhancedPETImageStorage",
        "LegacyConvertedEnhancedPETImageStorage",
        "NuclearMedicineImageStorage",
        "UltrasoundImageStorage",
        "UltrasoundMultiFrameImageStorage",
        "EnhancedUSVolumeStorage",
        "ComputedRadiographyImageStorage",
        "DigitalXRayImageStorageForPresentation",
        "DigitalXRayImageStorageForProcessing",
        "DigitalMammographyXRayImageStorageForPresentation",
        "DigitalMammographyXRayImageStorageForProcessing",
        "BreastTomosynthesisImageStorage",
        "XRayAngiographicImageStorage",
        "EnhancedXAImageStorage",
        "XRayRadiofluoroscopicImageStorage",
        "EnhancedXRFImageStorage",
        "XRay3DAngiographicImageStorage",
        "XRay3DCraniofacialImageStorage",
        "RTImageStorage",
        "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
        "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
        "MultiFrameTrueColorSecondaryCaptureImageStorage",
    )
)

# What comes with a study but is no image to process: dose reports and dose
# screens (single-frame Secondary Capture), other reports, key object
# selections, presentation states, PDFs, segmentations (ours, routed back by
# the PACS, among them).  Accepted with success, then stored or dropped
# (``node.non_image_objects``); never a series to complete, a job or a failure.
NON_IMAGE_STORAGE_SOP_CLASSES: tuple[UID, ...] = tuple(
    UID(getattr(sc, name))
    for name in (
        "SecondaryCaptureImageStorage",
        "XRayRadiationDoseSRStorage",
        "EnhancedXRayRadiationDoseSRStorage",
        "PatientRadiationDoseSRStorage",
        "RadiopharmaceuticalRadiationDoseSRStorage",
        "BasicTextSRStorage",
        "EnhancedSRStorage",
        "ComprehensiveSRStorage",
        "Comprehensive3DSRStorage",
        "ExtensibleSRStorage",
        "AcquisitionContextSRStorage",
        "KeyObjectSelectionDocumentStorage",
        "GrayscaleSoftcopyPresentationStateStorage",
        "ColorSoftcopyPresentationStateStorage",
        "BlendingSoftcopyPresentationStateStorage",
        "EncapsulatedPDFStorage",
        "SegmentationStorage",
        "RawDataStorage",
    )
)
_NON_IMAGE = frozenset(str(u) for u in NON_IMAGE_STORAGE_SOP_CLASSES)


def is_non_image(sop_class_uid: str | None) -> bool:
    """Whether a SOP class is stored or dropped rather than processed (see :data:`NON_IMAGE_STORAGE_SOP_CLASSES`)."""
    return str(sop_class_uid or "").strip() in _NON_IMAGE


# Uncompressed, deflate, JPEG (baseline, extended, lossless), JPEG-LS, JPEG 2000,
# HTJ2K, RLE...: stored exactly as received, never transcoded.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(ALL_TRANSFER_SYNTAXES)


def storage_contexts() -> list[PresentationContext]:
    """Presentation contexts for every accepted SOP class (image or not) with every accepted transfer syntax."""
    return [
        build_context(uid, list(ACCEPTED_TRANSFER_SYNTAXES))
        for uid in IMAGE_STORAGE_SOP_CLASSES + NON_IMAGE_STORAGE_SOP_CLASSES
    ]
