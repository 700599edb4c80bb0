"""The SOP classes and transfer syntaxes the node accepts as a Storage SCP."""

from __future__ import annotations

from pydicom.uid import UID
from pynetdicom import ALL_TRANSFER_SYNTAXES, build_context
from pynetdicom import sop_class as sc
from pynetdicom.presentation import PresentationContext

# Image storage SOP classes a radiology AI node sees.  Anything else (SR,
# presentation states, RT plans, SEG...) is refused at negotiation, so the
# sender reports it clearly instead of us storing what we cannot process.
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
        "SecondaryCaptureImageStorage",
        "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
        "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
        "MultiFrameTrueColorSecondaryCaptureImageStorage",
    )
)

# Uncompressed, deflate, JPEG (baseline, extended, lossless), JPEG-LS, JPEG 2000,
# HTJ2K, RLE...: stored exactly as received, never transcoded.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(ALL_TRANSFER_SYNTAXES)


def storage_contexts() -> list[PresentationContext]:
    """Presentation contexts for every accepted SOP class with every accepted transfer syntax."""
    return [build_context(uid, list(ACCEPTED_TRANSFER_SYNTAXES)) for uid in IMAGE_STORAGE_SOP_CLASSES]
