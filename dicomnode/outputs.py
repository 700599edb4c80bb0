"""A job's DICOM outputs: SEG, TID 1500 SR and Secondary Capture key images, written durably.

The outputs belong to the source's patient and study: the identity
attributes are copied exactly from the first source image, and they share
its Frame of Reference.  Every output gets new series, and all UIDs derive
from the job key (source series UID and job version) and the options that
change the content, so writing the same job again gives the same UIDs and a
re-send is idempotent at the PACS.  Source headers are read without pixel
data; nothing holds the series' pixels but the volume itself.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from dicomnode import __version__
from dicomnode.errors import OutputError
from dicomnode.synthetic import derived_uid
from storage.errors import StorageError
from storage.files import durable_write

if TYPE_CHECKING:
    from ai.bundle import Bundle
    from ai.engine import Result
    from dicomnode.volume import Volume

logger = logging.getLogger(__name__)

IDENTITY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
)


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs to write, and their series."""

    seg: bool = True
    sr: bool = True
    preview: bool = True
    fractional: bool = False  # FRACTIONAL SEG from the probabilities instead of BINARY
    keep_empty_frames: bool = False  # empty frames are omitted by default
    seg_series_number: int = 9001
    sr_series_number: int = 9002
    preview_series_number: int = 9003
    series_description_prefix: str = "AI"
    manufacturer: str = "dicomnode"
    software_version: str = __version__


@dataclass(frozen=True)
class OutputFile:
    """One written output."""

    path: Path
    kind: str  # seg | sr | preview
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str


def _read_sources(paths: Sequence[Path]) -> list[Dataset]:
    unique = list(dict.fromkeys(paths))  # a multi-frame source appears once per frame
    try:
        return [dcmread(p, stop_before_pixels=True) for p in unique]
    except (InvalidDicomError, OSError) as exc:
        raise OutputError(f"cannot read a source image header: {exc}") from exc


def _copy_identity(ds: Dataset, source: Dataset, frame_of_reference: bool = True) -> None:
    """Patient and study exactly as the source has them (absent stays absent, empty stays empty)."""
    for key in IDENTITY:
        if key in source:
            setattr(ds, key, source[key].value)
        elif key in ds and key not in ("StudyInstanceUID",):
            del ds[key]
    if frame_of_reference and "FrameOfReferenceUID" in source:  # (an SR has none of its own)
        ds.FrameOfReferenceUID = source.FrameOfReferenceUID


def _save(ds: Dataset, path: Path, kind: str) -> OutputFile:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    try:
        durable_write(path, [buf.getbuffer()])
    except StorageError as exc:
        raise OutputError(f"cannot write the {kind}: {exc}") from exc
    return OutputFile(
        path, kind, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.file_meta.TransferSyntaxUID)
    )


def write_outputs(
    source_paths: Sequence[Path],
    volume: Volume,
    result: Result,
    bundle: Bundle,
    out_dir: Path,
    *,
    job_key: str,
    options: OutputOptions = OutputOptions(),
) -> list[OutputFile]:
    """Write the SEG, SR and key images of one job into ``out_dir``.

    Parameters
    ----------
    source_paths : sequence of pathlib.Path
        The source file of each slice of ``volume``, in volume order.
    volume : Volume
        The reconstructed source volume (pixels for the key images).
    result : Result
        The model's labels on the source grid, measurements and class probabilities.
    bundle : Bundle
        The model: labels, codes, colours, name, version, intended use.
    out_dir : pathlib.Path
        Where the files go (``seg.dcm``, ``sr.dcm``, ``preview-N.dcm``).
    job_key : str
        ``<source series UID>/<job version>``: the root of every output UID.
    options : OutputOptions
        Which outputs, SEG type, empty frames, series numbers and descriptions.

    Raises
    ------
    OutputError
        The inputs disagree or an object cannot be built or written; the message says which.
    """
    from dicomnode.preview import key_images
    from dicomnode.report import SRParams, build_sr
    from dicomnode.seg import SegParams, build_seg

    if result.labels is None:
        raise OutputError(f"the model {bundle.name} produced no label map")
    if result.labels.shape != volume.array.shape:
        raise OutputError(f"the label map {result.labels.shape} does not match the volume {volume.array.shape}")
    if len(source_paths) != volume.array.shape[0]:
        raise OutputError(f"{len(source_paths)} source file(s) for {volume.array.shape[0]} slices")
    sources = _read_sources(source_paths)
    first = sources[0]
    variant = f"{'fractional' if options.fractional else 'binary'}-{'all' if options.keep_empty_frames else 'sparse'}"

    def uid(kind: str, what: str, n: int = 0) -> str:
        return str(derived_uid("dicomnode-output", job_key, kind, variant if kind == "seg" else "", what, n))

    prefix = options.series_description_prefix
    written: list[OutputFile] = []
    seg_ds = None
    numbers: dict[int, int] = {}
    if options.seg:
        seg_ds, numbers = build_seg(
            sources, result.labels, result.probabilities, bundle,
            SegParams(
                series_uid=uid("seg", "series"), sop_uid=uid("seg", "instance"), series_number=options.seg_series_number,
                series_description=f"{prefix} {bundle.name} SEG", manufacturer=options.manufacturer,
                software_version=options.software_version, fractional=options.fractional,
                keep_empty_frames=options.keep_empty_frames,
            ),
        )
        _copy_identity(seg_ds, first)
        written.append(_save(seg_ds, out_dir / "seg.dcm", "seg"))
    if options.sr:
        sr = build_sr(
            sources, seg_ds, numbers, result, bundle,
            SRParams(
                series_uid=uid("sr", "series"), sop_uid=uid("sr", "instance"), series_number=options.sr_series_number,
                series_description=f"{prefix} {bundle.name} report - not for diagnosis", manufacturer=options.manufacturer,
                software_version=options.software_version,
            ),
        )
        _copy_identity(sr, first, frame_of_reference=False)
        written.append(_save(sr, out_dir / "sr.dcm", "sr"))
    if options.preview:
        import highdicom as hd

        series_uid = uid("preview", "series")
        for i, img in enumerate(key_images(volume.array, result.labels, bundle, volume.spacing), start=1):
            ref = sources[min(img.slice_index, len(sources) - 1)]
            try:
                sc = hd.sc.SCImage.from_ref_dataset(
                    ref_dataset=ref, pixel_array=img.rgb, photometric_interpretation="RGB", bits_allocated=8,
                    coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=options.preview_series_number,
                    sop_instance_uid=uid("preview", "instance", i), instance_number=i, manufacturer=options.manufacturer,
                    patient_orientation=("L", "P"), series_description=f"{prefix} {bundle.name} key images - not for diagnosis"[:64],
                )
            except (ValueError, TypeError, AttributeError) as exc:
                raise OutputError(f"cannot build the preview image {i}: {exc}") from exc
            sc.BurnedInAnnotation = "YES"  # the legend and the intended use are in the pixels
            if "Laterality" not in sc:
                sc.Laterality = ref.get("Laterality", "")  # type 2C: present, empty for an unpaired body part
            _copy_identity(sc, first, frame_of_reference=False)
            written.append(_save(sc, out_dir / f"preview-{i}.dcm", "preview"))
    logger.info("wrote %d output object(s) for %s", len(written), bundle.name)
    return written
