"""One SEG from the SEGs of several models on the same source series (``outputs.multi_model_seg = "merged"``).

Each model's SEG is built by highdicom on its own (so each is checked by
highdicom), then the others' segments are appended to the first's: their
segment numbers continue after the first's, every frame's Referenced Segment
Number and its Dimension Index Value follow, and their frames' pixels are
appended.  Only the frames that hold a segment are copied, so the cost is
that of the SEGs themselves, not of one dense array per segment.  Segments of
different models may overlap (a nodule lies in a lobe): Segments Overlap
says so.  Each segment keeps its own Algorithm Identification, so a viewer
shows which model made it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicomnode.errors import OutputError

SAME = ("SOPClassUID", "StudyInstanceUID", "FrameOfReferenceUID", "Rows", "Columns", "SegmentationType", "BitsAllocated")
SEGMENT_POINTER = 0x0062000B  # Referenced Segment Number: the first dimension of a highdicom SEG


def segment_count(seg: Dataset) -> int:
    """How many segments ``seg`` has."""
    return len(seg.SegmentSequence)


def _frame_bytes(seg: Dataset) -> list[bytes]:
    """The pixel data of each frame of an uncompressed SEG (1 bit or 8 bits per pixel)."""
    n, rows, cols = int(seg.get("NumberOfFrames", 1)), int(seg.Rows), int(seg.Columns)
    data = bytes(seg.PixelData)
    if int(seg.BitsAllocated) == 8:
        size = rows * cols
        return [data[i * size:(i + 1) * size] for i in range(n)]
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: n * rows * cols]
    return [np.packbits(f, bitorder="little").tobytes() for f in bits.reshape(n, rows * cols)]


def _join_frames(seg: Dataset, frames: Sequence[bytes]) -> bytes:
    """Frames back into PixelData (1-bit frames run on without padding; the whole is padded to even length)."""
    rows, cols = int(seg.Rows), int(seg.Columns)
    if int(seg.BitsAllocated) == 8 or (rows * cols) % 8 == 0:
        data = b"".join(frames)
    else:  # frames do not end on a byte: unpack, join, pack again
        bits = [np.unpackbits(np.frombuffer(f, dtype=np.uint8), bitorder="little")[: rows * cols] for f in frames]
        data = np.packbits(np.concatenate(bits), bitorder="little").tobytes()
    return data + b"\0" if len(data) % 2 else data


def _per_frame_segments(seg: Dataset) -> DicomSequence:
    """Its per-frame groups, each with its own Segment Identification (a one-segment SEG keeps it shared)."""
    frames = copy.deepcopy(seg.PerFrameFunctionalGroupsSequence)
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "SegmentIdentificationSequence" in shared:
        for item in frames:
            item.SegmentIdentificationSequence = copy.deepcopy(shared.SegmentIdentificationSequence)
    return frames


def merge_segmentations(first: Dataset, others: Sequence[Dataset], overlap: bool) -> Dataset:
    """``first`` with the segments and frames of ``others`` appended (``first`` keeps its identity and UIDs).

    Parameters
    ----------
    first : pydicom.Dataset
        The SEG whose identity the merged SEG keeps (the primary model's).
    others : sequence of pydicom.Dataset
        SEGs of the same source series; their segments are renumbered after ``first``'s.
    overlap : bool
        Whether segments of different SEGs share voxels (Segments Overlap YES, else NO).

    Raises
    ------
    OutputError
        The SEGs are not of the same source, size and type, or compressed.
    """
    if not others:
        return first
    merged = copy.deepcopy(first)
    shared = merged.SharedFunctionalGroupsSequence[0]
    frames = _per_frame_segments(first)
    if "SegmentIdentificationSequence" in shared:
        del shared.SegmentIdentificationSequence
    pixels = _frame_bytes(first)
    offset = segment_count(first)
    for k, other in enumerate(others, start=2):
        for key in SAME:
            if other.get(key) != first.get(key):
                raise OutputError(f"cannot merge SEG {k} into the first: its {key} differs")
        if other.file_meta.TransferSyntaxUID != first.file_meta.TransferSyntaxUID or other.file_meta.TransferSyntaxUID.is_compressed:
            raise OutputError(f"cannot merge SEG {k}: it is compressed or in another transfer syntax")
        for item in other.SegmentSequence:
            item = copy.deepcopy(item)
            item.SegmentNumber = int(item.SegmentNumber) + offset
            merged.SegmentSequence.append(item)
        for item in _per_frame_segments(other):
            ident = item.SegmentIdentificationSequence[0]
            ident.ReferencedSegmentNumber = int(ident.ReferencedSegmentNumber) + offset
            index = item.FrameContentSequence[0]
            values = list(index.DimensionIndexValues)
            values[0] = int(ident.ReferencedSegmentNumber)  # the first dimension is the segment number
            index.DimensionIndexValues = values
            frames.append(item)
        pixels += _frame_bytes(other)
        offset += segment_count(other)
        if "CodingSchemeIdentificationSequence" in other:
            known = {i.CodingSchemeDesignator for i in merged.get("CodingSchemeIdentificationSequence", [])}
            extra = [i for i in other.CodingSchemeIdentificationSequence if i.CodingSchemeDesignator not in known]
            if extra:
                merged.CodingSchemeIdentificationSequence = list(merged.get("CodingSchemeIdentificationSequence", [])) + extra
    pointers = [int(d.DimensionIndexPointer) for d in merged.DimensionIndexSequence]
    if not pointers or pointers[0] != SEGMENT_POINTER:
        raise OutputError("cannot merge: the SEG's first dimension is not the segment number")
    merged.PerFrameFunctionalGroupsSequence = frames
    merged.NumberOfFrames = len(pixels)
    merged.PixelData = _join_frames(merged, pixels)
    merged.SegmentsOverlap = "YES" if overlap else "NO"
    return merged
