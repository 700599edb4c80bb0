"""Read what the node needs from an encoded dataset without decoding its pixels.

:func:`check_structure` walks the top-level elements of the received bytes,
so that a truncated or garbled dataset is refused (0xC210) instead of being
acknowledged and failing later.  On the way it picks up the raw values of
the few attributes the node needs, which :func:`parse_header` decodes.
"""

from __future__ import annotations

import builtins
import functools
import logging
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, UID

from dicomnode.errors import IngestError
from dicomnode.dicom.status import ERROR_CANNOT_UNDERSTAND, ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS, REFUSED_OUT_OF_RESOURCES

logger = logging.getLogger(__name__)

UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}  # Pixel, Float Pixel, Double Float Pixel Data
# Path-safe UID: real UIDs are digits and dots; some devices add letters.
_UID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,63}")  # used with fullmatch: "$" would accept a trailing newline
MAX_DEPTH = 64  # nested sequences of undefined length; real data rarely passes 10
_CHUNK = 1 << 20


# The attributes read from each instance, with their VRs (needed for implicit
# VR data).  They are decoded straight from the bytes the walker visits: going
# through pydicom's Dataset cost 0.5 ms per instance, more than all the rest.
_WANTED: dict[int, str] = {
    Tag(keyword): vr
    for keyword, vr in (
        ("SpecificCharacterSet", "CS"),
        ("SOPClassUID", "UI"),
        ("SOPInstanceUID", "UI"),
        ("StudyInstanceUID", "UI"),
        ("SeriesInstanceUID", "UI"),
        ("PatientID", "LO"),
        ("Modality", "CS"),
        ("BodyPartExamined", "CS"),
        ("SeriesDescription", "LO"),
        ("StudyDescription", "LO"),
        ("ProtocolName", "LO"),
        ("ImageType", "CS"),
        ("SliceThickness", "DS"),
        ("ConvolutionKernel", "SH"),
        ("FrameOfReferenceUID", "UI"),
        ("SeriesNumber", "IS"),
        ("InstanceNumber", "IS"),
        ("AcquisitionNumber", "IS"),
        ("TemporalPositionIdentifier", "IS"),
        ("NumberOfTemporalPositions", "IS"),
        ("NumberOfFrames", "IS"),
        ("ImagePositionPatient", "DS"),
        ("ImageOrientationPatient", "DS"),
        ("ImagesInAcquisition", "IS"),
        ("NumberOfSlices", "US"),
        ("NumberOfTimeSlices", "US"),
        ("Rows", "US"),
        ("Columns", "US"),
        ("BitsAllocated", "US"),
        ("SamplesPerPixel", "US"),
    )
}


class _Truncated(Exception):
    pass


class _TooDeep(Exception):
    pass


@dataclass(frozen=True)
class Structure:
    """Where the pixel data element starts and what it declares."""

    pixel_offset: int | None  # offset of the pixel data element's tag
    pixel_value_length: int | None  # None when encapsulated (undefined length)
    values: dict[int, bytes]  # raw values of the wanted top-level attributes


class _Walker:
    def __init__(self, buf: bytes | memoryview, implicit: bool, little: bool) -> None:
        self.buf = buf
        self.depth = 0
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
                self.depth += 1
                if self.depth > MAX_DEPTH:
                    raise _TooDeep(f"sequences nested deeper than {MAX_DEPTH} levels")
                pos = self.walk(value, implicit, until_item_end=True)
                self.depth -= 1
            else:
                pos = value + length
                if pos > len(self.buf):
                    raise _Truncated(f"item at byte {value} declares {length} bytes beyond the end of the data")

    def next_element(self, tag: int, vr: bytes | None, length: int, value: int, implicit: bool) -> int:
        """The offset after the element whose value starts at ``value`` (sequences of undefined length are walked)."""
        if length == UNDEFINED:
            return self.skip_undefined(value, implicit or vr == b"UN")
        end = value + length
        if end > len(self.buf):
            raise _Truncated(
                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes "
                f"but only {len(self.buf) - value} remain"
            )
        return end

    def walk(self, pos: int, implicit: bool, until_item_end: bool = False) -> int:
        end = len(self.buf)
        while pos < end:
            tag, vr, length, value = self.header(pos, implicit)
            if tag == _ITEM_END and until_item_end:
                return value
            pos = self.next_element(tag, vr, length, value, implicit)
        if until_item_end:
            raise _Truncated("data ends inside a sequence item")
        return pos

    def top_level(self, wanted: Mapping[int, str], stop_at_pixels: bool = False) -> Structure:
        pos, end = 0, len(self.buf)
        pixel_offset: int | None = None
        pixel_len: int | None = None
        values: dict[int, bytes] = {}
        while pos < end:
            start = pos
            tag, vr, length, value = self.header(pos, self.implicit)
            if tag in wanted and length != UNDEFINED:
                values[tag] = bytes(self.buf[value : value + length])  # a copy: the buffer is only lent
            if tag in _PIXEL_TAGS and pixel_offset is None:
                pixel_offset, pixel_len = start, (None if length == UNDEFINED else length)
                if stop_at_pixels:
                    break
            pos = self.next_element(tag, vr, length, value, self.implicit)
        return Structure(pixel_offset, pixel_len, values)


def inflate(data: bytes | memoryview, limit: int | None = None) -> bytes:
    """Decompress a Deflated Explicit VR Little Endian dataset (raw deflate, RFC 1951).

    Stops as soon as the output passes ``limit`` bytes (a deflate bomb
    inflates 1 MB into 1 GB): the dataset is then refused with 0xA700.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    try:
        pending: bytes | memoryview = data
        while pending:
            room = _CHUNK if limit is None else min(_CHUNK, limit + 1 - len(out))
            out += inflater.decompress(pending, room)
            pending = inflater.unconsumed_tail
            if limit is not None and len(out) > limit:
                raise IngestError(
                    f"deflated dataset inflates to more than the node's limit of {limit >> 20} MB (node.max_instance_mb)",
                    REFUSED_OUT_OF_RESOURCES,
                )
        out += inflater.flush()
    except zlib.error as exc:
        raise IngestError(f"deflated dataset does not decompress: {exc}", ERROR_CANNOT_UNDERSTAND) from exc
    if limit is not None and len(out) > limit:
        raise IngestError(
            f"deflated dataset inflates to more than the node's limit of {limit >> 20} MB (node.max_instance_mb)",
            REFUSED_OUT_OF_RESOURCES,
        )
    return bytes(out)


def check_structure(
    data: bytes | memoryview, transfer_syntax: UID, wanted: Mapping[int, str] | None = None, *, stop_at_pixels: bool = False
) -> Structure:
    """Walk every element of ``data``; refuse truncated or garbled datasets.

    Parameters
    ----------
    data : bytes
        An encoded dataset (no preamble, no file meta).
    transfer_syntax : pydicom.uid.UID
        How it is encoded.
    wanted : mapping of tag to VR, optional
        Top-level attributes whose raw values to collect (default: those the
        receiver needs).
    stop_at_pixels : bool
        Stop at the pixel data element (reading only a file's head); its
        length is then not checked against the data.

    Raises
    ------
    IngestError
        With status 0xC210 (cannot understand) and the reason.
    """
    try:
        walker = _Walker(data, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian)
        return walker.top_level(_WANTED if wanted is None else wanted, stop_at_pixels)
    except _Truncated as exc:
        raise IngestError(f"dataset is truncated or corrupt: {exc}", ERROR_CANNOT_UNDERSTAND) from None
    except struct.error as exc:
        raise IngestError(f"dataset is truncated or corrupt: {exc}", ERROR_CANNOT_UNDERSTAND) from exc
    except _TooDeep as exc:
        raise IngestError(str(exc), ERROR_CANNOT_UNDERSTAND) from None
    except RecursionError:  # a Python stack too small for MAX_DEPTH: refuse the data, not the association
        raise IngestError("dataset nests sequences too deeply", ERROR_CANNOT_UNDERSTAND) from None


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
    # What series selection and body-part resolution look at (per series, from its first instance).
    study_description: str | None = None
    protocol_name: str | None = None
    image_type: str | None = None  # the values joined by "\\", e.g. ORIGINAL\\PRIMARY\\AXIAL
    slice_thickness: float | None = None
    kernel: str | None = None  # ConvolutionKernel, values joined by "\\"
    frame_of_reference_uid: str | None = None


@functools.lru_cache(maxsize=None)
def _tag(keyword: str) -> int:
    return int(Tag(keyword))


class RawValues:
    """Typed access to the raw attribute values found by :func:`check_structure`.

    Parameters
    ----------
    raw : dict
        Tag to value bytes.
    little : bool
        Byte order of the dataset.
    vrs : mapping of tag to VR, optional
        The VRs of the collected tags (binary VRs such as US are unpacked).
    """

    def __init__(self, raw: dict[int, bytes], little: bool, vrs: Mapping[int, str] | None = None) -> None:
        self.raw = raw
        self.vrs = _WANTED if vrs is None else vrs
        self.us = struct.Struct("<H" if little else ">H")
        charset = self._text(_tag("SpecificCharacterSet"), "iso8859")
        try:
            self.encodings = convert_encodings([c.strip() for c in charset.split("\\")] if charset else None)
        except Exception:  # an unknown character set: fall back to the default repertoire
            self.encodings = convert_encodings(None)

    def _text(self, tag: int, encoding: str) -> str | None:
        b = self.raw.get(tag)
        if b is None:
            return None
        return b.decode(encoding, "replace").strip(" \x00") or None

    def text(self, keyword: str, limit: int = 64) -> str | None:
        """A string attribute (first value), decoded with the dataset's character set."""
        b = self.raw.get(_tag(keyword))
        if b is None:
            return None
        try:
            s = decode_bytes(b, self.encodings, set())
        except Exception:
            s = b.decode("latin-1", "replace")
        s = s.split("\\")[0].strip(" \x00")
        return s[:limit] or None

    def int(self, keyword: str) -> int | None:
        tag = _tag(keyword)
        b = self.raw.get(tag)
        if not b:
            return None
        if self.vrs.get(tag) == "US":
            return self.us.unpack_from(b)[0] if len(b) >= 2 else None
        try:
            return int(float(b.decode("ascii").split("\\")[0].strip(" \x00")))
        except (UnicodeDecodeError, ValueError):
            return None  # a malformed optional value is ignored, never fatal

    def floats(self, keyword: str, n: builtins.int | None = None) -> tuple[float, ...] | None:
        """A DS attribute as floats; ``None`` when absent, malformed or not ``n`` values."""
        b = self.raw.get(_tag(keyword))
        if not b:
            return None
        try:
            values = tuple(float(v) for v in b.decode("ascii").strip(" \x00").split("\\"))
        except (UnicodeDecodeError, ValueError):
            return None
        return values if n is None or len(values) == n else None

    def pair(self, keyword: str) -> tuple[float, float] | None:
        """A two-valued DS attribute (e.g. PixelSpacing), or ``None``."""
        v = self.floats(keyword, 2)
        return None if v is None else (v[0], v[1])

    def triple(self, keyword: str) -> tuple[float, float, float] | None:
        """A three-valued DS attribute (e.g. ImagePositionPatient), or ``None``."""
        v = self.floats(keyword, 3)
        return None if v is None else (v[0], v[1], v[2])

    def texts(self, keyword: str) -> tuple[str, ...]:
        """All values of a string attribute (e.g. ImageType)."""
        b = self.raw.get(_tag(keyword))
        if not b:
            return ()
        return tuple(p.strip(" \x00") for p in b.decode("latin-1").split("\\"))

    def uid(self, keyword: str) -> str:
        s = self._text(_tag(keyword), "ascii")
        if not s:
            raise IngestError(f"{keyword} is missing", ERROR_CANNOT_UNDERSTAND)
        if not _UID_RE.fullmatch(s):
            raise IngestError(f"{keyword} is not a valid UID", ERROR_CANNOT_UNDERSTAND)
        return s


def _optional_uid(v: RawValues, keyword: str) -> str | None:
    """A UID that may be absent (None then, or when it is not a valid UID: it is only compared)."""
    try:
        return v.uid(keyword)
    except IngestError:
        return None


def parse_header(
    data: bytes | memoryview,
    transfer_syntax: UID,
    *,
    affected_sop_class: str | None = None,
    affected_sop_instance: str | None = None,
    max_inflated: int | None = None,
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
    max_inflated : int, optional
        The most bytes a deflated dataset may inflate to.

    Raises
    ------
    IngestError
        0xC210 when the data cannot be understood, 0xA900 when it does not
        match the SOP class of the request or is an image without pixel
        data, 0xA700 when a deflated dataset inflates beyond ``max_inflated``.
    """
    plain = inflate(data, max_inflated) if transfer_syntax == DeflatedExplicitVRLittleEndian else data
    structure = check_structure(plain, transfer_syntax)
    try:
        v = RawValues(structure.values, transfer_syntax.is_little_endian)
    except UnicodeDecodeError as exc:
        raise IngestError(f"SpecificCharacterSet cannot be read: {exc}", ERROR_CANNOT_UNDERSTAND) from exc

    sop_class = v.uid("SOPClassUID")
    sop_uid = v.uid("SOPInstanceUID")
    if affected_sop_class and sop_class != affected_sop_class.strip():
        raise IngestError(
            f"SOPClassUID {sop_class} in the dataset differs from the request's {affected_sop_class}",
            ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if affected_sop_instance and sop_uid != affected_sop_instance.strip():
        raise IngestError("SOPInstanceUID in the dataset differs from the request's", ERROR_CANNOT_UNDERSTAND)

    if structure.pixel_offset is None and is_image_storage(sop_class):
        raise IngestError(
            f"{UID(sop_class).name or 'an image storage SOP class'} instance has no Pixel Data",
            ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    frames = v.int("NumberOfFrames") or 1
    if structure.pixel_value_length is not None:
        _check_native_length(v, structure.pixel_value_length, frames)

    expected: int | None = None
    pet_slices = v.int("NumberOfSlices")
    if pet_slices:
        expected = pet_slices * max(1, v.int("NumberOfTimeSlices") or 1)
    else:
        iia = v.int("ImagesInAcquisition")
        expected = iia if iia and iia > 0 else None

    header = InstanceHeader(
        study_uid=v.uid("StudyInstanceUID"),
        series_uid=v.uid("SeriesInstanceUID"),
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        patient_id=v.text("PatientID"),
        modality=v.text("Modality", 16),
        body_part=v.text("BodyPartExamined"),
        series_description=v.text("SeriesDescription"),
        series_number=v.int("SeriesNumber"),
        instance_number=v.int("InstanceNumber"),
        acquisition_number=v.int("AcquisitionNumber"),
        temporal_position=v.int("TemporalPositionIdentifier"),
        number_of_frames=frames,
        position=v.triple("ImagePositionPatient"),
        orientation=v.floats("ImageOrientationPatient", 6),
        expected_count=expected,
        temporal_positions=v.int("NumberOfTemporalPositions") or None,
        study_description=v.text("StudyDescription"),
        protocol_name=v.text("ProtocolName"),
        image_type="\\".join(v.texts("ImageType"))[:128] or None,
        slice_thickness=(v.floats("SliceThickness", 1) or (None,))[0],
        kernel="\\".join(v.texts("ConvolutionKernel"))[:64] or None,
        frame_of_reference_uid=_optional_uid(v, "FrameOfReferenceUID"),
    )
    return header, structure


def is_image_storage(sop_class: str) -> bool:
    """Whether ``sop_class`` is an image storage SOP class (its instances must carry Pixel Data)."""
    return "Image Storage" in UID(sop_class).name


def _check_native_length(v: RawValues, actual: int, frames: int) -> None:
    rows, cols = v.int("Rows"), v.int("Columns")
    bits = v.int("BitsAllocated")
    spp = v.int("SamplesPerPixel") or 1
    if not rows or not cols or not bits:
        return  # not an image, or float pixel data: nothing to check against
    pixels = rows * cols * spp * frames
    needed = (pixels + 7) // 8 if bits == 1 else pixels * ((bits + 7) // 8)
    if actual < needed:
        raise IngestError(
            f"pixel data truncated: {actual} bytes, but {rows}x{cols}x{frames} frames at {bits} bits need {needed}",
            ERROR_CANNOT_UNDERSTAND,
        )
