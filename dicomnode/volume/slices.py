"""What each stored image contributes to a volume: geometry, pixel format, rescale.

Single-frame files are read with the receiver's element walker from the
first 64 KiB of the file (no pydicom Dataset, no pixel data), which keeps
scanning a 2,000-slice series fast and its memory flat.  Enhanced
multi-frame files are read with pydicom, one frame per :class:`SliceInfo`,
from their per-frame and shared functional groups.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID

from dicomnode.errors import IngestError, VolumeError
from dicomnode.dicom.header import RawValues, check_structure
from dicomnode.redaction import describe_exception

logger = logging.getLogger(__name__)

HEAD_BYTES = 64 * 1024

VOLUME_TAGS: dict[int, str] = {
    Tag(k): vr
    for k, vr in (
        ("SpecificCharacterSet", "CS"),
        ("ImageType", "CS"),
        ("SOPClassUID", "UI"),
        ("SOPInstanceUID", "UI"),
        ("SeriesInstanceUID", "UI"),
        ("Modality", "CS"),
        ("InstanceNumber", "IS"),
        ("AcquisitionNumber", "IS"),
        ("TemporalPositionIdentifier", "IS"),
        ("EchoNumbers", "IS"),
        ("NumberOfFrames", "IS"),
        ("ImagePositionPatient", "DS"),
        ("ImageOrientationPatient", "DS"),
        ("PixelSpacing", "DS"),
        ("SliceThickness", "DS"),
        ("Rows", "US"),
        ("Columns", "US"),
        ("SamplesPerPixel", "US"),
        ("PhotometricInterpretation", "CS"),
        ("BitsAllocated", "US"),
        ("BitsStored", "US"),
        ("PixelRepresentation", "US"),
        ("RescaleSlope", "DS"),
        ("RescaleIntercept", "DS"),
    )
}


@dataclass(frozen=True)
class SliceInfo:
    """One 2D image (a file, or one frame of a multi-frame file)."""

    path: Path
    frame: int | None  # frame index in a multi-frame file; None for single-frame
    sop_uid: str
    instance_number: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None  # six direction cosines
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns), mm
    slope: float
    intercept: float
    acquisition_number: int | None
    temporal_position: int | None
    echo_number: int | None
    image_type: tuple[str, ...]
    transfer_syntax: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    samples_per_pixel: int
    photometric: str
    # Native single-frame pixel data: where it is in the file (else None: decode with pydicom).
    pixel_offset: int | None
    little_endian: bool = True
    index: int = 0  # 1-based position of the file among the series' files (0: unknown)
    count: int = 0  # how many files the series has

    @property
    def label(self) -> str:
        """How a message names this image: by position, e.g. ``instance 12 of 300 (InstanceNumber 12)``.

        Never by file name, which is the SOP Instance UID for a stored instance.
        """
        where = instance_label(self.index, self.count)
        number = f"InstanceNumber {self.instance_number}" if self.instance_number is not None else ""
        frame = f"frame {self.frame + 1}" if self.frame is not None else ""
        detail = ", ".join(x for x in (number, frame) if x)
        return f"{where} ({detail})" if detail else where


def instance_label(index: int, count: int) -> str:
    """``instance 12 of 300``: how messages name a file of a series (``an instance`` when its place is unknown)."""
    if index <= 0:
        return "an instance"
    return f"instance {index} of {count}" if count > 0 else f"instance {index}"


def _meta(raw: bytes, where: str) -> tuple[UID, int]:
    """Transfer syntax and dataset offset of a Part 10 file (``where``: how messages name it)."""
    if len(raw) < 132 or raw[128:132] != b"DICM":
        raise VolumeError(f"{where} is not a DICOM Part 10 file")
    pos, ts = 132, None
    while pos + 8 <= len(raw):
        group, elem, vr = struct.unpack_from("<HH2s", raw, pos)
        if group != 0x0002:
            break
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            length = struct.unpack_from("<L", raw, pos + 8)[0]
            value = pos + 12
        else:
            length = struct.unpack_from("<H", raw, pos + 6)[0]
            value = pos + 8
        if elem == 0x0010:
            ts = raw[value : value + length].decode("ascii").strip(" \x00")
        pos = value + length
    if ts is None:
        raise VolumeError(f"{where} has no TransferSyntaxUID in its file meta")
    return UID(ts), pos


def _read_single(path: Path, head: bytes, ts: UID, offset: int) -> SliceInfo | None:
    try:
        st = check_structure(head[offset:], ts, VOLUME_TAGS, stop_at_pixels=True)
    except IngestError:
        return None  # header larger than the head we read: let pydicom handle it
    if st.pixel_offset is None:
        return None
    v = RawValues(st.values, ts.is_little_endian, VOLUME_TAGS)
    frames = v.int("NumberOfFrames") or 1
    if frames > 1:
        return None
    native = not ts.is_compressed and st.pixel_value_length is not None
    # Value offset: tag (4) + VR/len (4), or tag + VR + reserved + len (12) for OB/OW.
    value_offset = None
    if native:
        hdr = 8 if ts.is_implicit_VR else 12
        value_offset = offset + st.pixel_offset + hdr
    spacing = v.pair("PixelSpacing")
    pos = v.triple("ImagePositionPatient")
    ori = v.floats("ImageOrientationPatient", 6)
    bits = v.int("BitsAllocated") or 16
    return SliceInfo(
        path=path,
        frame=None,
        sop_uid=v.text("SOPInstanceUID") or path.stem,
        instance_number=v.int("InstanceNumber"),
        position=pos,
        orientation=ori,
        rows=v.int("Rows") or 0,
        columns=v.int("Columns") or 0,
        pixel_spacing=spacing,
        slope=(v.floats("RescaleSlope", 1) or (1.0,))[0],
        intercept=(v.floats("RescaleIntercept", 1) or (0.0,))[0],
        acquisition_number=v.int("AcquisitionNumber"),
        temporal_position=v.int("TemporalPositionIdentifier"),
        echo_number=v.int("EchoNumbers"),
        image_type=v.texts("ImageType"),
        transfer_syntax=str(ts),
        bits_allocated=bits,
        bits_stored=v.int("BitsStored") or bits,
        signed=v.int("PixelRepresentation") == 1,
        samples_per_pixel=v.int("SamplesPerPixel") or 1,
        photometric=v.text("PhotometricInterpretation") or "MONOCHROME2",
        pixel_offset=value_offset,
        little_endian=ts.is_little_endian,
    )


def _first(seq: object, name: str) -> Dataset | None:
    s = getattr(seq, name, None) if seq is not None else None
    return s[0] if s else None


def _read_multiframe(path: Path, ds: Dataset) -> list[SliceInfo]:
    """One SliceInfo per frame of an enhanced (functional groups) or legacy multi-frame image."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or [None] * frames
    bits = int(ds.get("BitsAllocated", 16))
    infos: list[SliceInfo] = []
    for i in range(frames):
        pf = per_frame[i] if i < len(per_frame) else None

        def group(name: str, pf: Dataset | None = pf) -> Dataset | None:
            return _first(pf, name) or _first(shared, name)

        pos_ds, ori_ds = group("PlanePositionSequence"), group("PlaneOrientationSequence")
        pix_ds, val_ds = group("PixelMeasuresSequence"), group("PixelValueTransformationSequence")
        content = _first(pf, "FrameContentSequence")
        position = tuple(float(x) for x in pos_ds.ImagePositionPatient) if pos_ds else ds.get("ImagePositionPatient")
        orientation = (
            tuple(float(x) for x in ori_ds.ImageOrientationPatient) if ori_ds else ds.get("ImageOrientationPatient")
        )
        spacing = pix_ds.get("PixelSpacing") if pix_ds else ds.get("PixelSpacing")
        slope = float(val_ds.RescaleSlope) if val_ds and "RescaleSlope" in val_ds else float(ds.get("RescaleSlope", 1))
        intercept = (
            float(val_ds.RescaleIntercept) if val_ds and "RescaleIntercept" in val_ds else float(ds.get("RescaleIntercept", 0))
        )
        temporal = None
        if content is not None and "TemporalPositionIndex" in content:
            temporal = int(content.TemporalPositionIndex)
        infos.append(
            SliceInfo(
                path=path,
                frame=i,
                sop_uid=str(ds.SOPInstanceUID),
                instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") is not None else None,
                position=(float(position[0]), float(position[1]), float(position[2])) if position is not None else None,
                orientation=tuple(float(x) for x in orientation) if orientation is not None else None,
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
                slope=slope,
                intercept=intercept,
                acquisition_number=None,
                temporal_position=temporal,
                echo_number=None,
                image_type=tuple(ds.get("ImageType", ())),
                transfer_syntax=ts,
                bits_allocated=bits,
                bits_stored=int(ds.get("BitsStored", bits)),
                signed=int(ds.get("PixelRepresentation", 0)) == 1,
                samples_per_pixel=int(ds.get("SamplesPerPixel", 1)),
                photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
                pixel_offset=None,
            )
        )
    return infos


def read_slices(path: Path, index: int = 0, count: int = 0) -> list[SliceInfo]:
    """The images in one DICOM file (one, or one per frame).

    Parameters
    ----------
    path : pathlib.Path
        The file.
    index, count : int
        Its 1-based place among the series' ``count`` files: how messages name it.

    Raises
    ------
    VolumeError
        The file is not DICOM or has no pixel data.
    """
    where = instance_label(index, count)
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise VolumeError(f"{where} cannot be read: {exc.strerror or type(exc).__name__}") from exc
    ts, offset = _meta(head, where)
    info = _read_single(path, head, ts, offset)
    if info is not None:
        return [replace(info, index=index, count=count)]
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise VolumeError(f"{where} cannot be read: {describe_exception(exc)}") from exc
    if "Rows" not in ds:
        raise VolumeError(f"{where} has no image (no Rows)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        infos = _read_multiframe(path, ds)
    elif "PerFrameFunctionalGroupsSequence" in ds:
        infos = _read_multiframe(path, ds)[:1]
    else:
        infos = [_single_from_dataset(path, ds)]
    return [replace(i, index=index, count=count) for i in infos]


def _single_from_dataset(path: Path, ds: Dataset) -> SliceInfo:
    info = _read_multiframe(path, ds)[0]
    return replace(
        info,
        frame=None,
        acquisition_number=int(ds.AcquisitionNumber) if ds.get("AcquisitionNumber") not in (None, "") else None,
        temporal_position=int(ds.TemporalPositionIdentifier) if ds.get("TemporalPositionIdentifier") not in (None, "") else None,
        echo_number=int(ds.EchoNumbers) if ds.get("EchoNumbers") not in (None, "") else None,
    )


def scan(paths: Sequence[Path]) -> Iterator[SliceInfo]:
    """Every image of every file in ``paths``, named by position; files that are not DICOM images are skipped with a log line."""
    for i, p in enumerate(paths, start=1):
        try:
            yield from read_slices(p, i, len(paths))
        except VolumeError as exc:
            logger.warning("skipping %s", exc)
            logger.debug("skipped file: %s", p)


def series_files(directory: Path) -> list[Path]:
    """The files of a series folder (recursively; hidden and temporary files are ignored)."""
    if directory.is_file():
        return [directory]
    if not directory.is_dir():
        raise VolumeError(f"{directory} is not a file or folder")
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
