"""Read what the node needs from an encoded dataset without decoding its pixels.

:func:`check_structure` walks the top-level elements of the received bytes,
so that a truncated or garbled dataset is refused (0xC210) instead of being
acknowledged and failing later.  :func:`parse_header` then reads the
attributes before the pixel data with pydicom.
"""

from __future__ import annotations

import logging
import re
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, UID

from dicomnode.errors import IngestError
from dicomnode.status import ERROR_CANNOT_UNDERSTAND, ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS

logger = logging.getLogger(__name__)

UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # Pixel, Float Pixel, Double Float Pixel Data
# Path-safe UID: real UIDs are digits and dots; some devices add letters.
_UID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")


# Only these are parsed: the rest of the header is skipped, which is what makes
# parsing cheap enough to run for every received instance.
_WANTED_TAGS = [
    Tag(keyword)
    for keyword in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "PatientID",
        "Modality",
        "BodyPartExamined",
        "SeriesDescription",
        "SeriesNumber",
        "InstanceNumber",
        "AcquisitionNumber",
        "TemporalPositionIdentifier",
        "NumberOfTemporalPositions",
        "NumberOfFrames",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "ImagesInAcquisition",
        "NumberOfSlices",
        "NumberOfTimeSlices",
        "Rows",
        "Columns",
        "BitsAllocated",
        "SamplesPerPixel",
    )
]


class _Truncated(Exception):
    pass


@dataclass(frozen=True)
class Structure:
    """Where the pixel data element starts and what it declares."""

    pixel_offset: int | None  # offset of the pixel data element's tag
    pixel_value_length: int | None  # None when encapsulated (undefined length)


class _Walker:
    def __init__(self, buf: bytes, implicit: bool, little: bool) -> None:
        self.buf = buf
        self.implicit = implicit
        e = "<" if little else ">"
        self.tag_len = struct.Struct(e + "HHL")  # group, element, 32-bit length
        self.tag_vr16 = struct.Struct(e + "HH2sH")
        self.u32 = struct.Struct(e + "L")

    def header(self, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """Return (tag, vr, length, value offset) of the element at ``pos``."""
        buf = self.buf
        if pos + 8 > len(buf):
            raise _Truncated(f"element header at byte {pos} is cut off")
        group, elem, length = self.tag_len.unpack_from(buf, pos)
        tag = (group << 16) | elem
        if implicit or group == 0xFFFE:
            return tag, None, length, pos + 8
        _g, _e, vr, short = self.tag_vr16.unpack_from(buf, pos)
        if vr in _LONG_VRS:
            if pos + 12 > len(buf):
                raise _Truncated(f"element header at byte {pos} is cut off")
            return tag, vr, self.u32.unpack_from(buf, pos + 8)[0], pos + 12
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise _Truncated(f"invalid VR {vr!r} at byte {pos} (wrong transfer syntax or corrupt data)")
        return tag, vr, short, pos + 8

    def skip_undefined(self, pos: int, implicit: bool) -> int:
        """Skip items up to and including the sequence delimiter; return the next offset."""
        while True:
            tag, _vr, length, value = self.header(pos, True)
            if tag == _SEQ_END:
                return value
            if tag != _ITEM:
                raise _Truncated(f"expected an item tag at byte {pos}, found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if length == UNDEFINED:
                pos = self.walk(value, implicit, until_item_end=True)
            else:
                pos = value + length
                if pos > len(self.buf):
                    raise _Truncated(f"item at byte {value} declares {length} bytes beyond the end of the data")

    def walk(self, pos: int, implicit: bool, until_item_end: bool = False) -> int:
        end = len(self.buf)
        while pos < end:
            tag, vr, length, value = self.header(pos, implicit)
            if tag == _ITEM_END and until_item_end:
                return value
            if length == UNDEFINED:
                pos = self.skip_undefined(value, implicit or vr == b"UN")
            else:
                pos = value + length
                if pos > end:
                    raise _Truncated(
                        f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes "
                        f"but only {end - value} remain"
                    )
        if until_item_end:
            raise _Truncated("data ends inside a sequence item")
        return pos

    def top_level(self) -> Structure:
        pos, end = 0, len(self.buf)
        pixel_offset: int | None = None
        pixel_len: int | None = None
        while pos < end:
            start = pos
            tag, vr, length, value = self.header(pos, self.implicit)
            if tag in _PIXEL_TAGS and pixel_offset is None:
                pixel_offset, pixel_len = start, (None if length == UNDEFINED else length)
            if length == UNDEFINED:
                pos = self.skip_undefined(value, self.implicit or vr == b"UN")
            else:
                pos = value + length
                if pos > end:
                    raise _Truncated(
                        f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes "
                        f"but only {end - value} remain"
                    )
        return Structure(pixel_offset, pixel_len)


def inflate(data: bytes) -> bytes:
    """Decompress a Deflated Explicit VR Little Endian dataset (raw deflate, RFC 1951)."""
    try:
        return zlib.decompress(data, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise IngestError(f"deflated dataset does not decompress: {exc}", ERROR_CANNOT_UNDERSTAND) from exc


def check_structure(data: bytes, transfer_syntax: UID) -> Structure:
    """Walk every element of ``data``; refuse truncated or garbled datasets.

    Raises
    ------
    IngestError
        With status 0xC210 (cannot understand) and the reason.
    """
    try:
        return _Walker(data, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian).top_level()
    except _Truncated as exc:
        raise IngestError(f"dataset is truncated or corrupt: {exc}", ERROR_CANNOT_UNDERSTAND) from None
    except struct.error as exc:
        raise IngestError(f"dataset is truncated or corrupt: {exc}", ERROR_CANNOT_UNDERSTAND) from exc


@dataclass(frozen=True)
class InstanceHeader:
    """The attributes the node keeps about an instance (patient data stays in the database)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    patient_id: str | None
    modality: str | None
    body_part: str | None
    series_description: str | None
    series_number: int | None
    instance_number: int | None
    acquisition_number: int | None
    temporal_position: int | None
    number_of_frames: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    expected_count: int | None
    temporal_positions: int | None


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # a malformed value of an optional attribute: ignore it
        logger.debug("ignoring malformed %s", keyword)
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    v = _get(ds, keyword)
    if isinstance(v, MultiValue):
        v = v[0] if len(v) else None
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _str(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    v = _get(ds, keyword)
    if v is None:
        return None
    s = str(v).strip()
    return s[:limit] or None


def _floats(ds: Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    v = _get(ds, keyword)
    try:
        values = tuple(float(x) for x in v) if v is not None else None
    except (TypeError, ValueError):
        return None
    return values if values is not None and len(values) == n else None


def _uid(ds: Dataset, keyword: str) -> str:
    v = _get(ds, keyword)
    s = str(v).strip().rstrip("\x00") if v is not None else ""
    if not s:
        raise IngestError(f"{keyword} is missing", ERROR_CANNOT_UNDERSTAND)
    if not _UID_RE.match(s):
        raise IngestError(f"{keyword} is not a valid UID", ERROR_CANNOT_UNDERSTAND)
    return s


def parse_header(
    data: bytes,
    transfer_syntax: UID,
    *,
    affected_sop_class: str | None = None,
    affected_sop_instance: str | None = None,
) -> tuple[InstanceHeader, Structure]:
    """Validate ``data`` (an encoded dataset as received) and read its header.

    Parameters
    ----------
    data : bytes
        The dataset exactly as received (no preamble, no file meta).
    transfer_syntax : pydicom.uid.UID
        The presentation context's transfer syntax.
    affected_sop_class, affected_sop_instance : str, optional
        From the C-STORE request; must match the dataset.

    Raises
    ------
    IngestError
        0xC210 when the data cannot be understood, 0xA900 when it does not
        match the SOP class of the request.
    """
    plain = inflate(data) if transfer_syntax == DeflatedExplicitVRLittleEndian else data
    structure = check_structure(plain, transfer_syntax)
    prefix = plain if structure.pixel_offset is None else plain[: structure.pixel_offset]
    try:
        ds = read_dataset(
            BytesIO(prefix),
            transfer_syntax.is_implicit_VR,
            transfer_syntax.is_little_endian,
            specific_tags=_WANTED_TAGS,
        )
    except Exception as exc:
        raise IngestError(f"dataset cannot be parsed: {exc}", ERROR_CANNOT_UNDERSTAND) from exc

    sop_class = _uid(ds, "SOPClassUID")
    sop_uid = _uid(ds, "SOPInstanceUID")
    if affected_sop_class and sop_class != affected_sop_class.strip():
        raise IngestError(
            f"SOPClassUID {sop_class} in the dataset differs from the request's {affected_sop_class}",
            ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if affected_sop_instance and sop_uid != affected_sop_instance.strip():
        raise IngestError("SOPInstanceUID in the dataset differs from the request's", ERROR_CANNOT_UNDERSTAND)

    frames = _int(ds, "NumberOfFrames") or 1
    if structure.pixel_value_length is not None:
        _check_native_length(ds, structure.pixel_value_length, frames)

    expected: int | None = None
    pet_slices = _int(ds, "NumberOfSlices")
    if pet_slices:
        expected = pet_slices * max(1, _int(ds, "NumberOfTimeSlices") or 1)
    else:
        iia = _int(ds, "ImagesInAcquisition")
        expected = iia if iia and iia > 0 else None

    position = _floats(ds, "ImagePositionPatient", 3)
    header = InstanceHeader(
        study_uid=_uid(ds, "StudyInstanceUID"),
        series_uid=_uid(ds, "SeriesInstanceUID"),
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        patient_id=_str(ds, "PatientID"),
        modality=_str(ds, "Modality", 16),
        body_part=_str(ds, "BodyPartExamined"),
        series_description=_str(ds, "SeriesDescription"),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        acquisition_number=_int(ds, "AcquisitionNumber"),
        temporal_position=_int(ds, "TemporalPositionIdentifier"),
        number_of_frames=frames,
        position=position,  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        expected_count=expected,
        temporal_positions=_int(ds, "NumberOfTemporalPositions") or None,
    )
    return header, structure


def _check_native_length(ds: Dataset, actual: int, frames: int) -> None:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits = _int(ds, "BitsAllocated")
    spp = _int(ds, "SamplesPerPixel") or 1
    if not rows or not cols or not bits:
        return  # not an image, or float pixel data: nothing to check against
    pixels = rows * cols * spp * frames
    needed = (pixels + 7) // 8 if bits == 1 else pixels * ((bits + 7) // 8)
    if actual < needed:
        raise IngestError(
            f"pixel data truncated: {actual} bytes, but {rows}x{cols}x{frames} frames at {bits} bits need {needed}",
            ERROR_CANNOT_UNDERSTAND,
        )
